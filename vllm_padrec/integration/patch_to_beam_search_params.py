"""Patch: ``to_beam_search_params`` of vLLM's ``CompletionRequest`` and ``ChatCompletionRequest`` (vLLM 0.26.0).

What: a wrapper that refuses a request asking for vLLM's beam search (``use_beam_search``) together
with the plugin's list settings (``padrec_*`` keys of ``vllm_xargs``): ``VLLMValidationError``, a 400
naming the key. Both classes' method of this one name is wrapped here, as one rule.

Why: vLLM's beam search runs in the front end and builds each beam's ``SamplingParams`` itself,
without ``extra_args`` (entrypoints/generate/beam_search/online.py; VLLM_NOTES 9), so the settings
would be dropped and the client would get unconstrained beams for a constrained request. The
front-end check (``patch_process_inputs``) sees only those beam requests, which carry no settings.

Unnecessary when: vLLM's beam search passes ``vllm_xargs`` on to its per-beam requests, or this
plugin serves top-K requests itself.
"""

from __future__ import annotations

_TARGETS = (
    ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
    ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
)


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


def apply() -> None:
    """Install the wrappers (idempotent)."""
    import importlib

    for module_name, class_name in _TARGETS:
        cls = getattr(importlib.import_module(module_name), class_name)
        original = cls.to_beam_search_params
        if getattr(original, "_padrec_patch", False):
            continue

        def to_beam_search_params(self, *args, _original=original, **kwargs):
            check_beam_search_request(self)
            return _original(self, *args, **kwargs)

        to_beam_search_params._padrec_patch = True
        to_beam_search_params.__wrapped__ = original
        to_beam_search_params.__doc__ = original.__doc__
        cls.to_beam_search_params = to_beam_search_params
