"""The draft heads: PAD-Rec (EAGLE = every PAD-Rec flag off), Medusa, and their vLLM checkpoints.

Exports are resolved lazily, so that ``vllm_padrec.draft.config`` (used by the vLLM plugin to
recognise a PAD-Rec draft) imports neither transformers' models nor triton.
"""

from importlib import import_module

# exported name -> defining module
_EXPORTS = {
    "VARIANTS": "vllm_padrec.draft.config",
    "DraftConfig": "vllm_padrec.draft.config",
    "PadRecDraftHead": "vllm_padrec.draft.head",
    "new_cache": "vllm_padrec.draft.head",
    "MedusaConfig": "vllm_padrec.draft.medusa",
    "MedusaHeads": "vllm_padrec.draft.medusa",
    "load_draft": "vllm_padrec.draft.checkpoint",
    "save_draft": "vllm_padrec.draft.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vllm_padrec.draft' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
