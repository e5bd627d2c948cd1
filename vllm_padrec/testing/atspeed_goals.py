"""Issue 13's goals for drafted top-K in the engine (AtSpeed), read from bench_topk's records: one verdict each.

Side by side in one run, K = 20, one request at a time: the strict mode at least 1.6x faster than the
undrafted engine (``engine``), with every float32 user equal to the reference on at least 500 users; the
relaxed mode at least 2.0x, with its change in Recall@20 and NDCG@20 against the engine; both at least 10x
below vLLM's beam search. Verdicts and placement rules are issue 12's (``topk_goals``): a goal is None where a
record it reads was not measured, and speed goals read own-process records where every compared mode has one.
"""

from __future__ import annotations

from vllm_padrec.testing.topk_goals import (
    BASELINE,
    ENGINE,
    SPEED_DTYPE,
    equality_goal,
    find,
    placement_note,
    speed_placement,
    verdict,
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


def speedup_goal(records: list[dict], mode: str) -> dict:
    target = SPEEDUP_OVER_ENGINE[mode]
    goal = f"K = {GOAL_K}, one request at a time: {mode} p50 at least {target:g}x faster than the undrafted engine"
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
    forwards = drafted.get("target_forwards_per_request"), engine.get("target_forwards_per_request")
    if None not in forwards:
        text += f"; target forwards per request {forwards[0]:g} against {forwards[1]:g}"
    if mode == RELAXED:
        text += (
            f"; Recall@{GOAL_K} {drafted['recall_at_k']:g} against {engine['recall_at_k']:g}, "
            f"NDCG@{GOAL_K} {drafted['ndcg_at_k']:g} against {engine['ndcg_at_k']:g}"
        )
    return verdict(goal, ratio >= target, text)


def below_baseline_goal(records: list[dict], mode: str) -> dict:
    goal = f"K = {GOAL_K}, one request at a time: {mode} p50 at least {BELOW_BASELINE:g}x below vLLM's beam search"
    core = speed_placement(records, (mode, BASELINE), GOAL_K, 1)
    drafted = find(records, mode, SPEED_DTYPE, GOAL_K, 1, core)
    baseline = find(records, BASELINE, SPEED_DTYPE, GOAL_K, 1, core)
    if drafted is None or baseline is None or not drafted["p50_ms"] or not baseline["p50_ms"]:
        return verdict(goal, None, "not measured")
    ratio = baseline["p50_ms"] / drafted["p50_ms"]
    text = f"{ratio:.2f}x ({drafted['p50_ms']:g} against {baseline['p50_ms']:g} ms{placement_note(core)})"
    return verdict(goal, ratio >= BELOW_BASELINE, text)


def atspeed_goals(records: list[dict]) -> list[dict]:
    """Issue 13's goals with their verdicts, for the drafted modes the run has; [] when it has none."""
    modes = [m for m in (STRICT, RELAXED) if any(r["mode"] == m for r in records)]
    goals = []
    for mode in modes:
        goals.append(speedup_goal(records, mode))
        if mode == STRICT:
            goals.append(equality_goal(records, STRICT))
        goals.append(below_baseline_goal(records, mode))
    return goals
