"""matplotlib for the benchmarks' PNGs, headless; None where it is not installed (JSON and Markdown still get written)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
