"""Top-K with AtSpeed drafts, strict and relaxed: target passes per request with drafted beams, plain torch.

For the test users of a dataset, every draft finds each user's K best items with
``decoding.drafted_topk``: the target's prefill, then rounds of the head's constrained beam search
(``--draft-beams`` N beams, ``--gamma`` steps) and verification, one target pass per round, under each rule
of ``--rules``:

- strict (``speculative_topk``): the answer must be the target's own beam search (``plain_topk`` through
  the same scorer), so ``mismatches`` (users whose K beams differ) must be 0; the draft decides only how
  many target passes a request takes;
- relaxed (``relaxed_topk``, seeded): lossy by design; ``mismatches`` counts the users whose items differ
  from the beam search's, and Recall@K / NDCG@K say what that costs, beside the beam search's own.

Without a draft a request takes L target passes, one per code.

    python -m benchmarks.bench_atspeed --target runs/bench/checkpoint --dataset beauty_atspeed \\
        --drafts distill=runs/atspeed/distill atspeed_s=runs/atspeed/atspeed_s atspeed_r=runs/atspeed/atspeed_r \\
        --ks 1 5 10 20 --draft-beams 40 --gamma 3 --users 200 --out benchmarks/results --name beauty

writes ``atspeed_<name>.json`` (machine, settings, one record per draft and K), ``.md`` (the table) and
``.png`` (target passes per request by K, one line per draft, and L for no draft). Every head's strict rows come
before any relaxed one, and the JSON is rewritten after each record, so a run cut short keeps what it measured.
Run it in float32: in bfloat16 the drafted and the plain beam search score the same sequences in batches of other
shapes, and near-tied beams swap (3 to 87 of 100 users at K = 1 to 20 on the H200, 2026-12-02).

A draft folder is a draft checkpoint or a training output folder holding one under ``draft/``; its objective
(``distill``, ``atspeed_s``, ``atspeed_r``) is read from the trainer's ``result.json`` beside it when there is one.

Metrics per draft, rule and K: ``mean_accepted_per_round`` (accepted steps: strict's, or relaxed's complete
steps), their histogram, ``target_passes_per_request`` (the prefill plus one pass per round; L without a
draft), ``pass_reduction`` = L / target passes, ``recall_at_k`` / ``ndcg_at_k`` of the answers and
``plain_recall_at_k`` / ``plain_ndcg_at_k`` of the beam search's, on the users' test items. This times the
plain-torch reference, which scores every sequence from scratch: its seconds are reported, speedups belong
to the vLLM benchmark (``bench_topk``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter

from vllm_padrec.testing.drafts import draft_folder, training_result
from vllm_padrec.testing.results import write_results

STEM = "atspeed_{name}"


def trained_objective(folder: str) -> dict:
    """The trainer's record beside a draft folder: its objective, top-K and steps (empty without one)."""
    result = training_result(folder)
    if not result:
        return {}
    return {
        "objective": result.get("objective", "distill"),
        "topk": result.get("topk"),
        "training_steps": result.get("steps"),
    }


RULES = ("strict", "relaxed")


def measure(
    target,
    heads: dict,
    catalog,
    samples,
    ks,
    draft_beams: int,
    gamma: int,
    max_history: int,
    rules=RULES,
    seed: int = 0,
    progress=True,
    measured=None,
):
    """One record per draft, rule and K (module docstring); ``heads`` maps a record name to a PAD-Rec head,
    ``samples`` are ``EvalSample``s (history, test items); ``measured(records)``, when given, is called with
    the records so far after each one (a run cut short keeps them)."""
    import torch
    from tqdm.auto import tqdm

    from vllm_padrec.decoding.drafted_topk import TreeScorer, plain_topk, relaxed_topk, speculative_topk
    from vllm_padrec.target.evaluate import recall_ndcg

    L = catalog.num_slots
    device = next(target.parameters()).device
    records = []
    for rule in rules:  # strict first: every head's exact rounds before any relaxed ones
        for name, head in heads.items():
            for k in ks:
                n = max(draft_beams, k)
                accepted, passes, mismatches, answers, plains = Counter(), [], 0, [], []
                # relaxed draws on the target's device, where the scorer's probabilities live
                generator = torch.Generator(device=device).manual_seed(seed)
                started = time.perf_counter()
                for sample in tqdm(samples, desc=f"{name} {rule} K={k}", disable=not progress):
                    scorer = TreeScorer(target, head, catalog, catalog.render_prompt(sample.history, max_history))
                    if rule == "strict":
                        drafted = speculative_topk(scorer, k, L, n, gamma)
                    else:
                        drafted = relaxed_topk(scorer, k, L, n, gamma, generator)
                    plain = plain_topk(scorer, k, L)
                    mismatches += drafted.beams.sequences != plain.sequences
                    accepted.update(drafted.accepted)
                    passes.append(drafted.target_passes)
                    answers.append(catalog.items_of_tokens([list(s) for s in drafted.beams.sequences]))
                    plains.append(catalog.items_of_tokens([list(s) for s in plain.sequences]))
                targets = [s.targets for s in samples]
                quality = recall_ndcg([[-1 if i is None else i for i in a] for a in answers], targets, k)
                plain_quality = recall_ndcg([[-1 if i is None else i for i in a] for a in plains], targets, k)
                records.append(
                    record(name, rule, k, n, gamma, samples, accepted, passes, mismatches, L, started)
                    | {
                        "recall_at_k": quality[f"recall@{k}"],
                        "ndcg_at_k": quality[f"ndcg@{k}"],
                        "plain_recall_at_k": plain_quality[f"recall@{k}"],
                        "plain_ndcg_at_k": plain_quality[f"ndcg@{k}"],
                    }
                )
                print(row(records[-1]), flush=True)
                if measured is not None:
                    measured(records)
    return records


def record(name, rule, k, n, gamma, samples, accepted, passes, mismatches, L, started) -> dict:
    rounds = sum(accepted.values())
    mean_passes = sum(passes) / len(passes)
    return dict(
        draft=name,
        rule=rule,
        k=k,
        draft_beams=n,
        gamma=gamma,
        users=len(samples),
        mean_accepted_per_round=sum(a * c for a, c in accepted.items()) / rounds if rounds else 0.0,
        accepted_histogram={str(a): accepted[a] for a in sorted(accepted)},
        target_passes_per_request=mean_passes,
        plain_target_passes=L,
        pass_reduction=L / mean_passes,
        mismatches=mismatches,
        seconds=round(time.perf_counter() - started, 1),
    )


def row(r: dict) -> str:
    return (
        f"| {r['draft']} | {r.get('objective', '-')} | {r['rule']} | {r['k']} | {r['draft_beams']} | {r['gamma']} | "
        f"{r['mean_accepted_per_round']:.3f} | {r['target_passes_per_request']:.3f} | {r['pass_reduction']:.2f}x | "
        f"{r['recall_at_k']:.4f} ({r['plain_recall_at_k']:.4f}) | {r['ndcg_at_k']:.4f} ({r['plain_ndcg_at_k']:.4f}) | "
        f"{r['mismatches']} | {r['users']} |"
    )


def markdown(payload: dict) -> str:
    lines = [
        f"# Strict top-K acceptance of AtSpeed drafts ({payload['name']})",
        "",
        f"Target `{payload['settings']['target']}`, {payload['settings']['users']} test users of "
        f"{payload['settings']['dataset']}, items of L = {payload['settings']['num_slots']} codes; "
        f"{payload['machine']}. Without a draft a request takes L target passes. Mismatches: users whose K "
        "beams differ from the target's own beam search (0 when strict verification holds; relaxed is lossy). "
        "Recall and NDCG: of the answers, the beam search's in brackets.",
        "",
        "| draft | objective | rule | K | draft beams | gamma | accepted per round | target passes per request "
        "| reduction | Recall@K | NDCG@K | mismatches | users |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row(r) for r in payload["records"]]
    return "\n".join(lines) + "\n"


def plot(plt, payload: dict):
    records = payload["records"]
    if not records:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, rule in dict.fromkeys((r["draft"], r["rule"]) for r in records):
        points = sorted(
            (r["k"], r["target_passes_per_request"]) for r in records if (r["draft"], r["rule"]) == (name, rule)
        )
        axis.plot(*zip(*points), marker="o", linestyle="-" if rule == "strict" else ":", label=f"{name} ({rule})")
    ks = sorted({r["k"] for r in records})
    axis.plot(ks, [payload["settings"]["num_slots"]] * len(ks), linestyle="--", color="gray", label="no draft (L)")
    axis.set_xlabel("K")
    axis.set_ylabel("target passes per request")
    axis.set_title(f"Top-K with drafted beams ({payload['name']})")
    axis.legend()
    figure.tight_layout()
    return figure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--target", help="the target checkpoint folder")
    add("--drafts", nargs="+", default=[], help="draft folders, each PATH or NAME=PATH")
    add("--dataset", help="the dataset (a name under $PADREC_DATA_DIR or a folder): its test users")
    add("--ks", nargs="+", type=int, default=[1, 5, 10, 20], help="the K of each run (default 1 5 10 20)")
    add("--draft-beams", type=int, default=40, help="N, the draft's beams (at least K; default 40, AtSpeed's)")
    add("--gamma", type=int, default=3, help="draft steps per round (default 3)")
    add("--rules", nargs="+", default=list(RULES), choices=RULES, help="verification rules (default: both)")
    add("--seed", type=int, default=0, help="relaxed sampling's random numbers (default 0)")
    add("--users", type=int, default=200, help="test users (default 200)")
    add("--device", default=None, help="torch device (default cuda when available)")
    add("--dtype", default="float32", choices=("float32", "bfloat16"), help="the models' dtype (default float32)")
    add("--out", default="benchmarks/results", help="folder of the results (default benchmarks/results)")
    add("--name", default="beauty", help="stem: atspeed_<name>.* (default beauty)")
    add("--render", default=None, metavar="JSON", help="only rebuild the Markdown and PNG of a results JSON")
    args = parser.parse_args(argv)
    if not args.render and (args.target is None or args.dataset is None or not args.drafts):
        parser.error("--target, --dataset and --drafts are required (or --render JSON)")
    if min(args.ks) < 1 or args.gamma < 1 or args.draft_beams < 1 or args.users < 1:
        parser.error("--ks, --gamma, --draft-beams and --users must be >= 1")
    return args


def render(json_path: str) -> None:
    payload = json.loads(open(json_path).read())
    stem = os.path.splitext(os.path.basename(json_path))[0]
    write_results(os.path.dirname(json_path), stem, None, markdown(payload), lambda plt: plot(plt, payload))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    import torch

    from vllm_padrec.data import open_dataset
    from vllm_padrec.draft.checkpoint import load_draft
    from vllm_padrec.target.model import load_checkpoint

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    ckpt = load_checkpoint(args.target, device=device, dtype=dtype)
    target, catalog, recipe = ckpt.model.eval(), ckpt.catalog, ckpt.recipe
    data = open_dataset(args.dataset)
    to_ckpt = [catalog.index_of(item_id) for item_id in data.catalog.item_ids]
    samples = [
        dataclasses.replace(s, history=[to_ckpt[i] for i in s.history], targets=[to_ckpt[i] for i in s.targets])
        for s in data.eval_samples("test", recipe.max_history)[: args.users]
    ]
    heads, trained = {}, {}
    for spec in args.drafts:
        label, _, path = spec.rpartition("=")
        folder = draft_folder(path)
        name = label or os.path.basename(os.path.normpath(path))
        heads[name] = load_draft(folder, target).to(device=device, dtype=dtype).eval()
        trained[name] = trained_objective(folder)
    settings = dict(
        target=os.path.abspath(args.target),
        dataset=args.dataset,
        users=len(samples),
        num_slots=catalog.num_slots,
        max_history=recipe.max_history,
    )
    machine = f"{torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, {args.dtype}, "
    machine += time.strftime("%Y-%m-%d")

    def save(records: list[dict]) -> dict:
        """The results so far: every record with its head's training record, in atspeed_<name>.json."""
        records = [r | trained[r["draft"]] for r in records]
        payload = dict(name=args.name, machine=machine, settings=settings, records=records)
        write_results(args.out, STEM.format(name=args.name), payload)
        return payload

    records = measure(
        target,
        heads,
        catalog,
        samples,
        args.ks,
        args.draft_beams,
        args.gamma,
        recipe.max_history,
        args.rules,
        args.seed,
        measured=save,
    )
    payload = save(records)
    json_path = os.path.join(args.out, STEM.format(name=args.name) + ".json")
    render(str(json_path))
    print(markdown(payload))
    return 1 if any(r["mismatches"] for r in records if r["rule"] == "strict") else 0


if __name__ == "__main__":
    sys.exit(main())
