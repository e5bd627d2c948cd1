"""Tensor parallelism (issue 15): list generation with PAD-Rec and top-K in the engine on one GPU and on two
(``tensor_parallel_size`` 2), side by side in one run: outputs equal to one GPU's, and the speedups.

On a machine with two GPUs:

    python -m benchmarks.bench_tp2 --target runs/bench/checkpoint --dataset beauty_atspeed \\
        --padrec-draft runs/drafts/padrec/draft --out benchmarks/results

writes ``tp2.json`` / ``.md`` / ``.png``; ``--render benchmarks/results/tp2.json`` redraws them anywhere.

It runs the project's two vLLM benchmarks once per tensor-parallel size, each configuration an engine of its own
(``--engine-args '{"tensor_parallel_size": N}'``), in ``--work-dir/tp<N>/``:

- lists: ``bench_spec_decode``, methods ``none`` and ``padrec`` (gamma ``--gamma``), lists of 10 items, one
  request at a time and ``--batch`` at once, in float32 (equality) and bfloat16 (speed);
- top-K: ``bench_topk``, mode ``engine``, K = ``--k``, one request at a time and ``--batch`` users a call, float32
  (equality) and bfloat16 (speed).

Records (one per workload, method, dtype, batch size and tensor-parallel size): ``tokens_per_s`` (lists) or
``users_per_s`` (top-K), ``p50_ms``, ``speedup_vs_no_spec`` (lists), and for float32 ``equal_to_single_gpu`` /
``users_compared``: the users whose list (token for token) or top-K items (in order) are the one-GPU engine's,
read from the configurations' saved outputs. Goals: equal outputs at every record, and PAD-Rec's one-request
speedup over no speculation at TP = 2 at least 90 % of its one-GPU speedup (bfloat16; the paired speedup,
``paired_speedup``, where bench_spec_decode alternated PAD-Rec's calls with a baseline engine's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from vllm_padrec.testing.bench_driver import command_line, rerender, write_payload
from vllm_padrec.testing.goals import goals_markdown, verdict
from vllm_padrec.testing.spec_decode_goals import speedup

LIST_LEN = 10
DTYPES = ("float32", "bfloat16")
EXACT, SPEED = "float32", "bfloat16"
SPEEDUP_KEPT = 0.9  # PAD-Rec's batch-1 speedup at TP = 2, at least this share of one GPU's
STEM = "tp2"


def list_argv(args, tp: int, dtype: str, work: Path) -> list[str]:
    return [
        *("--target", args.target, "--dataset", args.dataset, "--padrec-draft", args.padrec_draft),
        *("--methods", "none", "padrec", "--gammas", str(args.gamma), "--list-lens", str(LIST_LEN)),
        *(
            "--batch-sizes",
            "1",
            str(args.batch),
            "--users",
            str(args.users),
            "--users-latency",
            str(args.users_latency),
        ),
        *("--dtype", dtype, "--engine-args", json.dumps({"tensor_parallel_size": tp})),
        *("--work-dir", str(work / f"lists_{dtype}"), "--cache-root", str(work / "cache")),
        *("--out", str(work), "--name", f"lists_{dtype}"),
    ]


def topk_argv(args, tp: int, work: Path) -> list[str]:
    return [
        *("--target", args.target, "--dataset", args.dataset, "--modes", "engine", "--ks", str(args.k)),
        *("--dtypes", *DTYPES, "--exact-modes", "engine", "--concurrency", str(args.batch)),
        *("--users", str(args.users), "--users-latency", str(args.users_latency), "--users-equal", str(args.users)),
        *("--engine-args", json.dumps({"tensor_parallel_size": tp})),
        *("--work-dir", str(work), "--cache-root", str(work / "cache"), "--out", str(work), "--name", "topk"),
    ]


def run_module(module: str, argv: list[str]) -> int:
    """``python -m module argv``: a benchmark runs each configuration's engine in a child of its own."""
    return subprocess.call([sys.executable, "-m", module, *argv])


def run_benchmarks(args) -> None:
    """Both benchmarks at TP = 1 and at TP = ``--tp``, each in its own work folder (a run that fails is named in
    its own results, and what it measured is still read)."""
    for tp in (1, args.tp):
        work = Path(args.work_dir) / f"tp{tp}"
        work.mkdir(parents=True, exist_ok=True)
        for dtype in DTYPES:
            run_module("benchmarks.bench_spec_decode", list_argv(args, tp, dtype, work))
        run_module("benchmarks.bench_topk", topk_argv(args, tp, work))


# -- reading the runs back ------------------------------------------------------------------------------------
def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def list_outputs(work: Path, method: str, gamma: int) -> dict:
    """A float32 list configuration's saved lists by pass (``offline_<list_len>_<batch>``); {} when missing."""
    config = f"{method}_g{0 if method == 'none' else gamma}"
    result = load(work / f"lists_{EXACT}" / f"bench_spec_decode_{config}.json")
    return (result or {}).get("lists", {})


def topk_outputs(work: Path) -> dict:
    """The float32 engine's ranked items of the first users by K ({str(K): [[item, ...], ...]}); {} when
    missing."""
    results = load(work / "bench_topk_engine_float32.json") or []
    engine = next((r for r in results if r["mode"] == "engine"), {})
    return {k: [[item for item, _ in ranked] for ranked in lists] for k, lists in engine.get("equal_lists", {}).items()}


def compare(ours: list, theirs: list) -> tuple[int, int]:
    """(users equal, users compared) of two runs' outputs of the same users."""
    n = min(len(ours), len(theirs))
    return sum(a == b for a, b in zip(ours[:n], theirs[:n])), n


def collect(args) -> list[dict]:
    """The records of both workloads at every tensor-parallel size, float32 ones with their equality to TP = 1."""
    records = []
    single = Path(args.work_dir) / "tp1"
    for tp in (1, args.tp):
        work = Path(args.work_dir) / f"tp{tp}"
        for dtype in DTYPES:
            payload = load(work / f"lists_{dtype}.json") or {"records": []}
            for r in payload["records"]:
                record = {"workload": "lists", "method": r["method"], "tensor_parallel_size": tp, "dtype": dtype}
                record |= {k: r.get(k) for k in ("batch_size", "list_len", "gamma", "tokens_per_s", "p50_ms")}
                record |= {k: r.get(k) for k in ("speedup_vs_no_spec", "paired_speedup")} | {"users_per_s": None}
                record |= {"equal_to_single_gpu": None, "users_compared": None}
                if dtype == EXACT:
                    name = f"offline_{r['list_len']}_{r['batch_size']}"
                    ours = list_outputs(work, r["method"], r["gamma"]).get(name)
                    theirs = list_outputs(single, r["method"], r["gamma"]).get(name)
                    if ours is not None and theirs is not None:
                        record["equal_to_single_gpu"], record["users_compared"] = compare(ours, theirs)
                records.append(record)
        payload = load(work / "topk.json") or {"records": []}
        for r in payload["records"]:
            record = {"workload": "topk", "method": r["mode"], "tensor_parallel_size": tp, "dtype": r["dtype"]}
            record |= {k: r.get(k) for k in ("batch_size", "k", "users_per_s", "p50_ms")}
            record |= {"tokens_per_s": None, "speedup_vs_no_spec": None, "equal_to_single_gpu": None}
            record["users_compared"] = None
            if r["dtype"] == EXACT and r["batch_size"] == args.batch:
                ours, theirs = topk_outputs(work).get(str(r["k"])), topk_outputs(single).get(str(r["k"]))
                if ours is not None and theirs is not None:
                    record["equal_to_single_gpu"], record["users_compared"] = compare(ours, theirs)
            records.append(record)
    return records


# -- goals and results ------------------------------------------------------------------------------------------
def tp2_goals(records: list[dict]) -> list[dict]:
    parallel = max((r["tensor_parallel_size"] for r in records), default=1)
    compared = [r for r in records if r["tensor_parallel_size"] > 1 and r["users_compared"] is not None]
    goal = f"float32: outputs at TP = {parallel} equal to one GPU's (lists token for token, top-K items in order)"
    if not compared:
        equal = verdict(goal, None, "not measured")
    else:
        parts = [
            f"{r['workload']} {r['method']} B = {r['batch_size']}: {r['equal_to_single_gpu']} / {r['users_compared']}"
            for r in compared
        ]
        equal = verdict(goal, all(r["equal_to_single_gpu"] == r["users_compared"] for r in compared), "; ".join(parts))

    def padrec_speedup(tp: int) -> float | None:  # paired with a baseline engine where bench_spec_decode did
        return next(
            (
                speedup(r)
                for r in records
                if (r["workload"], r["method"], r["dtype"], r["batch_size"], r["tensor_parallel_size"])
                == ("lists", "padrec", SPEED, 1, tp)
            ),
            None,
        )

    goal = f"PAD-Rec's one-request speedup at TP = {parallel} at least {SPEEDUP_KEPT:.0%} of one GPU's ({SPEED})"
    one, many = padrec_speedup(1), padrec_speedup(parallel)
    if one is None or many is None or parallel == 1:
        kept = verdict(goal, None, "not measured")
    else:
        kept = verdict(goal, many >= SPEEDUP_KEPT * one, f"{many:.2f}x against {one:.2f}x ({many / one:.0%})")
    return [equal, kept]


def markdown(payload: dict) -> str:
    lines = [
        "# Tensor parallelism: one GPU against two",
        "",
        f"{payload['device']}, {payload['date']}: `{payload['command']}`. Lists of {LIST_LEN} items (PAD-Rec gamma "
        f"{payload['gamma']}) and top-K in the engine (K = {payload['k']}); B = 1: one request at a time. Equal: "
        "float32 outputs of the same users equal to one GPU's.",
        "",
        *([f"Note: {payload['note']}", ""] if payload.get("note") else []),
        *goals_markdown(tp2_goals(payload["records"]), issue=15),
        "| workload | method | TP | dtype | B | tokens/s | users/s | speedup vs none | p50 ms | equal to one GPU |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in payload["records"]:
        equal = "-" if r["users_compared"] is None else f"{r['equal_to_single_gpu']} / {r['users_compared']}"
        cells = [r.get(k) for k in ("tokens_per_s", "users_per_s", "speedup_vs_no_spec", "p50_ms")]
        shown = " | ".join("-" if v is None else f"{v:g}" for v in cells)
        lines.append(
            f"| {r['workload']} | {r['method']} | {r['tensor_parallel_size']} | {r['dtype']} | {r['batch_size']} | "
            f"{shown} | {equal} |"
        )
    return "\n".join(lines) + "\n"


def plot(plt, payload: dict):
    """bfloat16 speed by tensor-parallel size: tokens/s of the list methods and users/s of top-K, per batch size."""
    speed = [r for r in payload["records"] if r["dtype"] == SPEED]
    if not speed:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, workload, field in ((axes[0], "lists", "tokens_per_s"), (axes[1], "topk", "users_per_s")):
        for method in sorted({r["method"] for r in speed if r["workload"] == workload}):
            for batch in sorted({r["batch_size"] for r in speed if r["workload"] == workload}):
                points = sorted(
                    (r["tensor_parallel_size"], r[field])
                    for r in speed
                    if (r["workload"], r["method"], r["batch_size"]) == (workload, method, batch) and r[field]
                )
                if points:
                    tps, values = zip(*points)
                    ax.plot(tps, values, marker="o", label=f"{method}, B = {batch}")
        ax.set(xlabel="tensor_parallel_size", ylabel=field.replace("_", " "), title=workload, yscale="log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--target", help="the target checkpoint folder")
    add("--dataset", help="the dataset folder (its test users)")
    add("--padrec-draft", help="the PAD-Rec draft folder")
    add("--tp", type=int, default=2, help="the tensor-parallel size set against one GPU (default 2)")
    add("--gamma", type=int, default=5, help="PAD-Rec's draft tokens per round (default 5)")
    add("--k", type=int, default=20, help="top-K's K (default 20)")
    add("--batch", type=int, default=64, help="requests (lists) or users (top-K) at once, besides one (default 64)")
    add("--users", type=int, default=256, help="test users at --batch, and compared for equality (default 256)")
    add("--users-latency", type=int, default=30, help="test users one at a time (default 30)")
    add("--work-dir", default="/tmp/bench_tp2", help="the runs' folders, tp1/ and tp<N>/ (default /tmp/bench_tp2)")
    add("--out", default="benchmarks/results", help="folder of tp2.{json,md,png} (default benchmarks/results)")
    add("--collect-only", action="store_true", help="read the runs already in --work-dir, run nothing")
    add("--render", default=None, metavar="JSON", help="only rebuild the Markdown and PNG of a results JSON")
    add("--note", default=None, help="with --render: a note written into the JSON and the Markdown")
    args = parser.parse_args(argv)
    if args.render:
        return args
    if None in (args.target, args.dataset, args.padrec_draft):
        parser.error("--target, --dataset and --padrec-draft are required (or --render JSON)")
    if args.tp < 2:
        parser.error(f"--tp {args.tp}: the comparison needs a tensor-parallel size of at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        rerender(args.render, args.note, markdown, plot)
        return 0
    import torch

    if not args.collect_only:
        if gpu_count() < args.tp:
            print(f"bench_tp2 needs {args.tp} GPUs; this machine has {gpu_count()}", file=sys.stderr)
            return 2
        run_benchmarks(args)
    payload = {
        "name": STEM,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line("benchmarks.bench_tp2", sys.argv[1:] if argv is None else list(argv)),
        "gamma": args.gamma,
        "k": args.k,
        "records": collect(args),
    }
    payload["goals"] = tp2_goals(payload["records"])
    write_payload(args.out, STEM, payload, markdown, plot)
    return 0 if payload["records"] else 1


if __name__ == "__main__":
    sys.exit(main())
