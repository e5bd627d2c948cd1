"""AtSpeed's verification rules, the plain-torch reference (vllm_padrec.topk.verify; issue 13, Build 4).

Strict: rounds of draft-then-verify give the target's own beam search exactly (sequences and score bits),
whatever the draft, reading the target only after the round's start beams and the drafted sequences.
Relaxed: with one drafted candidate drawn from q and K = 1, the kept candidate is distributed as p (a
chi-square test), and the same test rejects the rule with its acceptance test broken either way.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from scipy.stats import chisquare

from vllm_padrec.topk import verify
from vllm_padrec.topk.verify import Beams, draft_tree, extend, relaxed_step, strict_round

V, L = 7, 5  # tokens per step, steps per item


def table(seed: int, noise: float = 0.0, base: int = 0):
    """Deterministic next-token log-probs after each sequence: a target (noise 0) or a draft near it."""

    def logits(sequence: tuple[int, ...], salt: int) -> torch.Tensor:
        digest = hashlib.sha256(f"{salt}:{sequence}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.randn(V, generator=generator, dtype=torch.float32) * 2.0

    def logprobs(sequence: tuple[int, ...]) -> torch.Tensor:
        raw = logits(sequence, base) + (noise * logits(sequence, seed) if noise else 0.0)
        return torch.log_softmax(raw, -1)

    return logprobs


def reference_search(target, k: int) -> list[Beams]:
    beams, steps = Beams([()], torch.zeros(1)), []
    for _ in range(L):
        beams = extend(beams, target, k)
        steps.append(beams)
    return steps


def speculative_search(target, draft, k: int, n: int, gamma: int) -> tuple[list[Beams], list[int]]:
    """Rounds of draft_tree + strict_round until the item is complete; the target is read only through
    the tree's log-probs (a dict of the start beams and drafted sequences)."""
    beams, steps, accepted = Beams([()], torch.zeros(1)), [], []
    while len(steps) < L:
        drafted = draft_tree(beams, draft, n, gamma)
        tree = set(beams.sequences) | {s for d in drafted for s in d.sequences}
        round_ = strict_round(beams, drafted, {s: target(s) for s in tree}, k, L - len(steps))
        steps += round_.steps
        accepted.append(round_.accepted)
        beams = round_.steps[-1]
    return steps, accepted


@pytest.mark.parametrize("noise", [0.0, 0.3, 1.0, 5.0])
@pytest.mark.parametrize(("k", "n", "gamma"), [(1, 1, 2), (3, 3, 3), (3, 6, 2), (5, 8, 4)])
def test_strict_rounds_give_the_targets_beam_search_exactly(noise, k, n, gamma):
    target, draft = table(0), table(1, noise)
    want = reference_search(target, k)
    got, accepted = speculative_search(target, draft, k, n, gamma)
    assert len(got) == L
    for ours, theirs in zip(got, want):
        assert ours.sequences == theirs.sequences and torch.equal(ours.scores, theirs.scores)
    assert len(accepted) <= L  # every round advances at least one step
    if noise == 0.0 and n == k:  # the draft is the target: every drafted step is accepted
        expected, left = [], L
        while left > 0:  # gamma accepted steps and one more per round, or the steps left
            expected.append(gamma if left > gamma else left)
            left -= gamma + 1 if left > gamma else left
        assert accepted == expected


def test_a_draft_far_from_the_target_accepts_less_and_a_close_one_more():
    target = table(0)
    far = sum(speculative_search(target, table(1, 5.0), 3, 6, 3)[1])
    close = sum(speculative_search(target, table(1, 0.05), 3, 6, 3)[1])
    assert close > far


def test_strict_rounds_read_the_target_only_on_the_drafted_tree():
    target = table(0)
    start = Beams([()], torch.zeros(1))
    drafted = draft_tree(start, table(1, 5.0), 2, 2)
    only_start = {(): target(())}  # a rule that read past its first step's parents would raise KeyError
    first = strict_round(start, drafted, only_start, 3, L)
    assert len(first.steps) == 1 and first.accepted == 0  # 3 target beams cannot all be among 2 drafted


# -- relaxed ---------------------------------------------------------------------------------------------------
P = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.07, 0.03], dtype=torch.float64)
Q = torch.tensor([0.05, 0.10, 0.40, 0.05, 0.20, 0.20], dtype=torch.float64)
TRIALS = 20_000


def kept_frequencies(seed: int = 0) -> torch.Tensor:
    """K = 1, one candidate drawn from q per trial: how often each candidate is kept."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(P))
    for _ in range(TRIALS):
        drafted = torch.multinomial(Q, 1, generator=generator)
        counts[relaxed_step(P, Q, drafted, 1, generator).kept[0]] += 1
    return counts


def test_relaxed_sampling_with_one_drafted_candidate_keeps_candidates_distributed_as_p():
    result = chisquare(kept_frequencies().numpy(), (P * TRIALS).numpy())
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("broken", [0.0, 1.0])  # u always 0: accept every draft; u always 1: accept none
def test_the_same_check_rejects_the_rule_with_its_acceptance_broken(monkeypatch, broken):
    def fixed_uniform(shape, generator=None, dtype=None, device=None):
        return torch.full(shape, broken, dtype=dtype, device=device)

    monkeypatch.setattr(verify.torch, "rand", fixed_uniform)
    result = chisquare(kept_frequencies().numpy(), (P * TRIALS).numpy())
    assert result.pvalue < 1e-9, result


def test_relaxed_keeps_the_k_accepted_the_target_ranks_first_and_goes_on():
    generator = torch.Generator().manual_seed(0)
    step = relaxed_step(P, P, torch.tensor([4, 0, 2, 1]), 3, generator)  # q = p: every draft is accepted
    assert step.complete and step.kept.tolist() == [0, 1, 2]


def test_relaxed_fills_missing_beams_from_the_residual_and_stops():
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    for _ in range(20):  # p = 0 on both drafted candidates: neither is accepted; both kept ones come from p - q
        step = relaxed_step(p, q, torch.tensor([2, 3]), 2, generator)
        assert not step.complete and sorted(step.kept.tolist()) == [0, 1]
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    q = torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=torch.float64)
    step = relaxed_step(p, q, torch.tensor([3]), 3, generator)  # p > q on 2 candidates only: all 3 from p
    assert not step.complete and sorted(step.kept.tolist()) == [0, 1, 2]
