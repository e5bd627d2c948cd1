"""testing/gpu_clocks.py: nvidia-smi's rows parsed and summarised by pass, from a stand-in stream."""

from __future__ import annotations

import sys
import time

from vllm_padrec.testing.gpu_clocks import FIELDS, ClockSampler, parse_row, summarize, visible_gpu


def test_a_row_is_its_numbers_and_anything_else_is_no_row():
    assert parse_row("1980, 3201, 512.35, 61\n") == (1980.0, 3201.0, 512.35, 61.0)
    assert parse_row("1980, [N/A], [N/A], 61") == (1980.0, None, None, 61.0)
    assert parse_row("clocks.sm [MHz], clocks.mem [MHz], power.draw [W], temperature.gpu") is None  # a header
    assert parse_row("1980, 3201") is None  # not the queried fields
    assert parse_row("") is None


def test_a_pass_summary_is_medians_extremes_and_count():
    rows = [(1980.0, 3201.0, 300.0, 55.0), (1410.0, 3201.0, 500.0, 63.0), (1755.0, None, 400.0, 60.0)]
    assert summarize(rows) == {
        "sm_mhz_median": 1755.0,
        "sm_mhz_min": 1410.0,
        "mem_mhz_median": 3201.0,
        "power_w_median": 400.0,
        "temp_c_max": 63.0,
        "samples": 3,
    }
    assert summarize([]) is None
    assert summarize([(1980.0, None, None, None)])["power_w_median"] is None


def test_the_visible_gpu_is_the_first_of_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert visible_gpu() == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu() == "0"
    assert "--id=3" in ClockSampler(gpu="3").command and f"--query-gpu={','.join(FIELDS)}" in ClockSampler().command


def test_the_sampler_cuts_a_streams_rows_by_pass():
    # a stand-in for nvidia-smi --loop-ms: 3 rows at once, then one every 50 ms at 1000 MHz up to 1099
    stream = (
        "import sys, time\n"
        "for sm in range(1, 4): print(f'{sm}, 3201, 100, 50', flush=True)\n"
        "time.sleep(0.3)\n"
        "for sm in range(1000, 1100): print(f'{sm}, 3201, 100, 50', flush=True); time.sleep(0.05)\n"
    )
    sampler = ClockSampler(command=[sys.executable, "-c", stream])
    with sampler:
        deadline = time.monotonic() + 10
        while sampler.mark() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        since = sampler.mark()
        time.sleep(0.5)
        summary = sampler.summary(since, settle_s=0)
    assert since == 3 and summary["samples"] >= 2
    assert summary["sm_mhz_min"] >= 1000  # none of the rows before the mark
    assert sampler._process.poll() is not None  # the stream ended with the sampler


def test_rows_are_stamped_on_arrival_and_cut_by_the_calls_windows():
    # a stand-in stream: 1000 MHz rows for 0.3 s, then 2000 MHz rows for 0.3 s
    stream = (
        "import time\n"
        "for _ in range(6): print('1000, 3201, 100, 50', flush=True); time.sleep(0.05)\n"
        "for _ in range(6): print('2000, 3201, 100, 50', flush=True); time.sleep(0.05)\n"
    )
    with ClockSampler(command=[sys.executable, "-c", stream]) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.rows) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
    (first, _), (last, _) = sampler.rows[0], sampler.rows[-1]
    slow = [t for t, row in sampler.rows if row[0] == 1000.0]
    fast = [t for t, row in sampler.rows if row[0] == 2000.0]
    assert sampler.summary_within([(slow[0], slow[-1])])["sm_mhz_median"] == 1000.0
    assert sampler.summary_within([(fast[0], fast[-1]), (last + 1, last + 2)])["sm_mhz_median"] == 2000.0
    assert sampler.summary_within([(first - 2, first - 1)]) is None  # no row in that window
    assert ClockSampler(command=["no-such-nvidia-smi-here"]).summary_within([(0, 1e9)]) is None


def test_without_nvidia_smi_there_is_nothing_to_record():
    sampler = ClockSampler(command=["no-such-nvidia-smi-here"])
    assert sampler.start() is False
    assert sampler.summary(sampler.mark()) is None
    sampler.stop()  # nothing to stop
