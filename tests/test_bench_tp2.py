"""benchmarks/bench_tp2.py (issue 15, tensor parallelism): both vLLM benchmarks at TP = 1 and 2, read back into
one table whose float32 records say how many users' outputs equal one GPU's, and the two goals. The engines are
stand-ins here (the children of both benchmarks, faked); the run itself needs two GPUs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from test_bench_spec_decode import result as list_result
from test_bench_topk import fake_result as topk_result

from benchmarks import bench_tp2
from vllm_padrec.testing import bench_driver


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def fake_child(command, stdout, stderr, env):
    """Either benchmark's child: TP = 2 serves at 80 % of one GPU's rate, and at TP = 2 one of the float32 PAD-Rec
    lists at 64 requests, and one top-K user's items, come out otherwise."""
    tp = json.loads(option(command, "--engine-args"))["tensor_parallel_size"]
    module = option(command, "-m")
    if module == "benchmarks.bench_spec_decode":
        method, gamma = option(command, "--one"), int(option(command, "--one-gamma"))
        rate = {"none": 100.0, "padrec": 250.0}[method] * (0.8 if tp == 2 and method == "padrec" else 1.0)
        lists = {"10_1": [[1, 2]], "10_64": [[3, 4], [5, 6]]}
        if tp == 2 and method == "padrec" and option(command, "--dtype") == "float32":
            lists["10_64"] = [[3, 4], [5, 7]]
        payload = list_result(method, gamma, {1: rate, 64: 10 * rate}, lists)
        for record in payload["records"]:  # bench_spec_decode's paired batch-1 pass: 2.4x at TP = 1, 2.3x at 2
            if method == "padrec" and record["batch_size"] == 1:
                record["paired_speedup"] = 2.3 if tp == 2 else 2.4
    else:
        dtype = option(command, "--one-dtype")
        one = topk_result("engine", dtype)
        records = [{**one["records"][0], "k": 20, "batch_size": b, "users_per_s": 40.0 / tp} for b in (1, 64)]
        ranked = [[[1, -0.1], [2, -0.2]], [[3, -0.1], [4, -0.3]]]
        if tp == 2:
            ranked[1] = [[4, -0.1], [3, -0.3]]
        payload = [{**one, "records": records, "equal_lists": {"20": ranked} if dtype == "float32" else {}}]
    Path(option(command, "--result")).write_text(json.dumps(payload))
    return 0


def in_process(module: str, argv: list[str]) -> int:
    """bench_tp2's benchmark runs in this process, so that their children are the stand-ins."""
    return importlib.import_module(module).main(argv)


def test_both_workloads_run_at_each_size_and_the_outputs_are_compared_with_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_driver.subprocess, "call", fake_child)
    monkeypatch.setattr(bench_tp2, "run_module", in_process)
    monkeypatch.setattr(bench_tp2, "gpu_count", lambda: 2)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--padrec-draft", "/p"]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path), "--users", "2", "--users-latency", "1"]
    assert bench_tp2.main(argv) == 0
    payload = json.loads((tmp_path / "tp2.json").read_text())
    records = payload["records"]
    by = {(r["workload"], r["method"], r["tensor_parallel_size"], r["dtype"], r["batch_size"]): r for r in records}
    assert len(records) == 2 * 2 * 2 * 2 + 2 * 2 * 2  # lists: methods x TPs x dtypes x B; top-K: TPs x dtypes x B
    differing = by["lists", "padrec", 2, "float32", 64]
    assert (differing["equal_to_single_gpu"], differing["users_compared"]) == (1, 2)
    assert by["lists", "none", 2, "float32", 64]["equal_to_single_gpu"] == 2
    assert by["lists", "padrec", 2, "bfloat16", 1]["equal_to_single_gpu"] is None  # bfloat16: speed only
    assert by["topk", "engine", 2, "float32", 64]["equal_to_single_gpu"] == 1
    assert by["topk", "engine", 2, "bfloat16", 64]["users_per_s"] == 20.0
    assert by["lists", "padrec", 1, "bfloat16", 1]["speedup_vs_no_spec"] == 2.5
    equal, kept = payload["goals"]
    assert equal["met"] is False and "lists padrec B = 64: 1 / 2" in equal["measured"]
    assert kept["met"] is True and kept["measured"] == "2.30x against 2.40x (96%)"  # the paired speedups
    text = (tmp_path / "tp2.md").read_text()
    assert "| lists | padrec | 2 | float32 | 64 |" in text and "## Goals (issue 15)" in text


def test_collect_only_reads_the_runs_again_and_needs_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_driver.subprocess, "call", fake_child)
    monkeypatch.setattr(bench_tp2, "run_module", in_process)
    monkeypatch.setattr(bench_tp2, "gpu_count", lambda: 2)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--padrec-draft", "/p"]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path), "--users", "2"]
    assert bench_tp2.main(argv) == 0
    first = json.loads((tmp_path / "tp2.json").read_text())["records"]
    monkeypatch.setattr(bench_tp2, "gpu_count", lambda: 0)
    assert bench_tp2.main([*argv, "--collect-only"]) == 0
    assert json.loads((tmp_path / "tp2.json").read_text())["records"] == first
    assert bench_tp2.main(argv) == 2  # a run needs two GPUs


def test_bad_options_are_one_line_errors(capsys):
    import pytest

    for argv in (["--target", "/t"], ["--target", "/t", "--dataset", "/d", "--padrec-draft", "/p", "--tp", "1"]):
        with pytest.raises(SystemExit):
            bench_tp2.parse_args(argv)
    assert "--tp 1" in capsys.readouterr().err


def test_each_benchmark_runs_as_a_module_of_its_own(monkeypatch):
    ran = []
    monkeypatch.setattr(bench_tp2.subprocess, "call", lambda command: ran.append(command) or 0)
    assert bench_tp2.run_module("benchmarks.bench_topk", ["--ks", "20"]) == 0
    assert ran[0][1:] == ["-m", "benchmarks.bench_topk", "--ks", "20"]
