"""Benchmark the catalog at scale (issue 15): memory per item and the catalog masks' cost per engine step for
synthetic catalogs of 1M and 10M items, and what one GPU holds.

On a CUDA GPU:

    python -m benchmarks.bench_catalog_scale --out benchmarks/results

writes ``catalog_scale.json``, ``catalog_scale.md`` and ``catalog_scale.png``. Redraw from the JSON anywhere:

    python -m benchmarks.bench_catalog_scale --render benchmarks/results/catalog_scale.json

The memory per item needs no GPU: ``--memory-only`` builds each size's catalog and tables on the CPU, each size
in a fresh process, and writes ``catalog_scale_memory.{json,md,png}`` (the tables' tensor bytes, which a GPU
holds too; no build peak and no mask timings, which need CUDA).

For each catalog size (``--sizes``; synthetic semantic IDs of the datasets' shape, 4 slots of 256 codes with
200 first codes, ``vllm_padrec.testing.catalogs``):

- **host**: seconds and resident memory to build the ``ItemCatalog`` (what the server and the engine process each
  hold: item ids, codes, the id and SID lookups), from ``/proc/self/statm``;
- **device**: seconds to build ``CatalogTables`` (the masks' tables: the trie and the sorted item keys), the bytes
  they hold after the build (``torch.cuda.memory_allocated``) and at the build's peak, per item;
- **masks**: the fused Triton kernel (``kernels/catalog_mask.py``, the plugin's default), CUDA events, median of
  ``--repeats`` means over ``--iters`` calls, each call first checked equal to the plain-torch reference:
  lists, B requests with K = 5 draft tokens (the verification call over B * 6 rows plus 5 draft steps of B rows,
  what one speculative engine step pays) and top-K, B users of K beams each (one verification call over B * K
  beam rows, no drafts: what one engine step of the in-engine beam search pays);
- **capacity**: items per GiB of device memory at the largest size measured, the largest catalog whose tables fit
  in ``--budget-gib`` (a share of the GPU taken from vLLM's KV cache), and the ID space's own limit.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vllm_padrec.testing.catalogs import CODEBOOK, FIRST_CODES, NUM_SLOTS, synthetic_codes
from vllm_padrec.testing.mask_inputs import LIST_ITEMS, every_row_keeps_a_token, make_inputs, same_as_eager
from vllm_padrec.testing.results import write_results

SIZES = (1_000_000, 10_000_000)
LIST_BATCHES = (1, 64)
NUM_DRAFTS = 5
TOPK_SHAPES = ((1, 20), (1, 100), (1, 256), (1, 1024), (64, 20), (64, 100), (64, 256))  # (users B, beams K)
ID_SPACE = FIRST_CODES * CODEBOOK ** (NUM_SLOTS - 1)  # distinct SIDs of this shape
STEM = "catalog_scale"
MEMORY_STEM = "catalog_scale_memory"  # --memory-only


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``); None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def build_catalog(num_items: int):
    """(catalog, host record): a synthetic ``ItemCatalog`` of ``num_items`` items and what building it cost."""
    from vllm_padrec.catalog import ItemCatalog

    before, started = resident_bytes(), time.perf_counter()
    codes = synthetic_codes(num_items)
    catalog = ItemCatalog(
        [str(i) for i in range(num_items)], codes, (CODEBOOK,) * NUM_SLOTS, name=f"synthetic_{num_items}"
    )
    seconds, after = time.perf_counter() - started, resident_bytes()
    host = None if before is None or after is None else after - before
    record = {
        "host_build_s": round(seconds, 2),
        "host_bytes": host,
        "host_bytes_per_item": None if host is None else round(host / num_items, 1),
    }
    return catalog, record


def build_tables(catalog, device):
    """(tables, device record): the catalog's ``CatalogTables`` on ``device`` and what they hold. On a CUDA device
    the bytes are the allocator's (held after the build, and its peak); elsewhere the tables' own tensor bytes,
    which a GPU holds too (``CatalogTables.memory_bytes``), and no peak."""
    import torch

    from vllm_padrec.lists.tables import CatalogTables

    if torch.device(device).type != "cuda":
        started = time.perf_counter()
        tables = CatalogTables.build(catalog, device=device)
        seconds = time.perf_counter() - started
        held, peak = tables.memory_bytes(), None
    else:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before, started = torch.cuda.memory_allocated(), time.perf_counter()
        tables = CatalogTables.build(catalog, device=device)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        held, peak = torch.cuda.memory_allocated() - before, torch.cuda.max_memory_allocated() - before
    record = {
        "device_build_s": round(seconds, 2),
        "device_bytes": held,
        "device_peak_build_bytes": peak,
        "device_bytes_per_item": round(held / len(catalog), 1),
        "trie_bytes": tables.trie.memory_bytes(),
        "tables_bytes": tables.memory_bytes(),
    }
    return tables, record


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (``getrusage``; Linux counts it in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_record(num_items: int, catalog_file: str) -> dict:
    """One catalog size's host and table memory (``--memory-only``), built on the CPU in the calling process; the
    catalog is then saved to ``catalog_file`` as a checkpoint holds it (``padrec_catalog.json``)."""
    catalog, host = build_catalog(num_items)
    _, held = build_tables(catalog, "cpu")
    started = time.perf_counter()
    catalog.save(catalog_file)
    saved = {"save_s": round(time.perf_counter() - started, 2), "file_bytes": Path(catalog_file).stat().st_size}
    return {"items": num_items, **host, **held, **saved}


def load_record(catalog_file: str) -> dict:
    """What loading a saved catalog costs a fresh process (the server's front end and the engine each load the
    checkpoint's): seconds, resident bytes it keeps, and the peak above the process's resident memory before."""
    from vllm_padrec.catalog import ItemCatalog

    before, peak_before, started = resident_bytes(), peak_resident_bytes(), time.perf_counter()
    catalog = ItemCatalog.load(catalog_file)
    seconds, after = time.perf_counter() - started, resident_bytes()
    items = len(catalog)
    return {
        "load_s": round(seconds, 2),
        "load_bytes_per_item": None if before is None or after is None else round((after - before) / items, 1),
        "load_peak_bytes_per_item": round((peak_resident_bytes() - max(peak_before, before or 0)) / items, 1),
    }


def memory_records(sizes: list[int], work: str) -> list[dict]:
    """``memory_record`` and then ``load_record`` of each size, each in a fresh process (a process that built and
    freed a smaller catalog first would reuse that memory and under-count the next one's resident bytes); the
    saved catalogs go to the folder ``work`` and are removed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def in_fresh_process(fn, *args):
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(fn, *args).result()

    records = []
    for size in sorted(sizes):
        print(f"building a catalog of {size:,} items and its tables on the CPU", file=sys.stderr, flush=True)
        catalog_file = Path(work) / f"catalog_{size}.json"
        try:
            record = in_fresh_process(memory_record, size, str(catalog_file))
            print(f"loading it from its {record['file_bytes'] / 2**20:,.0f} MiB file", file=sys.stderr, flush=True)
            records.append(record | in_fresh_process(load_record, str(catalog_file)))
        finally:
            catalog_file.unlink(missing_ok=True)
        print(json.dumps(records[-1]), flush=True)
    return records


# (workload, B, K beams, drafts) of mask_timings: lists of B requests drafting NUM_DRAFTS tokens, top-K of B users
MASK_SHAPES = tuple(("list", b, 1, NUM_DRAFTS) for b in LIST_BATCHES) + tuple(("topk", b, k, 0) for b, k in TOPK_SHAPES)


def mask_timings(
    catalog, tables, iters: int, repeats: int, device, shapes=MASK_SHAPES, timer: Callable | None = None
) -> list[dict]:
    """The kernel's cost per engine step for lists (B requests, NUM_DRAFTS drafts) and top-K (B users x K beams),
    each call checked against the reference first; ``timer(fn, iters, repeats, graph)`` gives ms per call
    (default ``testing.timing.time_ms``, CUDA events)."""
    from vllm_padrec.kernels import (
        catalog_mask_draft,
        catalog_mask_draft_reference,
        catalog_mask_verification,
        catalog_mask_verification_reference,
    )
    from vllm_padrec.testing.mask_inputs import draft_args, verification_args
    from vllm_padrec.testing.timing import time_ms

    timer = timer or time_ms
    width = LIST_ITEMS * tables.period
    records = []
    for kind, batch, beams, drafts in shapes:
        rows = batch * beams  # requests of the step: a top-K user's beams are requests of their own in the engine
        x = make_inputs(catalog, rows, drafts, seed=rows, device=device, max_num_reqs=max(rows, 1))
        where = f"{catalog.name} {kind} B={batch} K={beams if kind == 'topk' else drafts}"
        verify_rest = verification_args(x, tables, drafts, width)
        masked = same_as_eager(
            catalog_mask_verification_reference,
            catalog_mask_verification,
            x["verify_logits"],
            verify_rest,
            where,
            "Triton",
        )
        every_row_keeps_a_token(masked, where)
        verify_us = 1000 * timer(
            functools.partial(catalog_mask_verification, x["verify_logits"], *verify_rest), iters, repeats, graph=False
        )
        record = {"items": len(catalog), "kind": kind, "batch": batch, "rows": rows * (drafts + 1)}
        record |= {"beams": beams if kind == "topk" else None, "num_drafts": drafts}
        record["verification_us"] = round(verify_us, 2)
        per_step = verify_us
        if drafts:
            draft_rest = draft_args(x, tables, width)
            same_as_eager(
                catalog_mask_draft_reference, catalog_mask_draft, x["draft_logits"], draft_rest, where, "Triton"
            )
            draft_us = 1000 * timer(
                functools.partial(catalog_mask_draft, x["draft_logits"], *draft_rest), iters, repeats, graph=True
            )
            record["draft_step_us"] = round(draft_us, 2)
            per_step += drafts * draft_us
        record["per_step_us"] = round(per_step, 2)
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def capacity(catalogs: list[dict], budget_gib: float, device_gib: float | None) -> dict:
    """Items per GiB at the largest catalog measured, and the largest catalog within ``budget_gib`` (bounded by the
    ID space of this SID shape): by the build's peak per item where it was measured (a CUDA device), else by the
    bytes the tables hold (``bound``)."""
    largest = max(catalogs, key=lambda c: c["items"])
    per_gib = 2**30 / largest["device_bytes_per_item"]
    peak = largest["device_peak_build_bytes"]
    per_item = (peak if peak is not None else largest["device_bytes"]) / largest["items"]
    return {
        "device_gib": None if device_gib is None else round(device_gib, 1),
        "budget_gib": budget_gib,
        "items_per_gib": int(per_gib),
        "largest_items_in_budget": int(min(budget_gib * 2**30 / max(per_item, 1e-9), ID_SPACE)),
        "bound": "build peak" if peak is not None else "tables held",
        "id_space": ID_SPACE,
        "from_items": largest["items"],
    }


def render_markdown(payload: dict) -> str:
    cap = payload["capacity"]
    where = (
        "Device: the `CatalogTables` the masks read (trie and sorted item keys), after the build and at its peak. "
        "Masks: the fused Triton kernel, checked equal to the plain-torch reference first; lists: B requests with 5 "
        "draft tokens (verification over B x 6 rows and 5 draft steps); top-K: B users of K beams (one verification "
        "call over B x K rows)."
        if payload["masks"]
        else "Tables: the `CatalogTables` the masks read (trie and sorted item keys), built on the CPU "
        "(`--memory-only`): their tensors' bytes, which a GPU holds too (plus its allocator's rounding); the "
        "build's peak and the masks' cost need a CUDA GPU."
    )
    lines = [
        "# The catalog at scale: memory per item and the masks' cost per engine step",
        "",
        f"{payload['gpu']}, torch {payload['torch']}, {payload['date']}: `{payload['command']}`. Synthetic "
        f"catalogs of {NUM_SLOTS} slots x {CODEBOOK} codes ({FIRST_CODES} first codes). Host: resident memory of "
        f"the `ItemCatalog` (item ids, codes, lookups). {where}",
        *(["", f"Note: {payload['note']}"] if payload.get("note") else []),
        "",
        "| items | host build s | host bytes / item | device build s | device MiB | device bytes / item "
        "| build peak MiB | trie MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in payload["catalogs"]:
        host = "-" if c["host_bytes_per_item"] is None else f"{c['host_bytes_per_item']:g}"
        peak = c["device_peak_build_bytes"]
        lines.append(
            f"| {c['items']:,} | {c['host_build_s']:g} | {host} | {c['device_build_s']:g} | "
            f"{c['device_bytes'] / 2**20:.1f} | {c['device_bytes_per_item']:g} | "
            f"{'-' if peak is None else format(peak / 2**20, '.1f')} | {c['trie_bytes'] / 2**20:.1f} |"
        )
    loaded = [c for c in payload["catalogs"] if c.get("load_s") is not None]
    if loaded:
        lines += [
            "",
            "Loading the catalog from a checkpoint's `padrec_catalog.json` (saved by the run, loaded by a fresh "
            "process, as the server's front end and the engine each do): resident bytes the loaded catalog keeps, "
            "and the process's peak above its memory before the load.",
            "",
            "| items | file MiB | save s | load s | resident bytes / item | peak bytes / item |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for c in loaded:
            kept = "-" if c["load_bytes_per_item"] is None else f"{c['load_bytes_per_item']:g}"
            lines.append(
                f"| {c['items']:,} | {c['file_bytes'] / 2**20:.1f} | {c['save_s']:g} | {c['load_s']:g} | {kept} | "
                f"{c['load_peak_bytes_per_item']:g} |"
            )
    device = "" if cap["device_gib"] is None else f" of the {cap['device_gib']:g} GiB device"
    lines += [
        "",
        f"**Capacity** (from {cap['from_items']:,} items): {cap['items_per_gib']:,} items per GiB of tables; "
        f"{cap['largest_items_in_budget']:,} items fit within {cap['budget_gib']:g} GiB{device} by the "
        f"{cap.get('bound', 'build peak')} per item (the ID space of this shape: {cap['id_space']:,}).",
        "",
    ]
    if not payload["masks"]:
        return "\n".join(lines)
    lines += [
        "| items | workload | B | K beams / drafts | rows | verification µs | draft step µs | per engine step µs |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["masks"]:
        k = r["beams"] if r["kind"] == "topk" else r["num_drafts"]
        lines.append(
            f"| {r['items']:,} | {r['kind']} | {r['batch']} | {k} | {r['rows']:,} | {r['verification_us']:g} | "
            f"{format(r['draft_step_us'], 'g') if 'draft_step_us' in r else '-'} | {r['per_step_us']:g} |"
        )
    return "\n".join(lines) + "\n"


def plot(plt, payload: dict):
    """Bytes per item by catalog size (host and tables); with mask timings, beside it µs per engine step against
    the rows masked, one line per catalog size and workload."""
    fig, axes = plt.subplots(1, 2 if payload["masks"] else 1, figsize=(12 if payload["masks"] else 6, 4.5))
    memory, steps = (axes[0], axes[1]) if payload["masks"] else (axes, None)
    catalogs = sorted(payload["catalogs"], key=lambda c: c["items"])
    items = [c["items"] for c in catalogs]
    host = [(c["items"], c["host_bytes_per_item"]) for c in catalogs if c["host_bytes_per_item"] is not None]
    if host:
        memory.plot(*zip(*host), marker="o", label="host: ItemCatalog built (resident)")
    loaded = [(c["items"], c["load_bytes_per_item"]) for c in catalogs if c.get("load_bytes_per_item") is not None]
    if loaded:
        memory.plot(*zip(*loaded), marker="^", label="host: ItemCatalog loaded from its JSON (resident)")
    memory.plot(items, [c["device_bytes_per_item"] for c in catalogs], marker="s", label="mask tables")
    memory.set(xscale="log", xlabel="items in the catalog", ylabel="bytes per item", ylim=(0, None))
    memory.set_title("Memory per item")
    memory.grid(alpha=0.3)
    memory.legend(fontsize=8)
    if steps is not None:
        for size in sorted({r["items"] for r in payload["masks"]}):
            for kind in ("list", "topk"):
                points = sorted(
                    (r["rows"], r["per_step_us"]) for r in payload["masks"] if (r["items"], r["kind"]) == (size, kind)
                )
                if points:
                    rows, us = zip(*points)
                    steps.plot(rows, us, marker="o" if kind == "list" else "s", label=f"{size:,} items, {kind}")
        steps.set(xscale="log", yscale="log", xlabel="rows masked in the step", ylabel="µs per engine step")
        steps.set_title("Catalog masks (Triton) by catalog size")
        steps.grid(alpha=0.3)
        steps.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write(payload: dict, out: str) -> None:
    stem = payload.get("name", STEM)
    write_results(out, stem, payload, render_markdown(payload), functools.partial(plot, payload=payload))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sizes", type=int, nargs="+", default=list(SIZES), help="catalog sizes in items (default 1M 10M)")
    add("--out", default="benchmarks/results", help="folder of catalog_scale.{json,md,png}")
    add("--iters", type=int, default=200, help="calls per timing (default 200)")
    add("--repeats", type=int, default=5, help="timings per measurement, median taken (default 5)")
    add("--budget-gib", type=float, default=14.0, help="device memory given to the catalog tables (default 14)")
    add("--render", default=None, help="redraw the Markdown and the plot from this JSON, then exit")
    add(
        "--memory-only",
        action="store_true",
        help=f"the memory per item only, built on the CPU (no GPU needed; no build peak, no mask timings): writes "
        f"{MEMORY_STEM}.{{json,md,png}}",
    )
    add("--note", default=None, help="a note to print under the results' heading (with --render: replaces the file's)")
    args = parser.parse_args(argv)
    if any(size < LIST_ITEMS for size in args.sizes):
        parser.error(f"--sizes: a catalog needs at least {LIST_ITEMS} items (the lists are {LIST_ITEMS} long)")
    if any(size > ID_SPACE for size in args.sizes):
        parser.error(f"--sizes: this SID shape has {ID_SPACE:,} distinct IDs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        payload = json.loads(Path(args.render).read_text())
        if args.note is not None:  # kept in the JSON too, as a run's own note is
            payload["note"] = args.note
        write(payload, str(Path(args.render).parent))
        return 0
    import torch

    from vllm_padrec.testing.bench_driver import command_line

    header = {
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line("benchmarks.bench_catalog_scale", sys.argv[1:] if argv is None else list(argv)),
        "note": args.note,
    }
    if args.memory_only:
        with tempfile.TemporaryDirectory(prefix="catalog_scale_") as work:
            catalogs = memory_records(args.sizes, work)
        payload = {"name": MEMORY_STEM, "gpu": "CPU", **header, "catalogs": catalogs, "masks": []}
        write(payload | {"capacity": capacity(catalogs, args.budget_gib, None)}, args.out)
        return 0
    if not torch.cuda.is_available():
        print("bench_catalog_scale needs a CUDA GPU (--memory-only and --render run anywhere)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    catalogs, masks = [], []
    for size in sorted(args.sizes):
        catalog, host = build_catalog(size)
        tables, held = build_tables(catalog, device)
        catalogs.append({"items": size, **host, **held})
        print(json.dumps(catalogs[-1]), flush=True)
        masks += mask_timings(catalog, tables, args.iters, args.repeats, device)
        del catalog, tables
        torch.cuda.empty_cache()
    payload = {
        "name": STEM,
        "gpu": torch.cuda.get_device_name(),
        **header,
        "catalogs": catalogs,
        "masks": masks,
        "capacity": capacity(catalogs, args.budget_gib, torch.cuda.get_device_properties(0).total_memory / 2**30),
    }
    write(payload, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
