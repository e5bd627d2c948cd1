"""Where one request's time goes, from the timestamps vLLM keeps for it (``RequestOutput.metrics``).

A call of one request, timed by the caller from ``began`` to ``ended`` with ``time.monotonic()``, splits at the
engine core's timestamps (vLLM 0.26.0, ``v1/metrics/stats.py``, ``RequestStateStats``; the core stamps them
with ``time.monotonic()``, one clock for every process of a Linux machine):

    submit       began -> queued_ts         the front end: input processing, the request reaching the core
    queue        queued_ts -> scheduled_ts  waiting for the scheduler
    first_token  scheduled_ts -> first_token_ts
                                            the prefill step (with a draft: the draft's prefill and first
                                            drafts too), until its output leaves the core's step
    decode       first_token_ts -> last_token_ts
                                            every later step (a speculative round each, with a draft)
    finish       last_token_ts -> ended     the last output reaching the caller, the request's end

vLLM keeps the timestamps only when the engine logs stats (``disable_log_stats=False``): without them, and where
a timestamp was never set (0.0), a call has no phases.
"""

from __future__ import annotations

from typing import Any

from vllm_padrec.testing.stats import percentile

PHASES = ("submit", "queue", "first_token", "decode", "finish")


def request_phases(began: float, ended: float, metrics: Any) -> dict[str, float] | None:
    """One call's phases in seconds (module docstring), or None when vLLM kept no timestamps for it."""
    if metrics is None:
        return None
    stamps = [began, metrics.queued_ts, metrics.scheduled_ts, metrics.first_token_ts, metrics.last_token_ts, ended]
    if any(not stamp for stamp in stamps[1:-1]):
        return None
    return {phase: stamps[i + 1] - stamps[i] for i, phase in enumerate(PHASES)}


def median_phases_ms(calls: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Each phase's median over the calls that have phases, in milliseconds; None when none has."""
    timed = [c for c in calls if c is not None]
    if not timed:
        return None
    return {phase: round(1000 * percentile([c[phase] for c in timed], 50), 3) for phase in PHASES}
