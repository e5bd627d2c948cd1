"""vllm_padrec.topk.draft_search: the draft's beam search of a round, level by level, over a given draft forward.

The rows it leaves are ``DraftRows``' own (tests/test_topk_draft_rows.py checks them against the reference);
here: what the forward is shown at each level, and the log-probs kept for relaxed verification, each row's at
every level equal to the draft's after the row's final root and chain prefix of that many tokens.
"""

from __future__ import annotations

import pytest
import torch
from test_topk_draft_rows import path_forward, paths, setup, start_scores_of

from vllm_padrec.topk.admission import beam_rows
from vllm_padrec.topk.draft_search import DraftSearcher, draft_search, holds_beam


@pytest.mark.parametrize("k, n, gamma", [(1, 1, 1), (2, 4, 2), (3, 3, 3), (4, 7, 3), (5, 2, 4)])
def test_kept_log_probs_are_the_drafts_after_each_rows_final_prefixes(k, n, gamma):
    _, starts, drafts = setup(k, dead_start=True)
    R = beam_rows(k, n, gamma)
    search = draft_search(start_scores_of(starts, k), R, gamma, n, path_forward(starts, drafts), keep_logprobs=True)
    rows, kept = search.rows, search.logprobs
    assert kept.shape == (len(starts), R, gamma, kept.shape[-1])
    made_late = 0  # rows whose last draft token came at the last level from another row: the final gather's
    for g, (start, draft) in enumerate(zip(starts, drafts)):
        for r in range(int(rows.used[g])):
            depth = int(rows.depth[g, r])
            made_late += depth == gamma and r >= k
            root_live = bool(torch.isfinite(start.scores[int(rows.root[g, r])]))
            for i in range(gamma):
                # the row held a beam at level i: an ancestor of its draft beam, or that beam (a live start beam)
                held = i < depth or (i == depth and (depth > 0 or root_live))
                want = draft(paths(start, rows, g, i)[r]) if held else torch.full_like(kept[g, r, i], float("-inf"))
                assert torch.equal(kept[g, r, i], want), (g, r, i, held)
    assert made_late > 0 or n == 1 or k == 1  # the final gather is exercised where new rows exist


def test_log_probs_a_forward_gives_rows_holding_no_beam_are_not_kept():
    """A forward computes every row of the batch; rows holding no beam get junk there (here +5), never kept."""
    _, starts, drafts = setup(4)
    forward = path_forward(starts, drafts)

    def junk_elsewhere(rows, step):
        logprobs = forward(rows, step)
        return torch.where(holds_beam(rows)[:, :, None], logprobs, 5.0)

    R = beam_rows(4, 7, 3)
    clean = draft_search(start_scores_of(starts, 4), R, 3, 7, forward, keep_logprobs=True)
    junk = draft_search(start_scores_of(starts, 4), R, 3, 7, junk_elsewhere, keep_logprobs=True)
    assert torch.equal(clean.rows.chain, junk.rows.chain) and torch.equal(clean.logprobs, junk.logprobs)
    assert (holds_beam(clean.rows).sum(1) <= 7).all()


def test_the_forward_sees_no_step_at_level_0_then_each_levels_sources_and_tokens():
    """From level 1 on, the rows the forward gets are the last level's rows moved by ``step.source``, and each
    row feeds ``step.token``, its chain's newest token."""
    _, starts, drafts = setup(3)
    forward, seen = path_forward(starts, drafts), []

    def recording(rows, step):
        seen.append((rows, step))
        return forward(rows, step)

    search = draft_search(start_scores_of(starts, 3), beam_rows(3, 3, 3), 3, 3, recording)
    assert [rows.level for rows, _ in seen] == [0, 1, 2] and seen[0][1] is None and search.logprobs is None
    for (before, _), (rows, step) in zip(seen, seen[1:]):
        assert torch.equal(rows.root, before.root.gather(1, step.source))
        assert torch.equal(
            rows.chain[:, :, : before.level],
            before.chain.gather(1, step.source[:, :, None].expand_as(before.chain))[:, :, : before.level],
        )
        assert torch.equal(step.token, rows.chain[:, :, before.level])
    assert any(
        not torch.equal(step.source, torch.arange(step.source.shape[1]).expand_as(step.source)) for _, step in seen[1:]
    )


def test_a_searcher_driven_step_by_step_is_the_search_and_refuses_steps_out_of_order():
    """V2's draft loop drives the forwards itself: the speculator advances a ``DraftSearcher`` after each."""
    _, starts, drafts = setup(3)
    forward = path_forward(starts, drafts)
    searcher = DraftSearcher(start_scores_of(starts, 3), beam_rows(3, 3, 2), 2, 3, keep_logprobs=True)
    with pytest.raises(ValueError, match="done 0 of its 2 levels"):
        searcher.result()
    while not searcher.done:
        searcher.advance(forward(searcher.rows, searcher.step))
    with pytest.raises(ValueError, match="has done its gamma levels"):
        searcher.advance(forward(searcher.rows, searcher.step))
    want = draft_search(start_scores_of(starts, 3), beam_rows(3, 3, 2), 2, 3, forward, keep_logprobs=True)
    got = searcher.result()
    assert torch.equal(got.rows.chain, want.rows.chain) and torch.equal(got.logprobs, want.logprobs)
