"""Patch: ``vllm.v1.worker.gpu.model_states.init_model_state`` (vLLM 0.26.0, Model Runner V2).

What: a wrapper that builds vLLM's ModelState for the target as usual and, when a catalog is
available (``request_lists.RequestLists.from_vllm_config``), hooks the list constraints into that
state's V2 hooks:

- ``custom_sampler(sampler)`` (model_states/interface.py:168-175, called once in
  ``GPUModelRunner.load_model``, model_runner.py:337-346) returns the sampler and a
  ``RejectionSampler`` wrapped in ``MaskingSampler``: every logits row V2 samples or verifies
  (model_runner.py:1085-1117: all draft positions + the bonus row) is masked before sampling;
- ``add_request`` / ``apply_staged_writes`` (called for every new request, model_runner.py:791-833)
  record each request's settings from ``SamplingParams.extra_args``;
- ``padrec_lists`` is how ``PadRecSpeculator`` finds the masks for its drafts (V2 hands the
  ModelState to the speculator in ``set_attn``, spec_decode/speculator.py:184-192).

Why: V2 applies no plugin logits processors (and refuses them with speculative decoding), and the
ModelState hooks are its per-model extension point, but they are chosen by the target model class
(``get_model_state_cls``); wrapping the factory keeps plain ``LlamaForCausalLM`` targets unchanged.

How: like ``init_speculator``, the runner binds the name at import (model_runner.py:99) after the
plugin loads; a runner module imported earlier is patched too. Idempotent.

Unnecessary when: vLLM accepts a sampler / logits hook from plugins that works with speculative
decoding, or a target architecture of ours provides ``get_model_state_cls``.
"""

from __future__ import annotations

import sys

_MODULE = "vllm.v1.worker.gpu.model_states"
_RUNNER_MODULE = "vllm.v1.worker.gpu.model_runner"


def install(state, lists, vllm_config, device) -> None:
    """Hook ``lists`` (a RequestLists) into the hooks of one ModelState instance."""
    from vllm_padrec.integration.request_lists import MaskingSampler

    base_custom_sampler = state.custom_sampler
    base_add_request = state.add_request
    base_apply_staged_writes = state.apply_staged_writes

    def custom_sampler(sampler):
        custom = base_custom_sampler(sampler)
        if custom:
            sampler, rejection_sampler = custom
        elif vllm_config.speculative_config is not None:
            # what GPUModelRunner.load_model builds when no custom sampler is returned
            from vllm.v1.worker.gpu.spec_decode.rejection_sampler import RejectionSampler

            rejection_sampler = RejectionSampler(sampler, vllm_config.speculative_config, device)
        else:
            rejection_sampler = None
        lists.req_states = sampler.req_states
        wrapped = MaskingSampler(rejection_sampler, lists) if rejection_sampler is not None else None
        return MaskingSampler(sampler, lists), wrapped

    def add_request(req_index, new_req_data):
        base_add_request(req_index, new_req_data)
        lists.add_request(req_index, new_req_data)

    def apply_staged_writes():
        base_apply_staged_writes()
        lists.apply_staged_writes()

    state.custom_sampler = custom_sampler
    state.add_request = add_request
    state.apply_staged_writes = apply_staged_writes
    state.padrec_lists = lists


def make_init_model_state(original):
    def init_model_state(vllm_config, model, encoder_cache, device):
        state = original(vllm_config, model, encoder_cache, device)
        if getattr(vllm_config.model_config, "runner_type", "generate") == "generate":
            from vllm_padrec.integration.request_lists import RequestLists

            lists = RequestLists.from_vllm_config(vllm_config, device)
            if lists is not None:
                install(state, lists, vllm_config, device)
        return state

    init_model_state.__wrapped__ = original
    init_model_state._padrec_patch = True
    return init_model_state


def apply() -> None:
    """Install the wrapper (idempotent)."""
    import importlib

    module = importlib.import_module(_MODULE)
    if not getattr(module.init_model_state, "_padrec_patch", False):
        module.init_model_state = make_init_model_state(module.init_model_state)
    runner = sys.modules.get(_RUNNER_MODULE)
    if runner is not None and not getattr(runner.init_model_state, "_padrec_patch", False):
        runner.init_model_state = make_init_model_state(runner.init_model_state)
