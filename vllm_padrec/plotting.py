"""matplotlib on the headless Agg backend, for the PNGs the trainers (loss curves) and the benchmarks write."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), or None where matplotlib is not
    installed (the JSON logs are written either way)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
