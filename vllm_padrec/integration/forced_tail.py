"""The forced tail: the last E of a step's drafts filled from the catalog alone, with no draft forward.

Issue 14's catalog lever (``SPEC_DECODE.md`` section 4): where the catalog allows one token after a chain of
drafts (the separator after an item's last code, most deep code slots), a masked target picks that token
whatever its logits, so a draft of it is accepted whenever the drafts before it were, and it needs no draft
forward to propose. A server with ``padrec.forced_tail`` = E (``list_settings``) verifies K drafts a step as
configured (``num_speculative_tokens``, or the dynamic table's K), of which the draft model proposes the first
K - E (at least one) and this module fills the rest, one slot at a time, from the draft masks of the chain so
far (``RequestLists.mask_draft_logits``): the only allowed token, or, where the catalog allows more, the first
allowed one (a guess, kept only where it is the target's own token).

Exactness: greedy verification keeps a tail token only where it is the target's masked choice. For sampled
requests the tail token's draft distribution is one-hot (its processed logits 0 at the token, -inf elsewhere,
whatever the temperature), so rejection sampling keeps it with the target's probability of it and otherwise
draws from the target's residual: the target's distribution, as for any draft. The plain-torch reference is
``decoding.speculative.speculative_lists(forced_tail=E)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# mask(logits [B, V], idx_mapping [B], draft_tokens [B, K], draft_step []) masks logits in place, row b by the
# constraint of request slot idx_mapping[b] after its drafts draft_tokens[b, :draft_step] (RequestLists)
DraftMask = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def tail_slots(drafts: int, forced_tail: int) -> int:
    """Of ``drafts`` drafts a step verifies, how many the tail fills: ``forced_tail``, leaving the draft model at
    least one (its step 0 also writes the draft's KV of the verified tokens)."""
    return max(0, min(forced_tail, drafts - 1))


def fill_forced_tail(
    mask: DraftMask,
    scratch: torch.Tensor,  # [B, V] logits-dtype buffer, overwritten
    idx_mapping: torch.Tensor,  # [B] int32 request slot of each row
    draft_tokens: torch.Tensor,  # [B, K] int64; columns [0, first) drafted, [first, last) filled here
    draft_step: torch.Tensor,  # [] int64, the draft step the mask reads (left at last - 1)
    first: int,
    last: int,
    draft_logits: torch.Tensor | None = None,  # [max_num_reqs, K, V] processed draft logits (sampled drafting)
) -> None:
    """Fill ``draft_tokens[:, first:last]``: each slot the first token the mask allows after the chain before it
    (the only one where the catalog forces it); with ``draft_logits``, each filled slot's row one-hot there."""
    rows = idx_mapping.long()  # [B]
    for k in range(first, last):
        draft_step.fill_(k)
        scratch.zero_()
        mask(scratch, idx_mapping, draft_tokens, draft_step)  # allowed 0, the rest -inf
        tokens = scratch.argmax(-1)  # [B] the first allowed token (all zero: an unconstrained row gets token 0)
        draft_tokens[:, k] = tokens
        if draft_logits is not None:
            one_hot = scratch.new_full((len(rows), draft_logits.shape[-1]), float("-inf"), dtype=draft_logits.dtype)
            one_hot.scatter_(1, tokens[:, None], 0.0)  # [B, V']
            draft_logits[rows, k] = one_hot
