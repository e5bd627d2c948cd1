"""Train the target from scratch on list-wise generation, resumably, in time-boxed chunks.

Each example is ``prompt + completion`` (``vllm_padrec.data.listwise_examples``: sliding windows over
every user's training sequence); the loss is next-token cross-entropy on the completion tokens only.
Batches hold ``batch_size`` examples of similar length (sorted inside windows of ``bucket_batches``
batches, then the batches shuffled), right-padded: under the causal mask no real token ever attends to
a pad, so no attention mask is needed and SDPA runs its fused causal kernels. AdamW with linear
warm-up and a cosine decay to ``lr * min_lr_ratio``; bf16 autocast on CUDA.

Validation (``recipe.eval_every`` > 0): every ``eval_every`` steps and after the last one the model
is scored on a fixed subset of validation users (``vllm_padrec.target.evaluate.ValidationSet``: loss
of the first validation item, Recall@K of top-K beam search); the weights with the best
``recipe.val_metric`` are written to ``out_dir/best/`` and become ``out_dir/checkpoint/`` at the end,
and after ``recipe.patience`` validations without improvement the run stops early. The curve is in
``out_dir/val.json``. The list-wise examples come from the training split only: the valid split is
the held-out set that chooses the checkpoint (and test prompts, train + valid history, are never
trained on either).

A call trains for at most ``recipe.time_budget_minutes`` and saves ``out_dir/train_state.pt`` (model,
optimiser, scheduler, step, RNG, the epoch's batch order, loss log, validation record) every
``save_every_minutes`` and when it stops: at the time budget, or at the step boundary after a SIGTERM
or SIGINT (``vllm_padrec.durability.StopSignals``; ``TrainResult.stopped_by`` says which). The next
call with the same recipe and data continues exactly where it stopped (on CPU the result is
bit-identical to an uninterrupted run). When all steps are done (or validation stopped the run) it
writes ``out_dir/checkpoint/`` (see ``vllm_padrec.target.model``; whole or not at all). Every call
writes ``out_dir/loss.json`` and its plot ``out_dir/loss.png``. Before allocating anything it checks
that the recipe can fit the device's free memory (``TargetRecipe.training_bytes``).

    from vllm_padrec.data import generate_synthetic, load_dataset
    from vllm_padrec.target.config import get_recipe
    from vllm_padrec.target.train import train_target

    train_target(get_recipe("tiny"), generate_synthetic(), "runs/tiny")            # CPU, < 1 minute
    data = load_dataset("../shared/data/beauty_atspeed")
    while not train_target(get_recipe("bench"), data, "runs/bench").finished:      # H200, ~10 min
        pass                                                # (or one call per <= 10-minute job)
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import InteractionData, ListwiseExample, listwise_examples
from vllm_padrec.durability import StopSignals, load_state, replace_folder, save_state
from vllm_padrec.errors import InsufficientMemoryError
from vllm_padrec.plotting import pyplot
from vllm_padrec.target.config import RecipeError, TargetRecipe
from vllm_padrec.target.evaluate import ValidationSet
from vllm_padrec.target.model import add_hidden_dropout, build_model, padded_vocab_size, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer

STATE_FILE = "train_state.pt"  # resumable state inside out_dir
LOSS_FILE = "loss.json"  # [{"step": s, "loss": mean loss of steps s-log_every+1..s}, ...]
PLOT_FILE = "loss.png"  # the training loss (and the validation loss) over the steps
CHECKPOINT_DIR = "checkpoint"  # the final HF checkpoint inside out_dir
BEST_DIR = "best"  # while training: the checkpoint of the best validation so far (then checkpoint/)
VAL_FILE = "val.json"  # {"metric", "best_step", "best", "stopped_early", "evals": [{"step", "loss", ...}]}
IGNORE = -100  # target id of positions that carry no loss (prompt and padding)
# fields that may change between the calls of one run: they steer the run, not the result
RUN_CONTROL_FIELDS = ("time_budget_minutes", "save_every_minutes")


@dataclass(frozen=True)
class TrainResult:
    finished: bool  # all steps done and out_dir/checkpoint written
    step: int  # optimiser steps done so far (over all calls)
    total_steps: int  # steps of the whole run
    loss: float | None  # mean loss of the last logged window (None before the first)
    checkpoint: Path | None  # out_dir/checkpoint when finished
    seconds: float  # wall time of this call
    tokens_per_second: float  # real (non-pad) tokens per second of this call's training steps
    best_step: int | None = None  # step of the best validation (None without validation)
    best_metric: float | None = None  # its value of recipe.val_metric (Recall@K or loss)
    stopped_early: bool = False  # stopped after `patience` validations without improvement
    # why the call returned before the run finished: "time budget", "SIGTERM" or "SIGINT" (a signal that
    # came during the final writes is named too: the caller should stop)
    stopped_by: str | None = None
    loss_plot: Path | None = None  # out_dir/loss.png (None without matplotlib or before the first log entry)


# -- data --------------------------------------------------------------------------------------------
class TokenizedExamples:
    """All examples as one flat token array with offsets (cheap to slice, small to keep)."""

    def __init__(self, examples: list[ListwiseExample]) -> None:
        if not examples:
            raise RecipeError("the training split yields no list-wise example (every user has < 2 training items)")
        self.prompt_lengths = np.array([len(e.prompt) for e in examples], dtype=np.int64)  # [E]
        self.lengths = self.prompt_lengths + np.array([len(e.completion) for e in examples], dtype=np.int64)  # [E]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # [E + 1]
        self.tokens = np.fromiter(
            (t for e in examples for t in (*e.prompt, *e.completion)), dtype=np.int64, count=int(self.offsets[-1])
        )  # [sum of lengths]

    def __len__(self) -> int:
        return len(self.lengths)

    def fingerprint(self) -> list[int]:
        """Identifies the data a run was started on (resume refuses other data)."""
        return [len(self), int(self.offsets[-1]), int(self.tokens.sum() % (1 << 31))]

    def collate(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` [B, T] right-padded with <pad>, ``targets`` [B, T] (next token on completions, else -100)."""
        width = int(self.lengths[rows].max())
        input_ids = np.full((len(rows), width), TokenLayout.PAD, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for b, row in enumerate(rows):
            start, length, prompt = self.offsets[row], self.lengths[row], self.prompt_lengths[row]
            seq = self.tokens[start : start + length]
            input_ids[b, :length] = seq
            # position t predicts seq[t + 1]; the completion starts at index `prompt`
            targets[b, prompt - 1 : length - 1] = seq[prompt:]
        return torch.from_numpy(input_ids), torch.from_numpy(targets)


def epoch_batches(lengths: np.ndarray, batch_size: int, bucket_batches: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: shuffled examples, sorted by length inside windows, batches shuffled.

    Deterministic in ``(seed, epoch)``. Every epoch has the same number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batches_per_epoch(num_examples: int, batch_size: int, bucket_batches: int) -> int:
    window = batch_size * bucket_batches
    full, rest = divmod(num_examples, window)
    return full * bucket_batches + math.ceil(rest / batch_size)


def total_steps(recipe: TargetRecipe, num_examples: int) -> int:
    steps = math.ceil(recipe.epochs * batches_per_epoch(num_examples, recipe.batch_size, recipe.bucket_batches))
    return min(steps, recipe.max_steps) if recipe.max_steps is not None else steps


# -- optimisation --------------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, recipe: TargetRecipe, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (linear and embedding weights) only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.adam_betas, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: TargetRecipe, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio * steps``, then cosine from lr to ``lr * min_lr_ratio``."""
    warmup = int(recipe.warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def completion_loss(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose target is not -100."""
    logits = model(input_ids=input_ids, use_cache=False).logits  # [B, T, V']
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


# -- the run -------------------------------------------------------------------------------------------
def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _result_recipe_dict(recipe: TargetRecipe) -> dict:
    payload = recipe.to_dict()
    for field in RUN_CONTROL_FIELDS:
        payload.pop(field)
    payload["adam_betas"] = list(payload["adam_betas"])
    return payload


def _write_loss_log(out_dir: Path, log: list[tuple[int, float]]) -> None:
    (out_dir / LOSS_FILE).write_text(json.dumps([{"step": s, "loss": loss} for s, loss in log]))


def plot_loss(log: list[tuple[int, float]], evals: list[dict], path: Path) -> Path | None:
    """The training loss (and, with validation, the validation loss and its best step) as a PNG;
    None when matplotlib is not installed or nothing is logged yet."""
    plt = pyplot()
    if plt is None or not log:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s for s, _ in log], [loss for _, loss in log], label="training loss")
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], marker="o", label="validation loss")
        best = [e for e in evals if e["best"]][-1]
        ax.axvline(best["step"], color="grey", linestyle=":", label=f"best validation (step {best['step']})")
    ax.set(xlabel="step", ylabel="cross-entropy (completion tokens)", yscale="log", title="target training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def free_memory(device: torch.device) -> int:
    """Bytes ``device`` can still allocate: free GPU memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil  # a dependency of vllm

    return psutil.virtual_memory().available


def require_memory(
    recipe: TargetRecipe, layout: TokenLayout, examples: TokenizedExamples, device: torch.device
) -> None:
    """Raise InsufficientMemoryError when ``TargetRecipe.training_bytes`` (a lower bound) for the longest
    batch exceeds ``device``'s free memory: a clear refusal instead of an allocator error mid-run."""
    vocab = padded_vocab_size(layout)
    batch = min(recipe.batch_size, len(examples))
    longest = int(examples.lengths.max())
    activation_bytes = 2 if device.type == "cuda" and recipe.bf16 else 4
    state, activations = recipe.training_bytes(vocab, batch * longest, activation_bytes)
    free = free_memory(device)
    if state + activations > free:
        gib = 2**30
        raise InsufficientMemoryError(
            f"recipe {recipe.name!r} needs at least {(state + activations) / gib:.1f} GiB to train on {device} "
            f"({state / gib:.1f} GiB of fp32 weights, gradients and AdamW moments for "
            f"{recipe.num_parameters(vocab) / 1e9:.2f}B parameters, {activations / gib:.1f} GiB of activations "
            f"for batches of {batch} x {longest} tokens) but {device} has {free / gib:.1f} GiB free: "
            "train it on a GPU that has the memory, or choose a smaller recipe"
        )


def _write_val_log(out_dir: Path, recipe: TargetRecipe, val: dict) -> None:
    payload = {
        "metric": _metric_name(recipe),
        "users": val["users"],
        "best_step": val["best_step"],
        "best": val["best_value"],
        "stopped_early": val["stopped_early"],
        "evals": val["evals"],
    }
    (out_dir / VAL_FILE).write_text(json.dumps(payload, indent=1))


def _metric_name(recipe: TargetRecipe) -> str:
    return f"recall@{recipe.val_beam}" if recipe.val_metric == "recall" else "loss"


def _val_key(recipe: TargetRecipe, metrics: dict) -> tuple[float, ...]:
    """Larger is better: (Recall@K, -loss) or (-loss,)."""
    if recipe.val_metric == "recall":
        return (metrics[f"recall@{recipe.val_beam}"], -metrics["loss"])
    return (-metrics["loss"],)


def train_target(
    recipe: TargetRecipe,
    data: InteractionData,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train (or continue training) the target of ``recipe`` on ``data``'s training split.

    Returns after all steps or an early stop (``finished=True``, checkpoint written: the weights of the
    best validation when ``recipe.eval_every`` > 0, else the last ones), or when the time budget runs
    out or a SIGTERM / SIGINT arrives (``finished=False``, state saved, ``stopped_by`` says why): call
    again to continue. ``resume=False`` starts over.
    """
    with StopSignals() as stop:
        return _train_target(recipe, data, out_dir, device, resume, progress, stop)


def _train_target(
    recipe: TargetRecipe,
    data: InteractionData,
    out_dir: str | Path,
    device: str | torch.device | None,
    resume: bool,
    progress: bool,
    stop: StopSignals,
) -> TrainResult:
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(device)
    state_path = out_dir / STATE_FILE
    best_dir, checkpoint_dir = out_dir / BEST_DIR, out_dir / CHECKPOINT_DIR

    examples = TokenizedExamples(listwise_examples(data, recipe.max_history, recipe.list_items))
    steps = total_steps(recipe, len(examples))
    bpe = batches_per_epoch(len(examples), recipe.batch_size, recipe.bucket_batches)
    validating = recipe.eval_every > 0
    val_set = ValidationSet.build(data, recipe.max_history, recipe.val_users, recipe.seed) if validating else None
    # the validation record: every score, the best so far, validations since it improved
    val = {
        "users": len(val_set) if val_set else 0,
        "evals": [],
        "best_step": None,
        "best_value": None,
        "best_key": None,
        "bad_evals": 0,
        "stopped_early": False,
    }

    def result(
        finished: bool, loss: float | None, checkpoint: Path | None, rate: float, stopped_by: str | None = None
    ) -> TrainResult:
        plot = out_dir / PLOT_FILE
        return TrainResult(
            finished,
            step,
            steps,
            loss,
            checkpoint,
            time.monotonic() - started,
            rate,
            val["best_step"],
            val["best_value"],
            val["stopped_early"],
            stopped_by,
            plot if plot.exists() else None,
        )

    state = None
    if resume and state_path.exists():
        state = load_state(state_path, "cpu", ("recipe", "data", "step", "finished"), "train_target")
        if state["recipe"] != _result_recipe_dict(recipe) or state["data"] != examples.fingerprint():
            raise RecipeError(
                f"{state_path} was written by a run with another recipe or other data; "
                "use another out_dir, or resume=False to start over"
            )
        val = state.get("val", val)
        if state["finished"]:
            step = state["step"]
            if not (checkpoint_dir / "config.json").exists() and (best_dir / "config.json").exists():
                replace_folder(best_dir, checkpoint_dir)  # the previous call stopped between the two writes
            if not (checkpoint_dir / "config.json").exists():
                raise FileNotFoundError(
                    f"{state_path} says the run finished but {checkpoint_dir} is missing; resume=False retrains"
                )
            loss = state["log"][-1][1] if state["log"] else None
            return result(True, loss, checkpoint_dir, 0.0)
    elif best_dir.exists():
        shutil.rmtree(best_dir)  # left by an earlier run in this folder

    require_memory(recipe, data.catalog.layout, examples, device)
    model = build_model(recipe, data.catalog.layout, device=device)
    add_hidden_dropout(model, recipe.hidden_dropout)
    model.train()
    optimizer = make_optimizer(model, recipe, device)
    scheduler = make_scheduler(optimizer, recipe, steps)
    step, log, plan_epoch, plan = 0, [], -1, []
    trained_seconds = 0.0
    window_loss = torch.zeros((), device=device)  # sum of the losses since the last log entry
    window_steps = 0  # steps since the last log entry
    if state is not None:
        step, log, trained_seconds = state["step"], [tuple(x) for x in state["log"]], state["trained_seconds"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        plan_epoch, plan = state["plan_epoch"], state["plan"]
        window_loss, window_steps = state["window_loss"].to(device), state["window_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        del state
    else:
        torch.manual_seed(recipe.seed)

    def snapshot(finished: bool) -> dict:
        """The resumable state; a finished run keeps only its record (the weights are in checkpoint/)."""
        record = {
            "recipe": _result_recipe_dict(recipe),
            "data": examples.fingerprint(),
            "step": step,
            "log": log,
            "val": val,
            "trained_seconds": trained_seconds + (time.monotonic() - started),
            "finished": finished,
        }
        if finished:
            return record
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return record | {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "plan_epoch": plan_epoch,
            "plan": plan,
            "window_loss": window_loss.detach().cpu().clone(),
            "window_steps": window_steps,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        }

    def save_weights(folder: Path) -> Path:
        return save_checkpoint(model, build_tokenizer(data.catalog.layout), data.catalog, recipe, folder)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and recipe.bf16)
    metric = _metric_name(recipe)

    def validate() -> None:
        """Score the validation set, keep the weights if they are the best so far, count patience."""
        val_started = time.monotonic()
        with autocast:
            scores = val_set.score(model, recipe.val_beam, recipe.batch_size)
        key = _val_key(recipe, scores)
        improved = val["best_key"] is None or key > tuple(val["best_key"])
        if improved:
            save_weights(best_dir)
            val.update(best_step=step, best_value=scores[metric], best_key=list(key), bad_evals=0)
        else:
            val["bad_evals"] += 1
        entry = {"step": step, "epoch": round(step / bpe, 4), **scores, "best": improved}
        val["evals"].append(entry | {"seconds": round(time.monotonic() - val_started, 3)})
        if recipe.patience and val["bad_evals"] >= recipe.patience and step < steps:
            val["stopped_early"] = True
        _write_val_log(out_dir, recipe, val)

    budget_s = recipe.time_budget_minutes * 60
    save_s = recipe.save_every_minutes * 60
    last_save = time.monotonic()
    tokens_seen = 0  # real tokens trained in this call
    val_seconds = 0.0  # time of this call spent validating (not counted in the throughput)
    loop_started = time.monotonic()  # throughput excludes loading and saving
    bar = tqdm(total=steps, initial=step, disable=not progress, desc=f"train {recipe.name}", dynamic_ncols=True)
    postfix: dict[str, str] = {}
    try:
        while step < steps and not val["stopped_early"] and stop.signal is None:
            epoch, index = divmod(step, bpe)
            if epoch != plan_epoch:
                plan = epoch_batches(examples.lengths, recipe.batch_size, recipe.bucket_batches, recipe.seed, epoch)
                plan_epoch = epoch
            input_ids, targets = examples.collate(plan[index])  # [B, T], [B, T]
            tokens_seen += int(examples.lengths[plan[index]].sum())
            input_ids = input_ids.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast:
                loss = completion_loss(model, input_ids, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            window_loss += loss.detach()
            window_steps += 1
            if validating and (step % recipe.eval_every == 0 or step == steps):
                validate_started = time.monotonic()
                validate()
                val_seconds += time.monotonic() - validate_started
                last = val["evals"][-1]
                postfix.update(val=f"{last[metric]:.4f}", best=f"{val['best_value']:.4f}@{val['best_step']}")
            if window_steps == recipe.log_every or step == steps or val["stopped_early"]:
                log.append((step, window_loss.item() / window_steps))
                window_loss.zero_()
                window_steps = 0
                rate = tokens_seen / max(time.monotonic() - loop_started - val_seconds, 1e-9)
                postfix.update(loss=f"{log[-1][1]:.4f}", tok_s=f"{rate:,.0f}")
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            now = time.monotonic()
            if now - started >= budget_s:
                break  # the state is saved below
            if now - last_save >= save_s:
                save_state(snapshot(finished=False), state_path)
                _write_loss_log(out_dir, log)
                last_save = now
    finally:
        bar.close()

    loop_seconds = time.monotonic() - loop_started - val_seconds
    finished = step >= steps or val["stopped_early"]
    checkpoint = None
    if finished:
        if not validating:
            save_weights(checkpoint_dir)
        save_state(snapshot(finished=True), state_path)  # first: a crash before the move is recovered
        if validating:
            replace_folder(best_dir, checkpoint_dir)  # the best validation's weights
        checkpoint = checkpoint_dir
    else:
        save_state(snapshot(finished=False), state_path)
    _write_loss_log(out_dir, log)
    plot_loss(log, val["evals"], out_dir / PLOT_FILE)
    # a signal that came during the final writes still asks the caller to stop
    stopped_by = stop.signal.name if stop.signal is not None else None if finished else "time budget"
    loss = log[-1][1] if log else None
    return result(finished, loss, checkpoint, tokens_seen / max(loop_seconds, 1e-9), stopped_by)
