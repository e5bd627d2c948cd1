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
"""

from __future__ import annotations

from torch import nn
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
