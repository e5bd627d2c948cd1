"""``benchmarks/RESULTS.md``: the committed results, per dataset, as tables users can read (issue 15).

For each dataset of ``DATASETS``, from ``benchmarks/results/``:

- list generation (``spec_decode_<dataset>.json``, ``bench_spec_decode``): the goals' verdicts, then tokens per
  second, speedup over no speculation (paired where the run alternated a baseline engine's calls with the
  draft's), acceptance length, latency, equality and Recall/NDCG@10, for each method, gamma, batch size and list
  length; a record an earlier run measured says its date; under it, the bench target's own Recall/NDCG@10 over
  every test user (``target_<name>.json``, ``bench_eval``), and after the dataset's tables its list-generation runs
  of other settings (``spec_decode_<dataset>_*.json``: deeper heads, graphs that hold the prompts), each with its
  provenance, rows and plot;
- top-K (``topk_<dataset>.json``, ``bench_topk``): the goals' verdicts, then per mode (and head), for each K the
  latency one request at a time, users per second at the run's concurrency, Recall/NDCG@K of the pass over the
  most users, and the float32 equality with the reference;

the catalog at scale (``catalog_scale.json``, ``bench_catalog_scale``; ``catalog_scale_memory.json`` of its
``--memory-only`` run until there is a GPU run) and two GPUs (``tp2.json``) where they
exist. Each table says when and how it was measured: the run's date and device, and its command (the one the
payload records: ``bench_driver.command_line``; which benchmark, for payloads that predate it). A result not
measured yet is named as such, with the issue that measures it. Plots are linked where their PNG is
committed.

    python -m benchmarks.results_page                    # writes benchmarks/RESULTS.md
    python -m benchmarks.results_page --check            # exit 1 when RESULTS.md is not what the results give
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vllm_padrec.integration.gamma_schedule import OFFLINE
from vllm_padrec.testing.bench_driver import cell as bench_cell
from vllm_padrec.testing.bench_driver import earlier_mark
from vllm_padrec.testing.goals import goals_table
from vllm_padrec.testing.results import target_quality_stem
from vllm_padrec.testing.spec_decode_goals import mode_mark, mode_of, paired_mark, speedup

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = Path(__file__).resolve().parent / "RESULTS.md"
DATASETS = ("beauty_atspeed", "games_atspeed", "instruments_lcrec")
# what made a payload that predates recorded commands (``bench_driver.command_line``)
UNRECORDED = {
    "spec_decode": "`benchmarks/bench_spec_decode.py` (its command not recorded in this payload)",
    "topk": "`benchmarks/bench_topk.py` through `gpu_session.py`'s `bench_topk` jobs (its command not recorded in "
    "this payload)",
}


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def cell(value, digits: int = 2) -> str:
    """``bench_driver.cell`` with floats to ``digits`` places and booleans as yes / no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return bench_cell(f"{value:,.{digits}f}" if isinstance(value, float) else value)


def provenance(payload: dict, kind: str) -> str:
    command = f"`{payload['command']}`" if payload.get("command") else UNRECORDED[kind]
    what = ", ".join(str(payload[key]) for key in ("device", "dtype") if payload.get(key))
    return f"Measured {payload.get('date', '(no date)')}" + (f" on {what}" if what else "") + f" by {command}."


def plot(results: Path, name: str, page: Path) -> list[str]:
    png = results / f"{name}.png"
    if not png.exists():
        return []
    return [f"![{name}]({png.relative_to(page.parent).as_posix()})", ""]


def spec_decode_section(payload: dict) -> list[str]:
    lines = [provenance(payload, "spec_decode"), "", *payload_goals(payload)]
    lines += [
        "Speedup: tokens/s over no speculation's, paired (the draft's calls alternating with a baseline engine's) "
        "where the run measured it so, else over the run's own no-speculation engine.",
        "",
    ]
    return lines + spec_decode_records(payload)


def target_quality(results: Path, dataset: str) -> list[str]:
    """The bench target's own Recall/NDCG@10 over every test user (``target_<name>.json``, the ``bench_eval``
    job's), beside the list tables' figures over a pass's few users; nothing where it was not evaluated."""
    name = target_quality_stem(dataset)
    quality = load(results, name)
    if quality is None or quality.get("greedy_recall@10") is None:
        return []
    return [
        f"Recall@10 and NDCG@10 above are over each pass's users (50 or 100 one at a time: mostly no hit at all). "
        f"The target's own greedy lists over all {quality['users']:,} {quality.get('split', 'test')} users: "
        f"Recall@10 {cell(quality['greedy_recall@10'], 4)}, NDCG@10 {cell(quality['greedy_ndcg@10'], 4)} "
        f"(`results/{name}.json`).",
        "",
    ]


# in the results names of the small target's runs (gpu_session's ``Settings.suffix``, pinned to it by a test: a
# benchmark imports no other benchmark), which are checks of the code, not the product's results
SMALL_TARGET_SUFFIX = "_small"


def further_spec_decode_runs(results: Path, dataset: str, page: Path) -> list[str]:
    """The dataset's list-generation runs of other settings on the bench target (``spec_decode_<dataset>_*.json``:
    deeper heads, graphs that hold the prompts, a recipe run again; not the small target's), each with its
    provenance, the goals it measured, its records and its plot."""
    small = f"spec_decode_{dataset}{SMALL_TARGET_SUFFIX}"  # the small target's runs: checks, not the product's results
    names = sorted(
        path.stem for path in results.glob(f"spec_decode_{dataset}_*.json") if not path.stem.startswith(small)
    )
    if not names:
        return []
    lines = [
        "### Further list-generation runs",
        "",
        "Runs of other settings than the table above, each in its own file (its Markdown beside it says why it ran "
        "and what it shows); the goals' verdicts above read the file above, each run's below read its own records.",
        "",
    ]
    for name in names:
        payload = load(results, name)
        lines += [f"#### `{name}`", "", provenance(payload, "spec_decode"), ""]
        lines += [f"Note: {payload['note']}", ""] if payload.get("note") else []
        measured = [goal for goal in payload.get("goals") or () if goal["met"] is not None]
        lines += goals_table(measured) if measured else []
        lines += spec_decode_records(payload) + plot(results, name, page)
    return lines


def spec_decode_records(payload: dict) -> list[str]:
    """A list-generation payload's records, one row each: the offline ones, then those measured through
    ``vllm serve`` (their method marked ``, serve``; their speedup over no speculation served alike)."""
    lines = [
        "| method | gamma | batch size | list length | tokens/s | speedup | acceptance length | p50 ms "
        "| equal to none | Recall@10 | NDCG@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    key = lambda r: (mode_of(r) != OFFLINE, r["list_len"], r["batch_size"], r["method"], r["gamma"] or 0)  # noqa: E731
    for r in sorted(payload["records"], key=key):
        equal = f"{r['equal_to_no_spec']} / {r['users_compared']}" if r.get("equal_to_no_spec") is not None else "-"
        lines.append(
            f"| {r['method']}{mode_mark(r)}{earlier_mark(r)} | {cell(r['gamma'])} | {r['batch_size']} | "
            f"{r['list_len']} | "
            f"{cell(r.get('tokens_per_s'), 0)} | {cell(speedup(r))}{paired_mark(r)} | "
            f"{cell(r.get('acceptance_length'))} | {cell(r.get('p50_ms'), 1)} | {equal} | "
            f"{cell(r.get('recall_at_10'), 4)} | {cell(r.get('ndcg_at_10'), 4)} |"
        )
    return lines + [""]


def topk_label(record: dict) -> str:
    label = record["mode"]
    if record.get("objective"):
        label += f" ({record['objective']}, N = {record['draft_beams']}, gamma {record['gamma']})"
    if record.get("engine_core") == "own_process":
        label += " (own process)"
    if record.get("measured_on"):  # a record of an earlier run, merged into this one (``bench_topk --merge``)
        label += f" (measured {record['measured_on'][:10]})"
    return label


def payload_goals(payload: dict) -> list[str]:
    """The payload's goal verdicts as a table; no lines for a payload without them."""
    goals = payload.get("goals")
    return goals_table(goals) if goals else []


def topk_section(payload: dict) -> list[str]:
    concurrency = payload.get("concurrency")
    lines = [provenance(payload, "topk"), ""]
    lines += payload_goals(payload)
    rows: dict[tuple[str, int], dict] = {}
    for r in payload["records"]:
        row = rows.setdefault((topk_label(r), r["k"]), {})
        if r["dtype"] == "float32" and r.get("equal_to_reference") is not None:
            row["equal"] = f"{r['equal_to_reference']} / {r['users_compared']}"
        elif r["dtype"] != "float32" and r["batch_size"] == 1:
            row["p50"] = r.get("p50_ms")
        elif r["dtype"] != "float32" and r["batch_size"] == concurrency:
            row["users_per_s"] = r.get("users_per_s")
        # Recall and NDCG of the record over the most users (the float32 pass's, where the mode ran one)
        if r.get("recall_at_k") is not None and r.get("users", 0) > row.get("quality_users", 0):
            row["recall"], row["ndcg"], row["quality_users"] = r["recall_at_k"], r["ndcg_at_k"], r["users"]
    lines += [
        f"| mode | K | p50 ms, 1 request | users/s, {concurrency} at once | Recall@K | NDCG@K | users (quality) | "
        "float32 equal to the reference |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (label, k), row in sorted(rows.items(), key=lambda item: (item[0][0], item[0][1])):
        lines.append(
            f"| {label} | {k} | {cell(row.get('p50'), 1)} | {cell(row.get('users_per_s'), 1)} | "
            f"{cell(row.get('recall'), 4)} | {cell(row.get('ndcg'), 4)} | {cell(row.get('quality_users'))} | "
            f"{row.get('equal', '-')} |"
        )
    return lines + [""]


def tp2_section(payload: dict) -> list[str]:
    lines = [
        f"Measured {payload.get('date', '(no date)')}: `{payload.get('command', 'gpu_session.py (issue 15)')}`",
        "",
    ]
    lines += payload_goals(payload)
    lines += [
        "| workload | method | tensor parallel size | dtype | batch size | tokens/s | users/s | equal to one GPU |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in payload["records"]:
        equal = "-" if r.get("users_compared") is None else f"{r['equal_to_single_gpu']} / {r['users_compared']}"
        lines.append(
            f"| {r.get('workload', '-')} | {r['method']} | {r['tensor_parallel_size']} | {r.get('dtype', '-')} | "
            f"{r['batch_size']} | {cell(r.get('tokens_per_s'), 0)} | {cell(r.get('users_per_s'), 1)} | {equal} |"
        )
    return lines + [""]


def scale_section(payload: dict) -> list[str]:
    """``catalog_scale.json`` (``bench_catalog_scale``): memory per item and the masks' cost per engine step at
    each catalog size, and what one GPU holds."""
    name = payload.get("name", "catalog_scale")
    lines = [
        f"Measured {payload.get('date', '(no date)')} on {payload.get('gpu', '(no device)')} by "
        f"`{payload.get('command', 'benchmarks/bench_catalog_scale.py')}`; the full tables in "
        f"`results/{name}.md`.",
        *(
            []
            if payload["masks"]
            else ["", "Memory only (`--memory-only`): the masks' cost per step is not measured yet."]
        ),
        "",
        "| items | device bytes / item | host bytes / item | lists, B = 64, 5 drafts: µs per step "
        "| top-K, 64 users x 20 beams: µs per step |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in payload["catalogs"]:
        step = {
            (m["kind"], m["batch"], m.get("beams")): m["per_step_us"]
            for m in payload["masks"]
            if m["items"] == c["items"]
        }
        lines.append(
            f"| {c['items']:,} | {cell(c['device_bytes_per_item'], 1)} | {cell(c.get('host_bytes_per_item'), 1)} | "
            f"{cell(step.get(('list', 64, None)), 1)} | {cell(step.get(('topk', 64, 20)), 1)} |"
        )
    cap = payload["capacity"]
    lines += [
        "",
        f"{cap['items_per_gib']:,} items per GiB of catalog tables; {cap['largest_items_in_budget']:,} items fit "
        f"{cap['budget_gib']:g} GiB"
        + ("" if cap["device_gib"] is None else f" of the {cap['device_gib']:g} GiB device")
        + f" (by the {cap.get('bound', 'build peak')} per item).",
        "",
    ]
    return lines


def page(results: Path = RESULTS, path: Path = PAGE) -> str:
    lines = [
        "# vllm-padrec results",
        "",
        "Generated by `python -m benchmarks.results_page` from the JSON in `benchmarks/results/`; every table "
        "says when and by which command it was measured. Ratios compare runs measured side by side in one run.",
        "",
    ]
    for dataset in DATASETS:
        lines += [f"## {dataset}", ""]
        for title, kind, issue, section in (
            ("List generation", "spec_decode", 14, spec_decode_section),
            ("Top-K recommendation", "topk", 13, topk_section),
        ):
            name = f"{kind}_{dataset}"
            payload = load(results, name)
            lines += [f"### {title}", ""]
            if payload is None:
                lines += [f"Not measured yet (issue {issue}, then 15).", ""]
                continue
            lines += section(payload) + plot(results, name, path)
            if kind == "spec_decode":
                lines += target_quality(results, dataset)
        lines += further_spec_decode_runs(results, dataset, path)
    lines += ["## The catalog at scale", ""]
    # the GPU run (memory and mask costs) where there is one, else the memory measured on the CPU
    scale_name = next((n for n in ("catalog_scale", "catalog_scale_memory") if load(results, n)), None)
    scale = load(results, scale_name) if scale_name else None
    lines += scale_section(scale) + plot(results, scale_name, path) if scale else ["Not measured yet (issue 15).", ""]
    lines += ["## Two GPUs (tensor parallelism)", ""]
    tp2 = load(results, "tp2")
    lines += tp2_section(tp2) if tp2 is not None else ["Not measured yet (issue 15).", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is not what the results give")
    args = parser.parse_args(argv)
    text = page(args.results, args.out)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m benchmarks.results_page", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
