"""Patch: ``vllm.v1.worker.gpu.spec_decode.init_speculator`` (vLLM 0.26.0, Model Runner V2).

What: a wrapper that returns ``PadRecSpeculator`` when the draft's architecture is
``EaglePadRecForCausalLM`` (method "eagle"), or when the draft is another EAGLE draft (methods "eagle" and
"eagle3": vLLM's ``EagleSpeculator``) on a server whose ``padrec.mask_drafts`` is on (the default), so that
every draft the plugin serves under V2 is masked by the catalog; vLLM's own function builds every other
speculator (MTP, DFlash, DSpark, and EAGLE drafts with ``mask_drafts`` off: vanilla vLLM).

Why: V2 builds its speculator from a hard-coded method switch (spec_decode/__init__.py:8-40) and
hands the draft model no step index; the PAD-Rec head needs the speculator's ``current_draft_step``,
request mapping and draft tokens (attached by ``PadRecSpeculator.load_draft_model``) and the list masks
(``PadRecSpeculator.set_attn``). The masking itself uses vLLM's supported path: the draft model's
``compute_logits``, which V2 calls for greedy and Gumbel drafts alike (spec_decode/speculator.py:264-295).

How: applied right after ``vllm.v1.worker.gpu.spec_decode`` is imported (``patches.install``), i.e. in
the process that builds a V2 runner: the runner module binds the name at its own import (``from
vllm.v1.worker.gpu.spec_decode import init_speculator``, v1/worker/gpu/model_runner.py:106), which
comes after, so it binds the wrapper; a runner module imported earlier is patched too. Idempotent: the
wrapper is installed once.

Why no supported hook serves: V2's ``init_speculator`` consults nothing a plugin or a model class can
provide, and the draft model is loaded by the speculator (``load_eagle_model``), which never hands it
its own tensors.

Unnecessary when: vLLM lets a draft model choose its speculator class (or passes the draft step to
the draft's forward and the ModelState to the draft).
"""

from __future__ import annotations

import sys
from types import ModuleType

from vllm_padrec.integration.patches.marking import mark_patched, wrap_attribute

TARGETS = ("vllm.v1.worker.gpu.spec_decode",)
_RUNNER_MODULE = "vllm.v1.worker.gpu.model_runner"


MASKED_METHODS = ("eagle", "eagle3")  # the methods V2 serves with EagleSpeculator (spec_decode/__init__.py:33-38)


def wants_padrec_speculator(vllm_config) -> bool:
    """True when the speculative draft is the PAD-Rec head served through method "eagle", or another EAGLE
    draft on a server that masks drafts (``padrec.mask_drafts``, default on)."""
    from vllm_padrec.draft.config import PADREC_ARCHITECTURE
    from vllm_padrec.integration.list_settings import ListSettings

    spec = vllm_config.speculative_config
    if spec is None or spec.method not in MASKED_METHODS or spec.draft_model_config is None:
        return False
    if PADREC_ARCHITECTURE in (spec.draft_model_config.architectures or ()):
        return spec.method == "eagle"
    return ListSettings.from_additional_config(vllm_config.additional_config).mask_drafts


def make_init_speculator(original):
    def init_speculator(vllm_config, device):
        if wants_padrec_speculator(vllm_config):
            from vllm_padrec.integration.speculator import PadRecSpeculator

            return PadRecSpeculator(vllm_config, device)
        return original(vllm_config, device)

    mark_patched(init_speculator, original)
    return init_speculator


def apply(module: ModuleType) -> None:
    """Install the wrapper in ``vllm.v1.worker.gpu.spec_decode`` (and an imported runner); idempotent."""
    wrap_attribute(module, "init_speculator", make_init_speculator)
    # a runner imported earlier bound vLLM's function; one being imported now binds the wrapper itself
    wrap_attribute(sys.modules.get(_RUNNER_MODULE), "init_speculator", make_init_speculator)
