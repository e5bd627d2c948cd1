"""The ``vllm-padrec`` command.

    vllm-padrec quickstart                       # synthetic data -> tiny target -> lists + metrics (CPU, minutes)
    vllm-padrec data --dataset beauty_atspeed    # dataset summary
    vllm-padrec train-target --recipe bench --dataset beauty_atspeed --out runs/bench --until-done
    vllm-padrec evaluate --checkpoint runs/bench/checkpoint --dataset beauty_atspeed --out eval.json
    vllm-padrec recommend --checkpoint runs/bench/checkpoint --history 1954 27 12030 --num-items 10
    vllm-padrec topk --target runs/bench/checkpoint --dataset beauty_atspeed --k 20 --users 5

``--dataset`` takes ``synthetic`` (the embedded default), a folder in AtSpeed or LC-Rec format, or the
name of a folder under ``$PADREC_DATA_DIR`` (default ``../shared/data``).

A mistake is one line on stderr, ``vllm-padrec <command>: error: <what is wrong>``, and exit status 2:
a bad argument (checked before anything is loaded), an error the project names (``vllm_padrec.errors``:
an unreadable dataset, an incomplete checkpoint, a checkpoint used with another catalog, too many
items, too little memory, ...) or a missing file. Anything else is a bug and keeps its traceback.
A training command that stops early says on stderr how to continue, and exits with 3 (its time
budget ran out) or 128 + N (signal N: 143 for SIGTERM, 130 for SIGINT; the state was saved first).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.gamma_schedule import MODES, OFFLINE

# errors that are the user's to fix: one line and exit status 2 (anything else keeps its traceback)
USER_ERRORS = (PadRecError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
TIME_BUDGET_EXIT = 3  # a training command stopped at its time budget; running it again continues


# -- argument types: each validates its value where the option is defined -----------------------------
def bounded(kind: type, minimum: float, exclusive: bool = False):
    """An argparse ``type=``: an int or a finite float ``kind`` that is >= ``minimum`` (> when ``exclusive``)."""
    noun = "an integer" if kind is int else "a number"
    wanted = f"{noun} {'>' if exclusive else '>='} {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0, exclusive=True)
non_negative_float = bounded(float, 0)


def torch_device(text: str) -> str:
    """An argparse ``type=``: ``cpu``, ``cuda`` or ``cuda:N``, refused when this machine lacks it."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has no CUDA GPU that torch can use; use --device cpu"
            )
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda devices are supported")
    return text


class OneLineParser(argparse.ArgumentParser):
    """An argument mistake is one line, ``prog: error: message``, and exit status 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- shared steps -------------------------------------------------------------------------------------
def pin_cpu_threads() -> None:
    """torch's CPU threads = the cores this process may run on (``os.sched_getaffinity``). torch sizes
    its pool for the machine; threads past the allowed cores only contend (under load on 2 cores the
    default made the tiny training 50x slower)."""
    import torch

    if hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(len(os.sched_getaffinity(0)))


def _device(name: str | None) -> str:
    """The chosen device (default: cuda when there is one), with torch's CPU threads pinned."""
    import torch

    pin_cpu_threads()
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(checkpoint: str, device: str):
    import torch

    from vllm_padrec.target.model import load_checkpoint

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load_checkpoint(checkpoint, device=device, dtype=dtype)


def _checkpoint_for(checkpoint: str, data):
    """The catalog and recipe of ``checkpoint`` (no weights loaded), refused unless ``data`` has its catalog."""
    from vllm_padrec.catalog import require_same_catalog
    from vllm_padrec.target.checkpoint_folder import read_catalog_and_recipe

    catalog, recipe = read_catalog_and_recipe(checkpoint)
    require_same_catalog(catalog, data.catalog, data.name)
    return catalog, recipe


def _stopped_early(args, stopped_by: str | None, where: str, state: Path) -> int:
    """Say on stderr how an unfinished training continues; the exit status (module docstring)."""
    if stopped_by is None:
        return 0
    again = shlex.join(["vllm-padrec", *args.argv])
    if stopped_by == "time budget":
        why, status = "at its time budget", TIME_BUDGET_EXIT
        hint = "" if args.until_done else " (add --until-done to keep going in one process)"
    else:
        why, status, hint = f"by {stopped_by}", 128 + signal.Signals[stopped_by].value, ""
    print(
        f"vllm-padrec {args.command}: stopped {why} at {where}; the state is saved in {state}. "
        f"To continue, run: {again}{hint}",
        file=sys.stderr,
    )
    return status


def _train(recipe, data, out: Path, device: str, until_done: bool):
    """Train the target; with ``until_done``, call again after each time-budget stop (not after a signal)."""
    from vllm_padrec.target.train import train_target

    while True:
        result = train_target(recipe, data, out, device=device)
        if result.finished or not until_done or result.stopped_by != "time budget":
            return result


# -- commands -----------------------------------------------------------------------------------------
def cmd_data(args) -> int:
    from vllm_padrec.data import open_dataset

    data = open_dataset(args.dataset)
    print(json.dumps(data.summary(), indent=2))
    return 0


def cmd_train_target(args) -> int:
    from vllm_padrec.data import open_dataset
    from vllm_padrec.target.config import get_recipe
    from vllm_padrec.target.train import STATE_FILE

    chosen = ("epochs", "time_budget_minutes", "micro_batch_size")
    overrides = {name: getattr(args, name) for name in chosen if getattr(args, name)}
    recipe = get_recipe(args.recipe, **overrides)
    data = open_dataset(args.dataset)
    out = Path(args.out)
    result = _train(recipe, data, out, _device(args.device), args.until_done)
    print(
        json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()}, indent=2, default=str)
    )
    return _stopped_early(args, result.stopped_by, f"step {result.step} of {result.total_steps}", out / STATE_FILE)


def cmd_evaluate(args) -> int:
    from vllm_padrec.data import open_dataset

    if args.list_items == 0 and args.beam_width == 0:
        args.parser.error("nothing to evaluate: --list-items and --beam-width are both 0")
    data = open_dataset(args.dataset)
    catalog, recipe = _checkpoint_for(args.checkpoint, data)
    if args.list_items:
        catalog.check_distinct_items(args.list_items, f"--list-items {args.list_items}")
        recipe.check_list_fits(catalog.layout, recipe.max_history, args.list_items)
    if args.beam_width:
        catalog.check_distinct_items(args.beam_width, f"--beam-width {args.beam_width}")

    from vllm_padrec.target.evaluate import evaluate_target

    device = _device(args.device)
    ckpt = _load(args.checkpoint, device)
    metrics = evaluate_target(
        ckpt.model,
        data,
        split=args.split,
        list_items=args.list_items,
        beam_width=args.beam_width,
        max_users=args.max_users,
        batch_size=args.batch_size,
        max_history=ckpt.recipe.max_history,
    )
    metrics = {"checkpoint": args.checkpoint, "dataset": data.name, "recipe": ckpt.recipe.name, **metrics}
    print(json.dumps(metrics, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_train_draft(args) -> int:
    if args.train_steps is not None and args.train_steps > args.gamma:
        raise PadRecError(f"--train-steps {args.train_steps} is more than --gamma {args.gamma}")
    from vllm_padrec.data import open_dataset

    data = open_dataset(args.dataset)
    _, recipe = _checkpoint_for(args.target, data)

    from vllm_padrec.draft.config import check_objective
    from vllm_padrec.target.model import load_checkpoint
    from vllm_padrec.training.trainer import STATE_FILE, DraftTrainConfig, feature_source, topk_constraint, train_draft

    config = DraftTrainConfig(
        num_draft_steps=args.gamma,
        trained_steps=args.train_steps or 0,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        max_history=recipe.max_history,
        list_items=recipe.list_items,
        max_stored_gib=args.max_stored_gib,
        seed=args.seed,
        lr=args.lr,
        signal_lr_scale=args.signal_lr_scale,
        topk=args.topk,
        topk_users=args.topk_users,
        objective=args.objective,
    )
    for method in args.method:
        check_objective(method, config.objective)
    topk_constraint(None, data, config, None, "cpu")  # top-K settings that do not fit the catalog: before any model
    device = _device(args.device)
    ckpt = load_checkpoint(args.target, device=device)  # in the dtype it was saved in
    source = feature_source(ckpt, data, config, device)  # collected once for every method
    unfinished = []  # (method, result) stopped by the time budget
    for method in args.method:
        out = Path(args.out) / method
        while True:
            result = train_draft(
                method, ckpt, data, config, out, device, time_budget_minutes=args.time_budget_minutes, source=source
            )
            if result.finished or not args.until_done or result.stopped_by != "time budget":
                break
        print(json.dumps({"method": method, **{k: v for k, v in vars(result).items()}}, indent=2, default=str))
        if result.stopped_by not in (None, "time budget"):  # a signal: the other methods wait for the next run
            return _stopped_early(
                args, result.stopped_by, f"method {method}, step {result.steps} of {result.max_steps}", out / STATE_FILE
            )
        if not result.finished:
            unfinished.append((method, result))
    if unfinished:
        where = ", ".join(f"{m} at step {r.steps} of {r.max_steps}" for m, r in unfinished)
        return _stopped_early(args, "time budget", where, Path(args.out) / "<method>" / STATE_FILE)
    return 0


def _print_lists(catalog, histories, lists, users=None, scores=None) -> None:
    """Each history's last 3 items and its recommended items (with ``scores``: each item's score after it)."""
    for n, (history, items) in enumerate(zip(histories, lists)):
        who = f"user {users[n]}" if users else f"request {n}"
        print(f"\n{who}: history (last 3 of {len(history)}):")
        for index in history[-3:]:
            print(f"    {catalog.sid_string(index)}  {catalog.titles[index] or catalog.item_ids[index]}")
        print("  recommended:")
        for rank, index in enumerate(items, 1):
            score = f"  {scores[n][rank - 1]:.4f}" if scores is not None else ""
            print(
                f"  {rank:2d}. {catalog.sid_string(index)}  {catalog.titles[index] or catalog.item_ids[index]}{score}"
            )


def cmd_recommend(args) -> int:
    from vllm_padrec.target.checkpoint_folder import read_catalog_and_recipe

    catalog, recipe = read_catalog_and_recipe(args.checkpoint)
    history = catalog.history_indices(args.history)  # names every unknown id
    catalog.check_distinct_items(args.num_items, f"--num-items {args.num_items}")
    window = history[-recipe.max_history :]  # what the prompt keeps
    recipe.check_list_fits(catalog.layout, len(window), args.num_items)

    from vllm_padrec.decoding import greedy_lists

    ckpt = _load(args.checkpoint, _device(args.device))
    lists = greedy_lists(ckpt.model, ckpt.catalog, [window], args.num_items)  # no repeats, room for every item
    _print_lists(ckpt.catalog, [history], lists)
    return 0


def cmd_topk(args) -> int:
    """Top-K for the first test users, by the plain-torch reference (``decoding.beam_search_items``, the
    answer the engine's top-K path must equal) or, with ``--engine vllm``, by the beam search inside vLLM's
    engine (``topk.offline.recommend_topk``); then Recall@K / NDCG@K of those users (``recall_ndcg``)."""
    from vllm_padrec.data import open_dataset

    data = open_dataset(args.dataset)
    catalog, recipe = _checkpoint_for(args.target, data)
    catalog.check_distinct_items(args.k, f"--k {args.k}")
    samples = data.eval_samples("test", recipe.max_history)[: args.users]
    if not samples:
        raise PadRecError(f"the test split of {data.name} has no user with both a history and a target")
    histories = [s.history for s in samples]
    if args.engine == "vllm":
        ranked = _engine_topk(args, catalog, histories, recipe.max_history)
    else:
        from vllm_padrec.decoding import beam_search_items

        ckpt = _load(args.target, _device(args.device))
        ranked = beam_search_items(
            ckpt.model, catalog, histories, args.k, batch_size=max(1, 64 // args.k), ban_history=args.exclude_history
        )
    from vllm_padrec.target.evaluate import recall_ndcg

    items = [[item for item, _ in user] for user in ranked]
    _print_lists(catalog, histories, items, [s.user for s in samples], [[s for _, s in u] for u in ranked])
    scored = recall_ndcg(items, [s.targets for s in samples], args.k)
    print(json.dumps({"k": args.k, "exclude_history": args.exclude_history, **scored}, indent=2))
    return 0


def _engine_topk(args, catalog, histories, max_history: int) -> list[list[tuple[int, float]]]:
    """``recommend_topk`` over a ``vllm.LLM`` of the target, with beam rows for every user at once."""
    from vllm import LLM

    from vllm_padrec.topk.offline import recommend_topk, topk_engine_args

    llm = LLM(
        model=args.target,
        gpu_memory_utilization=args.gpu_memory_utilization,
        **topk_engine_args(args.k, len(histories)),
    )
    return recommend_topk(llm, catalog, histories, args.k, args.exclude_history, max_history=max_history)


def cmd_gamma_schedule(args) -> int:
    """Draft steps by batch size from a benchmark's records, as the --speculative-config that serves them."""
    from vllm_padrec.integration.gamma_schedule import (
        chosen_gammas,
        fastest,
        gamma_table,
        one_measurement,
        speculative_config,
        speedups,
    )

    path = Path(args.results)
    if not path.is_file():
        raise PadRecError(f"--results {path}: no such file (a bench_spec_decode results JSON)")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PadRecError(f"--results {path} is not JSON: {error}") from None
    records = payload.get("records") if isinstance(payload, dict) else payload
    if not isinstance(records, list):
        raise PadRecError(f"--results {path} holds no list of records")
    try:
        measured = one_measurement(records, args.list_len, args.mode)
        measured_speedups = speedups(measured, args.method, baseline=args.baseline)
        choice = chosen_gammas(measured_speedups, args.min_gain)
        table = gamma_table(choice, args.max_num_seqs)
    except ValueError as error:
        raise PadRecError(f"--results {path}: {error}") from None
    for batch, gamma in sorted(choice.items()):
        best_gamma, best = fastest(measured_speedups[batch])
        how = f"{best.ratio:.2f}x no speculation, {'paired' if best.paired else 'unpaired'}"
        said = f"({how})" if gamma else f"(no speculation: the best, gamma {best_gamma}, made {how})"
        print(f"batch {batch}: gamma {gamma}  {said}", file=sys.stderr)
    try:
        config = speculative_config(args.draft, table)
    except ValueError as error:
        raise PadRecError(f"--results {path}: {error}") from None
    print(json.dumps(config))
    return 0


def cmd_quickstart(args) -> int:
    """Synthetic data -> tiny target -> constrained lists with titles -> Recall/NDCG."""
    from vllm_padrec.data import open_dataset
    from vllm_padrec.decoding import greedy_lists
    from vllm_padrec.target.config import get_recipe
    from vllm_padrec.target.evaluate import evaluate_target
    from vllm_padrec.target.model import load_checkpoint
    from vllm_padrec.target.train import STATE_FILE

    started = time.time()
    out = Path(args.out)
    data = open_dataset("synthetic")
    print("dataset:", json.dumps(data.summary()))
    recipe = get_recipe("tiny")
    device = _device(args.device)
    print(f"training the tiny target ({recipe.num_layers} layers, hidden {recipe.hidden_size}) on {device} ...")
    result = _train(recipe, data, out, device, until_done=True)
    if result.stopped_by is not None:  # a signal (the time budget only ends a call of the loop)
        return _stopped_early(args, result.stopped_by, f"step {result.step} of {result.total_steps}", out / STATE_FILE)
    ckpt = load_checkpoint(result.checkpoint, device=device)
    samples = data.eval_samples("test", recipe.max_history)
    shown = samples[: args.users]
    lists = greedy_lists(ckpt.model, ckpt.catalog, [s.history for s in shown], recipe.list_items)
    _print_lists(ckpt.catalog, [s.history for s in shown], lists, [s.user for s in shown])
    for sample, items in zip(shown, lists):
        hit = [data.catalog.sid_string(t) for t in sample.targets if t in items]
        print(
            f"  user {sample.user}: next item {data.catalog.sid_string(sample.targets[0])} "
            f"{'is in the list' if hit else 'is not in the list'}"
        )
    print("\nevaluating on the test split (constrained greedy lists and top-10 beam search) ...")
    metrics = evaluate_target(
        ckpt.model, data, "test", list_items=recipe.list_items, beam_width=10, max_history=recipe.max_history
    )
    print(json.dumps(metrics, indent=2))
    (out / "quickstart_metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\ncheckpoint: {out / 'checkpoint'} (an HF folder `vllm serve` loads); {time.time() - started:.0f} s in all")
    return 0


# -- the parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from vllm_padrec.data.interactions import EVAL_SPLITS
    from vllm_padrec.draft.config import METHODS, OBJECTIVES
    from vllm_padrec.target.config import RECIPES

    parser = OneLineParser(
        prog="vllm-padrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dataset_help = "'synthetic', a dataset folder (AtSpeed or LC-Rec format), or a folder name under $PADREC_DATA_DIR"
    device_help = "cpu, cuda or cuda:N (default: cuda when there is a GPU, else cpu)"

    p = sub.add_parser("quickstart", help="synthetic data -> tiny target -> recommendation lists + metrics")
    p.add_argument("--out", default="runs/quickstart", help="output folder (training state, checkpoint/, metrics)")
    p.add_argument("--users", type=non_negative_int, default=3, help="test users whose lists are printed")
    p.add_argument("--device", type=torch_device, default=None, help=device_help)
    p.set_defaults(func=cmd_quickstart, until_done=True)

    p = sub.add_parser("data", help="summary of a dataset")
    p.add_argument("--dataset", default="synthetic", help=dataset_help)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train-target", help="train a target recommender (resumable)")
    p.add_argument(
        "--recipe",
        default="tiny",
        choices=sorted(RECIPES),
        help="model and training preset (vllm_padrec/target/config.py): tiny trains on a CPU in "
        "seconds, bench is a 1.3B model for one large GPU",
    )
    p.add_argument("--dataset", default="synthetic", help=dataset_help)
    p.add_argument("--out", required=True, help="output folder: train_state.pt, loss.json, loss.png, checkpoint/")
    p.add_argument(
        "--epochs", type=positive_float, default=None, help="passes over the training examples (default: the recipe's)"
    )
    p.add_argument(
        "--time-budget-minutes",
        type=positive_float,
        default=None,
        help="stop and save after this long (default: the recipe's); running again continues",
    )
    p.add_argument(
        "--micro-batch-size",
        type=positive_int,
        default=None,
        help="examples per forward and backward: each batch in parts whose gradients add up (the same steps, "
        "for a GPU with less memory; default: the whole batch, halved when CUDA runs out of memory)",
    )
    p.add_argument("--until-done", action="store_true", help="keep resuming until training finishes")
    p.add_argument("--device", type=torch_device, default=None, help=device_help)
    p.set_defaults(func=cmd_train_target)

    p = sub.add_parser("train-draft", help="train draft heads (padrec, eagle, medusa, ablations) for a target")
    p.add_argument("--target", required=True, help="target checkpoint folder (train-target's OUT/checkpoint)")
    p.add_argument(
        "--method",
        nargs="+",
        default=["padrec", "eagle", "medusa"],
        choices=METHODS,
        help="draft methods to train, each into OUT/METHOD (default: padrec eagle medusa)",
    )
    p.add_argument("--dataset", required=True, help=dataset_help + "; must hold the target's catalog")
    p.add_argument("--out", required=True, help="one folder per method is written under it")
    p.add_argument("--gamma", type=positive_int, default=5, help="draft steps the heads draft (vLLM n_predict)")
    p.add_argument(
        "--train-steps",
        type=positive_int,
        default=None,
        help="draft steps the loss unrolls, at most --gamma (default --gamma); 1 trains EAGLE heads teacher-forced "
        "one step, as the EAGLE paper does",
    )
    p.add_argument(
        "--max-steps", type=positive_int, default=3000, help="optimizer steps, the same budget for every method"
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="sequences per optimizer step")
    p.add_argument(
        "--max-stored-gib",
        type=non_negative_float,
        default=8.0,
        help="store the target's hidden states when they fit this many GiB, else recompute them",
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument(
        "--signal-lr-scale",
        type=positive_float,
        default=1.0,
        help="PAD-Rec's signal parameters (alpha, E_slot, E_step, gate) learn at lr times this",
    )
    p.add_argument(
        "--time-budget-minutes",
        type=positive_float,
        default=None,
        help="stop and save each method after this long; running again continues",
    )
    p.add_argument("--until-done", action="store_true", help="keep resuming each method until it finishes")
    p.add_argument(
        "--topk",
        type=non_negative_int,
        default=0,
        help="train on the target's own top-K beams of the training users (AtSpeed; --gamma at most L - 1), "
        "with this K; 0 (default): list-wise windows",
    )
    p.add_argument(
        "--topk-users", type=positive_int, default=2000, help="with --topk: training users whose beams make the data"
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="distill",
        help="token term: distill (CE to the target's token), atspeed_s (AtSpeed-S) or atspeed_r (AtSpeed-R: CE "
        "and the TVD of each user's beams); the AtSpeed ones need --topk",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="draft initialisation and data order")
    p.add_argument("--device", type=torch_device, default=None, help=device_help)
    p.set_defaults(func=cmd_train_draft)

    p = sub.add_parser("evaluate", help="Recall/NDCG of constrained greedy lists and top-K beam search")
    p.add_argument("--checkpoint", required=True, help="target checkpoint folder")
    p.add_argument("--dataset", required=True, help=dataset_help + "; must hold the checkpoint's catalog")
    p.add_argument("--split", default="test", choices=EVAL_SPLITS, help="users scored: their valid or test items")
    p.add_argument(
        "--list-items",
        type=non_negative_int,
        default=10,
        help="N of the greedy lists, scored by Recall@N / NDCG@N (0: no greedy lists)",
    )
    p.add_argument(
        "--beam-width",
        type=non_negative_int,
        default=10,
        help="K of the beam search, scored by Recall@K / NDCG@K; at most the catalog size (0: no beam search)",
    )
    p.add_argument("--max-users", type=positive_int, default=None, help="score only the first this many users")
    p.add_argument("--batch-size", type=positive_int, default=64, help="prompts per model call")
    p.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--device", type=torch_device, default=None, help=device_help)
    p.set_defaults(func=cmd_evaluate, parser=p)

    p = sub.add_parser("recommend", help="a constrained list for one history of item ids")
    p.add_argument("--checkpoint", required=True, help="target checkpoint folder")
    p.add_argument("--history", nargs="+", required=True, help="item ids, oldest first")
    p.add_argument(
        "--num-items",
        type=positive_int,
        default=10,
        help="items in the list: at most the catalog size and what fits the model's context after "
        "the history (the error names the limit)",
    )
    p.add_argument("--device", type=torch_device, default=None, help=device_help)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("topk", help="the K best items for test users (beam search), with scores")
    p.add_argument("--target", required=True, help="target checkpoint folder (train-target's OUT/checkpoint)")
    p.add_argument("--dataset", required=True, help=dataset_help + "; must hold the target's catalog")
    p.add_argument("--k", type=positive_int, required=True, help="items per user, best first; at most the catalog size")
    p.add_argument("--users", type=positive_int, default=5, help="the first this many test users, printed and scored")
    p.add_argument("--exclude-history", action="store_true", help="never recommend an item of the user's own history")
    p.add_argument(
        "--engine",
        choices=("reference", "vllm"),
        default="reference",
        help="reference: the plain-torch beam search (default); vllm: the beam search inside vLLM's engine (a GPU)",
    )
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=0.5, help="with --engine vllm: vLLM's share of GPU memory"
    )
    p.add_argument("--device", type=torch_device, default=None, help=device_help + " (--engine reference)")
    p.set_defaults(func=cmd_topk)

    p = sub.add_parser(
        "gamma-schedule",
        help="draft steps by batch size from benchmark records: the --speculative-config JSON for vllm serve",
    )
    p.add_argument(
        "--results",
        required=True,
        help="a results JSON with records of method, batch_size, gamma, tokens_per_s (and paired_speedup, read first "
        "where a record has one)",
    )
    p.add_argument("--draft", required=True, help="the draft folder the config names (--speculative-config's model)")
    p.add_argument("--method", default="padrec", help="the records' speculative method (default padrec)")
    p.add_argument("--baseline", default="none", help="the records' method without speculation (default none)")
    p.add_argument(
        "--min-gain",
        type=float,
        default=0.02,
        help="speculate at a batch size only when it beats no speculation by this fraction (default 0.02)",
    )
    p.add_argument(
        "--max-num-seqs", type=positive_int, default=1024, help="the server's max_num_seqs: the table's last size"
    )
    p.add_argument(
        "--list-len",
        type=positive_int,
        default=None,
        help="read the records of lists of this many items (default: the shortest lists the records have)",
    )
    p.add_argument(
        "--mode",
        default=OFFLINE,
        choices=MODES,
        help="read the records measured this way: offline LLM or vllm serve (default offline)",
    )
    p.set_defaults(func=cmd_gamma_schedule)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the command line that continues a stopped training
    try:
        return args.func(args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split("\n"))
        print(f"vllm-padrec {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
