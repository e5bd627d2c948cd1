"""Goal verdicts, shared by the benchmarks that judge an issue's goals from their records (``topk_goals``,
``atspeed_goals``, ``spec_decode_goals``).

A verdict is ``{"goal", "met", "measured"}``: ``met`` True or False, or None when a record the goal reads was not
measured; ``measured`` says what was compared and, for a miss, by how much. A goal compares records of one run
(side by side): in a results file that also keeps records of earlier runs (a benchmark's ``--merge``, which marks
each with ``measured_on``), ``in_one_run`` reads this run's where they measure the goal, else the newest earlier
run's.
"""

from __future__ import annotations

from collections.abc import Callable


def verdict(goal: str, met: bool | None, measured: str) -> dict:
    return {"goal": goal, "met": met, "measured": measured}


def runs(records: list[dict]) -> list[tuple[str | None, list[dict]]]:
    """The records grouped by the run that measured them: this run's (date None: no ``measured_on``, bench_topk's
    mark of a record kept from an earlier run by ``--merge``) first, then the earlier runs, the newest first."""
    grouped: dict[str | None, list[dict]] = {}
    for r in records:
        grouped.setdefault(r.get("measured_on"), []).append(r)
    earlier = sorted((date for date in grouped if date is not None), reverse=True)
    return [(date, grouped[date]) for date in ([None] if None in grouped else []) + earlier]


def in_one_run(goal: Callable[[list[dict]], dict], records: list[dict]) -> dict:
    """``goal``'s verdict on the records of one run, never a mix of runs: this run's where they measure it, else
    the newest earlier run's that does (its date named after what was measured)."""
    for date, run in runs(records):
        result = goal(run)
        if result["met"] is not None:
            return result if date is None else {**result, "measured": f"{result['measured']} (run of {date[:10]})"}
    return goal([])


def goals_table(goals: list[dict]) -> list[str]:
    """The goals as Markdown lines: a table of goal, verdict and what was measured."""
    mark = {True: "met", False: "**missed**", None: "not measured"}
    rows = [f"| {g['goal']} | {mark[g['met']]} | {g['measured']} |" for g in goals]
    return ["| goal | verdict | measured |", "|---|---|---|", *rows, ""]


def goals_markdown(goals: list[dict], issue: int = 12) -> list[str]:
    """The goals under a heading naming their issue (``goals_table``)."""
    return [f"## Goals (issue {issue})", "", *goals_table(goals)]
