"""The H200 session for the hardening checks, in few device calls (README "GPU machine").

A device machine is bare, is given back 30 s after a call returns, and runs a call for at most
10 minutes, so long work runs in daemons (``setsid``) that outlive the calls, and each call either
starts one or waits for them. Calls, from the repository root, back to back:

    1  carry [.vllmkit/part1, .gpudata]  bash .vllmkit/part1/stash.sh && python3 benchmarks/gpu_session.py start
    2  carry [.vllmkit/part2]            bash .vllmkit/part2/stash.sh && python3 benchmarks/gpu_session.py status
    3  carry [.vllmkit/part3]            bash .vllmkit/part3/install.sh && . /tmp/vllmkit/env.sh &&
                                         python3 benchmarks/gpu_session.py checks
    4..                                  . /tmp/vllmkit/env.sh && python3 benchmarks/gpu_session.py wait 540

Phases and what each needs (a job starts when the jobs it needs have succeeded; a failed job fails
the ones after it, and ``wait`` exits 1):

    start    install the project (no dependencies), copy .gpudata, start job ``train`` (no vLLM needed)
    train    a small target on beauty_atspeed (the tiny recipe widened, one epoch), then its PAD-Rec draft
    checks [JOB...]  reinstall over the vLLM kit, start the named jobs (default ``gpu_tests`` then
             ``hostile``); a job's needs that were never started are skipped
    gpu_tests   the vLLM GPU tests (tests/test_integration_gpu*.py: lossless, step index, three drafts on one
             compile cache, hostile requests to a real ``vllm serve``; PADREC_GPU_TESTS: other test files)
                                                                            needs: train (GPU alone)
    hostile  benchmarks/hostile_inputs.py on the trained target and draft   needs: train, gpu_tests
    run JOB...  run jobs now, in this call, whatever the jobs they need did (a rerun after a fix)
    status   print each job's state and its log's last lines
    wait [S] block up to S seconds for the jobs, then copy logs and results to $OUT; exit 1 if a job failed

``.gpudata`` holds the shared datasets (``../shared/data`` does not travel; git-ignored):
``mkdir -p .gpudata && cp -r ../shared/data/beauty_atspeed .gpudata/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("/tmp/padrec")
REPO = Path(__file__).resolve().parent.parent
STATUS = WORK / "status"  # one JSON file per job: {"state": running|ok|failed, "returncode", "seconds"}
RESULTS = WORK / "results"
SMALL_TARGET = {  # the tiny recipe widened so that vLLM's attention kernels serve it (head_dim 64)
    "hidden_size": 512,
    "num_layers": 4,
    "num_heads": 8,
    "num_kv_heads": 2,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "max_history": 20,
    "list_items": 10,
    "batch_size": 128,
    "epochs": 1.0,
    "lr": 1e-3,
    "bucket_batches": 64,
}
JOBS = ("train", "gpu_tests", "hostile")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def state(job: str) -> dict:
    path = STATUS / f"{job}.json"
    return json.loads(path.read_text()) if path.exists() else {"state": "not started"}


def set_state(job: str, **fields) -> None:
    STATUS.mkdir(parents=True, exist_ok=True)
    (STATUS / f"{job}.json").write_text(json.dumps(fields))


def run_logged(command: list[str], log_path: Path, cwd: Path = WORK) -> int:
    """Run ``command`` with its output in ``log_path``; its exit status, never hidden by a pipe."""
    log(f"+ {' '.join(command)}  (log: {log_path})")
    with open(log_path, "w") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd).returncode


def install_project() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # an editable install fails there
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--force-reinstall",
        str(REPO),
    ]
    subprocess.run(command, check=True, env=env, cwd=WORK)


def spawn(job: str) -> None:
    """Start ``job`` in a daemon that outlives this call (its own session)."""
    set_state(job, state="queued")
    with open(WORK / f"{job}.daemon.log", "w") as out:
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_job", job],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=WORK,
        )


def wait_for(*jobs: str, timeout: float = 3600) -> bool:
    """True once every job succeeded; False as soon as one failed (or at the timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [state(j)["state"] for j in jobs]
        if "failed" in states:
            return False
        if all(s == "ok" for s in states):
            return True
        time.sleep(5)
    return False


# -- jobs (run inside the daemon) -----------------------------------------------------------------
def job_train() -> int:
    import torch

    from vllm_padrec.data import load_dataset
    from vllm_padrec.target.config import get_recipe
    from vllm_padrec.target.train import train_target

    data = load_dataset(str(WORK / "data" / "beauty_atspeed"))
    recipe = get_recipe("tiny", **SMALL_TARGET)
    while not (result := train_target(recipe, data, WORK / "small", device="cuda")).finished:
        log(f"target: step {result.step} of {result.total_steps}")
    log(f"target done: {result}")
    torch.cuda.empty_cache()
    return run_logged(
        [
            sys.executable,
            "-m",
            "vllm_padrec.cli",
            "train-draft",
            "--target",
            str(WORK / "small/checkpoint"),
            "--dataset",
            str(WORK / "data/beauty_atspeed"),
            "--out",
            str(WORK / "drafts"),
            "--method",
            "padrec",
            "--gamma",
            "5",
            "--max-steps",
            "600",
            "--batch-size",
            "64",
            "--until-done",
        ],
        WORK / "draft.log",
    )


def job_gpu_tests() -> int:
    names = os.environ.get("PADREC_GPU_TESTS", "test_integration_gpu.py test_integration_gpu_serve.py").split()
    tests = [str(REPO / "tests" / name) for name in names]
    # -o pythonpath=: pytest.ini puts the repository first on sys.path, which would shadow the installed
    # package (whose vllm_padrec.kernels setup.py maps in from kernels/)
    return run_logged(
        [sys.executable, "-m", "pytest", "-v", "-rs", "-o", "pythonpath=", "-p", "no:cacheprovider", *tests],
        WORK / "gpu_tests.log",
    )


def job_hostile() -> int:
    return run_logged(
        [
            sys.executable,
            str(REPO / "benchmarks" / "hostile_inputs.py"),
            "--target",
            str(WORK / "small/checkpoint"),
            "--draft",
            str(WORK / "drafts/padrec/draft"),
            "--dataset",
            str(WORK / "data/beauty_atspeed"),
            "--out",
            str(RESULTS),
        ],
        WORK / "hostile.log",
    )


# one GPU job at a time: vLLM refuses to start while another process frees GPU memory (its start-up
# memory check), and the benchmark times requests
NEEDS = {"train": (), "gpu_tests": ("train",), "hostile": ("train", "gpu_tests")}


def run_job(job: str) -> None:
    needs = [j for j in NEEDS[job] if state(j)["state"] != "not started"]  # ``checks hostile`` skips gpu_tests
    if not wait_for(*needs):
        set_state(job, state="failed", reason=f"a job it needs failed: {[(j, state(j)) for j in NEEDS[job]]}")
        return
    set_state(job, state="running", started=time.time())
    started = time.time()
    try:
        code = {"train": job_train, "gpu_tests": job_gpu_tests, "hostile": job_hostile}[job]()
    except Exception as error:  # the daemon reports, never hangs its waiters
        log(f"{job} raised {type(error).__name__}: {error}")
        code = 1
    set_state(job, state="ok" if code == 0 else "failed", returncode=code, seconds=round(time.time() - started))


def run_now(job: str) -> int:
    """Run ``job`` in this call, whatever the state of the jobs it needs (a rerun after a fix)."""
    started = time.time()
    code = {"train": job_train, "gpu_tests": job_gpu_tests, "hostile": job_hostile}[job]()
    set_state(job, state="ok" if code == 0 else "failed", returncode=code, seconds=round(time.time() - started))
    log(f"{job}: exit {code}")
    return code


# -- phases (one per device call) ----------------------------------------------------------------
def phase_start() -> int:
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], check=False)
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    shutil.copytree(REPO / ".gpudata", WORK / "data", dirs_exist_ok=True)
    install_project()
    spawn("train")
    return 0


def phase_checks(jobs: list[str]) -> int:
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        print(f"unknown jobs {unknown}; jobs: {list(JOBS)}", file=sys.stderr)
        return 2
    install_project()  # over the vLLM kit, so that vLLM finds the entry points
    for job in jobs or ["gpu_tests", "hostile"]:
        spawn(job)
    return phase_status()


def phase_status() -> int:
    for job in JOBS:
        log(f"{job}: {state(job)}")
    for name in ("train.daemon.log", "draft.log", "gpu_tests.log", "hostile.log"):
        path = WORK / name
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()
            print(f"--- {name} (last 6 of {len(lines)} lines)\n" + "\n".join(lines[-6:]), flush=True)
    return 0


def phase_wait(seconds: float) -> int:
    deadline = time.time() + seconds
    while time.time() < deadline and any(state(j)["state"] in ("queued", "running") for j in JOBS):
        time.sleep(10)
    phase_status()
    out = Path(os.environ.get("OUT", WORK / "out"))
    out.mkdir(parents=True, exist_ok=True)
    for path in [*RESULTS.glob("*"), *(WORK / n for n in ("gpu_tests.log", "hostile.log", "draft.log"))]:
        if path.is_file():
            shutil.copy(path, out / path.name)
    failed = [j for j in JOBS if state(j)["state"] == "failed"]
    pending = [j for j in JOBS if state(j)["state"] in ("queued", "running")]
    log(f"failed: {failed or 'none'}; still running: {pending or 'none'}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    phase, rest = argv[0], argv[1:]
    if phase == "_job":
        run_job(rest[0])
        return 0
    phases = {
        "start": phase_start,
        "checks": lambda: phase_checks(rest),
        "status": phase_status,
        "run": lambda: max([0, *(run_now(job) for job in rest)]),
        "wait": lambda: phase_wait(float(rest[0]) if rest else 540),
    }
    if phase not in phases:
        print(f"unknown phase {phase!r}; phases: {sorted(phases)}", file=sys.stderr)
        return 2
    return phases[phase]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
