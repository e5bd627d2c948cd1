"""Benchmark the top-K beams' KV block copies: the Triton kernel over every storage against its torch reference.

On a CUDA GPU:

    python -m benchmarks.bench_kv_block_copy --out benchmarks/results

writes ``kv_block_copy.json`` (records, GPU name), ``kv_block_copy.md`` and ``kv_block_copy.png`` (time
per beam step's copies against the number of copies, per layer count). To redraw from the JSON:

    python -m benchmarks.bench_kv_block_copy --render benchmarks/results/kv_block_copy.json

Method. ``--layers`` storages of ``--num-blocks`` blocks, each page ``--page-kib`` KiB: the bench target's
shape (28 layers; a page of 16 tokens x 8 KV heads x 128 x K and V in bfloat16 = 64 KiB). One beam step
of N copies (N = K x B blocks per request x requests: 20 for one request at K = 20 with B = 1, up to 64
requests at K = 20 with B = 2), sources drawn with repeats and destinations distinct, as a beam step's
parents and children. Each way is timed over ``--iters`` calls after a warm-up, ``--repeats`` times
(median):

- ``gpu_ms``: CUDA events around the calls: what the GPU spends per step;
- ``host_ms``: the host's time per call without a sync, once the queue is warm: what the engine's
  thread spends launching it, the part that adds to a step while the GPU runs the forward.

The kernel's result is checked against the reference's, byte for byte, before timing.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

from vllm_padrec.testing.results import write_results

MODES = ("reference", "kernel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--layers", type=int, nargs="+", default=[1, 28], help="storages (layers) per run (default 1 28)")
    add("--copies", type=int, nargs="+", default=[20, 160, 1280, 2560], help="block copies per step")
    add("--page-kib", type=int, default=64, help="bytes per block and storage, in KiB (default 64)")
    add("--num-blocks", type=int, default=4096, help="blocks per storage (default 4096)")
    add("--iters", type=int, default=50, help="calls per timing (default 50)")
    add("--repeats", type=int, default=5, help="timings per measurement, median (default 5)")
    add("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    add("--render", default=None, metavar="JSON", help="only rebuild the Markdown and PNG of a results JSON")
    return parser.parse_args(argv)


def measure(fn, iters: int, repeats: int) -> tuple[float, float]:
    """(GPU ms per call by CUDA events, host ms per call without a sync), medians over ``repeats``."""
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        started = time.perf_counter()
        start.record()
        for _ in range(iters):
            fn()
        host.append((time.perf_counter() - started) * 1000 / iters)
        end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end) / iters)
    return statistics.median(gpu), statistics.median(host)


def run(args) -> dict:
    import torch

    records = []
    for layers in args.layers:
        records += measure_layers(args, layers)
        torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "iters": args.iters,
        "repeats": args.repeats,
        "records": records,
    }


def measure_layers(args, layers: int) -> list[dict]:
    """Both ways at every ``--copies`` over ``layers`` storages (freed when this returns)."""
    import torch

    from vllm_padrec.kernels import StoragePointers, kv_block_copy, kv_block_copy_reference

    page = args.page_kib * 1024
    generator = torch.Generator(device="cuda").manual_seed(layers)
    pages = [torch.empty(args.num_blocks, page, dtype=torch.uint8, device="cuda") for _ in range(layers)]
    for p in pages:
        p.random_(0, 256, generator=generator)
    pointers = StoragePointers.of(pages)
    records = []
    for n in args.copies:
        dst = torch.randperm(args.num_blocks, device="cuda", generator=generator)[:n]
        src = dst[torch.randint(0, n, (n,), device="cuda", generator=generator)]  # parents among the children
        check = [p.clone() for p in pages]
        kv_block_copy_reference(check, src, dst)
        kv_block_copy(pointers, src, dst)
        if not all(torch.equal(a, b) for a, b in zip(pages, check)):
            raise AssertionError(f"the kernel differs from the reference at {layers} layers, {n} copies")
        check.clear()
        ways = {
            "reference": functools.partial(kv_block_copy_reference, pages, src, dst),
            "kernel": functools.partial(kv_block_copy, pointers, src, dst),
        }
        for mode, fn in ways.items():
            gpu_ms, host_ms = measure(fn, args.iters, args.repeats)
            moved = 2 * layers * n * page  # each block read and written once
            records.append(
                {
                    "mode": mode,
                    "layers": layers,
                    "copies": n,
                    "page_bytes": page,
                    "gpu_ms": round(gpu_ms, 4),
                    "host_ms": round(host_ms, 4),
                    "block_gb_per_s": round(moved / gpu_ms / 1e6, 1),
                }
            )
            print(records[-1], flush=True)
    return records


def markdown(payload: dict) -> str:
    lines = [
        "# Top-K KV block copies: the Triton kernel against its torch reference",
        "",
        f"{payload['device']}, torch {payload['torch']}, {payload['date']}. One beam step's copies: GPU time by "
        "CUDA events, and the host's time to issue them (no sync). GB/s counts each block read and written once.",
        "",
        "| layers | copies | page KiB | reference GPU ms | kernel GPU ms | reference host ms | kernel host ms "
        "| kernel GB/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["layers"], r["copies"], r["mode"]): r for r in payload["records"]}
    for layers, copies in sorted({(r["layers"], r["copies"]) for r in payload["records"]}):
        ref, ker = by_key.get((layers, copies, "reference")), by_key.get((layers, copies, "kernel"))
        if ref is None or ker is None:
            continue
        lines.append(
            f"| {layers} | {copies} | {ref['page_bytes'] // 1024} | {ref['gpu_ms']} | {ker['gpu_ms']} | "
            f"{ref['host_ms']} | {ker['host_ms']} | {ker['block_gb_per_s']} |"
        )
    return "\n".join(lines) + "\n"


def plot(plt, payload: dict):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "gpu_ms", "GPU ms per step"), (axes[1], "host_ms", "host ms per step")):
        for layers in sorted({r["layers"] for r in payload["records"]}):
            for mode, style in (("reference", "--"), ("kernel", "-")):
                rows = sorted(
                    (r for r in payload["records"] if r["layers"] == layers and r["mode"] == mode),
                    key=lambda r: r["copies"],
                )
                if rows:
                    ax.plot(
                        [r["copies"] for r in rows],
                        [r[key] for r in rows],
                        style,
                        marker="o",
                        label=f"{mode}, {layers} layers",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("block copies per step")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        import json

        payload = json.loads(open(args.render).read())
    else:
        payload = run(args)
    write_results(args.out, "kv_block_copy", payload, markdown(payload), lambda plt: plot(plt, payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
