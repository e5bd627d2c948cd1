"""vllm_padrec.topk.round_sampling: a drafted round's rows in an engine batch, on V2's layouts.

A batch of V2's shape (``req_ids``, ``cu_num_logits``, ``idx_mapping``) holds an ordinary request and two
drafted top-K requests (3 and 2 rows, gamma = 2), in shuffled order: each row's 1 + gamma logits rows must be
found, its log-probs must be the step rule's, the sampler's output must get each row's tokens and counts and
each R its one token (``</s>`` only where the item is complete), and each row's history must become its
source row's, cycles included, with nothing else touched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.topk.beams import beam_req_id
from vllm_padrec.topk.kv_copy import PrivateBlocks
from vllm_padrec.topk.round_sampling import (
    RoundBatch,
    copy_round_histories,
    round_logprobs,
    round_row_logits,
    write_round,
)
from vllm_padrec.topk.rounds import RoundOutcome
from vllm_padrec.topk.select import beam_logprobs

GAMMA, L, V = 2, 4, 11
GROUPS = [("A", 3, 5), ("B", 2, 7)]  # (R's id, rows, P)


def batch_layout():
    """(req_ids, logits per request, slots): R's own rows carry gamma drafts too, as the scheduler gives them."""
    req_ids = [beam_req_id("B", 1), "o", beam_req_id("A", 2), "A", beam_req_id("A", 0), "B"]
    req_ids += [beam_req_id("B", 0), beam_req_id("A", 1)]
    counts = [1 + GAMMA if r != "o" else 1 for r in req_ids]
    slots = [6, 0, 4, 1, 2, 5, 3, 7]
    return req_ids, counts, slots


def build(device="cpu") -> tuple[RoundBatch, list[str], np.ndarray]:
    req_ids, counts, slots = batch_layout()
    cu = np.concatenate([[0], np.cumsum(counts)])
    return RoundBatch.build(req_ids, cu, slots, GROUPS, GAMMA, L, device=device), req_ids, cu


def test_each_row_finds_its_logits_rows_and_slot_and_each_r_its_own():
    batch, req_ids, cu = build()
    for g, (owner, rows, _) in enumerate(GROUPS):
        for r in range(rows):
            i = req_ids.index(beam_req_id(owner, r))
            assert batch.logits_rows[g, r].tolist() == list(range(cu[i], cu[i] + 1 + GAMMA))
        assert int(batch.owner_requests[g]) == req_ids.index(owner) and int(batch.owner_logits[g]) == 1 + GAMMA
    assert batch.row_present.tolist() == [[True, True, True], [True, True, False]]
    assert batch.logits_rows[1, 2].tolist() == batch.logits_rows[1, 0].tolist()  # padding reads row 0's
    assert batch.row_index.tolist() == [0, 1, 2, 3, 4]
    assert batch.row_slots.tolist() == [2, 7, 4, 3, 6] and batch.row_prompt_len.tolist() == [5, 5, 5, 7, 7]
    assert batch.history_columns == (5, 7 + L)


def test_a_row_without_its_drafts_is_refused_loudly():
    req_ids, counts, slots = batch_layout()
    counts[0] = 1  # B's row 1 scheduled without its drafts
    cu = np.concatenate([[0], np.cumsum(counts)])
    with pytest.raises(RuntimeError, match=r"B\\x00beam1.* 1 logits rows; a round needs 1 \+ gamma = 3"):
        RoundBatch.build(req_ids, cu, slots, GROUPS, GAMMA, L)


def test_row_logprobs_are_the_step_rules_from_the_raw_copy():
    batch, _, cu = build()
    logits = torch.randn(int(cu[-1]), V, generator=torch.Generator().manual_seed(0))
    raw = round_row_logits(logits, batch)
    masked = logits.clone()
    masked[:, 3:] = float("-inf")  # the catalog mask, in place on the batch's logits
    logits[:, 3:] = float("-inf")
    got = round_logprobs(raw, masked, batch)
    want = beam_logprobs(raw.reshape(-1, V), (masked != float("-inf"))[batch.logits_rows.reshape(-1)])
    assert torch.equal(got, want.view(got.shape))
    assert torch.isfinite(got[..., :3]).all() and not torch.isfinite(got[..., 3:]).any()
    assert not torch.equal(raw, logits[batch.logits_rows])  # the copy kept the unmasked values


def outcome(done: list[bool]) -> RoundOutcome:
    G, r_max = 2, 3
    sampled = torch.arange(G * r_max * (1 + GAMMA)).view(G, r_max, 1 + GAMMA) + 100
    return RoundOutcome(
        source_row=torch.tensor([[1, 0, 2], [0, 0, 2]]),
        sampled=sampled,
        num_sampled=torch.tensor([2, 1]),
        num_rejected=torch.tensor([1, 2]),
        codes=torch.zeros(G, 2, L, dtype=torch.long),
        logprobs=torch.zeros(G, 2, L),
        scores=torch.zeros(G, 2),
        steps_done=torch.tensor([3, 4]),
        done=torch.tensor(done),
    )


@pytest.mark.parametrize("done", [[False, True], [True, False]])
def test_the_sampler_output_gets_every_rows_tokens_and_counts_and_rs_one_token(done):
    batch, req_ids, _ = build()
    n = len(req_ids)
    sampled = torch.full((n, 1 + GAMMA), -7)
    num_sampled, num_rejected = torch.full((n,), -7), torch.full((n,), -7)
    out = outcome(done)
    write_round(sampled, num_sampled, num_rejected, out, batch)
    for g, (owner, rows, _) in enumerate(GROUPS):
        for r in range(rows):
            i = req_ids.index(beam_req_id(owner, r))
            assert sampled[i].tolist() == out.sampled[g, r].tolist()
            assert (int(num_sampled[i]), int(num_rejected[i])) == (int(out.num_sampled[g]), int(out.num_rejected[g]))
        i = req_ids.index(owner)
        assert int(sampled[i, 0]) == (TokenLayout.EOS if done[g] else TokenLayout.PAD)
        assert (int(num_sampled[i]), int(num_rejected[i])) == (1, GAMMA)
    o = req_ids.index("o")
    assert sampled[o].tolist() == [-7] * (1 + GAMMA) and (int(num_sampled[o]), int(num_rejected[o])) == (-7, -7)


def test_each_rows_history_becomes_its_source_rows_up_to_p_plus_m():
    batch, req_ids, _ = build()
    history = torch.arange(8)[:, None] * 100 + torch.arange(20)[None, :]  # slot s, column c: 100 s + c
    before = history.clone()
    steps_before = torch.tensor([2, 1])  # A's rows hold P + 2 = 7 tokens, B's P + 1 = 8
    copy_round_histories(history, outcome([False, False]), steps_before, batch)
    slot = dict(zip([beam_req_id(o, r) for o, rows, _ in GROUPS for r in range(rows)], batch.row_slots.tolist()))
    a, b = [slot[beam_req_id("A", r)] for r in range(3)], [slot[beam_req_id("B", r)] for r in range(2)]
    # only the window from the smallest P moves (a request's rows share its prompt, so below P nothing differs)
    start = batch.history_columns[0]
    # A: row 0 <- row 1, row 1 <- row 0 (a cycle), row 2 keeps its own; columns P .. P + m - 1 = 5, 6
    assert torch.equal(history[a[0], start:7], before[a[1], start:7])
    assert torch.equal(history[a[1], start:7], before[a[0], start:7])
    assert torch.equal(history[a[2]], before[a[2]])
    assert torch.equal(history[a[0], 7:], before[a[0], 7:]) and torch.equal(history[a[0], :start], before[a[0], :start])
    # B: both rows from row 0, up to column P + m = 8
    assert torch.equal(history[b[1], start:8], before[b[0], start:8])
    assert torch.equal(history[b[1], 8:], before[b[1], 8:])
    untouched = sorted(set(range(8)) - set(a) - set(b))
    assert torch.equal(history[untouched], before[untouched])


def test_each_rows_private_blocks_copy_its_source_rows():
    """``kv_copy.PrivateBlocks`` over the rows (their count in place of K): every block of a row reads the same
    block of its source row (A: 3 rows of one block, B: 2 rows of two)."""
    blocks = PrivateBlocks.build([[10, 11, 12], [20, 21, 22, 23]], [3, 2])
    sources = blocks.sources(outcome([False, False]).source_row)
    assert blocks.dst.tolist() == [10, 11, 12, 20, 21, 22, 23]
    assert sources.tolist() == [11, 10, 12, 20, 21, 20, 21]
