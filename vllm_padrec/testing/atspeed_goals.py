"""Issue 13's goals for drafted top-K in the engine (AtSpeed), read from bench_topk's records: one verdict each.

Side by side in one run, K = 20, one request at a time: the strict mode at least 1.6x faster than the
undrafted engine (``engine``), with every float32 user equal to the reference on at least 500 users; the
relaxed mode at least 2.0x, with its change in Recall@20 and NDCG@20 against the engine; both at least 10x
below vLLM's beam search. Verdicts, placement rules and the one-run rule are issue 12's (``topk_goals``): a
goal is None where a record it reads was not measured, speed goals read own-process records where every
compared mode has one, and each goal reads one run's records.
"""

from __future__ import annotations

import functools

from vllm_padrec.testing.goals import in_one_run, verdict
from vllm_padrec.testing.topk_goals import (
    BASELINE,
    ENGINE,
    SPEED_DTYPE,
    equality_goal,
    find,
    placement_note,
    speed_placement,
)

STRICT, RELAXED = "strict", "relaxed"
GOAL_K = 20
SPEEDUP_OVER_ENGINE = {STRICT: 1.6, RELAXED: 2.0}  # p50 at one request at a time, against the undrafted engine
BELOW_BASELINE = 10.0  # p50 at one request at a time, this many times below vLLM's beam search


def draft_text(record: dict) -> str:
    """``N = 40, γ = 3, atspeed_s``: a drafted record's draft (bench_topk's ``draft_beams``, ``gamma``,
    ``objective``)."""
    return f"N = {record['draft_beams']}, γ = {record['gamma']}, {record['objective']}"


def drafted_label(record: dict) -> str:
    """``strict (N = 40, γ = 3, atspeed_s)``: a drafted record's mode with its draft."""
    return f"{record['mode']} ({draft_text(record)})"


def of_objective(records: list[dict], objective: str | None) -> list[dict]:
    """The records of the undrafted modes and of the drafted ones whose head had ``objective``; all of them
    when ``objective`` is None."""
    if objective is None:
        return records
    return [r for r in records if r.get("objective") in (None, objective)]


def named(mode: str, objective: str | None) -> str:
    return mode if objective is None else f"{mode} ({objective})"


def speedup_goal(records: list[dict], mode: str, objective: str | None = None) -> dict:
    target = SPEEDUP_OVER_ENGINE[mode]
    who = named(mode, objective)
    goal = f"K = {GOAL_K}, one request at a time: {who} p50 at least {target:g}x faster than the undrafted engine"
    records = of_objective(records, objective)
    core = speed_placement(records, (mode, ENGINE), GOAL_K, 1)
    drafted, engine = (
        find(records, mode, SPEED_DTYPE, GOAL_K, 1, core),
        find(records, ENGINE, SPEED_DTYPE, GOAL_K, 1, core),
    )
    if drafted is None or engine is None or not drafted["p50_ms"] or not engine["p50_ms"]:
        return verdict(goal, None, "not measured")
    ratio = engine["p50_ms"] / drafted["p50_ms"]
    text = (
        f"{ratio:.2f}x ({drafted_label(drafted)}: {drafted['p50_ms']:g} against {engine['p50_ms']:g} ms"
        f"{placement_note(core)})"
    )
    if None not in (steps_per_request(drafted), steps_per_request(engine)):
        text += f"; engine steps (forwards) per request {steps_text(drafted)} against {steps_text(engine)}"
    if mode == RELAXED:
        text += (
            f"; Recall@{GOAL_K} {drafted['recall_at_k']:g} against {engine['recall_at_k']:g}, "
            f"NDCG@{GOAL_K} {drafted['ndcg_at_k']:g} against {engine['ndcg_at_k']:g}"
        )
    return verdict(goal, ratio >= target, text)


def below_baseline_goal(records: list[dict], mode: str, objective: str | None = None) -> dict:
    who = named(mode, objective)
    goal = f"K = {GOAL_K}, one request at a time: {who} p50 at least {BELOW_BASELINE:g}x below vLLM's beam search"
    records = of_objective(records, objective)
    core = speed_placement(records, (mode, BASELINE), GOAL_K, 1)
    drafted = find(records, mode, SPEED_DTYPE, GOAL_K, 1, core)
    baseline = find(records, BASELINE, SPEED_DTYPE, GOAL_K, 1, core)
    if drafted is None or baseline is None or not drafted["p50_ms"] or not baseline["p50_ms"]:
        return verdict(goal, None, "not measured")
    ratio = baseline["p50_ms"] / drafted["p50_ms"]
    text = f"{ratio:.2f}x ({drafted['p50_ms']:g} against {baseline['p50_ms']:g} ms{placement_note(core)})"
    return verdict(goal, ratio >= BELOW_BASELINE, text)


def steps_per_request(record: dict) -> float | None:
    """Engine steps a request took: bench_topk's ``engine_steps_per_call`` of a record of one request at a
    time (the goals read no other)."""
    return record.get("engine_steps_per_call")


def steps_text(record: dict) -> str:
    """``4.83 (4)``: a record's engine steps per request with its target forwards, where recorded."""
    forwards = record.get("target_forwards_per_request")
    return f"{steps_per_request(record):g}" + ("" if forwards is None else f" ({forwards:g})")


def atspeed_s_goal(records: list[dict]) -> dict:
    """AtSpeed-S against distillation at the same budget, strict mode at K = GOAL_K, one request at a time:
    engine steps saved per request against the undrafted engine of the same run. A round whose drafted levels
    are accepted finishes the request a step early; target forwards do not show it, since with async
    scheduling the step after a request's last round still runs a forward."""
    goal = f"K = {GOAL_K}: AtSpeed-S accepts more than distillation in strict mode (engine steps saved per request)"
    engine = find(records, ENGINE, SPEED_DTYPE, GOAL_K, 1)
    saved, users = {}, {}
    for objective in ("atspeed_s", "distill"):
        record = find(of_objective(records, objective), STRICT, SPEED_DTYPE, GOAL_K, 1)
        steps = None if record is None or engine is None else (steps_per_request(record), steps_per_request(engine))
        saved[objective] = None if steps is None or None in steps else steps[1] - steps[0]
        users[objective] = None if record is None else record.get("users")
    if None in saved.values():
        return verdict(goal, None, "not measured")
    ours, theirs = saved["atspeed_s"], saved["distill"]
    text = f"{ours:.2f} against {theirs:.2f} steps saved per request"
    if None not in users.values():  # the totals show how few requests a difference rests on
        text += f" ({ours * users['atspeed_s']:.0f} in {users['atspeed_s']} requests against "
        text += f"{theirs * users['distill']:.0f} in {users['distill']})"
    text += f"; the undrafted engine: {steps_per_request(engine):g} steps"
    return verdict(goal, ours > theirs, text)


def atspeed_goals(records: list[dict]) -> list[dict]:
    """Issue 13's goals with their verdicts, for the drafted modes and heads the run has; [] when it has none."""
    goals = []
    for mode in (STRICT, RELAXED):
        objectives = sorted({r.get("objective") for r in records if r["mode"] == mode}, key=str)
        several = len(objectives) > 1
        for objective in objectives:  # named (and its records picked) only where the run has several heads
            named_objective = objective if several else None
            goals.append(in_one_run(functools.partial(speedup_goal, mode=mode, objective=named_objective), records))
            below = functools.partial(below_baseline_goal, mode=mode, objective=named_objective)
            goals.append(in_one_run(below, records))
        if mode == STRICT and objectives:
            goals.append(in_one_run(functools.partial(equality_goal, mode=STRICT), records))
    if goals:
        goals.append(in_one_run(atspeed_s_goal, records))
    return goals
