"""What PAD-Rec's signals add over an EAGLE head trained the same way, across training seeds (issue 14's 5 % goal).

For each training seed, draft depth γ and variant (``--variants``: ``eagle``, ``padrec``, its ablations and its
per-channel step gate, and ``eagle_one_step``: the EAGLE head trained teacher-forced on one draft step, as the EAGLE
paper trains it, where the others train unrolled over their γ), a head is trained on the target's features
(collected once) with the same budget, and decodes the target's greedy lists of the test users at its γ
(``testing.acceptance_runs.decode_record``; every list must equal plain greedy decoding). Heads of one seed start
from the same fc and decoder layer and see the data in the same order (``DraftTrainConfig.seed``), so each
variant's gain over EAGLE (and over the one-step EAGLE head, where it ran) is read per seed, paired, and the seeds
give its spread: a single pair of heads differs by more than the 5 % the goal asks for (SPEC_DECODE.md section 7).

    python -m benchmarks.bench_signal_ablation --target runs/tiny/checkpoint --dataset synthetic \\
        --variants eagle padrec padrec_channel_gate --gammas 5 8 --seeds 0 1 2 --draft-steps 400 \\
        --preset tiny --device cpu --out benchmarks/results --name synthetic

writes ``signal_ablation_<name>.json`` (machine, settings, one record per head), ``.md`` (acceptance length per
variant and γ over the seeds, the paired gain over EAGLE, the rate by draft step) and ``.png``; ``--render JSON``
redraws them. Training presets: ``tiny`` (``DraftTrainConfig.tiny``: batches of 8, histories of 4 items and
completions of 3, the CPU first looks' recipe) or ``bench`` (the bench heads' recipe of ``gpu_session
bench_drafts``: batches of 64, the target recipe's history and list lengths). Heads are kept under ``--work``
and reused when a finished one is there (the trainer resumes an unfinished one).

A gain is *shown* when the lower end of its 95 % confidence interval over the seeds (Student's t, two-sided: the
paired mean less t(0.975, seeds - 1) standard errors) lies above zero, and *the goal shown* when it lies above
5 %; with fewer than two seeds it is never shown. Three seeds need the mean 4.3 standard errors clear.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from vllm_padrec.testing.acceptance_runs import (
    add_user_arguments,
    decode_record,
    greedy_reference,
    load_users,
    machine_info,
)
from vllm_padrec.testing.results import write_results

STEM = "signal_ablation_{name}"
BUDGET_STEM = "signal_ablation_budget_{name}"  # --budget: several runs that differ in their heads' training steps
BASELINE = "eagle"  # the variant every gain is read against
ONE_STEP = "_one_step"  # a variant's name with it: the same head trained teacher-forced on one draft step
ONE_STEP_BASELINE = BASELINE + ONE_STEP  # EAGLE's head trained so (the EAGLE paper's way); gains read against it too
BASELINES = (BASELINE, ONE_STEP_BASELINE)
GOAL_GAIN = 0.05  # issue 14: PAD-Rec at least 5 % over EAGLE with the same masks and training budget
# Student's t quantile t(0.975, df) for df = 1..10 (standard tables); larger df take the normal's 1.96 (t(0.975,
# 30) is 2.04, so more than 10 seeds read a little generously)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile(df: int) -> float:
    """t(0.975, df): the half-width of a two-sided 95 % interval, in standard errors."""
    return T_975[df - 1] if df <= len(T_975) else 1.96


PRESETS = ("tiny", "bench")


def train_config(preset: str, gamma: int, seed: int, draft_steps: int, recipe):
    """The DraftTrainConfig of one head: ``preset``'s recipe at depth ``gamma`` for ``draft_steps`` steps."""
    from vllm_padrec.training.trainer import DraftTrainConfig

    if preset == "tiny":
        return DraftTrainConfig.tiny(num_draft_steps=gamma, max_steps=draft_steps, seed=seed)
    return DraftTrainConfig(
        num_draft_steps=gamma,
        max_steps=draft_steps,
        batch_size=64,
        max_history=recipe.max_history,
        list_items=recipe.list_items,
        max_stored_gib=24,
        seed=seed,
    )


def head_recipe(variant: str) -> tuple[str, int]:
    """The trainer's method and ``DraftTrainConfig.trained_steps`` of an ablation head: ``<variant>_one_step`` is
    that variant's head whose loss runs one draft step on the target's own features (teacher-forced; a PAD-Rec head
    then trains its step embedding for step 0 alone); every other name is a draft variant trained unrolled over its
    γ (0: every step)."""
    if variant.endswith(ONE_STEP):
        return variant.removesuffix(ONE_STEP), 1
    return variant, 0


def ablation_variants() -> list[str]:
    """The heads ``--variants`` names: every draft variant, unrolled and one step."""
    from vllm_padrec.draft.config import VARIANTS

    return [*VARIANTS, *(variant + ONE_STEP for variant in VARIANTS)]


def paired_gain(values: dict[int, float], baseline: dict[int, float]) -> dict | None:
    """Per-seed relative gains of ``values`` over ``baseline`` (seed -> acceptance length), their mean, standard
    deviation, standard error, the 95 % interval's lower end and the verdicts; None when no seed has both."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    gains = [values[s] / baseline[s] - 1.0 for s in seeds]
    n = len(gains)
    mean = sum(gains) / n
    std = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1)) if n > 1 else None
    stderr = std / math.sqrt(n) if std is not None else None
    low = mean - t_quantile(n - 1) * stderr if stderr is not None else None
    return dict(
        seeds=seeds,
        gains=gains,
        mean=mean,
        std=std,
        stderr=stderr,
        low=low,
        shown=low is not None and low > 0,
        goal_shown=low is not None and low > GOAL_GAIN,
    )


def summarize(records: list[dict]) -> list[dict]:
    """One row per (variant, γ): acceptance length over the seeds and the paired gains over EAGLE and over the
    one-step EAGLE head (``gain_over_<baseline>``: None for the baseline itself or where that baseline did not run)."""
    by_key: dict[tuple[str, int], dict[int, dict]] = {}
    for r in records:
        by_key.setdefault((r["variant"], r["gamma"]), {})[r["seed"]] = r
    rows = []
    for (variant, gamma), by_seed in by_key.items():
        lengths = {seed: r["acceptance_length"] for seed, r in by_seed.items()}
        values = list(lengths.values())
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        steps = [r["acceptance_rate_by_step"] for r in by_seed.values()]
        gains = {}
        for base in BASELINES:
            baseline = {seed: r["acceptance_length"] for seed, r in by_key.get((base, gamma), {}).items()}
            gains[f"gain_over_{base}"] = paired_gain(lengths, baseline) if variant != base else None
        rows.append(
            dict(
                variant=variant,
                gamma=gamma,
                seeds=sorted(lengths),
                acceptance_length=mean,
                acceptance_length_std=std,
                acceptance_lengths=[lengths[s] for s in sorted(lengths)],
                acceptance_rate_by_step=[sum(col) / len(col) for col in zip(*steps)],
                mismatches=sum(r["mismatches"] for r in by_seed.values()),
                **gains,
            )
        )
    return rows


class HeadUnfinished(RuntimeError):
    """A head's training returned before its budget (SIGTERM, SIGINT): the run stops rather than read a head of
    fewer steps beside the others."""


def run(args) -> str:
    """Train every head (or reuse it), decode with it, write the JSON and render it; return the JSON path."""
    from vllm_padrec.training.trainer import feature_source, train_draft

    users = load_users(
        args.target,
        args.dataset,
        split="test",
        users=args.users,
        num_items=args.num_items,
        device=args.device,
        dtype=args.dtype,
    )
    ckpt, data, recipe = users.checkpoint, users.data, users.checkpoint.recipe
    reference, greedy_seconds = greedy_reference(users, batch_size=args.batch_size)
    print(
        f"{len(users.histories)} test users of {data.name}, lists of {users.num_items} items; "
        f"greedy {greedy_seconds:.1f} s"
    )

    work = Path(args.work)
    heads = [(seed, gamma, variant) for seed in args.seeds for gamma in args.gammas for variant in args.variants]
    # the features depend on the preset's history and list lengths, not on the seed or depth: collected once
    source = feature_source(
        ckpt, data, train_config(args.preset, args.gammas[0], 0, args.draft_steps, recipe), users.device
    )
    records = []
    for n, (seed, gamma, variant) in enumerate(heads, 1):
        config = train_config(args.preset, gamma, seed, args.draft_steps, recipe)
        method, trained_steps = head_recipe(variant)
        config = dataclasses.replace(config, trained_steps=trained_steps)
        out = work / f"seed{seed}" / f"gamma{gamma}" / variant
        result = train_draft(method, ckpt, data, config, out, users.device, source=source, progress=args.progress)
        if not result.finished:  # a signal or a time budget stopped it: every head must have the same budget
            raise HeadUnfinished(
                f"{variant} (seed {seed}, γ {gamma}) stopped after {result.steps} of {result.max_steps} steps "
                f"({result.stopped_by}); its state is in {out}: run the same command again to resume"
            )
        draft = _load(result.checkpoint, users.target, args.dtype)
        decoded = decode_record(users, draft, gamma, reference, batch_size=args.batch_size)
        record = dict(
            variant=variant,
            seed=seed,
            draft=os.path.abspath(result.checkpoint),
            training_steps=result.steps,
            loss_draft_steps=config.unrolled_steps(),  # 1: teacher-forced (eagle_one_step); γ: unrolled
            training_seconds=result.elapsed_s,
            final_loss=result.final_loss,
            holdout_accepted_length=(result.evaluation or {}).get("accepted_length"),
            **decoded,
        )
        records.append(record)
        print(
            f"[{n}/{len(heads)}] seed {seed} γ {gamma} {variant}: acceptance length {record['acceptance_length']:.3f}, "
            f"{record['mismatches']} mismatches, trained {result.elapsed_s:.0f} s",
            flush=True,
        )
    settings = dict(
        target=os.path.abspath(args.target),
        dataset=args.dataset,
        users=len(users.histories),
        num_items=users.num_items,
        max_history=users.max_history,
        variants=list(args.variants),
        gammas=list(args.gammas),
        seeds=list(args.seeds),
        preset=args.preset,
        draft_steps=args.draft_steps,
        train_config=train_config(args.preset, args.gammas[0], 0, args.draft_steps, recipe).to_dict(),
    )
    result = dict(
        name=args.name,
        machine=machine_info(users.device, args.dtype),
        settings=settings,
        greedy_wall_seconds=greedy_seconds,
        records=records,
        summary=summarize(records),
    )
    json_path = write_results(args.out, STEM.format(name=args.name), result)["json"]
    render(str(json_path))
    return str(json_path)


def _load(folder: str, target, dtype: str):
    import torch

    from vllm_padrec.draft.checkpoint import load_draft

    return load_draft(folder, target).to(dtype=getattr(torch, dtype)).eval()


# -- rendering ---------------------------------------------------------------------------------------------
def _gain_cell(gain: dict | None) -> str:
    if gain is None:
        return "-"
    verdict = "goal shown" if gain["goal_shown"] else "shown" if gain["shown"] else "not shown"
    if gain["stderr"] is None:
        return f"{100 * gain['mean']:+.1f} % ({verdict}: one seed)"
    return f"{100 * gain['mean']:+.1f} ± {100 * gain['stderr']:.1f} % (≥ {100 * gain['low']:+.1f} %, {verdict})"


def render(json_path: str) -> None:
    """Write the Markdown table (and the PNG if matplotlib is importable) beside the JSON, the JSON's summary
    recomputed from its records by the rules above (so that a JSON written before a rule changed follows it)."""
    data = json.loads(Path(json_path).read_text())
    data["summary"] = summarize(data["records"])
    name, machine, settings, summary = data["name"], data["machine"], data["settings"], data["summary"]
    lines = [
        f"# PAD-Rec's signals against EAGLE, across training seeds: {name}",
        "",
        f"{settings['users']} test users of `{settings['dataset']}`, lists of {settings['num_items']} items; heads "
        f"trained {settings['draft_steps']} steps each (preset `{settings['preset']}`), seeds {settings['seeds']}; "
        f"{machine.get('gpu', machine['device'])}, {machine['dtype']}, torch {machine['torch']}, {machine['date']}.",
        "",
        "Acceptance length: tokens per target verification pass, mean ± standard deviation over the seeds (each "
        "seed's value listed). Gain over EAGLE: the per-seed ratio to the EAGLE head of the same seed and γ, "
        "mean ± standard error (≥ the lower end of its 95 % interval, Student's t over the seeds); *shown* when that "
        f"end lies above 0, *goal shown* when above {100 * GOAL_GAIN:.0f} %. Mismatches: lists that differ from "
        "plain greedy decoding, over every seed (must be 0).",
    ]
    one_step = any(row["variant"] == ONE_STEP_BASELINE for row in summary)  # its column only where it ran
    if one_step:
        lines[-1] += (
            " Gain over one-step EAGLE: the same, against the EAGLE head trained teacher-forced on one draft step."
        )
    lines += [
        "",
        "| variant | γ | acceptance length | per seed | gain over EAGLE |"
        + (" gain over one-step EAGLE |" if one_step else "")
        + " rate by step k = 0.. | mismatches |",
        "|---|---:|---:|---|---|" + ("---|" if one_step else "") + "---|---:|",
    ]
    order = {variant: i for i, variant in enumerate(BASELINES)}
    for row in sorted(summary, key=lambda r: (r["gamma"], order.get(r["variant"], len(order)), r["variant"])):
        std = f" ± {row['acceptance_length_std']:.3f}" if row["acceptance_length_std"] is not None else ""
        seeds = " ".join(f"{v:.3f}" for v in row["acceptance_lengths"])
        steps = " ".join(f"{x:.2f}" for x in row["acceptance_rate_by_step"])
        one_step_cell = f" {_gain_cell(row.get('gain_over_' + ONE_STEP_BASELINE))} |" if one_step else ""
        lines.append(
            f"| {row['variant']} | {row['gamma']} | {row['acceptance_length']:.3f}{std} | {seeds} | "
            f"{_gain_cell(row['gain_over_eagle'])} |{one_step_cell} {steps} | {row['mismatches']} |"
        )
    write_results(
        os.path.dirname(os.path.abspath(json_path)),
        STEM.format(name=name),
        record=data,
        markdown="\n".join(lines) + "\n",
        figure=lambda plt: _plot(plt, data["records"], summary, name),
    )


def _plot(plt, records: list[dict], summary: list[dict], name: str):
    """Left: acceptance length per variant and γ (bars: the mean; dots: the seeds). Right: rate by draft step at
    the largest γ, one line per variant (the mean over seeds)."""
    if not summary:
        return None
    gammas = sorted({r["gamma"] for r in summary})
    variants = list(dict.fromkeys(r["variant"] for r in sorted(summary, key=lambda r: r["variant"] != BASELINE)))
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        for j, gamma in enumerate(gammas):
            row = next((r for r in summary if r["variant"] == variant and r["gamma"] == gamma), None)
            if row is None:
                continue
            x = j + (i - (len(variants) - 1) / 2) * width
            left.bar(
                x, row["acceptance_length"], width, color=colors[variant], alpha=0.6, label=variant if j == 0 else None
            )
            left.plot([x] * len(row["acceptance_lengths"]), row["acceptance_lengths"], "k.", markersize=4)
    left.set_xticks(range(len(gammas)), [f"γ = {g}" for g in gammas])
    lows = [v for r in summary for v in r["acceptance_lengths"]]
    left.set_ylim(max(0.0, min(lows) - 0.3), max(lows) + 0.3)  # room above the bars for the legend
    left.set_ylabel("acceptance length (tokens per target pass)")
    left.set_title("by variant (bars: mean; dots: seeds)")
    left.legend(fontsize=8, loc="upper left", ncol=3)
    left.grid(True, axis="y", alpha=0.3)
    top = gammas[-1]
    for variant in variants:
        row = next((r for r in summary if r["variant"] == variant and r["gamma"] == top), None)
        if row is not None:
            rates = row["acceptance_rate_by_step"]
            right.plot(range(len(rates)), rates, marker="o", color=colors[variant], label=variant)
    right.set_xlabel("draft step k")
    right.set_ylabel("acceptance rate (accepted / proposed)")
    right.set_title(f"by draft step, γ = {top} (mean over seeds)")
    right.set_ylim(0, 1.02)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"PAD-Rec's signals against EAGLE: {name}")
    fig.tight_layout()
    return fig


# -- the training budget: several runs of one target and dataset whose heads trained for different step counts -----
def budget_rows(payloads: list[dict]) -> list[dict]:
    """One row per (variant, γ, training steps) over ablation runs of one target and dataset that differ in their
    heads' steps (``settings.draft_steps``): the acceptance length's mean over that run's seeds, and each seed's."""
    first = payloads[0]["settings"]
    for payload in payloads[1:]:
        other = payload["settings"]
        if (other["target"], other["dataset"]) != (first["target"], first["dataset"]):
            raise ValueError(
                f"--budget compares runs of one target and dataset: {first['target']} on {first['dataset']} "
                f"against {other['target']} on {other['dataset']}"
            )
    steps = [payload["settings"]["draft_steps"] for payload in payloads]
    if len(set(steps)) != len(steps):
        raise ValueError(f"--budget compares runs of different training steps, got steps {steps}")
    rows = [
        dict(
            variant=row["variant"],
            gamma=row["gamma"],
            draft_steps=payload["settings"]["draft_steps"],
            acceptance_length=row["acceptance_length"],
            acceptance_lengths=row["acceptance_lengths"],
        )
        for payload in payloads
        for row in summarize(payload["records"])
    ]
    return sorted(rows, key=lambda r: (r["gamma"], r["variant"], r["draft_steps"]))


def budget_by_head(rows: list[dict]) -> dict[tuple[str, int], dict[int, dict]]:
    """``budget_rows`` by (variant, γ), in their order, each by its training steps: what the table's rows and the
    plot's lines read."""
    heads: dict[tuple[str, int], dict[int, dict]] = {}
    for row in rows:
        heads.setdefault((row["variant"], row["gamma"]), {})[row["draft_steps"]] = row
    return heads


def render_budget(name: str, json_paths: list[str], out: str) -> dict[str, Path]:
    """``signal_ablation_budget_<name>.{json,md,png}`` in ``out``: acceptance length by training steps, per variant
    and γ, from the ablation runs ``json_paths``."""
    payloads = [json.loads(Path(path).read_text()) for path in json_paths]
    rows = budget_rows(payloads)
    steps = sorted({row["draft_steps"] for row in rows})
    settings = payloads[0]["settings"]
    lines = [
        f"# Acceptance length by the heads' training steps: {name}",
        "",
        f"{settings['users']} test users of `{settings['dataset']}`, lists of {settings['num_items']} items, preset "
        f"`{settings['preset']}`; each cell the mean over that run's seeds (their count in brackets). Runs: "
        + ", ".join(f"`{Path(path).name}`" for path in json_paths)
        + ".",
        "",
        "| variant | γ | " + " | ".join(f"{n} steps" for n in steps) + " |",
        "|---|---:|" + "---:|" * len(steps),
    ]
    for (variant, gamma), cells in budget_by_head(rows).items():
        text = [
            f"{cells[n]['acceptance_length']:.3f} ({len(cells[n]['acceptance_lengths'])})" if n in cells else "-"
            for n in steps
        ]
        lines.append(f"| {variant} | {gamma} | " + " | ".join(text) + " |")
    record = dict(name=name, runs=[str(path) for path in json_paths], settings=settings, rows=rows)
    return write_results(
        out,
        BUDGET_STEM.format(name=name),
        record=record,
        markdown="\n".join(lines) + "\n",
        figure=lambda plt: _plot_budget(plt, rows, name),
    )


def _plot_budget(plt, rows: list[dict], name: str):
    """Acceptance length against training steps (log scale), a line per variant and γ measured at two budgets or
    more; dots: the seeds."""
    lines = {head: by_steps for head, by_steps in budget_by_head(rows).items() if len(by_steps) >= 2}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, ((variant, gamma), by_steps) in enumerate(lines.items()):
        mine = list(by_steps.values())  # in steps order: budget_rows sorts by them
        color = f"C{i % 10}"
        xs = [row["draft_steps"] for row in mine]
        ax.plot(xs, [row["acceptance_length"] for row in mine], marker="o", color=color, label=f"{variant}, γ {gamma}")
        for row in mine:
            ax.plot([row["draft_steps"]] * len(row["acceptance_lengths"]), row["acceptance_lengths"], ".", color=color)
    ax.set_xscale("log", base=2)
    measured = sorted({row["draft_steps"] for row in rows})
    ax.set_xticks(measured, [str(n) for n in measured])
    ax.set_xlabel("training steps per head")
    ax.set_ylabel("acceptance length (tokens per target pass)")
    ax.set_title(f"acceptance by training budget: {name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_user_arguments(parser, users=200)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[BASELINE, "padrec", "padrec_channel_gate"],
        choices=ablation_variants(),
        help=f"heads to train per seed and depth; <variant>{ONE_STEP}: trained teacher-forced on one draft step "
        f"(gains are read against {BASELINE!r}, which must be among them, and against {ONE_STEP_BASELINE!r} where it "
        "runs)",
    )
    parser.add_argument("--gammas", type=int, nargs="+", default=[5], help="draft depths: each head drafts its γ")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (init and data order)")
    parser.add_argument("--draft-steps", type=int, default=400, help="optimizer steps per head (the same budget)")
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="training recipe (module docstring)")
    parser.add_argument("--work", default="runs/signal_ablation", help="where the heads are trained (and reused)")
    parser.add_argument("--progress", action="store_true", help="progress bars for each training")
    parser.add_argument("--name", default="synthetic", help="results are signal_ablation_<name>.{json,md,png}")
    parser.add_argument("--render", metavar="JSON", help="only rebuild the table and plot from this JSON")
    parser.add_argument(
        "--budget",
        nargs="+",
        metavar=("NAME", "JSON"),
        help="only compare finished runs of one target and dataset whose heads trained different step counts: "
        "signal_ablation_budget_NAME.{json,md,png} in --out, acceptance length by training steps",
    )
    args = parser.parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    if args.budget:
        if len(args.budget) < 3:
            parser.error("--budget NAME JSON JSON...: a name and at least two runs")
        try:
            written = render_budget(args.budget[0], args.budget[1:], args.out)
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"--budget: {error}")
        print(written["json"])
        return 0
    if not (args.target and args.dataset):
        parser.error("--target and --dataset are required (or --render JSON)")
    if BASELINE not in args.variants:
        parser.error(f"--variants must include {BASELINE!r}: every gain is read against it")
    if min(args.gammas) < 1 or args.draft_steps < 1 or args.users < 1:
        parser.error("--gammas, --draft-steps and --users must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    try:
        print(run(args))
    except HeadUnfinished as stopped:
        print(f"bench_signal_ablation stopped: {stopped}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
