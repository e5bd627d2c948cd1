"""The engine's form of strict top-K verification (vllm_padrec.topk.strict) against the reference
(vllm_padrec.topk.verify.strict_round): several users' rounds at once, padded, each with its own draft,
tree and steps left; the accepted steps, the steps advanced and the final beams' tokens and score bits
must be the reference's.
"""

from __future__ import annotations

import pytest
import torch
from test_topk_verify import V, table

from vllm_padrec.topk.chains import chain_round
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


def chain_rows(start: Beams, tree, target, gamma: int):
    """The engine's rows for one user (ATSPEED.md, section 3): first one row per live start beam (the target's
    log-probs after every start beam come from the row it roots), holding the draft's best final path under it,
    or its first final path re-rooted there when there is none; then a row for every live draft beam of any
    level that no row's chain holds yet, deepest first, its chain padded with token 0 (a tree holding more
    than the draft's beams is still verified exactly). (root, chain) each."""
    offset = len(start.sequences[0])

    def live(level):
        return [s for s, score in zip(level.sequences, level.scores) if torch.isfinite(score)]

    final = live(tree[-1])
    rows = []
    for j, (beam, score) in enumerate(zip(start.sequences, start.scores)):
        if torch.isfinite(score):
            under = [p for p in final if p[:offset] == beam]
            rows.append((j, under[0][offset:] if under else final[0][offset:]))
    for level in reversed(tree):
        for sequence in live(level):
            held = {(start.sequences[j] + tuple(c))[: len(sequence)] for j, c in rows}
            if sequence not in held:
                tokens = sequence[offset:]
                rows.append((start.sequences.index(sequence[:offset]), tokens + (0,) * (gamma - len(tokens))))
    return rows


@pytest.mark.parametrize("k, n, gamma", [(1, 1, 1), (2, 4, 2), (3, 3, 3), (4, 7, 3)])
def test_chains_verify_as_the_reference_over_the_union_of_their_prefixes(k, n, gamma):
    """Rows holding the draft's final beams as chains: strict verification over chain_round's tree equals the
    reference's over the same tree (every prefix of a row's chain, each once)."""
    target = table(0)
    users = [
        (table(7, noise), done, left) for noise, done, left in [(0.0, 0, 5), (0.3, 1, 4), (1.0, 2, 3), (0.0, 3, 2)]
    ]
    starts = [start_beams(target, k, done) for _, done, _ in users]
    trees = [draft_tree(start, draft, n, gamma) for start, (draft, _, _) in zip(starts, users)]
    rows = [chain_rows(start, tree, target, gamma) for start, tree in zip(starts, trees)]
    G, R = len(users), max(len(r) for r in rows)
    start_scores = torch.full((G, k), float("-inf"))
    root = torch.zeros(G, R, dtype=torch.long)
    chain = torch.zeros(G, R, gamma, dtype=torch.long)
    row_live = torch.zeros(G, R, dtype=torch.bool)
    row_logprobs = torch.zeros(G, R, gamma + 1, V)
    wanted = []
    for g, (start, user_rows, (_, _, left)) in enumerate(zip(starts, rows, users)):
        start_scores[g, : len(start.sequences)] = start.scores
        for r, (j, tokens) in enumerate(user_rows):
            path = start.sequences[j] + tuple(tokens)
            root[g, r], chain[g, r], row_live[g, r] = j, torch.tensor(tokens), True
            row_logprobs[g, r] = torch.stack([target(path[: len(start.sequences[j]) + i]) for i in range(gamma + 1)])
        paths = [start.sequences[j] + tuple(tokens) for j, tokens in user_rows]
        offset = len(start.sequences[0])
        levels = [Beams(sorted({p[: offset + i + 1] for p in paths}), torch.zeros(0)) for i in range(gamma)]
        tree_sequences = set(start.sequences) | {s for level in levels for s in level.sequences}
        wanted.append(strict_round(start, levels, {s: target(s) for s in tree_sequences}, k, left))
    steps_left = torch.tensor([left for _, _, left in users])
    got = strict_round_batched(chain_round(start_scores, root, chain, row_live, row_logprobs, steps_left), k)
    assert got.accepted.tolist() == [w.accepted for w in wanted]
    assert got.advanced.tolist() == [len(w.steps) for w in wanted]
    assert max(w.accepted for w in wanted) > 0  # the chains hold accepted steps, not only rejections
    for g, (start, round_) in enumerate(zip(starts, wanted)):
        final, length, offset = round_.steps[-1], len(round_.steps), len(start.sequences[0])
        width = len(final.sequences)
        assert got.tokens[g, :width, :length].tolist() == [list(s[offset:]) for s in final.sequences]
        assert torch.equal(got.scores[g, :width], final.scores)


def test_chain_round_keeps_each_prefix_once_with_its_parent():
    root = torch.tensor([[0, 0, 1, 0]])
    chain = torch.tensor([[[5, 6], [5, 7], [5, 6], [5, 6]]])  # rows 0 and 3 are the same path
    row_live = torch.tensor([[True, True, True, True]])
    round_ = chain_round(torch.tensor([[0.0, -1.0]]), root, chain, row_live, torch.zeros(1, 4, 3, 2), torch.tensor([3]))
    assert round_.live[0].tolist() == [[True, False, True, False], [True, True, True, False]]
    assert round_.parent[0, 0].tolist() == [0, 0, 1, 0]  # level 0: the root start beams
    assert round_.parent[0, 1].tolist() == [0, 0, 2, 0]  # level 1: the slot of (root, 5): row 0, or row 2 under root 1
