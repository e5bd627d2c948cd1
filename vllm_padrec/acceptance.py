"""vLLM's mean acceptance length, the one definition every report of this project uses.

vLLM counts, per speculative round (a "draft" in its Prometheus counters
``vllm:spec_decode_num_drafts_total``), the draft tokens the target accepted
(``vllm:spec_decode_num_accepted_tokens_total``). Each round also emits one token of the target's own
(the correction or bonus token), so the tokens a round writes are, on average,
``1 + accepted / rounds``.
"""

from __future__ import annotations


def mean_acceptance_length(accepted: int | float, rounds: int | float) -> float | None:
    """``1 + accepted / rounds``; None when no round ran (nothing was measured)."""
    if rounds < 0 or accepted < 0:
        raise ValueError(f"counts cannot be negative: accepted={accepted}, rounds={rounds}")
    return 1.0 + accepted / rounds if rounds else None
