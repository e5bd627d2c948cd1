"""The ``vllm-padrec`` command.

    vllm-padrec quickstart                       # synthetic data -> tiny target -> lists + metrics (CPU, minutes)
    vllm-padrec data --dataset beauty_atspeed    # dataset summary
    vllm-padrec train-target --recipe bench --dataset beauty_atspeed --out runs/bench --until-done
    vllm-padrec evaluate --checkpoint runs/bench/checkpoint --dataset beauty_atspeed --out eval.json
    vllm-padrec recommend --checkpoint runs/bench/checkpoint --history 1954 27 12030 --num-items 10

``--dataset`` takes ``synthetic`` (the embedded default), a folder in AtSpeed or LC-Rec format, or the
name of a folder under ``$PADREC_DATA_DIR`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vllm_padrec import envs
from vllm_padrec.errors import PadRecError


def load_data(name: str, seed: int = 0):
    from vllm_padrec.data import SyntheticConfig, generate_synthetic, load_dataset

    if name == "synthetic":
        return generate_synthetic(SyntheticConfig(seed=seed))
    path = name if os.path.isdir(name) else os.path.join(envs.data_dir(), name)
    return load_dataset(path)


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_data(args) -> int:
    data = load_data(args.dataset)
    print(json.dumps(data.summary(), indent=2))
    return 0


def _train(recipe, data, out: Path, device: str, until_done: bool):
    from vllm_padrec.target.train import train_target

    while True:
        result = train_target(recipe, data, out, device=device)
        if result.finished or not until_done:
            return result


def cmd_train_target(args) -> int:
    from vllm_padrec.target.config import get_recipe

    overrides = {k: v for k, v in (("epochs", args.epochs), ("time_budget_minutes", args.time_budget_minutes)) if v}
    recipe = get_recipe(args.recipe, **overrides)
    data = load_data(args.dataset)
    result = _train(recipe, data, Path(args.out), _device(args.device), args.until_done)
    print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()}, indent=2, default=str))
    return 0 if result.finished else 3  # 3: stopped at the time budget, run again to resume


def _load(checkpoint: str, device: str):
    import torch

    from vllm_padrec.target.model import load_checkpoint

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load_checkpoint(checkpoint, device=device, dtype=dtype)


def cmd_evaluate(args) -> int:
    from vllm_padrec.target.evaluate import evaluate_target

    device = _device(args.device)
    ckpt = _load(args.checkpoint, device)
    data = load_data(args.dataset)
    metrics = evaluate_target(
        ckpt.model, data, split=args.split, list_items=args.list_items, beam_width=args.beam_width,
        max_users=args.max_users, batch_size=args.batch_size, max_history=ckpt.recipe.max_history,
    )
    metrics = {"checkpoint": args.checkpoint, "dataset": data.name, "recipe": ckpt.recipe.name, **metrics}
    print(json.dumps(metrics, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_train_draft(args) -> int:
    from vllm_padrec.target.model import load_checkpoint
    from vllm_padrec.training.trainer import DraftTrainConfig, feature_source, train_draft

    device = _device(args.device)
    ckpt = load_checkpoint(args.target, device=device)
    config = DraftTrainConfig(
        num_draft_steps=args.gamma, max_steps=args.max_steps, batch_size=args.batch_size,
        max_history=ckpt.recipe.max_history, list_items=ckpt.recipe.list_items,
        max_stored_gib=args.max_stored_gib, seed=args.seed, lr=args.lr, signal_lr_scale=args.signal_lr_scale,
    )
    data = load_data(args.dataset)
    source = feature_source(ckpt, data, config, device)  # collected once for every method
    for method in args.method:
        out = Path(args.out) / method
        while True:
            result = train_draft(method, ckpt, data, config, out, device, time_budget_minutes=args.time_budget_minutes,
                                 source=source)
            if result.finished or not args.until_done:
                break
        print(json.dumps({"method": method, **{k: v for k, v in vars(result).items()}}, indent=2, default=str))
    return 0


def _print_lists(catalog, histories, lists, users=None) -> None:
    for n, (history, items) in enumerate(zip(histories, lists)):
        who = f"user {users[n]}" if users else f"request {n}"
        print(f"\n{who}: history (last 3 of {len(history)}):")
        for index in history[-3:]:
            print(f"    {catalog.sid_string(index)}  {catalog.titles[index] or catalog.item_ids[index]}")
        print("  recommended:")
        for rank, index in enumerate(items, 1):
            print(f"  {rank:2d}. {catalog.sid_string(index)}  {catalog.titles[index] or catalog.item_ids[index]}")


def cmd_recommend(args) -> int:
    from vllm_padrec.constraint import ListConstraint
    from vllm_padrec.decoding import greedy_lists

    device = _device(args.device)
    ckpt = _load(args.checkpoint, device)
    history = ckpt.catalog.history_indices(args.history)
    constraint = ListConstraint(ckpt.catalog, num_items=args.num_items, no_repeat=True, device=device)
    lists = greedy_lists(ckpt.model, ckpt.catalog, [history[-ckpt.recipe.max_history:]], args.num_items, constraint)
    _print_lists(ckpt.catalog, [history], lists)
    return 0


def cmd_quickstart(args) -> int:
    """Synthetic data -> tiny target -> constrained lists with titles -> Recall/NDCG."""
    from vllm_padrec.constraint import ListConstraint
    from vllm_padrec.decoding import greedy_lists
    from vllm_padrec.target.config import get_recipe
    from vllm_padrec.target.evaluate import evaluate_target
    from vllm_padrec.target.model import load_checkpoint

    started = time.time()
    out = Path(args.out)
    data = load_data("synthetic")
    print("dataset:", json.dumps(data.summary()))
    recipe = get_recipe("tiny")
    device = _device(args.device)
    print(f"training the tiny target ({recipe.num_layers} layers, hidden {recipe.hidden_size}) on {device} ...")
    result = _train(recipe, data, out, device, until_done=True)
    ckpt = load_checkpoint(result.checkpoint, device=device)
    samples = data.eval_samples("test", recipe.max_history)
    shown = samples[: args.users]
    constraint = ListConstraint(ckpt.catalog, num_items=recipe.list_items, no_repeat=True, device=device)
    lists = greedy_lists(ckpt.model, ckpt.catalog, [s.history for s in shown], recipe.list_items, constraint)
    _print_lists(ckpt.catalog, [s.history for s in shown], lists, [s.user for s in shown])
    for sample, items in zip(shown, lists):
        hit = [data.catalog.sid_string(t) for t in sample.targets if t in items]
        print(f"  user {sample.user}: next item {data.catalog.sid_string(sample.targets[0])} "
              f"{'is in the list' if hit else 'is not in the list'}")
    print("\nevaluating on the test split (constrained greedy lists and top-10 beam search) ...")
    metrics = evaluate_target(ckpt.model, data, "test", list_items=recipe.list_items, beam_width=10,
                              max_history=recipe.max_history)
    print(json.dumps(metrics, indent=2))
    (out / "quickstart_metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\ncheckpoint: {out / 'checkpoint'} (an HF folder `vllm serve` loads); {time.time() - started:.0f} s in all")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-padrec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="synthetic data -> tiny target -> recommendation lists + metrics")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--users", type=int, default=3, help="users whose lists are printed")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("data", help="summary of a dataset")
    p.add_argument("--dataset", default="synthetic")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train-target", help="train a target recommender (resumable)")
    p.add_argument("--recipe", default="tiny", help="tiny | bench")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--time-budget-minutes", type=float, default=None, help="stop and save after this long")
    p.add_argument("--until-done", action="store_true", help="keep resuming until training finishes")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_target)

    p = sub.add_parser("train-draft", help="train draft heads (padrec, eagle, medusa, ablations) for a target")
    p.add_argument("--target", required=True, help="target checkpoint folder")
    p.add_argument("--method", nargs="+", default=["padrec", "eagle", "medusa"],
                   help="padrec | eagle | medusa | padrec_no_slot | padrec_no_step | padrec_no_gates")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="one folder per method is written under it")
    p.add_argument("--gamma", type=int, default=5, help="draft steps trained (vLLM n_predict)")
    p.add_argument("--max-steps", type=int, default=3000, help="optimizer steps, the same budget for every method")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-stored-gib", type=float, default=8.0, help="store target hidden states up to this size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--signal-lr-scale", type=float, default=1.0,
                   help="PAD-Rec's signal parameters (alpha, E_slot, E_step, gate) learn at lr times this")
    p.add_argument("--time-budget-minutes", type=float, default=None)
    p.add_argument("--until-done", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_draft)

    p = sub.add_parser("evaluate", help="Recall/NDCG of constrained greedy lists and top-K beam search")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--list-items", type=int, default=10)
    p.add_argument("--beam-width", type=int, default=10)
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="a constrained list for one history of item ids")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--history", nargs="+", required=True, help="item ids, oldest first")
    p.add_argument("--num-items", type=int, default=10)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_recommend)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PadRecError, FileNotFoundError) as error:
        print(f"vllm-padrec {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
