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
- ``padrec_lists`` is how the draft finds the masks: V2 hands the ModelState to the speculator in
  ``set_attn`` (spec_decode/speculator.py:184-192), and ``PadRecSpeculator.set_attn`` passes the lists
  on to the draft model, whose ``compute_logits`` masks the draft's logits.

On a server that enables top-K (``ListSettings.topk_max_beams`` > 0, the setting ``patches/scheduler_init.py``
reads too) the state also gets a ``topk.engine.TopKEngine`` (``padrec_topk_engine``) and its answers
store (``padrec_topk_answers``, read by ``patches/sample_tokens.py``): ``MaskingSampler`` calls the
engine's hooks around the mask, ``add_request`` tells it each new beam's slot and
``apply_staged_writes`` lets it write the beams' first tokens; the engine also gets the lists, whose
``mask_topk_owners`` keeps R's own row to ``<pad>`` (``</s>`` at its last step). A top-K request R and its beams (which
carry R's ``extra_args``) get the settings row of R's one-item list, read without ``padrec_topk`` (``topk``
has no column): R by ``RequestLists.add_request`` with ``drop_topk``, each beam as a device copy of R's row
(``add_copy``; ``TopKEngine.owner_slot`` finds R's slot). ``RequestLists`` keeps refusing ``padrec_topk``
on a server without an engine. With ``topk_max_beams`` = 0 nothing of this exists.

Why: V2 applies no plugin logits processors (and refuses them with speculative decoding), and the
ModelState hooks are its per-model extension point. vLLM's supported way in is a model class that
returns its own ModelState (``get_model_state_cls()``, model_states/__init__.py:17-20, used by
longcat_flash_ngram.py and diffusion_gemma.py), but that is the *target's* class: the target is any
plain Llama-family checkpoint served under vLLM's own architecture (``LlamaForCausalLM``,
``Qwen2ForCausalLM``, ...), which users do not re-register, and replacing those registry entries would
change every model of the family served next to the plugin. So the factory is wrapped; the state it
builds is vLLM's own (default, encoder-decoder or hybrid), its hooks extended per instance.

Copied from vLLM: the ``RejectionSampler(sampler, speculative_config, device)`` line in
``custom_sampler``. ``custom_sampler`` returns both samplers or neither (model_runner.py:337-346), and
V2 builds its own ``RejectionSampler`` only when it returns neither, after which no hook sees it. The
alternative, masking inside the shared ``Sampler.apply_sampling_params`` that vLLM's rejection sampler
calls, would mask after vLLM takes raw logprobs and NaN counts from the logits (sample/sampler.py:84-100),
so ``logprobs_mode="raw_logprobs"`` answers would change: the line stays, with its vLLM source cited.

How: applied right after ``vllm.v1.worker.gpu.model_states`` is imported (``patches.install``): the
runner binds the name at its own import (model_runner.py:99), which comes after; a runner module
imported earlier is patched too. Idempotent.

Unnecessary when: vLLM accepts a sampler / logits hook from plugins that works with speculative
decoding, or lets a plugin choose the ModelState of a model it does not own.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from vllm_padrec.integration.patches.marking import mark_patched, wrap_attribute

TARGETS = ("vllm.v1.worker.gpu.model_states",)
_RUNNER_MODULE = "vllm.v1.worker.gpu.model_runner"


def is_topk_row(new_req_data: Any) -> bool:
    """Whether the request is a top-K request R or one of its beams (which carry R's ``extra_args``)."""
    from vllm_padrec.topk.beams import is_beam_req_id, topk_of_request

    return is_beam_req_id(new_req_data.req_id) or topk_of_request(new_req_data.sampling_params) is not None


def install(state, lists, vllm_config, device, topk=None) -> None:
    """Hook ``lists`` (a RequestLists) and ``topk`` (a TopKEngine, or None) into one ModelState instance."""
    from vllm_padrec.integration.masking_sampler import MaskingSampler

    base_custom_sampler = state.custom_sampler
    base_add_request = state.add_request
    base_apply_staged_writes = state.apply_staged_writes

    def custom_sampler(sampler):
        custom = base_custom_sampler(sampler)
        if custom:
            sampler, rejection_sampler = custom
        elif vllm_config.speculative_config is not None:
            # what GPUModelRunner.load_model builds when no custom sampler is returned (model_runner.py:341-346)
            from vllm.v1.worker.gpu.spec_decode.rejection_sampler import RejectionSampler

            rejection_sampler = RejectionSampler(sampler, vllm_config.speculative_config, device)
        else:
            rejection_sampler = None
        lists.req_states = sampler.req_states
        if topk is not None:
            topk.req_states = sampler.req_states
        wrapped = MaskingSampler(rejection_sampler, lists, topk) if rejection_sampler is not None else None
        return MaskingSampler(sampler, lists, topk), wrapped

    def add_request(req_index, new_req_data):
        base_add_request(req_index, new_req_data)
        if topk is not None and is_topk_row(new_req_data):
            topk.note_new_request(req_index, new_req_data.req_id)
            owner = topk.owner_slot(new_req_data.req_id)
            if owner is not None:  # a beam: R's row
                lists.add_copy(req_index, owner)
            else:
                lists.add_request(req_index, new_req_data, drop_topk=True)
        else:
            lists.add_request(req_index, new_req_data)

    def apply_staged_writes():
        base_apply_staged_writes()
        lists.apply_staged_writes()
        if topk is not None:
            topk.stage_beam_slots()

    state.custom_sampler = custom_sampler
    state.add_request = add_request
    state.apply_staged_writes = apply_staged_writes
    state.padrec_lists = lists
    if topk is not None:
        topk.lists = lists  # R's own row: <pad> / </s> only (RequestLists.mask_topk_owners)
        state.padrec_topk_engine = topk
        state.padrec_topk_answers = topk.answers


def topk_engine(settings, device):
    """The runner's TopKEngine on a server that enables top-K (``ListSettings.topk_on``), else None."""
    if not settings.topk_on:
        return None
    from vllm_padrec.topk.engine import TopKEngine

    return TopKEngine(device)


def make_init_model_state(original):
    def init_model_state(vllm_config, model, encoder_cache, device):
        state = original(vllm_config, model, encoder_cache, device)
        if getattr(vllm_config.model_config, "runner_type", "generate") == "generate":
            from vllm_padrec.integration.request_lists import RequestLists

            lists = RequestLists.from_vllm_config(vllm_config, device)
            if lists is not None:
                install(state, lists, vllm_config, device, topk_engine(lists.settings, device))
        return state

    mark_patched(init_model_state, original)
    return init_model_state


def apply(module: ModuleType) -> None:
    """Install the wrapper in ``vllm.v1.worker.gpu.model_states`` (and an imported runner); idempotent."""
    wrap_attribute(module, "init_model_state", make_init_model_state)
    # a runner imported earlier bound vLLM's function; one being imported now binds the wrapper itself
    wrap_attribute(sys.modules.get(_RUNNER_MODULE), "init_model_state", make_init_model_state)
