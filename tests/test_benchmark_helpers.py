"""The CPU-checkable parts of the GPU benchmarks: metric parsing, derived numbers, benchmark inputs.

The benchmarks themselves need the H200 (benchmarks/gpu_session.py); what they compute from what
they measure is checked here, so that a wrong parser or formula cannot hide behind a GPU run. The
helpers they share (vllm_padrec/testing/) are checked in tests/test_testing_helpers.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_vllm_mask, vllm_lossless
from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.integration.spec_decode_counters import SPEC_PER_POS
from vllm_padrec.lists.masks import mask_draft_logits, mask_verification_logits
from vllm_padrec.lists.spec import LIST_START
from vllm_padrec.lists.tables import CatalogTables
from vllm_padrec.testing import mask_inputs
from vllm_padrec.testing.compare import top_margins
from vllm_padrec.testing.metrics import ITERATIONS, RUNNING, GaugePoller, Metrics

METRICS = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="padrec-target"} 100.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="padrec-target"} 500.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="padrec-target"} 180.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="padrec-target",position="1"} 50.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="padrec-target",position="0"} 80.0
vllm:num_requests_running{engine="0",model_name="padrec-target"} 64.0
vllm:iteration_tokens_total_count{engine="0",model_name="padrec-target"} 1234.0
vllm:iteration_tokens_total_sum{engine="0",model_name="padrec-target"} 9999.0
"""


def test_spec_decode_counters_and_gauges_are_parsed():
    metrics = Metrics(METRICS)
    counters = metrics.spec_counters()
    assert counters["vllm:spec_decode_num_drafts"] == 100
    assert counters["vllm:spec_decode_num_accepted_tokens"] == 180
    assert counters[SPEC_PER_POS] == [80, 50]  # ordered by position, not by line
    assert metrics.total(RUNNING) == 64
    assert metrics.total(ITERATIONS) == 1234  # _count only, not _sum


def test_constraint_cost_is_the_step_time_difference():
    cost = vllm_lossless.constraint_cost({"mean_step_ms": 10.5}, {"mean_step_ms": 10.0})
    assert cost["difference_ms"] == pytest.approx(0.5) and cost["relative"] == pytest.approx(0.05)
    assert vllm_lossless.constraint_cost({"mean_step_ms": None}, {"mean_step_ms": 10.0})["difference_ms"] is None


@pytest.mark.parametrize("num_drafts", [3, 5])
def test_mask_benchmark_inputs_take_the_valid_path(num_drafts):
    """Every verification row must keep its request's true next token and little else: the benchmark
    times the masks on real lists, not on rows that the constraint leaves alone."""
    catalog = generate_synthetic(SyntheticConfig(num_items=300, num_users=4)).catalog
    tables = CatalogTables.build(catalog)
    width = mask_inputs.LIST_ITEMS * tables.period
    batch = 6
    x = mask_inputs.make_inputs(catalog, batch, num_drafts, seed=1, device="cpu")
    mask_verification_logits(x["verify_logits"], *mask_inputs.verification_args(x, tables, num_drafts, width))
    logits = x["verify_logits"].view(batch, num_drafts + 1, -1)  # [B, K+1, V]
    fed = x["fed_tokens"].view(batch, num_drafts + 1)  # [B, K+1]: last committed token, d_0 .. d_{K-1}
    for b in range(batch):
        for j in range(num_drafts):
            assert torch.isfinite(logits[b, j, fed[b, j + 1]]), f"row {j} of request {b} refuses its next token"
    kept = torch.isfinite(logits).sum(-1)  # [B, K+1]
    assert (kept >= 1).all() and (kept < catalog.layout.vocab_size).all()  # masked, never emptied
    mask_draft_logits(x["draft_logits"], *mask_inputs.draft_args(x, tables, width))
    k = int(x["draft_step"])
    chosen = x["draft_logits"].gather(1, x["drafts"][:, k : k + 1])  # [B, 1] the true token at step k
    assert torch.isfinite(chosen).all()
    assert (torch.isfinite(x["draft_logits"]).sum(-1) < catalog.layout.vocab_size).all()
    assert int(x["settings"][0, LIST_START]) == mask_inputs.PROMPT_LEN
    assert int(x["all_token_ids"][0, mask_inputs.PROMPT_LEN - 1]) == TokenLayout.REC


def test_mismatches_report_the_top2_gap_at_their_first_difference():
    choice = {
        "logprobs": {"top_logprobs": [{"<a_1>": -0.1, "<a_2>": -2.5}, {"<b_3>": -0.70, "<b_4>": -0.71}, {"<sep>": 0.0}]}
    }
    margins = top_margins(choice)
    assert margins[0] == pytest.approx(2.4) and margins[1] == pytest.approx(0.01) and margins[2] is None
    assert top_margins({"logprobs": None}) == []
    catalog = generate_synthetic(SyntheticConfig(num_items=50, num_users=4)).catalog
    a_items, b_items = catalog.render_completion([0, 1]), catalog.render_completion([0, 2])
    first = next(i for i, (x, y) in enumerate(zip(a_items, b_items)) if x != y)
    reference = [{"token_ids": a_items, "margins": [1.0] * first + [0.004] + [1.0] * 20}, {"token_ids": [1, 2]}]
    other = [{"token_ids": b_items, "margins": [1.0] * first + [0.002] + [1.0] * 20}, {"token_ids": [1, 2]}]
    result = vllm_lossless.compare(reference, other, ["u0", "u1"], catalog)
    assert result["mismatched_users"] == 1
    (gap,) = result["first_difference_margins"]
    assert gap["user"] == "u0" and gap["first_different_token"] == first
    assert gap["reference_margin"] == pytest.approx(0.004) and gap["other_margin"] == pytest.approx(0.002)
    assert result["max_margin_at_first_difference"] == pytest.approx(0.004)


def summary_args(users: int):
    """engine_step's arguments that ``summarize`` reads, for ``users`` users at that concurrency."""
    from types import SimpleNamespace

    return SimpleNamespace(
        target="t",
        draft="d",
        dataset="x",
        users=users,
        concurrency=users,
        list_items=1,
        dtype="bfloat16",
        max_cudagraph_capture_size=None,
        cudagraph_mode="vllm",
        max_num_seqs=None,
        gamma=None,
    )


def test_engine_step_table_config_drafts_gamma_below_max_num_seqs_and_nothing_at_it():
    """``spec_table``'s table, read by vLLM's own lookup: gamma at one request, 0 at max_num_seqs; the other
    draft configurations have no table, and --gamma reaches vLLM only when given."""
    from types import SimpleNamespace

    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    from benchmarks import engine_step

    args = SimpleNamespace(draft="d", gamma=5, concurrency=1, max_num_seqs=16)
    table = engine_step.speculative_config(args, "spec_table")
    assert table["num_speculative_tokens"] == 5
    lookup = build_dynamic_sd_schedule_lookup(table["num_speculative_tokens_per_batch_size"], 16, 5)
    assert lookup[1] == 5 and lookup[15] == 5 and lookup[16] == 0
    plain = {"method": "eagle", "model": "d", "num_speculative_tokens": 5}
    assert engine_step.speculative_config(args, "spec") == plain
    default = SimpleNamespace(draft="d", gamma=None, concurrency=4, max_num_seqs=None)
    assert engine_step.speculative_config(default, "spec") == {"method": "eagle", "model": "d"}
    assert engine_step.max_num_seqs(default) == 4


def test_engine_step_runs_the_users_concurrency_a_call_and_times_each_call(monkeypatch):
    from types import SimpleNamespace

    from benchmarks import engine_step

    clock, calls = [0.0], []

    def generate(prompts, params, use_tqdm):
        calls.append(list(prompts))
        clock[0] += 0.01 * len(prompts)  # a call's seconds: 10 ms a request
        return list(prompts)

    monkeypatch.setattr(engine_step.time, "perf_counter", lambda: clock[0])
    seconds = []
    assert engine_step.generate(SimpleNamespace(generate=generate), list(range(5)), None, 2, seconds) == [0, 1, 2, 3, 4]
    assert calls == [[0, 1], [2, 3], [4]]
    assert seconds == pytest.approx([0.02, 0.02, 0.01])


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--configs", "spec_table", "--max-num-seqs", "4"], "spec_table needs --gamma"),
        (["--configs", "spec_table", "--gamma", "3"], "spec_table drafts nothing at max_num_seqs (1)"),
        (["--max-num-seqs", "1", "--concurrency", "2"], "--max-num-seqs 1 is below --concurrency 2"),
        (["--profile-first-token"], "--profile-first-token profiles the configurations of --profile"),
        (["--cudagraph-mode", "FULL"], "--cudagraph-mode: invalid choice: 'FULL'"),
    ],
)
def test_engine_step_refuses_settings_that_would_not_measure_what_they_name(extra, problem, capsys):
    from benchmarks import engine_step

    with pytest.raises(SystemExit):
        engine_step.main(["--target", "t", "--draft", "d", "--dataset", "x", "--concurrency", "1", *extra])
    assert problem in capsys.readouterr().err


def test_engine_step_passes_the_capture_size_to_vllm_only_when_asked():
    from types import SimpleNamespace

    from benchmarks import engine_step

    default = SimpleNamespace(max_cudagraph_capture_size=None, cudagraph_mode="vllm")
    assert engine_step.capture_size(default) == {}
    asked = engine_step.capture_size(SimpleNamespace(max_cudagraph_capture_size=1024, cudagraph_mode="vllm"))
    assert asked == {"compilation_config": {"max_cudagraph_capture_size": 1024}}
    full = engine_step.capture_size(SimpleNamespace(max_cudagraph_capture_size=104, cudagraph_mode="full"))
    assert full == {"compilation_config": {"max_cudagraph_capture_size": 104, "cudagraph_mode": "FULL"}}


def test_engine_step_phases_exist_in_the_installed_vllm():
    """Every phase the profile marks is a method of vLLM 0.26.0 (a renamed one would vanish silently)."""
    from benchmarks import engine_step

    found, missing = engine_step.phase_methods()
    assert missing == []
    assert set(found) == set(engine_step.PHASES)


def test_engine_step_metrics_and_summary(tmp_path):
    from types import SimpleNamespace

    from vllm.v1.metrics.reader import Counter, Histogram

    from benchmarks import engine_step

    metrics = [
        Histogram(name=engine_step.ITERATIONS, labels={}, count=40, sum=1.0, buckets={}),
        Counter(name="vllm:spec_decode_num_drafts", labels={}, value=30),
        Counter(name="vllm:spec_decode_num_accepted_tokens", labels={}, value=90),
        Counter(name="vllm:spec_decode_num_draft_tokens", labels={}, value=150),
        Counter(name="vllm:num_preemptions", labels={}, value=7),
    ]
    totals = engine_step.metric_totals(SimpleNamespace(get_metrics=lambda: metrics))
    assert totals == {"steps": 40, "drafts": 30, "draft_tokens": 150, "accepted": 90}

    def record(config, tokens_per_second, token_ids):
        with_draft, constrained, padrec = engine_step.CONFIGS[config]
        return {
            "config": config,
            "with_draft": with_draft,
            "constrained": constrained,
            "padrec_config": padrec,
            "tokens_per_second": tokens_per_second,
            "engine_steps": 10,
            "step_ms": 5.0,
            "acceptance_length": 4.0 if with_draft else None,
            "token_ids": token_ids,
        }

    records = [
        record("baseline_free", 120.0, [[1, 2], [3, 4]]),
        record("baseline", 100.0, [[1, 2], [3, 4]]),
        record("spec_free", 300.0, [[1, 2], [3, 9]]),  # compared with baseline_free: 1 differs
        record("spec", 250.0, [[1, 2], [3, 4]]),  # compared with baseline: none differs
    ]
    args = summary_args(users=2)
    payload = engine_step.summarize(records, args, errors={})
    by_name = {r["config"]: r for r in payload["records"]}
    assert by_name["spec_free"]["lists_differing_from_no_draft"] == 1
    assert by_name["spec"]["lists_differing_from_no_draft"] == 0
    assert "lists_differing_from_no_draft" not in by_name["baseline"]
    assert by_name["spec"]["speedup_vs_baseline"] == 2.5
    assert all("token_ids" not in r for r in payload["records"])
    text = engine_step.render_markdown(payload)
    assert "| spec | yes | yes | 250.0 | 2.5 | 10 | 5.0 | - | 4.0 | 0 |" in text  # no call p50 in these records
    assert "CUDA graphs up to vLLM default tokens, FULL_AND_PIECEWISE mode" in text
    full = engine_step.render_markdown(payload | {"max_cudagraph_capture_size": 104, "cudagraph_mode": "full"})
    assert "CUDA graphs up to 104 tokens, FULL mode" in full
    # --render redraws a results file with a note, as a committed run is re-rendered
    (tmp_path / "run.json").write_text(json.dumps(payload))
    assert engine_step.main(["--render", str(tmp_path / "run.json"), "--note", "a hold's note"]) == 0
    assert "Note: a hold's note" in (tmp_path / "run.md").read_text()
    assert json.loads((tmp_path / "run.json").read_text())["note"] == "a hold's note"


def test_speedups_use_the_faster_baseline_pass():
    """A baseline pass that paid a one-time stall must not flatter the speedup."""
    cold = {"tokens_per_second": 1800.0, "control": {"tokens_per_second": 6200.0}}
    assert vllm_lossless.baseline_tokens_per_second(cold) == 6200.0
    assert vllm_lossless.baseline_tokens_per_second({"tokens_per_second": 5000.0}) == 5000.0


def test_reference_acceptance_is_read_for_the_same_head_and_requests(tmp_path):
    """The reference decoder's record of the served head at γ = K, in vLLM's definitions; anything
    else (other users, list length, head or γ) is reported, never compared."""
    draft = tmp_path / "padrec" / "draft"
    draft.mkdir(parents=True)
    (draft / "config.json").write_text("{}")
    stats = {"gamma": 5, "num_slots": 4, "rounds": 100, "accepted": 350, "accepted_by_step": [90, 80, 70, 60, 50]}
    record = {
        "method": "padrec",
        "draft": str(draft),
        "gamma": 5,
        "users": 500,
        "mismatches": 0,
        "acceptance_length": 4.42,
        "stats": stats,
    }
    path = tmp_path / "acceptance.json"
    path.write_text(
        json.dumps(
            {"settings": {"users": 500, "split": "test", "num_items": 10}, "records": [dict(record, gamma=4), record]}
        )
    )
    ref = vllm_lossless.reference_acceptance(str(path), str(tmp_path / "padrec"), 5, 500, 10)
    assert ref["vllm_acceptance_length"] == 4.5 and ref["tokens_per_round"] == 4.42
    assert ref["vllm_per_position_acceptance"] == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert "4.5 (4.42; 0 lists differ" in "\n".join(vllm_lossless.reference_rows(ref))
    assert "not the same requests" in vllm_lossless.reference_acceptance(str(path), str(draft), 5, 100, 10)["error"]
    assert "no record" in vllm_lossless.reference_acceptance(str(path), str(draft), 3, 500, 10)["error"]
    assert "no record" in vllm_lossless.reference_acceptance(str(path), str(tmp_path / "eagle"), 5, 500, 10)["error"]


def test_running_gauge_counts_only_scrapes_inside_the_pass():
    """A scrape that began before the pass (0 running) or came back after it is not a reading of it."""
    poller = GaugePoller("http://unused", RUNNING)
    poller.readings = [(0.0, 0.1, 0.0), (1.0, 1.2, 64.0), (1.5, 1.7, 60.0), (1.9, 3.5, 0.0)]
    assert poller.max_within(0.5, 3.0) == (64, 2)
    assert poller.max_within(1.8, 3.0) == (None, 0)  # nothing observed: None, never 0


def test_render_attaches_the_reference_and_a_note(tmp_path):
    record = {
        "target": "t",
        "draft": str(tmp_path / "draft"),
        "dataset": "d",
        "users": 2,
        "list_items": 10,
        "vllm_xargs": {},
        "concurrency": 2,
        "vllm_args": [],
        "mismatched_users": 0,
        "control_mismatched_users": 0,
        "invalid_items": 0,
        "duplicate_items": 0,
        "concurrent_requests": 2,
        "acceptance_length": 4.6,
        "per_position_acceptance": [0.9],
        "speedup_tokens_per_second": 1.3,
        "mismatch_examples": [],
        "control_mismatch_examples": [],
        "runs": {
            name: {
                "tokens_per_second": 1.0,
                "requests_per_second": 1.0,
                "latency_p50_ms": 1.0,
                "latency_p99_ms": 1.0,
                "max_running_requests": None,
                "spec_decode": {"num_drafts": 10, "num_draft_tokens": 50},
            }
            for name in ("baseline", "speculative")
        },
    }
    (tmp_path / "draft").mkdir()
    reference = tmp_path / "acceptance.json"
    reference.write_text(
        json.dumps(
            {
                "settings": {"users": 2, "split": "test", "num_items": 10},
                "records": [
                    {
                        "method": "padrec",
                        "draft": str(tmp_path / "draft"),
                        "gamma": 5,
                        "users": 2,
                        "mismatches": 0,
                        "acceptance_length": 4.0,
                        "stats": {
                            "gamma": 5,
                            "num_slots": 4,
                            "rounds": 10,
                            "accepted": 31,
                            "accepted_by_step": [9, 8, 7, 5, 2],
                        },
                    }
                ],
            }
        )
    )
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record))
    vllm_lossless.render(str(path), str(reference), "a note")
    saved = json.loads(path.read_text())
    assert saved["reference_acceptance"]["vllm_acceptance_length"] == 4.1 and saved["note"] == "a note"
    text = (tmp_path / "run.md").read_text()
    assert "Note: a note" in text and "| 4.1 (4.0; 0 lists differ" in text


def test_mask_cost_per_step_counts_k_draft_steps_and_one_verification():
    record = {
        "num_drafts": 5,
        "verification_compiled_us": 300.0,
        "draft_compiled_graph_us": 40.0,
        "verification_eager_us": 1800.0,
        "draft_graph_us": 250.0,
    }
    assert bench_vllm_mask.per_step_from(record) == {"per_step_us": 500.0, "per_step_eager_us": 3050.0}


def test_engine_step_profile_rows_merge_per_phase():
    """The profiler lists a marked phase twice (its CPU range, its GPU range): one row each, in order."""
    from benchmarks import engine_step

    rows = [
        {"phase": "speculator.propose (drafting)", "calls": 17, "cpu_ms_per_step": 0.0, "gpu_ms_per_step": 1.6},
        {"phase": "speculator.propose (drafting)", "calls": 17, "cpu_ms_per_step": 2.0, "gpu_ms_per_step": 0.05},
        {"phase": "engine step", "calls": 17, "cpu_ms_per_step": 9.4, "gpu_ms_per_step": 0.6},
    ]
    merged = engine_step.merge_phase_rows(rows)
    assert merged == [
        {"phase": "engine step", "calls": 17, "cpu_ms_per_step": 9.4, "gpu_span_ms_per_step": None},
        {"phase": "speculator.propose (drafting)", "calls": 17, "cpu_ms_per_step": 2.0, "gpu_span_ms_per_step": 1.6},
    ]
    assert engine_step.merge_phase_rows(merged) == merged  # idempotent (re-rendering a saved profile)


def test_hostile_inputs_requests_and_summary():
    """benchmarks/hostile_inputs.py: its well-formed requests pass the plugin's checks, its counts are right."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from benchmarks import hostile_inputs as hi
    from vllm_padrec.integration.endpoint import RecommendationRequest
    from vllm_padrec.lists import ListLimits, ListSpec

    catalog = generate_synthetic(SyntheticConfig(num_items=60, num_users=4, codebook_sizes=(4, 4, 4))).catalog
    histories = [[1, 2, 3], [4, 5], [6], [7, 8, 9], [10, 11]]
    good = hi.good_requests(catalog, histories, list_items=4)
    assert [r.path for r in good] == [hi.COMPLETIONS, hi.RECOMMENDATIONS] * 2 + [hi.COMPLETIONS]
    for r in good:
        body = json.loads(r.body)
        if r.path == hi.COMPLETIONS:
            params = CompletionRequest.model_validate(body).to_sampling_params(max_tokens=body["max_tokens"])
            spec = ListSpec.from_extra_args(params.extra_args, ListSpec(), ListLimits(32, len(catalog)))
            assert spec == ListSpec(True, 4, 4, True)
        else:
            assert RecommendationRequest.model_validate(body).num_items == 4
    gone = hi.disconnecting(good)
    assert [r.headers for r in gone] == [(("X-Request-Id", "shared-1"),)] and gone[0].kind == "disconnect"
    hostile = hi.hostile_requests(catalog, histories, repeats=2)
    assert len(hostile) == 2 * len(hi.HOSTILE_REQUESTS) and all(r.statuses != (200,) for r in hostile)

    def row(kind, name, status, answer=None, ms=10.0, expected=(200,)):
        return {
            "kind": kind,
            "name": name,
            "status": status,
            "ms": ms,
            "answer": answer,
            "engine_dead_answer": False,
            "expected": list(expected),
            "error": None,
        }

    idle = [row("good", "a", 200, [1]), row("good", "b", 200, ["x"])]
    mixed = [
        row("good", "a", 200, [1], ms=30.0),
        row("hostile", "inf", 400, expected=(400,)),
        row("hostile", "seed", 500, expected=(422,)),
        row("good", "b", 200, ["y"]),
        {"kind": "disconnect", "name": "d", "status": None, "ms": 50.0},
    ]
    after = [row("good", "a", 200, [1]), row("good", "b", 200, ["x"])]
    result = hi.summarize(good[:2], idle, mixed, after, deaths=0, healthy=True, setup={})
    assert (result["requests"], result["hostile_requests"], result["disconnecting_requests"]) == (9, 2, 1)
    assert result["server_errors_5xx"] == 1 and result["hostile_wrong_status"] == ["seed"]
    assert result["good_answers_equal"] is False
    assert result["good_answers_differing"] == [{"name": "b", "pass": "mixed", "status": 200}]
    assert result["hostile_cases"]["seed"]["statuses"] == {"500": 1}
    mixed[3]["answer"] = ["x"]
    assert hi.summarize(good[:2], idle, mixed, after, 0, True, {})["good_answers_equal"] is True
    # a completion that differs: where, and the top-2 gaps there in both runs
    idle_c = {**row("good", "c", 200, [[5, 6, 7]]), "margins": [2.0, 0.001, 1.0]}
    other_c = {**row("good", "c", 200, [[5, 9, 7]]), "margins": [2.0, 0.002, 1.5]}
    assert hi.differing(idle_c, other_c, "after") == {
        "name": "c",
        "pass": "after",
        "status": 200,
        "first_different_token": 1,
        "idle_margin": 0.001,
        "other_margin": 0.002,
    }
    # answers checked against the catalog: a completion's token ids, a recommendation's item ids
    rows = [
        row("good", "c1", 200, [catalog.render_completion([1, 2, 2])]),  # a repeat
        row("good", "c2", 200, [catalog.render_items([3]) + [TokenLayout.SEP, 5, 5, TokenLayout.EOS]]),  # invalid
        row("good", "r1", 200, ["item1", "item2", "item3"]),
        row("hostile", "h", 400),
    ]
    assert hi.list_quality(catalog, 3, rows) == {"invalid_items": 1, "repeated_items": 1, "short_lists": 1}
    setup = {"date": "2026-11-30", "device": "H200", "dtype": "bfloat16", "list_items": 4, "concurrency": 64}
    assert "| 9 | 2 | 0 | 1 | True |" in hi.markdown({**result, "setup": setup})


class FakeServe:
    """A stand-in for `vllm serve` on a local port: ``/v1/completions`` answers a fixed list, and each answer
    moves the spec-decode counters of ``/metrics`` by one draft round (5 drafts, 3 accepted) and one step."""

    def __init__(self, token_ids: list[int]) -> None:
        import http.server
        import threading

        self.token_ids = token_ids
        self.rounds = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.reply(200, fake.metrics().encode(), "text/plain")

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.rounds += 1
                top = [{"a": -0.1, "b": -0.6}] * len(fake.token_ids)
                choice = {"token_ids": fake.token_ids, "finish_reason": "stop", "logprobs": {"top_logprobs": top}}
                body = {"choices": [choice], "usage": {"completion_tokens": len(fake.token_ids)}, "request": request}
                self.reply(200, json.dumps(body).encode(), "application/json")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def metrics(self) -> str:
        n = self.rounds
        return "".join(
            f'{name}{{engine="0"{extra}}} {value}\n'
            for name, extra, value in (
                ("vllm:spec_decode_num_drafts_total", "", n),
                ("vllm:spec_decode_num_draft_tokens_total", "", 5 * n),
                ("vllm:spec_decode_num_accepted_tokens_total", "", 3 * n),
                (f"{SPEC_PER_POS}_total", ',position="0"', 2 * n),
                (f"{SPEC_PER_POS}_total", ',position="1"', n),
                ("vllm:num_requests_running", "", 0),
                (ITERATIONS, "", n),
            )
        )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_timed_pass_reads_answers_and_counter_deltas_from_the_server():
    from vllm_padrec.testing.server import VllmServer

    fake = FakeServe([7, 8, 9, TokenLayout.EOS])
    try:
        server = VllmServer("target", port=fake.port)  # never started: its requests go to the fake
        fake.rounds = 10  # counted before the pass: only the pass's deltas count
        run = vllm_lossless.timed_pass(server, [[1, 2]] * 6, 12, {"padrec_constraint": 1}, 3, logprobs=2)
    finally:
        fake.close()
    assert [a["token_ids"] for a in run["answers"]] == [[7, 8, 9, TokenLayout.EOS]] * 6
    assert run["answers"][0]["margins"] == pytest.approx([0.5] * 4)
    assert run["output_tokens"] == 24 and run["engine_steps"] == 6
    assert run["spec_decode"] == {
        "num_drafts": 6,
        "num_draft_tokens": 30,
        "num_accepted_tokens": 18,
        "acceptance_length": 4.0,
        "draft_acceptance_rate": 0.6,
        "per_position_acceptance": [2.0, 1.0],
    }
    assert run["latency_p50_ms"] > 0 and run["latency_p99_ms"] >= run["latency_p50_ms"]


def test_engine_step_markdown_shows_the_python_hotspots_of_a_profile():

    from benchmarks import engine_step

    profile = {
        "users": 64,
        "engine_steps": 10,
        "wall_ms_per_step": 18.0,
        "gpu_busy_ms_per_step": 2.0,
        "gpu_busy_share": 0.11,
        "phases": [],
        "top_gpu_ops": [],
        "python_hotspots_per_step": [{"function": "step (core.py:1)", "calls": 10, "self_ms": 9.5, "total_ms": 17.0}],
    }
    record = {
        "config": "baseline",
        "with_draft": False,
        "constrained": True,
        "tokens_per_second": 100.0,
        "engine_steps": 10,
        "step_ms": 18.0,
        "acceptance_length": None,
        "token_ids": [[1]],
        "profile": profile,
    }
    args = summary_args(users=1)
    text = engine_step.render_markdown(engine_step.summarize([record], args, errors={}))
    assert "Python's profile of the same batch, per engine step:" in text
    assert "| `step (core.py:1)` | 10 | 9.5 | 17.0 |" in text


def test_engine_step_first_token_calls_end_at_their_first_token_and_keep_the_rest():
    from vllm import SamplingParams

    from benchmarks import engine_step

    extra = {"padrec_constraint": 1, "padrec_num_items": 10, "padrec_no_repeat": 1}
    params = SamplingParams(temperature=0.0, max_tokens=51, stop_token_ids=[2], extra_args=extra)
    first = engine_step.first_token_params(params)
    assert first.max_tokens == 1 and params.max_tokens == 51  # the timed calls' params are left alone
    assert first.extra_args == extra and first.stop_token_ids == [2] and first.temperature == 0.0


def test_engine_step_markdown_shows_the_first_token_profile_beside_the_steps():
    from benchmarks import engine_step

    def profile(users: int, steps: int, per_step: float, per_call: float) -> dict:
        return {
            "users": users,
            "engine_steps": steps,
            "wall_ms_per_call": per_call,
            "wall_ms_per_step": per_step,
            "gpu_busy_ms_per_step": 1.0,
            "gpu_busy_share": 0.1,
            "phases": [],
            "top_gpu_ops": [],
        }

    record = {
        "config": "spec",
        "with_draft": True,
        "constrained": True,
        "tokens_per_second": 100.0,
        "engine_steps": 10,
        "step_ms": 3.0,
        "acceptance_length": 5.0,
        "token_ids": [[1]],
        "profile": profile(1, 9, 3.0, 27.0),
        "first_token_profile": profile(50, 50, 11.5, 11.5),
    }
    text = engine_step.render_markdown(engine_step.summarize([record], summary_args(users=1), errors={}))
    steps, first = text.index("## Profile: spec"), text.index("## First token: spec")
    assert steps < first
    assert "1 requests, 9 engine steps: 3.0 ms wall per step, 27.0 ms per call" in text[steps:first]
    assert "50 requests, 50 engine steps: 11.5 ms wall per step, 11.5 ms per call" in text[first:]
    assert "Calls of max_tokens 1" in text[first:]


def test_a_masked_step_with_a_row_of_no_token_is_refused():
    masked = torch.zeros(3, 5)
    masked[1, :4] = float("-inf")
    mask_inputs.every_row_keeps_a_token(masked, "kept")  # one token left in row 1: fine
    masked[1, 4] = float("-inf")
    with pytest.raises(AssertionError, match="B=3: a verification row lost every token"):
        mask_inputs.every_row_keeps_a_token(masked, "B=3")
