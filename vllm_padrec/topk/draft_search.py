"""A drafted round's draft beam search over its rows, level by level (issue 13, ATSPEED.md, plan step 4).

The loop is written here once, for the speculator (``propose`` runs one draft forward per level) and for the
CPU tests' stand-in speculator. What differs between them is the draft forward, which the caller gives:

    forward(rows, step) -> [G, R, V] float32

the draft's masked next-token log-probs (``select.beam_logprobs``) after each row's path: its root start beam,
then ``rows.level`` chain tokens. At level 0 ``step`` is None (the start beams sit on rows 0..K-1, the draft's
step 0). From level 1 on, ``step`` says what changed since the last forward: each row continues from the draft
state of row ``step.source`` (itself, or the parent row a new row copies) and feeds ``step.token``. Only rows
holding a current beam are read (``DraftRows.step``).

For relaxed verification the search also keeps each row's log-probs at every level, after the row's final
root and chain prefix of that many tokens (``keep_logprobs``): a level's log-probs are written for the rows
holding a beam at that level (-inf for the others, whatever the forward gave them), then follow every later
``source`` gather, so that a row made at a later level holds its parent's. No forward is run again after the
search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.topk.draft_rows import DraftRows, DraftStep
from vllm_padrec.topk.graphed import GraphedFunction
from vllm_padrec.topk.select import NEG_INF


def draft_rows_step(rows: DraftRows, logprobs: Tensor, draft_beams: int) -> tuple[DraftRows, DraftStep]:
    """``rows.step`` as a function of its tensors (what ``GRAPHED_DRAFT_STEP`` captures)."""
    return rows.step(logprobs, draft_beams)


# one level of the draft's beam search, replayed from a CUDA graph per signature on CUDA (``topk/graphed.py``)
GRAPHED_DRAFT_STEP = GraphedFunction(draft_rows_step)

# (the rows before a level, what changed since the last forward or None at level 0) -> [G, R, V] log-probs
DraftForward = Callable[[DraftRows, "DraftStep | None"], Tensor]


@dataclass(frozen=True)
class DraftSearch:
    """The rows after gamma levels, and (relaxed) the draft's log-probs the search read on the way."""

    rows: DraftRows
    logprobs: Tensor | None  # [G, R, gamma, V] float32: after each row's root and its chain's first i tokens


class DraftSearcher:
    """The search's state between draft forwards, for a caller that drives the forwards itself (V2's draft loop
    runs them; the speculator advances the search after each). ``draft_search`` drives it with a forward."""

    def __init__(
        self,
        start_scores: Tensor,  # [G, K] float32: the start beams' cumulative target scores, best first; -inf: none
        num_rows: int,  # R: rows per user (``admission.beam_rows``)
        gamma: int,  # draft levels
        draft_beams: int,  # N: the draft's beams per level
        keep_logprobs: bool = False,  # keep every level's log-probs (relaxed verification)
    ) -> None:
        K = start_scores.shape[1]
        self.rows = DraftRows.start(start_scores, num_rows, gamma, max(K, draft_beams))
        self.step: DraftStep | None = None  # what changed before the next forward; None before level 0's
        self.draft_beams, self.keep_logprobs = draft_beams, keep_logprobs
        self.history: Tensor | None = None  # [G, R, gamma, V]

    @property
    def done(self) -> bool:
        return self.rows.level >= self.rows.chain.shape[2]

    def advance(self, logprobs: Tensor) -> DraftStep:
        """One level from the draft's log-probs after each row's path (``[G, R, V]``, the forward of this level):
        the new beams on the rows, and what the next forward must change (``DraftStep``)."""
        if self.done:
            raise ValueError("the search has done its gamma levels")
        if self.keep_logprobs:
            if self.history is None:
                G, R, V = logprobs.shape
                gamma = self.rows.chain.shape[2]
                self.history = torch.full((G, R, gamma, V), NEG_INF, device=logprobs.device)
            else:
                self.history = follow(self.history, self.step.source)
            self.history[:, :, self.rows.level] = torch.where(holds_beam(self.rows)[:, :, None], logprobs, NEG_INF)
        self.rows, self.step = GRAPHED_DRAFT_STEP(self.rows, logprobs, self.draft_beams)
        return self.step

    def result(self) -> DraftSearch:
        """The rows after the last level, with the kept log-probs (rows made at the last level take their
        parents')."""
        if not self.done:
            raise ValueError(f"the search has done {self.rows.level} of its {self.rows.chain.shape[2]} levels")
        history = self.history
        if history is not None and self.step is not None:
            history = follow(history, self.step.source)
        return DraftSearch(self.rows, history)


def draft_search(
    start_scores: Tensor,  # [G, K] float32: the start beams' cumulative target scores, best first; -inf: none
    num_rows: int,  # R: rows per user (``admission.beam_rows``)
    gamma: int,  # draft levels
    draft_beams: int,  # N: the draft's beams per level
    forward: DraftForward,
    keep_logprobs: bool = False,  # keep every level's log-probs (relaxed verification)
) -> DraftSearch:
    """The draft's beam search of one round for G users at once, ``forward`` run once per level."""
    searcher = DraftSearcher(start_scores, num_rows, gamma, draft_beams, keep_logprobs)
    while not searcher.done:
        searcher.advance(forward(searcher.rows, searcher.step))
    return searcher.result()


def holds_beam(rows: DraftRows) -> Tensor:
    """[G, R] bool: the rows holding a current beam, the only rows whose log-probs the search reads (a forward
    computes something for every row of the batch; the rest is never kept)."""
    G, R = rows.root.shape
    held = torch.zeros(G, R + 1, dtype=torch.bool, device=rows.root.device)  # column R: beams with no row
    held.scatter_(1, torch.where(rows.beam_row >= 0, rows.beam_row, R), True)
    return held[:, :R]


def follow(history: Tensor, source: Tensor) -> Tensor:
    """[G, R, gamma, V]: each row's log-probs taken from its ``source`` row ([G, R] long)."""
    G, R, gamma, V = history.shape
    return history.gather(1, source[:, :, None, None].expand(G, R, gamma, V))
