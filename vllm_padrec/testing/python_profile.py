"""Where the Python time of one call goes (benchmarks: the host side of an engine step, which the torch
profiler sees only as the tensor operations it launches)."""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable, Sequence
from typing import Any

# the code whose functions ``busiest(..., within=OUR_CODE)`` keeps: vLLM's and this project's
OUR_CODE = ("vllm/", "vllm_padrec/", "benchmarks/")


def python_profile(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[dict]]:
    """``fn(*args)`` under Python's profiler: its result, and one row per function that ran, with its calls,
    its time of its own (``self_ms``) and its time including callees (``total_ms``)."""
    profiler = cProfile.Profile()
    result = profiler.runcall(fn, *args)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, self s, total s, callers)
    rows = [
        {
            "function": f"{name} ({file.rsplit('site-packages/', 1)[-1]}:{line})",
            "file": file,
            "calls": calls,
            "self_ms": round(1000 * own, 3),
            "total_ms": round(1000 * total, 3),
        }
        for (file, line, name), (_, calls, own, total, _) in stats.items()
    ]
    return result, rows


def busiest(rows: list[dict], by: str = "self_ms", limit: int = 30, within: Sequence[str] = ()) -> list[dict]:
    """The ``limit`` rows with the most ``by`` time; with ``within``, only functions whose file path holds one
    of those parts (the time including callees of vLLM's and the project's functions places the rest)."""
    kept = [r for r in rows if not within or any(part in r["file"] for part in within)]
    return sorted(kept, key=lambda row: -row[by])[:limit]


def python_hotspots(fn: Callable[..., Any], *args: Any, limit: int = 30) -> tuple[Any, list[dict]]:
    """``fn(*args)`` under Python's profiler: its result, and the ``limit`` functions with the most time of
    their own (``self_ms``), each with its calls and its time including callees (``total_ms``)."""
    result, rows = python_profile(fn, *args)
    return result, busiest(rows, "self_ms", limit)


def hotspot_table(rows: list[dict]) -> str:
    """Profile rows as a Markdown table."""
    lines = ["| function | calls | self ms | total ms |", "|---|---:|---:|---:|"]
    lines += [f"| `{r['function']}` | {r['calls']} | {r['self_ms']} | {r['total_ms']} |" for r in rows]
    return "\n".join(lines) + "\n"
