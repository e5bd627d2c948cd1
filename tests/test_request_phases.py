"""testing/request_phases.py: a one-request call split at vLLM's own per-request timestamps."""

from __future__ import annotations

import pytest

from vllm_padrec.testing.request_phases import PHASES, median_phases_ms, request_phases


def stamps(queued: float, scheduled: float, first: float, last: float):
    """vLLM 0.26.0's own per-request stats object with its four core timestamps set."""
    from vllm.v1.metrics.stats import RequestStateStats

    stats = RequestStateStats(arrival_time=1e9)  # the front end's wall clock: not a phase boundary
    stats.queued_ts, stats.scheduled_ts, stats.first_token_ts, stats.last_token_ts = queued, scheduled, first, last
    return stats


def test_a_call_splits_at_the_cores_timestamps_and_the_phases_add_up_to_the_call():
    phases = request_phases(10.0, 10.100, stamps(10.002, 10.003, 10.020, 10.090))
    assert list(phases) == list(PHASES)
    assert phases == pytest.approx(
        {"submit": 0.002, "queue": 0.001, "first_token": 0.017, "decode": 0.070, "finish": 0.010}
    )
    assert sum(phases.values()) == pytest.approx(0.100)


def test_a_call_without_vllms_timestamps_has_no_phases():
    assert request_phases(0.0, 1.0, None) is None  # disable_log_stats: RequestOutput.metrics is None
    assert request_phases(0.0, 1.0, stamps(0.1, 0.0, 0.5, 0.9)) is None  # never scheduled: 0.0, not a time


def test_medians_are_per_phase_in_milliseconds_over_the_calls_that_have_phases():
    calls = [
        request_phases(0.0, 0.010, stamps(0.001, 0.002, 0.004, 0.009)),  # decode 5 ms
        None,  # a call of an engine without stats
        request_phases(1.0, 1.020, stamps(1.001, 1.002, 1.004, 1.019)),  # decode 15 ms
        request_phases(2.0, 2.012, stamps(2.001, 2.002, 2.004, 2.011)),  # decode 7 ms
    ]
    medians = median_phases_ms(calls)
    assert medians == pytest.approx({"submit": 1.0, "queue": 1.0, "first_token": 2.0, "decode": 7.0, "finish": 1.0})
    assert median_phases_ms([None, None]) is None
