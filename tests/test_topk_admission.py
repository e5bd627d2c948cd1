"""Admission of top-K requests (issue 12): the block arithmetic (``vllm_padrec.topk.admission``) and the
``Scheduler.__init__`` patch (``patches/scheduler_init.py``) on vLLM's real ``Scheduler`` and
``KVCacheManager``, built on the CPU as vLLM's own scheduler tests build them (tests/v1/core/utils.py:
real configs over a model folder holding only a ``config.json``, one full-attention KV cache group,
``ModelRunnerOutput`` written by hand in place of a model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog
from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.patches.scheduler_init import beam_rows_in_use
from vllm_padrec.topk.admission import (
    Admission,
    BeamRows,
    TopKBlocks,
    beam_rows,
    cdiv,
    private_blocks_per_beam,
    topk_blocks,
    topk_of,
)

BLOCK_SIZE = 16
ITEM_LEN = 4  # tokens per item: the catalog below has 4 code slots
TOKEN = 7  # every sampled token (the scheduler does not read them)


# -- the block arithmetic ---------------------------------------------------------------------------------


def private_blocks_by_positions(prompt_len: int, item_len: int, block_size: int, lookahead: int) -> int:
    """B counted the way V2 writes a beam's KV: its first private block sits at R's partial prompt block
    (index P // bs) and holds that block's copied tokens; the beam then writes positions P .. P + L - 2
    without a draft; with one (``lookahead`` > 0) a row may feed the last code too (P + L - 1, the step
    async scheduling adds after a round that completes the item early) and writes ``lookahead`` positions
    past it. B = the distinct blocks from P // bs on."""
    if item_len == 1:
        return 0  # the top K come from the prefill's logits: no beam row ever runs
    first = prompt_len // block_size
    last_fed = prompt_len + item_len - (1 if lookahead else 2)
    last_written = last_fed + lookahead
    return len({p // block_size for p in range(first * block_size, last_written + 1)})


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_private_blocks_per_beam_equals_the_blocks_a_beam_writes(block_size, lookahead):
    for prompt_len in range(1, 4 * block_size):
        for item_len in range(1, 7):
            expected = private_blocks_by_positions(prompt_len, item_len, block_size, lookahead)
            got = private_blocks_per_beam(prompt_len, item_len, block_size, lookahead)
            assert got == expected, (prompt_len, item_len, block_size, lookahead)


def test_private_blocks_per_beam_examples():
    # the design's formula cdiv(P mod bs + L - 1, bs) without a draft
    assert private_blocks_per_beam(32, 4, 16) == 1  # no partial prompt block to copy
    assert private_blocks_per_beam(45, 4, 16) == 1  # 13 copied + 3 beam tokens fill one block
    assert private_blocks_per_beam(46, 4, 16) == 2  # 14 + 3 crosses into a second block
    assert private_blocks_per_beam(45, 4, 16, lookahead=3) == 2  # a draft's 3 positions cross it too
    assert private_blocks_per_beam(41, 4, 16, lookahead=3) == 1  # 9 copied + positions 41 .. 47 fill one block
    assert private_blocks_per_beam(42, 4, 16, lookahead=3) == 2  # 10 + the last code fed at 45, drafts to 48
    assert private_blocks_per_beam(45, 1, 16) == 0


def test_topk_blocks_life_then_private():
    plan = topk_blocks(
        own_blocks=2, prompt_len=30, max_tokens=4, k=3, item_len=4, block_size=16, lookahead=0, max_model_len=128
    )
    # life: cdiv(30 + 4, 16) = 3 blocks; B = cdiv(14 + 3, 16) = 2
    assert plan == TopKBlocks(own=2, life=3, private=6)
    assert (plan.extra, plan.total) == (7, 9)
    capped = topk_blocks(
        own_blocks=2, prompt_len=30, max_tokens=None, k=1, item_len=4, block_size=16, lookahead=2, max_model_len=40
    )
    assert capped == TopKBlocks(own=2, life=cdiv(40, 16), private=2)  # max_model_len caps R's life
    # vLLM's allocation already past the life (a larger prefix-hit list): nothing of the life is added
    assert topk_blocks(
        own_blocks=5, prompt_len=30, max_tokens=4, k=1, item_len=4, block_size=16, lookahead=0, max_model_len=128
    ) == TopKBlocks(own=5, life=5, private=2)


def test_drafted_rounds_reserve_private_blocks_for_every_row():
    """K beams, plus at most N - 1 rows per draft level (topk.draft_rows); a drafted row writes its last code
    at P + L - 2 at most and its gamma draft tokens past it, the slots a draft's lookahead of gamma gets."""
    assert beam_rows(3) == beam_rows(3, 40, 0) == beam_rows(3, 0, 4) == 3
    assert beam_rows(20, 40, 3) == 20 + 39 * 3 and beam_rows(2, 1, 4) == 2  # N = 1: each chain stays in its row
    plan = topk_blocks(
        own_blocks=2,
        prompt_len=45,
        max_tokens=4,
        k=2,
        item_len=4,
        block_size=16,
        lookahead=3,
        max_model_len=128,
        rows=beam_rows(2, 3, 3),
    )
    # B = cdiv(13 + 3 + 3, 16) = 2 blocks per row, 8 rows
    assert plan.private == 8 * 2 == 8 * private_blocks_by_positions(45, 4, 16, lookahead=3)


def test_beam_rows_fit_admit_prune():
    rows = BeamRows(max_beams=5)
    assert rows.fits(5) and not rows.fits(6)
    rows.admit("a", 3)
    assert rows.live == 3 and rows.fits(2) and not rows.fits(3)
    rows.admit("b", 2)
    rows.prune({"b"})  # "a" no longer holds blocks
    assert rows.held == {"b": 2} and rows.fits(3) and not rows.fits(4)
    rows.release("b")
    rows.release("b")
    assert rows.held == {} and rows.fits(5)


def test_topk_of_reads_only_positive_integers():
    assert topk_of({"padrec_topk": 5}) == 5
    for extra_args in (None, {}, {"padrec_topk": 0}, {"padrec_topk": True}, {"padrec_topk": "5"}, {"x": 5}):
        assert topk_of(extra_args) is None


# -- vLLM's real Scheduler ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder vLLM's ModelConfig accepts (config.json only) holding the plugin's catalog (L = 4)."""
    folder = tmp_path_factory.mktemp("model")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 128,
        "max_position_embeddings": 256,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    codes = np.array([[a, b, c, d] for a in range(2) for b in range(2) for c in range(2) for d in range(2)])
    ItemCatalog([f"i{n}" for n in range(len(codes))], codes).save(folder / CATALOG_FILE)
    return str(folder)


def make_scheduler(
    model_dir, num_blocks, padrec=None, max_num_seqs=16, max_num_batched_tokens=256, patched=True, max_model_len=256
):
    """vLLM's Scheduler over a real KVCacheManager; ``patched``: the class with this plugin's __init__ wrapper."""
    import torch
    from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched import scheduler as scheduler_module
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from vllm_padrec.integration.patches import scheduler_init

    scheduler_class = scheduler_module.Scheduler
    if patched:  # a subclass carries the wrapper: vLLM's class stays untouched for the rest of the session
        scheduler_class = type("PatchedScheduler", (scheduler_module.Scheduler,), {})
        scheduler_init.apply(SimpleNamespace(Scheduler=scheduler_class))
    vllm_config = VllmConfig(
        device_config=DeviceConfig(device="cpu"),
        scheduler_config=SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_chunked_prefill=True,
            is_encoder_decoder=False,
        ),
        model_config=ModelConfig(
            model=model_dir, dtype="float32", seed=0, skip_tokenizer_init=True, max_model_len=max_model_len
        ),
        cache_config=CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=True),
        additional_config={"padrec": padrec} if padrec is not None else {},
    )
    vllm_config.cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)]
    )
    return scheduler_class(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=BLOCK_SIZE,
    )


def make_request(request_id, prompt_len, max_tokens=ITEM_LEN, k=None, first_token=10):
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)
    extra_args = {"padrec_constraint": 1, "padrec_num_items": 1, "padrec_topk": k} if k is not None else None
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=extra_args)
    prompt = [first_token + n % 50 for n in range(prompt_len)]
    return Request(request_id, prompt, params, None, block_hasher=get_request_block_hasher(BLOCK_SIZE, sha256))


def run_step(scheduler):
    """One engine step: schedule, then a model output of one token for every scheduled request."""
    from vllm.v1.outputs import ModelRunnerOutput

    output = scheduler.schedule()
    ids = list(output.num_scheduled_tokens)
    sampled = []
    for req_id in ids:
        request = scheduler.requests[req_id]
        prefilling = request.num_computed_tokens < request.num_tokens
        sampled.append([] if prefilling else [TOKEN])
    runner_output = ModelRunnerOutput(
        req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled
    )
    scheduler.update_from_output(output, runner_output)
    return output


def block_ids(scheduler, request_id) -> list[int]:
    return [block.block_id for block in scheduler.kv_cache_manager.coordinator.get_blocks(request_id)[0]]


def free_blocks(scheduler) -> int:
    return scheduler.kv_cache_manager.block_pool.get_num_free_blocks()


TOPK = {"topk_max_beams": 8, "max_topk": 8}


def test_admission_allocates_vllms_blocks_then_life_then_private(model_dir):
    # P = 30: vLLM allocates cdiv(30, 16) = 2 blocks; R's life is cdiv(30 + 4, 16) = 3 blocks; B = 2; K = 3
    vanilla = make_scheduler(model_dir, 64, patched=False)
    patched = make_scheduler(model_dir, 64, TOPK)
    outputs = []
    for scheduler in (vanilla, patched):
        scheduler.add_request(make_request("r", 30, k=3))
        outputs.append(scheduler.schedule())
    (new_vanilla,), (new_patched,) = (o.scheduled_new_reqs for o in outputs)
    vllm_ids, ids = new_vanilla.block_ids[0], new_patched.block_ids[0]
    assert len(vllm_ids) == 2 and len(ids) == 3 + 3 * 2
    assert ids[:2] == vllm_ids  # vLLM's own allocation, untouched, first
    assert ids == block_ids(patched, "r")  # the worker gets R's whole list: private blocks = the last K * B
    assert free_blocks(patched) == free_blocks(vanilla) - 7
    assert outputs[1].num_scheduled_tokens == outputs[0].num_scheduled_tokens == {"r": 30}
    assert patched.padrec_beam_rows.held == {"r": 3}
    # the prompt's 2 blocks once, whatever K; R's 3-block life and K * B = 6 private blocks in all
    assert list(patched.padrec_beam_rows.admitted) == [Admission(k=3, prompt_blocks=2, blocks=9, private_blocks=6)]


def test_private_blocks_are_never_hashed_nor_reached_by_r(model_dir):
    # max_tokens 40 > L: R's tokens reach 70, so blocks 0..3 get hashed; R's life (cdiv(70, 16) = 5 blocks)
    # keeps the private blocks past them. A life of P + L (3 blocks) would put private block 0 at index 3.
    scheduler = make_scheduler(model_dir, 64, TOPK)
    scheduler.add_request(make_request("r", 30, max_tokens=40, k=2))
    run_step(scheduler)
    ids = block_ids(scheduler, "r")
    life, private = ids[:5], ids[5:]
    assert len(private) == 2 * 2
    blocks = scheduler.kv_cache_manager.block_pool.blocks
    request = scheduler.requests["r"]
    while not request.is_finished():
        assert block_ids(scheduler, "r") == ids  # R never needs another block
        assert request.num_computed_tokens <= len(life) * BLOCK_SIZE  # R's positions stay in its life
        assert all(blocks[b].block_hash is None for b in private)
        run_step(scheduler)
    assert request.num_tokens == 70
    assert [blocks[b].block_hash is not None for b in life] == [True] * 4 + [False]


def test_refused_when_blocks_are_short_without_preemption(model_dir):
    # 1 + 9 blocks: the null block, then exactly what R needs (2 own + 1 life + 6 private) once A holds 1
    for num_blocks, admitted in ((11, True), (10, False)):
        scheduler = make_scheduler(model_dir, num_blocks, TOPK)
        scheduler.add_request(make_request("a", 8))  # an ordinary request, running first
        run_step(scheduler)
        scheduler.add_request(make_request("r", 30, k=3))
        free_before = free_blocks(scheduler)
        output = run_step(scheduler)
        assert scheduler.running[0].request_id == "a" and output.num_scheduled_tokens["a"] == 1
        assert not output.preempted_req_ids
        if admitted:
            assert output.num_scheduled_tokens["r"] == 30 and free_blocks(scheduler) == free_before - 9
        else:
            assert "r" not in output.num_scheduled_tokens and [r.request_id for r in scheduler.waiting] == ["r"]
            assert free_blocks(scheduler) == free_before and scheduler.padrec_beam_rows.held == {}
            # vLLM alone would have admitted it: its own need (2 blocks) fits
            vanilla = make_scheduler(model_dir, num_blocks, patched=False)
            vanilla.add_request(make_request("a", 8))
            run_step(vanilla)
            vanilla.add_request(make_request("r", 30, k=3))
            assert "r" in run_step(vanilla).num_scheduled_tokens


def test_refused_when_beam_rows_are_short_until_they_free(model_dir):
    scheduler = make_scheduler(model_dir, 64, {"topk_max_beams": 5, "max_topk": 5})
    scheduler.add_request(make_request("r1", 20, k=3))
    scheduler.add_request(make_request("r2", 20, k=3))  # 3 + 3 > 5 beam rows
    output = run_step(scheduler)
    assert set(output.num_scheduled_tokens) == {"r1"} and not output.preempted_req_ids
    free_before = free_blocks(scheduler)
    while scheduler.requests.get("r1") is not None and not scheduler.requests["r1"].is_finished():
        output = run_step(scheduler)
        if "r1" in scheduler.requests:
            assert "r2" not in output.num_scheduled_tokens and free_blocks(scheduler) == free_before
    output = run_step(scheduler)  # r1 finished and freed its rows: r2 is admitted
    assert output.num_scheduled_tokens == {"r2": 20} and scheduler.padrec_beam_rows.held == {"r2": 3}


def test_finish_and_abort_return_every_block(model_dir):
    from vllm.v1.request import RequestStatus

    scheduler = make_scheduler(model_dir, 64, TOPK)
    empty = free_blocks(scheduler)
    scheduler.add_request(make_request("done", 30, k=4))
    scheduler.add_request(make_request("gone", 46, k=4))
    run_step(scheduler)
    assert free_blocks(scheduler) == empty - (3 + 4 * 2) - (4 + 4 * 2)
    assert beam_rows_in_use(scheduler) == 8
    scheduler.finish_requests("gone", RequestStatus.FINISHED_ABORTED)
    assert free_blocks(scheduler) == empty - (3 + 4 * 2)
    assert beam_rows_in_use(scheduler) == 4  # the aborted request's rows are free, with its blocks
    while scheduler.requests:
        run_step(scheduler)
    assert free_blocks(scheduler) == empty
    assert beam_rows_in_use(scheduler) == 0
    scheduler.add_request(make_request("next", 30, k=8))  # all 8 beam rows are free again
    assert run_step(scheduler).num_scheduled_tokens == {"next": 30}


def test_preemption_returns_every_block_and_readmits_without_private_blocks(model_dir):
    # 1 + 8 blocks: R holds 4 (life: cdiv(20 + 30, 16)) + 2 private; A grows to 3 blocks and preempts R
    scheduler = make_scheduler(model_dir, 9, {"topk_max_beams": 2, "max_topk": 2})
    scheduler.add_request(make_request("a", 15, max_tokens=30))
    run_step(scheduler)
    scheduler.add_request(make_request("r", 20, max_tokens=30, k=2))
    run_step(scheduler)
    assert len(block_ids(scheduler, "r")) == 4 + 2 * 1
    request, preempted, resumed = scheduler.requests["r"], False, False
    while scheduler.requests:
        output = run_step(scheduler)
        if "r" in output.preempted_req_ids:
            preempted = True
            assert free_blocks(scheduler) == 8 - 3  # R's 6 blocks are back; A holds 3
        if preempted and not resumed and "r" in output.num_scheduled_tokens:
            resumed = True  # with output already: vLLM's own blocks only, and no beam rows
            assert request.num_output_tokens > 0
            assert len(block_ids(scheduler, "r")) == cdiv(request.num_computed_tokens, BLOCK_SIZE)
            assert scheduler.padrec_beam_rows.held == {}
    assert preempted and resumed
    assert free_blocks(scheduler) == 8
    scheduler.add_request(make_request("next", 20, k=2))  # both beam rows are free again
    assert run_step(scheduler).num_scheduled_tokens == {"next": 20}


@pytest.mark.parametrize("padrec", [None, {"topk_max_beams": 0}])
def test_no_topk_max_beams_is_vllm_unchanged(model_dir, padrec):
    vanilla = make_scheduler(model_dir, 40, patched=False)
    patched = make_scheduler(model_dir, 40, padrec)
    assert not hasattr(patched, "padrec_beam_rows")
    assert "allocate_slots" not in vars(patched.kv_cache_manager)  # vLLM's own method, not a gate
    assert (patched.max_num_running_reqs, patched.max_num_scheduled_tokens) == (16, 256)
    for scheduler in (vanilla, patched):
        scheduler.add_request(make_request("plain", 30, max_tokens=6))
        scheduler.add_request(make_request("topk", 46, max_tokens=6, k=5))
    for _ in range(8):
        out_vanilla, out_patched = run_step(vanilla), run_step(patched)
        assert out_patched.num_scheduled_tokens == out_vanilla.num_scheduled_tokens
        assert [(r.req_id, r.block_ids) for r in out_patched.scheduled_new_reqs] == [
            (r.req_id, r.block_ids) for r in out_vanilla.scheduled_new_reqs
        ]
        assert free_blocks(patched) == free_blocks(vanilla)


def test_beam_rows_are_held_back_from_vllms_batch(model_dir):
    scheduler = make_scheduler(model_dir, 64, TOPK)
    assert (scheduler.max_num_running_reqs, scheduler.max_num_scheduled_tokens) == (16 - 8, 256 - 8)
    for n in range(10):
        scheduler.add_request(make_request(f"p{n}", 8))
    assert len(run_step(scheduler).num_scheduled_tokens) == 8  # 16 slots less 8 beam rows


@pytest.mark.parametrize(
    ("padrec", "says"),
    [
        ({"topk_max_beams": 16, "max_topk": 8}, "max_num_seqs=16 must be more than 16 and max_num_batched_tokens=256"),
        ({"topk_max_beams": 4}, "padrec.topk_max_beams=4 is less than padrec.max_topk=256"),
        ({"topk_max_beams": -1}, "padrec.topk_max_beams must be an integer >= 0"),
        ({"topk_max_beams": True}, "padrec.topk_max_beams must be an integer >= 0"),
    ],
)
def test_server_refuses_settings_it_cannot_serve(model_dir, padrec, says):
    with pytest.raises(PadRecError, match=says.replace(".", r"\.")):
        make_scheduler(model_dir, 64, padrec)


def test_apply_is_idempotent():
    from vllm.v1.core.sched import scheduler as scheduler_module

    from vllm_padrec.integration.patches import scheduler_init

    # vLLM's own __init__ (the plugin, loaded by another test, may have patched Scheduler already)
    original = getattr(scheduler_module.Scheduler.__init__, "__wrapped__", scheduler_module.Scheduler.__init__)
    scheduler_class = type("PatchedScheduler", (scheduler_module.Scheduler,), {})
    module = SimpleNamespace(Scheduler=scheduler_class)
    scheduler_init.apply(module)
    wrapped = scheduler_class.__init__
    scheduler_init.apply(module)
    assert scheduler_class.__init__ is wrapped and wrapped.__wrapped__ is original


# --- the setting itself: ListSettings.topk_max_beams, read by the scheduler and the model state -------------


@pytest.mark.parametrize(
    ("padrec", "beams"),
    [
        (None, 0),
        ({"topk_max_beams": 0}, 0),
        ({"topk_max_beams": 8, "max_topk": 8}, 8),
        ({"topk_max_beams": 65536}, 65536),
    ],
)
def test_topk_max_beams_is_a_list_setting(padrec, beams):
    from vllm_padrec.integration.list_settings import ListSettings

    settings = ListSettings.from_additional_config({"padrec": padrec} if padrec else None)
    assert settings.topk_max_beams == beams and settings.topk_on == (beams > 0)


@pytest.mark.parametrize(
    ("padrec", "says"),
    [
        ({"topk_max_beams": 65537}, "padrec.topk_max_beams must be an integer >= 0 and <= 65536"),
        ({"topk_max_beams": -1}, "padrec.topk_max_beams must be an integer >= 0 and <= 65536"),
        ({"topk_max_beams": 2.0}, "padrec.topk_max_beams must be an integer >= 0 and <= 65536"),
        ({"topk_max_beams": "8"}, "padrec.topk_max_beams must be an integer >= 0 and <= 65536"),
        ({"topk_max_beams": 7, "max_topk": 8}, "padrec.topk_max_beams=7 is less than padrec.max_topk=8"),
    ],
)
def test_topk_max_beams_refused_at_start(padrec, says):
    from vllm_padrec.integration.list_settings import ListSettings

    with pytest.raises(PadRecError, match=says.replace(".", r"\.")):
        ListSettings.from_additional_config({"padrec": padrec})


@pytest.mark.parametrize(("padrec", "made"), [({}, False), ({"topk_max_beams": 8, "max_topk": 8}, True)])
def test_model_state_builds_an_engine_from_the_same_setting(padrec, made):
    from vllm_padrec.integration.list_settings import ListSettings
    from vllm_padrec.integration.patches import init_model_state
    from vllm_padrec.topk.engine import TopKEngine

    engine = init_model_state.topk_engine(ListSettings.from_additional_config({"padrec": padrec}), "cpu")
    assert isinstance(engine, TopKEngine) if made else engine is None


def test_drafted_rounds_admit_rows_and_hold_back_their_draft_tokens(model_dir, monkeypatch):
    """On a server that drafts its top-K beams (topk_drafting: N = 3, gamma = 2 here), a request of K beams holds
    K + (N - 1) * gamma rows in the ledger and rows * B private blocks, and every beam row holds back 1 + gamma
    token rows of vLLM's batch."""
    from vllm_padrec.integration.patches import scheduler_init
    from vllm_padrec.integration.topk_drafting import TopKDrafting

    monkeypatch.setattr(scheduler_init, "topk_drafting", lambda config, settings: TopKDrafting(3, 2, ("strict",)))
    scheduler = make_scheduler(model_dir, 64, {"topk_max_beams": 12, "max_topk": 8})
    assert (scheduler.max_num_running_reqs, scheduler.max_num_scheduled_tokens) == (16 - 12, 256 - 12 * 3)
    scheduler.add_request(make_request("r1", 30, k=3))  # 3 + 2 * 2 = 7 rows
    scheduler.add_request(make_request("r2", 30, k=2))  # 6 more rows: 13 > 12, it waits
    output = run_step(scheduler)
    assert set(output.num_scheduled_tokens) == {"r1"} and scheduler.padrec_beam_rows.held == {"r1": 7}
    # P = 30, no lookahead without a draft model here: B = cdiv(14 + 3, 16) = 2 blocks per row
    (admission,) = scheduler.padrec_beam_rows.admitted
    assert admission == Admission(k=3, prompt_blocks=2, blocks=3 + 7 * 2, private_blocks=7 * 2)


def test_drafted_rounds_that_leave_no_token_rows_are_refused_at_start(model_dir, monkeypatch):
    from vllm_padrec.integration.patches import scheduler_init
    from vllm_padrec.integration.topk_drafting import TopKDrafting

    monkeypatch.setattr(scheduler_init, "topk_drafting", lambda config, settings: TopKDrafting(1, 4, ("strict",)))
    with pytest.raises(PadRecError, match=r"more than 320 tokens \(64 rows of 5\)"):
        make_scheduler(model_dir, 64, {"topk_max_beams": 64, "max_topk": 8}, max_num_seqs=128)


def test_top_k_beside_a_draft_without_drafted_rounds_is_refused_at_start():
    """The scheduler's start-up check is ``topk_drafting``'s (tests/test_topk_drafting.py has its cases)."""
    from vllm_padrec.integration.list_settings import ListSettings
    from vllm_padrec.integration.patches import scheduler_init

    spec = SimpleNamespace(method="eagle", use_eagle=lambda: True)
    settings = ListSettings(topk_max_beams=8, max_topk=8)
    with pytest.raises(PadRecError, match=r"runs in drafted rounds: set padrec\.topk_draft_beams \(1, or N > 1"):
        scheduler_init.topk_drafting(SimpleNamespace(speculative_config=spec), settings)
