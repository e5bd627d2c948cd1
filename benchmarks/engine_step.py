"""Where a vLLM engine step's time goes, with and without the PAD-Rec draft and the catalog masks.

Offline ``LLM`` with the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), the same test
users and the same batch size for every configuration (``--concurrency`` requests a call; ``max_num_seqs`` is
``--max-num-seqs``, default the concurrency), each configuration in a fresh process (``CONFIGS``):

    baseline_free        no draft, no constraint
    baseline             no draft, constrained (the verification mask on the sampled rows)
    spec_free            PAD-Rec draft, no constraint, no draft masks
    spec                 PAD-Rec draft, constrained, draft masks on (the plugin's defaults)
    spec_no_draft_mask   PAD-Rec draft, constrained, draft masks off (``mask_drafts: false``)
    baseline_triton      no draft, constrained, the fused Triton mask kernel (``triton_masks: true``, the default)
    spec_triton          PAD-Rec draft, constrained, the same
    baseline_torch       no draft, constrained, the eager torch masks (``triton_masks: false``, the fallback)
    spec_torch           PAD-Rec draft, constrained, the same for both
    spec_table           ``spec`` with a batch-size table (``--gamma`` drafts below ``max_num_seqs``, none at it):
                         vLLM's dynamic speculative decoding where it drafts as ``spec`` does

Each records output tokens/s, engine steps (the ``vllm:iteration_tokens_total`` histogram's count),
wall ms per step and the acceptance length. Unconstrained configurations send ``ignore_eos`` so that
every list has the same length as a constrained one.

With ``--profile NAME ...`` the torch profiler also records one more batch of ``--concurrency`` users
of that configuration; the engine's phases are marked with ``record_function`` (``PHASES``: the
scheduler, the runner's input preparation, the target's forward, sampling with the masks, drafting,
output processing), and the profile reports each phase's CPU time and the GPU time of the kernels it
launched, per engine step, plus the top GPU kernels and the GPU's busy share of the wall time. With
``--profile-first-token`` it also profiles ``--users`` more users in calls of ``max_tokens`` 1, so that every
engine step is a prefill (``first_token_profile``): what ``bench_spec_decode``'s first-token phase costs.

    python -m benchmarks.engine_step --target /tmp/padrec/bench/checkpoint \\
        --draft /tmp/padrec/drafts/padrec/draft --dataset /tmp/padrec/data/beauty_atspeed \\
        --users 512 --concurrency 64 --profile baseline spec --out benchmarks/results

Writes ``<name>.json``, ``<name>.md`` and ``<name>.png`` (``--name``, default ``engine_step``). Needs a
GPU and vLLM.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vllm_padrec.acceptance import mean_acceptance_length
from vllm_padrec.integration.prefill_graphs import CUDAGRAPH_MODES, compilation_config, cudagraph_mode_name
from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS
from vllm_padrec.testing.bench_driver import rerender, write_payload
from vllm_padrec.testing.python_profile import hotspot_table, python_hotspots
from vllm_padrec.testing.stats import percentile

# name -> (with the draft, constrained, additional_config["padrec"])
CONFIGS: dict[str, tuple[bool, bool, dict]] = {
    "baseline_free": (False, False, {}),
    "baseline": (False, True, {}),
    "spec_free": (True, False, {"mask_drafts": False}),
    "spec": (True, True, {}),
    "spec_no_draft_mask": (True, True, {"mask_drafts": False}),
    "baseline_triton": (False, True, {"triton_masks": True}),
    "spec_triton": (True, True, {"triton_masks": True}),
    "baseline_torch": (False, True, {"triton_masks": False}),  # the eager torch masks (the fallback)
    "spec_torch": (True, True, {"triton_masks": False}),
    # ``spec`` served with a batch-size table that keeps --gamma at every batch size but the largest (K 0 there):
    # what vLLM 0.26.0's dynamic speculative decoding costs a round where it drafts as ``spec`` does
    "spec_table": (True, True, {}),
}
TABLE_CONFIGS = ("spec_table",)

# phase -> (module, class, method): marked with torch.profiler.record_function while profiling
PHASES: dict[str, tuple[str, str, str]] = {
    "engine step": ("vllm.v1.engine.core", "EngineCore", "step_with_batch_queue"),
    "engine step (sync)": ("vllm.v1.engine.core", "EngineCore", "step"),
    "scheduler.schedule": ("vllm.v1.core.sched.scheduler", "Scheduler", "schedule"),
    "scheduler.update_from_output": ("vllm.v1.core.sched.scheduler", "Scheduler", "update_from_output"),
    "runner.execute_model (target forward)": ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "execute_model"),
    "runner.prepare_inputs": ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "prepare_inputs"),
    "runner.sample_tokens": ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "sample_tokens"),
    "runner.sample (+ verification mask)": ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "sample"),
    "padrec.mask_verification": ("vllm_padrec.integration.request_lists", "RequestLists", "mask_verification"),
    "speculator.propose (drafting)": (
        "vllm.v1.worker.gpu.spec_decode.autoregressive.speculator",
        "AutoRegressiveSpeculator",
        "propose",
    ),
    "speculator._prefill (draft step 0)": (
        "vllm.v1.worker.gpu.spec_decode.autoregressive.speculator",
        "AutoRegressiveSpeculator",
        "_prefill",
    ),
    "speculator._multi_step_decode (draft steps 1..)": (
        "vllm.v1.worker.gpu.spec_decode.autoregressive.speculator",
        "AutoRegressiveSpeculator",
        "_multi_step_decode",
    ),
    "rejection_sampler": ("vllm.v1.worker.gpu.spec_decode.rejection_sampler", "RejectionSampler", "__call__"),
    "runner.postprocess_sampled": ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "postprocess_sampled"),
    "output_processor.process_outputs": ("vllm.v1.engine.output_processor", "OutputProcessor", "process_outputs"),
}
ITERATIONS = "vllm:iteration_tokens_total"


# -- one configuration (child process) --------------------------------------------------------------
def phase_methods() -> tuple[dict[str, tuple[type, str]], list[str]]:
    """``PHASES`` resolved in the installed vLLM: ({phase: (class, method)}, phases not found)."""
    found, missing = {}, []
    for phase, (module_name, class_name, method) in PHASES.items():
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            getattr(cls, method)
        except (ImportError, AttributeError):
            missing.append(phase)
            continue
        found[phase] = (cls, method)
    return found, missing


def mark_phases() -> list[str]:
    """Wrap each ``PHASES`` method in ``record_function(phase)``; before the engine is built, since
    some are bound at construction. Returns the phases that could not be found."""
    from torch.profiler import record_function

    found, missing = phase_methods()
    for phase, (cls, method) in found.items():
        original = getattr(cls, method)

        def marked(*args, _original=original, _phase=phase, **kwargs):
            with record_function(_phase):
                return _original(*args, **kwargs)

        setattr(cls, method, functools.wraps(original)(marked))
    return missing


def metric_totals(llm) -> dict:
    """Engine steps and spec-decode counters from ``LLM.get_metrics()``."""
    keys = dict(zip(SPEC_COUNTERS, ("drafts", "draft_tokens", "accepted")))  # the endpoint's counter names
    totals = {"steps": 0, "drafts": 0, "draft_tokens": 0, "accepted": 0}
    for metric in llm.get_metrics():
        if metric.name == ITERATIONS:
            totals["steps"] += metric.count
        elif metric.name in keys:
            totals[keys[metric.name]] += metric.value
    return totals


def capture_size(args) -> dict:
    """``LLM`` keyword arguments for ``--max-cudagraph-capture-size`` (none: vLLM's default, min(max_num_seqs
    * (1 + K) * 2, 512) tokens; a step past it runs without CUDA graphs: integration/SPEC_DECODE.md, section 3)
    and ``--cudagraph-mode`` (``integration/prefill_graphs.compilation_config``)."""
    config = compilation_config(args.max_cudagraph_capture_size, args.cudagraph_mode)
    return {} if config is None else {"compilation_config": config}


def max_num_seqs(args) -> int:
    """The engine's ``max_num_seqs``: ``--max-num-seqs``, or ``--concurrency`` (each call then one engine batch)."""
    return args.max_num_seqs or args.concurrency


def batch_size_table(gamma: int, largest: int) -> list[list[int]]:
    """``spec_table``'s ``num_speculative_tokens_per_batch_size``: ``gamma`` drafts up to ``largest - 1``
    requests, none at ``largest`` (as ``gamma_schedule`` writes a table that stops drafting at a batch size)."""
    return [[1, largest - 1, gamma], [largest, largest, 0]]


def speculative_config(args, config: str) -> dict:
    """The draft's ``speculative_config``: vLLM's EAGLE method on the PAD-Rec head, ``--gamma`` drafts (None:
    vLLM's default for the draft); ``spec_table``'s as ``vllm-padrec gamma-schedule`` writes its table."""
    if config in TABLE_CONFIGS:
        from vllm_padrec.integration.gamma_schedule import speculative_config as table_config

        return table_config(args.draft, batch_size_table(args.gamma, max_num_seqs(args)))
    spec: dict = {"method": "eagle", "model": args.draft}
    if args.gamma is not None:
        spec["num_speculative_tokens"] = args.gamma
    return spec


def generate(llm, prompts: list, params, concurrency: int, call_seconds: list[float] | None = None) -> list:
    """``llm.generate`` of ``prompts`` in calls of ``concurrency`` requests, one after another: with
    ``max_num_seqs`` above ``concurrency`` a call's requests are what shares an engine step. Each call's seconds
    are appended to ``call_seconds`` when given."""
    outputs = []
    for first in range(0, len(prompts), concurrency):
        began = time.perf_counter()
        outputs += llm.generate(prompts[first : first + concurrency], params, use_tqdm=False)
        if call_seconds is not None:
            call_seconds.append(time.perf_counter() - began)
    return outputs


def run_config(args) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: profiled too
    os.environ.setdefault("VLLM_PLUGINS", "padrec")
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_padrec.catalog import ItemCatalog, TokenLayout
    from vllm_padrec.data import load_dataset
    from vllm_padrec.integration.recommendation_service import read_max_history

    with_draft, constrained, padrec = CONFIGS[args.one]
    missing = mark_phases() if args.profile_this else []
    catalog = ItemCatalog.load(args.target)
    data = load_dataset(args.dataset)
    samples = data.eval_samples("test", read_max_history(Path(args.target)) or 20)
    first_token = args.profile_this and args.profile_first_token
    count = args.concurrency + args.users * (2 if first_token else 1)  # the first-token batch's users come last
    samples = (samples * (1 + count // max(len(samples), 1)))[:count]
    prompts = [TokensPrompt(prompt_token_ids=catalog.render_prompt(s.history)) for s in samples]
    max_tokens = args.list_items * (catalog.num_slots + 1) + 1
    if constrained:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            stop_token_ids=[TokenLayout.EOS],
            extra_args={"padrec_constraint": 1, "padrec_num_items": args.list_items, "padrec_no_repeat": 1},
        )
    else:  # the same list length without the masks
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    spec = speculative_config(args, args.one) if with_draft else None
    started = time.perf_counter()
    llm = LLM(
        model=args.target,
        speculative_config=spec,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=max_num_seqs(args),
        disable_log_stats=False,
        additional_config={"padrec": padrec} if padrec else {},
        **capture_size(args),
    )
    startup = time.perf_counter() - started
    warm, timed = prompts[: args.concurrency], prompts[args.concurrency : args.concurrency + args.users]
    generate(llm, warm, params, args.concurrency)
    before = metric_totals(llm)
    torch.cuda.synchronize()
    started = time.perf_counter()
    call_seconds: list[float] = []
    outputs = generate(llm, timed, params, args.concurrency, call_seconds)
    seconds = time.perf_counter() - started
    after = metric_totals(llm)
    delta = {k: after[k] - before[k] for k in after}
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    acceptance = mean_acceptance_length(delta["accepted"], delta["drafts"])
    record = {
        "config": args.one,
        "with_draft": with_draft,
        "constrained": constrained,
        "padrec_config": padrec,
        "users": len(timed),
        "concurrency": args.concurrency,
        "max_num_seqs": max_num_seqs(args),
        "speculative_config": spec,
        "dtype": args.dtype,
        "max_cudagraph_capture_size": args.max_cudagraph_capture_size,
        "cudagraph_mode": args.cudagraph_mode,
        "startup_seconds": round(startup, 1),
        "seconds": round(seconds, 3),
        "output_tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
        "engine_steps": int(delta["steps"]),
        # the median call: robust to a slow first call (a kernel compiled on first use) that the mean carries
        "calls": len(call_seconds),
        "call_ms_p50": round(1000 * percentile(call_seconds, 50), 3),
        "step_ms": round(1000 * seconds / delta["steps"], 3) if delta["steps"] else None,
        "acceptance_length": None if acceptance is None else round(acceptance, 4),
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
    }
    if args.profile_this:
        record["profile"] = profile_batch(llm, warm, params, args, missing)
    if first_token:  # users the engine has not served (unless the test users ran out), one token each
        fresh = prompts[args.concurrency + args.users :]
        record["first_token_profile"] = profile_batch(
            llm, fresh, first_token_params(params), args, missing, label=f"{args.one}_first_token"
        )
    return record


def first_token_params(params):
    """``params`` for calls that end at their first token: each request's only engine step is its prefill (with a
    draft, the draft's prefill and first drafts too), the step that ``bench_spec_decode``'s ``first_token`` phase
    times."""
    first = params.clone()
    first.max_tokens = 1
    return first


def profile_batch(llm, prompts, params, args, missing: list[str], label: str | None = None) -> dict:
    """One batch under the torch profiler: CPU and GPU time per phase and per engine step (its Chrome trace named
    after ``label``, default the configuration)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    before = metric_totals(llm)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        generate(llm, prompts, params, args.concurrency)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    steps = metric_totals(llm)["steps"] - before["steps"]
    events = prof.key_averages()
    per_step = max(steps, 1)
    phases = merge_phase_rows(
        [
            {
                "phase": e.key,
                "calls": e.count,
                "cpu_ms_per_step": round(e.cpu_time_total / 1000 / per_step, 3),
                "gpu_ms_per_step": round(e.device_time_total / 1000 / per_step, 3),
            }
            for e in events
            if e.key in PHASES
        ]
    )
    # kernels, copies and memsets only: a phase's GPU range spans its kernels and the gaps between them
    work = [e for e in events if e.key not in PHASES and e.self_device_time_total > 0]
    gpu_total_us = sum(e.self_device_time_total for e in work)
    kernels = sorted(work, key=lambda e: -e.self_device_time_total)
    top = [
        {
            "kernel": e.key[:120],
            "calls": e.count,
            "gpu_ms_per_step": round(e.self_device_time_total / 1000 / per_step, 3),
        }
        for e in kernels[:15]
    ]
    if args.trace_dir:
        prof.export_chrome_trace(str(Path(args.trace_dir) / f"trace_{label or args.one}.json.gz"))  # torch gzips it
    # the same batch once more under Python's profiler: the host time the torch profiler sees only as ops
    before = metric_totals(llm)
    _, hotspots = python_hotspots(generate, llm, prompts, params, args.concurrency)
    python_steps = max(metric_totals(llm)["steps"] - before["steps"], 1)
    calls = -(-len(prompts) // args.concurrency)
    return {
        "users": len(prompts),
        "engine_steps": int(steps),
        "wall_ms_per_call": round(1000 * seconds / max(calls, 1), 3),
        "wall_ms_per_step": round(1000 * seconds / per_step, 3),
        "gpu_busy_ms_per_step": round(gpu_total_us / 1000 / per_step, 3),
        "gpu_busy_share": round(gpu_total_us / 1e6 / seconds, 3),
        "phases": phases,
        "top_gpu_ops": top,
        "phases_not_found": missing,
        "python_hotspots_per_step": [
            {
                **row,
                "self_ms": round(row["self_ms"] / python_steps, 3),
                "total_ms": round(row["total_ms"] / python_steps, 3),
            }
            for row in hotspots
        ],
    }


def merge_phase_rows(rows: list[dict]) -> list[dict]:
    """One row per phase, in ``PHASES`` order. The profiler reports a marked phase twice: its CPU range
    (CPU time, plus the few kernels launched outside CUDA graphs) and its GPU range (the span on the
    GPU timeline from the phase's first kernel to its last, idle gaps included, no CPU time)."""
    merged: dict[str, dict] = {}
    for row in rows:
        m = merged.setdefault(
            row["phase"], {"phase": row["phase"], "calls": 0, "cpu_ms_per_step": 0.0, "gpu_span_ms_per_step": None}
        )  # None: no kernels
        if "gpu_span_ms_per_step" in row:  # merged already
            m.update(row)
        elif row["cpu_ms_per_step"] > 0:  # the CPU range
            m["calls"] = row["calls"]
            m["cpu_ms_per_step"] = row["cpu_ms_per_step"]
        else:  # the GPU range
            m["gpu_span_ms_per_step"] = row["gpu_ms_per_step"]
    order = list(PHASES)
    return sorted(merged.values(), key=lambda m: order.index(m["phase"]))


# -- driver ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="the target checkpoint folder (needed unless --render)")
    parser.add_argument("--draft", help="the PAD-Rec draft folder (needed unless --render)")
    parser.add_argument("--dataset", help="the dataset folder (needed unless --render)")
    parser.add_argument("--render", default=None, help="redraw the Markdown and the plot from this JSON, then exit")
    parser.add_argument(
        "--note", default=None, help="a note printed under the results' heading (with --render: replaces the file's)"
    )
    parser.add_argument("--users", type=int, default=512, help="timed requests (test users, repeated if needed)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="requests a call; max_num_seqs too unless --max-num-seqs"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="the engine's max_num_seqs (default: --concurrency); above it, the users run --concurrency a call, "
        "calls one after another",
    )
    parser.add_argument(
        "--gamma",
        type=int,
        default=None,
        help="the draft's num_speculative_tokens (default: vLLM's for the draft); spec_table needs it",
    )
    parser.add_argument("--list-items", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--max-cudagraph-capture-size",
        type=int,
        default=None,
        help="the largest step (tokens) vLLM captures CUDA graphs for (default: vLLM's, at most 512); issue 14's "
        "first check of why a speculative step at batch 64 costs 4.6x a plain one",
    )
    parser.add_argument(
        "--cudagraph-mode",
        default="vllm",
        choices=list(CUDAGRAPH_MODES),
        help="vllm (default): vLLM's FULL_AND_PIECEWISE, prefills replay piecewise graphs; full: cudagraph_mode FULL, "
        "whole-model graphs for prefills too (integration/prefill_graphs.py)",
    )
    parser.add_argument("--profile", nargs="*", default=[], choices=list(CONFIGS), help="configurations to profile")
    parser.add_argument(
        "--profile-first-token",
        action="store_true",
        help="with --profile: also profile a batch of calls that end at their first token (max_tokens 1, users the "
        "engine has not served), so that each engine step is a prefill: what bench_spec_decode's first_token phase "
        "costs",
    )
    parser.add_argument("--trace-dir", default=None, help="also write each profile's Chrome trace here (gzipped)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="engine_step")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="also report configurations an earlier call ran on this machine (/tmp/engine_step_*.json)",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: run this configuration
    parser.add_argument("--profile-this", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        rerender(args.render, args.note, render_markdown, render_plot)
        return 0
    missing = [f"--{name}" for name in ("target", "draft", "dataset") if getattr(args, name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --render a results file)")
    if args.max_num_seqs is not None and args.max_num_seqs < args.concurrency:
        parser.error(f"--max-num-seqs {args.max_num_seqs} is below --concurrency {args.concurrency}")
    tabled = [c for c in args.configs if c in TABLE_CONFIGS]
    if args.profile_first_token and not args.profile:
        parser.error("--profile-first-token profiles the configurations of --profile: name them")
    if tabled and args.gamma is None:
        parser.error(f"{tabled[0]} needs --gamma (the drafts its table keeps)")
    if tabled and max_num_seqs(args) <= args.concurrency:
        parser.error(
            f"{tabled[0]} drafts nothing at max_num_seqs ({max_num_seqs(args)}): give --max-num-seqs above "
            f"--concurrency {args.concurrency}"
        )

    if args.one:
        Path(args.result).write_text(json.dumps(run_config(args)))
        return 0

    forwarded = sys.argv[1:] if argv is None else argv
    records, errors = [], {}
    for name in args.configs:
        result = Path(f"/tmp/engine_step_{name}.json")
        result.unlink(missing_ok=True)
        child = [sys.executable, "-m", "benchmarks.engine_step", *forwarded, "--one", name, "--result", str(result)]
        child += ["--profile-this"] if name in args.profile else []
        log = Path(f"/tmp/engine_step_{name}.log")
        print(f"[engine_step] {name} ...", flush=True)
        with open(log, "w") as handle:
            code = subprocess.call(child, stdout=handle, stderr=subprocess.STDOUT)
        if code != 0 or not result.exists():
            errors[name] = f"exit {code}: " + log.read_text()[-1500:]
            print(errors[name], flush=True)
            continue
        r = json.loads(result.read_text())
        print(
            f"[engine_step] {name}: {r['tokens_per_second']} tok/s, {r['step_ms']} ms/step, "
            f"acceptance {r['acceptance_length']}",
            flush=True,
        )
    for name in CONFIGS:  # in table order; --merge: also the configurations an earlier call ran on this machine
        result = Path(f"/tmp/engine_step_{name}.json")
        if result.exists() and (name in args.configs or args.merge) and name not in errors:
            records.append(json.loads(result.read_text()))
    payload = summarize(records, args, errors) | ({"note": args.note} if args.note else {})
    write_payload(args.out, args.name, payload, render_markdown, render_plot)
    print(render_markdown(payload))
    return 0 if not errors else 1


def summarize(records: list[dict], args, errors: dict) -> dict:
    """Drop the token lists, keep whether each configuration's lists equal its no-draft counterpart's."""
    import torch

    by_name = {r["config"]: r for r in records}
    for r in records:
        reference = by_name.get("baseline" if r["constrained"] else "baseline_free")
        if r["with_draft"] and reference is not None:
            r["lists_differing_from_no_draft"] = sum(a != b for a, b in zip(r["token_ids"], reference["token_ids"]))
    for r in records:
        r.pop("token_ids", None)
    base = by_name.get("baseline")
    for r in records:
        if base and r["tokens_per_second"]:
            r["speedup_vs_baseline"] = round(r["tokens_per_second"] / base["tokens_per_second"], 3)
    return {
        "target": args.target,
        "draft": args.draft,
        "dataset": args.dataset,
        "users": args.users,
        "concurrency": args.concurrency,
        "max_num_seqs": max_num_seqs(args),
        "gamma": args.gamma,
        "max_cudagraph_capture_size": args.max_cudagraph_capture_size,
        "cudagraph_mode": args.cudagraph_mode,
        "list_items": args.list_items,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "records": records,
        "errors": errors,
    }


def render_markdown(payload: dict) -> str:
    lines = [
        "# Engine step: where the time goes",
        "",
        f"Offline `LLM`, engine in-process, {payload['users']} requests of {payload['list_items']}-item lists, "
        f"{payload['concurrency']} a call (max_num_seqs {payload.get('max_num_seqs', payload['concurrency'])}), "
        f"gamma {payload.get('gamma') or 'vLLM default'}, {payload['dtype']}; {payload['device']}, torch "
        f"{payload['torch']}, {payload['date']}; CUDA graphs up to "
        f"{payload.get('max_cudagraph_capture_size') or 'vLLM default'} tokens, "
        f"{cudagraph_mode_name(CUDAGRAPH_MODES.get(payload.get('cudagraph_mode') or 'vllm'))} mode. Step ms = wall "
        "time / engine steps; call p50: the median call (--concurrency requests).",
        "",
        *([f"Note: {payload['note']}", ""] if payload.get("note") else []),
        "| configuration | draft | constrained | tokens/s | speedup vs baseline | engine steps | step ms "
        "| call p50 ms | acceptance length | lists ≠ no draft |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["records"]:
        lines.append(
            f"| {r['config']} | {'yes' if r['with_draft'] else 'no'} | {'yes' if r['constrained'] else 'no'} | "
            f"{r['tokens_per_second']} | {r.get('speedup_vs_baseline', '-')} | {r['engine_steps']} | {r['step_ms']} | "
            f"{r.get('call_ms_p50', '-')} | "
            f"{r['acceptance_length'] if r['acceptance_length'] is not None else '-'} | "
            f"{r.get('lists_differing_from_no_draft', '-')} |"
        )
    for r in payload["records"]:
        if r.get("profile"):
            lines += profile_lines(f"Profile: {r['config']}", r["profile"])
        if r.get("first_token_profile"):
            lines += profile_lines(
                f"First token: {r['config']}",
                r["first_token_profile"],
                "Calls of max_tokens 1, so that each engine step is a request's prefill (with a draft, its prefill "
                "and first drafts too): bench_spec_decode's first_token phase.",
            )
    for name, error in payload["errors"].items():
        lines += ["", f"{name} failed: `{error[-300:]}`"]
    return "\n".join(lines) + "\n"


def profile_lines(title: str, p: dict, what: str = "") -> list[str]:
    """One profiled batch (``profile_batch``) as a Markdown section: its phases, its top GPU ops, Python's hotspots."""
    lines = [
        "",
        f"## {title}",
        "",
        *([what, ""] if what else []),
        f"{p['users']} requests, {p['engine_steps']} engine steps: {p['wall_ms_per_step']} ms wall per step"
        + (f", {p['wall_ms_per_call']} ms per call, " if p.get("wall_ms_per_call") is not None else ", ")
        + (
            f"GPU kernels busy {p['gpu_busy_ms_per_step']} ms per step "
            f"({100 * p['gpu_busy_share']:.0f}% of the wall time)."
            if p.get("gpu_busy_ms_per_step") is not None
            else "GPU busy time not recorded."
        )
        + (f" {p['note']}" if p.get("note") else ""),
        "",
        "| phase | calls | CPU ms per step | GPU span ms per step (first to last kernel, gaps included) |",
        "|---|---:|---:|---:|",
        *[
            f"| {q['phase']} | {q['calls']} | {q['cpu_ms_per_step']} | "
            f"{'-' if q['gpu_span_ms_per_step'] is None else q['gpu_span_ms_per_step']} |"
            for q in merge_phase_rows(p["phases"])
        ],
        "",
        "| top GPU op | calls | GPU ms per step |",
        "|---|---:|---:|",
        *[
            f"| `{k['kernel']}` | {k['calls']} | {k['gpu_ms_per_step']} |"
            for k in p["top_gpu_ops"]
            if k["kernel"] not in PHASES
        ],
    ]
    if p.get("python_hotspots_per_step"):
        lines += [
            "",
            "Python's profile of the same batch, per engine step:",
            "",
            hotspot_table(p["python_hotspots_per_step"]),
        ]
    return lines


def render_plot(plt, payload: dict):
    """Tokens/s and ms per engine step of each configuration (None: no configuration ran)."""
    if not payload["records"]:
        return None
    records = payload["records"]
    names = [r["config"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].bar(
        names, [r["tokens_per_second"] for r in records], color=["C1" if r["with_draft"] else "C0" for r in records]
    )
    axes[0].set_ylabel("output tokens / s")
    axes[1].bar(names, [r["step_ms"] or 0 for r in records], color=["C1" if r["with_draft"] else "C0" for r in records])
    axes[1].set_ylabel("wall ms per engine step")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        for label in ax.get_xticklabels():
            label.set_ha("right")
    fig.suptitle(
        f"vLLM engine with the PAD-Rec draft and catalog masks ({payload['dtype']}, {payload['concurrency']} per step)"
    )
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
