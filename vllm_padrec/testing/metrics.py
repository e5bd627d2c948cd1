"""A `vllm serve`'s Prometheus metrics (``GET /metrics``), read with ``prometheus_client``'s parser.

A sample keeps the name it has in the text: a counter's ``_total``, a histogram's ``_count`` / ``_sum`` /
``_bucket``. Values are summed over their label sets (one per engine).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS, read_spec_decode_counters

RUNNING = "vllm:num_requests_running"  # gauge: requests the engine runs now
ITERATIONS = "vllm:iteration_tokens_total_count"  # histogram count: engine steps (one observation per step)


class Metrics:
    """The metric families of one ``/metrics`` text; ``collect()`` makes it read like a
    ``prometheus_client`` registry."""

    def __init__(self, text: str) -> None:
        self.families: list[Metric] = list(text_string_to_metric_families(text))

    def collect(self) -> list[Metric]:
        return self.families

    def total(self, name: str) -> float:
        """The samples named ``name`` summed over engines (0 when there is none)."""
        return sum(sample.value for family in self.families for sample in family.samples if sample.name == name)

    def spec_counters(self) -> dict:
        """vLLM's spec-decode counters (``SPEC_COUNTERS``, without ``_total``) summed over engines, and
        ``SPEC_PER_POS``: accepted tokens per draft position, in position order. A server without a draft
        has none of them: zeros and an empty list."""
        counters = read_spec_decode_counters(self) or dict.fromkeys(SPEC_COUNTERS, 0)
        return {**counters, SPEC_PER_POS: counters.get(SPEC_PER_POS) or []}


def scrape(base: str, timeout: float = 30.0) -> Metrics:
    """``GET {base}/metrics``, parsed."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout) as response:
        return Metrics(response.read().decode())


class GaugePoller:
    """Polls one gauge of ``/metrics`` in a thread while a pass runs. A scrape can wait behind a busy API
    server for longer than a short pass lasts, so only readings whose scrape began and ended inside the
    pass count (``max_within``)."""

    def __init__(self, base: str, name: str = RUNNING, every: float = 0.25) -> None:
        self.base, self.name, self.every = base, name, every
        self.readings: list[tuple[float, float, float]] = []  # (scrape sent, scrape answered, gauge)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.perf_counter()
            try:
                value = scrape(self.base).total(self.name)
                self.readings.append((sent, time.perf_counter(), value))
            except (urllib.error.URLError, OSError, ValueError):
                pass
            self._stop.wait(self.every)

    def max_within(self, start: float, end: float) -> tuple[int | None, int]:
        """(largest reading, readings) over the readings taken inside [start, end]; None: none was."""
        inside = [value for sent, answered, value in self.readings if start <= sent and answered <= end]
        return (int(max(inside)) if inside else None), len(inside)

    def __enter__(self) -> GaugePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
