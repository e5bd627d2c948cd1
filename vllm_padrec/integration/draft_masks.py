"""``DraftListMasks``: the catalog masks on a V2 EAGLE-style draft's logits, for any draft class.

V2 draws every draft token, greedy or Gumbel, from the draft model's ``compute_logits``
(spec_decode/speculator.py:264-295), with one row per batch row. A draft with this mixin masks those
logits with each request's list constraint (``RequestLists.mask_draft_logits``). It reads, on the device,
the speculator's persistent step index, request mapping and drafts so far (``attach_speculator``), so a
captured CUDA graph replays with the current ones.

The PAD-Rec draft (``draft_model.EaglePadRecForCausalLM``) is built with it. vLLM's own EAGLE drafts
(``EagleLlamaForCausalLM``, ``Eagle3LlamaForCausalLM``) get it when the plugin's speculator loads them:
``with_list_masks`` re-classes the loaded instance (its class and weights are vLLM's; only these three
methods are added), before V2 captures any graph (the draft loads at model_runner.py:298, the masks are
attached at :491, graphs are captured at :740).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class DraftListMasks:
    """Mixin for a draft model class whose ``compute_logits`` gives target-vocabulary logits [B, V]."""

    draft_step: torch.Tensor | None = None  # [] int64: V2's current draft step, attached by the speculator
    idx_mapping: torch.Tensor | None = None  # [max_num_reqs] int32: batch row -> request slot
    draft_tokens: torch.Tensor | None = None  # [max_num_reqs, K] int64: this round's drafts so far
    lists = None  # request_lists.RequestLists masking the drafts, or None (unmasked)
    # [max_num_reqs, V] float32: each batch row's masked full-vocabulary log-probs of the last draft step, kept
    # for drafted top-K rounds (``keep_draft_logprobs``; the draft's beam search reads them between steps)
    draft_logprobs: torch.Tensor | None = None

    def attach_speculator(
        self, draft_step: torch.Tensor, idx_mapping: torch.Tensor, draft_tokens: torch.Tensor | None = None
    ) -> None:
        """Use the speculator's persistent step index (0-dim, on the device), request mapping and drafts."""
        if draft_step.dim() != 0 or draft_step.dtype not in (torch.int32, torch.int64):
            shape = list(draft_step.shape)
            raise ValueError(f"draft_step must be a 0-dim integer tensor, got {draft_step.dtype} {shape}")
        self.draft_step = draft_step
        self.idx_mapping = idx_mapping
        self.draft_tokens = draft_tokens

    def attach_lists(self, lists) -> None:
        """Mask the draft's logits with ``lists`` (a ``RequestLists``; None: unmasked). Needs ``attach_speculator``."""
        if lists is not None and self.draft_tokens is None:
            raise RuntimeError("attach_lists needs the speculator's draft tokens: call attach_speculator first")
        self.lists = lists

    def keep_draft_logprobs(self, buffer: torch.Tensor | None) -> None:
        """Write every draft step's masked log-probs into ``buffer`` ([max_num_reqs, V] float32, persistent:
        graphs captured after this call replay the writes); None: keep none."""
        self.draft_logprobs = buffer

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [B, H] -> [B, V]
        """The draft class's own logits, masked by each request's list constraint: row b is request slot
        ``idx_mapping[b]``, whose drafts so far this round are ``draft_tokens[b, :draft_step]``. With a
        ``keep_draft_logprobs`` buffer, also each row's log-probs as the beam step rule reads them
        (``topk.select.beam_logprobs``: log-softmax over the whole vocabulary, then the mask). Runs inside
        CUDA graphs: persistent tensors only."""
        logits = super().compute_logits(hidden_states)  # [B, V]
        rows = logits.shape[0]
        lse = None if self.draft_logprobs is None else torch.logsumexp(logits.float(), -1, keepdim=True)  # [B, 1]
        if self.lists is not None:
            self.lists.mask_draft_logits(logits, self.idx_mapping[:rows], self.draft_tokens[:rows], self.draft_step)
        if lse is not None:
            self.draft_logprobs[:rows].copy_(logits.float() - lse)
        return logits


@functools.cache
def masked_class(cls: type) -> type:
    """``cls`` with ``DraftListMasks`` first in its method order (one class per draft class)."""
    return type(f"ListMasked{cls.__name__}", (DraftListMasks, cls), {"__module__": __name__})


def with_list_masks(model: nn.Module) -> nn.Module:
    """The loaded draft ``model``, re-classed in place to carry ``DraftListMasks`` (unchanged if it has them)."""
    if not isinstance(model, DraftListMasks):
        model.__class__ = masked_class(type(model))
    return model
