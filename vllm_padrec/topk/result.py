"""How a top-K request's answer travels from the runner to the front end: one tensor per request.

The runner hands a finished top-K request's items to vLLM as that request's ``pooler_output``
(``topk/DESIGN.md`` section 4, step 10), which reaches the front end as a ``PoolingRequestOutput``. The
tensor is float64 ``[n, 2L + 1]``, one row per item, best first:

    columns 0 .. L-1     the item's code tokens (token ids, exact in float64 below 2**53)
    columns L .. 2L-1    the float32 log-probability of each token, widened (exact)
    column 2L            the item's float32 score (the sum accumulated step by step), widened (exact)

``encode_items`` and ``decode_items`` are inverse to each other bit for bit. ``encode_items_on_device``
builds the same tensor where the items are, for a copy to the host that the caller queues without waiting
(``patches/sample_tokens.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_padrec.topk.select import TopKItems


def encode_items(items: TopKItems) -> Tensor:  # [n, 2L + 1] float64, on the host
    return encode_items_on_device(items).cpu()


def encode_items_on_device(items: TopKItems) -> Tensor:  # [n, 2L + 1] float64, on the items' device
    n, L = items.tokens.shape
    if items.scores.shape != (n,) or items.logprobs.shape != (n, L):
        raise ValueError(
            f"tokens {tuple(items.tokens.shape)}, scores {tuple(items.scores.shape)} and logprobs "
            f"{tuple(items.logprobs.shape)} do not describe the same {n} items"
        )
    return torch.cat([items.tokens.double(), items.logprobs.double(), items.scores.double()[:, None]], 1)


def decode_items(encoded: Tensor, num_slots: int) -> TopKItems:
    """The items of ``encode_items``' tensor, for items of ``num_slots`` (L) codes."""
    L = num_slots
    if encoded.dim() != 2 or encoded.shape[1] != 2 * L + 1:
        raise ValueError(f"a top-K answer for items of {L} codes is [n, {2 * L + 1}], got {tuple(encoded.shape)}")
    return TopKItems(
        tokens=encoded[:, :L].long(),
        scores=encoded[:, 2 * L].float(),
        logprobs=encoded[:, L : 2 * L].float(),
    )
