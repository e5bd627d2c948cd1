"""A drafted round as the engine verifies it: N rows per user, each a chain of gamma draft tokens (ATSPEED.md).

Each row r of user g extends one of the user's start beams (``root``) with a chain of gamma draft tokens:
one path of the draft's beam tree. The target's forward over the rows gives, for each row, the masked
next-token log-probs after its root and after each prefix of its chain (``gamma + 1`` logits rows, as V2
lays out a request's spec tokens).

``chain_round`` turns that into ``strict.DraftedRound``. Level i holds one node slot per row. Row r's slot
is live when r is the first row whose chain prefix of length i + 1 (root included) is r's; its parent is
the live slot of r's prefix one shorter, or its root at level 0. The tree is then the union of the chains'
prefixes, each node once, and every node's log-probs come from the row that holds it. All of it runs on
fixed shapes (an [N, N] prefix comparison per user and level), with no host sync.

Every live start beam must be the root of a live row: the target's log-probs after a start beam come only
from a row that extends it, and the target's own step reads them all. The engine keeps beam j's row rooted
at beam j (its chain the draft's best path under j, or any chain when the draft kept none there: a tree
holding more than the draft's beams is still verified exactly), and gives the draft's other paths rows of
their own (ATSPEED.md, section 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_padrec.topk.strict import DraftedRound


def first_of_equal(same: Tensor) -> Tensor:  # [G, N, N] bool -> [G, N] long
    """For each row r, the first row r' with ``same[g, r, r']`` (r itself when no earlier one is)."""
    return same.long().argmax(-1)


def chain_round(
    start_scores: Tensor,  # [G, K] float32: the start beams, best first; -inf: dead or absent
    root: Tensor,  # [G, N] long: the start beam each row extends
    chain: Tensor,  # [G, N, gamma] long: each row's draft tokens
    row_live: Tensor,  # [G, N] bool: rows that hold a drafted path (a dead draft beam's row does not)
    row_logprobs: Tensor,  # [G, N, gamma + 1, V] float32: after the root, then after each chain prefix
    steps_left: Tensor,  # [G] long
) -> DraftedRound:
    G, N, gamma = chain.shape
    K = start_scores.shape[1]
    V = row_logprobs.shape[-1]
    # the target's log-probs after each start beam, from a row that extends it (any one: they are equal)
    start_logprobs = torch.zeros(G, K, V, dtype=row_logprobs.dtype, device=row_logprobs.device)
    holder = (root[:, None, :] == torch.arange(K, device=root.device)[None, :, None]) & row_live[:, None, :]
    has_row = holder.any(-1)  # [G, K]
    first_row = holder.long().argmax(-1)  # [G, K]
    from_rows = row_logprobs[:, :, 0].gather(1, first_row[:, :, None].expand(G, K, V))  # [G, K, V]
    start_logprobs = torch.where(has_row[:, :, None], from_rows, start_logprobs)
    same = (root[:, :, None] == root[:, None, :]) & row_live[:, :, None] & row_live[:, None, :]  # [G, N, N]
    parent_slot = root  # level 0: the root start beam
    parents, lives = [], []
    for i in range(gamma):
        same = same & (chain[:, :, None, i] == chain[:, None, :, i])
        first = first_of_equal(same)  # [G, N]
        lives.append(row_live & (first == torch.arange(N, device=chain.device)))
        parents.append(parent_slot)
        parent_slot = first  # level i + 1's parents: the live slot holding the prefix of length i + 1
    return DraftedRound(
        start_scores=start_scores,
        start_logprobs=start_logprobs,
        parent=torch.stack(parents, 1),  # [G, gamma, N]
        token=chain.transpose(1, 2),  # [G, gamma, N]
        live=torch.stack(lives, 1),  # [G, gamma, N]
        node_logprobs=row_logprobs[:, :, 1:].transpose(1, 2),  # [G, gamma, N, V]
        steps_left=steps_left,
    )
