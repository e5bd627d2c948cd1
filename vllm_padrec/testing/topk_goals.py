"""Issue 12's goals for top-K in the engine, read from bench_topk's records: one verdict per goal.

Each goal compares records of one run (side by side): in a results file that holds records of earlier runs
too (bench_topk ``--merge``), this run's where they measure the goal, else the newest earlier run's. A goal
is ``met`` (True / False), or None when a record it reads was not measured. The verdict's ``measured`` text
says by how much a goal is missed and what it was compared with (the greedy floor: one greedy item in the
same engine, which any in-engine beam search needs at least).

The speed goals read the records whose engine core ran in its own process, as vLLM runs by default
(``engine_core`` OWN_PROCESS, bench_topk's ``--own-process-modes``), where every mode they compare has
one; else those of the in-process engines, which every run has.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from vllm_padrec.testing.goals import in_one_run, verdict

ENGINE = "engine"  # the mode the goals are about: beam search inside the engine
BASELINE = "vllm_beam_search"
FLOOR = "greedy_floor"
SPEED_DTYPE = "bfloat16"
EXACT_DTYPE = "float32"

LATENCY_GOALS_MS = {20: 10.0, 50: 15.0}  # K: p50 at one request at a time, at most
LATENCY_VS_BASELINE = 7.0  # at K = 20, one request at a time: this many times below vLLM's beam search
THROUGHPUT_K = 20
THROUGHPUT_VS_BASELINE = 5.0  # users per second at the concurrency batch
EQUAL_USERS = 500  # float32 users whose K items and order equal the reference's
# where a record's engine core ran (its engine_core field; records without one ran in process)
IN_PROCESS, OWN_PROCESS = "in_process", "own_process"


def placement(record: dict) -> str:
    return OWN_PROCESS if record.get("engine_core") == OWN_PROCESS else IN_PROCESS


def find(
    records: Iterable[dict], mode: str, dtype: str, k: int, batch_size: int, core: str = IN_PROCESS
) -> dict | None:
    """The measured record of one mode, dtype, K, batch size and engine-core placement (None: not measured)."""
    for r in records:
        if (r["mode"], r["dtype"], r["k"], r["batch_size"], placement(r)) == (mode, dtype, k, batch_size, core):
            return r
    return None


def speed_placement(records: list[dict], modes: tuple[str, ...], k: int, batch_size: int) -> str:
    """OWN_PROCESS where every one of ``modes`` has a speed record with its engine core in its own process."""
    own = all(find(records, m, SPEED_DTYPE, k, batch_size, OWN_PROCESS) for m in modes)
    return OWN_PROCESS if own else IN_PROCESS


def placement_note(core: str) -> str:
    return " (engine core in its own process)" if core == OWN_PROCESS else ""


def latency_goal(records: list[dict], k: int, limit_ms: float) -> dict:
    goal = f"K = {k}, one request at a time: engine p50 at most {limit_ms:g} ms"
    core = speed_placement(records, (ENGINE,), k, 1)
    engine = find(records, ENGINE, SPEED_DTYPE, k, 1, core)
    if engine is None or engine["p50_ms"] is None:
        return verdict(goal, None, "not measured")
    p50 = engine["p50_ms"]
    text = f"{p50:g} ms{placement_note(core)}" + ("" if p50 <= limit_ms else f", {p50 / limit_ms:.2f}x the goal")
    floor = find(records, FLOOR, SPEED_DTYPE, k, 1, core)
    if floor is not None and floor["p50_ms"] is not None:
        text += f"; greedy floor {floor['p50_ms']:g} ms (engine/floor {p50 / floor['p50_ms']:.2f})"
    in_process = find(records, ENGINE, SPEED_DTYPE, k, 1) if core == OWN_PROCESS else None
    if in_process is not None and in_process["p50_ms"] is not None:
        text += f"; engine core in this process: {in_process['p50_ms']:g} ms"
    return verdict(goal, p50 <= limit_ms, text)


def latency_vs_baseline_goal(records: list[dict]) -> dict:
    k = THROUGHPUT_K
    goal = f"K = {k}, one request at a time: engine p50 at least {LATENCY_VS_BASELINE:g}x below vLLM's beam search"
    core = speed_placement(records, (ENGINE, BASELINE), k, 1)
    engine, baseline = find(records, ENGINE, SPEED_DTYPE, k, 1, core), find(records, BASELINE, SPEED_DTYPE, k, 1, core)
    if engine is None or baseline is None or engine["p50_ms"] is None or baseline["p50_ms"] is None:
        return verdict(goal, None, "not measured")
    ratio = baseline["p50_ms"] / engine["p50_ms"]
    text = f"{ratio:.2f}x ({engine['p50_ms']:g} against {baseline['p50_ms']:g} ms{placement_note(core)})"
    return verdict(goal, ratio >= LATENCY_VS_BASELINE, text)


def throughput_goal(records: list[dict], concurrency: int) -> dict:
    k = THROUGHPUT_K
    goal = (
        f"{concurrency} users per call, K = {k}: engine users/s at least {THROUGHPUT_VS_BASELINE:g}x vLLM's beam search"
    )
    core = speed_placement(records, (ENGINE, BASELINE), k, concurrency)
    engine = find(records, ENGINE, SPEED_DTYPE, k, concurrency, core)
    baseline = find(records, BASELINE, SPEED_DTYPE, k, concurrency, core)
    if engine is None or baseline is None or not engine["users_per_s"] or not baseline["users_per_s"]:
        return verdict(goal, None, "not measured")
    ratio = engine["users_per_s"] / baseline["users_per_s"]
    text = f"{ratio:.2f}x ({engine['users_per_s']:g} against {baseline['users_per_s']:g} users/s{placement_note(core)})"
    return verdict(goal, ratio >= THROUGHPUT_VS_BASELINE, text)


def equality_goal(records: list[dict], mode: str = ENGINE) -> dict:
    """Every float32 record of ``mode`` compared with the reference: all its users equal, on at least EQUAL_USERS
    users. Users whose items differ but whose scores match the reference's rank by rank (tied items in another
    order) are named, and still count as a miss."""
    who = "" if mode == ENGINE else f", {mode}"
    goal = (
        f"float32{who}: every user's K items and order equal the reference's, on at least {EQUAL_USERS} users, every K"
    )
    compared = [
        r for r in records if r["mode"] == mode and r["dtype"] == EXACT_DTYPE and r.get("users_compared") is not None
    ]
    if not compared:
        return verdict(goal, None, "not measured")
    parts, met = [], True
    for r in sorted(compared, key=lambda r: r["k"]):
        equal, users = r["equal_to_reference"], r["users_compared"]
        part = f"K = {r['k']}: {equal} / {users}"
        if equal < users and r.get("differing_same_scores") is not None:
            part += f" ({r['differing_same_scores']} of the {users - equal} others tied: same scores)"
        parts.append(part)
        met = met and equal == users and users >= EQUAL_USERS
    return verdict(goal, met, "; ".join(parts))


def invalid_items_goal(records: list[dict]) -> dict:
    goal = "0 invalid items in every record of the engine mode"
    engine = [r for r in records if r["mode"] == ENGINE]
    if not engine:
        return verdict(goal, None, "not measured")
    invalid = sum(r["invalid_items"] for r in engine)
    baseline = sum(r["invalid_items"] for r in records if r["mode"] == BASELINE)
    return verdict(
        goal, invalid == 0, f"{invalid} in {len(engine)} records (vLLM's beam search, unconstrained: {baseline})"
    )


def prompt_once_goal(records: list[dict]) -> dict:
    """The prompt's KV blocks per request do not grow with K (the same users at every K of a batch size)."""
    goal = "prompt KV stored once per request, whatever K"
    by_batch: dict[tuple[str, int], dict[int, float]] = {}
    for r in records:
        if r["mode"] == ENGINE and r.get("prompt_blocks_per_request") is not None:
            by_batch.setdefault((r["dtype"], r["batch_size"]), {})[r["k"]] = r["prompt_blocks_per_request"]
    if not by_batch:
        return verdict(goal, None, "not measured")
    parts, met = [], True
    for (dtype, batch), blocks in sorted(by_batch.items()):
        values = sorted(set(blocks.values()))
        parts.append(
            f"{dtype}, batch {batch}: {', '.join(f'{v:g}' for v in values)} prompt blocks at K = "
            f"{min(blocks)} to {max(blocks)}"
        )
        met = met and len(values) == 1
    return verdict(goal, met, "; ".join(parts))


def topk_goals(records: list[dict], concurrency: int) -> list[dict]:
    """Every goal of issue 12 with its verdict, in the issue's order, each read from one run's records."""
    goals: list[Callable[[list[dict]], dict]] = [
        functools.partial(latency_goal, k=20, limit_ms=LATENCY_GOALS_MS[20]),
        latency_vs_baseline_goal,
        functools.partial(latency_goal, k=50, limit_ms=LATENCY_GOALS_MS[50]),
        functools.partial(throughput_goal, concurrency=concurrency),
        equality_goal,
        invalid_items_goal,
        prompt_once_goal,
    ]
    return [in_one_run(goal, records) for goal in goals]
