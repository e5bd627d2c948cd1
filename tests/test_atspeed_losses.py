"""AtSpeed's draft objectives (vllm_padrec.training.atspeed_losses) against hand computation, and their masks."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_padrec.training.atspeed_losses import (
    ALPHA,
    atspeed_r_loss,
    atspeed_r_tvd,
    atspeed_s_loss,
    distillation_ce,
    sequence_logprobs,
)

DRAFT = [2.0, 1.0, 0.5, 3.0, -1.0, 0.0]  # token 3 is the draft's favourite, but refused below
TARGET = [1.5, 1.7, -0.5, 0.0, 0.2, -2.0]
ALLOWED = [True, True, True, False, True, False]


def probs(logits: list[float]) -> list[float]:
    """Full-vocabulary softmax, by hand."""
    z = sum(math.exp(x) for x in logits)
    return [math.exp(x) / z for x in logits]


def by_hand(k: int) -> dict[str, float]:
    q, p = probs(DRAFT), probs(TARGET)
    allowed = [i for i, a in enumerate(ALLOWED) if a]
    top = sorted(allowed, key=lambda i: -q[i])[:k]  # the draft's K best allowed tokens
    rkl = sum(q[i] * (math.log(q[i]) - math.log(p[i])) for i in top)
    p_k = sorted((p[i] for i in allowed), reverse=True)[k - 1]
    reg = -p_k * sum(q[i] * math.log(q[i]) for i in top)
    label = max(allowed, key=lambda i: p[i])
    ce = -math.log(q[label])
    return {"rkl": rkl, "reg": reg, "ce": ce, "loss": (1 - ALPHA) * ce + ALPHA * (rkl + reg)}


@pytest.mark.parametrize("k", [1, 2, 4])
def test_atspeed_s_equals_the_hand_computation_on_the_allowed_tokens(k):
    parts = atspeed_s_loss(torch.tensor([DRAFT]), torch.tensor([TARGET]), torch.tensor([ALLOWED]), k)
    want = by_hand(k)
    for name in ("rkl", "reg", "ce", "loss"):
        assert getattr(parts, name).item() == pytest.approx(want[name], rel=1e-5, abs=1e-6), name


def test_a_refused_token_is_never_a_candidate_however_the_draft_likes_it():
    """Token 3 has the draft's largest logit and is refused: T is the best allowed tokens (0, 1), not (3, 0)."""
    allowed = torch.tensor([ALLOWED])
    parts = atspeed_s_loss(torch.tensor([DRAFT]), torch.tensor([TARGET]), allowed, 2)
    unmasked = atspeed_s_loss(torch.tensor([DRAFT]), torch.tensor([TARGET]), torch.ones_like(allowed), 2)
    assert parts.rkl.item() == pytest.approx(by_hand(2)["rkl"], rel=1e-5)
    assert parts.rkl.item() != pytest.approx(unmasked.rkl.item(), rel=1e-3)


def test_the_reverse_kl_vanishes_when_the_draft_is_the_target():
    logits = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    allowed = torch.rand(5, 12, generator=torch.Generator().manual_seed(1)) < 0.6
    allowed[:, 0] = True
    parts = atspeed_s_loss(logits, logits.clone(), allowed, 3)
    assert torch.equal(parts.rkl, torch.zeros(5))
    assert bool((parts.reg >= 0).all())  # -p_K * sum q log q over probabilities <= 1


def test_gradients_reach_the_draft_only_and_stay_finite_with_fewer_allowed_tokens_than_k():
    draft = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    target = torch.randn(3, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    allowed = torch.zeros(3, 8, dtype=torch.bool)
    allowed[0, :5] = True
    allowed[1, 2] = True  # one allowed token, K = 4
    allowed[2, [1, 6]] = True
    parts = atspeed_s_loss(draft, target, allowed, 4)
    parts.loss.sum().backward()
    assert torch.isfinite(parts.loss).all() and torch.isfinite(draft.grad).all()
    assert target.grad is None  # the target is the teacher
    assert bool((draft.grad[~allowed] != 0).any())  # refused tokens still share the softmax's normaliser
    with pytest.raises(ValueError, match="at least one allowed"):
        atspeed_s_loss(draft, target, torch.zeros(3, 8, dtype=torch.bool), 2)


def test_the_cross_entropy_part_is_the_same_one_function():
    draft, target = torch.tensor([DRAFT]), torch.tensor([TARGET])
    allowed = torch.tensor([ALLOWED])
    assert torch.equal(distillation_ce(draft, target, allowed), atspeed_s_loss(draft, target, allowed, 2).ce)


def test_sequence_logprobs_sum_each_tokens_masked_log_prob():
    logits = torch.tensor([[DRAFT, TARGET]])  # [1, 2, V]: one sequence of two tokens
    allowed = torch.tensor([[ALLOWED, ALLOWED]])
    got = sequence_logprobs(logits, torch.tensor([[1, 4]]), allowed)
    assert got.item() == pytest.approx(math.log(probs(DRAFT)[1]) + math.log(probs(TARGET)[4]), rel=1e-6)
    assert sequence_logprobs(logits, torch.tensor([[3, 4]]), allowed).item() == float("-inf")  # refused token


def test_tvd_of_the_targets_beams_by_hand_and_without_dead_beams():
    q = torch.tensor([[0.5, 0.2, 0.1]]).log()
    p = torch.tensor([[0.3, 0.3, 0.05]]).log()
    assert atspeed_r_tvd(q, p).item() == pytest.approx(0.5 * (0.2 + 0.1 + 0.05), rel=1e-6)
    live = torch.tensor([[True, True, False]])
    assert atspeed_r_tvd(q, p, live).item() == pytest.approx(0.5 * (0.2 + 0.1), rel=1e-6)
    assert atspeed_r_tvd(p, p).item() == 0.0
    ce = torch.tensor([1.0, 3.0])
    tvd = torch.tensor([0.2, 0.4])
    assert atspeed_r_loss(ce, tvd).item() == pytest.approx((1 - ALPHA) * 2.0 + ALPHA * 0.3, rel=1e-6)
