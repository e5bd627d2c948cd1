"""Patch: ``vllm.v1.engine.input_processor.InputProcessor.process_inputs`` (vLLM 0.26.0).

What: a wrapper that checks a request's list settings (``padrec_*`` keys of
``SamplingParams.extra_args``, i.e. ``vllm_xargs``) against the server's settings and catalog
(``list_settings.check_request``) before vLLM processes the request. A request the server cannot
serve exactly as asked raises ``vllm.exceptions.VLLMValidationError`` naming the key: the OpenAI
server answers 400 (its ``ValueError`` handler), ``LLM.generate`` raises it to the caller, and
nothing reaches the engine. Top-K requests (``padrec_topk``) are checked like any other, and refused on a
server that holds no beam rows for them (``padrec.topk_max_beams`` = 0).

Why: every request of every entry point (``/v1/completions``, ``/v1/chat/completions``,
``/v1/recommendations``, offline ``LLM``) passes ``process_inputs`` in the front-end process
(AsyncLLM.add_request, v1/engine/async_llm.py:349; LLMEngine.add_request, v1/engine/llm_engine.py:250),
before the engine core sees it. vLLM validates ``extra_args`` nowhere (they are free-form), and an
exception in the engine's model runner stops the engine for every user, so client values must be
checked here. vLLM's own per-parameter check, ``SamplingParams.verify``, receives no ``VllmConfig``
(the server's ``additional_config`` and model folder), and the logits-processor ``validate_params``
hook is unavailable with speculative decoding (VLLM_NOTES 5.4).

How: wraps the class attribute when ``vllm.v1.engine.input_processor`` is imported (the front end's
``LLMEngine`` / ``AsyncLLM``), so every InputProcessor uses it; idempotent.
The engine side parses the same settings with the same function (``request_lists``) and contains any
failure to the request, so this check is the edge, not the only guard.

Unnecessary when: vLLM offers plugins a hook to validate ``extra_args`` in the front end.
"""

from __future__ import annotations

import functools
from types import ModuleType

from vllm_padrec.integration.patches.marking import is_patched, mark_patched

TARGETS = ("vllm.v1.engine.input_processor",)


def apply(module: ModuleType) -> None:
    """Install the wrapper on ``InputProcessor`` (idempotent)."""
    InputProcessor = module.InputProcessor
    original = InputProcessor.process_inputs
    if is_patched(original):
        return

    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        check_params(self.vllm_config, params)
        return original(self, request_id, prompt, params, *args, **kwargs)

    mark_patched(process_inputs, original)
    InputProcessor.process_inputs = process_inputs


def check_params(vllm_config, params) -> None:
    """Raise ``VLLMValidationError`` (a ValueError) for list settings this server cannot serve."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    from vllm_padrec.integration.list_settings import check_request
    from vllm_padrec.lists import ListSpecError

    if not isinstance(params, SamplingParams):
        return
    try:
        check_request(vllm_config, params.extra_args)
    except ListSpecError as error:
        raise VLLMValidationError(str(error), parameter=f"vllm_xargs.{error.key}") from None
