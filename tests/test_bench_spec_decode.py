"""The CPU-checkable parts of benchmarks/bench_spec_decode.py: the configurations and their order, the adaptive
method's table from the run's own records, the records' schema and numbers, speedup and equality against
``none``, the spec-decode counters over a pass, the Markdown, the plot, the driver (fake children) and --help.

The passes themselves need the H200 (a GPU and vLLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import bench_spec_decode as bench
from vllm_padrec.testing import bench_driver

REPO = Path(__file__).resolve().parent.parent
REQUIRED = (  # issue 14's fields
    "method",
    "batch_size",
    "list_len",
    "gamma",
    "acceptance_length",
    "tokens_per_s",
    "p50_ms",
    "p99_ms",
    "speedup_vs_no_spec",
    "equal_to_no_spec",
    "recall_at_10",
    "ndcg_at_10",
)
BASE = ["--target", "/t", "--dataset", "/data/beauty_atspeed", "--padrec-draft", "/p", "--eagle-draft", "/e"]


def counters(rounds=0, accepted=0, per_pos=()):
    return {"rounds": rounds, "draft_tokens": 0, "accepted": accepted, "per_pos": list(per_pos)}


def test_configurations_run_none_first_the_adaptive_method_last_and_each_gamma_once():
    args = bench.parse_args([*BASE, "--methods", "padrec_adaptive", "padrec", "none", "eagle", "--gammas", "3", "5"])
    assert bench.configurations(args) == [
        ("padrec", 3),
        ("padrec", 5),
        ("none", 0),
        ("eagle", 3),
        ("eagle", 5),
        ("padrec_adaptive", 5),
    ]
    assert bench.speculative_config(args, "none", 0, None) is None
    assert bench.speculative_config(args, "eagle", 3, None) == {
        "method": "eagle",
        "model": "/e",
        "num_speculative_tokens": 3,
    }
    table = [[1, 4, 5], [5, 128, 0]]
    assert bench.speculative_config(args, "padrec_adaptive", 5, table)["num_speculative_tokens_per_batch_size"] == table
    assert bench.METHODS["eagle_vanilla"].padrec == {"mask_drafts": False} and bench.METHODS["eagle"].padrec == {}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--target", "/t", "--dataset", "/d", "--methods", "padrec"], "--padrec-draft is required"),
        ([*BASE, "--methods", "padrec_adaptive", "padrec"], "run them too"),
        ([*BASE, "--gammas", "0"], "must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_a_pass_record_has_issue_14s_fields_and_exact_numbers():
    token_ids = [[1] * 10, [2] * 20, [3] * 30]  # 60 tokens in 0.5 s
    record = bench.pass_record(
        "padrec", 5, 10, 2, [0.2, 0.3], token_ids, [[7], [8], [9]], [[7], [1], [9]], counters(4, 10, (4, 3, 2, 1, 0))
    )
    assert set(REQUIRED) <= set(record)
    assert record["tokens_per_s"] == 120.0 and record["users"] == 3
    # users 1-2 in the first call (0.2 s), user 3 in the second (0.3 s); percentiles interpolate
    assert record["p50_ms"] == 200.0 and record["p99_ms"] == 298.0
    assert record["acceptance_length"] == 3.5  # 1 + 10 accepted / 4 rounds
    assert record["accepted_per_draft_step"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert record["recall_at_10"] == round(2 / 3, 5)
    plain = bench.pass_record("none", 0, 10, 3, [0.5], token_ids, [[7]] * 3, [[7]] * 3, counters())
    assert plain["acceptance_length"] is None and plain["accepted_per_draft_step"] is None


def test_counters_over_a_pass_are_the_difference_of_vllms_totals():
    from vllm.v1.metrics.reader import Counter, Vector

    from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS

    def metrics(rounds, accepted, per_pos):
        values = dict(zip(SPEC_COUNTERS, (rounds, 5 * rounds, accepted)))
        return [Counter(name=n, labels={}, value=v) for n, v in values.items()] + [
            Vector(name=SPEC_PER_POS, labels={}, values=list(per_pos))
        ]

    before = bench.spec_counters(SimpleNamespace(get_metrics=lambda: metrics(2, 3, [2, 1])))
    after = bench.spec_counters(SimpleNamespace(get_metrics=lambda: metrics(6, 10, [6, 3, 1])))
    assert bench.counter_delta(before, after) == {"rounds": 4, "draft_tokens": 20, "accepted": 7, "per_pos": [4, 2, 1]}


def result(method, gamma, rate_by_batch: dict, lists: dict) -> dict:
    records = [
        bench.pass_record(method, gamma, 10, batch, [1.0], [[0] * int(rate)], [[1]], [[1]], counters())
        for batch, rate in rate_by_batch.items()
    ]
    return {"method": method, "gamma": gamma, "startup_seconds": 1.0, "records": records, "lists": lists}


def test_speedup_and_equality_are_against_none_at_the_same_list_length_and_batch_size():
    plain = result("none", 0, {1: 100, 64: 2000}, {"10_1": [[1, 2], [3]], "10_64": [[4]]})
    spec = result("padrec", 5, {1: 250, 64: 1500}, {"10_1": [[1, 2], [3, 9]], "10_64": [[4]]})
    bench.attach_baseline([plain, spec])
    at_1, at_64 = spec["records"]
    assert at_1["speedup_vs_no_spec"] == 2.5 and at_64["speedup_vs_no_spec"] == 0.75
    assert (at_1["equal_to_no_spec"], at_1["users_compared"]) == (1, 2) and at_64["equal_to_no_spec"] == 1
    assert plain["records"][0]["speedup_vs_no_spec"] == 1.0


def test_the_adaptive_table_speculates_only_where_padrec_won():
    args = bench.parse_args([*BASE, "--batch-sizes", "1", "64", "--list-lens", "10", "20"])
    plain = result("none", 0, {1: 100, 64: 2000}, {})
    spec3 = result("padrec", 3, {1: 200, 64: 1800}, {})
    spec5 = result("padrec", 5, {1: 250, 64: 1500}, {})
    records = [r for res in (plain, spec3, spec5) for r in res["records"]]
    assert bench.adaptive_table(records, args) == [[1, 63, 5], [64, 64, 0]]


def test_the_driver_runs_each_configuration_and_hands_the_adaptive_method_its_table(tmp_path, monkeypatch):
    ran = []

    def child(command, stdout, stderr, env):
        method, gamma = command[command.index("--one") + 1], int(command[command.index("--one-gamma") + 1])
        table = json.loads(command[command.index("--gamma-table") + 1]) if "--gamma-table" in command else None
        ran.append((method, gamma, table, Path(env["VLLM_CACHE_ROOT"]).name))
        rates = {"none": {1: 100, 64: 2000}, "padrec": {1: 250, 64: 1500}}.get(method, {1: 240, 64: 2000})
        payload = result(method, gamma, rates, {"10_1": [[1]], "10_64": [[2]]})
        Path(command[command.index("--result") + 1]).write_text(json.dumps(payload))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = [*BASE, "--methods", "none", "padrec", "padrec_adaptive", "--gammas", "5", "--batch-sizes", "1", "64"]
    argv += ["--list-lens", "10", "--out", str(tmp_path), "--work-dir", str(tmp_path), "--cache-root", str(tmp_path)]
    assert bench.main(argv) == 0
    assert ran == [
        ("none", 0, None, "none_g0"),
        ("padrec", 5, None, "padrec_g5"),
        ("padrec_adaptive", 5, [[1, 63, 5], [64, 64, 0]], "padrec_adaptive_g5"),
    ]
    payload = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())
    assert payload["adaptive_table"] == [[1, 63, 5], [64, 64, 0]] and len(payload["records"]) == 6
    adaptive_64 = [r for r in payload["records"] if r["method"] == "padrec_adaptive" and r["batch_size"] == 64][0]
    assert adaptive_64["speedup_vs_no_spec"] == 1.0 and adaptive_64["equal_to_no_spec"] == 1
    text = (tmp_path / "spec_decode_beauty_atspeed.md").read_text()
    assert "| padrec | 5 | 10 | 1 | 1 | 250.0 | 2.5 |" in text and "[[1, 63, 5], [64, 64, 0]]" in text
    assert (tmp_path / "spec_decode_beauty_atspeed.png").stat().st_size > 1000


def test_a_failed_configuration_is_named_and_the_run_goes_on(tmp_path, monkeypatch):
    def child(command, stdout, stderr, env):
        stdout.write("CUDA out of memory\n")
        return 1

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = [
        *BASE,
        "--methods",
        "none",
        "padrec_adaptive",
        "padrec",
        "--out",
        str(tmp_path),
        "--work-dir",
        str(tmp_path),
    ]
    assert bench.main(argv) == 1
    errors = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())["errors"]
    assert set(errors) == {"none_g0", "padrec_g3", "padrec_g5", "padrec_adaptive_g5"}
    assert "CUDA out of memory" in errors["none_g0"] and errors["padrec_adaptive_g5"].startswith("no table")


def test_help_names_every_option():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_spec_decode.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for option in (
        "--padrec-draft",
        "--eagle-draft",
        "--methods",
        "--gammas",
        "--batch-sizes",
        "--list-lens",
        "--render",
    ):
        assert option in done.stdout


def test_the_one_step_eagle_method_reads_its_own_draft():
    args = bench.parse_args([*BASE, "--methods", "eagle_one_step", "--eagle-one-step-draft", "/e1"])
    assert bench.speculative_config(args, "eagle_one_step", 5, None)["model"] == "/e1"
    assert "eagle_one_step" not in bench.parse_args(BASE).methods  # opt-in: it needs a head of its own
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, "--methods", "eagle_one_step"])
