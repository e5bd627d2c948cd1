"""Issue 14's goals for list generation speed, read from bench_spec_decode's records: one verdict each
(``testing.goals``: met, missed by how much, or not measured; each goal reads one run's records).

Side by side in one run, offline, lists of ``GOAL_LIST_LEN`` items: PAD-Rec at one request at a time at least 3.1x
faster than no speculation (its fastest head, unrolled or one step, and gamma; aim 3.5x; paired with a baseline
engine's calls where the run alternated them, ``speedup``); PAD-Rec at least 5 % faster than vLLM's EAGLE with the
same masks, a gain larger than the two passes' repeat spread (``timing_spread``) and than the spread between engines
of one configuration (``engine_spread``), or, where PAD-Rec's calls alternated with EAGLE's engine in one process
(``--rivals``), a gain larger than the control's at every batch size of the run (PAD-Rec beside its own
configuration), against EAGLE trained both ways (``eagle``: unrolled over gamma steps as PAD-Rec;
``eagle_one_step``: teacher-forced one step, read against ``padrec_one_step``, PAD-Rec trained the same way, where
the run has it); the adaptive policy at least 1.0x at every batch size measured (aim 1.3x at 64); greedy lists equal
to no speculation where the run is float32 (the speed goals read the other dtypes' records, ``timed``); 0 invalid
and 0 repeated items. The last two read the methods the plugin serves (Model Runner V2), not vanilla vLLM's n-gram
and Medusa baselines, whose lists V1 leaves unconstrained. The gain of the masks alone (EAGLE with masks over
vanilla vLLM EAGLE) is reported beside them (``masks_alone``).
"""

from __future__ import annotations

import functools

from vllm_padrec.integration.gamma_schedule import OFFLINE
from vllm_padrec.testing.goals import in_one_run, runs, verdict

NONE, PADREC, ADAPTIVE = "none", "padrec", "padrec_adaptive"
PADREC_ONE_STEP = "padrec_one_step"  # PAD-Rec trained teacher-forced one step: eagle_one_step's like for like
EAGLE, EAGLE_ONE_STEP, EAGLE_VANILLA = "eagle", "eagle_one_step", "eagle_vanilla"
GOAL_LIST_LEN = 10
BATCH_ONE_SPEEDUP, BATCH_ONE_AIM = 3.1, 3.5
OVER_EAGLE = 1.05
ADAPTIVE_FLOOR, ADAPTIVE_AIM, ADAPTIVE_AIM_BATCH = 1.0, 1.3, 64
EXACT_DTYPE = "float32"


def timed(records: list[dict]) -> list[dict]:
    """The records the speed goals read: every dtype but EXACT_DTYPE, whose passes check equality (a float32 target
    is slower than the bfloat16 one users serve, so its speedups are not the product's)."""
    return [r for r in records if r.get("dtype") != EXACT_DTYPE]


def runner_of(record: dict) -> str:
    """A record's vLLM model runner, ``v2`` or ``v1`` (bench_spec_decode's ``runner``; records written before
    it had the field ran on V2)."""
    return record.get("runner", "v2")


def served_by_the_plugin(records: list[dict]) -> list[dict]:
    """The records of methods on Model Runner V2, where the plugin constrains the lists."""
    return [r for r in records if runner_of(r) == "v2"]


def speedup(record: dict) -> float | None:
    """A record's speedup over no speculation: measured paired where bench_spec_decode alternated its calls
    with a baseline engine's (``paired_speedup``, at the batch sizes it paired), else against the baseline's own
    engine (``speedup_vs_no_spec``)."""
    paired = record.get("paired_speedup")
    return paired if paired is not None else record.get("speedup_vs_no_spec")


def paired_mark(record: dict) -> str:
    return " paired" if record.get("paired_speedup") is not None else ""


def mode_of(record: dict) -> str:
    """A record's mode, ``OFFLINE`` or ``SERVE`` (records written before the field ran offline)."""
    return record.get("mode", OFFLINE)


def mode_mark(record: dict) -> str:
    """``, serve`` after the label of a record measured through vllm serve; nothing after an offline one."""
    return "" if mode_of(record) == OFFLINE else f", {mode_of(record)}"


def timing_spread(record: dict) -> float | None:
    """How far a pass's p50 moved when the same engine ran it again at the end of its passes (``p50_ms_repeat``):
    the timing noise a ratio of two engines' speeds carries, or None where the run did not repeat the pass."""
    repeat, p50 = record.get("p50_ms_repeat"), record.get("p50_ms")
    return abs(repeat / p50 - 1) if repeat and p50 else None


def baseline_p50s(records: list[dict], list_len: int = GOAL_LIST_LEN, batch_size: int = 1) -> list[float]:
    """The p50s of one run's paired baseline engines (no speculation on Model Runner V2, one started beside each
    draft engine, ``paired_baseline_p50_ms``) at one list length and batch size: engines of one configuration."""
    return [
        r["paired_baseline_p50_ms"]
        for r in served_by_the_plugin(records)
        if r.get("paired_baseline_p50_ms") and mode_of(r) == OFFLINE
        if r["list_len"] == list_len and r["batch_size"] == batch_size
    ]


def engine_spread(records: list[dict], list_len: int = GOAL_LIST_LEN, batch_size: int = 1) -> float | None:
    """How far apart engines of one configuration ran in one run (``baseline_p50s``): the slowest p50 over the
    fastest, less 1; None with fewer than two. They differed by 25 % at batch 1 in the run of 2026-12-03 18:00,
    where one engine's repeat moved at most 13 %: a ratio of two engines carries this spread as well as the
    repeat's."""
    p50s = baseline_p50s(records, list_len, batch_size)
    return max(p50s) / min(p50s) - 1 if len(p50s) >= 2 else None


def engine_spread_text(records: list[dict]) -> str | None:
    """One sentence on this run's spread between engines of one configuration (one request at a time, lists of
    ``GOAL_LIST_LEN``), or None where it ran fewer than two; records kept from earlier runs are left out."""
    date, run = next(iter(runs(records)), (None, []))
    if date is not None or (spread := engine_spread(run)) is None:  # no record of this run: nothing to say
        return None
    p50s = baseline_p50s(run)
    return (
        f"Engines of one configuration in this run: the {len(p50s)} paired baseline engines (no speculation, one "
        f"beside each draft engine; lists of {GOAL_LIST_LEN}, one request at a time) ran at p50 {min(p50s):g} to "
        f"{max(p50s):g} ms, a spread of {100 * spread:.1f} %: a ratio of two engines' speeds, paired or not, "
        "carries it."
    )


def at_goal(record: dict, method: str, batch_size: int = 1) -> bool:
    """Whether ``record`` is ``method``'s offline pass at ``batch_size`` on lists of GOAL_LIST_LEN items."""
    fields = (record["method"], mode_of(record), record["list_len"], record["batch_size"])
    return fields == (method, OFFLINE, GOAL_LIST_LEN, batch_size)


def best(records: list[dict], method: str, batch_size: int = 1) -> dict | None:
    """``method``'s offline record at ``batch_size`` and GOAL_LIST_LEN with the highest ``speedup`` (over its
    gammas); None when none was measured."""
    found = [r for r in records if at_goal(r, method, batch_size) and speedup(r) is not None]
    return max(found, key=speedup, default=None)


def best_padrec(records: list[dict]) -> dict | None:
    """The fastest PAD-Rec head of a run at one request at a time (``best``): the head trained unrolled
    (``padrec``) or teacher-forced one step (``padrec_one_step``), both PAD-Rec's architecture and signals; the
    goal's text names the second where it is the one read."""
    found = [r for r in (best(records, PADREC), best(records, PADREC_ONE_STEP)) if r is not None]
    return max(found, key=speedup, default=None)


def batch_one_goal(records: list[dict]) -> dict:
    goal = (
        f"lists of {GOAL_LIST_LEN}, one request at a time: PAD-Rec at least {BATCH_ONE_SPEEDUP:g}x faster than no "
        f"speculation (aim {BATCH_ONE_AIM:g}x)"
    )
    padrec = best_padrec(records)
    if padrec is None:
        return verdict(goal, None, "not measured")
    measured = speedup(padrec)
    head = "" if padrec["method"] == PADREC else f"{padrec['method']}, "
    text = f"{measured:.2f}x{paired_mark(padrec)} ({head}gamma {padrec['gamma']}, p50 {padrec['p50_ms']:g} ms"
    if padrec.get("paired_baseline_p50_ms") is not None:
        text += f" against {padrec['paired_baseline_p50_ms']:g} ms"
    text += f", acceptance length {padrec['acceptance_length']:g})" if padrec.get("acceptance_length") else ")"
    if measured < BATCH_ONE_SPEEDUP:
        text += f", {BATCH_ONE_SPEEDUP / measured:.2f}x short of the goal"
    return verdict(goal, measured >= BATCH_ONE_SPEEDUP, text)


def beside_rival(records: list[dict], eagle: str) -> dict | None:
    """PAD-Rec's one-request pass on lists of GOAL_LIST_LEN whose users also ran call by call beside ``eagle``'s
    engine (``bench_spec_decode --rivals``), its fastest gamma; None where no pass did."""
    found = [r for r in records if at_goal(r, PADREC) and eagle in (r.get("rivals") or {})]
    return max(found, key=lambda r: speedup(r) or 0.0, default=None)


def control_distance(records: list[dict]) -> tuple[float, dict] | None:
    """The largest distance from 1.0 of PAD-Rec's ratio over a second engine of its own configuration (``--rivals
    padrec``) among one run's passes, at any batch size and list length, and the pass that measured it; None
    without a control. The largest, because a control that ran close to 1.0 at one batch size says little about a
    pair of other engines: in the run of 2026-12-04 it was 1.4 % at batch 1 and 25.9 % at batch 64."""
    controls = [(abs(r["rivals"][PADREC]["speedup"] - 1), r) for r in records if PADREC in (r.get("rivals") or {})]
    return max(controls, key=lambda c: c[0], default=None)


def rival_acceptance_text(measured: dict) -> str:
    """``; acceptance length a against b`` where the comparison counted both engines' drafts, else nothing."""
    ours, theirs = measured.get("acceptance_length"), measured.get("rival_acceptance_length")
    return f"; acceptance length {ours:g} against {theirs:g}" if ours and theirs else ""


def net_of_control(padrec: dict, eagle: str) -> float | None:
    """PAD-Rec's ratio over ``eagle``'s engine divided by its ratio over the control engine beside the same pass
    (``--rivals padrec``), or None without that control: the rival engines start in the same order, and on
    2026-12-05 the control read 0.970 at batch 1 and 0.920 at batch 64, so the raw ratio carries that order's bias
    as well as the drafts' difference."""
    control = (padrec.get("rivals") or {}).get(PADREC)
    return padrec["rivals"][eagle]["speedup"] / control["speedup"] if control and control.get("speedup") else None


def over_rival_verdict(goal: str, records: list[dict], padrec: dict, eagle: str) -> dict:
    """The goal read from the calls of PAD-Rec's engine and ``eagle``'s alternating in one process: a gain counts
    beyond the run's control distance (``control_distance``) and where it holds net of the same pass's control
    too (``net_of_control``), and is not shown without a control."""
    measured = padrec["rivals"][eagle]
    ratio = measured["speedup"]
    text = (
        f"{100 * (ratio - 1):+.1f} % call by call beside {eagle}'s engine (gamma {padrec['gamma']}, p50 "
        f"{measured['p50_ms']:g} against {measured['rival_p50_ms']:g} ms{rival_acceptance_text(measured)})"
    )
    net = net_of_control(padrec, eagle)
    if net is not None:
        text += f"; {100 * (net - 1):+.1f} % net of this pass's control ({padrec['rivals'][PADREC]['speedup']:g})"
    if ratio < OVER_EAGLE:
        return verdict(goal, False, f"{text}, {100 * (OVER_EAGLE - ratio):.1f} points short of the goal")
    if net is not None and net < OVER_EAGLE:
        return verdict(goal, False, f"{text}, {100 * (OVER_EAGLE - net):.1f} points short of the goal net of it")
    control = control_distance(records)
    if control is None:
        return verdict(
            goal, False, f"{text}; not shown: no control engine of PAD-Rec's configuration (--rivals padrec)"
        )
    spread, where = control
    spread_text = f"{100 * spread:.1f} % (batch {where['batch_size']}, lists of {where['list_len']})"
    if ratio - 1 <= spread:
        return verdict(goal, False, f"{text}; not shown: within the control's {spread_text}")
    return verdict(goal, True, f"{text}; control at most {spread_text}")


def over_eagle_goal(records: list[dict], eagle: str) -> dict:
    how = "unrolled over gamma steps" if eagle == EAGLE else "teacher-forced one step"
    goal = (
        f"lists of {GOAL_LIST_LEN}, one request at a time: PAD-Rec at least {100 * (OVER_EAGLE - 1):g} % faster than "
        f"EAGLE with the same masks ({eagle}: {how})"
    )
    # the PAD-Rec head trained as this EAGLE head was, where the run has one
    one_step = best(records, PADREC_ONE_STEP) if eagle == EAGLE_ONE_STEP else None
    ours = PADREC if one_step is None else PADREC_ONE_STEP
    if ours == PADREC and (padrec := beside_rival(records, eagle)) is not None:  # no drift between engines
        return over_rival_verdict(goal, records, padrec, eagle)
    padrec, other = one_step or best(records, PADREC), best(records, eagle)
    if padrec is None or other is None:
        return verdict(goal, None, "not measured")
    ratio = speedup(padrec) / speedup(other)
    head = "" if ours == PADREC else f" ({ours})"
    text = (
        f"{100 * (ratio - 1):+.1f} % (PAD-Rec{head} {speedup(padrec):.2f}x{paired_mark(padrec)} at gamma "
        f"{padrec['gamma']}, {eagle} {speedup(other):.2f}x{paired_mark(other)} at gamma {other['gamma']})"
    )
    text += acceptance_by_gamma(records, ours, eagle)
    if ratio < OVER_EAGLE:
        return verdict(goal, False, text)
    # a gain counts where it is larger than the timing noise of the two passes (engines' ratios moved by tens of
    # percent at equal acceptance, 2026-12-02) and than the spread between engines of one configuration
    spreads = [timing_spread(padrec), timing_spread(other)]
    if None in spreads:
        return verdict(goal, False, text + "; not shown: the run did not time these passes twice (p50_ms_repeat)")
    if ratio - 1 <= max(spreads):
        return verdict(goal, False, f"{text}; not shown: within the passes' repeat spread ({100 * max(spreads):.1f} %)")
    text += f"; repeat spread {100 * max(spreads):.1f} %"
    if (between := engine_spread(records)) is not None:
        if ratio - 1 <= between:
            return verdict(goal, False, f"{text}; not shown: within the spread between engines ({100 * between:.1f} %)")
        text += f", between engines {100 * between:.1f} %"
    return verdict(goal, True, text)


def acceptance_by_gamma(records: list[dict], first: str, second: str) -> str:
    """``; acceptance length at gamma g: a vs b, ...`` for the gammas both methods ran (offline, one request at a
    time, GOAL_LIST_LEN): whether a speed gap between them comes from their drafts or from the timing."""

    def at(method: str) -> dict[int, float]:
        return {
            r["gamma"]: r["acceptance_length"]
            for r in records
            if at_goal(r, method) and r.get("acceptance_length") is not None
        }

    ours, theirs = at(first), at(second)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return ""
    pairs = ", ".join(f"gamma {g}: {ours[g]:.2f} vs {theirs[g]:.2f}" for g in shared)
    return f"; acceptance length {first} vs {second}: {pairs}"


def adaptive_goal(records: list[dict]) -> dict:
    goal = (
        f"PAD-Rec with the adaptive policy at least {ADAPTIVE_FLOOR:g}x no speculation at every batch size "
        f"(aim {ADAPTIVE_AIM:g}x at {ADAPTIVE_AIM_BATCH})"
    )
    adaptive = [r for r in records if r["method"] == ADAPTIVE and mode_of(r) == OFFLINE and speedup(r) is not None]
    if not adaptive:
        return verdict(goal, None, "not measured")
    adaptive.sort(key=lambda r: (r["list_len"], r["batch_size"]))
    parts = [f"lists of {r['list_len']}, B = {r['batch_size']}: {speedup(r):.2f}x{paired_mark(r)}" for r in adaptive]
    return verdict(goal, all(speedup(r) >= ADAPTIVE_FLOOR for r in adaptive), "; ".join(parts))


def equality_goal(records: list[dict]) -> dict:
    goal = f"{EXACT_DTYPE}: every speculative method's greedy lists equal to no speculation"
    compared = [
        r
        for r in served_by_the_plugin(records)
        if r["method"] != NONE and r.get("dtype") == EXACT_DTYPE and r.get("users_compared") is not None
    ]
    if not compared:
        return verdict(goal, None, "not measured")
    differing = [r for r in compared if r["equal_to_no_spec"] != r["users_compared"]]
    users = sum(r["users_compared"] for r in compared)
    text = f"{users - sum(r['users_compared'] - r['equal_to_no_spec'] for r in compared)} / {users} lists equal"
    text += f" ({', '.join(sorted({r['method'] for r in compared}))}; batch sizes "
    text += f"{', '.join(map(str, sorted({r['batch_size'] for r in compared})))})"
    if differing:
        text += "; differing: " + ", ".join(
            f"{r['method']} gamma {r['gamma']} B = {r['batch_size']} lists of {r['list_len']}: "
            f"{r['equal_to_no_spec']} / {r['users_compared']}"
            for r in differing
        )
    return verdict(goal, not differing, text)


def valid_items_goal(records: list[dict]) -> dict:
    goal = "0 invalid and 0 repeated items in every record"
    counted = [r for r in served_by_the_plugin(records) if r.get("invalid_items") is not None]
    if not counted:
        return verdict(goal, None, "not measured")
    invalid = sum(r["invalid_items"] for r in counted)
    repeated = sum(r.get("duplicate_items") or 0 for r in counted)
    text = f"{invalid} invalid, {repeated} repeated in {len(counted)} records"
    return verdict(goal, invalid == 0 and repeated == 0, text)


def masks_alone(records: list[dict]) -> str | None:
    """The catalog masks' own gain at one request at a time: EAGLE with the masks over vanilla vLLM EAGLE (the
    same head), or None when either was not measured."""
    records = timed(records)
    masked, vanilla = best(records, EAGLE), best(records, EAGLE_VANILLA)
    if masked is None or vanilla is None:
        return None
    ratio = speedup(masked) / speedup(vanilla)
    return (
        f"The catalog masks alone (lists of {GOAL_LIST_LEN}, one request at a time): EAGLE with the masks "
        f"{speedup(masked):.2f}x{paired_mark(masked)} no speculation (gamma {masked['gamma']}), vanilla vLLM EAGLE "
        f"{speedup(vanilla):.2f}x{paired_mark(vanilla)} (gamma {vanilla['gamma']}): {100 * (ratio - 1):+.1f} %"
        f"{acceptance_by_gamma(records, EAGLE, EAGLE_VANILLA)}."
    )


def spec_decode_goals(records: list[dict]) -> list[dict]:
    """Issue 14's goals with their verdicts, in the issue's order, each read from one run's records."""
    speed = [
        batch_one_goal,
        functools.partial(over_eagle_goal, eagle=EAGLE),
        functools.partial(over_eagle_goal, eagle=EAGLE_ONE_STEP),
        adaptive_goal,
    ]
    return [in_one_run(goal, timed(records)) for goal in speed] + [
        in_one_run(goal, records) for goal in (equality_goal, valid_items_goal)
    ]
