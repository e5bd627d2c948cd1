"""The vLLM plugin entry: lazy import, idempotent register(), registry lookup, patch selection."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import vllm_padrec
from vllm_padrec.integration import patch_init_model_state, patch_init_speculator


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
    patch_init_speculator.apply()
    patch_init_model_state.apply()
    assert not getattr(spec_decode.init_speculator.__wrapped__, "_padrec_patch", False)


def spec_config(method: str, architectures: list[str]):
    draft = SimpleNamespace(architectures=architectures)
    return SimpleNamespace(speculative_config=SimpleNamespace(method=method, draft_model_config=draft))


def test_init_speculator_picks_padrec_only_for_our_draft(monkeypatch):
    from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

    from vllm_padrec.integration import speculator

    assert issubclass(speculator.PadRecSpeculator, EagleSpeculator)
    built = []
    monkeypatch.setattr(speculator, "PadRecSpeculator", lambda config, device: built.append("padrec") or "padrec")
    init = patch_init_speculator.make_init_speculator(lambda config, device: "vllm")
    assert init(spec_config("eagle", ["EaglePadRecForCausalLM"]), "cpu") == "padrec"
    assert init(spec_config("eagle", ["EagleLlamaForCausalLM"]), "cpu") == "vllm"  # the EAGLE baseline
    assert init(spec_config("eagle3", ["EaglePadRecForCausalLM"]), "cpu") == "vllm"
    assert init(spec_config("mtp", ["DeepSeekMTPModel"]), "cpu") == "vllm"
    ngram = SimpleNamespace(speculative_config=SimpleNamespace(method="ngram", draft_model_config=None))
    assert init(ngram, "cpu") == "vllm"
    assert built == ["padrec"]


def test_model_state_hooks_wrap_samplers():
    """install(): the samplers mask first, requests are recorded, the state exposes the lists."""
    from vllm_padrec.integration.request_lists import MaskingSampler

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
    patch_init_model_state.install(state, lists, config, "cpu")
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
