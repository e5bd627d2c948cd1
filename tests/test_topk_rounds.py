"""vllm_padrec.topk.rounds: what a verified round leaves each row, over whole items on the CPU.

Users with drafts near and far from the target run drafted rounds the way the engine lays them out: the
target's own first step (the prefill), then rounds of ``DraftRows`` (the draft's beam search on rows),
``chain_round`` + ``strict_round_batched`` (one verification over the rows) and ``round_outcome``, until
every item is complete. A user whose item is complete rides along unchanged, as in the extra round that
async scheduling may run. The answers must be the target's own beam search bit for bit, whatever the draft;
and in every round each new beam's row must get what V2 needs: a source row whose fed tokens are the new
path but its last token (its KV), whose history plus the sampled tokens is the new path.
"""

from __future__ import annotations

import pytest
import torch
from test_topk_verify import L, V, reference_search, table

from vllm_padrec.topk.admission import beam_rows
from vllm_padrec.topk.chains import chain_round
from vllm_padrec.topk.draft_rows import DraftRows
from vllm_padrec.topk.rounds import PAD_TOKEN, round_outcome
from vllm_padrec.topk.strict import strict_round_batched
from vllm_padrec.topk.verify import Beams, extend

NOISES = [0.0, 0.3, 1.0, 5.0]  # one user each: a draft equal to the target, near it, far from it


def first_step(target, k: int, users: int):
    """Engine step 0: the target's own first beam step from the prompt, as [G, K, L] codes and [G, K] scores
    (each first code's log-prob is its score)."""
    first = extend(Beams([()], torch.zeros(1)), target, k)  # fewer than K beams when K > V: the rest are dead
    width = len(first.sequences)
    codes = torch.full((users, k, L), PAD_TOKEN, dtype=torch.long)
    codes[:, :width, 0] = torch.tensor([s[0] for s in first.sequences])
    scores = torch.full((users, k), float("-inf"))
    scores[:, :width] = first.scores
    return codes, scores, torch.cat([scores[:, :, None], torch.zeros(users, k, L - 1)], 2)


def run_rounds(k: int, n: int, gamma: int):
    """Every user's rounds until all items are complete: (codes, scores, rounds, per-round checks)."""
    target, drafts = table(0), [table(7, noise) for noise in NOISES]
    G, R = len(drafts), beam_rows(k, n, gamma)
    codes, scores, logprobs = first_step(target, k, G)
    steps_done = torch.ones(G, dtype=torch.long)
    rounds = torch.zeros(G, dtype=torch.long)
    while not bool((steps_done >= L).all()):
        start_paths = [[tuple(codes[g, j, : int(steps_done[g])].tolist()) for j in range(k)] for g in range(G)]

        def path(g: int, root: torch.Tensor, chain: torch.Tensor, r: int, length: int, starts=start_paths):
            """Row r's fed path: its root start beam's codes, then ``length`` tokens of its chain."""
            return starts[g][int(root[g, r])] + tuple(chain[g, r, :length].tolist())

        rows = DraftRows.start(scores, R, gamma, max(k, n))
        for level in range(gamma):
            row_logprobs = torch.stack(
                [torch.stack([drafts[g](path(g, rows.root, rows.chain, r, level)) for r in range(R)]) for g in range(G)]
            )  # [G, R, V]
            rows, _ = rows.step(row_logprobs, n)
        root, chain, row_live = rows.round_rows()
        target_logprobs = torch.zeros(G, R, gamma + 1, V)
        for g in range(G):
            for r in range(R):
                for i in range(gamma + 1):
                    target_logprobs[g, r, i] = target(path(g, root, chain, r, i))
        steps_left = L - steps_done
        result = strict_round_batched(chain_round(scores, root, chain, row_live, target_logprobs, steps_left), k)
        out = round_outcome(result, root, row_live, codes, logprobs, steps_done)

        for g in range(G):
            m, advanced = int(steps_done[g]), int(result.advanced[g])
            assert advanced == min(int(result.accepted[g]) + 1, L - m) if m < L else advanced == 0
            assert int(out.num_sampled[g]) == max(advanced, 1)  # a complete item's rows sample one <pad>
            assert int(out.num_rejected[g]) == gamma + 1 - int(out.num_sampled[g])
            for j in range(k):
                if not torch.isfinite(out.scores[g, j]) or advanced == 0:
                    continue
                new_path = tuple(out.codes[g, j, : m + advanced].tolist())
                s = int(out.source_row[g, j])
                # the source row fed the new path but its last token: its KV is the new beam's
                assert path(g, root, chain, s, advanced - 1) == new_path[:-1]
                assert advanced == 1 or bool(row_live[g, s])
                # its history (its root's path) and the sampled tokens make the new path
                assert start_paths[g][int(root[g, s])] + tuple(out.sampled[g, j, :advanced].tolist()) == new_path
            assert out.source_row[g, k:].tolist() == list(range(k, R))  # extra rows: rebuilt by the next drafting
        rounds += (steps_done < L).long()
        codes, scores, logprobs, steps_done = out.codes, out.scores, out.logprobs, out.steps_done
        assert torch.equal(out.done, steps_done >= L)
    return target, codes, scores, logprobs, rounds


@pytest.mark.parametrize("k, n, gamma", [(1, 1, 1), (2, 4, 2), (3, 3, 3), (4, 7, 3), (5, 2, 4), (8, 4, 2)])
def test_rounds_on_rows_give_the_targets_own_beam_search_whatever_the_draft(k, n, gamma):
    target, codes, scores, logprobs, rounds = run_rounds(k, n, gamma)
    want = reference_search(target, k)[-1]
    live = torch.isfinite(want.scores)
    for g in range(len(NOISES)):
        assert torch.equal(torch.isfinite(scores[g]), live)
        assert torch.equal(scores[g][live], want.scores[live])  # score bits
        got = [tuple(codes[g, j].tolist()) for j in range(k) if bool(live[j])]
        assert got == [s for s, alive in zip(want.sequences, live.tolist()) if alive]
        for j, sequence in enumerate(got):  # each code's log-prob is the target's, bit for bit
            want_logprobs = torch.stack([target(sequence[:i])[sequence[i]] for i in range(L)])
            assert torch.equal(logprobs[g, j], want_logprobs)
    assert int(rounds.max()) <= L - 1
    if gamma > 1 and n >= k:  # the draft equal to the target, with N >= K beams, accepts every drafted step
        assert int(rounds[0]) == -(-(L - 1) // (gamma + 1)) < int(rounds[-1])
    if n < k:  # fewer draft beams than K never hold all the target's beams: one step a round
        assert rounds.tolist() == [L - 1] * len(NOISES)


def test_a_user_whose_item_is_complete_rides_along_unchanged():
    """Async scheduling may run one more round of a complete item: no beam moves, and each row samples one
    ``<pad>`` (V2's drafter reads a row's last sampled token at index num_sampled - 1: never none)."""
    k, n, gamma = 2, 3, 2
    target, codes, scores, logprobs, _ = run_rounds(k, n, gamma)
    G, R = codes.shape[0], beam_rows(k, n, gamma)
    rows = DraftRows.start(scores, R, gamma, max(k, n))
    root, chain, row_live = rows.round_rows()
    steps_done = torch.full((G,), L, dtype=torch.long)
    target_logprobs = torch.zeros(G, R, gamma + 1, V)
    result = strict_round_batched(chain_round(scores, root, chain, row_live, target_logprobs, L - steps_done), k)
    out = round_outcome(result, root, row_live, codes, logprobs, steps_done)
    assert torch.equal(out.codes, codes) and torch.equal(out.scores, scores) and bool(out.done.all())
    assert torch.equal(out.logprobs, logprobs)
    assert out.num_sampled.tolist() == [1] * G and out.num_rejected.tolist() == [gamma] * G
    assert (out.sampled[:, :, 0] == PAD_TOKEN).all()
