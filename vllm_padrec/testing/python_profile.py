"""Where the Python time of one call goes (benchmarks: the host side of an engine step, which the torch
profiler sees only as the tensor operations it launches)."""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from typing import Any


def python_hotspots(fn: Callable[..., Any], *args: Any, limit: int = 30) -> tuple[Any, list[dict]]:
    """``fn(*args)`` under Python's profiler: its result, and the ``limit`` functions with the most time of
    their own (``self_ms``), each with its calls and its time including callees (``total_ms``)."""
    profiler = cProfile.Profile()
    result = profiler.runcall(fn, *args)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, self s, total s, callers)
    rows = [
        {
            "function": f"{name} ({file.rsplit('site-packages/', 1)[-1]}:{line})",
            "calls": calls,
            "self_ms": round(1000 * own, 3),
            "total_ms": round(1000 * total, 3),
        }
        for (file, line, name), (_, calls, own, total, _) in stats.items()
    ]
    rows.sort(key=lambda row: -row["self_ms"])
    return result, rows[:limit]


def hotspot_table(rows: list[dict]) -> str:
    """``python_hotspots``' rows as a Markdown table."""
    lines = ["| function | calls | self ms | total ms |", "|---|---:|---:|---:|"]
    lines += [f"| `{r['function']}` | {r['calls']} | {r['self_ms']} | {r['total_ms']} |" for r in rows]
    return "\n".join(lines) + "\n"
