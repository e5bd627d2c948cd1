"""The helpers the benchmarks share (vllm_padrec/testing/): Prometheus parsing, percentiles, result writers,
draft folders, answer comparison; and that every benchmark script starts without a GPU (``--help``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS
from vllm_padrec.testing.compare import margin_at
from vllm_padrec.testing.drafts import draft_folder, draft_method, draft_steps, training_result
from vllm_padrec.testing.metrics import ITERATIONS, RUNNING, Metrics
from vllm_padrec.testing.results import write_results
from vllm_padrec.testing.stats import percentile

REPO = Path(__file__).resolve().parents[1]
# every benchmark script (the orchestrator, gpu_session.py, is tested in test_gpu_session.py)
BENCHMARKS = tuple(
    sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem not in ("__init__", "gpu_session"))
)


def served_metrics(engines: int = 2, with_draft: bool = True) -> str:
    """``/metrics`` as vLLM's Prometheus client writes it (``_total``, ``_created``, histogram series)."""
    registry = CollectorRegistry()
    labels = ["engine", "model_name"]
    if with_draft:
        drafts = Counter("vllm:spec_decode_num_drafts", "drafts", labels, registry=registry)
        tokens = Counter("vllm:spec_decode_num_draft_tokens", "draft tokens", labels, registry=registry)
        accepted = Counter("vllm:spec_decode_num_accepted_tokens", "accepted", labels, registry=registry)
        per_pos = Counter(SPEC_PER_POS, "accepted per position", [*labels, "position"], registry=registry)
    running = Gauge(RUNNING, "running", labels, registry=registry)
    steps = Histogram("vllm:iteration_tokens_total", "tokens per step", labels, buckets=(1, 8, 64), registry=registry)
    for engine in range(engines):
        names = (str(engine), "padrec-target")
        if with_draft:
            drafts.labels(*names).inc(100)
            tokens.labels(*names).inc(500)
            accepted.labels(*names).inc(180)
            for position in (2, 0, 1):  # not in position order
                per_pos.labels(*names, str(position)).inc(10 * (position + 1))
        running.labels(*names).set(32)
        for tokens_in_step in (3, 40, 64):
            steps.labels(*names).observe(tokens_in_step)
    return generate_latest(registry).decode()


def test_metrics_of_a_served_exposition_are_summed_over_engines():
    metrics = Metrics(served_metrics(engines=2))
    counters = metrics.spec_counters()
    assert [counters[name] for name in SPEC_COUNTERS] == [200, 1000, 360]
    assert counters[SPEC_PER_POS] == [20, 40, 60]  # by position
    assert metrics.total(RUNNING) == 64
    assert metrics.total(ITERATIONS) == 6  # the histogram's _count, not its _sum or buckets
    assert metrics.total("vllm:no_such_metric") == 0


def test_metrics_of_a_server_without_a_draft_have_zero_spec_counters():
    counters = Metrics(served_metrics(engines=1, with_draft=False)).spec_counters()
    assert [counters[name] for name in SPEC_COUNTERS] == [0, 0, 0] and counters[SPEC_PER_POS] == []


@pytest.mark.parametrize("n", [1, 2, 3, 10, 64, 101, 500])
def test_percentiles_are_numpy_s(n):
    values = list(np.random.default_rng(n).exponential(size=n))
    ranked = sorted(values)
    for q in (0, 1, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
        # "nearest": the value at rank round(q / 100 * (n - 1)) of the sorted values (ties to even)
        assert percentile(values, q, method="nearest") == ranked[round(q / 100 * (n - 1))]
    assert percentile([], 50) is None


def test_latency_percentiles_of_the_lossless_benchmark_take_the_nearest_rank():
    from benchmarks.vllm_lossless import latency_ms

    seconds = [0.010, 0.030, 0.020, 0.040]
    assert latency_ms(seconds, 50) == 30.0  # rank round(1.5) = 2 of [10, 20, 30, 40] ms, not interpolated
    assert latency_ms(seconds, 99) == 40.0 and latency_ms([], 50) is None


def test_results_are_written_as_json_markdown_and_png(tmp_path):
    record = {"a": 1, "b": [1.5, None], "name": "γ"}

    def figure(plt):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return fig

    written = write_results(tmp_path / "out", "run", record, "# run\n", figure)
    assert set(written) == {"json", "md", "png"}
    assert written["json"].read_text() == json.dumps(record, indent=2)
    assert json.loads(written["json"].read_text()) == record
    assert written["md"].read_text() == "# run\n"
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only what is given is written; a figure callable that draws nothing writes no PNG
    assert write_results(tmp_path / "md_only", "run", markdown="x", figure=lambda plt: None) == {
        "md": tmp_path / "md_only" / "run.md"
    }
    assert sorted(p.name for p in (tmp_path / "md_only").iterdir()) == ["run.md"]


def test_draft_folders_and_their_configs(tmp_path):
    (tmp_path / "run" / "draft").mkdir(parents=True)
    (tmp_path / "run" / "draft" / "config.json").write_text("{}")
    assert draft_folder(str(tmp_path / "run")) == str(tmp_path / "run" / "draft")
    assert draft_folder(str(tmp_path / "run" / "draft")) == str(tmp_path / "run" / "draft")
    with pytest.raises(FileNotFoundError, match="holds no draft checkpoint"):
        draft_folder(str(tmp_path))
    padrec = {"n_predict": 5, "padrec": {"variant": "padrec_no_slot", "num_draft_steps": 4}}
    assert draft_method(padrec) == "padrec_no_slot" and draft_steps(padrec) == 4
    assert draft_steps({"n_predict": 5}) == 5 and draft_method({}) == "unknown"
    medusa = {"model_type": "medusa", "num_heads": 3}
    assert draft_method(medusa) == "medusa" and draft_steps(medusa) == 3
    assert training_result(str(tmp_path / "run" / "draft")) == {}  # not written by train_draft
    (tmp_path / "run" / "result.json").write_text('{"steps": 7, "objective": "atspeed_s"}')
    assert training_result(str(tmp_path / "run" / "draft")) == {"steps": 7, "objective": "atspeed_s"}


def test_margin_at_a_token():
    assert margin_at([0.5, None, 2.0], 0) == 0.5 and margin_at([0.5, None, 2.0], 1) is None
    assert margin_at([0.5], 3) is None and margin_at(None, 0) is None and margin_at([0.5], None) is None


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_imports_no_other_benchmark(name):
    tree = ast.parse((REPO / "benchmarks" / f"{name}.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [module for module in imported if module.split(".")[0] == "benchmarks"] == []
    assert [module for module in imported if module == "vllm_padrec.cli"] == []  # nor the CLI


def test_every_benchmark_is_covered():
    assert {"bench_trie", "bench_vllm_mask", "vllm_lossless", "engine_step"} <= set(BENCHMARKS)


def test_synthetic_catalog_codes_are_distinct_and_in_range():
    from vllm_padrec.testing.catalogs import CODEBOOK, FIRST_CODES, NUM_SLOTS, synthetic_codes

    codes = synthetic_codes(5_000, seed=3)
    assert codes.shape == (5_000, NUM_SLOTS) and len({tuple(row) for row in codes.tolist()}) == 5_000
    assert 0 <= codes[:, 0].min() and codes[:, 0].max() < FIRST_CODES and codes[:, 1:].max() < CODEBOOK
    assert (synthetic_codes(5_000, seed=3) == codes).all()  # the seed fixes the catalog


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_script_prints_its_help_without_a_gpu(name):
    """Run as the orchestrator runs them (a script path, benchmarks/ first on sys.path)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
