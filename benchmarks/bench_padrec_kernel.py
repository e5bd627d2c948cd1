"""Benchmark the fused PAD-Rec input kernel against the unfused torch reference.

On a CUDA GPU:

    python -m benchmarks.bench_padrec_kernel --out benchmarks/results

writes ``padrec_kernel.json`` (records and machine info), ``padrec_kernel.md`` (a table) and, if
matplotlib is importable, ``padrec_kernel.png`` (time against T). To redraw the table and the plot
from the JSON, on any machine:

    python -m benchmarks.bench_padrec_kernel --render benchmarks/results/padrec_kernel.json

Method. The ceiling is the machine's device-to-device copy bandwidth (one large ``copy_``,
counting bytes read plus bytes written). Each case is checked against the reference, then timed
with ``triton.testing.do_bench`` (median; it flushes L2 before every call, so the data starts
cold), and for T <= --graph-max-t also as CUDA-graph replays (``do_bench_cudagraph``, median: no
launch overhead, data warm in L2 as in a decode step). Inputs are random, never zeros.

Bytes counted for the fused kernel's GB/s (e = element size of h, e_slot / e_step of the tables):
    bytes = T*H*e (read h) + T*H*e (write out) + T*H*(e_slot + e_step) (gathered rows, one of each
            per row) + T*(b_token + b_slot_table + b_step) (ids and slot lookup) + H*e (gate_w)
A second figure, ``min_bytes`` = 2*T*H*e + T*(ids) + (S + K + 1)*H*e, counts every table row once
(the compulsory device-memory traffic, since the gathered rows are few and stay in cache).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import sys
import time

from vllm_padrec.testing.results import write_results

HIDDEN_SIZES = (1536, 4096)
NUM_ROWS = (1, 8, 64, 512, 4096, 32768)
NUM_TOKENS = 2048  # V: vocabulary rows of the slot table
NUM_SLOTS = 6  # S: L = 4 code slots + separator + other
NUM_STEPS = 5  # K: draft steps
COPY_BYTES = 2 << 30  # 2 GiB source buffer for the copy-bandwidth ceiling

STEM = "padrec_kernel"  # padrec_kernel.json, .md and .png


def measure_copy_bandwidth(nbytes: int = COPY_BYTES) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    import torch
    import triton.testing

    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")  # [nbytes]
    dst = torch.empty_like(src)  # [nbytes]
    ms = triton.testing.do_bench(functools.partial(dst.copy_, src), warmup=50, rep=500, return_mode="median")
    src = dst = None  # freed before empty_cache
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_inputs(T: int, H: int, dtype, seed: int) -> dict:
    """Random kernel inputs on the GPU: bf16/fp16/fp32 features and tables, int64 ids, [T] steps."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    return dict(
        h=torch.randn(T, H, **kw).to(dtype),  # [T, H]
        token_ids=torch.randint(0, NUM_TOKENS, (T,), **kw),  # [T] int64
        slot_table=torch.randint(0, NUM_SLOTS, (NUM_TOKENS,), **kw),  # [V] int64
        step_ids=torch.randint(0, NUM_STEPS, (T,), **kw),  # [T] int64
        slot_emb=(0.5 * torch.randn(NUM_SLOTS, H, **kw)).to(dtype),  # [S, H]
        step_emb=(0.5 * torch.randn(NUM_STEPS, H, **kw)).to(dtype),  # [K, H]
        alpha=torch.randn((), **kw).to(dtype),  # []
        gate_w=(torch.randn(H, **kw) / math.sqrt(H)).to(dtype),  # [H]
        gate_b=torch.randn((1,), **kw).to(dtype),  # [1]
    )


def bytes_moved(inputs: dict) -> tuple[int, int]:
    """(bytes, min_bytes) of one fused call, by the formulas in the module docstring."""
    h = inputs["h"]
    T, H = h.shape
    e = h.element_size()
    ids = T * sum(inputs[name].element_size() for name in ("token_ids", "slot_table", "step_ids"))
    gathered = T * H * (inputs["slot_emb"].element_size() + inputs["step_emb"].element_size())
    gate_w = H * inputs["gate_w"].element_size()
    counted = 2 * T * H * e + gathered + ids + gate_w
    tables = (NUM_SLOTS + NUM_STEPS + 1) * H * e
    return counted, 2 * T * H * e + ids + tables


def bench_case(T: int, H: int, dtype, copy_gbps: float, graph_max_t: int) -> dict:
    """Check the fused kernel against the reference at one shape, then time both."""
    import torch
    import triton.testing

    from vllm_padrec.kernels import padrec_input, padrec_input_reference

    inputs = make_inputs(T, H, dtype, seed=T * 7919 + H)
    out = torch.empty_like(inputs["h"])  # [T, H]

    out.fill_(float("nan"))
    padrec_input(**inputs, out=out)
    want = padrec_input_reference(**inputs)  # [T, H]
    if torch.isnan(out).any():
        raise RuntimeError(f"T={T} H={H}: the fused kernel left elements of 'out' unwritten")
    torch.testing.assert_close(out.float(), want.float(), atol=1e-2, rtol=1.6e-2)

    def fused():
        padrec_input(**inputs, out=out)

    def unfused():
        padrec_input_reference(**inputs)

    record = dict(T=T, H=H, dtype=str(dtype).removeprefix("torch."))
    record["fused_us"] = 1e3 * triton.testing.do_bench(fused, warmup=25, rep=200, return_mode="median")
    record["torch_us"] = 1e3 * triton.testing.do_bench(unfused, warmup=25, rep=200, return_mode="median")
    record["speedup"] = record["torch_us"] / record["fused_us"]
    if T <= graph_max_t:
        record["fused_graph_us"] = 1e3 * triton.testing.do_bench_cudagraph(fused, rep=50, return_mode="median")
        record["torch_graph_us"] = 1e3 * triton.testing.do_bench_cudagraph(unfused, rep=50, return_mode="median")
        record["speedup_graph"] = record["torch_graph_us"] / record["fused_graph_us"]
    record["host_us"] = _host_launch_us(fused)
    counted, minimum = bytes_moved(inputs)
    record["bytes"] = counted
    record["gbps"] = counted / (record["fused_us"] * 1e-6) / 1e9
    record["frac_copy"] = record["gbps"] / copy_gbps
    record["min_bytes"] = minimum
    record["min_gbps"] = minimum / (record["fused_us"] * 1e-6) / 1e9
    record["min_frac_copy"] = record["min_gbps"] / copy_gbps
    return record


def _host_launch_us(fn, calls: int = 100) -> float:
    """Host time of one call (argument checks + kernel launch), the GPU work left queued."""
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    return 1e6 * host


def machine_info(copy_gbps: float) -> dict:
    import torch
    import triton

    props = torch.cuda.get_device_properties(0)
    return dict(
        gpu=props.name,
        multiprocessors=props.multi_processor_count,
        gpu_memory_gib=round(props.total_memory / 2**30, 1),
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
        copy_gbps=copy_gbps,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def run(out_dir: str, hidden_sizes, num_rows, graph_max_t: int) -> str:
    """Run every case, write the JSON, then render it; return the JSON path."""
    import torch

    copy_gbps = measure_copy_bandwidth()
    print(f"copy bandwidth: {copy_gbps:.0f} GB/s (read + write)", flush=True)
    records = []
    for H in hidden_sizes:
        for T in num_rows:
            record = bench_case(T, H, torch.bfloat16, copy_gbps, graph_max_t)
            records.append(record)
            print(_format_row(record), flush=True)
    json_path = str(write_results(out_dir, STEM, dict(machine=machine_info(copy_gbps), records=records))["json"])
    render(json_path)
    return json_path


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _format_row(r: dict) -> str:
    return (
        f"| {r['H']} | {r['T']} | {_fmt(r['fused_us'], '.1f')} | {_fmt(r['torch_us'], '.1f')} | "
        f"{_fmt(r['speedup'], '.1f')}x | {_fmt(r.get('fused_graph_us'), '.2f')} | "
        f"{_fmt(r.get('torch_graph_us'), '.2f')} | {_fmt(r.get('speedup_graph'), '.1f')}"
        f"{'x' if r.get('speedup_graph') else ''} | {r['gbps']:.0f} | {100 * r['frac_copy']:.0f}% | "
        f"{r['min_gbps']:.0f} | {100 * r['min_frac_copy']:.0f}% | {_fmt(r.get('host_us'), '.1f')} |"
    )


def render(json_path: str) -> None:
    """Write the Markdown table (and the PNG plot if matplotlib is importable) beside the JSON."""
    with open(json_path) as f:
        data = json.load(f)
    machine, records = data["machine"], data["records"]
    out_dir = os.path.dirname(os.path.abspath(json_path))
    lines = [
        "# Fused PAD-Rec input kernel vs the unfused torch reference",
        "",
        f"{machine['gpu']} ({machine['multiprocessors']} SMs), torch {machine['torch']}, triton {machine['triton']}, "
        f"CUDA {machine['cuda']}, {machine['date']}. Copy bandwidth (read + write): {machine['copy_gbps']:.0f} GB/s.",
        "",
        "Times are medians in microseconds: `do_bench` (L2 flushed before every call, launch included) and "
        "CUDA-graph replay (`do_bench_cudagraph`, data warm in L2). "
        "GB/s counts 2·T·H·e (read h, write out) + T·H·(e_slot + e_step) (gathered rows) "
        "+ T·(id bytes) + H·e (gate_w); "
        "min GB/s counts each table row once. Fractions are of the copy bandwidth. "
        "Host launch: CPU time of one fused call (argument checks + Triton launch); when it exceeds the "
        "kernel's time, eager timings at small T measure the host, and only graph replay shows the kernel.",
        "",
        "| H | T | fused (µs) | torch (µs) | speedup | fused graph (µs) | torch graph (µs) | graph speedup "
        "| GB/s | of copy | min GB/s | of copy | host launch (µs) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_format_row(r) for r in records]
    markdown = "\n".join(lines) + "\n"
    write_results(out_dir, STEM, markdown=markdown, figure=lambda plt: _plot(plt, records, machine))


def _plot(plt, records: list[dict], machine: dict):
    """Time against T, one panel per H: fused and unfused, eager and graph replay."""
    hidden_sizes = sorted({r["H"] for r in records})
    fig, axes = plt.subplots(1, len(hidden_sizes), figsize=(6 * len(hidden_sizes), 4.5), squeeze=False)
    series = (
        ("fused_us", "fused (Triton)", "C0", "-"),
        ("torch_us", "unfused torch", "C1", "-"),
        ("fused_graph_us", "fused, graph replay", "C0", "--"),
        ("torch_graph_us", "torch, graph replay", "C1", "--"),
    )
    for ax, H in zip(axes[0], hidden_sizes):
        rows = sorted((r for r in records if r["H"] == H), key=lambda r: r["T"])
        for key, label, color, style in series:
            points = [(r["T"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), style, color=color, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (rows)")
        ax.set_ylabel("time (µs, median)")
        ax.set_title(f"H = {H}, {rows[0]['dtype']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"PAD-Rec input kernel on {machine['gpu']}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON, Markdown and PNG")
    parser.add_argument("--render", metavar="JSON", help="only redraw the Markdown and PNG from this JSON")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN_SIZES), help="H values")
    parser.add_argument("--rows", type=int, nargs="+", default=list(NUM_ROWS), help="T values")
    parser.add_argument("--graph-max-t", type=int, default=512, help="also time CUDA-graph replays up to this T")
    args = parser.parse_args(argv)
    if args.render:
        render(args.render)
        print(f"wrote {STEM}.md (and {STEM}.png if matplotlib is installed) beside {args.render}")
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_padrec_kernel: needs a CUDA GPU; use --render JSON to redraw saved results on a CPU machine")
    json_path = run(args.out, args.hidden, args.rows, args.graph_max_t)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
