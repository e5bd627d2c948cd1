"""Comparing greedy answers of two runs: where they first differ, and how close the top two tokens were there.

A greedy answer can only flip between two runs where the log-probability gap between its two likeliest
tokens is within the numerical noise of the runs (batch shapes, kernels); a flip at a large gap is a bug.
"""

from __future__ import annotations


def top_margins(choice: dict) -> list[float | None]:
    """Per generated token of an OpenAI completion choice asked with ``logprobs >= 2``: the gap between its
    two likeliest tokens' log-probabilities (None: unknown)."""
    rows = ((choice.get("logprobs") or {}).get("top_logprobs")) or []
    margins = []
    for row in rows:
        values = sorted((v for v in (row or {}).values() if v is not None and v > float("-inf")), reverse=True)
        margins.append(values[0] - values[1] if len(values) >= 2 else None)
    return margins


def first_difference(a: list, b: list) -> int | None:
    """Index of the first position where two token lists differ (None: equal)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def margin_at(margins: list[float | None] | None, index: int | None) -> float | None:
    """The top-2 gap at token ``index`` of an answer's ``top_margins`` (None: unknown or past its end)."""
    return margins[index] if margins and index is not None and index < len(margins) else None
