"""``PadRecSpeculator``: vLLM's V2 EAGLE speculator, handing the draft what the catalog masks read.

It serves the PAD-Rec head, and vLLM's own EAGLE drafts when the plugin masks them too
(``patches/init_speculator.py``): a loaded draft that lacks the masks' hooks is re-classed to carry them
(``draft_masks.with_list_masks``), its weights and forward untouched.

- After loading the draft it attaches the speculator's persistent ``current_draft_step`` (0-dim
  int64), ``idx_mapping`` and ``draft_tokens`` to the model (``DraftListMasks.attach_speculator``; the
  PAD-Rec head also reads the step for its step embedding).
  V2 keeps them valid inside captured CUDA graphs: the step is reset to 0 by the step-0 input kernel
  and ``fill_(k)``-ed before decode step k, idx_mapping is refreshed before every replay
  (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py, speculator.py).
- ``set_attn`` (V2 calls it with the target's ModelState before any graph is captured) passes the
  list masks (``request_lists.RequestLists``, the state's ``padrec_lists``) to the model, whose
  ``compute_logits`` masks the drafts; vLLM's own ``sample_draft`` then picks them, greedy or Gumbel.
- Drafts per step follow vLLM's dynamic speculative decoding table
  (``--speculative-config``'s ``num_speculative_tokens_per_batch_size``, ``gamma_schedule.py`` derives one
  from measurements). vLLM's scheduler then asks the next step to verify K drafts, K looked up by the number
  of requests it scheduled (vllm/v1/core/sched/scheduler.py, ``num_spec_tokens_to_schedule``;
  async_scheduler.py, ``_update_after_schedule``), but V2's speculator always drafts
  ``num_speculative_tokens``. ``propose`` looks K up in the same table by the batch's requests (the same
  number) and runs draft step 0 and K - 1 decode steps; with K = 0 it drafts nothing at all, so that a step
  without speculation costs what it costs without a draft. The drafts a step skips are never read (the next
  step verifies K of them); a request whose tokens pass through a step without drafting has no draft KV at
  those positions, which can only lower its later acceptance, never change its output.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup
from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

from vllm_padrec.integration.draft_masks import with_list_masks
from vllm_padrec.integration.log import get_logger

logger = get_logger(__name__)


class PadRecSpeculator(EagleSpeculator):
    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        model = with_list_masks(super().load_draft_model(target_model, target_attn_layer_names))
        model.attach_speculator(self.current_draft_step, self.idx_mapping, self.draft_tokens)
        return model

    def set_attn(self, model_state, *args, **kwargs) -> None:
        super().set_attn(model_state, *args, **kwargs)
        self.model.attach_lists(self._list_masks(model_state))

    def _list_masks(self, model_state):
        """The lists that mask the drafts, or None (no catalog, ``mask_drafts`` off, no logits to mask)."""
        lists = getattr(model_state, "padrec_lists", None)
        if lists is None or not lists.mask_drafts:
            return None
        if self.use_local_argmax_reduction:  # drafts come from get_top_tokens, no logits to mask
            logger.warning_once("vllm-padrec: use_local_argmax_reduction is on, draft tokens are not masked")
            return None
        return lists

    def propose(self, input_batch, *args, dummy_run: bool = False, **kwargs) -> torch.Tensor:
        """vLLM's drafting, with as many draft steps as the next step verifies (module docstring)."""
        steps = draft_steps(self._schedule(), input_batch.num_reqs, self.num_speculative_steps, dummy_run)
        if steps == 0:
            return self.draft_tokens[: input_batch.num_reqs]  # [num_reqs, gamma]: none of it is verified
        self._decode_steps = steps
        return super().propose(input_batch, *args, dummy_run=dummy_run, **kwargs)

    def _multi_step_decode(self, *args, **kwargs) -> None:
        """vLLM's decode loop (steps 1 .. gamma - 1), cut to this step's drafts: its range is read from
        ``num_speculative_steps`` (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py,
        ``_multi_step_decode``), which holds this step's count for the loop only."""
        gamma = self.num_speculative_steps
        self.num_speculative_steps = getattr(self, "_decode_steps", gamma)
        try:
            super()._multi_step_decode(*args, **kwargs)
        finally:
            self.num_speculative_steps = gamma

    def _schedule(self) -> list[int] | None:
        """The dense table batch size -> drafts, as vLLM's scheduler builds it; None without one."""
        if not hasattr(self, "_dense_schedule"):
            table = self.speculative_config.num_speculative_tokens_per_batch_size
            self._dense_schedule = (
                None
                if not table
                else build_dynamic_sd_schedule_lookup(table, self.max_num_reqs, self.num_speculative_steps)
            )
        return self._dense_schedule


def draft_steps(schedule: list[int] | None, num_reqs: int, gamma: int, dummy_run: bool = False) -> int:
    """Drafts to make in a step of ``num_reqs`` requests: the scheduler's K for that batch size, or all
    ``gamma`` without a table and in vLLM's dummy runs (profiling and graph capture see the full loop)."""
    if schedule is None or dummy_run or num_reqs <= 0:
        return gamma
    return min(gamma, schedule[min(num_reqs, len(schedule) - 1)])
