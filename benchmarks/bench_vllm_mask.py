"""Benchmark the catalog masks the plugin applies inside vLLM: their cost per engine step.

On a CUDA GPU:

    python -m benchmarks.bench_vllm_mask --dataset ../shared/data/beauty_atspeed --out benchmarks/results

writes ``vllm_mask.json``, ``vllm_mask.md`` and ``vllm_mask.png``. Redraw from the JSON anywhere:

    python -m benchmarks.bench_vllm_mask --render benchmarks/results/vllm_mask.json

What is timed are the two masks vLLM calls through the plugin (``vllm_padrec.lists.masks``, the kernel's reference),
with the tensors V2 hands them (request slots, per-request settings, ``all_token_ids``), at the sizes
of a speculative engine step with B requests and K draft tokens:

- ``verification``: ``mask_verification_logits`` on the target's B * (K + 1) verification rows
  (every draft position and the bonus row), eagerly (what the plugin runs with ``triton_masks: false``),
  compiled (``torch.compile(dynamic=True)``, a comparison point), and eagerly captured in a CUDA graph;
  the compiled output is checked against the eager one;
- ``draft``: ``mask_draft_logits`` on the draft's B rows at one draft step, replayed from a CUDA
  graph, as it runs inside vLLM's captured drafting loop (K calls per engine step);
- ``draft_compiled``: the same draft call compiled (a comparison point), captured and replayed
  from a CUDA graph; checked against the eager one;
- ``per_step``: compiled verification + K compiled draft calls (``per_step_eager``: both eager, what one
  engine step pays for the constraint with ``triton_masks: false``; ``per_step_from``);
- ``*_triton``: the same two calls through the fused Triton kernel (``triton_masks``, the plugin's
  default), verification launched plainly, the draft call replayed from a CUDA graph; checked
  against the eager masks.

Catalogs: the dataset's (Beauty, 12k items) and a synthetic 1M-item catalog (``vllm_padrec.testing.catalogs``'
generator). Each request holds a partial list of real items (random length, no repeats), the drafts
are that list's next tokens, so every row takes the valid-prefix path. Settings: 10 items per list,
no-repeat on. Times are medians of ``--repeats`` means over ``--iters`` calls (CUDA events).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys

from vllm_padrec.plotting import pyplot
from vllm_padrec.testing.catalogs import synthetic_codes
from vllm_padrec.testing.mask_inputs import (
    LIST_ITEMS,
    MAX_NUM_REQS,
    draft_args,
    every_row_keeps_a_token,
    make_inputs,
    same_as_eager,
    verification_args,
)
from vllm_padrec.testing.timing import time_ms

BATCHES = (1, 8, 32, 64, 128)
NUM_DRAFTS = (3, 5)
JSON_NAME = "vllm_mask.json"
MD_NAME = "vllm_mask.md"
PNG_NAME = "vllm_mask.png"


def bench(catalog, name: str, args) -> list[dict]:
    import torch

    from vllm_padrec.kernels import (
        catalog_mask_draft,
        catalog_mask_draft_reference,
        catalog_mask_verification,
        catalog_mask_verification_reference,
    )
    from vllm_padrec.lists.tables import CatalogTables

    device = torch.device("cuda")
    tables = CatalogTables.build(catalog, device=device)
    width = LIST_ITEMS * tables.period
    # a comparison point: one dynamic-shape graph
    compiled_verify = torch.compile(catalog_mask_verification_reference, dynamic=True, fullgraph=True)
    compiled_draft = torch.compile(catalog_mask_draft_reference, dynamic=True, fullgraph=True)
    records = []
    for num_drafts in NUM_DRAFTS:
        for batch in BATCHES:
            x = make_inputs(catalog, batch, num_drafts, seed=batch, device=device)

            verify_rest = verification_args(x, tables, num_drafts, width)
            draft_rest = draft_args(x, tables, width)
            where = f"{name} B={batch} K={num_drafts}"
            masked = same_as_eager(
                catalog_mask_verification_reference, compiled_verify, x["verify_logits"], verify_rest, where
            )
            every_row_keeps_a_token(masked, where)
            same_as_eager(catalog_mask_draft_reference, compiled_draft, x["draft_logits"], draft_rest, where)
            same_as_eager(
                catalog_mask_verification_reference,
                catalog_mask_verification,
                x["verify_logits"],
                verify_rest,
                where,
                "Triton",
            )
            same_as_eager(
                catalog_mask_draft_reference, catalog_mask_draft, x["draft_logits"], draft_rest, where, "Triton"
            )

            verification = functools.partial(catalog_mask_verification_reference, x["verify_logits"], *verify_rest)

            verification_compiled = functools.partial(compiled_verify, x["verify_logits"], *verify_rest)

            draft = functools.partial(catalog_mask_draft_reference, x["draft_logits"], *draft_rest)

            draft_compiled = functools.partial(compiled_draft, x["draft_logits"], *draft_rest)

            verification_triton = functools.partial(catalog_mask_verification, x["verify_logits"], *verify_rest)

            draft_triton = functools.partial(catalog_mask_draft, x["draft_logits"], *draft_rest)

            verify_ms = time_ms(verification, args.iters, args.repeats, graph=False)
            with torch.inference_mode():
                compiled_ms = time_ms(verification_compiled, args.iters, args.repeats, graph=False)
            verify_graph_ms = time_ms(verification, args.iters, args.repeats, graph=True)
            draft_ms = time_ms(draft, args.iters, args.repeats, graph=True)
            with torch.inference_mode():
                draft_compiled_ms = time_ms(draft_compiled, args.iters, args.repeats, graph=True)
            triton_ms = time_ms(verification_triton, args.iters, args.repeats, graph=False)
            draft_triton_ms = time_ms(draft_triton, args.iters, args.repeats, graph=True)
            record = dict(
                catalog=name,
                items=len(catalog),
                batch=batch,
                num_drafts=num_drafts,
                verification_rows=batch * (num_drafts + 1),
                verification_eager_us=round(1000 * verify_ms, 2),
                verification_compiled_us=round(1000 * compiled_ms, 2),
                verification_graph_us=round(1000 * verify_graph_ms, 2),
                draft_graph_us=round(1000 * draft_ms, 2),
                draft_compiled_graph_us=round(1000 * draft_compiled_ms, 2),
                verification_triton_us=round(1000 * triton_ms, 2),
                draft_triton_graph_us=round(1000 * draft_triton_ms, 2),
            )
            record.update(per_step_from(record))
            records.append(record)
            print(json.dumps(record), flush=True)
    return records


def per_step_from(record: dict) -> dict:
    """The constraint's cost per engine step from one record's timings: K draft steps + the verification,
    compiled, eager (what the plugin runs with ``triton_masks`` off)."""
    k = record["num_drafts"]
    per_step = {
        "per_step_us": round(record["verification_compiled_us"] + k * record["draft_compiled_graph_us"], 2),
        "per_step_eager_us": round(record["verification_eager_us"] + k * record["draft_graph_us"], 2),
    }
    if "verification_triton_us" in record:  # (records from before the kernel have no Triton timings)
        triton_us = record["verification_triton_us"] + k * record["draft_triton_graph_us"]
        per_step["per_step_triton_us"] = round(triton_us, 2)
    return per_step


def render_markdown(payload: dict) -> str:
    lines = [
        "# Catalog masks inside vLLM: cost per engine step",
        "",
        f"{payload['gpu']}, torch {payload['torch']}, {payload['date']}. Lists of {LIST_ITEMS} items, no-repeat on; "
        "B requests with K draft tokens each. `verification`: `mask_verification_logits` on the B·(K+1) target rows: "
        "compiled with `torch.compile(dynamic=True)`, eager (`triton_masks: false`), and the "
        "eager ops replayed from a CUDA graph (reference). `draft`: `mask_draft_logits` on B draft rows, one draft "
        "step, replayed from a CUDA graph (as in vLLM's captured drafting loop), eager and compiled "
        "(a comparison point). `per step` = compiled verification + K compiled draft steps; "
        "`per step, eager` = both eager. `Triton`: the fused kernel (`triton_masks`, kernels/catalog_mask.py, the "
        "plugin's default since 2026-11-22), "
        "verification launched plainly, draft steps replayed from a CUDA graph; every compiled and Triton mask is "
        "checked equal to the eager one first.",
        "",
        "| catalog | items | K | B | verification compiled µs | verification eager µs | verification graph µs "
        "| verification Triton µs | draft step µs | draft step compiled µs | draft step Triton µs | per step µs "
        "| per step, eager µs | per step, Triton µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["records"]:
        lines.append(
            f"| {r['catalog']} | {r['items']} | {r['num_drafts']} | {r['batch']} | "
            f"{r.get('verification_compiled_us', '-')} | {r['verification_eager_us']} | "
            f"{r['verification_graph_us']} | {r.get('verification_triton_us', '-')} | {r['draft_graph_us']} | "
            f"{r.get('draft_compiled_graph_us', '-')} | {r.get('draft_triton_graph_us', '-')} | {r['per_step_us']} | "
            f"{r.get('per_step_eager_us', '-')} | {r.get('per_step_triton_us', '-')} |"
        )
    return "\n".join(lines) + "\n"


def render_plot(payload: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(NUM_DRAFTS), figsize=(5 * len(NUM_DRAFTS), 4), sharey=True)
    for ax, k in zip(axes, NUM_DRAFTS):
        for catalog in sorted({r["catalog"] for r in payload["records"]}):
            rows = [r for r in payload["records"] if r["catalog"] == catalog and r["num_drafts"] == k]
            batches = [r["batch"] for r in rows]
            ax.plot(batches, [r["per_step_us"] for r in rows], marker="o", label=f"{catalog}: per step, compiled masks")
            ax.plot(
                batches,
                [r["per_step_eager_us"] for r in rows],
                ls="--",
                marker=".",
                label=f"{catalog}: per step, eager masks",
            )
            if all("per_step_triton_us" in r for r in rows):
                ax.plot(
                    batches,
                    [r["per_step_triton_us"] for r in rows],
                    ls=":",
                    marker="s",
                    label=f"{catalog}: per step, Triton kernel",
                )
        ax.set(xscale="log", xlabel="requests in the step (B)", title=f"K = {k} draft tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("µs per engine step")
    axes[0].legend(fontsize=8)
    fig.suptitle("vllm-padrec catalog masks inside vLLM")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(payload: dict, out_dir: str) -> None:
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(payload, indent=2))
    (out / MD_NAME).write_text(render_markdown(payload))
    render_plot(payload, str(out / PNG_NAME))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset", default=None, help="dataset folder whose catalog is timed (plus a 1M synthetic one)"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-million", dest="million", action="store_false", help="skip the 1M-item catalog")
    parser.add_argument("--render", default=None, help="redraw Markdown and PNG from this JSON")
    args = parser.parse_args(argv)
    if args.render:
        payload = json.loads(open(args.render).read())
        write_outputs(payload, str(__import__("pathlib").Path(args.render).parent))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_vllm_mask needs a CUDA GPU", file=sys.stderr)
        return 2
    from vllm_padrec.catalog import ItemCatalog
    from vllm_padrec.data import load_dataset

    catalogs = []
    if args.dataset:
        data = load_dataset(args.dataset)
        catalogs.append((data.name, data.catalog))
    if args.million:
        codes = synthetic_codes(1_000_000)
        catalogs.append(("synthetic_1m", ItemCatalog([str(i) for i in range(len(codes))], codes, (256,) * 4)))
    records = []
    for name, catalog in catalogs:
        records += bench(catalog, name, args)
    payload = dict(
        name="vllm_mask",
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        list_items=LIST_ITEMS,
        max_num_reqs=MAX_NUM_REQS,
        records=records,
    )
    write_outputs(payload, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
