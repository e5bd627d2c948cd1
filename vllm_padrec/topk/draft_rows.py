"""The draft's beam search of a drafted round, laid out on a fixed set of rows per user (issue 13, ATSPEED.md).

During a round the draft runs its own beam search with N beams for gamma steps from the target's K start
beams (``verify.draft_tree``). In the engine each draft beam lives in a *row*: a runner-private request of
the user whose draft forward gives the draft's next-token log-probs after the row's path (its root start
beam, then its chain of draft tokens). The rows are also what the target verifies next: each row's chain
becomes its gamma spec tokens, and ``chains.chain_round`` builds the verified tree from them. So the rows
must keep every draft beam of every level as some row's chain prefix, and every live start beam as some
row's root (ATSPEED.md, section 3, the two rules).

The layout, one level at a time (``DraftRows.step``):

- Rows 0..K-1 are the start beams' rows (row j rooted at start beam j, empty chain).
- The new beams of a level are the step rule's (``select.beam_step``: the N best extensions of the current
  beams, by cumulative draft score); only live ones (finite score) get a row.
- A new beam whose parent has no earlier live child takes its parent's row and extends its chain in place;
  any further child takes the next unused row, with a copy of the parent's root and chain.
- A current beam with no live child leaves its row as it is: the row keeps the beam's path, its chain
  padded with token 0 beyond it (an extra node in the verified tree, whose target log-probs come from
  the same forward: strict verification stays exact).
- The rows are fixed in advance (R per user): a child that finds no unused row is dropped, and so is
  its subtree. Strict verification is exact for any tree; only acceptance drops. R = K + (N - 1) * gamma
  (``topk.admission.beam_rows``, what admission reserves) never drops one: at most N - 1 new rows per level,
  since one child of each parent takes the parent's row, and a level's N children have at least one parent.

``depth`` tells how many of a row's chain tokens are a draft beam's path (the rest is padding): strict
verification does not care, relaxed verification counts only the draft's beams as drafted candidates
(``relaxed.RoundDraft``).

Everything is batched torch on fixed shapes with no host sync. ``source`` tells the engine which row's draft
state (hidden state, KV of the chain) each row continues from for the next draft forward, and ``token``
which token each row feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.topk.select import NEG_INF, beam_step

PAD_TOKEN = 0  # a chain's tokens past its draft beam's path


@dataclass(frozen=True)
class DraftRows:
    """G users' rows during the draft's beam search, after ``level`` steps (R rows each, padded)."""

    root: Tensor  # [G, R] long: the start beam each row extends
    chain: Tensor  # [G, R, gamma] long: each row's draft tokens; PAD_TOKEN past its path
    used: Tensor  # [G] long: rows in use (0..used-1); the rest are free
    scores: Tensor  # [G, W] float32: the current draft beams' cumulative scores, best first; -inf: none
    beam_row: Tensor  # [G, W] long: the row holding each current beam; -1 where there is none
    level: int  # draft steps done
    depth: Tensor  # [G, R] long: each row's chain tokens that are a draft beam's path (past them: padding)

    @classmethod
    def start(cls, start_scores: Tensor, rows: int, gamma: int, width: int) -> DraftRows:
        """Before the first draft step: the K start beams (``[G, K]`` scores, -inf: dead or absent) on rows
        0..K-1; ``rows`` R >= K per user; ``width`` W >= K, N: current beams padded to W."""
        G, K = start_scores.shape
        if rows < K or width < K:
            raise ValueError(f"{K} start beams need at least as many rows and width, got rows={rows}, width={width}")
        device = start_scores.device
        live = torch.isfinite(start_scores)  # [G, K]
        scores = torch.full((G, width), NEG_INF, device=device)
        scores[:, :K] = start_scores
        beam_row = torch.full((G, width), -1, dtype=torch.long, device=device)
        beam_row[:, :K] = torch.where(live, torch.arange(K, device=device), -1)
        root = torch.arange(rows, device=device).clamp(max=K - 1).expand(G, rows).clone()
        chain = torch.full((G, rows, gamma), PAD_TOKEN, dtype=torch.long, device=device)
        used = torch.full((G,), K, dtype=torch.long, device=device)
        depth = torch.zeros(G, rows, dtype=torch.long, device=device)
        return cls(root, chain, used, scores, beam_row, 0, depth)

    def step(self, row_logprobs: Tensor, draft_beams: int) -> tuple[DraftRows, DraftStep]:
        """One draft step from the draft's masked log-probs after each row's path (``[G, R, V]`` float32,
        ``select.beam_logprobs``; only rows holding a current beam are read): the N = ``draft_beams`` new
        beams, laid out on the rows (module docstring)."""
        G, R, gamma = self.chain.shape
        W = self.scores.shape[1]
        if draft_beams > W:
            raise ValueError(f"draft_beams={draft_beams} is more than the width {W}")
        if self.level >= gamma:
            raise ValueError(f"the rows hold gamma = {gamma} draft steps, all done")
        device = self.chain.device
        V = row_logprobs.shape[-1]
        held = self.beam_row >= 0  # [G, W]
        beam_logprobs = row_logprobs.gather(1, self.beam_row.clamp(min=0)[:, :, None].expand(G, W, V))  # [G, W, V]
        scores = torch.where(held, self.scores, NEG_INF)
        selected = beam_step(scores, beam_logprobs.reshape(G * W, V), draft_beams)  # [G, N] each
        live = torch.isfinite(selected.scores)  # [G, N]
        parent_row = self.beam_row.gather(1, selected.parent)  # [G, N]
        # the first live child of each parent takes its row; the others take unused rows, in beam order
        n = torch.arange(draft_beams, device=device)
        same_parent = (selected.parent[:, :, None] == selected.parent[:, None, :]) & live[:, None, :]  # [G, N, N]
        earlier_sibling = (same_parent & (n[None, None, :] < n[None, :, None])).any(-1)  # [G, N]
        takes_parent_row = live & ~earlier_sibling
        wants_new_row = live & earlier_sibling
        new_row = self.used[:, None] + wants_new_row.long().cumsum(1) - 1  # [G, N]
        gets_new_row = wants_new_row & (new_row < R)  # children past the last row are dropped
        row = torch.where(takes_parent_row, parent_row, torch.where(gets_new_row, new_row, -1))  # [G, N]
        kept = row >= 0
        # every row's source: itself, or for a new row the parent row it copies
        source = torch.arange(R, device=device).expand(G, R).clone()
        target = torch.where(gets_new_row, new_row, R)  # [G, N]: R, a spare slot cut off below
        source_padded = torch.cat([source, source[:, :1]], 1)  # [G, R + 1]
        source_padded.scatter_(1, target, parent_row.clamp(min=0))
        source = source_padded[:, :R]
        root = self.root.gather(1, source)
        chain = self.chain.gather(1, source[:, :, None].expand(G, R, gamma)).clone()
        tokens_padded = torch.cat([chain[:, :, self.level], torch.zeros_like(chain[:, :1, 0])], 1)  # [G, R + 1]
        tokens_padded.scatter_(1, torch.where(kept, row, R), selected.tokens)
        chain[:, :, self.level] = tokens_padded[:, :R]
        depth_padded = torch.cat([self.depth.gather(1, source), torch.zeros_like(source[:, :1])], 1)  # [G, R + 1]
        depth_padded.scatter_(1, torch.where(kept, row, R), self.level + 1)
        depth = depth_padded[:, :R]
        new_scores = torch.full((G, W), NEG_INF, device=device)
        new_scores[:, :draft_beams] = torch.where(kept, selected.scores, NEG_INF)
        beam_row = torch.full((G, W), -1, dtype=torch.long, device=device)
        beam_row[:, :draft_beams] = row
        used = self.used + gets_new_row.long().sum(1)
        rows = DraftRows(root, chain, used, new_scores, beam_row, self.level + 1, depth)
        return rows, DraftStep(source=source, token=chain[:, :, self.level], beam_row=row)

    def round_rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """(root [G, R], chain [G, R, gamma], row_live [G, R]) for ``chains.chain_round``."""
        R = self.root.shape[1]
        return self.root, self.chain, torch.arange(R, device=self.root.device)[None, :] < self.used[:, None]


@dataclass(frozen=True)
class DraftStep:
    """What the engine does between two draft forwards."""

    source: Tensor  # [G, R] long: the row whose draft state each row continues from (itself, or a parent's)
    token: Tensor  # [G, R] long: the token each row feeds the next draft forward
    beam_row: Tensor  # [G, N] long: the row of each new beam, best first; -1: dead or dropped
