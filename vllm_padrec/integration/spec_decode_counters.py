"""vLLM's server-wide speculative-decoding counters, and the ``speculation`` record built from them.

vLLM 0.26 reports no per-request acceptance: ``RequestOutput`` (vllm/outputs.py:85-145) and its
``RequestStateStats`` (vllm/v1/metrics/stats.py:218-236) carry no draft counts. What it does count,
per engine and since start, are the Prometheus counters ``vllm:spec_decode_num_drafts /
_num_draft_tokens / _num_accepted_tokens`` and the accepted tokens per draft position
(vllm/v1/spec_decode/metrics.py:228-264), registered only while stats logging is on (no
``--disable-log-stats``). ``SpeculationReport`` sums them over engines (the multiprocess registry with
``--api-server-count`` > 1, vllm/v1/metrics/prometheus.py:38-51) and reads them at most every
``COUNTERS_MAX_AGE_S`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

from vllm_padrec.acceptance import mean_acceptance_length

SPEC_COUNTERS = (  # the counters summed over engines, without Prometheus's "_total" suffix
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
SPEC_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"  # labelled by draft position
COUNTERS_MAX_AGE_S = 0.5  # the Prometheus registry is read at most this often


def read_spec_decode_counters(registry: Any = None) -> dict[str, Any] | None:
    """``SPEC_COUNTERS`` summed over engines, and ``SPEC_PER_POS`` as a list by draft position.

    ``registry`` is a ``prometheus_client`` registry; None: vLLM's (``get_prometheus_registry``). None when
    the counters are not registered (no speculation, or stats logging off).
    """
    if registry is None:
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        registry = get_prometheus_registry()
    totals: dict[str, Any] = {}
    per_pos: dict[int, int] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            name = sample.name[: -len("_total")]
            if name in SPEC_COUNTERS:
                totals[name] = totals.get(name, 0) + int(sample.value)
            elif name == SPEC_PER_POS and "position" in sample.labels:
                position = int(sample.labels["position"])
                per_pos[position] = per_pos.get(position, 0) + int(sample.value)
    if not totals:
        return None
    for name in SPEC_COUNTERS:
        totals.setdefault(name, 0)
    totals[SPEC_PER_POS] = [per_pos[p] for p in sorted(per_pos)] if per_pos else None
    return totals


class SpeculationReport:
    """The ``speculation`` record of an answer: the server's cumulative counters (module docstring)."""

    def __init__(self, registry: Any = None) -> None:
        self.registry = registry  # a prometheus_client registry; None: vLLM's
        self._cached: tuple[float, dict[str, Any] | None] | None = None  # (monotonic time, counters)

    def counters(self) -> dict[str, Any] | None:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > COUNTERS_MAX_AGE_S:
            self._cached = (now, read_spec_decode_counters(self.registry))
        return self._cached[1]

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "scope": "server",
            "per_request": None,
            "num_drafts": None,
            "num_draft_tokens": None,
            "num_accepted_tokens": None,
            "accepted_per_position": None,
            "mean_acceptance_length": None,
            "draft_acceptance_rate": None,
        }
        counters = self.counters()
        if counters is None:
            record["note"] = (
                "vLLM reports no per-request acceptance, and the server-wide counters are "
                "unavailable (stats logging off: --disable-log-stats)"
            )
            return record
        drafts, draft_tokens, accepted = (counters.get(name) for name in SPEC_COUNTERS)
        record.update(
            num_drafts=drafts,
            num_draft_tokens=draft_tokens,
            num_accepted_tokens=accepted,
            accepted_per_position=counters.get(SPEC_PER_POS),
            mean_acceptance_length=mean_acceptance_length(accepted, drafts),
            draft_acceptance_rate=accepted / draft_tokens if draft_tokens else None,
            note="vLLM reports no per-request acceptance: these are the server's cumulative counters over "
            f"all requests since start, read at most every {COUNTERS_MAX_AGE_S} s "
            "(mean acceptance length = 1 + accepted / drafts)",
        )
        return record
