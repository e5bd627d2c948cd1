"""AtSpeed's draft objectives (``../shared/METHODS.md``, section 2; issue 13), as functions of logits.

AtSpeed trains the draft to propose the target's top-K beams. Two objectives, one per verification rule,
each mixed with the distillation cross-entropy: ``(1 - alpha) * CE + alpha * extra``, alpha = 0.7.

Probabilities are those of the beam step rule (``topk.select.beam_logprobs``): p and q are the target's
and the draft's full-vocabulary softmax, read only at the tokens the catalog allows at that position
(the allowed tokens' probabilities are not renormalised). Beam search ranks sequences by these values,
for the draft's own beams (``topk.verify.draft_tree``) and for the target's, so they are what the
objectives align. "Both mask tokens that cannot occur at a slot": a refused token is never among the
candidates below and never in a sum.

- **AtSpeed-S** (for strict verification), per position: T = the K allowed tokens the draft ranks
  highest;

      rKL = sum_{x in T} q(x) * (log q(x) - log p(x))          (reverse KL restricted to T)
      reg = -p_K * sum_{x in T} q(x) * log q(x)                 (sharpens q on T)

  with p_K the target's K-th largest allowed probability, a weight (no gradient flows into it). Strict
  verification accepts a step only when the target's top-K are all drafted, so the draft's top-K are
  what must match the target.
- **AtSpeed-R** (for relaxed verification), per user: the total variation distance between the two
  models' probabilities of the target's top-K beam sequences,

      TVD = 0.5 * sum_j |q(y_j) - p(y_j)|,   q(y_j) = exp(sum of the draft's token log-probs along y_j)

  which bounds how often relaxed sampling rejects a drafted beam.

The cross-entropy is the draft's log-probability of the target's label (its most likely allowed token),
as the distillation loss uses (``training.losses``). Only the functions of logits live here; the
sequences are the target's top-K beams (``training.topk_data``), and ``training.losses`` applies
AtSpeed-S at every unrolled draft step's rows (``DraftTrainConfig.objective = "atspeed_s"``), or AtSpeed-R's
CE there and its TVD over each user's K beams, which the trainer's batches keep together ("atspeed_r"). A
beam's probability is that of its codes 1 .. L-1 along the draft round that starts at the prompt's last
token: code 0 is the target's own token, drafted by neither model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA = 0.7  # AtSpeed's weight of its term against the cross-entropy


@dataclass(frozen=True)
class AtSpeedSParts:
    """The AtSpeed-S loss of N positions and its parts, each [N] (per position, before any mean)."""

    loss: Tensor  # (1 - alpha) * ce + alpha * (rkl + reg)
    ce: Tensor
    rkl: Tensor
    reg: Tensor


def _masked_log_softmax(logits: Tensor, allowed: Tensor) -> Tensor:  # [N, V'] -> [N, V] float32, -inf: refused
    """Full-vocabulary log-softmax (over the model's whole, maybe padded, vocabulary), then the mask."""
    V = allowed.shape[1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)[:, :V]
    return logprobs.masked_fill(~allowed, float("-inf"))


def atspeed_s_loss(
    draft_logits: Tensor,  # [N, V'] the draft's logits at N positions (differentiable)
    target_logits: Tensor,  # [N, V'] the target's at the same positions
    allowed: Tensor,  # [N, V] bool: the tokens the catalog allows there (at least one per row)
    k: int,  # K: the beams the target keeps
    alpha: float = ALPHA,
) -> AtSpeedSParts:
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if not bool(allowed.any(-1).all()):
        raise ValueError("every position needs at least one allowed token")
    log_q = _masked_log_softmax(draft_logits, allowed)  # [N, V]
    with torch.no_grad():
        log_p = _masked_log_softmax(target_logits, allowed)  # [N, V]
    width = min(k, allowed.shape[1])
    top_q, top = log_q.detach().topk(width, dim=-1)  # [N, K'] the draft's K best allowed tokens
    in_t = torch.isfinite(top_q)  # [N, K']: a row with fewer than K allowed tokens has refused ones here
    # refused entries are set to 0 before any arithmetic, so that no inf or nan reaches the gradient
    lq = torch.where(in_t, log_q.gather(1, top), 0.0)  # [N, K'] with gradient
    lp = torch.where(in_t, log_p.gather(1, top), 0.0)  # [N, K']
    q = torch.where(in_t, lq.exp(), 0.0)
    rkl = (q * (lq - lp)).sum(-1)  # [N]
    p_k = log_p.topk(width, dim=-1).values[:, -1].exp()  # [N] the target's K-th allowed probability (0 if none)
    reg = -p_k * (q * lq).sum(-1)  # [N]
    ce = _cross_entropy(log_q, log_p)  # [N]
    return AtSpeedSParts((1 - alpha) * ce + alpha * (rkl + reg), ce, rkl, reg)


def _cross_entropy(log_q: Tensor, log_p: Tensor) -> Tensor:  # [N, V] masked log-probs each -> [N]
    """The draft's negative log-prob of the target's most likely allowed token (always allowed: finite)."""
    label = log_p.argmax(-1)  # [N]
    return -log_q.gather(1, label[:, None])[:, 0]


def sequence_logprobs(
    token_logits: Tensor,  # [B, S, V'] a model's logits before each token of B sequences of S tokens
    tokens: Tensor,  # [B, S] long: the sequences' tokens
    allowed: Tensor,  # [B, S, V] bool: the catalog's allowed tokens at each of those positions
) -> Tensor:  # [B] float32: sum of the tokens' (masked, full-vocabulary) log-probs; -inf if one is refused
    B, S, _ = token_logits.shape
    rows = _masked_log_softmax(token_logits.reshape(B * S, -1), allowed.reshape(B * S, -1))  # [B*S, V]
    return rows.gather(1, tokens.reshape(B * S, 1)).reshape(B, S).sum(-1)


def atspeed_r_tvd(
    draft_sequence_logprobs: Tensor,  # [G, K] the draft's log-prob of each of the target's K beams (differentiable)
    target_sequence_logprobs: Tensor,  # [G, K] the target's
    live: Tensor | None = None,  # [G, K] bool: beams that exist (a catalog smaller than K leaves dead ones)
) -> Tensor:  # [G] 0.5 * sum_j |q(y_j) - p(y_j)|
    q = draft_sequence_logprobs.float().exp()
    p = target_sequence_logprobs.detach().float().exp()
    gap = (q - p).abs()
    if live is not None:
        gap = torch.where(live, gap, torch.zeros_like(gap))
    return 0.5 * gap.sum(-1)


def atspeed_r_loss(ce: Tensor, tvd: Tensor, alpha: float = ALPHA) -> Tensor:
    """(1 - alpha) * mean CE + alpha * mean TVD: the two terms' batch means, mixed."""
    return (1 - alpha) * ce.mean() + alpha * tvd.mean()


def distillation_ce(draft_logits: Tensor, target_logits: Tensor, allowed: Tensor) -> Tensor:  # [N]
    """The cross-entropy part alone (AtSpeed-R's, and AtSpeed-S's ``ce``)."""
    with torch.no_grad():
        log_p = _masked_log_softmax(target_logits, allowed)
    return _cross_entropy(_masked_log_softmax(draft_logits, allowed), log_p)


@torch.no_grad()
def topk_recall(
    draft_logits: Tensor,  # [N, V'] the draft's logits at N positions
    target_logits: Tensor,  # [N, V'] the target's
    allowed: Tensor,  # [N, V] bool: the tokens the catalog allows there (at least one per row)
    k: int,  # K
) -> Tensor:  # [N] float32 in [0, 1]
    """Of the target's K most likely allowed tokens (all of them where fewer than K are allowed), the share
    that are among the draft's K most likely allowed tokens: strict verification accepts a step only when
    the target's top-K are all drafted, so this is the per-position quantity AtSpeed-S raises."""
    log_q = _masked_log_softmax(draft_logits, allowed)  # [N, V]
    log_p = _masked_log_softmax(target_logits, allowed)  # [N, V]
    width = min(k, allowed.shape[1])
    counted = allowed.sum(-1).clamp(max=width)  # [N] ranks that hold allowed tokens
    ranks = torch.arange(width, device=allowed.device)[None, :] < counted[:, None]  # [N, K']
    top_q, top_p = log_q.topk(width, dim=-1).indices, log_p.topk(width, dim=-1).indices  # [N, K'] each
    # a rank past a row's allowed tokens holds a refused token: never one of the target's counted tokens
    drafted = (top_p[:, :, None] == top_q[:, None, :]).any(-1)  # [N, K']
    return (drafted & ranks).sum(-1).float() / counted.float()
