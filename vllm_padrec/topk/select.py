"""Beam selection for top-K over items: one step rule, in the reference's form and the engine's form.

Vocabulary: a *group* is one top-K request (one user, one prompt); its *beams* are the prefixes of
items it keeps, at most K of them, ranked best first (rank 0 = best). A beam's *score* is the float32
sum of the log-probabilities of its tokens. A *row* is one row of the batch of logits the model
produced in an engine step; a row either holds one beam of one group or belongs to another request.

The step rule, the same in every form (and the same as Hugging Face's ``prefix_allowed_tokens_fn``
beam search):

1. ``beam_logprobs``: float32 log-softmax of the raw logits over the model's whole vocabulary, then
   -inf on the tokens the catalog constraint refuses. Masking comes after the log-softmax, so the
   allowed tokens' log-probs are not renormalised.
2. candidates = parent score + log-prob, for every beam and every token: ``beams * V`` per group.
3. top-k of the candidates per group: ``parent = flat // V``, ``token = flat % V``.
4. Dead beams: a new beam whose score is -inf (fewer valid extensions than k: a catalog smaller than
   K after exclusions) copies the best beam's parent and token, so that it extends a valid prefix and
   the constraint state stays valid. A dead beam stays dead (-inf plus anything is -inf).

``beam_step`` is the rule over a ``[B, beams]`` block of scores, used by ``decoding/beam.py``.
``grouped_beam_step`` is the engine's form: the groups' beams sit anywhere in a batch of rows, each
group with its own K; it pads every group to ``[K_max * V]`` candidates with -inf and gives the same
scores, parents and tokens bit for bit. ``BeamGroups`` carries the groups' scores, tokens and per-step
log-probs from step to step and turns them into the final items. All of it is batched torch with fixed
shapes and no host sync, except ``BeamGroups.start`` and ``BeamGroups.results`` (request setup and
the final answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.constraint import apply_mask
from vllm_padrec.device_lists import long_tensors

NEG_INF = float("-inf")


def beam_logprobs(
    logits: Tensor,  # [R, V'] raw logits of any float dtype; V' >= V (the model's vocab may be padded)
    allowed: Tensor,  # [R, V] bool, the catalog constraint's allowed tokens of each row
) -> Tensor:  # [R, V'] float32: full-vocabulary log-probs, -inf on refused tokens and pad columns
    """Step 1 of the rule: log-softmax over the whole vocabulary first, then the mask."""
    logprobs = torch.log_softmax(logits.float(), -1)
    return apply_mask(logprobs, allowed)


def revive_dead_beams(
    scores: Tensor,  # [B, k] float32, best first
    parent: Tensor,  # [B, k] long
    tokens: Tensor,  # [B, k] long
) -> tuple[Tensor, Tensor]:  # parent, tokens [B, k]: dead beams (score -inf) take column 0's
    """Step 4 of the rule: a beam with score -inf copies the best beam's parent and token."""
    dead = torch.isinf(scores)
    return torch.where(dead, parent[:, :1], parent), torch.where(dead, tokens[:, :1], tokens)


@dataclass(frozen=True)
class BeamStep:
    """The new beams of B groups after one step, best first."""

    scores: Tensor  # [B, k] float32; -inf for dead beams
    parent: Tensor  # [B, k] long: rank of the previous beam each new beam extends
    tokens: Tensor  # [B, k] long: the token it appends


def beam_step(
    scores: Tensor,  # [B, beams] float32: the current beams' scores
    logprobs: Tensor,  # [B * beams, V] float32 from beam_logprobs; row b * beams + j = beam j of group b
    beam_width: int,  # K: beams kept per group
) -> BeamStep:  # k = min(K, beams * V) new beams per group
    """One step of the rule for B groups of ``beams`` consecutive rows each (the reference's layout)."""
    B, beams = scores.shape
    V = logprobs.shape[1]
    candidates = (scores.reshape(-1, 1) + logprobs).reshape(B, beams * V)  # [B, beams * V]
    k = min(beam_width, beams * V)
    new_scores, flat = candidates.topk(k, dim=1)  # [B, k], best first
    parent, tokens = revive_dead_beams(new_scores, flat // V, flat % V)  # beam j * V + token -> (j, token)
    return BeamStep(new_scores, parent, tokens)


@dataclass(frozen=True)
class BeamRows:
    """Where the groups' beams sit among the R rows of an engine step's batch."""

    group: Tensor  # [R] long: the row's group (0..G-1), -1 for a row of a request that is not top-K
    rank: Tensor  # [R] long: the row's beam rank in its group (0..K_g-1); ignored where group is -1

    def beam_table(self, num_groups: int, k_max: int) -> Tensor:  # [G, K_max] long: row of beam (g, j), -1: none
        """The inverse map, beam (group, rank) -> row, by one scatter (no host sync).

        Rows of no group all land in one spare slot past the table, which is then cut off; e.g. with
        K_max = 2, group = [-1, 0, 1, 0], rank = [0, 0, 0, 1] -> [[1, 3], [2, -1]].
        """
        R = self.group.shape[0]
        slot = torch.where(self.group >= 0, self.group * k_max + self.rank, num_groups * k_max)  # [R]
        table = torch.full((num_groups * k_max + 1,), -1, dtype=torch.long, device=self.group.device)
        table.scatter_(0, slot, torch.arange(R, device=self.group.device))
        return table[:-1].view(num_groups, k_max)


@dataclass(frozen=True)
class GroupedBeamStep:
    """The new beams of G groups after one engine step, best first, padded to K_max."""

    scores: Tensor  # [G, K_max] float32; -inf for dead beams and for ranks K_g..K_max-1
    parent_rank: Tensor  # [G, K_max] long: rank of the previous beam each new beam extends
    parent_row: Tensor  # [G, K_max] long: that beam's row in the step's batch
    tokens: Tensor  # [G, K_max] long: the token it appends


def grouped_beam_step(
    logprobs: Tensor,  # [R, V] float32 from beam_logprobs (rows of no group are never read)
    rows: BeamRows,  # where each group's current beams are
    scores: Tensor,  # [G, K_max] float32: the current beams' scores; -inf where a group has no beam
    beam_width: Tensor,  # [G] long: K_g, 1 <= K_g <= K_max
) -> GroupedBeamStep:
    """One step of the rule for every group at once, equal to ``beam_step`` per group bit for bit.

    Each group's candidates are padded with -inf to ``K_max * V`` (ranks it has no row for), the top
    K_max are taken, and ranks from K_g on are set to -inf, so they count as dead beams. The values
    are those of ``beam_step``: the same float32 sums, and the first K_g of a sorted top-K_max are the
    sorted top-K_g. A group with no valid candidate at all (impossible once admission has checked that
    an item is left) would get parent_row -1.
    """
    G, k_max = scores.shape
    V = logprobs.shape[1]
    table = rows.beam_table(G, k_max)  # [G, K_max]
    gathered = logprobs[table.clamp(min=0)]  # [G, K_max, V]
    candidates = torch.where((table >= 0)[:, :, None], scores[:, :, None] + gathered, NEG_INF)  # [G, K_max, V]
    new_scores, flat = candidates.reshape(G, k_max * V).topk(k_max, dim=1)  # [G, K_max], best first
    beyond_width = torch.arange(k_max, device=scores.device) >= beam_width[:, None]  # [G, K_max]
    new_scores = new_scores.masked_fill(beyond_width, NEG_INF)
    parent_rank, tokens = revive_dead_beams(new_scores, flat // V, flat % V)
    return GroupedBeamStep(new_scores, parent_rank, table.gather(1, parent_rank), tokens)


@dataclass(frozen=True)
class TopKItems:
    """One group's answer: its live beams after the last step, best first (dead beams dropped)."""

    tokens: Tensor  # [n, L] long: the items' code tokens; n <= K, fewer only when fewer items are left
    scores: Tensor  # [n] float32: the summed log-probs, exactly as accumulated step by step
    logprobs: Tensor  # [n, L] float32: the log-prob of each token


@dataclass(frozen=True)
class BeamGroups:
    """The beams of G top-K requests between engine steps (t steps done), padded to K_max."""

    beam_width: Tensor  # [G] long: K_g
    scores: Tensor  # [G, K_max] float32, best first; -inf: dead, absent or past K_g
    tokens: Tensor  # [G, K_max, t] long: each beam's tokens
    logprobs: Tensor  # [G, K_max, t] float32: the log-prob of each of them

    @classmethod
    def start(cls, beam_width: Sequence[int], device: torch.device | str = "cpu") -> BeamGroups:
        """Before step 0: one empty beam of score 0 per group, at rank 0 (the prompt's row)."""
        if not beam_width or min(beam_width) < 1:
            raise ValueError(f"every group needs a beam width >= 1, got {list(beam_width)}")
        G, k_max = len(beam_width), max(beam_width)
        scores = torch.full((G, k_max), NEG_INF, device=device)
        scores[:, 0] = 0.0
        empty = torch.zeros(G, k_max, 0, device=device)
        (widths,) = long_tensors(beam_width, device=device)
        return cls(widths, scores, empty.long(), empty)

    def step(self, logprobs: Tensor, rows: BeamRows) -> tuple[BeamGroups, GroupedBeamStep]:
        """Select the new beams from this step's ``[R, V]`` log-probs and gather their histories.

        The returned selection says which row each new beam continues (``parent_row``) and with
        which token: what the engine needs to lay out the next step's rows.
        """
        selection = grouped_beam_step(logprobs, rows, self.scores, self.beam_width)
        G, k_max, t = self.tokens.shape
        history_index = selection.parent_rank[:, :, None].expand(G, k_max, t)  # [G, K_max, t]
        chosen = logprobs[selection.parent_row.clamp(min=0), selection.tokens]  # [G, K_max]
        groups = BeamGroups(
            self.beam_width,
            selection.scores,
            torch.cat([self.tokens.gather(1, history_index), selection.tokens[:, :, None]], 2),
            torch.cat([self.logprobs.gather(1, history_index), chosen[:, :, None]], 2),
        )
        return groups, selection

    def results(self) -> list[TopKItems]:
        """Each group's live beams, best first: one copy to the host, then per-group slices."""
        widths = self.beam_width.tolist()
        scores, tokens, logprobs = self.scores.cpu(), self.tokens.cpu(), self.logprobs.cpu()
        answers = []
        for g, width in enumerate(widths):
            live = torch.isfinite(scores[g, :width]).nonzero().squeeze(1)  # [n], ranks in order
            answers.append(TopKItems(tokens[g, live], scores[g, live], logprobs[g, live]))
        return answers
