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
    """Register vllm-padrec's architectures and install its vLLM patches. Idempotent: later calls do nothing.

    Refuses to start (``UnsupportedVllmError``) on a vLLM other than the one the patches were written for.
    Imports no model code: architectures are registered by name, and each patch (one module each in
    ``vllm_padrec.integration.patches``) is applied when vLLM imports the module it patches, in the
    processes that import it (worker-side patches in the processes that build a GPU worker).
    """
    global _registered
    if _registered:
        return
    import vllm
    from vllm import ModelRegistry

    from vllm_padrec.integration import patches

    patches.check_vllm_version(vllm.__version__)
    supported = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    patches.install()
    _registered = True
