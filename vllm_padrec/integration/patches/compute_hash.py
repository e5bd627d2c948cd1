"""Patch: ``vllm.config.speculative.SpeculativeConfig.compute_hash`` (vLLM 0.26.0).

What: a wrapper that adds the draft to the hash vLLM's compile cache is keyed by: the draft model
config's own hash (its folder, dtype, ...), its architectures and Hugging Face config, and the number
of speculative tokens.

Why: an engine compiles its target and its draft with one ``VllmConfig`` and keeps both in one cache
entry keyed by ``VllmConfig.compute_hash()`` (compilation/backends.py:1058-1070; the AOT artifacts
under ``torch_compile_cache/torch_aot_compile/<hash>``, compilation/decorators.py:537-549), but
``SpeculativeConfig.compute_hash`` (config/speculative.py:291-328) hashes the draft only for methods
with auxiliary hidden states (eagle3, dflash, ...): for ``method="eagle"`` every draft of a target
gets the same key. On the H200 an engine with vLLM's EAGLE draft, started after one with the PAD-Rec
draft (both "eagle"), loaded the PAD-Rec draft's compiled graph and died at its first draft step
(``ValueError: too many values to unpack (expected 5)``); the same happens between two PAD-Rec drafts
of different shapes, and between two values of ``num_speculative_tokens`` (vLLM issue #53366).
With the draft in the key, each (target, draft) pair compiles into its own entry; the cost is a
compile on the first start of each pair, never a wrong graph.

How: wraps the class attribute in every process, at ``register()`` (vLLM has imported
``vllm.config.speculative`` by then), before any engine computes a hash; the original's factors stay
first, so nothing else about the key changes. Idempotent.

Why no supported hook serves: the key is computed from ``VllmConfig.compute_hash`` alone; a plugin
contributes to it only through config fields vLLM already hashes, and the draft's are not among them.

Unnecessary when: vLLM's ``SpeculativeConfig.compute_hash`` includes the draft model for every method
(vLLM PR #47911 does so for the auxiliary-hidden-state methods only).
"""

from __future__ import annotations

import hashlib
import json
from types import ModuleType

from vllm_padrec.integration.patches.marking import is_patched, mark_patched

TARGETS = ("vllm.config.speculative",)


def draft_factors(spec_config) -> list[str]:
    """What identifies the draft's computation graph beyond vLLM's own factors."""
    draft = getattr(spec_config, "draft_model_config", None)
    factors = [str(getattr(spec_config, "num_speculative_tokens", None))]
    if draft is not None:
        hf_config = getattr(draft, "hf_config", None)
        to_dict = getattr(hf_config, "to_dict", None)
        config = to_dict() if callable(to_dict) else {}
        factors += [draft.compute_hash(), json.dumps(config, sort_keys=True, default=str)]
    return factors


def apply(module: ModuleType) -> None:
    """Install the wrapper on ``SpeculativeConfig`` (idempotent)."""
    SpeculativeConfig = module.SpeculativeConfig
    original = SpeculativeConfig.compute_hash
    if is_patched(original):
        return

    def compute_hash(self) -> str:
        factors = [original(self), *draft_factors(self)]
        return hashlib.sha256("\n".join(factors).encode()).hexdigest()

    mark_patched(compute_hash, original)
    compute_hash.__doc__ = original.__doc__
    SpeculativeConfig.compute_hash = compute_hash
