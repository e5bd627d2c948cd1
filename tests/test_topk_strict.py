"""The engine's form of strict top-K verification (vllm_padrec.topk.strict) against the reference
(vllm_padrec.topk.verify.strict_round): several users' rounds at once, padded, each with its own draft,
tree and steps left; the accepted steps, the steps advanced and the final beams' tokens and score bits
must be the reference's.
"""

from __future__ import annotations

import pytest
import torch
from test_topk_verify import V, table

from vllm_padrec.topk.strict import DraftedRound, strict_round_batched
from vllm_padrec.topk.verify import Beams, draft_tree, extend, strict_round


def padded_round(starts, trees, target, k: int, n: int, gamma: int, steps_left) -> DraftedRound:
    """The reference's rounds as the engine's tensors: start beams padded to K, levels padded to N nodes."""
    G = len(starts)
    start_scores = torch.full((G, k), float("-inf"))
    start_logprobs = torch.zeros(G, k, V)
    parent = torch.zeros(G, gamma, n, dtype=torch.long)
    token = torch.zeros(G, gamma, n, dtype=torch.long)
    live = torch.zeros(G, gamma, n, dtype=torch.bool)
    node_logprobs = torch.zeros(G, gamma, n, V)
    for g, (start, tree) in enumerate(zip(starts, trees)):
        start_scores[g, : len(start.sequences)] = start.scores
        for j, sequence in enumerate(start.sequences):
            start_logprobs[g, j] = target(sequence)
        above = start.sequences
        for i, level in enumerate(tree):
            for j, sequence in enumerate(level.sequences):
                parent[g, i, j] = above.index(sequence[:-1])
                token[g, i, j] = sequence[-1]
                live[g, i, j] = bool(torch.isfinite(level.scores[j]))
                node_logprobs[g, i, j] = target(sequence)
            above = level.sequences
    return DraftedRound(
        start_scores, start_logprobs, parent, token, live, node_logprobs, torch.tensor(steps_left, dtype=torch.long)
    )


def start_beams(target, k: int, steps: int) -> Beams:
    """The target's own beams after ``steps`` steps from the empty sequence (a round's start)."""
    beams = Beams([()], torch.zeros(1))
    for _ in range(steps):
        beams = extend(beams, target, k)
    return beams


@pytest.mark.parametrize("k, n, gamma", [(1, 1, 1), (2, 4, 2), (3, 3, 3), (4, 7, 3), (5, 5, 4)])
def test_the_engine_form_equals_the_reference_round_for_every_user(k, n, gamma):
    target = table(0)
    users = []  # (draft noise, steps already done, steps left), chosen so that acceptance varies
    for noise, done, left in [(0.0, 0, 5), (0.3, 1, 4), (1.0, 2, 3), (5.0, 0, 5), (0.0, 3, 2), (0.3, 4, 1)]:
        users.append((table(7, noise), done, left))
    starts = [start_beams(target, k, done) for _, done, _ in users]
    trees = [draft_tree(start, draft, n, gamma) for start, (draft, _, _) in zip(starts, users)]
    wanted = []
    for start, tree, (_, _, left) in zip(starts, trees, users):
        sequences = set(start.sequences) | {s for level in tree for s in level.sequences}
        wanted.append(strict_round(start, tree, {s: target(s) for s in sequences}, k, left))
    steps_left = [left for _, _, left in users]
    got = strict_round_batched(padded_round(starts, trees, target, k, n, gamma, steps_left), k)
    assert got.accepted.tolist() == [w.accepted for w in wanted]
    assert got.advanced.tolist() == [len(w.steps) for w in wanted]
    assert len(set(got.accepted.tolist())) > 1 or gamma == 1  # the users' rounds differ
    for g, (start, round_) in enumerate(zip(starts, wanted)):
        final, length = round_.steps[-1], len(round_.steps)
        width = len(final.sequences)
        offset = len(start.sequences[0])
        assert got.tokens[g, :width, :length].tolist() == [list(s[offset:]) for s in final.sequences]
        assert bool((got.tokens[g, :, length:] == -1).all())
        assert torch.equal(got.scores[g, :width], final.scores)  # the same float32 sums, bit for bit


def test_a_tree_that_misses_one_of_the_targets_beams_stops_the_round_at_that_step():
    target, k, n, gamma = table(0), 3, 6, 3
    start = start_beams(target, k, 1)
    tree = draft_tree(start, target, n, gamma)  # the target as its own draft: every step accepted
    round_ = padded_round([start], [tree], target, k, n, gamma, [4])
    assert strict_round_batched(round_, k).accepted.tolist() == [3]
    best = extend(extend(start, target, k), target, k).sequences[0]  # the target's best beam after two steps
    level = 1
    j = tree[level].sequences.index(best)
    live = round_.live.clone()
    live[0, level, j] = False  # the draft no longer holds it
    missing = DraftedRound(**{**round_.__dict__, "live": live})
    result = strict_round_batched(missing, k)
    assert result.accepted.tolist() == [1] and result.advanced.tolist() == [2]
