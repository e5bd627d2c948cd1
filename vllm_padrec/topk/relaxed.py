"""Relaxed sampling verification of G users' candidates at once: the engine's form of ``verify.relaxed_step``.

The rule is the reference's (its docstring): each drafted candidate j is accepted with probability
min(1, p_j / q_j); with at least K accepted, the K the target scores highest are kept and the round goes
on; with fewer, the missing ones are drawn without replacement from max(p - q, 0) over the candidates not
accepted (from p where fewer than the missing number have p > q), and the round stops.

Here every user's candidates are a padded row of C (p = q = 0 and not drafted on padding), the random
numbers come in as tensors, and nothing syncs with the host:

- ``uniform`` [G, C], one U[0, 1) draw per candidate, read on the drafted ones (the reference draws one
  per drafted candidate in the order given: the same numbers give the same acceptances);
- ``gumbel`` [G, C], standard Gumbel noise. The draw without replacement is the K largest of
  log(residual) + Gumbel: that is successive sampling in proportion to the residual, the distribution of
  the reference's ``torch.multinomial(..., replacement=False)`` (Plackett-Luce), from other random
  numbers.

Ties among accepted candidates of equal p are kept in candidate order. ``tests/test_topk_relaxed.py``
checks the accepted part against the reference with the same uniforms, and the drawn part by the
distribution of what is kept, against the reference and against p itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RelaxedBatch:
    kept: Tensor  # [G, K] long: candidate indices, the accepted ones by p (highest first), then the drawn ones
    complete: Tensor  # [G] bool: every kept candidate was accepted (the round goes on)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """Standard Gumbel noise, -log(-log(U)), from U in (0, 1)."""
    uniform = torch.rand(shape, generator=generator, **kwargs).clamp(min=torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(uniform))


def relaxed_step_batched(
    p: Tensor,  # [G, C] float: the target's probabilities of each user's candidates (0 on padding)
    q: Tensor,  # [G, C] float: the draft's (q > 0 on every drafted candidate)
    drafted: Tensor,  # [G, C] bool: the candidates the draft proposed
    beam_width: int,  # K, at most the candidates with p > 0 of any user
    uniform: Tensor,  # [G, C] U[0, 1)
    gumbel: Tensor,  # [G, C] standard Gumbel
) -> RelaxedBatch:
    G, C = p.shape
    K = beam_width
    if not 1 <= K <= C:
        raise ValueError(f"K = {K} kept candidates out of {C}: need 1 <= K <= C")
    ratio = torch.where(drafted, (p / q.where(drafted, torch.ones_like(q))).clamp(max=1.0), torch.zeros_like(p))
    accepted = drafted & (uniform < ratio)  # [G, C]
    count = accepted.sum(-1)  # [G]
    # the accepted candidates by p, highest first (stable: candidate order among equal p), the rest after
    ranked = torch.where(accepted, p, torch.full_like(p, -1.0)).argsort(dim=-1, descending=True, stable=True)  # [G, C]
    missing = (K - count).clamp(min=0)  # [G]
    residual = torch.where(accepted, torch.zeros_like(p), (p - q).clamp(min=0.0))  # [G, C]
    too_few = (residual > 0).sum(-1) < missing  # [G]
    residual = torch.where(too_few[:, None], torch.where(accepted, torch.zeros_like(p), p), residual)
    keys = torch.where(residual > 0, residual.log() + gumbel, torch.full_like(p, float("-inf")))  # [G, C]
    drawn = keys.argsort(dim=-1, descending=True, stable=True)  # [G, C]: the draw without replacement, in order
    position = torch.arange(K, device=p.device)[None, :]  # [1, K]
    taken = count.clamp(max=K)[:, None]  # [G, 1] accepted ones kept
    from_drawn = (position - taken).clamp(min=0)  # [G, K]
    kept = torch.where(position < taken, ranked[:, :K], drawn.gather(1, from_drawn))  # [G, K]
    return RelaxedBatch(kept, count >= K)
