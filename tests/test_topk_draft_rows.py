"""vllm_padrec.topk.draft_rows: the draft's beam search of a round, laid out on a fixed set of rows per user.

Against the reference (``verify.draft_tree``): each level's beams, sequences and score bits; the two rules of
ATSPEED.md (every live start beam roots a row, every draft beam of every level is a row's chain prefix);
at most K + (N - 1) * gamma rows; and strict verification over the rows' tree (``chains.chain_round``) equal
to the reference's over the same tree, accepting at least what the draft's own tree accepts. With too few
rows, children are dropped and verification stays exact.
"""

from __future__ import annotations

import pytest
import torch
from test_topk_strict import start_beams
from test_topk_verify import V, table

from vllm_padrec.topk.admission import beam_rows
from vllm_padrec.topk.chains import chain_round
from vllm_padrec.topk.draft_rows import PAD_TOKEN, DraftRows
from vllm_padrec.topk.draft_search import draft_search
from vllm_padrec.topk.strict import strict_round_batched
from vllm_padrec.topk.verify import Beams, draft_tree, strict_round

# (draft noise, target steps done, steps left) per user: a draft equal to the target, near it, far from it
USERS = [(0.0, 1, 4), (0.3, 1, 4), (1.0, 2, 3), (5.0, 3, 2)]


def paths(start: Beams, rows: DraftRows, g: int, length: int) -> list[tuple[int, ...]]:
    """Each row's path of user g: its root start beam, then the first ``length`` tokens of its chain."""
    return [
        start.sequences[int(rows.root[g, r])] + tuple(rows.chain[g, r, :length].tolist())
        for r in range(rows.root.shape[1])
    ]


def path_forward(starts, drafts):
    """``draft_search``'s draft forward for these users: each row's log-probs read after its path."""

    def forward(rows: DraftRows, step) -> torch.Tensor:  # [G, R, V]
        return torch.stack(
            [
                torch.stack([draft(p) for p in paths(start, rows, g, rows.level)])
                for g, (start, draft) in enumerate(zip(starts, drafts))
            ]
        )

    return forward


def start_scores_of(starts, k: int) -> torch.Tensor:  # [G, K], -inf past a user's start beams
    scores = torch.full((len(starts), k), float("-inf"))
    for g, start in enumerate(starts):
        scores[g, : len(start.sequences)] = start.scores
    return scores


def run_search(starts, drafts, k: int, n: int, gamma: int, rows_per_user: int):
    """The row search (``draft_search``) for every user at once: the rows after each level."""
    seen = []
    forward = path_forward(starts, drafts)

    def recording(rows, step):
        seen.append(rows)
        return forward(rows, step)

    final = draft_search(start_scores_of(starts, k), rows_per_user, gamma, n, recording).rows
    return seen[1:] + [final]


def setup(k: int, dead_start: bool = False):
    target = table(0)
    starts = [start_beams(target, k, done) for _, done, _ in USERS]
    if dead_start and k > 1:  # the last user's worst start beam is dead (a catalog short of items)
        last = starts[-1]
        starts[-1] = Beams(last.sequences, torch.cat([last.scores[:-1], torch.tensor([float("-inf")])]))
    drafts = [table(7, noise) for noise, _, _ in USERS]
    return target, starts, drafts


@pytest.mark.parametrize("k, n, gamma", [(1, 1, 1), (2, 4, 2), (3, 3, 3), (4, 7, 3), (5, 2, 4)])
def test_each_levels_beams_are_the_reference_draft_search(k, n, gamma):
    _, starts, drafts = setup(k, dead_start=True)
    levels = run_search(starts, drafts, k, n, gamma, beam_rows(k, n, gamma))
    for g, (start, draft) in enumerate(zip(starts, drafts)):
        tree = draft_tree(start, draft, n, gamma)
        for i, (rows, want) in enumerate(zip(levels, tree)):
            live = torch.isfinite(want.scores)
            assert torch.equal(torch.isfinite(rows.scores[g, :n]), live)
            assert torch.equal(rows.scores[g, :n][live], want.scores[live])  # score bits
            held = paths(start, rows, g, i + 1)
            got = [held[int(r)] for r in rows.beam_row[g, :n][live]]
            assert got == [s for s, alive in zip(want.sequences, live.tolist()) if alive]


@pytest.mark.parametrize("k, n, gamma", [(2, 4, 2), (3, 3, 3), (4, 7, 3), (5, 2, 4)])
def test_rows_root_every_start_beam_and_hold_every_draft_beam_as_a_chain_prefix(k, n, gamma):
    _, starts, drafts = setup(k, dead_start=True)
    levels = run_search(starts, drafts, k, n, gamma, beam_rows(k, n, gamma))
    final = levels[-1]
    root, chain, row_live = final.round_rows()
    for g, (start, draft) in enumerate(zip(starts, drafts)):
        used = int(final.used[g])
        assert used <= beam_rows(k, n, gamma) and row_live[g].tolist() == [r < used for r in range(root.shape[1])]
        live_starts = [j for j, s in enumerate(start.scores.tolist()) if s != float("-inf")]
        assert set(live_starts) <= set(root[g, :used].tolist())
        full = paths(start, final, g, gamma)[:used]
        prefixes = {p[: len(start.sequences[0]) + i] for p in full for i in range(1, gamma + 1)}
        for level in draft_tree(start, draft, n, gamma):
            for sequence, score in zip(level.sequences, level.scores.tolist()):
                assert score == float("-inf") or sequence in prefixes, sequence


def verify_rows(target, starts, final: DraftRows, k: int, gamma: int):
    """Strict verification over the rows' tree: the engine's form, and the reference over the same tree."""
    root, chain, row_live = final.round_rows()
    G, R = root.shape
    row_logprobs = torch.zeros(G, R, gamma + 1, V)
    start_scores = start_scores_of(starts, k)
    wanted = []
    for g, (start, (_, _, left)) in enumerate(zip(starts, USERS)):
        full = paths(start, final, g, gamma)
        offset = len(start.sequences[0])
        for r, path in enumerate(full):
            row_logprobs[g, r] = torch.stack([target(path[: offset + i]) for i in range(gamma + 1)])
        held = full[: int(final.used[g])]
        levels = [Beams(sorted({p[: offset + i + 1] for p in held}), torch.zeros(0)) for i in range(gamma)]
        tree = set(start.sequences) | {s for level in levels for s in level.sequences}
        wanted.append(strict_round(start, levels, {s: target(s) for s in tree}, k, left))
    steps_left = torch.tensor([left for _, _, left in USERS])
    got = strict_round_batched(chain_round(start_scores, root, chain, row_live, row_logprobs, steps_left), k)
    return got, wanted


@pytest.mark.parametrize("k, n, gamma", [(2, 4, 2), (3, 3, 3), (4, 7, 3)])
@pytest.mark.parametrize("spare_rows", [None, 1])
def test_strict_verification_over_the_rows_is_the_reference_over_their_tree(k, n, gamma, spare_rows):
    """With rows for every beam (None) the rows accept at least what the draft's own tree accepts; with one
    spare row past the start beams' children are dropped, and verification stays exact."""
    target, starts, drafts = setup(k)
    rows_per_user = beam_rows(k, n, gamma) if spare_rows is None else k + spare_rows
    final = run_search(starts, drafts, k, n, gamma, rows_per_user)[-1]
    assert int(final.used.max()) <= rows_per_user
    got, wanted = verify_rows(target, starts, final, k, gamma)
    assert got.accepted.tolist() == [w.accepted for w in wanted]
    assert got.advanced.tolist() == [len(w.steps) for w in wanted]
    for g, (start, round_) in enumerate(zip(starts, wanted)):
        final_beams, length, offset = round_.steps[-1], len(round_.steps), len(start.sequences[0])
        width = len(final_beams.sequences)
        assert got.tokens[g, :width, :length].tolist() == [list(s[offset:]) for s in final_beams.sequences]
        assert torch.equal(got.scores[g, :width], final_beams.scores)
    if spare_rows is None:
        for g, (start, draft) in enumerate(zip(starts, drafts)):
            tree = draft_tree(start, draft, n, gamma)
            sequences = set(start.sequences) | {s for level in tree for s in level.sequences}
            own = strict_round(start, tree, {s: target(s) for s in sequences}, k, USERS[g][2])
            assert wanted[g].accepted >= own.accepted
        assert max(w.accepted for w in wanted) > 0  # the draft equal to the target is accepted


def test_a_second_child_copies_its_parents_row_and_a_childless_beam_keeps_its_row():
    """Two start beams; the draft's two best extensions both extend start beam 1: row 1 keeps it, row 2
    copies row 1 (source), and row 0, whose beam has no child, keeps its empty chain."""
    rows = DraftRows.start(torch.tensor([[-1.0, -1.5]]), rows=4, gamma=2, width=2)
    logprobs = torch.full((1, 4, 5), -20.0)
    logprobs[0, 0, 0] = -5.0  # start beam 0: -6 at best
    logprobs[0, 1, 3], logprobs[0, 1, 4] = -0.1, -0.2  # start beam 1: -1.6 and -1.7
    rows, step = rows.step(logprobs, 2)
    assert step.beam_row.tolist() == [[1, 2]] and step.source.tolist() == [[0, 1, 1, 3]]
    assert rows.root.tolist() == [[0, 1, 1, 1]] and rows.used.tolist() == [3]
    assert rows.chain[0, :3, 0].tolist() == [PAD_TOKEN, 3, 4] and step.token[0, 1:3].tolist() == [3, 4]
    assert torch.allclose(rows.scores, torch.tensor([[-1.6, -1.7]]))


def test_with_too_few_rows_every_kept_beam_holds_a_row_and_its_own_paths_score():
    """Dropped children are dead (score -inf, no row); each kept beam's score is its start beam's plus the draft's
    log-probs along the path its row holds, in the draft's float32 order of sums."""
    k, n, gamma = 3, 3, 3
    _, starts, drafts = setup(k)
    levels = run_search(starts, drafts, k, n, gamma, k + 1)
    dropped = 0
    for i, rows in enumerate(levels):
        kept = torch.isfinite(rows.scores)
        assert torch.equal(kept, rows.beam_row >= 0)
        for g, (start, draft) in enumerate(zip(starts, drafts)):
            held = paths(start, rows, g, i + 1)
            for b in kept[g].nonzero().squeeze(1).tolist():
                r = int(rows.beam_row[g, b])
                path, offset = held[r], len(start.sequences[0])
                score = start.scores[int(rows.root[g, r])]
                for t in range(offset, len(path)):
                    score = score + draft(path[:t])[path[t]]
                assert rows.scores[g, b] == score
            dropped += n - int(kept[g].sum())
    assert dropped > 0 and int(levels[-1].used.max()) == k + 1
