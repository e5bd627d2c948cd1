"""integration/topk_draft_search.py: what moves on V2's speculator buffers between two draft forwards of a
drafted top-K round, checked on a real search (``topk.draft_search``) over two users' rows laid out in a batch."""

from __future__ import annotations

import torch
from test_topk_draft_rows import path_forward, setup, start_scores_of

from vllm_padrec.integration.topk_draft_search import move_draft_rows
from vllm_padrec.topk.admission import beam_rows
from vllm_padrec.topk.draft_search import DraftSearcher

H, GAMMA, N, K = 3, 3, 4, 3


def test_each_row_takes_its_sources_feature_feeds_its_token_and_carries_its_chain():
    _, starts, drafts = setup(K)
    starts, drafts = starts[:2], drafts[:2]
    R = beam_rows(K, N, GAMMA)
    # the users' rows interleaved in the batch, after a plain request in row 0: user g's row r at 1 + 2 r + g
    batch_rows = torch.tensor([[1 + 2 * r + g for r in range(R)] for g in range(2)])  # [G, R]
    num_reqs = 1 + 2 * R
    searcher = DraftSearcher(start_scores_of(starts, K), R, GAMMA, N)
    forward = path_forward(starts, drafts)
    moved_any = False
    while not searcher.done:
        before = searcher.rows
        step = searcher.advance(forward(searcher.rows, searcher.step))
        # each batch row's feature says which (user, row) it was: feature = 100 g + r
        hidden = torch.zeros(num_reqs, H)
        hidden[batch_rows.reshape(-1)] = (100 * torch.arange(2)[:, None] + torch.arange(R)).reshape(-1, 1).float()
        hidden[0] = -1.0
        input_ids = torch.full((num_reqs,), -5, dtype=torch.int32)
        draft_tokens = torch.full((num_reqs, GAMMA), -7, dtype=torch.int64)
        move_draft_rows(batch_rows, step, searcher.rows, hidden, input_ids, draft_tokens)
        level = searcher.rows.level
        for g in range(2):
            for r in range(R):
                b, source = int(batch_rows[g, r]), int(step.source[g, r])
                assert hidden[b].tolist() == [100.0 * g + source] * H
                assert int(input_ids[b]) == int(searcher.rows.chain[g, r, level - 1]) == int(step.token[g, r])
                assert draft_tokens[b, :level].tolist() == searcher.rows.chain[g, r, :level].tolist()
                assert draft_tokens[b, level:].tolist() == [-7] * (GAMMA - level)
                moved_any |= source != r
        # the plain request's row is untouched; a moved row's chain is its source's before the level, plus its token
        assert hidden[0].tolist() == [-1.0] * H and int(input_ids[0]) == -5 and (draft_tokens[0] == -7).all()
        for g in range(2):
            for r in range(R):
                source = int(step.source[g, r])
                assert searcher.rows.chain[g, r, : level - 1].tolist() == before.chain[g, source, : level - 1].tolist()
    assert moved_any  # the search made new rows from their parents' at some level
