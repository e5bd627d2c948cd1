"""testing/atspeed_goals.py: issue 13's goals read from bench_topk records (strict and relaxed against the
undrafted engine and vLLM's beam search): met, missed by how much, or not measured."""

from __future__ import annotations

from test_topk_goals import record, run_records

from benchmarks import bench_topk
from vllm_padrec.testing.atspeed_goals import atspeed_goals, drafted_label

DRAFT = {"draft_beams": 40, "gamma": 3, "objective": "atspeed_s"}


def drafted_records(strict_ms=12.0, relaxed_ms=None, equal=500) -> list[dict]:
    """Issue 12's run shape (engine 22.75 ms, vLLM's beam search 66.43 ms at K = 20) with a strict mode."""
    records = run_records()
    records[0] |= {"engine_steps_per_call": 5.0, "target_forwards_per_request": 4.0}
    steps = {"engine_steps_per_call": 3.0, "target_forwards_per_request": 3.0}
    records.append(record("strict", "bfloat16", 20, 1, strict_ms, **steps, **DRAFT))
    records.append(
        record("strict", "float32", 20, 64, 300.0, 200.0, equal_to_reference=equal, users_compared=500, **DRAFT)
    )
    if relaxed_ms is not None:
        relaxed = {**DRAFT, "objective": "atspeed_r", "recall_at_k": 0.039, "ndcg_at_k": 0.0188}
        records.append(record("relaxed", "bfloat16", 20, 1, relaxed_ms, **relaxed))
        records[0] |= {"recall_at_k": 0.0405, "ndcg_at_k": 0.0197}
    return records


def test_strict_goals_are_met_or_missed_with_by_how_much():
    speedup, below, equality, atspeed_s = atspeed_goals(drafted_records())
    assert speedup["met"] is True  # 22.75 / 12 = 1.90x
    assert speedup["measured"] == (
        "1.90x (strict (N = 40, γ = 3, atspeed_s): 12 against 22.75 ms); engine steps (forwards) per request "
        "3 (3) against 5 (4)"
    )
    assert equality["met"] is True and equality["goal"].startswith("float32, strict: every user's")
    assert below["met"] is False and below["measured"].startswith("5.54x (12 against 66.43 ms)")
    assert atspeed_s["met"] is None  # no distilled head in this run
    slow, _, unequal, _ = atspeed_goals(drafted_records(strict_ms=20.0, equal=499))
    assert slow["met"] is False and slow["measured"].startswith("1.14x")
    assert unequal["met"] is False and unequal["measured"] == "K = 20: 499 / 500"
    _, fast, _, _ = atspeed_goals(drafted_records(strict_ms=6.0))
    assert fast["met"] is True  # 66.43 / 6 = 11.1x


def test_relaxed_goals_report_the_quality_change():
    goals = atspeed_goals(drafted_records(relaxed_ms=10.0))
    assert [g["goal"].split(": ")[1].split(" p50")[0] for g in goals if g["goal"].startswith("K = 20, one")] == [
        "strict",
        "strict",
        "relaxed",
        "relaxed",
    ]
    relaxed_speedup = goals[3]
    assert relaxed_speedup["met"] is True  # 22.75 / 10 = 2.28x
    assert relaxed_speedup["measured"].endswith("; Recall@20 0.039 against 0.0405, NDCG@20 0.0188 against 0.0197")


def test_heads_of_several_objectives_get_goals_each_and_atspeed_s_is_compared_with_distillation():
    records = drafted_records()
    distill = {**DRAFT, "objective": "distill"}
    records.append(record("strict", "bfloat16", 20, 1, 15.0, engine_steps_per_call=4.5, **distill))
    goals = atspeed_goals(records)
    speedups = {g["goal"].split(": ")[1].split(" p50")[0]: g for g in goals if "faster than the undrafted" in g["goal"]}
    assert set(speedups) == {"strict (atspeed_s)", "strict (distill)"}
    assert speedups["strict (distill)"]["measured"].startswith("1.52x")  # 22.75 / 15
    atspeed_s = goals[-1]
    assert atspeed_s["met"] is True
    assert atspeed_s["measured"] == "2.00 against 0.50 steps saved per request; the undrafted engine: 5 steps"
    records[-3]["users"], records[-1]["users"] = 30, 30
    assert atspeed_goals(records)[-1]["measured"].startswith("2.00 against 0.50 steps saved per request (60 in 30 ")
    records[-1]["engine_steps_per_call"] = 3.0  # as many steps saved as AtSpeed-S: not more
    assert atspeed_goals(records)[-1]["met"] is False
    records[-1]["target_forwards_per_request"] = 1.0  # forwards do not count (async runs one after the round)
    assert atspeed_goals(records)[-1]["met"] is False
    records[-1]["engine_steps_per_call"] = None
    assert atspeed_goals(records)[-1]["met"] is None


def test_no_drafted_record_no_goal_and_a_missing_record_is_not_measured():
    assert atspeed_goals(run_records()) == []
    only_strict = [r for r in drafted_records() if r["mode"] == "strict"]
    assert [g["met"] for g in atspeed_goals(only_strict)] == [None, None, True, None]
    assert drafted_label(drafted_records()[-2]) == "strict (N = 40, γ = 3, atspeed_s)"


def test_the_results_markdown_has_issue_13s_goals_after_issue_12s_when_drafted():
    run = {"target": "/t", "dataset": "d", "device": "cpu", "date": "today", "concurrency": 64, "errors": {}}

    engine = bench_topk.pass_record("engine", "bfloat16", 20, 1, [0.02], [[1]], [[1]])
    strict = bench_topk.pass_record("strict", "bfloat16", 20, 1, [0.01], [[1]], [[1]]) | DRAFT
    plain = bench_topk.markdown({**run, "records": [engine]})
    drafted = bench_topk.markdown({**run, "records": [engine, strict]})
    assert "## Goals (issue 13)" not in plain
    assert drafted.index("## Goals (issue 12)") < drafted.index("## Goals (issue 13)") < drafted.index("## Records")
    assert (
        "| K = 20, one request at a time: strict p50 at least 1.6x faster than the undrafted engine | met | 2.00x"
        in (drafted)
    )


def test_a_drafted_mode_is_compared_with_the_engine_of_its_own_run():
    """A merged results file: the earlier run's engine record (22.75 ms) stays beside this run's (24.1 ms); the
    strict mode of this run is compared with this run's engine."""
    earlier = [{**r, "measured_on": "2026-12-01T05:23:30+0000"} for r in run_records()]
    this_run = [
        record("engine", "bfloat16", 20, 1, 24.1),
        record("strict", "bfloat16", 20, 1, 12.05, engine_steps_per_call=4.0, **DRAFT),
    ]
    speedup = atspeed_goals(earlier + this_run)[0]
    assert speedup["met"] is True and speedup["measured"].startswith("2.00x (strict (N = 40, γ = 3, atspeed_s): 12.05 ")


def test_the_payloads_goals_hold_both_issues_verdicts():
    """bench_topk's payload ``goals`` (what RESULTS.md shows): issue 12's seven, then issue 13's."""
    goals = bench_topk.run_goals(drafted_records(), concurrency=64)
    assert len(goals) == 7 + 4
    assert goals[7]["goal"].startswith("K = 20, one request at a time: strict p50 at least 1.6x faster")
    assert bench_topk.run_goals(run_records(), concurrency=64)[7:] == []
