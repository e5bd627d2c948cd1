"""Relaxed sampling verification of G users' candidates at once: the engine's form of ``verify.relaxed_step``,
and of a whole relaxed round on the engine's rows (``relaxed_round_batched``, with ``RoundDraft``).

The rule is the reference's (its docstring): each drafted candidate j is accepted with probability
min(1, p_j / q_j); with at least K accepted, the K the target scores highest are kept and the round goes
on; with fewer, the missing ones are drawn without replacement from max(p - q, 0) over the candidates not
accepted (from p where fewer than the missing number have p > q), and the round stops.

Here every user's candidates are a padded row of C (p = q = 0 and not drafted on padding), the random
numbers come in as tensors, and nothing syncs with the host:

- ``uniform`` [G, C], one U[0, 1) draw per candidate, read on the drafted ones (the reference draws one
  per drafted candidate in the order given: the same numbers give the same acceptances);
- ``gumbel`` [G, C], standard Gumbel noise. The draw without replacement is the K largest of
  log(residual) + Gumbel: that is successive sampling in proportion to the residual, the distribution of
  the reference's ``torch.multinomial(..., replacement=False)`` (Plackett-Luce), from other random
  numbers.

Ties among accepted candidates of equal p are kept in candidate order. ``tests/test_topk_relaxed.py``
checks the accepted part against the reference with the same uniforms, and the drawn part by the
distribution of what is kept, against the reference and against p itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.topk.select import beam_step
from vllm_padrec.topk.strict import DraftedRound, RoundPaths, RoundResult


@dataclass(frozen=True)
class RelaxedBatch:
    kept: Tensor  # [G, K] long: candidate indices, the accepted ones by p (highest first), then the drawn ones
    complete: Tensor  # [G] bool: every kept candidate was accepted (the round goes on)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """Standard Gumbel noise, -log(-log(U)), from U in (0, 1)."""
    uniform = torch.rand(shape, generator=generator, **kwargs).clamp(min=torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(uniform))


def relaxed_step_batched(
    p: Tensor,  # [G, C] float: the target's probabilities of each user's candidates (0 on padding)
    q: Tensor,  # [G, C] float: the draft's (q > 0 on every drafted candidate)
    drafted: Tensor,  # [G, C] bool: the candidates the draft proposed
    beam_width: int,  # K, at most the candidates with p > 0 of any user
    uniform: Tensor,  # [G, C] U[0, 1)
    gumbel: Tensor,  # [G, C] standard Gumbel
) -> RelaxedBatch:
    G, C = p.shape
    K = beam_width
    if not 1 <= K <= C:
        raise ValueError(f"K = {K} kept candidates out of {C}: need 1 <= K <= C")
    ratio = torch.where(drafted, (p / q.where(drafted, torch.ones_like(q))).clamp(max=1.0), torch.zeros_like(p))
    accepted = drafted & (uniform < ratio)  # [G, C]
    count = accepted.sum(-1)  # [G]
    # the accepted candidates by p, highest first (stable: candidate order among equal p), the rest after
    ranked = torch.where(accepted, p, torch.full_like(p, -1.0)).argsort(dim=-1, descending=True, stable=True)  # [G, C]
    missing = (K - count).clamp(min=0)  # [G]
    residual = torch.where(accepted, torch.zeros_like(p), (p - q).clamp(min=0.0))  # [G, C]
    too_few = (residual > 0).sum(-1) < missing  # [G]
    residual = torch.where(too_few[:, None], torch.where(accepted, torch.zeros_like(p), p), residual)
    keys = torch.where(residual > 0, residual.log() + gumbel, torch.full_like(p, float("-inf")))  # [G, C]
    drawn = keys.argsort(dim=-1, descending=True, stable=True)  # [G, C]: the draw without replacement, in order
    position = torch.arange(K, device=p.device)[None, :]  # [1, K]
    taken = count.clamp(max=K)[:, None]  # [G, 1] accepted ones kept
    from_drawn = (position - taken).clamp(min=0)  # [G, K]
    kept = torch.where(position < taken, ranked[:, :K], drawn.gather(1, from_drawn))  # [G, K]
    return RelaxedBatch(kept, count >= K)


@dataclass(frozen=True)
class RoundDraft:
    """What relaxed verification reads of the draft in a round (``strict.DraftedRound``'s nodes): which nodes
    the draft proposed (a row's chain past its beam's path is padding: a node of the verified tree, not a
    drafted candidate), its log-probs after each start beam and each node, and each node's cumulative draft
    score (the start beam's score, which both models share, then the draft's log-probs since)."""

    node_drafted: Tensor  # [G, gamma, N] bool
    start_logprobs: Tensor  # [G, K, V] float32
    node_logprobs: Tensor  # [G, gamma, N, V] float32: after each node (those of the last level are never read)
    node_scores: Tensor  # [G, gamma, N] float32

    @classmethod
    def from_rows(
        cls, row_logprobs: Tensor, start_scores: Tensor, root: Tensor, chain: Tensor, depth: Tensor
    ) -> RoundDraft:
        """From the draft's search on rows (``draft_rows``; ``chains.chain_round``'s node slots are rows):
        ``row_logprobs`` [G, R, gamma, V] float32, level i read after row r's root and i tokens of its chain
        (every row's, as the engine's draft forward gives them); start beam j is row j's root; ``depth``
        (``DraftRows.depth``) [G, R], how many of a row's chain tokens are a draft beam's path. A node is
        drafted when any row holding its path holds it as a draft beam's. Its draft score is its row's: the
        root's score plus the draft's log-probs of the chain's tokens, summed in float32 one level at a
        time, as the draft's beam search sums them, so any row holding a node's path gives the same bits."""
        G, R, gamma, V = row_logprobs.shape
        K = start_scores.shape[1]
        score = start_scores.gather(1, root)  # [G, R]
        same = root[:, :, None] == root[:, None, :]  # [G, R, R]: rows with the same path so far
        node_scores, node_drafted = [], []
        for i in range(gamma):
            score = score + row_logprobs[:, :, i].gather(2, chain[:, :, i : i + 1])[:, :, 0]
            node_scores.append(score)
            same = same & (chain[:, :, None, i] == chain[:, None, :, i])
            node_drafted.append((same & (depth > i)[:, None, :]).any(-1))
        node_logprobs = torch.cat([row_logprobs[:, :, 1:], torch.zeros_like(row_logprobs[:, :, :1])], 2)
        return cls(
            torch.stack(node_drafted, 1),
            row_logprobs[:, :K, 0],
            node_logprobs.transpose(1, 2),
            torch.stack(node_scores, 1),
        )


def relaxed_round_batched(
    round_: DraftedRound,
    draft: RoundDraft,
    beam_width: int,
    uniform: Tensor,  # [G, gamma, K * V] U[0, 1): one per candidate of each relaxed step
    gumbel: Tensor,  # [G, gamma, K * V] standard Gumbel
) -> RoundResult:
    """A round of relaxed sampling for G users, the engine's form of ``decoding.drafted_topk.relaxed_topk``'s
    round. Step i < min(gamma, steps_left - 1) is a relaxed step (``relaxed_step_batched``) over every allowed
    extension of the current beams (candidate c = rank * V + token), with p and q the softmax of the target's
    and the draft's cumulative scores, and the draft's level-i nodes that extend a current beam as the drafted
    candidates. A complete step goes on from the kept nodes; an incomplete one ends the round with the kept
    candidates. After every relaxed step was complete, the round's last step is the target's own beam step
    (``select.beam_step``), as is the item's last code. The beams come out best first by the target's score."""
    G, K = round_.start_scores.shape
    gamma = round_.parent.shape[1]
    V = round_.start_logprobs.shape[-1]
    if K != beam_width:
        raise ValueError(f"the start beams are padded to K = {beam_width}, got {K}")
    device = round_.start_scores.device
    groups = torch.arange(G, device=device)[:, None]
    ranks = torch.arange(K, device=device)
    scores = round_.start_scores  # [G, K] the target's cumulative
    draft_scores = round_.start_scores  # [G, K] the draft's: the start beams' are shared
    target_after, draft_after = round_.start_logprobs, draft.start_logprobs  # [G, K, V] each
    node = ranks.expand(G, K)  # the current beams' node ids in their level (start ranks at level 0)
    paths = RoundPaths.begin(G, K, gamma, device)
    running = torch.ones(G, dtype=torch.bool, device=device)
    accepted = torch.zeros(G, dtype=torch.long, device=device)
    advanced = torch.zeros(G, dtype=torch.long, device=device)
    relaxed_levels = (round_.steps_left - 1).clamp(max=gamma)  # [G]
    for i in range(gamma + 1):
        moves = running & (advanced < round_.steps_left)  # [G]
        relaxed = moves & (i < relaxed_levels)  # [G]: a relaxed step; the other movers take the target's own
        candidates = (scores[:, :, None] + target_after).reshape(G, K * V)  # [G, K * V] float32
        own = beam_step(scores, target_after.reshape(G * K, V), K)
        chosen = own.parent * V + own.tokens  # [G, K]
        chosen_scores = own.scores
        complete = torch.zeros(G, dtype=torch.bool, device=device)
        if i < gamma:
            p = torch.softmax(candidates.double(), -1)
            q = torch.softmax((draft_scores[:, :, None] + draft_after).reshape(G, K * V).double(), -1)
            drafted_nodes = round_.live[:, i] & draft.node_drafted[:, i]  # [G, N]
            extends = (node[:, :, None] == round_.parent[:, i, None, :]) & drafted_nodes[:, None, :]  # [G, K, N]
            extends &= torch.isfinite(scores)[:, :, None]
            candidate = ranks[None, :, None] * V + round_.token[:, i, None, :]  # [G, K, N]
            drafted = torch.zeros(G, K * V + 1, dtype=torch.bool, device=device)  # the last column: a spare
            drafted.scatter_(1, torch.where(extends, candidate, K * V).reshape(G, -1), True)
            drafted = drafted[:, : K * V] & (q > 0)
            step = relaxed_step_batched(p, q, drafted, K, uniform[:, i], gumbel[:, i])
            chosen = torch.where(relaxed[:, None], step.kept, chosen)
            chosen_scores = torch.where(relaxed[:, None], candidates.gather(1, step.kept), chosen_scores)
            complete = relaxed & step.complete
        parent, token = chosen // V, chosen % V  # [G, K] each
        paths = paths.extend(i, moves, parent, token, target_after, node)
        scores = torch.where(moves[:, None], chosen_scores, scores)
        advanced = advanced + moves.long()
        accepted = accepted + complete.long()
        running = complete
        if i == gamma:
            break
        # the kept nodes of a complete step: the level-i node with the kept (parent, token)
        parent_node = node.gather(1, parent)  # [G, K]
        at = (parent_node[:, :, None] == round_.parent[:, i, None, :]) & (
            token[:, :, None] == round_.token[:, i, None, :]
        )
        at &= round_.live[:, i, None, :]
        kept_node = at.long().argmax(-1)  # [G, K]
        go_on = complete[:, None]
        node = torch.where(go_on, kept_node, node)
        target_after = torch.where(go_on[:, :, None], round_.node_logprobs[groups, i, kept_node], target_after)
        draft_after = torch.where(go_on[:, :, None], draft.node_logprobs[groups, i, kept_node], draft_after)
        draft_scores = torch.where(go_on, draft.node_scores[groups, i, kept_node], draft_scores)
    order = scores.argsort(dim=-1, descending=True, stable=True)  # [G, K]: best first
    return paths.result(accepted, advanced, scores, order)
