"""Acceptance of each draft (PAD-Rec, its ablations, EAGLE, Medusa) under greedy chain speculation.

For the test users of a dataset, every draft decodes the target's greedy list of N items
(N = the target recipe's ``list_items``) with ``decoding.speculative.speculative_lists`` at each γ,
and the output is checked against plain ``greedy_lists`` (``mismatches`` must be 0: speculation is
lossless). Both run on the same device in the same dtype.

    python -m benchmarks.bench_acceptance --target runs/bench/checkpoint \\
        --drafts runs/bench/draft-padrec runs/bench/draft-eagle runs/bench/draft-medusa \\
        --dataset beauty_atspeed --users 500 --gammas 3 4 5 --out benchmarks/results --name beauty

writes ``acceptance_<name>.json`` (machine, settings, one record per draft and γ), ``acceptance_<name>.md``
(tables) and, if matplotlib is importable, ``acceptance_<name>.png`` (acceptance rate by draft step,
one panel per γ, one line per method). To rebuild the table and the plot from the JSON on any machine:

    python -m benchmarks.bench_acceptance --render benchmarks/results/acceptance_beauty.json

A draft folder is a vLLM draft checkpoint (``config.json`` + ``model.safetensors``) or a training
output folder holding one under ``draft/``. The method name comes from the draft's config: "medusa",
or the PAD-Rec variant (a name of ``draft.config.VARIANTS``: "padrec", its ablations, "eagle").

Metrics (``SpeculationStats``): acceptance length = tokens emitted per target verification pass,
(accepted drafts + 1) averaged over draft rounds; acceptance rate at step k = accepted / proposed
drafts at step k (vLLM's per-position rate); conditional rate at step k = accepted / reached (every
earlier draft accepted); per-slot rate = accepted / reached by the slot of the drafted token.
Wall seconds time this plain-torch reference (one HF forward per draft step), not vLLM: they are
reported for completeness, speedups belong to the vLLM benchmarks.

With ``--skip-forced-drafts`` every head also decodes with the draft steps whose draft the constraint forces
left out (``speculative_lists(skip_forced_drafts=True)``: no head forward for them, the last feature standing
in), as records named ``<method> (forced steps skipped)`` with the share of draft steps left out
(``skipped_step_share``): what issue 14's lever would save, and what acceptance it would cost. With
``--forced-tail E`` every draft also decodes with E draft slots after its γ filled from the constraint alone
(``speculative_lists(forced_tail=E)``, no forward), as records named ``<method> (forced tail E)``: the tokens a
round gains for E more verified positions, at the head's own draft forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vllm_padrec.testing.acceptance_runs import (
    add_user_arguments,
    decode_record,
    greedy_reference,
    load_users,
    machine_info,
)
from vllm_padrec.testing.drafts import draft_folder, draft_method, draft_steps, training_result
from vllm_padrec.testing.results import write_results

STEM = "acceptance_{name}"  # acceptance_<name>.json, .md and .png
SKIPPED_LABEL = " (forced steps skipped)"  # a record decoded with skip_forced_drafts
TAIL_LABEL = " (forced tail {})"  # a record decoded with forced_tail


def variants(method: str, skip_forced_drafts: bool, forced_tail: int) -> list[tuple[bool, int]]:
    """(skip_forced_drafts, forced_tail) of each decoding of a draft: as it is, then each lever asked for (Medusa
    runs every head in step 0: no forced step of its to leave out)."""
    runs = [(False, 0)]
    if skip_forced_drafts and method != "medusa":
        runs.append((True, 0))
    if forced_tail:
        runs.append((False, forced_tail))
    return runs


def training_budget(folder: str) -> dict:
    """What the trainer's result.json beside the draft folder says: optimizer steps and held-out
    teacher-forced acceptance (empty when the draft was not written by ``train_draft``)."""
    result = training_result(folder)
    if not result:
        return {}
    evaluation = result.get("evaluation") or {}
    return dict(training_steps=result.get("steps"), holdout_accepted_length=evaluation.get("accepted_length"))


def run(args) -> str:
    """Decode with every draft and γ, write the JSON, then render it; return the JSON path."""
    import torch

    from vllm_padrec.draft.checkpoint import load_draft, read_config

    users = load_users(
        args.target,
        args.dataset,
        split=args.split,
        users=args.users,
        num_items=args.num_items,
        device=args.device,
        dtype=args.dtype,
    )
    dtype = getattr(torch, args.dtype)
    print(
        f"{len(users.histories)} {args.split} users of {users.data.name}, lists of {users.num_items} items, "
        f"{users.device} {args.dtype}",
        flush=True,
    )

    reference, greedy_seconds = greedy_reference(users, batch_size=args.batch_size)
    print(f"plain greedy: {greedy_seconds:.1f} s", flush=True)

    records, names = [], set()
    for spec in args.drafts:
        label, _, path = spec.rpartition("=")  # "NAME=PATH" names the record; a bare PATH uses the method
        folder = draft_folder(path)
        config = read_config(folder)
        method = draft_method(config)
        name = label or method
        if name in names:
            name = f"{name}@{os.path.basename(os.path.normpath(path))}"
        names.add(name)
        draft = load_draft(folder, users.target).to(dtype=dtype).eval()
        decodings = variants(method, args.skip_forced_drafts, args.forced_tail)
        for gamma, (skip, tail) in ((g, v) for g in args.gammas for v in decodings):
            if method == "medusa" and gamma > draft.config.num_heads:
                print(f"{name}: skipping gamma={gamma} (only {draft.config.num_heads} Medusa heads)", flush=True)
                continue
            decoded = decode_record(
                users,
                draft,
                gamma,
                reference,
                batch_size=args.batch_size,
                skip_forced_drafts=skip,
                forced_tail=tail,
            )
            record = dict(
                method=name + (SKIPPED_LABEL if skip else "") + (TAIL_LABEL.format(tail) if tail else ""),
                draft=os.path.abspath(folder),
                trained_draft_steps=draft_steps(config),  # γ the head was trained for
                **training_budget(folder),
                **decoded,
                greedy_wall_seconds=greedy_seconds,
            )
            records.append(record)
            print(_format_row(record), flush=True)
            if record["mismatches"]:
                print(f"WARNING: {name} γ={gamma}: {record['mismatches']} lists differ from plain greedy", flush=True)

    settings = dict(
        target=os.path.abspath(args.target),
        dataset=args.dataset,
        split=args.split,
        users=len(users.histories),
        num_items=users.num_items,
        max_history=users.max_history,
        gammas=list(args.gammas),
        batch_size=args.batch_size,
        num_slots=users.catalog.num_slots,
    )
    result = dict(
        name=args.name,
        machine=machine_info(users.device, args.dtype),
        settings=settings,
        greedy_wall_seconds=greedy_seconds,
        records=records,
    )
    json_path = write_results(args.out, STEM.format(name=args.name), result)["json"]
    render(str(json_path))
    return str(json_path)


# -- rendering ---------------------------------------------------------------------------------------------
def _format_row(r: dict) -> str:
    from vllm_padrec.decoding.speculative import SpeculationStats

    steps = " ".join(f"{x:.2f}" for x in r["acceptance_rate_by_step"])
    vllm_length = SpeculationStats.from_dict(r["stats"]).vllm_acceptance_length  # (older records lack the key)
    share = r.get("skipped_step_share")  # (older records: no steps left out)
    left_out = f"{100 * share:.1f} %" if share else "-"
    return (
        f"| {r['method']} | {r['gamma']} | {r['acceptance_length']:.3f} | "
        f"{vllm_length:.3f} | {r['draft_acceptance_rate']:.3f} | "
        f"{steps} | {left_out} | {r['mismatches']} | {r['users']} | {r['wall_seconds']:.1f} |"
    )


def _slot_row(r: dict) -> str:
    stats = r["stats"]
    cells = []
    for name, rate in r["acceptance_by_slot"].items():
        index = list(r["acceptance_by_slot"]).index(name)
        reached = stats["reached_by_slot"][index]
        cells.append(f"{rate:.3f} ({reached})" if reached else "-")
    return f"| {r['method']} | {r['gamma']} | " + " | ".join(cells) + " |"


def render(json_path: str) -> None:
    """Write the Markdown tables (and the PNG plot if matplotlib is importable) beside the JSON."""
    with open(json_path) as f:
        data = json.load(f)
    name, machine, settings, records = data["name"], data["machine"], data["settings"], data["records"]
    out_dir = os.path.dirname(os.path.abspath(json_path))
    slot_names = list(records[0]["acceptance_by_slot"]) if records else []
    lines = [
        f"# Draft acceptance under greedy chain speculation: {name}",
        "",
        f"{settings['users']} {settings['split']} users of `{settings['dataset']}`, lists of {settings['num_items']} "
        f"items, histories of at most {settings['max_history']} items; {machine.get('gpu', machine['device'])}, "
        f"{machine['dtype']}, torch {machine['torch']}, transformers {machine['transformers']}, {machine['date']}.",
        "",
        "Acceptance length: tokens per target verification pass, (accepted drafts + 1) averaged over draft "
        "rounds. vLLM's length: 1 + accepted / rounds, as `vllm:spec_decode_*` counts it (a round whose "
        "drafts closed the list counts its bonus token too). "
        "Rate by step k: accepted / proposed drafts at step k. Steps left out: draft steps k >= 1 "
        "whose forced draft ran no head forward (`--skip-forced-drafts`). A forced tail (`--forced-tail E`): E "
        "draft slots after the γ the head drafts, filled from the catalog alone (steps γ.. in the rates). "
        "Mismatches: lists that differ from "
        "plain greedy decoding (must be 0). Seconds: this plain-torch reference decoder "
        f"(plain greedy: {data['greedy_wall_seconds']:.1f} s), not vLLM.",
        "",
        "| method | γ | acceptance length | vLLM's length | draft acceptance | rate by step k = 0.. | steps left out "
        "| mismatches | users | seconds |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    lines += [_format_row(r) for r in records]
    lines += [
        "",
        "Acceptance by item slot of the drafted token: accepted / reached (drafts whose earlier drafts in the "
        "round were all accepted; count in parentheses).",
        "",
        "| method | γ | " + " | ".join(slot_names) + " |",
        "|---|---:|" + "---:|" * len(slot_names),
    ]
    lines += [_slot_row(r) for r in records]
    markdown = "\n".join(lines) + "\n"
    write_results(out_dir, STEM.format(name=name), markdown=markdown, figure=lambda plt: _plot(plt, records, name))


def _plot(plt, records: list[dict], name: str):
    """Acceptance rate by draft step, one panel per γ, one line per method (None: no record)."""
    gammas = sorted({r["gamma"] for r in records})
    if not gammas:
        return None
    methods = list(dict.fromkeys(r["method"] for r in records))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(gammas), figsize=(4.5 * len(gammas), 4), squeeze=False, sharey=True)
    for ax, gamma in zip(axes[0], gammas):
        for r in (r for r in records if r["gamma"] == gamma):
            rates = r["acceptance_rate_by_step"]
            ax.plot(
                range(len(rates)),
                rates,
                marker="o",
                color=colors[r["method"]],
                label=f"{r['method']} ({r['acceptance_length']:.2f})",
            )
        ax.set_xticks(range(max(len(r["acceptance_rate_by_step"]) for r in records if r["gamma"] == gamma)))
        ax.set_xlabel("draft step k")
        ax.set_title(f"γ = {gamma}")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(title="method (acceptance length)", fontsize=8)
    axes[0][0].set_ylabel("acceptance rate (accepted / proposed)")
    fig.suptitle(f"Draft acceptance by step: {name}")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_user_arguments(parser, users=500)
    parser.add_argument(
        "--drafts",
        nargs="+",
        default=[],
        help="draft checkpoint folders (or training outputs); NAME=FOLDER names the record",
    )
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--gammas", type=int, nargs="+", default=[3, 4, 5], help="draft tokens per round")
    parser.add_argument(
        "--skip-forced-drafts",
        action="store_true",
        help="also decode each head with the draft steps whose draft the catalog forces left out (issue 14's "
        "catalog lever: the share of steps left out and the acceptance that remains)",
    )
    parser.add_argument(
        "--forced-tail",
        type=int,
        default=0,
        metavar="E",
        help="also decode each draft with E draft slots after its gamma filled from the catalog alone (issue 14's "
        "other catalog lever; default 0: not measured)",
    )
    parser.add_argument("--name", default="synthetic", help="results are acceptance_<name>.{json,md,png}")
    parser.add_argument("--render", metavar="JSON", help="only rebuild the table and plot from this JSON")
    args = parser.parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    if not (args.target and args.drafts and args.dataset):
        parser.error("--target, --drafts and --dataset are required (or --render JSON)")
    if args.forced_tail < 0:
        parser.error(f"--forced-tail must be >= 0, got {args.forced_tail}")
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
