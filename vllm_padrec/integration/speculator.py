"""``PadRecSpeculator``: vLLM's V2 EAGLE speculator, plus what the PAD-Rec head needs.

- After loading the draft it attaches the speculator's persistent ``current_draft_step`` (0-dim
  int64) and ``idx_mapping`` to the model (``EaglePadRecForCausalLM.attach_speculator``). V2 keeps
  them valid inside captured CUDA graphs: the step is reset to 0 by the step-0 input kernel and
  ``fill_(k)``-ed before decode step k, idx_mapping is refreshed before every replay
  (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py, speculator.py).
- ``sample_draft`` masks the draft's logits with the catalog constraint of each request, when the
  list masks are installed (``request_lists.RequestLists``, reached through ``self.model_state``,
  which V2 sets in ``set_attn`` before any graph is captured). Runs inside CUDA graphs: GPU only.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.v1.worker.gpu.sample.gumbel import gumbel_sample
from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

from vllm_padrec.integration.log import get_logger

logger = get_logger(__name__)


class PadRecSpeculator(EagleSpeculator):
    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        model = super().load_draft_model(target_model, target_attn_layer_names)
        model.attach_speculator(self.current_draft_step, self.idx_mapping)
        return model

    def _list_masks(self):
        lists = getattr(getattr(self, "model_state", None), "padrec_lists", None)
        if lists is None or not lists.mask_drafts:
            return None
        if self.use_local_argmax_reduction:  # drafts come from get_top_tokens, no logits to mask
            logger.warning_once("vllm-padrec: use_local_argmax_reduction is on, draft tokens are not masked")
            return None
        return lists

    def sample_draft(
        self,
        hidden_states: torch.Tensor,  # [B, H] one row per (padded) batch row
        positions: torch.Tensor,  # [B]
        idx_mapping: torch.Tensor,  # [B] batch row -> request slot
        temperature: torch.Tensor,  # [max_num_reqs]
        seeds: torch.Tensor,  # [max_num_reqs]
        draft_step: torch.Tensor,  # [] int64
        draft_logits: torch.Tensor | None,  # [max_num_reqs, K, V] for probabilistic drafts
    ) -> torch.Tensor:  # [B] draft tokens
        lists = self._list_masks()
        if lists is None:
            return super().sample_draft(
                hidden_states, positions, idx_mapping, temperature, seeds, draft_step, draft_logits
            )
        logits = self.model.compute_logits(hidden_states)  # [B, V]
        # drafts of this round so far: self.draft_tokens[b, :draft_step] (batch-row indexed)
        lists.mask_draft_logits(logits, idx_mapping, self.draft_tokens[: logits.shape[0]], draft_step)
        if draft_logits is None:
            return logits.argmax(dim=-1)
        # as DraftModelSpeculator.sample_draft (positions + 1: the Gumbel noise of the target)
        return gumbel_sample(
            logits,
            idx_mapping,
            temperature,
            seeds,
            positions + 1,
            apply_temperature=True,
            output_processed_logits=draft_logits,
            output_processed_logits_col=draft_step,
            use_fp64=self.use_fp64_gumbel,
        )
