"""The engine's form of relaxed sampling verification (vllm_padrec.topk.relaxed) against the reference
(vllm_padrec.topk.verify.relaxed_step) and against the distribution the rule promises.

The accepted part is exact: the same uniforms accept the same candidates and keep them in the same order.
The drawn part uses other random numbers than the reference (Gumbel keys instead of torch.multinomial), so
it is checked by distribution: with one candidate drafted from q and K = 1 the kept one is distributed as p
(and the check rejects the rule with its acceptance broken), and with K = 2 the kept pairs are distributed
as the reference's.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from test_topk_verify import TRIALS, P, Q

from vllm_padrec.topk import verify
from vllm_padrec.topk.relaxed import gumbel_noise, relaxed_step_batched
from vllm_padrec.topk.verify import relaxed_step

C = len(P)


def batched_trials(k: int, uniform: torch.Tensor | None = None, seed: int = 0):
    """TRIALS users at once, each with one candidate drafted from q: the kept candidates [TRIALS, k]."""
    generator = torch.Generator().manual_seed(seed)
    drafted_index = torch.multinomial(Q.expand(TRIALS, C), 1, generator=generator)  # [TRIALS, 1]
    drafted = torch.zeros(TRIALS, C, dtype=torch.bool).scatter_(1, drafted_index, True)
    if uniform is None:
        uniform = torch.rand(TRIALS, C, generator=generator, dtype=torch.float64)
    gumbel = gumbel_noise((TRIALS, C), generator=generator, dtype=torch.float64)
    p, q = P.expand(TRIALS, C), Q.expand(TRIALS, C)
    return relaxed_step_batched(p, q, drafted, k, uniform, gumbel).kept


def test_one_drafted_candidate_and_k_1_keep_candidates_distributed_as_p():
    counts = torch.bincount(batched_trials(1)[:, 0], minlength=C)
    result = chisquare(counts.numpy(), (P * TRIALS).numpy())
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("broken", [0.0, 1.0])  # every draft accepted; none accepted
def test_the_same_check_rejects_the_rule_with_its_acceptance_broken(broken):
    counts = torch.bincount(batched_trials(1, torch.full((TRIALS, C), broken, dtype=torch.float64))[:, 0], minlength=C)
    result = chisquare(counts.numpy(), (P * TRIALS).numpy())
    assert result.pvalue < 1e-9, result


def kept_pairs(kept: torch.Tensor) -> Counter:
    return Counter(tuple(sorted(row)) for row in kept.tolist())


def reference_pairs(seed: int = 1) -> Counter:
    generator = torch.Generator().manual_seed(seed)
    pairs = Counter()
    for _ in range(TRIALS):
        drafted = torch.multinomial(Q, 1, generator=generator)
        pairs[tuple(sorted(relaxed_step(P, Q, drafted, 2, generator).kept.tolist()))] += 1
    return pairs


def contingency_pvalue(a: Counter, b: Counter) -> float:
    keys = sorted(set(a) | set(b))
    return chi2_contingency([[a[key] for key in keys], [b[key] for key in keys]]).pvalue


def test_with_k_2_the_kept_pairs_are_distributed_as_the_references():
    reference = reference_pairs()
    assert contingency_pvalue(kept_pairs(batched_trials(2)), reference) > 1e-3
    # the same test tells a rule that draws the missing ones from p instead of the residual
    generator = torch.Generator().manual_seed(2)
    drafted_index = torch.multinomial(Q.expand(TRIALS, C), 1, generator=generator)
    drafted = torch.zeros(TRIALS, C, dtype=torch.bool).scatter_(1, drafted_index, True)
    uniform = torch.rand(TRIALS, C, generator=generator, dtype=torch.float64)
    gumbel = gumbel_noise((TRIALS, C), generator=generator, dtype=torch.float64)
    p = P.expand(TRIALS, C)
    from_p = relaxed_step_batched(p, torch.zeros_like(p) + 1e-300, drafted, 2, torch.ones_like(uniform), gumbel)
    assert contingency_pvalue(kept_pairs(from_p.kept), reference) < 1e-9


def test_the_same_uniforms_accept_the_same_candidates_and_keep_them_in_the_same_order(monkeypatch):
    """Per user: the reference with its uniforms replaced by the batched call's; the kept accepted candidates
    and whether the round goes on must be the same (the drawn ones come from other random numbers)."""
    generator = torch.Generator().manual_seed(3)
    G, k = 200, 3
    p = torch.softmax(torch.randn(G, C, generator=generator, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(G, C, generator=generator, dtype=torch.float64) * 2, -1)
    drafted = torch.rand(G, C, generator=generator) < 0.6
    drafted[:, 0] = True  # at least one drafted candidate each
    uniform = torch.rand(G, C, generator=generator, dtype=torch.float64)
    got = relaxed_step_batched(p, q, drafted, k, uniform, gumbel_noise((G, C), generator=generator))
    completes = 0
    for g in range(G):
        index = torch.nonzero(drafted[g]).flatten()  # ascending: the batched call's order among equal p
        monkeypatch.setattr(verify.torch, "rand", lambda shape, drawn=uniform[g, index], **kwargs: drawn)
        want = relaxed_step(p[g], q[g], index, k, torch.Generator().manual_seed(g))
        accepted = int((uniform[g, index] < (p[g, index] / q[g, index]).clamp(max=1.0)).sum())
        assert bool(got.complete[g]) == want.complete
        assert got.kept[g, : min(accepted, k)].tolist() == want.kept[: min(accepted, k)].tolist()
        assert len(set(got.kept[g].tolist())) == k  # distinct candidates
        completes += want.complete
    assert 0 < completes < G  # both kinds of round among the users


def test_missing_candidates_come_from_the_residual_or_from_p_when_it_has_too_few():
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0]], dtype=torch.float64).repeat(20, 1)
    q = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 0.0, 0.5]], dtype=torch.float64).repeat(20, 1)
    drafted = torch.tensor([[False, False, True, True], [False, False, False, True]]).repeat(20, 1)
    uniform = torch.rand(40, 4, generator=generator, dtype=torch.float64)
    got = relaxed_step_batched(p[:, :4], q, drafted, 2, uniform, gumbel_noise((40, 4), generator=generator))
    # p = 0 on both drafted candidates of the first user: neither accepted, both kept ones from p - q
    assert all(sorted(row) == [0, 1] for row in got.kept[0::2].tolist()) and not got.complete.any()
    three = relaxed_step_batched(
        p[1::2], q[1::2], drafted[1::2], 3, uniform[1::2], gumbel_noise((20, 4), generator=generator)
    )
    # the second user: p > q on 2 candidates only, 3 missing: all 3 from p
    assert all(sorted(row) == [0, 1, 2] for row in three.kept.tolist()) and not three.complete.any()
