"""vllm_padrec.testing.python_profile: the busiest Python functions of one call, for the benchmarks' profiles."""

from __future__ import annotations

import time

from vllm_padrec.testing.python_profile import busiest, hotspot_table, python_hotspots, python_profile


def _slow_leaf(seconds: float) -> None:
    time.sleep(seconds)  # sleeping is time of the C function, counted in _slow_leaf's total


def _busy_leaf(n: int) -> int:
    return sum(i * i for i in range(n))


def _caller() -> str:
    for _ in range(3):
        _busy_leaf(20_000)
    _slow_leaf(0.02)
    return "done"


def test_hotspots_return_the_result_and_rank_functions_by_their_own_time():
    result, rows = python_hotspots(_caller, limit=50)
    assert result == "done"
    by_name = {row["function"].split(" (")[0]: row for row in rows}
    assert by_name["_busy_leaf"]["calls"] == 3 and by_name["_caller"]["calls"] == 1
    assert by_name["_caller"]["total_ms"] >= 20.0 > by_name["_caller"]["self_ms"]  # the sleep is a callee's
    assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)
    assert len(python_hotspots(_caller, limit=2)[1]) == 2


def test_hotspot_table_has_one_row_per_function():
    rows = [{"function": "f (a.py:1)", "calls": 2, "self_ms": 1.5, "total_ms": 3.0}]
    assert hotspot_table(rows).splitlines()[-1] == "| `f (a.py:1)` | 2 | 1.5 | 3.0 |"


def test_busiest_by_total_time_keeps_only_the_named_code():
    _, rows = python_profile(_caller)
    ours = busiest(rows, "total_ms", limit=50, within=("test_python_profile",))
    assert [r["function"].split(" (")[0] for r in ours][0] == "_caller"  # it holds every other one
    assert {r["function"].split(" (")[0] for r in ours} == {"_caller", "_busy_leaf", "_slow_leaf", "<genexpr>"}
    assert [r["total_ms"] for r in ours] == sorted((r["total_ms"] for r in ours), reverse=True)
