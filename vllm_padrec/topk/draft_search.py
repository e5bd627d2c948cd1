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
from vllm_padrec.topk.select import NEG_INF

# (the rows before a level, what changed since the last forward or None at level 0) -> [G, R, V] log-probs
DraftForward = Callable[[DraftRows, "DraftStep | None"], Tensor]


@dataclass(frozen=True)
class DraftSearch:
    """The rows after gamma levels, and (relaxed) the draft's log-probs the search read on the way."""

    rows: DraftRows
    logprobs: Tensor | None  # [G, R, gamma, V] float32: after each row's root and its chain's first i tokens


def draft_search(
    start_scores: Tensor,  # [G, K] float32: the start beams' cumulative target scores, best first; -inf: none
    num_rows: int,  # R: rows per user (``admission.beam_rows``)
    gamma: int,  # draft levels
    draft_beams: int,  # N: the draft's beams per level
    forward: DraftForward,
    keep_logprobs: bool = False,  # keep every level's log-probs (relaxed verification)
) -> DraftSearch:
    """The draft's beam search of one round for G users at once (module docstring)."""
    K = start_scores.shape[1]
    rows = DraftRows.start(start_scores, num_rows, gamma, max(K, draft_beams))
    step: DraftStep | None = None
    history: Tensor | None = None  # [G, R, gamma, V]
    for level in range(gamma):
        logprobs = forward(rows, step)  # [G, R, V]
        if keep_logprobs:
            if history is None:
                G, R, V = logprobs.shape
                history = torch.full((G, R, gamma, V), NEG_INF, device=logprobs.device)
            else:
                history = follow(history, step.source)
            history[:, :, level] = torch.where(holds_beam(rows)[:, :, None], logprobs, NEG_INF)
        rows, step = rows.step(logprobs, draft_beams)
    if history is not None and step is not None:
        history = follow(history, step.source)  # rows made at the last level take their parents' log-probs
    return DraftSearch(rows, history)


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
