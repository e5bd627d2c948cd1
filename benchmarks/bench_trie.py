"""Benchmark the catalog constraint: time per decoding step of the trie mask, on synthetic catalogs.

On a CUDA GPU:

    python -m benchmarks.bench_trie --out benchmarks/results

writes ``trie.json`` (records, GPU name, torch version), ``trie.md`` (tables) and, if matplotlib is
importable, ``trie.png`` (time per step against catalog size). To redraw the table and the plot
from the JSON, on any machine:

    python -m benchmarks.bench_trie --render benchmarks/results/trie.json

Method. Catalogs of 10k, 100k and 1M items with 4 slots of 256 codes: distinct random SIDs whose
first code takes one of 200 values and the others are uniform (so level 1 holds <= 200 nodes and
level 2 about 50k, as in an RQ-VAE catalog). The trie is built on the GPU with 2 dense levels.
For batch B in {1, 64}, every row sits at the same depth d (0..L: d = L is the step after a
complete item, where only <sep> / </s> are allowed), each row on a random item's prefix. Two ops:

- ``step``: ``ListConstraint.allowed_tokens`` (the full [B, V] mask) + ``ListConstraint.advance``
  for a random allowed token: what a decoding step pays for the constraint;
- ``trie``: ``ItemTrie.allowed_codes`` alone (the [B, C_max] code mask), depths 0..L-1.

``no_repeat`` runs ban 20 history items per row (``ban_history``) and keep the list's own items
banned (``max_banned`` = 64 columns). Each op is timed with CUDA events over ``--iters`` calls after
a warm-up (a quarter as many calls when eager), ``--repeats`` times (median), in three modes:

- ``eager``: plain calls (each torch op is one kernel launch from Python);
- ``graph``: replays of a CUDA graph that captured one eager call (no launch overhead, but still one
  graph node per torch op);
- ``compiled``: ``torch.compile(fullgraph=True, dynamic=False)`` of the same call (Inductor fuses the
  ops into a few Triton kernels), then captured in a CUDA graph: what a serving loop that compiles
  and captures its constraint step pays. Its output is checked against the eager call.

``cycle`` averages the L + 1 depths of one item (L codes and the separator step).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time

from vllm_padrec.plotting import pyplot
from vllm_padrec.testing.catalogs import CODEBOOK, FIRST_CODES, NUM_SLOTS, synthetic_codes
from vllm_padrec.testing.timing import time_ms

SIZES = (10_000, 100_000, 1_000_000)
BATCHES = (1, 64)
NUM_BANNED = 20  # history items banned per row in the no_repeat runs
MAX_BANNED = 64
MODES = ("eager", "graph", "compiled")
GOAL_MS = 0.05  # per step, 1M items, batch 64
STATIC_MS = 0.033  # STATIC (arXiv 2602.22647), for reference

JSON_NAME = "trie.json"
MD_NAME = "trie.md"
PNG_NAME = "trie.png"


def eager_iters(iters: int) -> int:
    """Calls per eager timing: eager calls are slow and steady, so fewer suffice."""
    return max(10, iters // 4)


def check_same(got, expected, what: str) -> None:
    """Compiled and eager outputs (tensors, tuples of them, or ListStates) must be equal."""
    import dataclasses

    import torch

    if dataclasses.is_dataclass(got):
        names = [f.name for f in dataclasses.fields(got)]
        got, expected = [getattr(got, n) for n in names], [getattr(expected, n) for n in names]
    if isinstance(got, (tuple, list)):
        for g, e in zip(got, expected, strict=True):
            check_same(g, e, what)
    elif not torch.equal(got, expected):
        raise AssertionError(f"{what}: the compiled output differs from the eager one")


def bench_catalog(num_items: int, args) -> tuple[dict, list[dict]]:
    import numpy as np
    import torch

    from vllm_padrec.catalog import ItemCatalog
    from vllm_padrec.constraint import ListConstraint
    from vllm_padrec.trie import ItemTrie

    codes = synthetic_codes(num_items)
    t0 = time.perf_counter()
    item_ids = [str(i) for i in range(num_items)]
    catalog = ItemCatalog(item_ids, codes, (CODEBOOK,) * NUM_SLOTS, name=f"synthetic{num_items}")
    catalog_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    trie = ItemTrie.build(catalog.codes, catalog.layout.codebook_sizes, dense_levels=2, device="cuda")
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    info = {
        "items": num_items,
        "level_sizes": list(trie.level_sizes),
        "max_degree": list(trie.max_degree),
        "memory_bytes": trie.memory_bytes(),
        "bytes_per_item": trie.bytes_per_item(),
        "build_s": build_s,
        "catalog_s": catalog_s,
    }
    print(f"{num_items:>9} items: trie built in {build_s:.2f} s, {trie.bytes_per_item():.1f} B/item", flush=True)

    rng = np.random.default_rng(num_items)
    generator = torch.Generator(device="cuda").manual_seed(num_items)
    L = NUM_SLOTS
    records = []
    for batch in args.batches:
        for no_repeat in (False, True):
            constraint = ListConstraint(catalog, trie, no_repeat=no_repeat, max_banned=MAX_BANNED, device="cuda")
            picks = rng.choice(num_items, NUM_BANNED + batch, replace=False)
            items, history = picks[:batch].tolist(), [picks[batch:].tolist()] * batch

            def step(state, tokens, constraint=constraint):
                return constraint.allowed_tokens(state), constraint.advance(state, tokens)

            def trie_mask(state, no_repeat=no_repeat):
                return trie.allowed_codes(state.depth, state.node, state.banned if no_repeat else None)

            compiled = {}
            if args.compile:
                torch.compiler.reset()  # a fresh cache: each config compiles its own graphs
                compiled = {
                    "step": torch.compile(step, fullgraph=True, dynamic=False),
                    "trie": torch.compile(trie_mask, fullgraph=True, dynamic=False),
                }
            compile_s = 0.0
            for depth in range(L + 1):
                prefixes = [catalog.item_token_ids(i)[:depth] for i in items]
                state = constraint.state_after(prefixes, history if no_repeat else None, ban_history=no_repeat)
                allowed = constraint.allowed_tokens(state)  # [B, V]
                tokens = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)  # [B]
                calls = {"step": (step, (state, tokens))}
                if depth < L:
                    calls["trie"] = (trie_mask, (state,))
                for op, (fn, inputs) in calls.items():
                    record = {"items": num_items, "batch": batch, "no_repeat": no_repeat, "op": op, "depth": depth}
                    record["eager_ms"] = time_ms(
                        functools.partial(fn, *inputs), eager_iters(args.iters), args.repeats, False
                    )
                    record["graph_ms"] = time_ms(functools.partial(fn, *inputs), args.iters, args.repeats, True)
                    if op in compiled:
                        t0 = time.perf_counter()
                        check_same(compiled[op](*inputs), fn(*inputs), f"compiled {op}, depth {depth}")
                        compile_s += time.perf_counter() - t0
                        record["compiled_ms"] = time_ms(
                            functools.partial(compiled[op], *inputs), args.iters, args.repeats, True
                        )
                    records.append(record)
            for op in ("step", "trie"):  # the mean over one item's steps
                rows = [r for r in records if _key(r) == (num_items, batch, no_repeat, op)]
                cycle = {"items": num_items, "batch": batch, "no_repeat": no_repeat, "op": op, "depth": "cycle"}
                for mode in MODES:
                    if mode + "_ms" in rows[0]:
                        cycle[f"{mode}_ms"] = statistics.mean(r[f"{mode}_ms"] for r in rows)
                if op == "step" and compiled:
                    cycle["compile_s"] = compile_s
                records.append(cycle)
                print(
                    f"  batch {batch:>2} no_repeat={no_repeat!s:5} {op:4}: "
                    + ", ".join(f"{m} {cycle[m + '_ms'] * 1e3:7.1f} us" for m in MODES if m + "_ms" in cycle)
                    + " per step"
                    + (f" (compiled in {compile_s:.1f} s)" if "compile_s" in cycle else ""),
                    flush=True,
                )
    constraint = trie = catalog = None  # freed before the next catalog size
    torch.cuda.empty_cache()
    return info, records


# -- rendering ---------------------------------------------------------------------------------------
def _key(record: dict) -> tuple:
    return record["items"], record["batch"], record["no_repeat"], record["op"]


def _cycle(records, items, batch, no_repeat, op):
    for r in records:
        if _key(r) == (items, batch, no_repeat, op) and r["depth"] == "cycle":
            return r
    return None


def _best_mode(record: dict) -> str:
    return "compiled" if "compiled_ms" in record else "graph"


def render_markdown(payload: dict) -> str:
    meta, records, catalogs = payload["meta"], payload["records"], payload["catalogs"]
    us = lambda ms: f"{ms * 1e3:.1f}"  # noqa: E731
    L = meta["num_slots"]
    lines = [
        "# Trie constraint: time per decoding step",
        "",
        f"GPU: {meta['gpu']}; torch {meta['torch']}; {meta['date']}. Microseconds per step, median of "
        f"{meta['repeats']} x {meta['iters']} calls ({eager_iters(meta['iters'])} when eager). "
        "`step` = `ListConstraint.allowed_tokens` ([B, V] mask) + "
        "`advance`; `trie` = `ItemTrie.allowed_codes` ([B, C_max] mask). Modes: `eager` = plain calls; `graph` = "
        "CUDA-graph replay of one eager call; `compiled` = `torch.compile` of the call, captured in a CUDA graph "
        "(what a serving loop that compiles and captures its step pays). `cycle` = mean over the depths of one item "
        f"(d = 0..{L - 1} codes, d = {L} separator step). no_repeat: {meta['num_banned']} banned history items per "
        f"row plus the list's own items. Synthetic catalogs: {L} slots x {meta['codebook']} codes, first code from "
        f"{meta['first_codes']} values.",
        "",
    ]
    big = max(c["items"] for c in catalogs)
    goal = _cycle(records, big, max(r["batch"] for r in records), False, "step")
    if goal is not None:
        mode = _best_mode(goal)
        verdict = "meets" if goal[f"{mode}_ms"] <= GOAL_MS else "misses"
        lines += [
            f"**{big:,} items, batch {goal['batch']}: {us(goal[f'{mode}_ms'])} us per step ({mode}) -- {verdict} the "
            f"goal of {us(GOAL_MS)} us** (STATIC reports {us(STATIC_MS)} us; uncompiled graph: "
            f"{us(goal['graph_ms'])} us, eager: {us(goal['eager_ms'])} us).",
            "",
        ]
    keys = sorted({_key(r) for r in records})
    modes = [m for m in MODES if any(f"{m}_ms" in r for r in records)]
    lines += [
        "| items | batch | no_repeat | op | "
        + " | ".join(f"cycle {m}" for m in modes)
        + " | "
        + " | ".join(f"d={d}" for d in range(L + 1))
        + " |",
        "|" + "---|" * (4 + len(modes) + L + 1),
    ]
    for items, batch, no_repeat, op in keys:
        rows = {r["depth"]: r for r in records if _key(r) == (items, batch, no_repeat, op)}
        cycle = rows["cycle"]
        mode = _best_mode(cycle)
        per_depth = [us(rows[d][f"{mode}_ms"]) if d in rows else "-" for d in range(L + 1)]
        lines.append(
            f"| {items:,} | {batch} | {no_repeat} | {op} | "
            + " | ".join(us(cycle[f"{m}_ms"]) if f"{m}_ms" in cycle else "-" for m in modes)
            + " | "
            + " | ".join(per_depth)
            + " |"
        )
    lines += ["", "Per-depth columns are in the fastest mode measured (compiled when present).", ""]
    lines += [
        "| items | nodes per level | max children per level | trie memory | bytes per item | build on GPU (s) |",
        "|---|---|---|---|---|---|",
    ]
    for c in catalogs:
        lines.append(
            f"| {c['items']:,} | {c['level_sizes']} | {c['max_degree']} | {c['memory_bytes'] / 2**20:.1f} MiB | "
            f"{c['bytes_per_item']:.1f} | {c['build_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def render_plot(payload: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    records = payload["records"]
    sizes = sorted({r["items"] for r in records})
    top = max(r[k] for r in records if r["op"] == "step" for k in ("graph_ms", "compiled_ms") if k in r) * 1e3
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, no_repeat in zip(axes, (False, True)):
        for batch, colour in zip(sorted({r["batch"] for r in records}), ("tab:blue", "tab:orange", "tab:green")):
            points = [_cycle(records, n, batch, no_repeat, "step") for n in sizes]
            if any(p is None for p in points):
                continue
            for mode, style in (("compiled", "-"), ("graph", "--")):
                if all(f"{mode}_ms" in p for p in points):
                    ys = [p[f"{mode}_ms"] * 1e3 for p in points]
                    ax.plot(sizes, ys, style, marker="o", color=colour, label=f"batch {batch}, {mode}")
        ax.axhline(GOAL_MS * 1e3, color="grey", linestyle=":", label=f"goal {GOAL_MS * 1e3:.0f} us")
        static = f"STATIC {STATIC_MS * 1e3:.0f} us"
        ax.axhline(STATIC_MS * 1e3, color="black", linestyle=":", linewidth=0.8, label=static)
        ax.set_xscale("log")
        ax.set_xlabel("catalog size (items)")
        ax.set_title("no_repeat, 20 banned" if no_repeat else "plain lists")
        ax.set_ylim(0, 1.1 * max(top, GOAL_MS * 1e3))
        ax.legend(fontsize=7)
    axes[0].set_ylabel("us per decoding step (mask + advance)")
    fig.suptitle(f"Trie constraint per step, CUDA graph replay ({payload['meta']['gpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(payload: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, MD_NAME), "w") as f:
        f.write(render_markdown(payload))
    png = render_plot(payload, os.path.join(out_dir, PNG_NAME))
    print(f"wrote {MD_NAME}" + (f" and {PNG_NAME}" if png else " (no matplotlib: no plot)") + f" in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for trie.json / .md / .png")
    parser.add_argument("--render", metavar="JSON", help="only rebuild the table and plot from this JSON (no GPU)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="catalog sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes")
    parser.add_argument("--iters", type=int, default=200, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per case (median)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile mode")
    args = parser.parse_args(argv)

    if args.render:
        with open(args.render) as f:
            payload = json.load(f)
        write_outputs(payload, os.path.dirname(os.path.abspath(args.render)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_trie needs a CUDA GPU (use --render JSON to redraw results on a CPU machine)", file=sys.stderr)
        return 2
    catalogs, records = [], []
    for size in args.sizes:
        info, recs = bench_catalog(size, args)
        catalogs.append(info)
        records += recs
    payload = {
        "meta": {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "iters": args.iters,
            "repeats": args.repeats,
            "num_slots": NUM_SLOTS,
            "codebook": CODEBOOK,
            "first_codes": FIRST_CODES,
            "num_banned": NUM_BANNED,
            "max_banned": MAX_BANNED,
            "goal_ms": GOAL_MS,
        },
        "catalogs": catalogs,
        "records": records,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, JSON_NAME), "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {JSON_NAME}")
    write_outputs(payload, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
