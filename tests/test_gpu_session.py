"""benchmarks/gpu_session.py without a GPU and without vLLM: fake jobs, run by threads in place of daemons.

The order of jobs (needs, GPU lanes, the exclusive job), how failures travel to dependents, the exit
statuses of the phases, the settings kept between calls, and what ``wait`` sends back.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from benchmarks import bench_spec_decode
from benchmarks import gpu_session as gs

REPO = Path(__file__).resolve().parent.parent
REAL_JOBS = dict(gs.JOBS)  # the session fixture replaces gs.JOBS with fakes


class Session:
    """A session on a temporary work folder, whose daemons are threads and whose jobs are fakes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpus: int = 1) -> None:
        self.work = tmp_path / "work"
        self.out = tmp_path / "out"
        self.ran: list[str] = []  # job bodies, in the order they started
        self.threads: list[threading.Thread] = []
        monkeypatch.setattr(gs, "WORK", self.work)
        monkeypatch.setattr(gs, "POLL_SECONDS", 0.01)
        monkeypatch.setattr(gs, "JOBS", {})
        monkeypatch.setattr(gs, "gpu_count", lambda: gpus)
        monkeypatch.setattr(gs, "install", self.install)
        monkeypatch.setattr(gs, "spawn", self.spawn)
        monkeypatch.setattr(gs, "REPO", tmp_path / "repo")  # no .gpudata, no .baseline
        monkeypatch.setenv("OUT", str(self.out))
        self.installs: list[str] = []

    def install(self, source: Path, code: str) -> None:
        self.installs.append(code)
        gs.set_installed(code)

    def spawn(self, job: str) -> None:
        thread = threading.Thread(target=gs.run_job, args=(job,), daemon=True)
        self.threads.append(thread)
        thread.start()

    def job(self, name: str, code: int = 0, **fields) -> None:
        """A fake job that records that it ran and exits with ``code`` (raises when ``code`` is an exception)."""

        def body(ctx: gs.JobContext) -> int:
            self.ran.append(name)
            if isinstance(code, Exception):
                raise code
            return code

        gs.JOBS[name] = gs.Job(name, fields.pop("body", body), **fields)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=20)
            assert not thread.is_alive(), "a job's daemon never ended"


@pytest.fixture
def session(monkeypatch, tmp_path) -> Session:
    return Session(monkeypatch, tmp_path)


def test_a_failed_job_fails_its_dependents_and_wait_exits_1(session):
    session.job("train", code=1)
    session.job("lossless", needs=("train",), lane=1)
    session.job("hostile", needs=("lossless",), lane=1)
    assert gs.main(["checks", "train", "lossless", "hostile"]) == 0
    assert gs.main(["wait", "20"]) == 1
    session.join()
    assert session.ran == ["train"]
    assert gs.state("train")["returncode"] == 1
    for job in ("lossless", "hostile"):
        assert gs.state(job)["state"] == "failed"
        assert "a job it needs failed" in gs.state(job)["reason"]


def test_a_job_that_succeeds_lets_its_dependents_run(session):
    session.job("train")
    session.job("lossless", needs=("train",), lane=1)
    session.job("engine_step", needs=("train",), lane=1)
    # named in the wrong order: queued after the jobs they need
    assert gs.main(["checks", "engine_step", "lossless", "train"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert session.ran[0] == "train" and sorted(session.ran) == ["engine_step", "lossless", "train"]
    assert all(gs.state(job)["state"] == "ok" for job in session.ran)


def test_a_job_that_raises_has_failed(session):
    session.job("train", code=RuntimeError("out of memory"))
    session.job("gpu_tests", lane=0)
    assert gs.main(["checks", "train", "gpu_tests"]) == 0
    assert gs.main(["wait", "20"]) == 1
    session.join()
    assert gs.state("train")["state"] == "failed" and gs.state("gpu_tests")["state"] == "ok"


def test_unknown_jobs_and_phases_are_refused_with_exit_2(session):
    session.job("train")
    session.job("gpu_tests", vllm=True)
    assert gs.main(["checks", "train", "nope"]) == 2
    assert gs.main(["run", "nope"]) == 2
    assert gs.main(["start", "gpu_tests"]) == 2  # needs vLLM: not before the kit's install
    assert gs.main(["frobnicate"]) == 2
    assert gs.main(["checks", "--target", "huge"]) == 2
    assert session.ran == [] and gs.queue() == []


def test_gammas_deeper_than_the_heads_are_a_one_line_refusal_and_nothing_is_saved(session, capsys):
    session.job("train")
    assert gs.main(["start", "train", "--spec-gammas", "3", "8"]) == 2
    assert "--spec-gammas 8 is deeper than the heads train for (--draft-gamma 5)" in capsys.readouterr().err
    assert gs.saved_settings() == {} and gs.queue() == [] and session.ran == []
    assert gs.main(["start", "train", "--spec-gammas", "3", "8", "--draft-gamma", "8"]) == 0
    assert gs.saved_settings()["spec_gammas"] == [3, 8]
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert session.ran == ["train"]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"spec_rivals": ("eagle",), "spec_methods": ("none", "eagle"), "drafts": "padrec_eagle"}, "must hold padrec"),
        ({"spec_rivals": ("eagle", "padrec", "eagle"), "drafts": "padrec_eagle"}, "each method once"),
        ({"spec_rivals": ("eagle",), "drafts": "padrec"}, "need their heads: --drafts padrec_eagle"),
    ],
)
def test_rivals_that_cannot_run_are_refused_in_one_line(given, says):
    assert says in gs.Settings(**given).problem()
    assert gs.Settings(spec_rivals=("padrec",), drafts="padrec").problem() is None  # the control needs no other head


def test_a_need_never_queued_is_skipped(session):
    session.job("train")
    session.job("gpu_tests")
    session.job("hostile", needs=("train", "gpu_tests"), lane=1)
    assert gs.main(["checks", "train"]) == 0
    assert gs.main(["wait", "20"]) == 0
    assert gs.main(["checks", "hostile"]) == 0  # gpu_tests was never queued
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert session.ran == ["train", "hostile"]


def test_on_one_gpu_jobs_run_one_at_a_time_in_queue_order(session):
    active, most = [], [0]

    def body(name):
        def run(ctx):
            active.append(name)
            most[0] = max(most[0], len(active))
            time.sleep(0.05)
            active.remove(name)
            session.ran.append(name)
            return 0

        return run

    for name, lane in (("gpu_tests", 0), ("lossless", 1), ("engine_step", 1)):
        session.job(name, lane=lane, body=body(name))
    assert gs.main(["checks", "gpu_tests", "lossless", "engine_step"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert most[0] == 1
    assert session.ran == ["gpu_tests", "lossless", "engine_step"]


def test_on_two_gpus_the_lanes_run_side_by_side_on_their_gpu(monkeypatch, tmp_path):
    session = Session(monkeypatch, tmp_path, gpus=2)
    lane1_started = threading.Event()
    devices = {}

    def gpu_tests(ctx):  # ends only if lossless runs meanwhile, on the other GPU
        devices["gpu_tests"] = ctx.env["CUDA_VISIBLE_DEVICES"]
        return 0 if lane1_started.wait(timeout=10) else 1

    def lossless(ctx):
        devices["lossless"] = ctx.env["CUDA_VISIBLE_DEVICES"]
        lane1_started.set()
        return 0

    session.job("gpu_tests", lane=0, body=gpu_tests)
    session.job("lossless", lane=1, body=lossless)
    assert gs.main(["checks", "gpu_tests", "lossless"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert devices == {"gpu_tests": "0", "lossless": "1"}


def test_the_exclusive_job_runs_alone_and_reinstalls_before_the_jobs_after_it(monkeypatch, tmp_path):
    session = Session(monkeypatch, tmp_path, gpus=2)
    events = []

    def baseline(ctx):  # as engine_step_baseline: another version installed while it runs
        session.install(Path("baseline"), gs.BASELINE)
        events.append("baseline start")
        time.sleep(0.1)
        events.append("baseline end")
        session.install(Path("repo"), gs.CURRENT)
        return 0

    def record(name):
        def run(ctx):
            events.append(name)
            return 0

        return run

    session.job("train", body=record("train"))
    session.job("engine_step_baseline", lane=1, needs=("train",), installed=None, exclusive=True, body=baseline)
    session.job("gpu_tests", lane=0, body=record("gpu_tests"))
    session.job("engine_step", lane=1, needs=("train",), body=record("engine_step"))
    assert gs.main(["start", "train"]) == 0
    assert gs.main(["checks", "engine_step_baseline", "gpu_tests", "engine_step"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert events[:3] == ["train", "baseline start", "baseline end"]
    assert session.installs == [gs.CURRENT, gs.CURRENT, gs.BASELINE, gs.CURRENT]  # start, checks, the job's two
    assert sorted(events[3:]) == ["engine_step", "gpu_tests"]


def test_a_job_refuses_to_run_on_another_installed_version(session):
    session.job("engine_step", lane=1)
    (session.work).mkdir(parents=True)
    (session.work / "installed").write_text(gs.BASELINE)
    assert gs.main(["run", "engine_step"]) == 1
    assert session.ran == [] and gs.state("engine_step")["state"] == "failed"
    assert gs.main(["checks", "engine_step"]) == 1  # nor is anything queued meanwhile


def test_run_runs_now_whatever_its_needs_did(session):
    session.job("train", code=1)
    session.job("lossless", needs=("train",), lane=1, code=0)
    session.job("hostile", needs=("train",), lane=1, code=3)
    assert gs.main(["checks", "train", "lossless"]) == 0
    assert gs.main(["wait", "20"]) == 1
    assert gs.main(["run", "lossless"]) == 0
    assert gs.main(["run", "lossless", "hostile"]) == 3
    session.join()
    assert session.ran == ["train", "lossless", "lossless", "hostile"]


def test_a_job_whose_daemon_is_gone_has_failed(session):
    gs.set_state("train", state="running", pid=2**22 + 12345)  # above Linux's largest pid
    gs.enqueue(["train"])
    assert gs.state("train")["state"] == "failed"


def test_settings_hold_for_later_calls_and_a_calls_own_win(session):
    seen = []
    session.job("train", body=lambda ctx: seen.append(ctx.settings) or 0)
    assert gs.main(["start", "train", "--draft-steps", "5", "--lossless-modes", "fp32", "bf16"]) == 0
    assert gs.main(["wait", "20"]) == 0
    assert gs.main(["checks", "train", "--draft-steps", "7"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert [(s.draft_steps, s.lossless_modes) for s in seen] == [(5, ("fp32", "bf16")), (7, ("fp32", "bf16"))]
    assert seen[0].engine_users == gs.Settings().engine_users


def test_wait_sends_back_status_results_and_log_tails(session, monkeypatch):
    monkeypatch.setattr(gs, "MAX_LOG_BYTES", 100)

    def train(ctx):
        (gs.WORK / "results" / "vllm_lossless_small.md").write_text("0 of 500 lists differ")
        ctx.log_path.write_text("x" * 1000 + "the end")
        return 0

    session.job("train", body=train)
    assert gs.main(["checks", "train"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert sorted(p.name for p in session.out.iterdir()) == ["logs.tgz", "results.tgz", "status.json"]
    assert json.loads((session.out / "status.json").read_text())["train"]["state"] == "ok"
    with tarfile.open(session.out / "results.tgz") as archive:
        assert archive.extractfile("results/vllm_lossless_small.md").read() == b"0 of 500 lists differ"
    with tarfile.open(session.out / "logs.tgz") as archive:
        tail = archive.extractfile("logs/train.log").read()
    assert len(tail) == 100 and tail.endswith(b"the end")


def test_wait_sends_back_a_running_top_k_jobs_configuration_logs(session):
    """A hold taken back mid-job keeps what the last wait packed: a running bench_topk job's configuration logs
    and profiles travel from its work folder, under the names they get among the logs when it ends."""
    started, release = threading.Event(), threading.Event()

    def bench(ctx):
        work = gs.WORK / ctx.job
        work.mkdir(parents=True)
        (work / "bench_topk_engine_bfloat16.log").write_text("engine ran")
        (work / "bench_topk_engine_bfloat16_profile_k20_b1.txt").write_text("profile")
        (work / "bench_topk_engine_bfloat16.json").write_text("{}")  # a result, not a log
        started.set()
        release.wait(20)
        return 0

    session.job("bench_topk", body=bench)
    assert gs.main(["checks", "bench_topk"]) == 0
    assert started.wait(20)
    assert gs.main(["wait", "0"]) == 0  # the job still runs
    with tarfile.open(session.out / "logs.tgz") as archive:
        names = set(archive.getnames())
        assert archive.extractfile("logs/bench_topk.bench_topk_engine_bfloat16.log").read() == b"engine ran"
    assert "logs/bench_topk.bench_topk_engine_bfloat16_profile_k20_b1.txt" in names
    assert not any(name.endswith(".json") for name in names)
    release.set()
    session.join()


def test_wait_sends_back_a_running_served_passs_server_log_and_the_job_keeps_it_among_its_logs(session, monkeypatch):
    """A served pass (bench_spec_decode --modes serve) writes its server's log in a folder of its own: a hold cut
    off while the server starts brings that log back, and run_benchmark moves it among the logs when it ends."""
    started, release = threading.Event(), threading.Event()
    ran = gs.WORK / "bench_spec_decode"

    def benchmark(ctx, module, *args, env=None):  # the benchmark's process, in the work folder it is given
        assert module == "benchmarks.bench_spec_decode" and args[args.index("--work-dir") + 1] == str(ran)
        (ran / "serve_padrec_g8").mkdir(parents=True)
        (ran / "serve_padrec_g8" / "serve.log").write_text("capturing CUDA graphs")
        (ran / "serve_padrec_g8" / "result_10_1.json").write_text("{}")  # a result, not a log
        (ran / "bench_spec_decode_padrec_g8_serve.log").write_text("+ vllm serve")
        started.set()
        release.wait(20)
        return 0

    monkeypatch.setattr(gs.JobContext, "python", benchmark)
    session.job("bench_spec_decode", body=lambda ctx: gs.run_benchmark(ctx, "benchmarks.bench_spec_decode"))
    served = ["--spec-methods", "none", "padrec", "--spec-modes", "serve"]
    assert gs.main(["checks", "bench_spec_decode", "--target", "bench", "--drafts", "padrec", *served]) == 0
    assert started.wait(20)
    assert gs.main(["wait", "0"]) == 0  # the job still runs
    server_log = "logs/bench_spec_decode.serve_padrec_g8.serve.log"
    with tarfile.open(session.out / "logs.tgz") as archive:
        assert archive.extractfile(server_log).read() == b"capturing CUDA graphs"
        assert "logs/bench_spec_decode.bench_spec_decode_padrec_g8_serve.log" in archive.getnames()
        assert not any(name.endswith(".json") for name in archive.getnames())
    release.set()
    session.join()
    assert (gs.WORK / server_log).read_text() == "capturing CUDA graphs"


def test_the_session_target_decides_what_the_draft_jobs_need():
    assert gs.needs_of("lossless", gs.Settings()) == ["train"]
    assert gs.needs_of("lossless", gs.Settings(target="bench")) == ["bench_drafts"]
    assert gs.needs_of("serve", gs.Settings(target="bench")) == ["bench_target"]
    assert gs.needs_of("engine_step_baseline", gs.Settings()) == ["train"]


def test_every_job_is_documented_and_every_phase_has_help(capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## GPU machine") :]
    section = section[: section.index("\n## ", 3)]
    for job in gs.JOBS:
        assert f"    {job} " in gs.__doc__, job
        assert f"`{job}`" in section, job
    for job in gs.CLOSING_CHECK:
        assert job in gs.JOBS
    for phase in ("start", "checks", "run", "status", "wait"):
        assert gs.main([phase, "--help"]) == 0
    assert "--lossless-users" in capsys.readouterr().out


def test_a_job_waits_while_pip_installs_and_fails_after_a_failed_install(session):
    session.job("lossless", lane=1)
    session.job("engine_step", lane=1)
    gs.prepare({})
    gs.set_installed(gs.INSTALLING)
    gs.queue_jobs(["lossless"], gs.Settings())
    time.sleep(0.2)
    assert gs.state("lossless")["state"] == "queued" and session.ran == []
    gs.set_installed(gs.CURRENT)
    session.join()
    assert session.ran == ["lossless"]
    gs.set_installed("none (pip failed to install the current code)")
    assert gs.main(["run", "engine_step"]) == 1 and session.ran == ["lossless"]


def test_a_command_killed_by_a_signal_reads_as_the_shell_says():
    assert [gs.exit_status(code) for code in (0, 1, -9, -15)] == [0, 1, 137, 143]


def test_the_top_k_jobs_run_the_gpu_tests_and_bench_topk(monkeypatch, tmp_path):
    """topk_tests runs the top-K GPU tests; topk_bringup runs bench_topk's four modes in float32."""
    monkeypatch.setattr(gs, "WORK", tmp_path)
    monkeypatch.setattr(gs, "dataset_path", lambda settings: "/data/beauty_atspeed")
    calls, runs = [], []
    ctx = gs.JobContext("topk_bringup", gs.Settings(), {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "run", lambda self, command, env=None: runs.append(command) or 3)
    monkeypatch.setattr(
        ctx.__class__, "python", lambda self, module, *args, env=None: calls.append((module, args, env)) or 5
    )
    assert gs.JOBS["topk_tests"].body(ctx) == 3 and not calls
    assert [path.rsplit("/", 1)[-1] for path in runs[0][-3:]] == [
        "test_integration_gpu_topk.py",
        "test_kv_block_copy_kernel.py",
        "test_device_lists.py",
    ]
    assert gs.JOBS["topk_smoke"].body(ctx) == 3 and runs[1][runs[1].index("-k") + 1] == gs.TOPK_SMOKE
    assert runs[1][-3:] == runs[0][-3:]  # the same files, the quick tests only
    assert gs.JOBS["topk_bringup"].body(ctx) == 5 and len(runs) == 2
    ((module, args, env),) = calls
    assert module == "benchmarks.bench_topk" and env is None  # the job's own environment (ctx.env)
    modes = args[args.index("--modes") + 1 : args.index("--dtypes")]
    assert modes == ("reference", "vllm_beam_search", "engine", "greedy_floor")
    assert args[args.index("--dtypes") + 1] == "float32"


def test_a_session_without_the_small_draft_refuses_jobs_that_need_it(session):
    session.job("train")
    session.job("lossless", needs=(gs.DRAFT,), lane=1)
    session.job("topk_bringup", needs=(gs.TARGET,))
    assert gs.main(["checks", "--no-small-draft", "train", "lossless"]) == 2
    assert gs.main(["checks", "--no-small-draft", "train", "topk_bringup"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert session.ran == ["train", "topk_bringup"]
    assert gs.main(["checks", "lossless"]) == 2  # the setting holds for later calls


def test_the_dataset_setting_picks_the_folder_every_job_reads():
    assert gs.dataset_path(gs.Settings()) == str(gs.WORK / "data" / "beauty_atspeed")
    assert gs.dataset_path(gs.Settings(dataset="games_atspeed")) == str(gs.WORK / "data" / "games_atspeed")


@pytest.mark.parametrize(
    "memory_gib, parts", [(139.8, None), (79.6, "64"), (None, None)], ids=["H200", "H100", "unknown"]
)
def test_the_bench_target_trains_in_half_batches_on_a_card_of_less_memory(monkeypatch, tmp_path, memory_gib, parts):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    monkeypatch.setattr(gs, "gpu_memory_gib", lambda: memory_gib)
    calls = []
    ctx = gs.JobContext("bench_target", gs.Settings(target="bench"), {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    assert gs.JOBS["bench_target"].body(ctx) == 0
    (args,) = calls
    assert (args[args.index("--micro-batch-size") + 1] if "--micro-batch-size" in args else None) == parts


def test_gpu_memory_reads_nvidia_smi_in_mib(monkeypatch):
    def answer(stdout: str) -> float | None:
        done = subprocess.CompletedProcess([], 0, stdout, "")
        monkeypatch.setattr(gs.subprocess, "run", lambda *args, **kwargs: done)
        return gs.gpu_memory_gib()

    assert answer("81559\n") == pytest.approx(79.65, abs=0.01)  # an H100's 80 GB
    assert answer("") is None


def test_the_top_k_must_show_runs_each_dataset_on_its_own_bench_target(monkeypatch, tmp_path):
    """bench_topk on the session dataset's bench target, bench_topk_games on games_atspeed's (trained beside it
    by bench_target_games into its own folder), both with float32 for the equality only."""
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    ctx = gs.JobContext("bench_topk", gs.Settings(target="bench"), {"PATH": "/bin"})
    monkeypatch.setattr(
        ctx.__class__, "python", lambda self, module, *args, env=None: calls.append((self.job, module, args, env)) or 0
    )
    assert gs.JOBS["bench_topk"].body(ctx) == 0
    assert gs.JOBS["bench_topk_games"].body(dataclasses.replace(ctx, job="bench_topk_games")) == 0
    assert gs.JOBS["bench_target_games"].body(dataclasses.replace(ctx, job="bench_target_games")) == 0
    (_, _, beauty, _), (_, _, games, _), (_, train, target_args, _) = calls
    value = lambda args, option: args[args.index(option) + 1]  # noqa: E731
    assert value(beauty, "--target") == str(tmp_path / "bench" / "checkpoint")
    assert value(beauty, "--dataset") == str(tmp_path / "data" / "beauty_atspeed")
    assert value(beauty, "--name") == "topk_beauty_atspeed" and value(games, "--name") == "topk_games_atspeed"
    assert value(games, "--target") == str(tmp_path / "bench_games_atspeed" / "checkpoint")
    assert value(games, "--dataset") == str(tmp_path / "data" / "games_atspeed")
    assert beauty[beauty.index("--exact-modes") + 1 : beauty.index("--exact-modes") + 3] == ("reference", "engine")
    assert value(beauty, "--users-equal") == "500" and value(beauty, "--profile-k") == "20"
    # games_atspeed measures the same, without profiles, sized for one hold beside its training
    measured = lambda args: args[args.index("--modes") : args.index("--concurrency") + 2]  # noqa: E731
    assert measured(games) == measured(beauty) and "--profile" not in games
    assert games[games.index("--own-process-modes") + 1 :] == ("engine", "vllm_beam_search", "--own-process-ks", "20")
    assert value(beauty, "--cache-root") != value(games, "--cache-root")
    assert train == "vllm_padrec.cli" and value(target_args, "--out") == str(tmp_path / "bench_games_atspeed")
    assert gs.JOBS["bench_topk_games"].lane == gs.JOBS["bench_target_games"].lane == 1
    assert gs.needs_of("bench_topk", gs.Settings(target="bench")) == ["bench_target"]


def test_the_atspeed_must_show_times_every_head_in_one_run_and_checks_equality_once(monkeypatch, tmp_path):
    """bench_topk_atspeed: a float32 run of the reference and the AtSpeed-S head's strict rounds, then one
    bfloat16 run with every head's strict and relaxed rounds beside the engine and vLLM's beam search (the
    goals' side-by-side ratios), both merged into the committed topk_<dataset>."""
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    (tmp_path / "results").mkdir()
    ctx = gs.JobContext("bench_topk_atspeed", gs.Settings(target="bench"), {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    assert gs.JOBS["bench_topk_atspeed"].body(ctx) == 0
    equality, speed = calls  # the shorter run first
    value = lambda args, option: args[args.index(option) + 1]  # noqa: E731
    following = lambda args, option: args[args.index(option) + 1 :]  # noqa: E731
    assert value(speed, "--name") == value(equality, "--name") == "topk_beauty_atspeed"
    assert "--merge" in speed and "--merge" in equality
    assert value(speed, "--dtypes") == "bfloat16" and value(equality, "--dtypes") == "float32"
    heads = [text.split("=")[0] for text in following(speed, "--drafts")[:3]]
    assert heads == ["atspeed_s", "atspeed_r", "distill"] and set(heads) == set(gs.ATSPEED_OBJECTIVES)
    assert value(speed, "--profile-k") == "20" and "--profile-one-request" in speed and "--profile" not in equality
    assert following(speed, "--modes")[:4] == ("engine", "vllm_beam_search", "strict", "relaxed")
    assert following(equality, "--modes")[:3] == ("reference", "strict", "--drafts")
    assert value(equality, "--drafts").startswith("atspeed_s=") and value(equality, "--users-equal") == "500"
    assert value(speed, "--draft-beams") == value(equality, "--draft-beams") == "40"


def test_a_later_hold_may_redo_the_atspeed_speed_run_alone_with_its_heads_in_another_order(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    (tmp_path / "results").mkdir()
    settings = gs.Settings(target="bench", atspeed_runs=("speed",), atspeed_heads=("distill", "atspeed_r"))
    ctx = gs.JobContext("bench_topk_atspeed", settings, {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "python", lambda self, module, *args, env=None: calls.append(args) or 7)
    assert gs.JOBS["bench_topk_atspeed"].body(ctx) == 7  # the run's exit code
    (speed,) = calls
    assert speed[speed.index("--dtypes") + 1] == "bfloat16"
    drafts = speed[speed.index("--drafts") + 1 : speed.index("--dtypes")]
    assert [text.split("=")[0] for text in drafts] == ["distill", "atspeed_r"]


def test_the_plain_torch_atspeed_job_runs_in_float32_where_strict_answers_must_equal_the_beam_search(
    monkeypatch, tmp_path
):
    """bench_atspeed exits 1 when a strict answer differs from the beam search's, which bfloat16's rounding makes
    happen (3 to 87 of 100 users on the H200, 2026-12-02), so the job runs it in float32 on every head."""
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    ctx = gs.JobContext("bench_atspeed", gs.Settings(target="bench", dataset="games_atspeed"), {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    assert gs.JOBS["bench_atspeed"].body(ctx) == 0
    (args,) = calls
    assert args[args.index("--dtype") + 1] == "float32"
    assert args[args.index("--target") + 1] == str(tmp_path / "bench_games_atspeed" / "checkpoint")
    drafts = args[args.index("--drafts") + 1 : args.index("--ks")]
    assert [text.split("=")[0] for text in drafts] == list(gs.ATSPEED_OBJECTIVES)


def test_the_atspeed_options_are_checked_and_saved_for_later_calls(session):
    session.job("train")
    assert gs.main(["start", "train", "--atspeed-runs", "speed", "--atspeed-heads", "distill", "atspeed_s"]) == 0
    saved = gs.Settings.from_mapping(gs.saved_settings())
    assert saved.atspeed_runs == ("speed",) and saved.atspeed_heads == ("distill", "atspeed_s")
    assert gs.main(["start", "train", "--atspeed-heads", "medusa"]) == 2  # argparse's usage error
    assert gs.Settings.from_mapping(gs.saved_settings()).atspeed_heads == ("distill", "atspeed_s")
    assert gs.main(["wait", "20"]) == 0
    session.join()


def test_on_one_gpu_untimed_jobs_of_a_kind_run_beside_each_other_and_a_timed_job_runs_alone(session):
    """Two trainings share the GPU, and two test jobs that start vLLM engines do; a training and a vLLM job never
    do (vLLM refuses to start where less than its share of memory is free: the hold of 2026-12-02 lost four
    tests that way); the benchmark queued after them all runs alone."""
    active: list[str] = []
    overlaps: set[frozenset[str]] = set()
    lock = threading.Lock()
    started = {
        name: threading.Event() for name in ("bench_target", "bench_target_games", "topk_tests", "topk_drafted_tests")
    }

    def untimed(name, partner):
        def run(ctx):
            with lock:
                overlaps.update(frozenset((name, other)) for other in active)
                active.append(name)
            started[name].set()
            started[partner].wait(timeout=10)  # each of a pair ends only once its partner started
            time.sleep(0.1)
            with lock:
                active.remove(name)
            session.ran.append(name)
            return 0

        return run

    def timed(ctx):
        with lock:
            overlaps.update(frozenset(("bench_topk", other)) for other in active)
        session.ran.append("bench_topk")
        return 0

    session.job("bench_target", untimed=True, body=untimed("bench_target", "bench_target_games"))
    session.job("bench_target_games", untimed=True, body=untimed("bench_target_games", "bench_target"))
    session.job("topk_tests", vllm=True, untimed=True, body=untimed("topk_tests", "topk_drafted_tests"))
    session.job("topk_drafted_tests", vllm=True, untimed=True, body=untimed("topk_drafted_tests", "topk_tests"))
    session.job("bench_topk", vllm=True, body=timed)
    assert gs.main(["start", "bench_target", "bench_target_games"]) == 0
    assert gs.main(["checks", "topk_tests", "topk_drafted_tests", "bench_topk"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()
    assert overlaps == {
        frozenset(("bench_target", "bench_target_games")),
        frozenset(("topk_tests", "topk_drafted_tests")),
    }
    assert session.ran[-1] == "bench_topk" and len(session.ran) == 5


def test_the_list_speed_job_runs_bench_spec_decode_on_the_padrec_and_eagle_heads(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    ctx = gs.JobContext("bench_spec_decode", gs.Settings(target="bench"), {"PATH": "/bin"})
    monkeypatch.setattr(
        ctx.__class__, "python", lambda self, module, *args, env=None: calls.append((module, args)) or 0
    )
    assert gs.JOBS["bench_spec_decode"].body(ctx) == 0
    ((module, args),) = calls
    value = lambda option: args[args.index(option) + 1]  # noqa: E731

    def run(settings: gs.Settings) -> tuple:
        """The job's bench_spec_decode arguments under ``settings``."""
        calls.clear()
        assert gs.JOBS["bench_spec_decode"].body(dataclasses.replace(ctx, settings=settings)) == 0
        ((_, got),) = calls
        return got

    assert module == "benchmarks.bench_spec_decode"
    assert value("--padrec-draft") == str(tmp_path / "bench_drafts" / "padrec" / "draft")
    assert value("--eagle-draft") == str(tmp_path / "bench_drafts" / "eagle" / "draft")
    assert value("--eagle-one-step-draft") == str(tmp_path / "bench_drafts_one_step" / "eagle" / "draft")
    assert value("--padrec-one-step-draft") == str(tmp_path / "bench_drafts_one_step" / "padrec" / "draft")
    assert value("--medusa-draft") == str(tmp_path / "bench_drafts" / "medusa" / "draft")
    assert value("--target") == str(tmp_path / "bench" / "checkpoint")
    assert gs.needs_of("bench_spec_decode", gs.Settings(target="bench")) == ["bench_drafts"]
    methods = args[args.index("--methods") + 1 : args.index("--dtype")]
    assert methods == gs.SPEC_METHODS and set(methods) == set(bench_spec_decode.METHODS)
    assert all(bench_spec_decode.METHODS[rival].drafts_on_v2 for rival in gs.SPEC_RIVALS)  # --rivals' choices
    assert value("--dtype") == "bfloat16" and "--merge" in args
    assert args[args.index("--gammas") + 1 : args.index("--batch-sizes")] == ("3", "5")
    assert args[args.index("--batch-sizes") + 1 : args.index("--list-lens")] == ("1", "4", "16", "64", "128")
    assert args[args.index("--list-lens") + 1 : args.index("--modes")] == ("10", "20")
    assert args[args.index("--modes") + 1 :] == ("offline",)
    assert value("--name") == "spec_decode_beauty_atspeed"  # the committed file it merges into
    # a hold that runs some of the methods, in float32 (the equality goal), merged into the committed file
    settings = gs.Settings(target="bench", spec_methods=("none", "padrec"), spec_dtype="float32")
    args = run(settings)
    assert args[args.index("--methods") + 1 : args.index("--dtype")] == ("none", "padrec")
    assert value("--dtype") == "float32"
    # on the small target: its own head and results file, fewer batch sizes and list lengths
    settings = gs.Settings(spec_methods=("none", "padrec_loop"), spec_batch_sizes=(1, 16), spec_list_lens=(10,))
    args = run(settings)
    assert value("--padrec-draft") == str(tmp_path / "drafts" / "padrec" / "draft")
    assert value("--name") == "spec_decode_beauty_atspeed_small" and value("--target") == str(
        tmp_path / "small" / "checkpoint"
    )
    assert args[args.index("--batch-sizes") + 1 : args.index("--list-lens")] == ("1", "16")
    assert args[args.index("--list-lens") + 1 : args.index("--modes")] == ("10",)
    # heads trained deeper than the committed ones write results of their own: a merge never mixes two depths
    deeper = gs.Settings(target="bench", draft_gamma=8, spec_gammas=(8, 5, 6), spec_methods=("none", "padrec"))
    assert deeper.problem() is None
    args = run(deeper)
    assert value("--name") == "spec_decode_beauty_atspeed_depth8"
    assert args[args.index("--gammas") + 1 : args.index("--batch-sizes")] == ("8", "5", "6")
    assert value("--max-cudagraph-capture-size") == "verify"  # vLLM's default graphs for none, as committed
    # engines whose graphs hold the prompts write results of their own too: their none prefills in graphs
    prompt_graphs = dataclasses.replace(deeper, spec_capture="prompts")
    args = run(prompt_graphs)
    assert value("--name") == "spec_decode_beauty_atspeed_depth8_prompt_graphs"
    assert value("--max-cudagraph-capture-size") == "prompts"
    assert value("--cudagraph-mode") == "vllm"
    # whole-model graphs: every engine FULL, results of their own again
    full = dataclasses.replace(prompt_graphs, cudagraph_mode="full")
    args = run(full)
    assert value("--name") == "spec_decode_beauty_atspeed_depth8_full_prompt_graphs"
    assert value("--cudagraph-mode") == "full"
    assert dataclasses.replace(deeper, cudagraph_mode="full").spec_results_name().endswith("_depth8_full_graphs")
    # a rerun of the same settings, tagged, writes a file of its own rather than merging into the first run's
    args = run(dataclasses.replace(full, spec_tag="repeat"))
    assert value("--name") == "spec_decode_beauty_atspeed_depth8_full_prompt_graphs_repeat"
    assert "--merge" in args  # into its own file
    for bad in ("re peat", "../x", "é"):
        assert "--spec-tag: letters, digits and _ only" in dataclasses.replace(full, spec_tag=bad).problem()
    # --spec-pin-cpus: the engines pinned to cores of their own
    args = run(dataclasses.replace(settings, spec_pin_cpus=True))
    assert args[args.index("--list-lens") + 1 : args.index("--modes")] == ("10", "--pin-cpus")
    # --spec-rivals: EAGLE's engine and a control beside padrec's, which then takes less of the GPU's memory
    rivals = dataclasses.replace(settings, spec_methods=("none", "padrec"), spec_rivals=("eagle", "padrec"))
    assert dataclasses.replace(rivals, drafts="padrec_eagle").problem() is None
    args = run(rivals)
    assert args[args.index("--list-lens") + 1 :] == ("10", "--modes", "offline", "--rivals", "eagle", "padrec")
    parsed = bench_spec_decode.parse_args(list(args))  # the benchmark takes them: its engines fit the memory
    assert parsed.rivals == ["eagle", "padrec"] and parsed.gpu_memory_utilization == 0.41
    # every rival at once: padrec's engine takes what the others leave
    every = dataclasses.replace(rivals, spec_rivals=gs.SPEC_RIVALS, drafts="padrec_eagle")
    assert every.problem() is None
    args = run(every)
    assert bench_spec_decode.parse_args(list(args)).gpu_memory_utilization == 0.17


def test_the_float32_equality_job_merges_into_the_results_of_the_sessions_bfloat16_run(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    ctx = gs.JobContext("bench_spec_decode_exact", gs.Settings(target="bench", drafts="padrec_eagle"), {"PATH": "/bin"})
    monkeypatch.setattr(
        ctx.__class__, "python", lambda self, module, *args, env=None: calls.append((module, args)) or 0
    )
    # the session's bfloat16 run wrote its records where both jobs merge: the float32 job keeps them
    written = tmp_path / "results" / "spec_decode_beauty_atspeed.json"
    written.parent.mkdir(parents=True)
    written.write_text('{"records": ["this session\'s"]}')
    assert gs.JOBS["bench_spec_decode_exact"].body(ctx) == 0
    assert written.read_text() == '{"records": ["this session\'s"]}'
    ((module, args),) = calls
    value = lambda option: args[args.index(option) + 1]  # noqa: E731
    assert module == "benchmarks.bench_spec_decode" and value("--name") == "spec_decode_beauty_atspeed"
    assert args[args.index("--methods") + 1 : args.index("--dtype")] == ("none", "padrec", "eagle")
    assert value("--dtype") == "float32" and "--merge" in args and value("--pair") == "none"
    assert value("--eagle-draft") == str(tmp_path / "bench_drafts" / "eagle" / "draft")
    parsed = bench_spec_decode.parse_args(list(args))
    assert (parsed.gammas, parsed.batch_sizes, parsed.list_lens) == ([5], [1, 64], [10])
    assert (parsed.users_latency, parsed.users) == (gs.EXACT_USERS, gs.EXACT_BATCHED_USERS) == (100, 256)
    assert gs.needs_of("bench_spec_decode_exact", gs.Settings(target="bench")) == ["bench_drafts"]
    # without the EAGLE head (--drafts padrec), PAD-Rec alone; the committed file is the merge base
    calls.clear()
    written.unlink()
    settings = gs.Settings(target="bench", drafts="padrec")
    assert gs.JOBS["bench_spec_decode_exact"].body(dataclasses.replace(ctx, settings=settings)) == 0
    ((_, args),) = calls
    assert args[args.index("--methods") + 1 : args.index("--dtype")] == ("none", "padrec")
    committed = gs.REPO / "benchmarks" / "results" / "spec_decode_beauty_atspeed.json"
    assert written.read_text() == committed.read_text()


def test_the_list_speed_smoke_runs_bench_spec_decode_in_little_on_the_small_target_and_head(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    ctx = gs.JobContext("spec_decode_smoke", gs.Settings(), {"PATH": "/bin"})
    monkeypatch.setattr(
        ctx.__class__, "python", lambda self, module, *args, env=None: calls.append((module, args)) or 0
    )
    assert gs.JOBS["spec_decode_smoke"].body(ctx) == 0
    ((module, args),) = calls
    value = lambda option: args[args.index(option) + 1]  # noqa: E731
    assert module == "benchmarks.bench_spec_decode" and value("--name") == "spec_decode_smoke"
    assert value("--target") == str(tmp_path / "small" / "checkpoint")
    assert value("--padrec-draft") == str(tmp_path / "drafts" / "padrec" / "draft")
    assert value("--cache-root") == str(tmp_path / "cache" / "spec_decode_smoke")
    assert gs.needs_of("spec_decode_smoke", gs.Settings()) == ["train"]


def test_the_padrec_eagle_heads_include_heads_trained_teacher_forced_one_step(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    (tmp_path / "results").mkdir()
    ran = []
    ctx = gs.JobContext("bench_drafts", gs.Settings(target="bench", drafts="padrec_eagle"), {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "run_parallel", lambda self, commands: ran.extend(commands) or 0)
    assert gs.JOBS["bench_drafts"].body(ctx) == 0
    both, one_step = ran
    methods = lambda command: command[command.index("--method") + 1 :]  # noqa: E731
    assert methods(both) == ["padrec", "eagle", "medusa"] and "--train-steps" not in both  # medusa: a default method
    assert one_step[one_step.index("--out") + 1] == str(tmp_path / "bench_drafts_one_step")
    assert one_step[-2:] == ["--train-steps", "1"] and methods(one_step)[:2] == ["padrec", "eagle"]
    ran.clear()  # a hold without the medusa method trains no Medusa heads
    settings = gs.Settings(target="bench", drafts="padrec_eagle", spec_methods=("none", "padrec", "eagle"))
    assert gs.JOBS["bench_drafts"].body(dataclasses.replace(ctx, settings=settings)) == 0
    assert methods(ran[0]) == ["padrec", "eagle"]
    ran.clear()  # a head trained deeper than the committed ones: its curves come back under names of their own
    (tmp_path / "bench_drafts" / "padrec").mkdir(parents=True)
    (tmp_path / "bench_drafts" / "padrec" / "result.json").write_text("{}")
    settings = gs.Settings(target="bench", drafts="padrec", draft_gamma=8)
    assert gs.JOBS["bench_drafts"].body(dataclasses.replace(ctx, settings=settings)) == 0
    assert ran[0][ran[0].index("--gamma") + 1] == "8"
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["draft_padrec_depth8_result.json"]


def test_bench_spec_decode_methods_whose_heads_the_session_does_not_train_are_refused_at_queueing(session, capsys):
    session.job("bench_spec_decode")
    bench = ["--target", "bench", "--spec-methods", "none", "padrec"]
    # eagle_one_step drafts with a head --drafts padrec never trains: one line, naming the drafts that do
    assert gs.main(["checks", "bench_spec_decode", *bench, "eagle_one_step", "--drafts", "padrec"]) == 2
    assert capsys.readouterr().err.strip() == (
        "bench_spec_decode's --spec-methods eagle_one_step draft with heads that --drafts padrec does not train; "
        "drafts that train them: padrec_eagle one_step"
    )
    assert gs.main(["run", "bench_spec_decode", *bench, "medusa", "--drafts", "padrec"]) == 2  # run checks too
    assert capsys.readouterr().err.strip().endswith("drafts that train them: padrec_eagle padrec_medusa all")
    # the draft-free methods and the PAD-Rec variants need no more than --drafts padrec
    free = [*bench, "padrec_adaptive", "none_default_graphs", "none_v1", "ngram", "--drafts", "padrec"]
    assert gs.main(["checks", "bench_spec_decode", *free]) == 0
    # the small target's session trains a PAD-Rec head alone
    small = gs.Settings(target="small", spec_methods=("none", "padrec", "eagle"), drafts="padrec_eagle")
    assert gs.methods_without_heads(small) == ["eagle"]
    assert gs.missing_draft(["bench_target"], dataclasses.replace(small, target="bench", drafts="padrec")) is None
    assert gs.main(["wait", "20"]) == 0
    session.join()


def test_drafts_all_trains_the_signal_lr_head_in_a_folder_of_its_own_that_the_acceptance_job_names(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    (tmp_path / "results").mkdir()
    ran = []
    ctx = gs.JobContext(
        "bench_drafts", gs.Settings(target="bench", drafts="all", signal_lr_scale=7.0), {"PATH": "/bin"}
    )
    monkeypatch.setattr(ctx.__class__, "run_parallel", lambda self, commands: ran.extend(commands) or 0)
    (tmp_path / "bench_drafts_signal_lr10" / "padrec").mkdir(parents=True)  # what its training leaves
    (tmp_path / "bench_drafts_signal_lr10" / "padrec" / "result.json").write_text("{}")
    assert gs.JOBS["bench_drafts"].body(ctx) == 0
    value = lambda command, option: command[command.index(option) + 1]  # noqa: E731
    *groups, faster = ran
    assert len(groups) == len(gs.ALL_DRAFTS) and {value(c, "--signal-lr-scale") for c in groups} == {"1"}
    assert {value(c, "--out") for c in groups} == {str(tmp_path / "bench_drafts")}
    assert (
        value(faster, "--out") == str(tmp_path / "bench_drafts_signal_lr10") and value(faster, "--method") == "padrec"
    )
    assert value(faster, "--signal-lr-scale") == "7.0"
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["draft_padrec_signal_lr10_result.json"]
    commands = []  # the acceptance job measures it beside the other heads, under its own name
    monkeypatch.setattr(ctx.__class__, "run", lambda self, command, env=None: commands.append(command) or 0)
    (tmp_path / "bench_drafts" / "padrec" / "draft").mkdir(parents=True)
    assert gs.JOBS["acceptance"].body(dataclasses.replace(ctx, job="acceptance")) == 0
    ((command,),) = [commands]
    assert command[command.index("--drafts") + 1 : command.index("--users")] == [
        str(tmp_path / "bench_drafts" / "padrec" / "draft")
    ]
    (tmp_path / "bench_drafts_signal_lr10" / "padrec" / "draft").mkdir()
    assert gs.JOBS["acceptance"].body(dataclasses.replace(ctx, job="acceptance")) == 0
    assert commands[1][commands[1].index("--drafts") + 1 : commands[1].index("--users")] == [
        str(tmp_path / "bench_drafts" / "padrec" / "draft"),
        f"padrec_signal_lr10={tmp_path / 'bench_drafts_signal_lr10' / 'padrec' / 'draft'}",
    ]


def test_the_one_step_heads_alone_train_in_one_process_and_their_results_come_back(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    (tmp_path / "results").mkdir()
    ran = []
    settings = gs.Settings(target="bench", drafts="one_step", draft_gamma=8, draft_steps=3000)
    assert gs.methods_without_heads(dataclasses.replace(settings, spec_methods=("none", "padrec_one_step"))) == []
    assert gs.methods_without_heads(dataclasses.replace(settings, spec_methods=("padrec", "eagle"))) == [
        "padrec",
        "eagle",
    ]
    ctx = gs.JobContext("bench_drafts", settings, {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "run_parallel", lambda self, commands: ran.extend(commands) or 0)
    for head in ("padrec", "eagle"):  # what the training leaves beside each head
        (tmp_path / "bench_drafts_one_step" / head).mkdir(parents=True)
        (tmp_path / "bench_drafts_one_step" / head / "result.json").write_text("{}")
    assert gs.JOBS["bench_drafts"].body(ctx) == 0
    ((command,),) = [ran]
    value = lambda option: command[command.index(option) + 1]  # noqa: E731
    assert command[command.index("--method") + 1 : command.index("--train-steps")] == ["padrec", "eagle"]
    assert (value("--train-steps"), value("--max-steps"), value("--gamma")) == ("1", "3000", "8")
    assert value("--out") == str(tmp_path / "bench_drafts_one_step")  # where bench_spec_decode reads them
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "draft_eagle_one_step_depth8_result.json",
        "draft_padrec_one_step_depth8_result.json",
    ]


def test_every_list_method_either_drafts_with_a_named_head_or_needs_none():
    heads, free = set(gs.SPEC_METHOD_HEAD), set(gs.DRAFT_FREE_METHODS)
    assert heads | free == set(gs.SPEC_METHODS) and not heads & free
    assert set(gs.SPEC_METHODS) == set(bench_spec_decode.METHODS)  # the session's list is the benchmark's
    # and each method's head is the draft option the benchmark reads for it (gpu_session imports no benchmark)
    assert gs.SPEC_METHOD_HEAD == {m: spec.draft for m, spec in bench_spec_decode.METHODS.items() if spec.draft}
    assert {head for trained in gs.DRAFTS_HEADS.values() for head in trained} == set(gs.SPEC_METHOD_HEAD.values())


def test_padrec_medusa_heads_and_the_served_list_benchmark(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    (tmp_path / "results").mkdir()
    ran = []
    settings = gs.Settings(target="bench", drafts="padrec_medusa", spec_methods=("none", "padrec", "none_v1", "medusa"))
    assert gs.methods_without_heads(settings) == []
    assert gs.methods_without_heads(dataclasses.replace(settings, spec_methods=("eagle", "medusa"))) == ["eagle"]
    ctx = gs.JobContext("bench_drafts", settings, {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "run_parallel", lambda self, commands: ran.extend(commands) or 0)
    assert gs.JOBS["bench_drafts"].body(ctx) == 0
    ((command,),) = [ran]
    assert command[command.index("--method") + 1 :] == ["padrec", "medusa"]
    assert command[command.index("--out") + 1] == str(tmp_path / "bench_drafts")  # where bench_spec_decode reads
    # --spec-modes: how bench_spec_decode measures every configuration (offline, through vllm serve, or both)
    calls = []
    monkeypatch.setattr(gs.JobContext, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    for head in ("padrec", "medusa"):  # what the benchmark checks of the heads it is given
        (tmp_path / "bench_drafts" / head / "draft").mkdir(parents=True)
        (tmp_path / "bench_drafts" / head / "draft" / "config.json").write_text("{}")
    for modes in (("offline",), ("serve",), ("offline", "serve")):
        job = gs.JobContext("bench_spec_decode", dataclasses.replace(settings, spec_modes=modes), {"PATH": "/bin"})
        assert gs.JOBS["bench_spec_decode"].body(job) == 0
        assert bench_spec_decode.parse_args(list(calls.pop())).modes == list(modes)  # the benchmark takes them
    parsed = gs.parser().parse_args(["start", "--spec-modes", "serve", "--drafts", "padrec_medusa"])
    assert (parsed.spec_modes, parsed.drafts) == (["serve"], "padrec_medusa")
    assert gs.Settings.from_mapping({"spec_modes": parsed.spec_modes}).spec_modes == ("serve",)
    assert gs.SPEC_MODES == bench_spec_decode.MODES  # --spec-modes' choices


def test_the_tensor_parallel_job_sees_both_gpus_and_runs_bench_tp2_on_the_bench_heads(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    settings = gs.Settings(target="bench")
    assert "CUDA_VISIBLE_DEVICES" not in gs.job_environment("tp2", settings, gpus=2)
    assert gs.job_environment("bench_topk", settings, gpus=2)["CUDA_VISIBLE_DEVICES"] == "0"
    # the job's own process (phase _job) restricts itself by the same rule
    assert gs.visible_devices("tp2", 2) is None and gs.visible_devices("bench_trie", 2) == "1"
    assert gs.visible_devices("bench_trie", 1) is None
    assert gs.JOBS["tp2"].exclusive and gs.needs_of("tp2", settings) == ["bench_drafts"]
    calls = []
    ctx = gs.JobContext("tp2", settings, {"PATH": "/bin"})
    monkeypatch.setattr(
        ctx.__class__, "python", lambda self, module, *args, env=None: calls.append((module, args)) or 0
    )
    assert gs.JOBS["tp2"].body(ctx) == 0
    ((module, args),) = calls
    assert module == "benchmarks.bench_tp2"
    assert args[args.index("--padrec-draft") + 1] == str(tmp_path / "bench_drafts" / "padrec" / "draft")
    assert args[args.index("--target") + 1] == str(tmp_path / "bench" / "checkpoint")


def test_engine_step_runs_at_the_sessions_concurrency(monkeypatch, tmp_path):
    """--engine-concurrency 1 profiles one request's steps (issue 14's batch-1 lever); 64 stays the default."""
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    monkeypatch.setattr(gs.JobContext, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    for settings, concurrency in ((gs.Settings(), "64"), (gs.Settings(engine_concurrency=1), "1")):
        ctx = gs.JobContext("engine_step", settings, {"PATH": "/bin"})
        assert gs.JOBS["engine_step"].body(ctx) == 0
        args = calls.pop()
        assert args[args.index("--concurrency") + 1] == concurrency
    parser = gs.parser()
    parsed = parser.parse_args(["start", "--engine-concurrency", "1"])
    assert parsed.engine_concurrency == 1


def test_engine_step_profiles_a_batch_size_table_round_and_sends_its_traces_back(monkeypatch, tmp_path):
    """The table's round cost (issue 14): engine_step gets --max-num-seqs and --gamma when the session sets them,
    and a profiled run writes its traces under results/ (what ``wait`` sends back); nothing extra otherwise."""
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    monkeypatch.setattr(gs.JobContext, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    parsed = gs.parser().parse_args(
        ["start", "--engine-max-num-seqs", "16", "--engine-gamma", "5", "--engine-profile", "spec", "spec_table"]
    )
    given = {k: v for k, v in vars(parsed).items() if k.startswith("engine_")}
    settings = gs.Settings.from_mapping(given)
    assert gs.JOBS["engine_step"].body(gs.JobContext("engine_step", settings, {"PATH": "/bin"})) == 0
    args = calls.pop()
    assert args[args.index("--max-num-seqs") + 1] == "16" and args[args.index("--gamma") + 1] == "5"
    traces = Path(args[args.index("--trace-dir") + 1])
    assert traces.is_dir() and traces.parent == tmp_path / "traces"
    (traces / "trace_spec.json.gz").write_bytes(b"trace")
    gs.collect(tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "traces.tgz") as archive:
        assert archive.getnames()[-1] == f"traces/{traces.name}/trace_spec.json.gz"
    assert gs.JOBS["engine_step"].body(gs.JobContext("engine_step", gs.Settings(), {"PATH": "/bin"})) == 0
    plain = calls.pop()
    assert not {"--max-num-seqs", "--gamma", "--trace-dir", "--profile-first-token"} & set(plain)
    # the first token's own profile: for the profiled configurations of the current code only
    first = gs.Settings(target="bench", engine_profile=("baseline", "spec"), engine_first_token=True)
    assert gs.JOBS["engine_step"].body(gs.JobContext("engine_step", first, {"PATH": "/bin"})) == 0
    first_args = calls.pop()
    assert "--profile-first-token" in first_args and "--cudagraph-mode" not in first_args
    assert first_args[first_args.index("--name") + 1] == "engine_step_first_token"  # never the committed engine_step
    full = dataclasses.replace(first, cudagraph_mode="full")
    assert gs.JOBS["engine_step"].body(gs.JobContext("engine_step", full, {"PATH": "/bin"})) == 0
    full_args = calls.pop()
    assert full_args[full_args.index("--cudagraph-mode") + 1] == "full"
    assert full_args[full_args.index("--name") + 1] == "engine_step_first_token_full_graphs"
    assert gs.parser().parse_args(["start", "--cudagraph-mode", "full"]).cudagraph_mode == "full"
    monkeypatch.setattr(gs, "install", lambda *args: None)
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "setup.py").write_text("")
    assert gs.JOBS["engine_step_baseline"].body(gs.JobContext("engine_step_baseline", first, {"PATH": "/bin"})) == 0
    assert "--profile-first-token" not in calls.pop()  # the code before the redesign has no such option
    assert gs.JOBS["engine_step_baseline"].body(gs.JobContext("engine_step_baseline", full, {"PATH": "/bin"})) == 0
    assert "--cudagraph-mode" not in calls.pop()


def test_the_acceptance_job_may_also_leave_out_the_forced_draft_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    monkeypatch.setattr(gs.JobContext, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    for settings, flagged in ((gs.Settings(), False), (gs.Settings(accept_skip_forced=True), True)):
        assert gs.JOBS["acceptance"].body(gs.JobContext("acceptance", settings, {"PATH": "/bin"})) == 0
        assert ("--skip-forced-drafts" in calls.pop()) == flagged
    assert gs.parser().parse_args(["start", "--accept-skip-forced"]).accept_skip_forced is True


def test_the_signal_ablation_job_trains_the_bench_recipes_heads_per_seed(monkeypatch, tmp_path):
    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    monkeypatch.setattr(
        gs.JobContext, "python", lambda self, module, *args, env=None: calls.append((module, args)) or 0
    )
    parsed = gs.parser().parse_args(
        ["start", "--ablation-seeds", "3", "4", "--ablation-gammas", "5", "8", "--ablation-variants", "eagle", "padrec"]
    )
    settings = gs.Settings(
        ablation_seeds=tuple(parsed.ablation_seeds),
        ablation_gammas=tuple(parsed.ablation_gammas),
        ablation_variants=tuple(parsed.ablation_variants),
        draft_steps=600,
    )
    assert gs.JOBS["signal_ablation"].needs == ("bench_target",)
    assert gs.JOBS["signal_ablation"].body(gs.JobContext("signal_ablation", settings, {"PATH": "/bin"})) == 0
    module, args = calls.pop()
    assert module == "benchmarks.bench_signal_ablation"

    def values(flag: str) -> list[str]:
        start = args.index(flag) + 1
        end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
        return list(args[start:end])

    assert values("--seeds") == ["3", "4"] and values("--gammas") == ["5", "8"]
    assert values("--variants") == ["eagle", "padrec"] and values("--preset") == ["bench"]
    assert values("--draft-steps") == ["600"] and values("--target") == [
        str(gs.bench_dir(settings.dataset) / "checkpoint")
    ]


def test_a_reader_never_sees_half_a_queue_while_it_is_rewritten(session):
    """Job daemons read the queue while ``checks`` rewrites it: a reader that got the first bytes of a short queue
    and the rest of a longer one failed a CI run with a JSON error and left its job waiting forever."""
    session.work.mkdir(parents=True, exist_ok=True)
    short, long = ["a" * 30], ["a" * 30] + [f"job_{i}" for i in range(2000)]
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                assert gs.queue() in ([], short, long)
            except Exception as error:  # noqa: BLE001 - any failure to read counts
                errors.append(error)
                return

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(300):
        gs.write_whole(session.work / "queue.json", json.dumps(short))
        gs.enqueue(long[1:])
    done.set()
    reader.join()
    assert not errors, errors[0]


def suite_session(session: Session, failing: str | None = None) -> list:
    """The suite's jobs as fakes with their real needs; each records the settings it ran with."""
    seen = []
    needs = {  # as gs.JOBS has them (the fixture emptied it)
        "bench_drafts": ("bench_target",),
        "atspeed_drafts": ("bench_target",),
        "bench_spec_decode": (gs.DRAFT,),
        "bench_topk": (gs.TARGET,),
        "bench_topk_atspeed": ("atspeed_drafts",),
    }
    for name in gs.suite_jobs(list(gs.SUITE_PARTS)):

        def body(ctx, name=name):
            session.ran.append(name)
            seen.append((name, ctx.settings))
            return 1 if name == failing else 0

        assert needs.get(name, ()) == REAL_JOBS[name].needs
        session.job(name, body=body, needs=needs.get(name, ()))
    return seen


def test_the_suite_runs_a_datasets_list_and_top_k_jobs_on_its_bench_target(session):
    """``suite`` (issue 15's one command per dataset): both parts' jobs, each once, after the jobs they need, on
    the bench target with the heads the benchmarks read; settings given win, and hold for later calls."""
    seen = suite_session(session)
    assert gs.main(["suite", "--dataset", "games_atspeed", "--bench-epochs", "0.55", "--wait-seconds", "20"]) == 0
    session.join()
    assert sorted(session.ran) == sorted(gs.suite_jobs(list(gs.SUITE_PARTS)))
    order = session.ran.index
    assert order("bench_target") < order("bench_drafts") < order("bench_spec_decode")
    assert order("atspeed_drafts") < order("bench_topk_atspeed") and order("bench_target") < order("bench_topk")
    settings = {s for _, s in seen}
    assert len(settings) == 1
    (s,) = settings
    assert (s.target, s.drafts, s.dataset, s.bench_epochs) == ("bench", "padrec_eagle", "games_atspeed", 0.55)
    assert "padrec_loop" not in s.spec_methods and {"none", "padrec", "eagle", "medusa"} <= set(s.spec_methods)
    assert (session.out / "status.json").exists()  # --wait-seconds: the wait phase's files


def test_a_later_suite_call_reuses_what_ran_and_queues_a_failed_job_again(session):
    suite_session(session, failing="bench_topk")
    assert gs.main(["suite", "topk", "--wait-seconds", "20"]) == 1  # wait's exit: a job failed
    session.join()
    assert sorted(session.ran) == ["atspeed_drafts", "bench_target", "bench_topk", "bench_topk_atspeed"]
    session.ran.clear()
    assert gs.main(["suite", "--wait-seconds", "20"]) == 1
    session.join()
    assert sorted(session.ran) == ["bench_drafts", "bench_spec_decode", "bench_topk"]  # the target not trained again


def test_the_suite_refuses_what_it_cannot_run_in_one_line(session, monkeypatch, capsys):
    suite_session(session)
    assert gs.main(["suite", "lists", "beams"]) == 2
    assert gs.main(["suite", "--target", "small"]) == 2
    real_find_spec = gs.importlib.util.find_spec
    monkeypatch.setattr(gs.importlib.util, "find_spec", lambda name: None if name == "vllm" else real_find_spec(name))
    assert gs.main(["suite"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "unknown parts ['beams']; parts: ['lists', 'topk']",
        "suite measures the bench target: drop --target",
        "suite runs vLLM benchmarks and vLLM is not installed here (on the device: the kit's part 3)",
    ]
    assert session.ran == [] and gs.queue() == []


def seen_in_out(session: Session, ready) -> int:
    """A job body's wait for ``ready(out)`` to hold of what ``wait`` collected into $OUT meanwhile: 0 once it does,
    1 when it never does (a wait that collects only at its end)."""
    for _ in range(500):
        if ready(session.out):
            return 0
        time.sleep(0.01)
    return 1


def test_wait_collects_each_time_a_job_ends_so_a_call_cut_off_keeps_it(session, monkeypatch):
    monkeypatch.setattr(gs, "COLLECT_SECONDS", 3600.0)

    def first(ctx: gs.JobContext) -> int:
        (gs.WORK / "results").mkdir(parents=True, exist_ok=True)
        (gs.WORK / "results" / "first.json").write_text("{}")
        return 0

    def first_collected(out: Path) -> bool:
        status = out / "status.json"
        return status.exists() and json.loads(status.read_text()).get("first", {}).get("state") == "ok"

    session.job("first", body=first)
    session.job("second", body=lambda ctx: seen_in_out(session, first_collected))
    assert gs.main(["checks", "first", "second"]) == 0
    assert gs.main(["wait", "20"]) == 0  # the second job saw the first's results in $OUT before it ended
    session.join()
    with tarfile.open(session.out / "results.tgz") as archive:
        assert "results/first.json" in archive.getnames()
    assert not list(session.out.glob(".*.part"))


def test_wait_collects_the_running_jobs_logs_every_collect_seconds(session, monkeypatch):
    monkeypatch.setattr(gs, "COLLECT_SECONDS", 0.0)
    session.job("long", body=lambda ctx: seen_in_out(session, lambda out: (out / "logs.tgz").exists()))
    assert gs.main(["checks", "long"]) == 0
    assert gs.main(["wait", "20"]) == 0
    session.join()


def test_a_collection_cut_off_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "results.tgz"
    target.write_text("the previous collection")
    with pytest.raises(KeyboardInterrupt), gs.replaced(target) as part:
        part.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "the previous collection" and [p.name for p in tmp_path.iterdir()] == [target.name]
    with gs.replaced(target) as part:
        part.write_text("the next collection")
    assert target.read_text() == "the next collection"


@pytest.mark.parametrize("dataset", ["beauty_atspeed", "games_atspeed"])
def test_bench_eval_writes_the_file_the_results_page_reads(monkeypatch, tmp_path, dataset):
    """The bench target's own test metrics land where ``results_page.target_quality`` looks for them."""
    from benchmarks import results_page

    monkeypatch.setattr(gs, "WORK", tmp_path)
    calls = []
    ctx = gs.JobContext("bench_eval", gs.Settings(target="bench", dataset=dataset), {"PATH": "/bin"})
    monkeypatch.setattr(ctx.__class__, "python", lambda self, module, *args, env=None: calls.append(args) or 0)
    assert gs.JOBS["bench_eval"].body(ctx) == 0
    ((*_, flag, out),) = calls
    assert flag == "--out" and Path(out).parent == tmp_path / "results"
    Path(out).parent.mkdir(parents=True)
    Path(out).write_text('{"users": 7, "greedy_recall@10": 0.5, "greedy_ndcg@10": 0.25}')
    assert "over all 7 test users" in "\n".join(results_page.target_quality(tmp_path / "results", dataset))
