"""vllm-padrec: PAD-Rec speculative decoding and catalog-constrained decoding for LLM recommenders.

Importing this package has no side effects and imports nothing heavy; vLLM calls ``register()``
through the ``vllm.general_plugins`` entry point, in every vLLM process.
"""

from __future__ import annotations

__version__ = "0.1.0"

# vLLM architecture name -> "module:Class", registered lazily (by string: nothing is imported
# until vLLM instantiates the architecture).
ARCHITECTURES: dict[str, str] = {
    # the PAD-Rec draft head, served with speculative method "eagle"
    "EaglePadRecForCausalLM": "vllm_padrec.integration.draft_model:EaglePadRecForCausalLM",
}

_registered = False


def register() -> None:
    """Register vllm-padrec's architectures and apply its vLLM patches. Idempotent: later calls do nothing.

    Imports no model code: architectures are registered by name, and the patches (one module each in
    ``vllm_padrec.integration``) only wrap vLLM functions; what they build is imported when vLLM calls them.
    """
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    from vllm_padrec.integration import (
        cli_flag,
        patch_init_model_state,
        patch_init_speculator,
        patch_process_inputs,
        patch_speculative_hash,
        patch_to_beam_search_params,
    )

    supported = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    patch_init_speculator.apply()  # PadRecSpeculator for PAD-Rec drafts (V2)
    patch_init_model_state.apply()  # catalog masks on verification and draft logits (V2)
    patch_process_inputs.apply()  # list settings of every request checked in the front end (400, not a dead engine)
    patch_to_beam_search_params.apply()  # vLLM's beam search would drop the list settings: refused
    patch_speculative_hash.apply()  # the draft in the compile-cache key (no graph shared between drafts)
    cli_flag.apply()  # vllm serve --speculative-model
    _registered = True
