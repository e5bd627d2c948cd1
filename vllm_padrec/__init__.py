"""vllm-padrec: PAD-Rec speculative decoding and catalog-constrained decoding for LLM recommenders.

Importing this package has no side effects and imports nothing heavy; vLLM calls ``register()``
through the ``vllm.general_plugins`` entry point, in every vLLM process.
"""

from __future__ import annotations

__version__ = "0.1.0"

# vLLM architecture name -> "module:Class", registered lazily (by string: nothing is imported
# until vLLM instantiates the architecture).
ARCHITECTURES: dict[str, str] = {}

_registered = False


def register() -> None:
    """Register vllm-padrec's architectures with vLLM. Idempotent: later calls do nothing."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    _registered = True
