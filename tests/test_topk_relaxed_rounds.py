"""vllm_padrec.topk.relaxed.relaxed_round_batched: relaxed rounds on the engine's rows, over whole items.

Each user's rounds run twice from the same start beams and the same random numbers (one uniform and one
Gumbel per candidate of each relaxed step): on the rows (``DraftRows``, ``chain_round``, ``RoundDraft.from_rows``,
``relaxed_round_batched``, ``round_outcome``), and in a reference written over sequences (``draft_tree``, the
target and the draft read after each sequence, ``relaxed_step_batched`` for one user). Every round's beams,
scores and steps must be equal; the rows' layout is then right whatever the draft. ``relaxed_step_batched``
itself (what it keeps, with what distribution) is ``tests/test_topk_relaxed.py``'s.
"""

from __future__ import annotations

import pytest
import torch
from test_topk_rounds import NOISES, first_step
from test_topk_verify import L, V, table

from vllm_padrec.topk.admission import beam_rows
from vllm_padrec.topk.chains import chain_round
from vllm_padrec.topk.draft_rows import DraftRows
from vllm_padrec.topk.relaxed import RoundDraft, gumbel_noise, relaxed_round_batched, relaxed_step_batched
from vllm_padrec.topk.rounds import round_outcome
from vllm_padrec.topk.verify import Beams, draft_tree, extend


def reference_round(target, draft, start: Beams, k: int, n: int, gamma: int, steps_left: int, uniform, gumbel):
    """One relaxed round over sequences: (the beams after it, best first, and the steps it advanced)."""
    levels = draft_tree(start, draft, n, gamma)
    draft_score = {s: float(v) for s, v in zip(start.sequences, start.scores)}
    for level in levels:
        draft_score.update({s: float(v) for s, v in zip(level.sequences, level.scores) if torch.isfinite(v)})
    current, steps = start, 0
    for i in range(gamma + 1):
        if steps == steps_left:
            break
        if i >= min(gamma, steps_left - 1):  # the target's own step ends the round
            current, steps = extend(current, target, k), steps + 1
            break
        rows_t = torch.stack([target(s) for s in current.sequences])  # [K, V]
        rows_d = torch.stack([draft(s) for s in current.sequences])
        cumulative = (current.scores[:, None].float() + rows_t).flatten()  # [K * V]
        base = torch.tensor([draft_score[s] for s in current.sequences])
        p = torch.softmax(cumulative.double(), 0)
        q = torch.softmax((base[:, None] + rows_d).flatten().double(), 0)
        drafted = torch.zeros(k * V, dtype=torch.bool)
        for s, v in zip(levels[i].sequences, levels[i].scores):
            if torch.isfinite(v) and s[:-1] in current.sequences:
                drafted[current.sequences.index(s[:-1]) * V + s[-1]] = True
        step = relaxed_step_batched(
            p[None], q[None], drafted[None] & (q[None] > 0), k, uniform[i][None], gumbel[i][None]
        )
        kept = step.kept[0].tolist()
        current = Beams([current.sequences[c // V] + (c % V,) for c in kept], cumulative[kept])
        steps += 1
        if not bool(step.complete[0]):
            break
    order = current.scores.argsort(descending=True, stable=True).tolist()
    return Beams([current.sequences[j] for j in order], current.scores[order]), steps


def rows_round(targets_of, drafts_of, scores, codes, steps_done, k: int, n: int, gamma: int):
    """The round on rows for every user: (RoundDraft inputs, the DraftedRound, root, row_live)."""
    G, R = scores.shape[0], beam_rows(k, n, gamma)

    def path(g, rows, r, length):
        return tuple(codes[g, int(rows.root[g, r]), : int(steps_done[g])].tolist()) + tuple(
            rows.chain[g, r, :length].tolist()
        )

    rows = DraftRows.start(scores, R, gamma, max(k, n))
    row_draft = torch.zeros(G, R, gamma, V)  # every row's, as the engine's draft forward gives them
    for level in range(gamma):
        for g in range(G):
            for r in range(R):
                row_draft[g, r, level] = drafts_of[g](path(g, rows, r, level))
        rows, _ = rows.step(row_draft[:, :, level], n)
    root, chain, row_live = rows.round_rows()
    for level in range(gamma):  # the rows' paths changed as the search went: read each level after the final ones
        for g in range(G):
            for r in range(R):
                row_draft[g, r, level] = drafts_of[g](path(g, rows, r, level))
    target_logprobs = torch.zeros(G, R, gamma + 1, V)
    for g in range(G):
        for r in range(R):
            for i in range(gamma + 1):
                target_logprobs[g, r, i] = targets_of[g](path(g, rows, r, i))
    tree = chain_round(scores, root, chain, row_live, target_logprobs, L - steps_done)
    return RoundDraft.from_rows(row_draft, scores, root, chain, rows.depth), tree, root, row_live


@pytest.mark.parametrize("k, n, gamma", [(1, 2, 1), (2, 4, 2), (3, 3, 3), (2, 3, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_relaxed_rounds_on_rows_are_the_reference_round_by_round(k, n, gamma, seed):
    target, drafts = table(0), [table(7, noise) for noise in NOISES]
    G = len(drafts)
    generator = torch.Generator().manual_seed(seed)
    codes, scores, logprobs = first_step(target, k, G)
    steps_done = torch.ones(G, dtype=torch.long)
    rounds = 0
    while not bool((steps_done >= L).all()):
        uniform = torch.rand(G, gamma, k * V, generator=generator, dtype=torch.float64)
        gumbel = gumbel_noise((G, gamma, k * V), generator=generator, dtype=torch.float64)
        draft, tree, root, row_live = rows_round([target] * G, drafts, scores, codes, steps_done, k, n, gamma)
        result = relaxed_round_batched(tree, draft, k, uniform, gumbel)
        out = round_outcome(result, root, row_live, codes, logprobs, steps_done)
        for g in range(G):
            m = int(steps_done[g])
            if m >= L:
                assert int(result.advanced[g]) == 0 and int(out.num_sampled[g]) == 1  # rides along: one <pad>
                assert torch.equal(out.codes[g], codes[g]) and torch.equal(out.scores[g], scores[g])
                continue
            start = Beams([tuple(codes[g, j, :m].tolist()) for j in range(k)], scores[g].clone())
            want, steps = reference_round(target, drafts[g], start, k, n, gamma, L - m, uniform[g], gumbel[g])
            assert int(result.advanced[g]) == steps
            assert [tuple(out.codes[g, j, : m + steps].tolist()) for j in range(k)] == want.sequences
            assert torch.equal(out.scores[g], want.scores)
        codes, scores, logprobs, steps_done = out.codes, out.scores, out.logprobs, out.steps_done
        rounds += 1
    assert rounds <= L - 1


def test_a_draft_equal_to_the_target_has_every_relaxed_step_accepted():
    """p = q on the drafted candidates: each is accepted (ratio 1), and with N >= K drafted the step is complete."""
    k, n, gamma = 2, 4, 2
    target = table(0)
    codes, scores, logprobs = first_step(target, k, 1)
    steps_done = torch.ones(1, dtype=torch.long)
    uniform = torch.full((1, gamma, k * V), 0.999, dtype=torch.float64)
    gumbel = torch.zeros(1, gamma, k * V, dtype=torch.float64)
    draft, tree, _, _ = rows_round([target], [target], scores, codes, steps_done, k, n, gamma)
    result = relaxed_round_batched(tree, draft, k, uniform, gumbel)
    assert result.accepted.tolist() == [gamma] and result.advanced.tolist() == [gamma + 1]
