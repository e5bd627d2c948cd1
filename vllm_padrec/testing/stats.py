"""Percentiles of measured values (latencies), computed by numpy."""

from __future__ import annotations

import numpy as np


def percentile(values: list[float], q: float, method: str = "linear") -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by ``numpy.percentile`` (``method``: "linear"
    interpolates between the two nearest values, "nearest" takes the value of the nearest rank); None
    when there is no value."""
    return float(np.percentile(values, q, method=method)) if len(values) else None
