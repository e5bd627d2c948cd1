"""The GPU's clocks, power and temperature through a benchmark's passes (``bench_spec_decode``'s ``gpu_clocks``).

Two engines of one configuration ran 25-36 % apart on the H200 (2026-12-03), and one engine's repeat of its
batch-1 pass moved by as much; pinning the engines to cores of their own did not narrow it
(``integration/SPEC_DECODE.md`` section 12). The GPU's own state is the candidate left: an SM clock that drops
between passes (power or thermal limits, or an idle GPU clocking down between short calls) slows every kernel of
a host-bound step alike. So a pass records what ``nvidia-smi`` saw while it ran. On the H200 (2026-12-04, section 13)
the SM clock stayed at 1980 MHz through every pass and on both sides of every pair while engines of one
configuration still ran up to 30 % apart: the clocks do not explain the spread, and the records keep showing so.

One ``nvidia-smi --query-gpu=... --loop-ms=N`` process streams a row every N ms (one process for the run, not one
per sample: each start of ``nvidia-smi`` costs tens of milliseconds of CPU), a thread of the benchmark reads the rows
as they come and stamps each with the clock the benchmark times its calls by (``time.monotonic``). Each pass
summarises the rows that arrived while it ran (``mark`` before, ``summary`` after), and a paired pass those that
arrived during each engine's calls (``summary_within`` the calls' windows): whether the GPU ran slower while one of
the two engines had it. Where ``nvidia-smi`` is missing or answers nothing, there are no rows and passes record
nothing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import threading
import time

from vllm_padrec.testing.stats import percentile

FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu")  # nvidia-smi --help-query-gpu
PERIOD_MS = 200


def parse_row(line: str) -> tuple[float | None, ...] | None:
    """One ``--format=csv,noheader,nounits`` row as numbers in ``FIELDS`` order (None for ``[N/A]`` and the like);
    None for a line that is not a row of them."""
    cells = [cell.strip() for cell in line.split(",")]
    if len(cells) != len(FIELDS):
        return None
    values = []
    for cell in cells:
        try:
            values.append(float(cell))
        except ValueError:
            values.append(None)
    return tuple(values) if any(v is not None for v in values) else None


def summarize(rows: list[tuple[float | None, ...]]) -> dict | None:
    """A pass's rows as its median and lowest SM clock (MHz), median memory clock (MHz), median power (W) and
    highest temperature (C), and how many rows; None without rows."""
    if not rows:
        return None

    def column(name: str) -> list[float]:
        index = FIELDS.index(name)
        return [row[index] for row in rows if row[index] is not None]

    sm, mem, power, temp = (column(name) for name in FIELDS)
    return {
        "sm_mhz_median": round(percentile(sm, 50), 1) if sm else None,
        "sm_mhz_min": min(sm) if sm else None,
        "mem_mhz_median": round(percentile(mem, 50), 1) if mem else None,
        "power_w_median": round(percentile(power, 50), 1) if power else None,
        "temp_c_max": max(temp) if temp else None,
        "samples": len(rows),
    }


def visible_gpu() -> str:
    """The GPU this process's ``cuda:0`` is, as ``nvidia-smi -i`` takes it: the first of ``CUDA_VISIBLE_DEVICES``,
    else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


class ClockSampler:
    """``nvidia-smi``'s rows for one GPU, read on a thread; ``mark``/``summary`` cut them by pass."""

    def __init__(self, gpu: str | None = None, period_ms: int = PERIOD_MS, command: list[str] | None = None):
        self.command = command or [
            "nvidia-smi",
            f"--query-gpu={','.join(FIELDS)}",
            "--format=csv,noheader,nounits",
            f"--id={gpu or visible_gpu()}",
            f"--loop-ms={period_ms}",
        ]
        self.rows: list[tuple[float, tuple[float | None, ...]]] = []  # (time.monotonic() on arrival, row)
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> bool:
        """Starts the stream; False (and no rows ever) where ``nvidia-smi`` cannot be run."""
        if shutil.which(self.command[0]) is None:
            return False
        try:
            self._process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError:
            return False
        self._reader = threading.Thread(target=self._read, name="gpu-clocks", daemon=True)
        self._reader.start()
        atexit.register(self.stop)  # a run that raises before ``stop`` leaves no nvidia-smi behind
        return True

    def _read(self) -> None:
        for line in self._process.stdout:
            if (row := parse_row(line)) is not None:
                self.rows.append((time.monotonic(), row))

    def mark(self) -> int:
        """Where a pass starts in the rows."""
        return len(self.rows)

    def settle(self, seconds: float = PERIOD_MS / 1000) -> None:
        """Waits one period, for the row in flight (nothing to wait for without a stream)."""
        if self._process is not None:
            time.sleep(seconds)

    def summary(self, since: int, settle_s: float = PERIOD_MS / 1000) -> dict | None:
        """``summarize`` of the rows since ``mark``'s ``since``, after waiting one period for the row in flight."""
        if self._process is None:
            return None
        self.settle(settle_s)
        return summarize([row for _, row in self.rows[since:]])

    def summary_within(self, windows: list[tuple[float, float]]) -> dict | None:
        """``summarize`` of the rows that arrived inside any of ``windows`` (``time.monotonic`` start and end, as
        a benchmark's calls are timed); None without rows there. Call it after ``summary`` or ``settle``, which
        wait for the row in flight."""
        if self._process is None:
            return None
        return summarize([row for t, row in self.rows if any(start <= t <= end for start, end in windows)])

    def stop(self) -> None:
        """Ends the stream (again: nothing)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> ClockSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
