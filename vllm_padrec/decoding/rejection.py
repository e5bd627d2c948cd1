"""The verifier of chain speculation: greedy matching and speculative rejection sampling.

Vocabulary (shared with ``decoding.speculative``):

- draft round: the target has read the tokens up to position p and chosen x_{p+1} (the *pending*
  token, emitted but not yet in the target's KV cache); the draft proposes K <= γ tokens
  d_0 .. d_{K-1} (candidates for x_{p+2} .. x_{p+K+1}); the target reads [x_{p+1}, d_0, .., d_{K-1}]
  in one forward pass and returns K + 1 next-token distributions: row k judges d_k, row K follows
  the last draft.
- draft step k: the index of a draft token in its round (0..γ-1).
- accepted tokens: the longest prefix d_0 .. d_{n-1} that verification keeps (0 <= n <= K).
- recovered token: when d_n is rejected (n < K), the token the target puts in its place, from its
  own row n (greedy: its argmax; sampling: the residual distribution below).
- bonus token: when every draft is accepted (n = K), one more token from the target's row K.
  A round therefore emits n + 1 tokens (its *accepted length*) for one target forward pass.
- item / slot: a recommendation list is items of L code tokens joined by ``<sep>``; the slot of a
  token is its within-item position (``TokenLayout.slot_table``). Every distribution here is already
  constrained: p and q are the masked, renormalised target and draft distributions of the same
  ``ListConstraint`` state, so they share their support up to the draft's own zeros.

Greedy verification (``greedy_verify``): accept while d_k == argmax p_k; the output equals the
target's own greedy decoding token for token.

Sampling verification (``rejection_verify``): speculative rejection sampling (Leviathan et al.,
"Fast Inference from Transformers via Speculative Decoding", ICML 2023, arXiv 2211.17192; Chen et
al., "Accelerating Large Language Model Decoding with Speculative Sampling", arXiv 2302.01318).
With d_k ~ q_k: accept d_k with probability min(1, p_k(d_k) / q_k(d_k)); at the first rejection
sample the recovered token from normalise(max(p_k - q_k, 0)); after K acceptances sample the bonus
token from p_K. Every emitted token is then distributed exactly as the target's own sample.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accepted_prefix(accept: Tensor, num_drafts: Tensor) -> Tensor:  # [B] long
    """Leading accepted drafts per row: ``accept`` [B, K] bool, ``num_drafts`` [B] long (<= K).

    Drafts at k >= num_drafts[b] are padding and never count:
    accept [[1, 1, 0, 1], [1, 1, 1, 1]], num_drafts [4, 2] -> [2, 2].
    """
    K = accept.shape[1]
    live = torch.arange(K, device=accept.device)[None, :] < num_drafts[:, None]  # [B, K]
    return (accept & live).long().cumprod(1).sum(1)  # [B]


def greedy_verify(
    draft_tokens: Tensor,  # [B, K] long, d_0 .. d_{K-1}
    target_logits: Tensor,  # [B, K + 1, V] float, masked by the constraint (refused tokens -inf)
    num_drafts: Tensor,  # [B] long, real drafts per row (the rest is padding)
) -> tuple[Tensor, Tensor]:  # num_accepted [B] long, next_token [B] long (recovered or bonus)
    """Greedy verification (module docstring)."""
    choice = target_logits.argmax(-1)  # [B, K + 1] the target's greedy token at each row
    K = draft_tokens.shape[1]
    num_accepted = accepted_prefix(draft_tokens == choice[:, :K], num_drafts)  # [B]
    next_token = choice.gather(1, num_accepted[:, None]).squeeze(1)  # [B]
    return num_accepted, next_token


def acceptance_probability(p_draft: Tensor, q_draft: Tensor) -> Tensor:
    """min(1, p(d) / q(d)) for the drafted tokens d: [B, K], [B, K] -> [B, K] (q(d) > 0: d ~ q)."""
    return (p_draft / q_draft.clamp_min(torch.finfo(q_draft.dtype).tiny)).clamp(max=1.0)


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """normalise(max(p - q, 0)): [B, V], [B, V] -> [B, V]; rows where it vanishes (p == q) fall back to p.

    A rejection happens with probability sum(max(q - p, 0)) = sum(max(p - q, 0)), so a vanishing
    residual only occurs on a rejection of probability zero, i.e. through rounding.
    """
    residual = (p - q).clamp_min(0.0)  # [B, V]
    total = residual.sum(-1, keepdim=True)  # [B, 1]
    return torch.where(total > 0, residual / total.clamp_min(torch.finfo(p.dtype).tiny), p)


def sample(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:  # [B, V] -> [B] long
    """One token per row from (unnormalised, non-negative) ``probs``."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def rejection_verify(
    draft_tokens: Tensor,  # [B, K] long, d_k ~ q_k
    draft_probs: Tensor,  # [B, K, V] float, q_0 .. q_{K-1} (constrained, at temperature T)
    target_probs: Tensor,  # [B, K + 1, V] float, p_0 .. p_K (constrained, at temperature T)
    num_drafts: Tensor,  # [B] long, real drafts per row (the rest is padding)
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:  # num_accepted [B] long, next_token [B] long (recovered or bonus)
    """Speculative rejection sampling (module docstring); draws K uniforms, then one token per row."""
    B, K = draft_tokens.shape
    p_draft = target_probs[:, :K].gather(2, draft_tokens[..., None]).squeeze(2)  # [B, K] p_k(d_k)
    q_draft = draft_probs.gather(2, draft_tokens[..., None]).squeeze(2)  # [B, K] q_k(d_k)
    uniform = torch.rand(B, K, generator=generator, device=draft_tokens.device, dtype=p_draft.dtype)  # [B, K]
    accept = uniform < acceptance_probability(p_draft, q_draft)  # [B, K]
    num_accepted = accepted_prefix(accept, num_drafts)  # [B]
    rows = torch.arange(B, device=draft_tokens.device)
    p_next = target_probs[rows, num_accepted]  # [B, V] p_n
    # q_n where d_n was rejected; zero where all drafts were accepted, so that the bonus row is p_K:
    # q padded with a zero row at index K: [q_0, .., q_{K-1}, 0][n]
    rejected = num_accepted < num_drafts  # [B]
    q_next = draft_probs[rows, num_accepted.clamp(max=max(K - 1, 0))] if K else torch.zeros_like(p_next)  # [B, V]
    q_next = q_next * rejected[:, None]
    next_token = sample(residual_distribution(p_next, q_next), generator)  # [B]
    return num_accepted, next_token
