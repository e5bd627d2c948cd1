"""The CPU-checkable parts of benchmarks/bench_topk.py: items read from beams, invalid-item and equality
counts, the records, the Markdown table, the plot, the skipped engine mode, and ``--help``.

The benchmark's passes need the H200 (benchmarks/gpu_session.py, job bench_topk); what it computes from
the answers it gets is checked here on fake answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import bench_topk
from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.testing import bench_driver

REPO = Path(__file__).resolve().parent.parent
REQUIRED = (
    "mode",
    "k",
    "batch_size",
    "p50_ms",
    "p99_ms",
    "users_per_s",
    "recall_at_k",
    "ndcg_at_k",
    "invalid_items",
    "equal_to_reference",
)


@pytest.fixture(scope="module")
def catalog():
    return generate_synthetic(SyntheticConfig(num_items=60, num_users=4, codebook_sizes=(4, 4, 4))).catalog


def unknown_codes(catalog) -> list[int]:
    """Codes of one slot each that name no item of ``catalog``."""
    known = {tuple(c) for c in catalog.codes.tolist()}
    return next(
        [a, b, c]
        for a in range(4)
        for b in range(4)
        for c in range(4)
        if (a, b, c) not in known  # 60 of the 64 SIDs are items
    )


def test_beams_are_read_as_catalog_items_or_counted_invalid(catalog):
    prompt = catalog.render_prompt([0, 1])
    tokens = [layout_token(catalog, s, c) for s, c in enumerate(unknown_codes(catalog))]
    swapped = catalog.item_token_ids(5)[::-1]  # codes in the wrong slots
    beams = [
        prompt + catalog.item_token_ids(7),  # valid
        prompt + catalog.item_token_ids(3)[:2] + [TokenLayout.EOS],  # ended early
        prompt + tokens,  # codes that name no item
        prompt + swapped,
        prompt + catalog.item_token_ids(9) + [TokenLayout.EOS],  # valid, then more tokens
    ]
    output = SimpleNamespace(sequences=[SimpleNamespace(tokens=b) for b in beams])
    items = bench_topk.beam_search_items_of(catalog, output, len(prompt))
    assert items == [7, None, None, None, 9]
    quality = bench_topk.list_quality([items, [1, 2, 1], [4]], k=3)
    assert quality == {"invalid_items": 3, "duplicate_items": 1, "short_lists": 1}


def layout_token(catalog, slot: int, code: int) -> int:
    return catalog.layout.token_id(slot, code)


def test_a_pass_record_has_the_schema_and_exact_numbers():
    lists = [[3, None, 5], [7, 8, 9], [1, 2, 4]]
    targets = [[5], [9, 1], [6]]
    record = bench_topk.pass_record("vllm_beam_search", "float32", 3, 1, [0.010, 0.030, 0.020], lists, targets)
    assert set(REQUIRED) <= set(record)
    assert record["p50_ms"] == 20.0 and record["p99_ms"] == 30.0
    assert record["users_per_s"] == 50.0  # 3 users in 0.06 s
    assert record["invalid_items"] == 1 and record["short_lists"] == 0
    # user 1: target 5 at rank 3 (after an invalid item, a miss); user 2: 9 of {9, 1} at rank 3; user 3: none
    assert record["recall_at_k"] == round((1 + 0.5 + 0) / 3, 5)
    assert record["ndcg_at_k"] == round((0.5 + 0.5 / (1 + 1 / 1.5849625007211563)) / 3, 5)
    assert record["equal_to_reference"] is None


def results_of(mode: str, dtype: str, equal_lists: dict, concurrency: int = 2) -> dict:
    records = [bench_topk.pass_record(mode, dtype, 2, batch, [0.01], [[1, 2]], [[1]]) for batch in (1, concurrency)]
    return {"mode": mode, "dtype": dtype, "startup_seconds": 1.0, "records": records, "equal_lists": equal_lists}


def scored(*lists):
    """Each user's items with scores -1, -2, ... (best first)."""
    return [[(item, -1.0 - rank) for rank, item in enumerate(items)] for items in lists]


def test_equal_to_reference_counts_users_with_the_same_items_in_the_same_order():
    reference = results_of("reference", "float32", {"2": scored([1, 2], [3, 4], [5, 6])})
    ours = results_of("engine", "float32", {"2": scored([1, 2], [4, 3], [5, 6])})  # user 2: same items, other order
    theirs = results_of("vllm_beam_search", "float32", {"2": scored([1, None], [3, 4])})  # fewer users answered
    half = results_of("engine", "bfloat16", {})
    floor = results_of("greedy_floor", "float32", {"2": scored([1], [3], [5])})  # one item: not a top-K answer
    bench_topk.attach_equality([reference, ours, theirs, half, floor], concurrency=2)
    latency, throughput = ours["records"]
    assert (throughput["equal_to_reference"], throughput["users_compared"]) == (2, 3)
    assert (theirs["records"][1]["equal_to_reference"], theirs["records"][1]["users_compared"]) == (1, 2)
    assert latency["equal_to_reference"] is None  # one request at a time: not the compared users
    assert all(r["equal_to_reference"] is None for r in half["records"] + reference["records"] + floor["records"])
    # user 2 swapped two items whose scores (-1, -2) it reports at the same ranks: the same scores
    assert throughput["differing_same_scores"] == 1 and throughput["first_difference_ranks"] == [0]
    assert throughput["max_score_difference"] == 0.0


def test_score_agreement_tells_near_ties_from_other_scores():
    reference = [[(1, -10.0), (2, -10.00001), (3, -12.0)], [(4, -3.0), (5, -4.0), (6, -5.0)]]
    near_tie = [[(2, -10.00001), (1, -10.0), (3, -12.0)], [(4, -3.0), (5, -4.0), (6, -5.0)]]  # float32 bits
    other = [[(1, -10.0), (2, -10.00001), (3, -12.0)], [(4, -3.0), (7, -4.5), (5, -4.0)]]  # another search
    tie = bench_topk.score_agreement(near_tie, reference)
    assert tie == {"max_score_difference": 1e-05, "differing_same_scores": 1, "first_difference_ranks": [0]}
    wrong = bench_topk.score_agreement(other, reference)
    assert wrong == {"max_score_difference": 1.0, "differing_same_scores": 0, "first_difference_ranks": [1]}
    unscored = bench_topk.score_agreement([[(1, None), (2, None), (3, None)]], reference)
    assert unscored["max_score_difference"] is None and unscored["differing_same_scores"] is None


def payload_of(records: list[dict], **extra) -> dict:
    return {
        "target": "/t",
        "dataset": "beauty_atspeed",
        "device": "cpu",
        "date": "today",
        "concurrency": 64,
        "records": records,
        "errors": {},
        **extra,
    }


def test_the_markdown_table_has_one_row_per_record_and_names_failed_configurations():
    record = bench_topk.pass_record("reference", "float32", 20, 64, [0.5, 0.25], [[1], [2]], [[1], [3]])
    record |= {"equal_to_reference": 1, "users_compared": 2, "max_score_difference": 2e-06, "differing_same_scores": 1}
    text = bench_topk.markdown(payload_of([record], errors={"vllm_beam_search_float32": "exit 1: boom"}))
    rows = [line for line in text.splitlines() if line.startswith("| reference")]
    assert rows == [
        "| reference | float32 | 20 | 64 | 2 | 250.0 | 500.0 | 2.67 | 0.5 | 0.5 | 0 | 1 / 2 (1 of 1 others: same "
        "scores) | 2e-06 | - | - | - |"
    ]
    assert "| engine" not in text
    assert "Configuration vllm_beam_search_float32: `exit 1: boom`" in text


def test_drafted_records_carry_n_gamma_and_the_objective_and_one_requests_forwards():
    args = bench_topk.parse_args(["--target", "/t", "--dataset", "/d", "--draft", "/h", "--gamma", "4"])
    assert args.modes == ["reference", "vllm_beam_search", "engine", "greedy_floor", "strict"]  # --draft adds strict
    strict = bench_topk.drafting_fields(args, "strict", 1, 2.0)
    assert strict == {"draft_beams": 1, "gamma": 4, "objective": "distill", "target_forwards_per_request": 2.0}
    assert bench_topk.drafting_fields(args, "strict", 64, 2.0)["target_forwards_per_request"] is None
    assert bench_topk.drafting_fields(args, "engine", 1, 4.0) == {
        "draft_beams": None,
        "gamma": None,
        "objective": None,
        "target_forwards_per_request": 4.0,
    }
    record = bench_topk.pass_record("strict", "bfloat16", 20, 1, [0.01], [[1]], [[1]]) | strict
    row = next(line for line in bench_topk.markdown(payload_of([record])).splitlines() if line.startswith("| strict"))
    assert row.endswith("| N = 1, γ = 4, distill |")


def test_drafted_modes_need_a_draft_and_relaxed_more_than_one_draft_beam(capsys):
    base = ["--target", "/t", "--dataset", "/d"]
    assert "strict" not in bench_topk.parse_args(base).modes
    assert bench_topk.parse_args([*base, "--draft", "/h", "--draft-beams", "4"]).modes[-2:] == ["strict", "relaxed"]
    with pytest.raises(SystemExit):
        bench_topk.parse_args([*base, "--modes", "engine", "strict"])
    assert "modes ['strict'] need --draft" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_topk.parse_args([*base, "--modes", "relaxed", "--draft", "/h"])
    assert "mode relaxed needs --draft-beams >= 2" in capsys.readouterr().err


def test_every_drafted_mode_runs_once_per_head_side_by_side(tmp_path, monkeypatch, capsys):
    """--drafts OBJECTIVE=FOLDER...: each drafted configuration runs once per head, the head and its objective
    given to the child (the last --draft and --objective win); undrafted modes run once."""
    ran = []

    def child(command, stdout, stderr, env):
        one = bench_topk.parse_args(command[command.index("-m") + 2 :])  # the child's own parse
        (mode,) = child_modes(command)
        ran.append((mode, one.draft, one.objective, Path(env["VLLM_CACHE_ROOT"]).name))
        record = fake_result(mode, one.one_dtype)
        record["records"][0] |= bench_topk.drafting_fields(one, mode, 1, 2.0)
        Path(command[command.index("--result") + 1]).write_text(json.dumps([record]))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "5", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "engine", "strict", "--dtypes", "bfloat16"]
    argv += ["--drafts", "distill=/heads/d", "atspeed_s=/heads/s"]
    assert bench_topk.main(argv) == 0
    assert ran == [
        ("engine", "/heads/d", "distill", "engine_bfloat16"),
        ("strict", "/heads/d", "distill", "strict_bfloat16_distill"),
        ("strict", "/heads/s", "atspeed_s", "strict_bfloat16_atspeed_s"),
    ]
    records = json.loads((tmp_path / "topk_beauty_atspeed.json").read_text())["records"]
    assert [(r["mode"], r["objective"]) for r in records] == [
        ("engine", None),
        ("strict", "distill"),
        ("strict", "atspeed_s"),
    ]
    for bad in (["--drafts", "distill"], ["--drafts", "fast=/h"], ["--drafts", "distill=/a", "distill=/b"]):
        with pytest.raises(SystemExit):
            bench_topk.parse_args(["--target", "/t", "--dataset", "/d", *bad])
        assert "--drafts" in capsys.readouterr().err


def test_the_strict_mode_builds_an_engine_that_drafts_its_beams(monkeypatch):
    """The strict mode's LLM: the draft as vLLM's speculative model, padrec.topk_draft_beams N, token rows for
    every draft; its requests ask for the strict rule."""
    import vllm

    from vllm_padrec.topk import offline

    built, asked = [], []

    class FakeLLM:
        def __init__(self, **kwargs):
            built.append(kwargs)
            self.llm_engine = SimpleNamespace(engine_core=None, step=lambda: None)

    def recommend(llm, catalog, histories, k, max_history=None, verification=None):
        asked.append(verification)
        return [[(0, -1.0)] for _ in histories]

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    monkeypatch.setattr(offline, "recommend_topk", recommend)
    argv = ["--target", "/t", "--dataset", "/d", "--draft", "/h", "--gamma", "2", "--ks", "5", "--concurrency", "4"]
    args = bench_topk.parse_args([*argv, "--one", "strict", "--one-dtype", "bfloat16"])
    ranker = bench_topk.RANKERS["strict"](args, None, 8)
    (kwargs,) = built
    assert kwargs["speculative_config"] == {"method": "eagle", "model": "/h", "num_speculative_tokens": 2}
    assert kwargs["additional_config"]["padrec"] == {"max_topk": 5, "topk_max_beams": 20, "topk_draft_beams": 1}
    assert ranker.rank([[1, 2]], 5) == [[(0, -1.0)]] and asked == ["strict"]
    bench_topk.RANKERS["engine"](args, None, 8).rank([[1]], 5)
    assert "speculative_config" not in built[1] and asked == ["strict", None]


def test_the_plot_is_written_from_the_latency_records(tmp_path):
    records = [
        bench_topk.pass_record(mode, "bfloat16", k, 1, [0.001 * k], [[1]], [[1]])
        for mode in ("reference", "vllm_beam_search")
        for k in (1, 10, 100)
    ]
    path = tmp_path / "topk_x.json"
    path.write_text(json.dumps(payload_of(records)))
    bench_topk.main(["--render", str(path), "--note", "a note"])
    assert (tmp_path / "topk_x.png").stat().st_size > 1000
    assert json.loads(path.read_text())["note"] == "a note"
    assert "Note: a note" in (tmp_path / "topk_x.md").read_text()
    throughput_only = [bench_topk.pass_record("engine", "float32", 1, 64, [0.1], [[1]], [[1]])]
    assert bench_topk.plot(None, payload_of(throughput_only)) is None  # no one-at-a-time record: nothing to draw


def test_help_names_every_option():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_topk.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for option in ("--modes", "--ks", "--users-latency", "--users-equal", "--concurrency", "--dtypes", "--render"):
        assert option in done.stdout
    assert "engine" in done.stdout and "vllm_beam_search" in done.stdout


def test_timed_calls_count_the_engine_steps_and_forwards_of_each_call():
    from vllm_padrec.testing.timing import EngineSteps

    runner = SimpleNamespace(sample_tokens=lambda: None)
    worker = SimpleNamespace(worker=SimpleNamespace(model_runner=runner))
    core = SimpleNamespace(engine_core=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker)))
    llm = SimpleNamespace(llm_engine=SimpleNamespace(step=lambda: [], engine_core=core))
    steps_counter = EngineSteps(llm)

    def rank(histories, k):  # an engine that needs L + 1 = 5 steps per call, L = 4 of them with a forward
        for step in range(5):
            if step < 4:
                runner.sample_tokens()
            llm.llm_engine.step()
        return [[(h[0], -1.0)] * k for h in histories]

    ranker = bench_topk.Ranker(rank, steps_counter)
    seconds, ranked, steps, forwards = bench_topk.timed_calls(ranker, [[1], [2], [3]], 2, batch_size=2)
    assert len(seconds) == 2 and ranked == [[(1, -1.0)] * 2, [(2, -1.0)] * 2, [(3, -1.0)] * 2]
    assert (steps, forwards) == (5.0, 4.0) and (steps_counter.count, steps_counter.forwards) == (10, 8)
    reference = bench_topk.Ranker(lambda histories, k: [[]] * len(histories))
    assert bench_topk.timed_calls(reference, [[1]], 1, batch_size=1)[2:] == (None, None)  # no engine
    elsewhere = EngineSteps(SimpleNamespace(llm_engine=SimpleNamespace(step=lambda: [], engine_core=object())))
    assert elsewhere.forwards is None  # the engine core runs in another process: forwards are not counted


def test_profile_call_writes_python_and_torch_profiles(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)  # the CPU machine: no CUDA to wait for

    def rank(histories, k):
        return [[(h[0], float(torch.ones(3).sum()))] * k for h in histories]

    path = tmp_path / "profile.txt"
    bench_topk.profile_call(rank, [[1], [2]], 2, path)
    text = path.read_text()
    assert text.startswith("2 users, K = 2; the call under Python's profiler took")
    assert "| `rank (" in text  # Python's profile names the ranker
    assert "aten::sum" in text  # the torch profiler's table names its tensor operations


def test_float32_configurations_run_triton_dots_in_the_precision_asked_for():
    args = bench_topk.parse_args(["--target", "t", "--dataset", "d"])
    assert bench_topk.dot_precision("float32", args) == {"TRITON_F32_DEFAULT": "ieee"}
    assert bench_topk.dot_precision("bfloat16", args) == {}  # bfloat16 dots are not TF32's business
    tf32 = bench_topk.parse_args(["--target", "t", "--dataset", "d", "--triton-f32", "tf32"])
    assert bench_topk.dot_precision("float32", tf32) == {"TRITON_F32_DEFAULT": "tf32"}


def test_kv_blocks_per_request_averages_the_admissions_of_a_pass():
    from vllm_padrec.topk.admission import Admission

    admitted = [Admission(k=20, prompt_blocks=7, blocks=48, private_blocks=40), Admission(20, 6, 46, 40)]
    assert bench_topk.kv_blocks(admitted) == {"kv_blocks_per_request": 47.0, "prompt_blocks_per_request": 6.5}
    assert bench_topk.kv_blocks([]) == {"kv_blocks_per_request": None, "prompt_blocks_per_request": None}


def test_float32_runs_only_the_exact_modes_and_results_are_written_after_each_configuration(tmp_path, monkeypatch):
    """--exact-modes keeps float32 to the equality check's modes; a run cut short keeps what it measured."""
    ran, seen_partial = [], []

    def child(command, stdout, stderr, env):
        (mode,), dtype = child_modes(command), command[command.index("--one-dtype") + 1]
        ran.append((mode, dtype))
        if len(ran) == 2:  # the first configuration's results are on disk while the second runs
            seen_partial.append(json.loads((tmp_path / "topk_beauty_atspeed.json").read_text()))
        Path(command[command.index("--result") + 1]).write_text(json.dumps([fake_result(mode, dtype)]))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "5", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "reference", "vllm_beam_search", "greedy_floor"]
    assert bench_topk.main([*argv, "--dtypes", "bfloat16", "float32", "--exact-modes", "reference"]) == 0
    assert ran == [("reference", "bfloat16"), ("reference", "float32"), ("vllm_beam_search", "bfloat16")] + [
        ("greedy_floor", "bfloat16")
    ]
    (partial,) = seen_partial
    assert partial["note"].startswith("partial: 1 configurations done") and len(partial["records"]) == 1
    final = json.loads((tmp_path / "topk_beauty_atspeed.json").read_text())
    assert "note" not in final and final["exact_modes"] == ["reference"] and len(final["records"]) == 4


def test_a_child_that_wrote_its_result_then_aborted_keeps_its_records_and_reports_the_exit(tmp_path, monkeypatch):
    """An engine that aborts at teardown after the measurements (exit -6 on the H200) loses no records; a child
    that wrote nothing is a failure; both are reported and the run exits 1."""

    def child(command, stdout, stderr, env):
        (mode,), dtype = child_modes(command), command[command.index("--one-dtype") + 1]
        if mode == "reference":
            Path(command[command.index("--result") + 1]).write_text(json.dumps([fake_result(mode, dtype)]))
            return -6
        return 1

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "5", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "reference", "greedy_floor", "--dtypes", "bfloat16"]
    assert bench_topk.main(argv) == 1
    final = json.loads((tmp_path / "topk_beauty_atspeed.json").read_text())
    assert [r["mode"] for r in final["records"]] == ["reference"]
    assert final["errors"]["reference_bfloat16"].startswith("exit -6 after writing its result")
    assert final["errors"]["greedy_floor_bfloat16"].startswith("exit 1 without a result")
    markdown = (tmp_path / "topk_beauty_atspeed.md").read_text()
    assert "Configuration reference_bfloat16: `exit -6 after writing its result" in markdown


def child_modes(command: list[str]) -> list[str]:
    """The modes a child process is asked to run (``--one MODE...``)."""
    start = command.index("--one") + 1
    return command[start : command.index("--one-dtype", start)]


def fake_result(mode: str, dtype: str) -> dict:
    record = bench_topk.pass_record(mode, dtype, 5, 1, [0.01, 0.02], [[1, 2, 3, 4, 5]] * 2, [[1], [9]])
    return {"mode": mode, "dtype": dtype, "startup_seconds": 1.0, "records": [record], "equal_lists": {}}


def test_the_greedy_floor_runs_in_the_engine_modes_process_where_both_run(tmp_path, monkeypatch):
    """One process (one engine start-up) for the engine and its floor in bfloat16; float32 has no floor."""
    ran = []

    def child(command, stdout, stderr, env):
        modes, dtype = child_modes(command), command[command.index("--one-dtype") + 1]
        ran.append((tuple(modes), dtype, Path(env["VLLM_CACHE_ROOT"]).name))
        Path(command[command.index("--result") + 1]).write_text(json.dumps([fake_result(m, dtype) for m in modes]))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "5", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "greedy_floor", "engine", "reference"]
    assert bench_topk.main([*argv, "--dtypes", "bfloat16", "float32", "--exact-modes", "reference", "engine"]) == 0
    assert ran == [
        (("engine", "greedy_floor"), "bfloat16", "engine_greedy_floor_bfloat16"),
        (("engine",), "float32", "engine_float32"),
        (("reference",), "bfloat16", "reference_bfloat16"),
        (("reference",), "float32", "reference_float32"),
    ]
    records = json.loads((tmp_path / "topk_beauty_atspeed.json").read_text())["records"]
    assert [(r["mode"], r["dtype"]) for r in records] == [
        ("engine", "bfloat16"),
        ("greedy_floor", "bfloat16"),
        ("engine", "float32"),
        ("reference", "bfloat16"),
        ("reference", "float32"),
    ]
    without_engine = bench_topk.parse_args([*argv[:-4], "--modes", "greedy_floor", "reference"])
    assert bench_topk.configurations(without_engine)[0] == (("greedy_floor",), "bfloat16", "in_process")


def test_a_process_of_several_modes_builds_one_engine_for_the_modes_that_share_it(monkeypatch, tmp_path):
    built = []

    def ranker(mode):
        def build(args, catalog, max_history, llm=None):
            built.append((mode, llm))
            return bench_topk.Ranker(lambda histories, k: [[]] * len(histories), llm=llm or f"{mode}'s LLM")

        return build

    monkeypatch.setattr(bench_topk, "RANKERS", {m: ranker(m) for m in bench_topk.MODES})
    monkeypatch.setattr(bench_topk.ItemCatalog, "load", staticmethod(lambda path: None))
    monkeypatch.setattr("vllm_padrec.integration.recommendation_service.read_max_history", lambda path: 20)
    users = [SimpleNamespace(history=[1], targets=[2])] * 3
    monkeypatch.setattr("vllm_padrec.data.load_dataset", lambda path: SimpleNamespace(eval_samples=lambda *a: users))
    args = bench_topk.parse_args(["--target", "/t", "--dataset", "/d", "--ks", "1", "--one", "engine", "greedy_floor"])
    args.one_dtype, args.concurrency = "bfloat16", 2
    results = bench_topk.run_config(args)
    assert [r["mode"] for r in results] == ["engine", "greedy_floor"]
    assert built == [("engine", None), ("greedy_floor", "engine's LLM")]


def test_a_k_whose_warm_up_call_is_slow_times_one_call_of_users_except_in_float32(monkeypatch):
    """--slow-call-seconds: vLLM's beam search took 56 s a 64-user call at K = 100; its pass times one call then."""
    clock = [0.0]
    monkeypatch.setattr(bench_topk.time, "perf_counter", lambda: clock[0])

    def rank(histories, k):  # a call of several users takes 20 s at K = 100, 1 s below it
        clock[0] += (20.0 if k == 100 else 1.0) if len(histories) > 1 else 0.01
        return [[(h[0], -1.0)] * k for h in histories]

    users = [SimpleNamespace(history=[i], targets=[i]) for i in range(8)]
    argv = ["--target", "/t", "--dataset", "/d", "--ks", "5", "100", "--users", "8", "--users-latency", "2"]
    args = bench_topk.parse_args([*argv, "--users-equal", "6", "--concurrency", "2", "--warmup-calls", "1"])
    counts = {}
    for dtype in ("bfloat16", "float32"):
        args.one_dtype = dtype
        result = bench_topk.measure(args, "vllm_beam_search", bench_topk.Ranker(rank), users, 1.0)
        counts[dtype] = {(r["k"], r["batch_size"]): r["users"] for r in result["records"]}
    assert counts["bfloat16"] == {(5, 1): 2, (5, 2): 8, (100, 1): 2, (100, 2): 2}
    assert counts["float32"] == {(5, 2): 8, (100, 2): 8}  # the equality check's users, however slow


def test_own_process_modes_run_once_more_with_the_engine_core_in_its_own_process(tmp_path, monkeypatch):
    """--own-process-modes: an extra configuration per engine (the floor still in the engine mode's), bfloat16
    only, at --own-process-ks; its records say engine_core and the Markdown names them."""
    ran = []

    def child(command, stdout, stderr, env):
        modes, dtype = child_modes(command), command[command.index("--one-dtype") + 1]
        core = command[command.index("--one-engine-core") + 1]
        after = command[command.index("--one-engine-core") :]  # what the driver adds for the configuration
        ks = after[after.index("--ks") + 1 : after.index("--result")] if "--ks" in after else None
        ran.append((tuple(modes), dtype, core, ks, Path(env["VLLM_CACHE_ROOT"]).name))
        results = [fake_result(m, dtype) for m in modes]
        for result in results:
            result["engine_core"] = core
            for r in result["records"]:
                r["engine_core"] = core
        Path(command[command.index("--result") + 1]).write_text(json.dumps(results))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "engine", "greedy_floor", "--dtypes", "bfloat16", "float32"]
    argv += ["--exact-modes", "engine", "--own-process-modes", "engine", "greedy_floor", "--own-process-ks", "20"]
    assert bench_topk.main(argv) == 0
    assert [(modes, dtype, core) for modes, dtype, core, _, _ in ran] == [
        (("engine", "greedy_floor"), "bfloat16", "in_process"),
        (("engine",), "float32", "in_process"),
        (("engine", "greedy_floor"), "bfloat16", "own_process"),
    ]
    assert ran[-1][3] == ["20"] and ran[-1][4] == "engine_greedy_floor_bfloat16_own_process"
    text = (tmp_path / "topk_beauty_atspeed.md").read_text()
    assert "| engine (own process) | bfloat16 |" in text and "| engine | bfloat16 |" in text
    assert bench_topk.parse_args(argv[:4]).own_process_modes == []  # none by default


def test_an_engine_core_in_its_own_process_has_no_step_counter():
    """Its front end's step calls read outputs; they are not engine steps (records then carry None)."""
    runner = SimpleNamespace(sample_tokens=lambda: None)
    worker = SimpleNamespace(worker=SimpleNamespace(model_runner=runner))
    core = SimpleNamespace(engine_core=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker)))
    in_process = SimpleNamespace(llm_engine=SimpleNamespace(step=lambda: [], engine_core=core))
    assert bench_topk.engine_steps(in_process) is not None
    own_process = SimpleNamespace(llm_engine=SimpleNamespace(step=lambda: [], engine_core=object()))
    assert bench_topk.engine_steps(own_process) is None


def test_engine_args_reach_every_vllm_engine_and_bad_json_is_a_one_line_error(capsys):
    """--engine-args: a JSON object merged into each vLLM mode's LLM arguments (and recorded); anything else is
    refused by argparse, naming the option."""
    base = ["--target", "/t", "--dataset", "/d"]
    args = bench_topk.parse_args([*base, "--engine-args", '{"enable_prefix_caching": false}'])
    args.one_dtype = "float32"
    assert bench_topk.engine_arguments(args)["enable_prefix_caching"] is False
    plain = bench_topk.parse_args(base)
    plain.one_dtype = "float32"
    assert "enable_prefix_caching" not in bench_topk.engine_arguments(plain)
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(SystemExit):
            bench_topk.parse_args([*base, "--engine-args", bad])
        assert "--engine-args" in capsys.readouterr().err


def test_merge_keeps_an_earlier_runs_records_that_this_run_does_not_measure(tmp_path, monkeypatch):
    """--merge: the results file's records of other measurements stay, marked with their run's date; a
    measurement this run makes again replaces the earlier one, also where the earlier file predates the records'
    ``engine_core`` field (its records ran in process); without --merge the file is this run's only."""
    earlier = fake_result("engine", "bfloat16")["records"]  # no engine_core, as in the file of 2026-12-01
    earlier += [{**earlier[0], "k": 50}]  # K = 5 (measured again below) and K = 50 (not)
    name = tmp_path / "topk_beauty_atspeed.json"

    def child(command, stdout, stderr, env):
        (mode,) = child_modes(command)
        result = fake_result(mode, command[command.index("--one-dtype") + 1])
        result["records"][0] |= {"p50_ms": 7.0, "engine_core": "in_process"}  # this run's, as run_config marks it
        Path(command[command.index("--result") + 1]).write_text(json.dumps([result]))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "5", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "engine", "--dtypes", "bfloat16"]
    for merge, want in ((True, [(50, 10.0, "2026-12-01T00:00:00+0000"), (5, 7.0, None)]), (False, [(5, 7.0, None)])):
        name.write_text(json.dumps({"date": "2026-12-01T00:00:00+0000", "records": earlier}))
        assert bench_topk.main(argv + (["--merge"] if merge else [])) == 0
        payload = json.loads(name.read_text())
        assert [(r["k"], r["p50_ms"], r.get("measured_on")) for r in payload["records"]] == want
        markdown = (tmp_path / "topk_beauty_atspeed.md").read_text()
        assert ("engine (run of 2026-12-01)" in markdown) == merge


def test_relaxed_rounds_run_in_the_strict_modes_engine_once_per_head(tmp_path, monkeypatch):
    """The verification rule is a request setting: one engine start-up per head serves both drafted modes in
    bfloat16; float32 (the equality check) runs strict alone."""
    ran = []

    def child(command, stdout, stderr, env):
        modes, dtype = child_modes(command), command[command.index("--one-dtype") + 1]
        ran.append((tuple(modes), dtype, command[command.index("--draft", command.index("--one")) + 1]))
        Path(command[command.index("--result") + 1]).write_text(json.dumps([fake_result(m, dtype) for m in modes]))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "5", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--modes", "relaxed", "strict", "--draft-beams", "4"]
    argv += ["--drafts", "distill=/d", "atspeed_s=/s", "--dtypes", "bfloat16", "float32", "--exact-modes", "strict"]
    assert bench_topk.main(argv) == 0
    assert ran == [
        (("strict", "relaxed"), "bfloat16", "/d"),
        (("strict", "relaxed"), "bfloat16", "/s"),
        (("strict",), "float32", "/d"),
        (("strict",), "float32", "/s"),
    ]
    command = json.loads((tmp_path / "topk_beauty_atspeed.json").read_text())["command"]  # for the results page
    assert command.startswith("python3 -m benchmarks.bench_topk --target /t ") and "atspeed_s=/s" in command


def test_a_drafted_engine_gets_the_raised_cuda_graph_limit_unless_engine_args_set_their_own(tmp_path, monkeypatch):
    """N = 40 at K = 20 needs 560-token graphs for one request (``topk_engine_args``); ``--engine-args`` keeps
    the last word on ``compilation_config``, key by key."""
    import vllm

    made = []

    class FakeLLM:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace())

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    argv = ["--target", "/t", "--dataset", str(tmp_path / "beauty_atspeed"), "--ks", "20", "--out", str(tmp_path)]
    argv += ["--draft", "/d", "--draft-beams", "40", "--gamma", "3", "--concurrency", "1"]
    for extra, want in (
        ([], {"max_cudagraph_capture_size": 560}),
        (["--engine-args", '{"compilation_config": {"max_cudagraph_capture_size": 1024}}'], None),
        (["--engine-args", '{"compilation_config": {"mode": 0}}'], {"max_cudagraph_capture_size": 560, "mode": 0}),
    ):
        args = bench_topk.parse_args([*argv, *extra])
        args.one_dtype = "bfloat16"
        bench_topk.engine_ranker(args, catalog=None, max_history=20, verification="strict")
        assert made[-1]["compilation_config"] == (want or {"max_cudagraph_capture_size": 1024})
        assert made[-1]["speculative_config"]["num_speculative_tokens"] == 3


def test_profiling_one_request_only_leaves_out_the_concurrent_call():
    base = ["--target", "/t", "--dataset", "/d", "--profile", "--concurrency", "64"]
    both = bench_topk.profiled_passes(bench_topk.parse_args(base), ["a"], ["b"] * 64)
    assert [batch for batch, _ in both] == [1, 64]
    one = bench_topk.profiled_passes(bench_topk.parse_args([*base, "--profile-one-request"]), ["a"], ["b"])
    assert one == [(1, ["a"])]


def test_a_record_from_before_the_tensor_parallel_field_merges_as_one_gpus():
    old = {"mode": "engine", "dtype": "bfloat16", "k": 20, "batch_size": 1}  # ran in process, on one GPU
    assert bench_topk.record_key(old) == bench_topk.record_key(old | {"tensor_parallel_size": 1})
    assert bench_topk.record_key(old) != bench_topk.record_key(old | {"tensor_parallel_size": 2})
