"""The CPU-checkable parts of benchmarks/bench_spec_decode.py: the configurations and their order, the adaptive
method's table from the run's own records, the records' schema and numbers, speedup and equality against
``none``, the spec-decode counters over a pass, the Markdown, the plot, the driver (fake children) and --help.

The passes themselves need the H200 (a GPU and vLLM)."""

from __future__ import annotations

import json
import os
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
    # the engine drafts up to the table's largest K, as `vllm-padrec gamma-schedule` configures it for users,
    # and one K everywhere is that K without a table
    assert bench.speculative_config(args, "padrec_adaptive", 5, [[1, 64, 3], [65, 128, 2]]) == {
        "method": "eagle",
        "model": args.padrec_draft,
        "num_speculative_tokens": 3,
        "num_speculative_tokens_per_batch_size": [[1, 64, 3], [65, 128, 2]],
    }
    assert bench.speculative_config(args, "padrec_adaptive", 5, [[1, 128, 3]]) == {
        "method": "eagle",
        "model": args.padrec_draft,
        "num_speculative_tokens": 3,
    }
    assert bench.METHODS["eagle_vanilla"].padrec == {"mask_drafts": False} and bench.METHODS["eagle"].padrec == {}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--target", "/t", "--dataset", "/d", "--methods", "padrec"], "--padrec-draft is required"),
        ([*BASE, "--methods", "padrec_adaptive", "padrec"], "run them too"),
        ([*BASE, "--gammas", "0"], "must be >= 1"),
        ([*BASE, "--methods", "none", "ngram"], "ngram runs on Model Runner V1, measured against none_v1"),
        ([*BASE, "--methods", "none_v1", "ngram", "--ngram-lookup", "4", "2"], "needs 1 <= MIN <= MAX"),
        ([*BASE, "--methods", "none_v1", "medusa"], "--medusa-draft is required by the methods ['medusa']"),
        ([*BASE, "--methods", "none_v1", "medusa", "--medusa-draft", "/nowhere"], "/nowhere holds no config.json"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_a_pass_record_has_issue_14s_fields_and_exact_numbers():
    timing = bench.call_timing([0.2, 0.3], [10, 20, 30], batch_size=2)  # 60 tokens in 0.5 s
    record = bench.pass_record(
        "padrec",
        5,
        10,
        2,
        "offline",
        timing,
        [[7], [8, 8], [9]],
        [[7], [1], [9]],
        counters(4, 10, (4, 3, 2, 1, 0)),
        invalid_items=2,
    )
    assert set(REQUIRED) <= set(record)
    assert record["tokens_per_s"] == 120.0 and record["users"] == 3
    # users 1-2 in the first call (0.2 s), user 3 in the second (0.3 s); percentiles interpolate
    assert record["p50_ms"] == 200.0 and record["p99_ms"] == 298.0
    assert record["acceptance_length"] == 3.5  # 1 + 10 accepted / 4 rounds
    assert record["accepted_per_draft_step"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert record["recall_at_10"] == round(2 / 3, 5)
    assert record["invalid_items"] == 2 and record["duplicate_items"] == 1  # user 2 names item 8 twice
    assert record["tokens_per_list"] == 20.0 and record["rounds_per_list"] == 1.33  # 4 rounds over 3 users
    timing = bench.call_timing([0.5], [10, 20, 30], batch_size=3)
    plain = bench.pass_record("none", 0, 10, 3, "offline", timing, [[7]] * 3, [[7]] * 3, counters(), invalid_items=0)
    assert plain["acceptance_length"] is None and plain["accepted_per_draft_step"] is None
    assert plain["rounds_per_list"] is None


@pytest.mark.parametrize(
    ("choice", "method", "gamma", "expected"),
    [
        ("verify", "padrec", 5, 768),  # 128 requests x 6 tokens passes vLLM's cap of 512
        ("verify", "padrec", 3, None),  # 128 x 4 = 512 fits vLLM's default
        ("verify", "padrec_tail", 3, 768),  # the forced tail's 2 slots are verified too: 128 x 6
        ("verify", "none", 0, None),  # no draft: vLLM's default, exactly as users run it
        ("vllm", "padrec", 5, None),
        ("1024", "eagle", 3, 1024),
        ("1024", "none", 0, None),
    ],
)
def test_the_capture_size_covers_the_largest_verification_step_of_a_draft(choice, method, gamma, expected):
    args = bench.parse_args([*BASE, "--max-cudagraph-capture-size", choice])
    assert bench.capture_size(args, method, gamma) == expected
    compiled = bench.compilation_args(args, method, gamma)
    assert compiled == ({} if expected is None else {"compilation_config": {"max_cudagraph_capture_size": expected}})
    given = bench.parse_args([*BASE, "--engine-args", '{"compilation_config": {"max_cudagraph_capture_size": 64}}'])
    assert bench.compilation_args(given, "padrec", 5) == {}  # the caller's compilation config wins


@pytest.mark.parametrize(
    ("batch_sizes", "method", "gamma", "longest_prompt", "expected"),
    [
        (["1"], "none", 0, 103, 104),  # vLLM's default at max_num_seqs 1 holds 2 tokens: the prompt's grid size
        (["1"], "padrec", 8, 103, 104),  # and 18 at gamma 8
        (["1"], "padrec", 8, 7, 18),  # a prompt under vLLM's default keeps the default
        (["1"], "none", 0, 300, 304),  # steps of 16 from 256 tokens
        (["1"], "padrec_tail", 3, 3, 12),  # the forced tail is verified too: 1 x (1 + 3 + 2) x 2
        (["1", "128"], "none", 0, 103, 256),  # 128 x 1 x 2
        (["1", "128"], "padrec", 5, 103, 768),  # the largest verification step, past vLLM's 512
        (["1", "64"], "eagle", 5, 103, 512),  # vLLM's default cap holds both
    ],
)
def test_prompt_graphs_hold_the_longest_prompt_in_every_engine(batch_sizes, method, gamma, longest_prompt, expected):
    args = bench.parse_args([*BASE, "--batch-sizes", *batch_sizes, "--max-cudagraph-capture-size", "prompts"])
    args.longest_prompt = longest_prompt
    assert bench.capture_size(args, method, gamma) == expected
    compiled = bench.compilation_args(args, method, gamma)
    assert compiled == {"compilation_config": {"max_cudagraph_capture_size": expected}}


def test_whole_model_graphs_reach_every_engine_beside_its_capture_size():
    """``--cudagraph-mode full``: every engine, none included, gets cudagraph_mode FULL with its graphs' size."""
    args = bench.parse_args([*BASE, "--batch-sizes", "1", "--max-cudagraph-capture-size", "prompts"])
    args.longest_prompt = 101
    assert args.cudagraph_mode == "vllm"  # vLLM's default unless asked
    assert bench.compilation_args(args, "none", 0) == {"compilation_config": {"max_cudagraph_capture_size": 104}}
    full = bench.parse_args([*BASE, "--batch-sizes", "1", "--max-cudagraph-capture-size", "prompts"])
    full.longest_prompt, full.cudagraph_mode = 101, "full"
    for method, gamma in (("none", 0), ("padrec", 8)):
        expected = {"max_cudagraph_capture_size": 104, "cudagraph_mode": "FULL"}
        assert bench.compilation_args(full, method, gamma) == {"compilation_config": expected}
    # without a size of its own (no draft, vLLM's default capture) the mode alone
    vllm_sizes = bench.parse_args([*BASE, "--cudagraph-mode", "full"])
    assert bench.compilation_args(vllm_sizes, "none", 0) == {"compilation_config": {"cudagraph_mode": "FULL"}}
    given = bench.parse_args([*BASE, "--cudagraph-mode", "full", "--engine-args", '{"compilation_config": {}}'])
    assert bench.compilation_args(given, "none", 0) == {}  # the caller's compilation config wins


def test_a_bad_capture_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, "--max-cudagraph-capture-size", "-3"])
    assert "expected verify, prompts, vllm or a positive number of tokens" in capsys.readouterr().err


def test_offline_passes_time_each_call_and_repeat_the_one_at_a_time_passes(monkeypatch):
    """offline_passes with a fake vllm.LLM on a fake clock: each call's seconds make the p50s, the batch-1 pass
    runs again after the others (p50_ms_repeat), and the engine gets the capture size."""
    import vllm

    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    one_item = [*catalog.item_token_ids(3), catalog.layout.EOS]
    clock, started = [0.0], {}
    # in call order: batch 1's warm-up and 3 calls, batch 4's warm-up and 1 call, batch 1 again
    call_seconds = iter([0.5, 0.010, 0.012, 0.014, 0.5, 0.5, 0.040, 0.030, 0.020])

    class FakeLLM:
        def __init__(self, **kwargs):
            started.update(kwargs)

        def generate(self, prompts, params, use_tqdm):
            began = clock[0]
            clock[0] += next(call_seconds)
            # vLLM's per-request timestamps: queued 1 ms in, scheduled 1 ms later, first token 2 ms later, the
            # last token 1 ms before the call returns
            stamps = SimpleNamespace(
                queued_ts=began + 0.001,
                scheduled_ts=began + 0.002,
                first_token_ts=began + 0.004,
                last_token_ts=clock[0] - 0.001,
            )
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=one_item)], metrics=stamps) for _ in prompts]

        def get_metrics(self):
            return []

        def collective_rpc(self, method, args=()):
            return [None]  # worker_rpc's answer without loop graphs

    class FakeClocks:  # testing/gpu_clocks.ClockSampler: each pass's summary names the mark it was cut at
        def __init__(self):
            self.marks, self.started, self.stopped = 0, False, False

        def start(self):
            self.started = True

        def mark(self):
            self.marks += 1
            return self.marks

        def summary(self, since):
            return {"cut_at": since} if self.started else None

        def stop(self):
            self.stopped = True

    samplers = []
    monkeypatch.setattr(bench, "ClockSampler", lambda: samplers.append(FakeClocks()) or samplers[-1])
    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.time, "monotonic", lambda: clock[0])
    argv = [*BASE, "--batch-sizes", "1", "4", "--list-lens", "1", "--users-latency", "3", "--users", "4"]
    args = bench.parse_args([*argv, "--max-cudagraph-capture-size", "64", "--pair", "none"])
    args.one, args.one_gamma = "padrec", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(4)]
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "set by the test")  # undone after it
    _, records, lists = bench.offline_passes(args, catalog, users, None)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"  # the engine core in its own process, as vLLM's default
    one, four = records
    assert (one["batch_size"], one["users"], one["p50_ms"]) == (1, 3, 12.0)
    assert one["p50_ms_repeat"] == 30.0 and "p50_ms_repeat" not in four  # the repeat: 40, 30, 20 ms
    assert four["users"] == 4 and four["p50_ms"] == 500.0  # one call of 4 users after its warm-up
    # the timed calls' phases (10, 12, 14 ms: decode 5, 7, 9 ms), not the warm-up's or the repeat's
    assert one["phases_ms"] == {"submit": 1.0, "queue": 1.0, "first_token": 2.0, "decode": 7.0, "finish": 1.0}
    assert "phases_ms" not in four  # phases are one request's: batch 1 only
    assert one["tokens_per_list"] == len(one_item) and one["recall_at_10"] == 1.0
    assert set(lists) == {"offline_1_1", "offline_1_4"}
    assert started["compilation_config"] == {"max_cudagraph_capture_size": 64}
    assert one["loop_graph_rounds"] == 0 and four["loop_graph_rounds"] == 0  # an engine without loop graphs
    # the GPU's state by pass: batch 1's, batch 4's, then batch 1's repeat; the stream stopped after the passes
    assert (one["gpu_clocks"], four["gpu_clocks"], one["gpu_clocks_repeat"]) == (
        {"cut_at": 1},
        {"cut_at": 2},
        {"cut_at": 3},
    )
    assert samplers[0].started and samplers[0].stopped
    clock[0], call_seconds = 0.0, iter([0.5, 0.010, 0.012, 0.014, 0.5, 0.5, 0.040, 0.030, 0.020])
    args.gpu_clocks = False  # --no-gpu-clocks: no stream, nothing recorded
    _, records, _ = bench.offline_passes(args, catalog, users, None)
    assert not samplers[1].started and not any(key.startswith("gpu_clocks") for r in records for key in r)


def install(monkeypatch, fake) -> None:
    """``fake``'s vllm.LLM class for offline_passes, and the benchmark's clocks on ``fake.clock``."""
    import vllm

    monkeypatch.setattr(vllm, "LLM", fake.LLM)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: fake.clock[0])
    monkeypatch.setattr(bench.time, "monotonic", lambda: fake.clock[0])


class PairedEngines:
    """A fake vllm.LLM class for offline_passes on a fake clock: each engine (``draft`` with a speculative config,
    ``baseline`` without, ``rival`` with BASE's EAGLE draft) takes its own seconds per call, in order; the calls
    and engines are logged. ``fail``: the engines that cannot start."""

    def __init__(self, seconds: dict, tokens: list[int], fail_baseline: bool = False, baseline_differs_at=(), fail=()):
        self.seconds = {name: iter(values) for name, values in seconds.items()}
        self.clock, self.calls, self.engines, self.tokens = [0.0], [], [], tokens
        self.differs_at = set(baseline_differs_at)  # the baseline's calls (0: its warm-up) with one more token
        self.rpcs = []  # (engine, worker_rpc method, its arguments..., calls made before it)
        self.tallies = {}  # engine -> the acceptance counts its tally reports when read
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                spec = kwargs.get("speculative_config")
                self.name = "baseline" if not spec else "rival" if spec.get("model") == "/e" else "draft"
                process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
                fake.engines.append((self.name, kwargs, process, os.environ.get("VLLM_CACHE_ROOT")))
                if (fail_baseline and self.name == "baseline") or self.name in fail:
                    raise RuntimeError("no room for a second engine")

            def generate(self, prompts, params, use_tqdm):
                fake.calls.append(self.name)
                began = fake.clock[0]
                fake.clock[0] += next(fake.seconds[self.name])
                tokens = fake.tokens
                if self.name == "baseline" and fake.calls.count("baseline") - 1 in fake.differs_at:
                    tokens = [*tokens, 7]
                stamps = SimpleNamespace(  # 1 ms each outside decode (test_offline_passes_time_each_call...)
                    queued_ts=began + 0.001,
                    scheduled_ts=began + 0.002,
                    first_token_ts=began + 0.003,
                    last_token_ts=fake.clock[0] - 0.001,
                )
                return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens)], metrics=stamps) for _ in prompts]

            def get_metrics(self):
                return []

            def collective_rpc(self, method, args=()):
                fake.rpcs.append((self.name, method, *args, len(fake.calls)))
                if method == "padrec_acceptance" and fake.tallies.get(self.name) is not None:
                    return [fake.tallies[self.name] if args == (False,) else {"rounds": 0}]
                return [None]  # worker_rpc's answer without loop graphs or a tally

        self.LLM = LLM


class CallClocks:
    """A stand-in for testing/gpu_clocks.ClockSampler: a pass's summary is 1980 MHz, and the summary within some
    calls' windows gives as "SM MHz" the calls' milliseconds summed, so that a test sees which calls it read."""

    def start(self):
        pass

    def mark(self):
        return 0

    def settle(self):
        pass

    def summary(self, since):
        return {"sm_mhz_median": 1980.0}

    def summary_within(self, windows):
        return {"sm_mhz_median": round(sum(1000 * (end - start) for start, end in windows))}

    def stop(self):
        pass


def test_padrecs_passes_run_again_call_by_call_beside_a_rival_drafts_engine(monkeypatch):
    """--rivals eagle: padrec's engine process also starts an EAGLE engine (its own compile cache, RIVAL_MEMORY of
    the GPU, no stat loggers); after each pass the same users run on both, ABBA, and the record has padrec's
    tokens/s over the rival's, both p50s and the lists alike. A rival that cannot start is named in the records."""
    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    tokens = [*catalog.item_token_ids(3), catalog.layout.EOS]
    # padrec: warm-up, its pass's 2 calls, then 4 calls beside the rival (at least RIVAL_MIN_CALLS = 4 a side: the
    # 4 users twice); the rival: a warm-up of every user (2 calls), then its 4 calls (15 ms each)
    monkeypatch.setattr(bench, "RIVAL_MIN_CALLS", 4)
    seconds = {"draft": [0.5] + [0.010] * 6, "rival": [0.5, 0.5] + [0.015] * 4}
    fake = PairedEngines(seconds, tokens)
    # each engine's own acceptance tally over the compared calls (8 lists): 8 rounds on padrec's, 10 on the rival's
    fake.tallies = {
        "draft": {"rounds": 8, "draft_tokens": 40, "accepted": 28, "per_pos": [8, 7, 6, 4, 3]},
        "rival": {"rounds": 10, "draft_tokens": 50, "accepted": 24, "per_pos": [9, 7, 5, 2, 1]},
    }
    install(monkeypatch, fake)
    monkeypatch.setattr(bench, "ClockSampler", CallClocks)  # "SM MHz": the ms of the calls it is asked about
    argv = [*BASE, "--batch-sizes", "2", "--list-lens", "1", "--users", "4", "--pair", "none", "--cache-root", "/c"]
    args = bench.parse_args([*argv, "--rivals", "eagle"])
    args.one, args.one_gamma = "padrec", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(4)]
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert [engine[0] for engine in fake.engines] == ["draft", "rival"]
    _, rival, process, cache = fake.engines[1]
    assert cache == "/c/rival_eagle_g5" and process == "1"
    assert rival["gpu_memory_utilization"] == bench.RIVAL_MEMORY and rival["disable_log_stats"]
    assert rival["speculative_config"] == {"method": "eagle", "num_speculative_tokens": 5, "model": "/e"}
    assert rival["worker_extension_cls"] == bench.WORKER_RPC  # its tally answers
    # the rival warmed up on every user (padrec's engine ran them all in its pass: both prefix caches alike), then
    # ABBA over the users twice
    assert fake.calls[3:] == ["rival", "rival", *["draft", "rival", "rival", "draft"] * 2]
    tally_calls = [rpc for rpc in fake.rpcs if rpc[1] == "padrec_acceptance"]  # started after the warm-up
    started = [(name, "padrec_acceptance", True, 5) for name in ("draft", "rival")]
    read = [(name, "padrec_acceptance", False, 13) for name in ("draft", "rival")]  # after the compared calls
    assert tally_calls == started + read
    assert record["rivals"] == {
        "eagle": {
            "speedup": 1.5,
            "p50_ms": 10.0,
            "rival_p50_ms": 15.0,
            "calls": 4,
            "equal": 4,  # the users' lists, each once
            "sm_mhz": 40,  # CallClocks: the ms of the side's compared calls, 4 each
            "rival_sm_mhz": 60,
            "acceptance_length": 4.5,
            "accepted_per_draft_step": [1.0, 0.875, 0.75, 0.5, 0.375],
            "rival_acceptance_length": 3.4,
            "rival_accepted_per_draft_step": [0.9, 0.7, 0.5, 0.2, 0.1],
        }
    }
    assert record["p50_ms"] == 10.0  # the pass itself, before the rival's calls

    eagle = PairedEngines({"draft": [0.5, 0.01, 0.01]}, tokens, fail=("rival",))  # the rival does not start
    install(monkeypatch, eagle)
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert record["rival_errors"] == {"eagle": "RuntimeError: no room for a second engine"}
    assert "rivals" not in record

    other = PairedEngines({"draft": [0.5, 0.01, 0.01]}, tokens)  # rivals stand beside padrec's engine only
    install(monkeypatch, other)
    args.one = "padrec_loop"
    bench.offline_passes(args, catalog, users, None)
    assert [engine[0] for engine in other.engines] == ["draft"]


def test_a_paired_pass_records_the_gpus_clocks_during_each_engines_calls(monkeypatch):
    """gpu_clocks_paired: the clock rows that came during the draft engine's calls and during its baseline's, each
    side's calls given by their windows on the benchmark's clock."""
    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    tokens = [*catalog.item_token_ids(3), catalog.layout.EOS]
    # batch 1: warm-ups, 2 calls each; batch 2: warm-ups, 1 call each; then the draft's batch-1 repeat
    seconds = {"draft": [0.5, 0.010, 0.012, 0.5, 0.020, 0.02, 0.02], "baseline": [0.5, 0.030, 0.040, 0.5, 0.050]}

    monkeypatch.setattr(bench, "ClockSampler", CallClocks)
    fake = PairedEngines(seconds, tokens)
    install(monkeypatch, fake)
    argv = [*BASE, "--batch-sizes", "1", "2", "--list-lens", "1", "--users-latency", "2", "--users", "2"]
    args = bench.parse_args(argv)
    args.one, args.one_gamma = "padrec", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(2)]
    _, (one, two), _ = bench.offline_passes(args, catalog, users, None)
    assert one["gpu_clocks_paired"] == {"engine": {"sm_mhz_median": 22}, "baseline": {"sm_mhz_median": 70}}
    assert two["gpu_clocks_paired"] == {"engine": {"sm_mhz_median": 20}, "baseline": {"sm_mhz_median": 50}}

    args.pair = "none"  # unpaired: the pass's clocks alone
    install(monkeypatch, PairedEngines({"draft": [0.5, 0.010, 0.012, 0.5, 0.02, 0.02, 0.02]}, tokens))
    _, (one, _), _ = bench.offline_passes(args, catalog, users, None)
    assert one["gpu_clocks"] == {"sm_mhz_median": 1980.0} and "gpu_clocks_paired" not in one


def test_a_drafts_one_at_a_time_passes_alternate_with_a_baseline_engine(monkeypatch):
    """--pair (all by default): user by user, the draft engine and a baseline engine in the same process
    answer in ABBA order; the record has the baseline's p50 and the speedup over its calls of the same users.
    A baseline engine that cannot start leaves the passes unpaired, with the reason in the record."""

    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    tokens = [*catalog.item_token_ids(3), catalog.layout.EOS]
    # the draft: warm-up, 4 users, the repeat pass; the baseline: warm-up, 4 users (30 ms each)
    seconds = {"draft": [0.5, 0.010, 0.012, 0.014, 0.016, 0.02, 0.02, 0.02, 0.02], "baseline": [0.5] + [0.030] * 4}
    fake = PairedEngines(seconds, tokens, baseline_differs_at={2})  # the second user's list differs
    install(monkeypatch, fake)
    argv = [*BASE, "--batch-sizes", "1", "--list-lens", "1", "--users-latency", "4", "--cache-root", "/c"]
    args = bench.parse_args(argv)
    args.one, args.one_gamma = "padrec", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(4)]
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/c/padrec_g5")  # as bench_driver starts the child
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert [engine[0] for engine in fake.engines] == ["draft", "baseline"]  # the draft's loggers own the metrics
    assert [engine[3] for engine in fake.engines] == ["/c/padrec_g5", "/c/none_g0"]  # none's own compile cache
    assert os.environ["VLLM_CACHE_ROOT"] == "/c/padrec_g5"
    _, baseline, process, _ = fake.engines[1]
    assert process == "1" and baseline["disable_log_stats"] and baseline["gpu_memory_utilization"] == 0.3
    assert baseline["additional_config"] == {"padrec": {}} and baseline["max_num_seqs"] == 1
    timed = fake.calls[2:10]  # after both warm-ups
    assert timed == ["draft", "baseline", "baseline", "draft", "draft", "baseline", "baseline", "draft"]
    assert record["p50_ms"] == 13.0 and record["paired_baseline_p50_ms"] == 30.0
    n = len(tokens)  # tokens/s over the baseline's, whose second list is one token longer
    assert record["paired_speedup"] == round((4 * n / 0.052) / ((4 * n + 1) / 0.120), 3)
    assert record["paired_equal"] == 3
    assert record["p50_ms_repeat"] == 20.0
    assert record["phases_ms"]["decode"] == 9.0  # the draft's calls (decode 6, 8, 10, 12 ms), not the baseline's

    failing = PairedEngines({"draft": [0.5] + [0.01] * 8}, tokens, fail_baseline=True)
    install(monkeypatch, failing)
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert record["paired_error"] == "RuntimeError: no room for a second engine" and "paired_speedup" not in record
    assert record["p50_ms"] == 10.0
    both = bench.parse_args([*BASE, "--batch-sizes", "1", "4"])
    assert not bench.pairs_any(both, "none") and bench.pairs(both, "eagle", 1) and bench.pairs(both, "eagle", 4)
    only_one = bench.parse_args([*BASE, "--batch-sizes", "4", "--pair", "one"])
    assert not bench.pairs_any(only_one, "padrec")  # no batch 1 to pair
    assert not bench.pairs_any(bench.parse_args([*BASE, "--pair", "none"]), "padrec")


@pytest.mark.parametrize("pairing", ["all", "one"])
def test_at_every_batch_size_the_passes_alternate_call_by_call_with_the_baseline(monkeypatch, pairing):
    """--pair all: a pass of 4 requests a call alternates its calls with the baseline engine's, ABBA, and the
    record has the speedup over the baseline's calls; --pair one leaves it unpaired, against none's own run."""

    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    tokens = [*catalog.item_token_ids(3), catalog.layout.EOS]
    # the draft: warm-up, 2 calls of 4 users; the baseline: warm-up, 2 calls (paired only)
    seconds = {"draft": [0.5, 0.010, 0.030], "baseline": [0.5, 0.040, 0.040]}
    fake = PairedEngines(seconds, tokens)
    install(monkeypatch, fake)
    argv = [*BASE, "--batch-sizes", "4", "--list-lens", "1", "--users", "8", "--pair", pairing]
    args = bench.parse_args(argv)
    args.one, args.one_gamma = "padrec", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(8)]
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    if pairing == "one":
        assert [engine[0] for engine in fake.engines] == ["draft"] and "paired_speedup" not in record
        return
    assert fake.calls == ["draft", "baseline", "draft", "baseline", "baseline", "draft"]
    assert record["users"] == 8 and record["p50_ms"] == 20.0 and record["paired_baseline_p50_ms"] == 40.0
    assert record["paired_speedup"] == 2.0 and record["paired_equal"] == 8


class SwitchableEngine:
    """A fake vllm.LLM class for padrec_loop's passes: a call takes 10 ms with the loop graph on and 20 ms off,
    and a call with it on adds one replay; ``collective_rpc`` answers worker_rpc's method (None: no graphs)."""

    def __init__(self, tokens: list[int], captured: bool = True):
        self.clock, self.calls, self.kwargs, self.tokens = [0.0], [], {}, tokens
        self.state = {"graphs": 3, "replays": 0, "enabled": True} if captured else None
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.kwargs = kwargs

            def collective_rpc(self, method, args=()):
                assert method == "padrec_decode_loop_graph"
                if fake.state is not None and args and args[0] is not None:
                    fake.state["enabled"] = args[0]
                return [None if fake.state is None else dict(fake.state)]

            def generate(self, prompts, params, use_tqdm):
                on = fake.state is not None and fake.state["enabled"]
                fake.calls.append("on" if on else "off")
                began = fake.clock[0]
                fake.clock[0] += 0.010 if on else 0.020
                fake.state and fake.state.update(replays=fake.state["replays"] + on)
                stamps = SimpleNamespace(  # decode: the call's seconds less 4 ms
                    queued_ts=began + 0.001,
                    scheduled_ts=began + 0.002,
                    first_token_ts=began + 0.003,
                    last_token_ts=fake.clock[0] - 0.001,
                )
                return [
                    SimpleNamespace(outputs=[SimpleNamespace(token_ids=fake.tokens)], metrics=stamps) for _ in prompts
                ]

            def get_metrics(self):
                return []

        self.LLM = LLM


def test_padrec_loop_switches_its_graph_call_by_call_in_one_engine(monkeypatch):
    """padrec_loop's engine gets worker_rpc's extension; after each pass it answers the users again with the
    graph on and off, ABBA, and the record has the ratio, both p50s, the equal lists and the replays of the on
    calls; the graph is left on. An engine that captured no graphs says so in the record and is not switched."""

    from vllm_padrec.data import SyntheticConfig, generate_synthetic
    from vllm_padrec.integration.worker_rpc import WORKER_RPC

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    tokens = [*catalog.item_token_ids(3), catalog.layout.EOS]
    argv = [*BASE, "--batch-sizes", "2", "--list-lens", "1", "--users", "6", "--pair", "none"]
    args = bench.parse_args(argv)
    args.one, args.one_gamma = "padrec_loop", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(6)]
    fake = SwitchableEngine(tokens)
    install(monkeypatch, fake)
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert fake.kwargs["worker_extension_cls"] == WORKER_RPC
    assert fake.kwargs["additional_config"] == {"padrec": {"decode_loop_graph": True}}
    # warm-up, the pass's 3 calls, then the switched calls of the same 3 batches: on off, off on, on off
    assert fake.calls == ["on"] * 4 + ["on", "off", "off", "on", "on", "off"]
    assert record["p50_ms"] == 10.0 and record["loop_switch_p50_ms"] == 10.0
    assert record["loop_switch_baseline_p50_ms"] == 20.0 and record["loop_switch_speedup"] == 2.0
    assert record["loop_switch_equal"] == 6 and record["loop_replays"] == 3
    assert record["loop_graph_rounds"] == 3  # the pass's own calls, not its warm-up's or the switched ones
    assert fake.state["enabled"] is True  # switched back on after an off call: later passes run with the graph
    assert "loop_switch_phases_ms" not in record  # phases are one request's: batch 1 only

    one = SwitchableEngine(tokens)  # one request a call: the decode phase on and off
    install(monkeypatch, one)
    argv_one = [*BASE, "--batch-sizes", "1", "--list-lens", "1", "--users-latency", "2", "--pair", "none"]
    args_one = bench.parse_args(argv_one)
    args_one.one, args_one.one_gamma = "padrec_loop", 5
    _, (record,), _ = bench.offline_passes(args_one, catalog, users, None)
    assert one.calls[:7] == ["on", "on", "on", "on", "off", "off", "on"]  # warm-up, 2 calls, switched 2 x 2
    assert record["loop_switch_phases_ms"]["on"]["decode"] == 6.0
    assert record["loop_switch_phases_ms"]["off"]["decode"] == 16.0
    assert record["phases_ms"]["decode"] == 6.0  # the pass's own calls, not the switched ones

    plain = SwitchableEngine(tokens)  # padrec: the extension counts its graph's rounds, no switched calls
    install(monkeypatch, plain)
    args.one = "padrec"
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert plain.kwargs["worker_extension_cls"] == WORKER_RPC and len(plain.calls) == 4
    assert record["loop_graph_rounds"] == 3 and not any(key.startswith("loop_switch") for key in record)

    baseline = SwitchableEngine(tokens)  # no speculation: no extension, nothing counted
    install(monkeypatch, baseline)
    args.one = "none"
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert "worker_extension_cls" not in baseline.kwargs and "loop_graph_rounds" not in record

    uncaptured = SwitchableEngine(tokens, captured=False)
    install(monkeypatch, uncaptured)
    args.one = "padrec_loop"
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert record["loop_switch_error"] == bench.NO_LOOP_GRAPHS and "loop_switch_speedup" not in record
    assert len(uncaptured.calls) == 4
    text = bench.loop_switch_markdown([record])
    assert text[-2] == f"Not switched: {bench.NO_LOOP_GRAPHS}"


def test_the_switched_passes_have_a_table_of_their_own():
    record = {
        "gamma": 5,
        "list_len": 10,
        "batch_size": 1,
        "users": 50,
        "loop_switch_p50_ms": 55.0,
        "loop_switch_baseline_p50_ms": 60.5,
        "loop_switch_speedup": 1.1,
        "loop_switch_equal": 50,
        "loop_replays": 580,
        "loop_switch_phases_ms": {"on": {"decode": 36.5}, "off": {"decode": 42.0}},
    }
    lines = bench.loop_switch_markdown([record, {"gamma": 5}])
    assert lines[0] == "## The decode loop graph against vLLM's loop, in one engine"
    assert "| 5 | 10 | 1 | 50 | 55.0 | 60.5 | 1.1 | 50 / 50 | 580 | 36.5 | 42.0 |" in lines
    del record["loop_switch_phases_ms"]  # batch sizes above 1: no phases
    assert "| 5 | 10 | 1 | 50 | 55.0 | 60.5 | 1.1 | 50 / 50 | 580 | - | - |" in bench.loop_switch_markdown([record])
    assert bench.loop_switch_markdown([{"gamma": 5}]) == []


def test_a_records_loop_graph_cell_is_its_count_or_the_setting_of_its_day():
    """The Records table's loop graph cell: the rounds the graph served where the record counted them; a served
    record, whose server answers no worker RPC, says not read (its graphs are on by default, so "off" would be
    false); offline records from before the count (the setting off by default then) say on for padrec_loop only,
    and - without a draft."""
    counted = {"method": "eagle_vanilla", "speculative_method": "eagle", "loop_graph_rounds": 0}
    assert bench.loop_graph_of(counted) == "0" and bench.loop_graph_of(counted | {"loop_graph_rounds": 591}) == "591"
    assert bench.loop_graph_of({"method": "padrec_loop", "speculative_method": "eagle"}) == "on"
    assert bench.loop_graph_of({"method": "padrec", "speculative_method": "eagle"}) == "off"
    assert bench.loop_graph_of({"method": "padrec", "speculative_method": "eagle", "mode": "serve"}) == "not read"
    assert bench.loop_graph_of({"method": "padrec", "speculative_method": "eagle", "mode": "offline"}) == "off"
    assert bench.loop_graph_of({"method": "none", "speculative_method": None, "mode": "serve"}) == "-"
    assert bench.loop_graph_of({"method": "none", "speculative_method": None}) == "-"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--engine-core", "in_process"], "each needs its core in its own process"),
        (["--gpu-memory-utilization", "0.7"], "leaves no room for the engines beside it"),
    ],
)
def test_pairing_needs_engines_in_their_own_processes_and_room_for_two(argv, says, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, *argv])
    assert says in capsys.readouterr().err
    bench.parse_args([*BASE, *argv, "--pair", "none"])  # unpaired: either is fine


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--rivals", "eagle", "padrec", "--gpu-memory-utilization", "0.5"], "at most 0.41"),  # 0.5 + 0.3 + 0.24
        (["--rivals", "eagle", "eagle"], "--rivals: each method once, got eagle eagle"),
        (["--rivals", "eagle", "--methods", "none", "eagle"], "--rivals stand beside padrec's engine: run padrec too"),
        (["--rivals", "eagle", "--pin-cpus"], "not with --modes serve, --engine-core in_process or --pin-cpus"),
        (["--rivals", "eagle_one_step"], "--rivals eagle_one_step needs --eagle-one-step-draft"),
        (["--rivals", "none"], "invalid choice: 'none'"),  # a rival drafts
    ],
)
def test_rivals_need_padrec_their_drafts_and_room(argv, says, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, "--eagle-draft", "e", *argv])
    assert says in capsys.readouterr().err


def test_rivals_fit_beside_a_smaller_engine():
    args = bench.parse_args(
        [*BASE, "--eagle-draft", "e", "--rivals", "eagle", "padrec", "--gpu-memory-utilization", "0.4"]
    )
    assert args.rivals == ["eagle", "padrec"]
    assert bench.parse_args([*BASE, "--eagle-draft", "e", "--rivals", "eagle"]).gpu_memory_utilization == 0.5
    # not given: the measured engine takes what the paired baseline (0.3) and the rivals (0.12 each) leave of 0.95
    drafts = [*BASE, "--eagle-draft", "e", "--eagle-one-step-draft", "o"]
    share = lambda *argv: bench.parse_args([*drafts, *argv]).gpu_memory_utilization  # noqa: E731
    assert share() == bench.DEFAULT_MEMORY == 0.5
    assert share("--rivals", "eagle", "padrec") == 0.41
    assert share("--rivals", "eagle", "eagle_one_step", "padrec") == 0.29
    assert share("--rivals", "eagle", "eagle_one_step", "eagle_vanilla", "padrec") == 0.17
    assert share("--rivals", "eagle", "eagle_one_step", "eagle_vanilla", "padrec", "--pair", "none") == 0.47
    assert share("--rivals", "eagle", "eagle_one_step", "eagle_vanilla", "padrec") >= bench.RIVAL_MEMORY


def test_too_many_rivals_leave_the_measured_engine_too_little_memory(monkeypatch, capsys):
    monkeypatch.setattr(bench, "RIVAL_MEMORY", 0.2)  # four rivals of 0.2 beside the paired 0.3 leave 0.15 < 0.2
    with pytest.raises(SystemExit):
        bench.parse_args(
            [*BASE, "--eagle-draft", "e", "--eagle-one-step-draft", "o"]
            + ["--rivals", "eagle", "eagle_one_step", "eagle_vanilla", "padrec"]
        )
    assert "less than a rival's 0.2: fewer --rivals" in capsys.readouterr().err


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


def result(method, gamma, rate_by_batch: dict, lists: dict, mode: str = "offline") -> dict:
    """A configuration's result: one record per batch size at lists of 10, ``rate`` tokens in 1 s."""
    records = [
        bench.pass_record(
            method,
            gamma,
            10,
            batch,
            mode,
            bench.call_timing([1.0], [int(rate)], 1),
            [[1]],
            [[1]],
            counters(),
            invalid_items=0,
        )
        for batch, rate in rate_by_batch.items()
    ]
    records = [r | {"engine_core": "own_process"} for r in records]  # as run_config marks them
    lists = {f"{mode}_{name}": value for name, value in lists.items()}
    return {"method": method, "gamma": gamma, "mode": mode, "startup_seconds": 1.0, "records": records} | {
        "lists": lists
    }


def test_speedup_and_equality_are_against_none_in_the_same_mode_list_length_and_batch_size():
    plain = result("none", 0, {1: 100, 64: 2000}, {"10_1": [[1, 2], [3]], "10_64": [[4]]})
    spec = result("padrec", 5, {1: 250, 64: 1500}, {"10_1": [[1, 2], [3, 9]], "10_64": [[4]]})
    served_plain = result("none", 0, {1: 50}, {"10_1": ["<a_1>", "<a_2>"]}, mode="serve")
    served = result("padrec", 5, {1: 100}, {"10_1": ["<a_1>", "<a_2>"]}, mode="serve")
    bench.attach_baseline([plain, spec, served_plain, served])
    at_1, at_64 = spec["records"]
    assert at_1["speedup_vs_no_spec"] == 2.5 and at_64["speedup_vs_no_spec"] == 0.75
    assert (at_1["equal_to_no_spec"], at_1["users_compared"]) == (1, 2) and at_64["equal_to_no_spec"] == 1
    assert plain["records"][0]["speedup_vs_no_spec"] == 1.0
    (served_1,) = served["records"]  # against the served none's 50 tokens/s, not the offline 100
    assert served_1["speedup_vs_no_spec"] == 2.0 and served_1["equal_to_no_spec"] == 2


def test_vanilla_v1_methods_are_measured_against_no_speculation_on_model_runner_v1():
    """ngram and medusa run on Model Runner V1 with unconstrained lists: their speedup and equality are against
    none_v1's lists, never against the constrained none's."""
    plain = result("none", 0, {1: 100}, {"10_1": [[1, 2]]})
    plain_v1 = result("none_v1", 0, {1: 80}, {"10_1": [[5, 6]]})
    ngram = result("ngram", 3, {1: 120}, {"10_1": [[5, 6]]})
    padrec = result("padrec", 3, {1: 250}, {"10_1": [[1, 2]]})
    bench.attach_baseline([plain, plain_v1, ngram, padrec])
    (ngram_1,), (padrec_1,) = ngram["records"], padrec["records"]
    assert ngram_1["speedup_vs_no_spec"] == 1.5 and ngram_1["equal_to_no_spec"] == 1  # 120 / 80, none_v1's list
    assert padrec_1["speedup_vs_no_spec"] == 2.5 and padrec_1["equal_to_no_spec"] == 1
    assert plain_v1["records"][0]["speedup_vs_no_spec"] == 1.0
    only_v1 = result("ngram", 3, {1: 120}, {"10_1": [[5, 6]]})
    bench.attach_baseline([plain, only_v1])  # no none_v1 in the run: no ratio rather than a wrong one
    assert only_v1["records"][0]["speedup_vs_no_spec"] is None


def test_the_default_graphs_baseline_keeps_vllms_graphs_and_every_v2_record_is_measured_against_it():
    """none_default_graphs: vLLM's CUDA graphs whatever the run's, its speed beside every V2 record's; the run's none
    stays the baseline of speedup_vs_no_spec (and of none_default_graphs itself: what the graphs settings give)."""
    args = bench.parse_args([*BASE, "--batch-sizes", "1", "--max-cudagraph-capture-size", "prompts"])
    args.longest_prompt, args.cudagraph_mode = 101, "full"
    assert bench.compilation_args(args, "none_default_graphs", 0) == {}
    assert bench.compilation_args(args, "none", 0) != {}
    assert "none_default_graphs" not in bench.DEFAULT_METHODS
    assert bench.configurations(bench.parse_args([*BASE, "--methods", "none", "none_default_graphs"])) == [
        ("none", 0),
        ("none_default_graphs", 0),
    ]
    plain = result("none", 0, {1: 100}, {"10_1": [[1, 2]]})
    vanilla = result("none_default_graphs", 0, {1: 80}, {"10_1": [[1, 2]]})
    padrec = result("padrec", 5, {1: 240}, {"10_1": [[1, 2]]})
    plain_v1 = result("none_v1", 0, {1: 70}, {"10_1": [[5, 6]]})
    ngram = result("ngram", 3, {1: 140}, {"10_1": [[5, 6]]})
    bench.attach_baseline([plain, vanilla, padrec, plain_v1, ngram])
    (padrec_1,), (vanilla_1,), (plain_1,) = padrec["records"], vanilla["records"], plain["records"]
    assert (padrec_1["speedup_vs_no_spec"], padrec_1["speedup_vs_default_graphs"]) == (2.4, 3.0)
    assert (vanilla_1["speedup_vs_no_spec"], vanilla_1["equal_to_no_spec"]) == (0.8, 1)
    assert plain_1["speedup_vs_default_graphs"] == 1.25 and "speedup_vs_default_graphs" not in vanilla_1
    assert "speedup_vs_default_graphs" not in ngram["records"][0]  # V1's unconstrained lists: not comparable
    text = "\n".join(bench.default_graphs_markdown([*plain["records"], *padrec["records"], *ngram["records"]]))
    assert "| padrec | 5 | 10 | 1 | 240.0 | 2.4 | 3.0 |" in text
    assert "| none | 0 | 10 | 1 | 100.0 | 1.0 | 1.25 |" in text
    assert bench.default_graphs_markdown(ngram["records"]) == []


def medusa_draft(folder: Path, heads: int) -> Path:
    """A Medusa draft folder as bench_spec_decode reads it: its config.json's head count."""
    (folder / "medusa").mkdir()
    (folder / "medusa" / "config.json").write_text(json.dumps({"model_type": "medusa", "num_heads": heads}))
    return folder / "medusa"


def test_the_v1_methods_configurations_and_vllm_speculative_configs(tmp_path, monkeypatch):
    medusa = medusa_draft(tmp_path, heads=4)
    argv = [*BASE, "--methods", "none_v1", "ngram", "medusa", "--gammas", "3", "5", "--medusa-draft", str(medusa)]
    args = bench.parse_args([*argv, "--ngram-lookup", "3", "4"])
    proposer = bench.ngram_proposer
    monkeypatch.setattr(bench, "ngram_proposer", lambda: "ngram")  # numba installed
    assert bench.configurations(args) == [("none_v1", 0), ("ngram", 3), ("ngram", 5), ("medusa", 3), ("medusa", 5)]
    assert bench.speculative_config(args, "none_v1", 0, None) is None
    assert bench.speculative_config(args, "ngram", 5, None) == {
        "method": "ngram",
        "num_speculative_tokens": 5,
        "prompt_lookup_min": 3,
        "prompt_lookup_max": 4,
    }
    assert bench.speculative_config(args, "medusa", 3, None) == {
        "method": "medusa",
        "num_speculative_tokens": 3,
        "model": str(medusa),
    }
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "numba" else object())
    assert proposer() == "ngram_gpu"  # vLLM's n-gram proposer that needs no numba
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert proposer() == "ngram"
    assert bench.skipped_configuration(args, "medusa", 3) is None
    assert bench.skipped_configuration(args, "medusa", 5) == f"gamma 5 needs 5 Medusa heads, {medusa} has 4"
    assert bench.skipped_configuration(args, "ngram", 5) is None
    assert bench.list_xargs("ngram", 10) is None and bench.list_xargs("none", 10)["padrec_num_items"] == 10
    assert bench.runner_environment("medusa") == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert bench.runner_environment("none") == {}
    assert all(bench.METHODS[m].runner == "v2" for m in bench.DEFAULT_METHODS)


def test_a_configuration_says_its_model_runner_and_vllms_method_in_every_record(monkeypatch):
    record = {"method": "ngram", "batch_size": 1}
    monkeypatch.setattr(bench, "offline_passes", lambda args, catalog, samples, table: (1.0, [dict(record)], {}))
    monkeypatch.setattr("vllm_padrec.catalog.ItemCatalog.load", lambda path: None)
    monkeypatch.setattr("vllm_padrec.data.load_dataset", lambda path: SimpleNamespace(eval_samples=lambda *a: []))
    monkeypatch.setattr("vllm_padrec.integration.recommendation_service.read_max_history", lambda path: 20)
    monkeypatch.setattr(bench, "ngram_proposer", lambda: "ngram_gpu")
    for method, runner, vllm_method in (("ngram", "v1", "ngram_gpu"), ("padrec", "v2", "eagle"), ("none", "v2", None)):
        args = bench.parse_args([*BASE, "--methods", "none_v1", "ngram", "padrec"])
        args.one, args.one_gamma = method, 3
        (got,) = bench.run_config(args)["records"]
        assert (got["runner"], got["speculative_method"]) == (runner, vllm_method)
        assert got["engine_core"] == "own_process"


def test_prompt_graphs_read_the_longest_prompt_of_the_test_users(monkeypatch):
    """With ``prompts`` a configuration measures its users' prompts before its engine starts: the longest decides the
    capture size that its engines get and its records carry."""
    seen = {}

    def passes(args, catalog, samples, table):
        seen["compiled"] = bench.compilation_args(args, "none", 0)
        return 1.0, [{"method": "none", "batch_size": 1}], {}

    catalog = SimpleNamespace(render_prompt=lambda history: [0] * (5 * len(history) + 2))
    users = [SimpleNamespace(history=list(range(n))) for n in (3, 20, 7)]  # prompts of 17, 102 and 37 tokens
    monkeypatch.setattr(bench, "offline_passes", passes)
    monkeypatch.setattr("vllm_padrec.catalog.ItemCatalog.load", lambda path: catalog)
    monkeypatch.setattr("vllm_padrec.data.load_dataset", lambda path: SimpleNamespace(eval_samples=lambda *a: users))
    monkeypatch.setattr("vllm_padrec.integration.recommendation_service.read_max_history", lambda path: 20)
    args = bench.parse_args([*BASE, "--batch-sizes", "1", "--max-cudagraph-capture-size", "prompts"])
    args.one, args.one_gamma = "none", 0
    (got,) = bench.run_config(args)["records"]
    assert seen["compiled"] == {"compilation_config": {"max_cudagraph_capture_size": 104}}
    assert got["max_cudagraph_capture_size"] == 104 and got["cudagraph_mode"] is None
    args.cudagraph_mode = "full"  # the records say the mode their engine ran
    (got,) = bench.run_config(args)["records"]
    assert (got["max_cudagraph_capture_size"], got["cudagraph_mode"]) == (104, "FULL")
    assert bench.graphs_markdown([got | {"gamma": 0}]) == [
        "CUDA graphs where not vLLM's defaults (`FULL_AND_PIECEWISE`, up to its cap): none g0: graphs up to 104 "
        "tokens, FULL.",
        "",
    ]
    assert bench.graphs_markdown([{"method": "none", "gamma": 0, "max_cudagraph_capture_size": None}]) == []


@pytest.mark.parametrize(("method", "runner_env"), [("ngram", "0"), ("padrec", None)])
def test_an_offline_engine_starts_on_its_methods_model_runner(method, runner_env, monkeypatch):
    """The V1 methods' engines see VLLM_USE_V2_MODEL_RUNNER=0 when vLLM is started (its config reads it then)."""
    import vllm

    seen = {}

    class Started(Exception):
        pass

    def fake_llm(**kwargs):
        seen["env"], seen["spec"] = os.environ.get("VLLM_USE_V2_MODEL_RUNNER"), kwargs["speculative_config"]
        raise Started

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "unset after the test")  # so that the test's setting is undone
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    monkeypatch.setattr(vllm, "LLM", fake_llm)
    args = bench.parse_args([*BASE, "--methods", "none_v1", "ngram", "padrec"])
    args.one, args.one_gamma = method, 3
    with pytest.raises(Started):
        bench.offline_passes(args, None, [], None)
    assert seen["env"] == runner_env and seen["spec"]["method"] == bench.METHODS[method].speculative_method


def fake_configuration(rate_of, ran: list | None = None):
    """A stand-in for one configuration's child process (``bench_driver``'s ``subprocess.call``): it writes the
    result of an engine making ``rate_of(method, gamma)`` tokens/s at batch 1 (lists of 10) and appends
    ``"METHOD_gGAMMA"`` to ``ran``."""

    def child(command, stdout, stderr, env):
        method, gamma = command[command.index("--one") + 1], int(command[command.index("--one-gamma") + 1])
        if ran is not None:
            ran.append(f"{method}_g{gamma}")
        payload = result(method, gamma, {1: rate_of(method, gamma)}, {"10_1": [[1]]})
        Path(command[command.index("--result") + 1]).write_text(json.dumps(payload))
        return 0

    return child


def test_a_medusa_gamma_above_its_heads_is_skipped_with_a_reason_and_the_rest_runs(tmp_path, monkeypatch):
    medusa = medusa_draft(tmp_path, heads=3)
    ran = []
    rates = {"none_v1_g0": 100, "medusa_g3": 150}
    child = fake_configuration(lambda method, gamma: rates[f"{method}_g{gamma}"], ran)
    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = [*BASE, "--methods", "none_v1", "medusa", "--medusa-draft", str(medusa), "--gammas", "3", "5"]
    argv += ["--batch-sizes", "1", "--list-lens", "10", "--out", str(tmp_path), "--work-dir", str(tmp_path)]
    assert bench.main([*argv, "--cache-root", str(tmp_path)]) == 0  # skipped by design: no failure
    assert ran == ["none_v1_g0", "medusa_g3"]
    payload = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())
    assert payload["errors"] == {}
    assert payload["skipped"] == {"medusa_g5": f"gamma 5 needs 5 Medusa heads, {medusa} has 3"}
    reason = f"Configuration medusa_g5 not run: gamma 5 needs 5 Medusa heads, {medusa} has 3"
    assert reason in (tmp_path / "spec_decode_beauty_atspeed.md").read_text()
    (medusa_record,) = [r for r in payload["records"] if r["method"] == "medusa"]
    assert medusa_record["speedup_vs_no_spec"] == 1.5


def test_a_forced_tail_vllm_refuses_is_skipped_with_a_reason_before_any_engine_starts(tmp_path, monkeypatch):
    """padrec_tail verifies gamma + 2 tokens a step; vLLM 0.26.0 takes more tokens than the draft's n_predict
    only in multiples of it (the H200 run of 2026-12-03 lost an engine start to gamma 5 of a 5-step head): that
    configuration is skipped with the reason, gamma 3 (5 tokens) runs."""
    from vllm_padrec.integration.draft_check import speculative_tokens_problem

    assert speculative_tokens_problem(7, 5) and speculative_tokens_problem(6, 4)
    assert not any(speculative_tokens_problem(k, 5) for k in (1, 3, 5, 10, 15))
    assert speculative_tokens_problem(7, None) is None  # a draft without n_predict: vLLM checks nothing
    draft = tmp_path / "padrec"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"n_predict": 5}))
    ran = []
    monkeypatch.setattr(bench_driver.subprocess, "call", fake_configuration(lambda method, gamma: 100 + gamma, ran))
    argv = [*BASE, "--methods", "none", "padrec", "padrec_tail", "--padrec-draft", str(draft), "--gammas", "3", "5"]
    argv += ["--batch-sizes", "1", "--list-lens", "10", "--out", str(tmp_path), "--work-dir", str(tmp_path)]
    assert bench.main([*argv, "--cache-root", str(tmp_path)]) == 0  # skipped by design: no failure
    assert ran == ["none_g0", "padrec_g3", "padrec_g5", "padrec_tail_g3"]
    payload = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())
    assert payload["skipped"] == {"padrec_tail_g5": f"{speculative_tokens_problem(7, 5)} ({draft})"}


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
        mode = command[command.index("--one-mode") + 1]
        ran.append((method, gamma, mode, table, Path(env["VLLM_CACHE_ROOT"]).name))
        assert command[:4] == ["timeout", "--kill-after", "30", "1200"]  # --config-timeout's default
        rates = {"none": {1: 100, 64: 2000}, "padrec": {1: 250, 64: 1500}}.get(method, {1: 240, 64: 2000})
        if mode == "serve":  # served, PAD-Rec wins at 64 too: the table must not read it
            rates = {"none": {1: 50, 64: 1000}, "padrec": {1: 200, 64: 2000}}.get(method, {1: 150, 64: 1000})
        payload = result(method, gamma, rates, {"10_1": [[1]], "10_64": [[2]]}, mode=mode)
        Path(command[command.index("--result") + 1]).write_text(json.dumps(payload))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = [*BASE, "--methods", "none", "padrec", "padrec_adaptive", "--gammas", "5", "--batch-sizes", "1", "64"]
    argv += ["--list-lens", "10", "--out", str(tmp_path), "--work-dir", str(tmp_path), "--cache-root", str(tmp_path)]
    assert bench.main([*argv, "--modes", "serve", "offline"]) == 0  # run in MODES' order whatever the order given
    table = [[1, 63, 5], [64, 64, 0]]  # from the offline records alone
    assert ran == [
        ("none", 0, "offline", None, "none_g0"),
        ("none", 0, "serve", None, "none_g0_serve"),
        ("padrec", 5, "offline", None, "padrec_g5"),
        ("padrec", 5, "serve", None, "padrec_g5_serve"),
        ("padrec_adaptive", 5, "offline", table, "padrec_adaptive_g5"),
        ("padrec_adaptive", 5, "serve", table, "padrec_adaptive_g5_serve"),
    ]
    payload = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())
    assert payload["adaptive_table"] == table and len(payload["records"]) == 12
    by = {(r["method"], r["mode"], r["batch_size"]): r for r in payload["records"]}
    assert by["padrec_adaptive", "offline", 64]["speedup_vs_no_spec"] == 1.0
    assert by["padrec_adaptive", "offline", 64]["equal_to_no_spec"] == 1
    assert by["padrec", "serve", 64]["speedup_vs_no_spec"] == 2.0  # against the served none
    ran.clear()
    served = [a for a in argv if a != "padrec_adaptive"]  # its table reads the offline records
    assert bench.main([*served, "--modes", "serve"]) == 0  # served alone: no offline engine starts
    assert [(m, mode) for m, _, mode, _, _ in ran] == [("none", "serve"), ("padrec", "serve")]
    with pytest.raises(SystemExit):
        bench.parse_args([*argv, "--modes", "serve"])
    ran.clear()
    assert bench.main(argv) == 0 and {mode for _, _, mode, _, _ in ran} == {"offline"}  # the default
    text = (tmp_path / "spec_decode_beauty_atspeed.md").read_text()
    assert (
        "| padrec | v2 | own_process | offline | bfloat16 | 5 | 10 | 1 | 1 | 250.0 | 2.5 |" in text
        and "[[1, 63, 5], [64, 64, 0]]" in text
    )
    assert text.index("## Goals (issue 14)") < text.index("## Records")
    assert (tmp_path / "spec_decode_beauty_atspeed.png").stat().st_size > 1000


def test_an_adaptive_table_that_never_drafts_starts_no_engine_and_says_why(tmp_path, monkeypatch):
    ran = []

    def child(command, stdout, stderr, env):  # PAD-Rec loses at every batch size
        method, gamma = command[command.index("--one") + 1], int(command[command.index("--one-gamma") + 1])
        ran.append(method)
        rates = {"none": {1: 100, 64: 2000}}.get(method, {1: 90, 64: 1500})
        payload = result(method, gamma, rates, {"10_1": [[1]], "10_64": [[2]]})
        Path(command[command.index("--result") + 1]).write_text(json.dumps(payload))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = [*BASE, "--methods", "none", "padrec", "padrec_adaptive", "--gammas", "5", "--batch-sizes", "1", "64"]
    argv += ["--list-lens", "10", "--out", str(tmp_path), "--work-dir", str(tmp_path), "--cache-root", str(tmp_path)]
    assert bench.main(argv) == 0  # not run by design: no failure
    assert ran == ["none", "padrec"]
    payload = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())
    assert payload["errors"] == {}
    why = "its table [[1, 64, 0]] drafts at no batch size (none's records)"
    assert payload["skipped"] == {"padrec_adaptive_g5": why}


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


@pytest.mark.parametrize("method", ["eagle_one_step", "padrec_one_step"])
def test_a_one_step_method_reads_its_own_draft(method, capsys):
    option = f"--{method.replace('_', '-')}-draft"
    args = bench.parse_args([*BASE, "--methods", method, option, "/one"])
    assert bench.speculative_config(args, method, 5, None)["model"] == "/one"
    assert method not in bench.parse_args(BASE).methods  # opt-in: it needs a head of its own
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, "--methods", method])
    assert f"{option} is required by the methods ['{method}']" in capsys.readouterr().err


def test_the_forced_tail_method_verifies_its_slots_beside_the_drafts_gamma():
    args = bench.parse_args([*BASE, "--methods", "none", "padrec_tail"])
    config = bench.speculative_config(args, "padrec_tail", 3, None)
    assert config["num_speculative_tokens"] == 5 and config["model"] == args.padrec_draft
    assert bench.METHODS["padrec_tail"].padrec == {"forced_tail": 2}  # the server's padrec.forced_tail
    assert bench.speculative_config(args, "padrec", 3, None)["num_speculative_tokens"] == 3
    assert "padrec_tail" not in bench.parse_args(BASE).methods  # opt-in
    assert bench.configurations(args) == [("none", 0), ("padrec_tail", 3), ("padrec_tail", 5)]


def test_the_served_pass_command_is_one_vllm_bench_serve_accepts():
    """Every flag of bench_serve_command parses with vLLM 0.26.0's own `vllm bench serve` parser, as meant."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = bench.parse_args(BASE)
    xargs = bench.list_xargs("padrec", 10)
    command = bench.bench_serve_command(args, "http://127.0.0.1:8051", "m", Path("/p.json"), 51, xargs, 16, 256)
    assert command[:3] == ["vllm", "bench", "serve"]
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    parsed = parser.parse_args(command[3:])
    assert (parsed.dataset_name, parsed.dataset_path, parsed.sharegpt_output_len) == ("sharegpt", "/p.json", 51)
    assert (parsed.max_concurrency, parsed.num_prompts, parsed.temperature) == (16, 256, 0.0)
    assert parsed.disable_shuffle and parsed.save_detailed
    assert parsed.extra_body == {"vllm_xargs": {"padrec_constraint": 1, "padrec_num_items": 10, "padrec_no_repeat": 1}}
    assert parsed.percentile_metrics == "e2el,ttft" and parsed.metric_percentiles == "50,99"
    plain = bench.bench_serve_command(args, "http://127.0.0.1:8051", "m", Path("/p.json"), 51, None, 16, 256)
    assert "--extra-body" not in plain and parser.parse_args(plain[3:]).extra_body is None  # Model Runner V1


def test_the_served_prompts_reach_vllm_bench_serve_as_written_in_order_without_pandas(tmp_path, monkeypatch):
    """vLLM 0.26.0's own ShareGPT loader reads sharegpt_dataset's file, the pandas-free path: every history
    prompt once, in order, untouched (no chat template), each asking for the list's tokens."""
    from vllm.benchmarks.datasets import datasets as vllm_datasets

    from vllm_padrec.data import SyntheticConfig, generate_synthetic
    from vllm_padrec.target.tokenizer import build_tokenizer

    monkeypatch.setattr(vllm_datasets, "pd", None)  # the GPU machine's kit has no pandas: the loader must not need it
    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=6, codebook_sizes=(4, 4))).catalog
    tokens = catalog.layout.token_strings()
    histories = [[0, 1], [2], [3, 4, 5], [6], [7, 8]]
    prompts = ["".join(tokens[t] for t in catalog.render_prompt(h)) for h in histories]
    path = tmp_path / "prompts.json"
    path.write_text(bench.sharegpt_dataset(prompts))
    loaded = vllm_datasets.ShareGPTDataset(dataset_path=str(path), disable_shuffle=True, random_seed=0)
    samples = loaded.sample(tokenizer=build_tokenizer(catalog.layout), num_requests=len(prompts), output_len=31)
    assert [s.prompt for s in samples] == prompts
    assert [s.prompt_len for s in samples] == [len(catalog.render_prompt(h)) for h in histories]
    assert {s.expected_output_len for s in samples} == {31}


@pytest.mark.parametrize("method", ["padrec", "ngram"])
def test_a_served_pass_reads_vllm_bench_serves_result_and_the_servers_counters(method, tmp_path, monkeypatch):
    """served_passes with a fake server and a fake `vllm bench serve`: its timing, the generated texts read back
    as items, and acceptance from the server's counters over the pass."""
    from vllm_padrec.data import SyntheticConfig, generate_synthetic
    from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS
    from vllm_padrec.testing import metrics as metrics_module
    from vllm_padrec.testing import server as server_module

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    text = "".join(catalog.layout.token_strings()[t] for t in catalog.item_token_ids(3)) + "<sep>"
    text += "".join(catalog.layout.token_strings()[t] for t in catalog.item_token_ids(5)) + "</s>"
    scrapes = iter([(2, 3, [2, 1]), (6, 10, [4, 3, 1])])

    class Server:
        base, startup_seconds = "http://fake", 12.5

        def __init__(self, model, args, port, log_path, env):
            self.args, self.env = args, env

        def __enter__(self):
            served.append((self.args, self.env))
            return self

        def __exit__(self, *exc):
            pass

        def post_json(self, path, payload):
            warm_ups.append((path, payload))
            return {}

    def scrape(base):
        rounds, accepted, per_pos = next(scrapes)
        values = dict(zip(SPEC_COUNTERS, (rounds, 5 * rounds, accepted))) | {SPEC_PER_POS: per_pos}
        return SimpleNamespace(spec_counters=lambda: values)

    def bench_serve(command, check, stdout):
        commands.append(command)
        folder, name = command[command.index("--result-dir") + 1], command[command.index("--result-filename") + 1]
        result = {"completed": 2, "total_output_tokens": 9, "output_throughput": 321.04}
        result |= {"p50_e2el_ms": 40.0, "p99_e2el_ms": 55.5, "p50_ttft_ms": 7.25}
        Path(folder, name).write_text(json.dumps(result | {"generated_texts": [text, text]}))

    served, warm_ups, commands = [], [], []
    monkeypatch.setattr(server_module, "VllmServer", Server)
    monkeypatch.setattr(metrics_module, "scrape", scrape)
    monkeypatch.setattr(bench.subprocess, "run", bench_serve)
    args = bench.parse_args(
        [*BASE, "--batch-sizes", "2", "--list-lens", "2", "--users", "2", "--work-dir", str(tmp_path)]
        + ["--max-cudagraph-capture-size", "64", "--cudagraph-mode", "full"]
    )
    args.one, args.one_gamma = method, 5
    monkeypatch.setattr(bench, "ngram_proposer", lambda: "ngram")
    users = [SimpleNamespace(history=[0, 1], targets=[5]), SimpleNamespace(history=[2], targets=[7])]
    startup, records, lists = bench.served_passes(args, catalog, users, None)
    (record,) = records
    assert startup == 12.5 and lists == {"serve_2_2": [text, text]} and (tmp_path / f"serve_{method}_g5").is_dir()
    assert (record["mode"], record["users"], record["tokens_per_s"], record["p50_ms"], record["p99_ms"]) == (
        "serve",
        2,
        321.0,
        40.0,
        55.5,
    )
    assert record["acceptance_length"] == 2.75 and record["accepted_per_draft_step"] == [0.5, 0.5, 0.25]
    assert record["tokens_per_list"] == 4.5 and record["rounds_per_list"] == 2.0  # 4 rounds over the pass
    assert record["recall_at_10"] == 0.5  # user 1's next item (5) is on the list, user 2's (7) is not
    assert record["p50_ttft_ms"] == 7.25
    ((serve_args, env),) = served
    spec = json.loads(serve_args[serve_args.index("--speculative-config") + 1])
    compiled = json.loads(serve_args[serve_args.index("--compilation-config") + 1])
    assert compiled == {"max_cudagraph_capture_size": 64, "cudagraph_mode": "FULL"}
    conversations = json.loads((tmp_path / f"serve_{method}_g5" / "prompts_2_2.json").read_text())
    prompts = [c["conversations"][0]["value"] for c in conversations]
    assert prompts[0].startswith("<s>") and len(prompts) == 2
    ((path, warm_up),) = warm_ups  # one request before the counters are read, the pass's first prompt
    assert path == "/v1/completions" and warm_up["prompt"] == prompts[0] and warm_up["temperature"] == 0
    (command,) = commands
    if method == "padrec":  # Model Runner V2: constrained lists
        assert spec == {"method": "eagle", "model": "/p", "num_speculative_tokens": 5} and env == {}
        assert warm_up["vllm_xargs"]["padrec_num_items"] == 2 and "--extra-body" in command
    else:  # vanilla vLLM's n-gram drafts run on Model Runner V1, which serves no constrained lists
        assert spec == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
        assert env == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
        assert "vllm_xargs" not in warm_up and "--extra-body" not in command


def test_generated_text_reads_back_as_the_layouts_token_ids():
    from vllm_padrec.catalog import TokenLayout

    layout = TokenLayout((4, 4))
    assert layout.token_ids_of_text("<a_1> <b_3><sep>x<zz><a_0></s>") == [6 + 1, 10 + 3, 4, 3, 6, 2]


def test_merge_adds_a_runs_methods_to_the_file_and_replaces_what_it_measures_again(tmp_path, monkeypatch):
    """--merge: a second run (another hold) measuring none and eagle keeps the first run's padrec records, marked
    with that run's date, and replaces its none; without --merge the file holds the second run alone."""
    rates = {"none": 100, "padrec": 250, "eagle": 200}
    monkeypatch.setattr(bench_driver.subprocess, "call", fake_configuration(lambda method, gamma: rates[method]))
    argv = [*BASE, "--gammas", "5", "--batch-sizes", "1", "--list-lens", "10", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--cache-root", str(tmp_path)]
    name = tmp_path / "spec_decode_beauty_atspeed.json"
    for merge, want in (
        (True, {("padrec", True), ("none", False), ("eagle", False)}),
        (False, {("none", False), ("eagle", False)}),
    ):
        assert bench.main([*argv, "--methods", "none", "padrec"]) == 0
        first = json.loads(name.read_text())
        assert bench.main([*argv, "--methods", "none", "eagle", *(["--merge"] if merge else [])]) == 0
        payload = json.loads(name.read_text())
        assert {(r["method"], "measured_on" in r) for r in payload["records"]} == want
        if merge:
            kept = next(r for r in payload["records"] if r["method"] == "padrec")
            assert kept["measured_on"] == first["date"] and kept["dtype"] == "bfloat16"
            assert "padrec (run of " in (tmp_path / "spec_decode_beauty_atspeed.md").read_text()


def test_engine_args_reach_the_children_and_the_records_and_are_refused_with_serve(tmp_path, monkeypatch, capsys):
    seen = []

    def child(command, stdout, stderr, env):
        seen.append(json.loads(command[command.index("--engine-args") + 1]))
        method, gamma = command[command.index("--one") + 1], int(command[command.index("--one-gamma") + 1])
        payload = result(method, gamma, {1: 100}, {"10_1": [[1]]})
        Path(command[command.index("--result") + 1]).write_text(json.dumps(payload))
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    argv = [*BASE, "--methods", "none", "--batch-sizes", "1", "--list-lens", "10", "--out", str(tmp_path)]
    argv += ["--work-dir", str(tmp_path), "--cache-root", str(tmp_path), "--engine-args", '{"tensor_parallel_size": 2}']
    assert bench.main(argv) == 0
    assert seen == [{"tensor_parallel_size": 2}]
    records = json.loads((tmp_path / "spec_decode_beauty_atspeed.json").read_text())["records"]
    assert [r["tensor_parallel_size"] for r in records] == [2]
    with pytest.raises(SystemExit):
        bench.parse_args([*argv, "--modes", "offline", "serve"])
    assert "--engine-args reach the offline engines only" in capsys.readouterr().err


def test_a_record_from_before_the_tensor_parallel_field_merges_as_one_gpus():
    old = {"method": "padrec", "mode": "offline", "dtype": "bfloat16", "gamma": 5, "list_len": 10, "batch_size": 1}
    assert bench.record_key(old) == bench.record_key(old | {"tensor_parallel_size": 1})
    assert bench.record_key(old) != bench.record_key(old | {"tensor_parallel_size": 2})


def batch_one(method, gamma, list_len, p50, steps, repeat=None, dtype="bfloat16"):
    """An offline record at one request at a time with ``steps`` engine steps per list."""
    record = {"method": method, "gamma": gamma, "list_len": list_len, "batch_size": 1, "mode": "offline"}
    record |= {"dtype": dtype, "p50_ms": p50, "p50_ms_repeat": repeat}
    return record | ({"rounds_per_list": steps} if gamma else {"tokens_per_list": steps})


def test_the_batch_one_cost_is_a_line_through_the_list_lengths():
    records = [
        batch_one("none", 0, 10, 100.0, 45.0, repeat=110.0),  # 2.4 ms a step, 1 ms a list
        batch_one("none", 0, 20, 241.0, 103.75, repeat=241.0),
        batch_one("padrec", 5, 10, 40.0, 10.0),  # 10 rounds and the prefill: 2.5 ms a step, 12.5 ms a list
        batch_one("padrec", 5, 20, 65.0, 20.0),
        batch_one("padrec", 5, 40, 115.0, 40.0),
        batch_one("eagle", 5, 10, 40.0, 10.0),  # one list length: no line
        {**batch_one("eagle", 5, 20, 40.0, None)},  # a record from before the step counts
        {**batch_one("padrec", 3, 10, 40.0, 10.0), "batch_size": 4},
    ]
    costs = {(c["method"], c["gamma"]): c for c in bench.batch_one_costs(records)}
    assert set(costs) == {("none", 0), ("padrec", 5)}
    none, padrec = costs["none", 0], costs["padrec", 5]
    assert (none["ms_per_step"], none["fixed_ms_per_list"], none["repeat_spread"]) == (2.4, -8.0, 0.1)
    assert (padrec["ms_per_step"], padrec["fixed_ms_per_list"], padrec["repeat_spread"]) == (2.5, 12.5, None)
    assert padrec["list_lens"] == [10, 20, 40]
    text = "\n".join(bench.batch_one_costs_markdown(records))
    assert "| padrec | bfloat16 | 5 | 10, 20, 40 | 2.5 | 12.5 | - |" in text
    assert "| none | bfloat16 | 0 | 10, 20 | 2.4 | -8.0 | 10.0 % |" in text
    assert bench.batch_one_costs_markdown(records[5:]) == []


def test_the_phase_table_divides_decode_by_the_steps_after_the_prefill():
    phases = {"submit": 1.0, "queue": 0.5, "first_token": 6.0, "decode": 30.0, "finish": 2.5}
    records = [
        batch_one("padrec", 5, 10, 40.0, 10.0) | {"phases_ms": phases},  # 10 rounds after the prefill: 3 ms each
        batch_one("none", 0, 10, 100.0, 16.0) | {"phases_ms": phases},  # 16 tokens: 15 steps after the first
        batch_one("eagle", 5, 10, 40.0, 10.0),  # no phases (an engine without stats): no row
    ]
    text = "\n".join(bench.batch_one_phases_markdown(records))
    assert "| padrec | bfloat16 | 5 | 10 | 40.0 | 1.0 | 0.5 | 6.0 | 30.0 | 2.5 | 3.0 | 10.0 |" in text
    assert "| none | bfloat16 | 0 | 10 | 100.0 | 1.0 | 0.5 | 6.0 | 30.0 | 2.5 | 2.0 | 10.0 |" in text
    assert "| eagle |" not in text
    assert bench.batch_one_phases_markdown(records[2:]) == []


def test_the_plot_gives_a_method_and_gamma_one_color_in_both_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rec(method, gamma, batch, per_step):
        return {"method": method, "gamma": gamma, "list_len": 10, "batch_size": batch, "mode": "offline"} | {
            "speedup_vs_no_spec": 1.5 if gamma else 1.0,
            "accepted_per_draft_step": per_step,
        }

    records = [rec("none", 0, 1, None), rec("none", 0, 4, None), rec("padrec", 3, 4, None)]
    records += [rec("padrec", 5, 1, [0.8, 0.6]), rec("padrec", 5, 4, None), rec("eagle", 3, 1, [0.7])]
    records += [rec("eagle", 3, 4, None) | {"measured_on": "2026-12-02T15:14:57+0000"}]  # an earlier run's
    fig = bench.plot(plt, {"records": records})
    left, right = ({line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes)
    assert set(right) == {"padrec (gamma 5)", "eagle (gamma 3)"}
    assert all(right[label] == left[label] for label in right)
    assert len(set(left.values())) == len(left)  # and a different color for each line
    assert "eagle (gamma 3) (run of 2026-12-02)" in left  # not joined to this run's line
    (legend,) = fig.legends  # one legend beside both panels, each line named once
    named = [text.get_text() for text in legend.get_texts()]
    assert sorted(named) == sorted(label for label in left if not label.startswith("_"))
    plt.close(fig)


@pytest.fixture
def sixteen_cpus(monkeypatch, tmp_path):
    """16 CPUs this process may use, each a physical core of its own (an empty sysfs)."""
    from vllm_padrec.testing import cpu_pinning

    split = cpu_pinning.split_cores
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(bench.cpu_pinning, "split_cores", lambda cpus, parts: split(cpus, parts, tmp_path))
    events = []
    monkeypatch.setattr(bench.cpu_pinning, "pin_thread", lambda cpus: events.append(("thread", cpus)))
    monkeypatch.setattr(bench.cpu_pinning, "pin_process", lambda cpus: events.append(("process", cpus)))
    return events


@pytest.mark.parametrize("pairing", ["all", "none"])
def test_pinned_engines_start_on_cores_of_their_own_and_the_benchmark_moves_off_them(
    monkeypatch, sixteen_cpus, pairing
):
    """--pin-cpus: the thread that builds each engine is pinned to that engine's cores first (its core process
    inherits them), then every thread of the benchmark moves to the rest; the records name the sets."""
    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    catalog = generate_synthetic(SyntheticConfig(num_items=12, num_users=4, codebook_sizes=(4, 4))).catalog
    tokens = [*catalog.item_token_ids(3), catalog.layout.EOS]
    fake = PairedEngines({"draft": [0.01] * 9, "baseline": [0.01] * 9}, tokens)
    events = sixteen_cpus

    class Logged(fake.LLM):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            events.append(self.name)

    fake.LLM = Logged
    install(monkeypatch, fake)
    argv = [*BASE, "--batch-sizes", "1", "--list-lens", "1", "--users-latency", "2", "--pin-cpus", "--pair", pairing]
    args = bench.parse_args(argv)
    args.one, args.one_gamma = "padrec", 5
    users = [SimpleNamespace(history=[0, 1], targets=[3]) for _ in range(2)]
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    if pairing == "all":
        six, five, last = list(range(6)), list(range(6, 11)), list(range(11, 16))
        assert events == [("thread", six), "draft", ("thread", five), "baseline", ("process", last)]
        assert record["cpu_pinning"] == {"engine": "0-5", "baseline": "6-10", "benchmark": "11-15"}
    else:
        assert events == [("thread", list(range(8))), "draft", ("process", list(range(8, 16)))]
        assert record["cpu_pinning"] == {"engine": "0-7", "benchmark": "8-15"}
    assert bench.pinning_markdown([record, record]) == [
        f"Engines pinned to physical cores of their own (`--pin-cpus`, CPU sets): "
        f"{', '.join(f'{k} {v}' for k, v in record['cpu_pinning'].items())}.",
        "",
    ]
    assert bench.pinning_markdown([{}]) == []

    install(monkeypatch, PairedEngines({"draft": [0.01] * 9, "baseline": [0.01] * 9}, tokens))  # not pinned
    events.clear()
    args = bench.parse_args([a for a in argv if a != "--pin-cpus"])
    args.one, args.one_gamma = "padrec", 5
    _, (record,), _ = bench.offline_passes(args, catalog, users, None)
    assert events == [] and "cpu_pinning" not in record


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--engine-core", "in_process", "--pair", "none"], "not with --engine-core in_process or --modes serve"),
        (["--modes", "offline", "serve"], "not with --engine-core in_process or --modes serve"),
    ],
)
def test_pinning_is_refused_where_it_cannot_apply(argv, says, capsys, sixteen_cpus):
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, "--pin-cpus", *argv])
    assert says in capsys.readouterr().err


def test_pinning_on_too_few_cores_is_refused_naming_them(monkeypatch, capsys, sixteen_cpus):
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(SystemExit):
        bench.parse_args([*BASE, "--pin-cpus"])
    assert "--pin-cpus: 2 physical cores (0-1) cannot give 3 sets a core each" in capsys.readouterr().err


def test_the_gpus_state_is_tabled_beside_each_passs_p50():
    clocks = {"sm_mhz_median": 1980.0, "sm_mhz_min": 1410.0, "mem_mhz_median": 3201.0, "power_w_median": 180.5}
    record = {"method": "none", "gamma": 0, "list_len": 10, "batch_size": 1, "p50_ms": 111.5, "p50_ms_repeat": 151.0}
    record |= {
        "gpu_clocks": clocks | {"temp_c_max": 41.0, "samples": 28},
        "gpu_clocks_repeat": {"sm_mhz_median": 1590.0},
    }
    lines = bench.gpu_clocks_markdown([record, {"method": "padrec", "p50_ms": 60.0}])
    assert lines[0] == "## The GPU while each pass ran"
    row = "| none | 0 | 10 | 1 | 111.5 | 1980.0 | 1410.0 | 3201.0 | 180.5 | 41.0 | 28 | - | - | 151.0 | 1590.0 |"
    assert row in lines
    assert len([line for line in lines if line.startswith("| none") or line.startswith("| padrec")]) == 1
    del record["gpu_clocks_repeat"], record["p50_ms_repeat"]  # a pass above batch 1: no repeat
    record["gpu_clocks_paired"] = {"engine": {"sm_mhz_median": 1980.0}, "baseline": None}  # no row in its calls
    assert bench.gpu_clocks_markdown([record])[-2].endswith("| 28 | 1980.0 | - | - | - |")
    assert bench.gpu_clocks_markdown([{"method": "none"}]) == []


def test_the_rivals_table_names_each_rival_and_the_ones_that_did_not_start():
    record = {"method": "padrec", "gamma": 5, "list_len": 10, "batch_size": 1, "users": 50}
    record["rivals"] = {
        "eagle": {"speedup": 1.021, "p50_ms": 58.2, "rival_p50_ms": 59.9, "equal": 50, "sm_mhz": 1980.0},
        "padrec": {"speedup": 0.994, "p50_ms": 58.5, "rival_p50_ms": 58.1, "equal": 50},  # a run before the tally
    }
    record["rivals"]["eagle"] |= {"acceptance_length": 4.2, "rival_acceptance_length": 3.61, "calls": 50}
    lines = bench.rivals_markdown([record, {"method": "none"}, {"rival_errors": {"eagle_one_step": "OOM"}}])
    assert lines[0] == "## padrec against other drafts, call by call"
    assert (
        "| padrec | eagle | 5 | 10 | 1 | 50 | 50 | 58.2 | 59.9 | 1.021 | 1.027 | 4.2 | 3.61 | 50 / 50 | 1980.0 | - |"
        in lines
    )
    assert "| padrec | padrec | 5 | 10 | 1 | 50 | - | 58.5 | 58.1 | 0.994 | - | - | - | 50 / 50 | - | - |" in lines
    del record["rivals"]["padrec"]  # no control beside the pass: nothing to be net of
    without_control = bench.rivals_markdown([record])[-2]
    assert without_control.startswith("| padrec | eagle | 5 | 10 | 1 | 50 | 50 | 58.2 | 59.9 | 1.021 | - | 4.2 |")
    assert "Rival eagle_one_step did not start: `OOM`" in lines
    assert bench.rivals_markdown([{"method": "padrec"}]) == []


def test_the_markdown_states_the_graphs_of_engines_that_left_vllms_defaults():
    """The committed prompt-graph run's Markdown says what its engines captured (104 tokens, vLLM's mode)."""
    payload = json.loads((REPO / "benchmarks/results/spec_decode_beauty_atspeed_depth8_prompt_graphs.json").read_text())
    text = bench.markdown(payload)
    assert "none g0: graphs up to 104 tokens, FULL_AND_PIECEWISE; padrec g5: graphs up to 104 tokens" in text
    assert "default CUDA graphs" not in text  # no none_default_graphs in that run
    payload["records"][0]["speedup_vs_default_graphs"] = 1.1
    assert "## Against no speculation under vLLM's default CUDA graphs" in bench.markdown(payload)


def test_the_markdown_says_why_served_records_read_no_loop_graph_rounds_and_only_where_it_has_them():
    """The committed served run's Records table reads `not read` in its PAD-Rec rows and its caption says why; an
    offline run's caption does not mention served records."""
    served = json.loads(
        (REPO / "benchmarks/results/spec_decode_beauty_atspeed_depth8_full_prompt_graphs_serve.json").read_text()
    )
    text = bench.markdown(served)
    assert bench.SERVED_LOOP_GRAPHS in text
    padrec_rows = [line for line in text.splitlines() if line.startswith("| padrec | v2 | own_process | serve |")]
    assert len(padrec_rows) == 2 and all("| not read |" in row for row in padrec_rows)
    offline = json.loads((REPO / "benchmarks/results/spec_decode_beauty_atspeed_depth8_prompt_graphs.json").read_text())
    assert bench.SERVED_LOOP_GRAPHS not in bench.markdown(offline)


def test_each_record_says_the_recipe_and_epochs_of_the_target_it_ran_on(tmp_path):
    """Holds trained targets of 0.5 and 1 epoch under one results name: each record keeps its own through a
    merge, read from the checkpoint's padrec_recipe.json, and the Markdown's first line names them."""
    (tmp_path / "padrec_recipe.json").write_text(json.dumps({"name": "bench", "epochs": 0.5, "lr": 0.001}))
    assert bench.target_training(str(tmp_path)) == {"target_recipe": "bench", "target_epochs": 0.5}
    assert bench.target_training(str(tmp_path / "elsewhere")) == {}  # a target trained elsewhere: no fields
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "padrec_recipe.json").write_text("{")
    assert bench.target_training(str(tmp_path / "bad")) == {}
    args = bench.parse_args(BASE)
    args.target = str(tmp_path)
    earlier = result("none", 0, {64: 2000}, {"10_64": [[4]]})["records"][0] | {"target_recipe": "bench"}
    earlier |= {"target_epochs": 1.0, "dtype": "bfloat16", "tensor_parallel_size": 1}
    payload = bench.summarize(args, [result("none", 0, {1: 100}, {"10_1": [[1]]})], {}, None, earlier=[earlier])
    epochs = {r["batch_size"]: r["target_epochs"] for r in payload["records"]}
    assert epochs == {64: 1.0, 1: 0.5}
    first = bench.markdown(payload).splitlines()[2]
    assert f"Target `{tmp_path}` (recipe bench, epochs 0.5 and 1);" in first
