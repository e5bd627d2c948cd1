"""The vLLM plugin entry: lazy import, idempotent register(), registry lookup, patch selection, the vLLM
version guard, and each patch applied only in the processes that import its target."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

import vllm_padrec
from vllm_padrec.integration.patches import init_model_state, init_speculator


def test_import_imports_no_vllm():
    code = (
        "import sys, vllm_padrec\n"
        "loaded = sorted(m for m in sys.modules if m == 'vllm' or m.startswith(('vllm.', 'torch', 'transformers')))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_is_idempotent_and_resolvable():
    vllm_padrec.register()
    vllm_padrec.register()
    from vllm import ModelRegistry
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.models.interfaces import supports_eagle
    from vllm.v1.worker.gpu import model_states, spec_decode

    for name in vllm_padrec.ARCHITECTURES:
        assert name in ModelRegistry.get_supported_archs()
        info = ModelRegistry._try_inspect_model_cls(name)
        assert info is not None and info.is_text_generation_model
    cls = ModelRegistry.models["EaglePadRecForCausalLM"].load_model_cls()
    assert cls.__name__ == "EaglePadRecForCausalLM" and supports_eagle(cls)
    # each patch is installed once: the wrapper wraps vLLM's own function, not another wrapper
    from vllm.config.speculative import SpeculativeConfig
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.v1.engine.input_processor import InputProcessor

    for patched in (
        spec_decode.init_speculator,
        model_states.init_model_state,
        EngineArgs.add_cli_args,
        InputProcessor.process_inputs,
        SpeculativeConfig.compute_hash,
        CompletionRequest.to_beam_search_params,
        ChatCompletionRequest.to_beam_search_params,
    ):
        assert patched._padrec_patch and not getattr(patched.__wrapped__, "_padrec_patch", False)
    init_speculator.apply(spec_decode)
    init_model_state.apply(model_states)
    assert not getattr(spec_decode.init_speculator.__wrapped__, "_padrec_patch", False)


def spec_config(method: str, architectures: list[str], mask_drafts: bool | None = None):
    draft = SimpleNamespace(architectures=architectures)
    padrec = {} if mask_drafts is None else {"padrec": {"mask_drafts": mask_drafts}}
    return SimpleNamespace(
        speculative_config=SimpleNamespace(method=method, draft_model_config=draft), additional_config=padrec
    )


def test_init_speculator_picks_padrec_for_every_eagle_draft_the_plugin_masks(monkeypatch):
    """Our draft always; vLLM's EAGLE drafts while drafts are masked (the default), vanilla vLLM when not."""
    from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

    from vllm_padrec.integration import speculator

    assert issubclass(speculator.PadRecSpeculator, EagleSpeculator)
    built = []
    monkeypatch.setattr(speculator, "PadRecSpeculator", lambda config, device: built.append("padrec") or "padrec")
    init = init_speculator.make_init_speculator(lambda config, device: "vllm")
    assert init(spec_config("eagle", ["EaglePadRecForCausalLM"]), "cpu") == "padrec"
    assert init(spec_config("eagle", ["EaglePadRecForCausalLM"], mask_drafts=False), "cpu") == "padrec"
    assert init(spec_config("eagle", ["EagleLlamaForCausalLM"]), "cpu") == "padrec"  # EAGLE with the masks
    assert init(spec_config("eagle3", ["Eagle3LlamaForCausalLM"]), "cpu") == "padrec"
    assert init(spec_config("eagle", ["EagleLlamaForCausalLM"], mask_drafts=False), "cpu") == "vllm"  # vanilla
    assert init(spec_config("eagle3", ["EaglePadRecForCausalLM"]), "cpu") == "vllm"
    assert init(spec_config("mtp", ["DeepSeekMTPModel"]), "cpu") == "vllm"
    ngram = SimpleNamespace(speculative_config=SimpleNamespace(method="ngram", draft_model_config=None))
    assert init(ngram, "cpu") == "vllm"
    assert built == ["padrec"] * 4


def test_model_state_hooks_wrap_samplers():
    """install(): the samplers mask first, requests are recorded, the state exposes the lists."""
    from vllm_padrec.integration.masking_sampler import MaskingSampler

    calls = []

    class State:  # the hooks of vLLM's ModelState that install() wraps
        def custom_sampler(self, sampler):
            return None

        def add_request(self, req_index, new_req_data):
            calls.append(("state.add", req_index))

        def apply_staged_writes(self):
            calls.append("state.apply")

    class Lists:
        req_states = None

        def add_request(self, req_index, new_req_data):
            calls.append(("lists.add", req_index))

        def apply_staged_writes(self):
            calls.append("lists.apply")

        def mask_verification(self, logits, input_batch):
            calls.append("mask")

    class Sampler:
        req_states = "req_states"
        sampling_states = "sampling_states"

        def __call__(self, logits, input_batch):
            calls.append("sample")
            return "out"

    state, lists = State(), Lists()
    config = SimpleNamespace(speculative_config=None)
    init_model_state.install(state, lists, config, "cpu")
    sampler, rejection = state.custom_sampler(Sampler())
    assert isinstance(sampler, MaskingSampler) and rejection is None and lists.req_states == "req_states"
    assert sampler.sampling_states == "sampling_states"  # everything else delegates
    assert sampler("logits", "batch") == "out"
    state.add_request(3, None)
    state.apply_staged_writes()
    assert calls == ["mask", "sample", ("state.add", 3), ("lists.add", 3), "state.apply", "lists.apply"]
    assert state.padrec_lists is lists


def test_plugin_loggers_print_through_vllms_handler():
    """vLLM configures only the ``vllm`` logger: the plugin's INFO lines must live under it."""
    import logging

    from vllm_padrec.integration.log import get_logger

    logger = get_logger("vllm_padrec.integration.request_lists")
    assert logger.name == "vllm.padrec.request_lists"
    assert logger.isEnabledFor(logging.INFO)
    vllm_logger = logging.getLogger("vllm")
    assert vllm_logger.handlers and logger.propagate  # reaches vLLM's stream handler


def test_register_refuses_another_vllm(monkeypatch):
    """On a vLLM the patches were not written for, register() raises naming both versions, and nothing
    is registered; vLLM calls register() unguarded (load_general_plugins), so vLLM does not start."""
    import vllm

    from vllm_padrec.integration.patches import WRITTEN_FOR_VLLM, UnsupportedVllmError, check_vllm_version

    monkeypatch.setattr(vllm_padrec, "_registered", False)
    monkeypatch.setattr(vllm, "__version__", "0.27.1")
    with pytest.raises(UnsupportedVllmError, match=r"written for vLLM 0\.26\.0, but vLLM 0\.27\.1 is installed"):
        vllm_padrec.register()
    assert vllm_padrec._registered is False
    check_vllm_version(WRITTEN_FOR_VLLM)
    check_vllm_version(WRITTEN_FOR_VLLM + "+cu129")  # a local build of the same release
    for other in ("0.26.1", "0.26.0rc1", "0.25.0"):
        with pytest.raises(UnsupportedVllmError, match=other):
            check_vllm_version(other)


# In a fresh interpreter: register() as a front end calls it; then a fork, as vLLM starts its engine core
# and workers by default, which do not call register() again; the child builds what a worker imports.
_PROCESSES = textwrap.dedent(
    """
    import os, sys
    import vllm_padrec

    vllm_padrec.register()
    worker = ("vllm.v1.worker.gpu.model_states", "vllm.v1.worker.gpu.spec_decode")
    api = ("vllm.entrypoints.openai.completion.protocol", "vllm.entrypoints.openai.chat_completion.protocol")
    imported = [m for m in worker + api if m in sys.modules]
    assert not imported, f"register() imported {imported}"
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.input_processor import InputProcessor

    assert EngineArgs.add_cli_args._padrec_patch and InputProcessor.process_inputs._padrec_patch
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from vllm.v1.worker.gpu import model_runner as runner  # binds both names with from-imports

            code = 0 if runner.init_model_state._padrec_patch and runner.init_speculator._padrec_patch else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"worker patches missing in the forked process: {status}"
    imported = [m for m in worker if m in sys.modules]
    assert not imported, f"the front end imported {imported}"
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    assert CompletionRequest.to_beam_search_params._padrec_patch
    print("ok")
    """
)


def test_patches_apply_only_where_their_targets_are_imported():
    result = subprocess.run([sys.executable, "-c", _PROCESSES], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_after_import_runs_once_the_module_is_imported(tmp_path, monkeypatch):
    from vllm_padrec.integration.patches.on_import import after_import

    (tmp_path / "padrec_probe_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    after_import("padrec_probe_module", lambda module: seen.append(module.VALUE))
    assert seen == []
    import padrec_probe_module

    assert seen == [1] and type(padrec_probe_module.__loader__).__name__ == "SourceFileLoader"
    after_import("padrec_probe_module", lambda module: seen.append(2))  # already imported: at once
    assert seen == [1, 2]
    monkeypatch.delitem(sys.modules, "padrec_probe_module")


class _DraftLists:
    """What the draft's compute_logits calls: RequestLists.mask_draft_logits."""

    def __init__(self):
        self.calls = []

    def mask_draft_logits(self, logits, idx_mapping, draft_tokens, draft_step):
        self.calls.append((idx_mapping.tolist(), draft_tokens.tolist(), int(draft_step)))
        logits[:, 0] = float("-inf")


def test_draft_compute_logits_masks_with_the_attached_lists():
    """The draft masks in compute_logits (V2 calls it for greedy and Gumbel drafts alike), one row per batch
    row, with the speculator's idx_mapping, draft tokens and step; unmasked when no lists are attached."""
    from torch import nn

    from vllm_padrec.integration.draft_model import EaglePadRecForCausalLM

    model = EaglePadRecForCausalLM.__new__(EaglePadRecForCausalLM)  # only what compute_logits reads
    nn.Module.__init__(model)
    model.lm_head = nn.Linear(4, 6, bias=False)
    model.logits_processor = lambda lm_head, hidden: lm_head(hidden)
    model.lists = None
    hidden = torch.randn(2, 4)
    assert torch.isfinite(model.compute_logits(hidden)).all()

    step = torch.tensor(1)
    idx_mapping = torch.tensor([3, 1, 0, 2], dtype=torch.int32)
    draft_tokens = torch.arange(8).view(4, 2)
    model.attach_speculator(step, idx_mapping, draft_tokens)
    lists = _DraftLists()
    model.attach_lists(lists)
    logits = model.compute_logits(hidden)
    assert lists.calls == [([3, 1], [[0, 1], [2, 3]], 1)]
    assert torch.isinf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()


def test_vllms_eagle_draft_is_re_classed_to_mask_like_ours():
    """A loaded vLLM EAGLE draft gains the masks' hooks, keeps its class's own logits and weights, and masks
    once the speculator attaches lists; our draft is left as it is."""
    from torch import nn
    from vllm.model_executor.models.llama_eagle import EagleLlamaForCausalLM

    from vllm_padrec.integration.draft_masks import DraftListMasks, masked_class, with_list_masks
    from vllm_padrec.integration.draft_model import EaglePadRecForCausalLM

    draft = EagleLlamaForCausalLM.__new__(EagleLlamaForCausalLM)  # only what compute_logits reads
    nn.Module.__init__(draft)
    draft.lm_head = nn.Linear(4, 6, bias=False)
    draft.logits_processor = lambda lm_head, hidden: lm_head(hidden)
    hidden = torch.randn(2, 4)
    plain = draft.compute_logits(hidden)
    assert with_list_masks(draft) is draft and isinstance(draft, (DraftListMasks, EagleLlamaForCausalLM))
    assert type(draft) is masked_class(EagleLlamaForCausalLM) and torch.equal(draft.compute_logits(hidden), plain)
    draft.attach_speculator(torch.tensor(0), torch.tensor([1, 0], dtype=torch.int32), torch.zeros(2, 3).long())
    lists = _DraftLists()
    draft.attach_lists(lists)
    masked = draft.compute_logits(hidden)
    assert lists.calls == [([1, 0], [[0, 0, 0], [0, 0, 0]], 0)] and torch.isinf(masked[:, 0]).all()
    assert torch.equal(masked[:, 1:], plain[:, 1:])
    ours = EaglePadRecForCausalLM.__new__(EaglePadRecForCausalLM)
    assert type(with_list_masks(ours)) is EaglePadRecForCausalLM


def test_a_draft_keeps_its_masked_log_probs_as_the_beam_step_rule_reads_them():
    """Drafted top-K rounds read each row's draft log-probs between draft steps: log-softmax over the whole
    vocabulary, then the catalog mask (``select.beam_logprobs``), written into the kept buffer."""
    from torch import nn
    from vllm.model_executor.models.llama_eagle import EagleLlamaForCausalLM

    from vllm_padrec.integration.draft_masks import with_list_masks
    from vllm_padrec.topk.select import beam_logprobs

    draft = EagleLlamaForCausalLM.__new__(EagleLlamaForCausalLM)
    nn.Module.__init__(draft)
    draft.lm_head = nn.Linear(4, 6, bias=False)
    draft.logits_processor = lambda lm_head, hidden: lm_head(hidden)
    with_list_masks(draft)
    draft.attach_speculator(torch.tensor(0), torch.tensor([1, 0, 2], dtype=torch.int32), torch.zeros(3, 3).long())
    draft.attach_lists(_DraftLists())  # refuses token 0
    kept = torch.full((3, 6), 7.0)  # max_num_reqs rows; this step has 2
    draft.keep_draft_logprobs(kept)
    hidden = torch.randn(2, 4)
    raw = draft.lm_head(hidden)
    draft.compute_logits(hidden)
    allowed = torch.ones(2, 6, dtype=torch.bool)
    allowed[:, 0] = False
    assert torch.allclose(kept[:2], beam_logprobs(raw, allowed)) and torch.isneginf(kept[:2, 0]).all()
    assert (kept[2] == 7.0).all()  # rows past the batch untouched
    draft.keep_draft_logprobs(None)
    draft.compute_logits(torch.randn(2, 4))  # keeps nothing: the buffer still holds the first step's
    assert torch.allclose(kept[:2], beam_logprobs(raw, allowed))


def test_speculator_hands_the_draft_its_masks():
    """set_attn passes the state's lists on, unless drafts are not masked (mask_drafts off, local argmax)."""
    from vllm_padrec.integration.speculator import PadRecSpeculator

    speculator = PadRecSpeculator.__new__(PadRecSpeculator)
    speculator.use_local_argmax_reduction = False
    lists = SimpleNamespace(mask_drafts=True)
    assert speculator._list_masks(SimpleNamespace(padrec_lists=lists)) is lists
    assert speculator._list_masks(SimpleNamespace()) is None  # no catalog: no lists installed
    assert speculator._list_masks(SimpleNamespace(padrec_lists=SimpleNamespace(mask_drafts=False))) is None
    speculator.use_local_argmax_reduction = True
    assert speculator._list_masks(SimpleNamespace(padrec_lists=lists)) is None


@pytest.mark.parametrize(("draft_beams", "keeps"), [(0, False), (1, False), (3, True)])
def test_speculator_keeps_the_drafts_log_probs_where_top_k_rounds_draft_beams(draft_beams, keeps):
    """Only a server whose drafted top-K rounds have N > 1 draft beams runs the draft's beam search in propose:
    its speculator keeps the draft's log-probs (one row per request slot, over the vocabulary) and the engine."""
    from vllm_padrec.integration.speculator import PadRecSpeculator

    speculator = PadRecSpeculator.__new__(PadRecSpeculator)
    speculator.max_num_reqs, speculator.vocab_size = 5, 11
    speculator.draft_tokens = torch.zeros(5, 2, dtype=torch.long)
    kept = []
    speculator.model = SimpleNamespace(keep_draft_logprobs=kept.append)
    padrec = {"topk_max_beams": 64, "max_topk": 8, **({"topk_draft_beams": draft_beams} if draft_beams else {})}
    spec = SimpleNamespace(
        method="eagle", use_eagle=lambda: True, num_speculative_tokens=2, num_speculative_tokens_per_batch_size=None
    )
    speculator.vllm_config = SimpleNamespace(
        speculative_config=spec if draft_beams else None, additional_config={"padrec": padrec}
    )
    engine = object()
    speculator._attach_topk_search(SimpleNamespace(padrec_topk_engine=engine))
    if keeps:
        (buffer,) = kept
        assert buffer.shape == (5, 11) and buffer.dtype == torch.float32
    else:
        assert kept == []
    assert speculator._topk_engine is (engine if draft_beams else None)  # drafted rounds: the engine, N >= 1
    speculator._attach_topk_search(SimpleNamespace())  # top-K off: no engine in the model state
    assert len(kept) == int(keeps)


def test_install_applies_every_patch_the_top_k_paths_included(monkeypatch):
    """The top-K patches are installed with the others; on a server without beam rows they change nothing
    (test_topk_admission, test_topk_runner, test_topk_sampling)."""
    from vllm_padrec.integration import patches

    installed = []
    monkeypatch.setattr(patches, "after_import", lambda target, apply: installed.append(apply.__module__))
    patches.install()
    assert list(dict.fromkeys(installed)) == list(patches.PATCHES)
    topk = {f"vllm_padrec.integration.patches.{name}" for name in ("scheduler_init", "execute_model", "sample_tokens")}
    assert topk <= set(patches.PATCHES)


def test_wrap_attribute_wraps_once_and_skips_what_is_not_there():
    from types import SimpleNamespace

    from vllm_padrec.integration.patches.marking import mark_patched, wrap_attribute

    def make(original):
        def wrapper(*args):
            return ("wrapped", original(*args))

        return mark_patched(wrapper, original)

    owner = SimpleNamespace(f=lambda x: x + 1)
    wrap_attribute(owner, "f", make)
    wrapped = owner.f
    wrap_attribute(owner, "f", make)  # a second apply: the same wrapper, not a wrapper of it
    assert owner.f is wrapped and owner.f(1) == ("wrapped", 2)
    wrap_attribute(None, "f", make)  # a module not imported
    wrap_attribute(owner, "g", make)  # a name the owner lacks
    assert not hasattr(owner, "g")


def _speculator_graphs(monkeypatch, table, num_speculative_tokens=5, max_num_seqs=64):
    """A PadRecSpeculator shell whose init_cudagraph_manager builds vLLM's real graph managers (their capture
    candidates: vllm/v1/worker/gpu/cudagraph_utils.py, ``_init_candidates``) for a batch-size table."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.worker.gpu import cudagraph_utils

    from vllm_padrec.integration.speculator import PadRecSpeculator

    monkeypatch.setattr(cudagraph_utils, "get_pp_group", lambda: SimpleNamespace(is_first_rank=True, is_last_rank=True))
    monkeypatch.setattr(cudagraph_utils.current_platform, "get_global_graph_pool", lambda: None, raising=False)
    spec = SimpleNamespace(num_speculative_tokens=num_speculative_tokens, num_speculative_tokens_per_batch_size=table)
    spec.uses_dynamic_speculative_decoding = lambda: spec.num_speculative_tokens_per_batch_size is not None
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    vllm_config = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
        compilation_config=SimpleNamespace(cudagraph_capture_sizes=sizes, max_cudagraph_capture_size=max(sizes)),
        parallel_config=SimpleNamespace(data_parallel_size=1, tensor_parallel_size=1),
        speculative_config=spec,
        num_speculative_tokens=num_speculative_tokens,
    )
    speculator = PadRecSpeculator.__new__(PadRecSpeculator)
    speculator.vllm_config, speculator.speculative_config = vllm_config, spec
    speculator.device, speculator.num_speculative_steps = torch.device("cpu"), num_speculative_tokens
    speculator.init_cudagraph_manager(CUDAGraphMode.FULL_AND_PIECEWISE)
    assert spec.num_speculative_tokens_per_batch_size is table  # the table is back for the scheduler and propose
    return speculator


@pytest.mark.parametrize("table", [None, [(1, 128, 5)], [(1, 128, 3)], [(1, 4, 5), (5, 16, 4), (17, 64, 0)]])
def test_draft_decode_graphs_take_one_token_a_request_whatever_the_table(monkeypatch, table):
    """vLLM 0.26.0 derives the draft decode graphs' query lengths from the batch-size table (K + 1 - 5 for a
    one-token step: 0 or less below K = 5), and capture fails on them (vllm-project/vllm#48494): the speculator
    captures them at one token a request, and draft step 0's graphs (on the target's K + 1 tokens a request)
    follow the table."""
    from vllm.config.compilation import CUDAGraphMode

    speculator = _speculator_graphs(monkeypatch, table)
    decode = speculator.decode_cudagraph_manager._capture_descs[CUDAGraphMode.FULL]
    assert decode and all(d.uniform_token_count == 1 and 0 < d.num_reqs == d.num_tokens <= 64 for d in decode)
    prefill = speculator.prefill_cudagraph_manager._capture_descs[CUDAGraphMode.FULL]
    lengths = {k + 1 for _, _, k in table} if table else {6}
    assert {d.uniform_token_count for d in prefill} == lengths
    assert all(0 < d.num_reqs <= d.num_tokens == d.num_reqs * d.uniform_token_count for d in prefill)


def test_drafts_per_step_follow_vllms_batch_size_table(monkeypatch):
    """With num_speculative_tokens_per_batch_size the speculator drafts the K the scheduler will verify: step 0
    and K - 1 decode steps, nothing at K = 0; all gamma in dummy runs and without a table."""
    from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

    from vllm_padrec.integration.speculator import PadRecSpeculator

    loops = []

    def propose(self, input_batch, *args, dummy_run=False, **kwargs):  # vLLM's: step 0, then the decode loop
        self._multi_step_decode(input_batch.num_reqs, False, None, None)
        return "drafted"

    def multi_step_decode(self, *args):  # vLLM's loop is range(1, num_speculative_steps)
        loops.append(list(range(1, self.num_speculative_steps)))

    monkeypatch.setattr(EagleSpeculator, "propose", propose)
    monkeypatch.setattr(EagleSpeculator, "_multi_step_decode", multi_step_decode)
    speculator = PadRecSpeculator.__new__(PadRecSpeculator)
    speculator.num_speculative_steps, speculator.max_num_reqs = 5, 64
    speculator.draft_tokens = torch.arange(64 * 5).view(64, 5)
    table = [(1, 4, 5), (5, 16, 2), (17, 64, 0)]
    speculator.speculative_config = SimpleNamespace(num_speculative_tokens_per_batch_size=table)
    batch = lambda n: SimpleNamespace(num_reqs=n)  # noqa: E731
    assert speculator.propose(batch(3)) == "drafted" and loops[-1] == [1, 2, 3, 4]
    assert speculator.propose(batch(8)) == "drafted" and loops[-1] == [1]
    assert torch.equal(speculator.propose(batch(20)), speculator.draft_tokens[:20]) and len(loops) == 2
    assert speculator.propose(batch(20), dummy_run=True) == "drafted" and loops[-1] == [1, 2, 3, 4]
    assert speculator.num_speculative_steps == 5  # the loop's count is restored
    plain = PadRecSpeculator.__new__(PadRecSpeculator)
    plain.num_speculative_steps, plain.max_num_reqs = 3, 64
    plain.speculative_config = SimpleNamespace(num_speculative_tokens_per_batch_size=None)
    assert plain.propose(batch(64)) == "drafted" and loops[-1] == [1, 2]
