"""Strict top-K verification of a drafted round for G users at once: the engine's form of ``verify.strict_round``.

The round's inputs, per user g (``DraftedRound``): the target's K start beams (scores, -inf for dead ones),
the draft's tree as gamma levels of N nodes (level i holds the draft's beams after i + 1 steps; each node
is a parent in the level above, a start beam for level 0, and one token), and the target's masked
next-token log-probs after every start beam and every node (``select.beam_logprobs``: what one target
forward over the tree gives).

The rule is ``verify.strict_round``'s (its docstring): step i is the target's own beam step
(``select.beam_step``) from its beams after step i - 1; it is accepted when each of its live new beams is
a node of level i, found by (parent node, token). The round advances ``accepted + 1`` steps, at most the
steps left in the item. Every group runs the same gamma + 1 steps in lockstep, on fixed shapes with no host
sync; a group that stopped keeps its beams from then on.

Output (``RoundResult``): the accepted steps and, after the round's last step, each beam's score
and the tokens it appended in the round (its node path, then the last step's own token), which is what the
engine keeps; ``tests/test_topk_strict.py`` checks it against the reference bit for bit. Also where each
beam came from: its start beam, and the last node of its path (the node its last step extended; none when
the round advanced one step), which is what the engine copies a beam's KV and history from
(``topk.rounds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.topk.select import beam_step


@dataclass(frozen=True)
class DraftedRound:
    """One round's tree for G users, padded: K start beams, gamma levels of N nodes."""

    start_scores: Tensor  # [G, K] float32, best first; -inf: dead or absent
    start_logprobs: Tensor  # [G, K, V] float32: the target's after each start beam
    parent: Tensor  # [G, gamma, N] long: the node's parent (level 0: a start beam rank; else a node of level i - 1)
    token: Tensor  # [G, gamma, N] long: the token the node appends
    live: Tensor  # [G, gamma, N] bool: the node exists (the draft's beam is not dead)
    node_logprobs: Tensor  # [G, gamma, N, V] float32: the target's after each node
    steps_left: Tensor  # [G] long >= 1: steps until each user's item is complete


@dataclass(frozen=True)
class RoundResult:
    """A verified round of G users (strict or relaxed): what it advanced, and the beams after its last step."""

    accepted: Tensor  # [G] long: accepted steps; the round advanced min(accepted + 1, steps_left) steps
    advanced: Tensor  # [G] long: the steps it advanced
    scores: Tensor  # [G, K] float32: the beams after the round's last step, best first
    tokens: Tensor  # [G, K, gamma + 1] long: each beam's tokens of the round; -1 past ``advanced``
    logprobs: Tensor  # [G, K, gamma + 1] float32: the target's log-prob of each of those tokens; 0 past it
    start: Tensor  # [G, K] long: the start beam each beam extends
    last_node: Tensor  # [G, K] long: the node of level advanced - 2 on its path; -1 when advanced == 1


@dataclass(frozen=True)
class RoundPaths:
    """What each current beam of a round has appended so far, and where its path started: the bookkeeping
    every verification rule does the same way (``strict_round_batched``, ``relaxed.relaxed_round_batched``)."""

    tokens: Tensor  # [G, K, gamma + 1] long: the round's tokens of each beam; -1 past the steps taken
    logprobs: Tensor  # [G, K, gamma + 1] float32: the target's log-prob of each of them; 0 past them
    start: Tensor  # [G, K] long: the start beam each beam extends
    last_node: Tensor  # [G, K] long: the node its last step extended; -1 when it extended a start beam

    @classmethod
    def begin(cls, G: int, K: int, gamma: int, device: torch.device) -> RoundPaths:
        return cls(
            torch.full((G, K, gamma + 1), -1, dtype=torch.long, device=device),
            torch.zeros(G, K, gamma + 1, device=device),
            torch.arange(K, device=device).expand(G, K),
            torch.full((G, K), -1, dtype=torch.long, device=device),
        )

    def extend(
        self,
        i: int,  # the step
        take: Tensor,  # [G] bool: the groups that take it
        parent: Tensor,  # [G, K] long: the current beam each new beam extends
        token: Tensor,  # [G, K] long: the token it appends
        logprobs: Tensor,  # [G, K, V] float32: the target's after each current beam
        node: Tensor,  # [G, K] long: each current beam's node (its start rank at step 0)
    ) -> RoundPaths:
        """The paths after step ``i``: each new beam's is its parent's plus ``token``, for the groups that take it."""
        G, K, width = self.tokens.shape
        index = parent[:, :, None].expand(G, K, width)
        tokens = self.tokens.gather(1, index).clone()  # [G, K, gamma + 1]
        tokens[:, :, i] = token
        token_logprobs = self.logprobs.gather(1, index).clone()
        chosen = logprobs.gather(1, parent[:, :, None].expand(G, K, logprobs.shape[-1]))  # [G, K, V]
        token_logprobs[:, :, i] = chosen.gather(2, token[:, :, None])[:, :, 0]
        take = take[:, None]  # [G, 1]
        return RoundPaths(
            torch.where(take[:, :, None], tokens, self.tokens),
            torch.where(take[:, :, None], token_logprobs, self.logprobs),
            torch.where(take, self.start.gather(1, parent), self.start),
            torch.where(take, node.gather(1, parent), self.last_node) if i > 0 else self.last_node,
        )

    def result(self, accepted: Tensor, advanced: Tensor, scores: Tensor, order: Tensor | None = None) -> RoundResult:
        """The round's result; with ``order`` ([G, K] long), the beams in that order."""
        paths = self
        if order is not None:
            index = order[:, :, None].expand(self.tokens.shape)
            paths = RoundPaths(
                self.tokens.gather(1, index),
                self.logprobs.gather(1, index),
                self.start.gather(1, order),
                self.last_node.gather(1, order),
            )
            scores = scores.gather(1, order)
        return RoundResult(accepted, advanced, scores, paths.tokens, paths.logprobs, paths.start, paths.last_node)


def strict_round_batched(round_: DraftedRound, beam_width: int) -> RoundResult:
    """Strict verification of every group's round (module docstring)."""
    G, K = round_.start_scores.shape
    gamma = round_.parent.shape[1]
    if K != beam_width:
        raise ValueError(f"the start beams are padded to K = {beam_width}, got {K}")
    device = round_.start_scores.device
    groups = torch.arange(G, device=device)
    scores = round_.start_scores  # [G, K]
    logprobs = round_.start_logprobs  # [G, K, V]: the current beams'
    node = torch.arange(K, device=device).expand(G, K)  # [G, K]: the current beams' ids in their level
    paths = RoundPaths.begin(G, K, gamma, device)
    running = torch.ones(G, dtype=torch.bool, device=device)  # [G]: every step so far accepted
    accepted = torch.zeros(G, dtype=torch.long, device=device)
    advanced = torch.zeros(G, dtype=torch.long, device=device)
    for i in range(gamma + 1):
        moves = running & (advanced < round_.steps_left)  # [G]: the groups that take step i
        step = beam_step(scores, logprobs.reshape(G * K, -1), beam_width)  # [G, K] each
        paths = paths.extend(i, moves, step.parent, step.tokens, logprobs, node)
        parent_node = node.gather(1, step.parent)  # [G, K]
        take = moves[:, None]  # [G, 1]
        scores = torch.where(take, step.scores, scores)
        advanced = advanced + moves.long()
        if i == gamma:
            break
        # the new beams among level i's nodes, by (parent, token)
        same = (parent_node[:, :, None] == round_.parent[:, i, None, :]) & (
            step.tokens[:, :, None] == round_.token[:, i, None, :]
        )  # [G, K, N]
        same &= round_.live[:, i, None, :]
        found = same.any(-1) | torch.isinf(step.scores)  # [G, K]: a dead new beam needs no node
        now_accepted = moves & found.all(-1)  # [G]
        accepted = accepted + now_accepted.long()
        running = now_accepted
        node = torch.where(take, same.long().argmax(-1), node)  # [G, K]: the matched node (0 for a dead beam)
        at_nodes = round_.node_logprobs[groups[:, None], i, node]  # [G, K, V]
        logprobs = torch.where(running[:, None, None], at_nodes, logprobs)
    return paths.result(accepted, advanced, scores)
