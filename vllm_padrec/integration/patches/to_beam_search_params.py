"""Patch: ``to_beam_search_params`` of vLLM's ``CompletionRequest`` and ``ChatCompletionRequest`` (vLLM 0.26.0).

What: a wrapper that refuses a request asking for vLLM's beam search (``use_beam_search``) together
with the plugin's list settings (``padrec_*`` keys of ``vllm_xargs``): ``VLLMValidationError``, a 400
naming the key. Both classes' method of this one name is wrapped here, as one rule.

Why: vLLM's beam search runs in the front end and builds each beam's ``SamplingParams`` itself,
without ``extra_args`` (entrypoints/generate/beam_search/online.py; VLLM_NOTES 9), so the settings
would be dropped and the client would get unconstrained beams for a constrained request. The
front-end check (``patches.process_inputs``) sees only those beam requests, which carry no settings.

How: wraps each class's method when its protocol module is imported (the OpenAI API server only);
idempotent. No supported hook serves: vLLM's beam search reads no plugin code before dropping the keys.

Unnecessary when: vLLM's beam search passes ``vllm_xargs`` on to its per-beam requests, or this
plugin serves top-K requests itself.
"""

from __future__ import annotations

from types import ModuleType

from vllm_padrec.integration.patches.marking import is_patched, mark_patched

# module -> the request class whose method is wrapped
_CLASSES = {
    "vllm.entrypoints.openai.completion.protocol": "CompletionRequest",
    "vllm.entrypoints.openai.chat_completion.protocol": "ChatCompletionRequest",
}
TARGETS = tuple(_CLASSES)


def check_beam_search_request(request) -> None:
    """Raise ``VLLMValidationError`` for beam search with list settings."""
    from vllm.exceptions import VLLMValidationError

    from vllm_padrec.lists import KEY_PREFIX

    keys = sorted(k for k in (request.vllm_xargs or {}) if isinstance(k, str) and k.startswith(KEY_PREFIX))
    if keys:
        raise VLLMValidationError(
            f"{keys[0]} does not apply to vLLM's beam search (use_beam_search drops vllm_xargs): ask without "
            "use_beam_search, or for one list per request",
            parameter=f"vllm_xargs.{keys[0]}",
        )


def apply(module: ModuleType) -> None:
    """Install the wrapper on the module's request class (idempotent)."""
    cls = getattr(module, _CLASSES[module.__name__])
    original = cls.to_beam_search_params
    if is_patched(original):
        return

    def to_beam_search_params(self, *args, **kwargs):
        check_beam_search_request(self)
        return original(self, *args, **kwargs)

    mark_patched(to_beam_search_params, original)
    to_beam_search_params.__doc__ = original.__doc__
    cls.to_beam_search_params = to_beam_search_params
