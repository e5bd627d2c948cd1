"""Patch: ``vllm.v1.worker.gpu.spec_decode.init_speculator`` (vLLM 0.26.0, Model Runner V2).

What: a wrapper that returns ``PadRecSpeculator`` when the draft's architecture is
``EaglePadRecForCausalLM`` (method "eagle"), and calls vLLM's own function for every other draft.

Why: V2 builds its speculator from a hard-coded method switch (spec_decode/__init__.py:8-40) and
hands the draft model no step index; the PAD-Rec head needs the speculator's ``current_draft_step``
(attached by ``PadRecSpeculator.load_draft_model``) and masked drafts (``sample_draft``).

How: the runner module binds the name at import (``from vllm.v1.worker.gpu.spec_decode import
init_speculator``, v1/worker/gpu/model_runner.py:106) and workers import it only when they build the
runner, after loading general plugins (v1/worker/worker_base.py:245-253, gpu_worker.py:402-408), so
patching the package attribute in ``register()`` is enough; a runner module imported earlier is
patched too. Idempotent: the wrapper is installed once.

Unnecessary when: vLLM lets a draft model choose its speculator class (or passes the draft step to
the draft's forward).
"""

from __future__ import annotations

import sys

_MODULE = "vllm.v1.worker.gpu.spec_decode"
_RUNNER_MODULE = "vllm.v1.worker.gpu.model_runner"


def wants_padrec_speculator(vllm_config) -> bool:
    """True when the speculative draft is the PAD-Rec head served through method "eagle"."""
    from vllm_padrec.draft.config import PADREC_ARCHITECTURE

    spec = vllm_config.speculative_config
    if spec is None or spec.method != "eagle" or spec.draft_model_config is None:
        return False
    return PADREC_ARCHITECTURE in (spec.draft_model_config.architectures or ())


def make_init_speculator(original):
    def init_speculator(vllm_config, device):
        if wants_padrec_speculator(vllm_config):
            from vllm_padrec.integration.speculator import PadRecSpeculator

            return PadRecSpeculator(vllm_config, device)
        return original(vllm_config, device)

    init_speculator.__wrapped__ = original
    init_speculator._padrec_patch = True
    return init_speculator


def apply() -> None:
    """Install the wrapper (idempotent)."""
    import importlib

    module = importlib.import_module(_MODULE)
    current = module.init_speculator
    if not getattr(current, "_padrec_patch", False):
        module.init_speculator = make_init_speculator(current)
    runner = sys.modules.get(_RUNNER_MODULE)
    if runner is not None and not getattr(runner.init_speculator, "_padrec_patch", False):
        runner.init_speculator = make_init_speculator(runner.init_speculator)
