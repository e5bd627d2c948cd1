"""Train the target from scratch on list-wise generation, resumably, in time-boxed chunks.

Each example is ``prompt + completion`` (``vllm_padrec.data.listwise_examples``: sliding windows over
every user's training sequence); the loss is next-token cross-entropy on the completion tokens only.
Batches hold ``batch_size`` examples of similar length (sorted inside windows of ``bucket_batches``
batches, then the batches shuffled), right-padded: under the causal mask no real token ever attends to
a pad, so no attention mask is needed and SDPA runs its fused causal kernels. AdamW with linear
warm-up and a cosine decay to ``lr * min_lr_ratio``; bf16 autocast on CUDA.
``recipe.micro_batch_size`` cuts a batch into passes of that many examples, each loss divided by the whole
batch's count of scored tokens, so that the passes' gradients add up to the batch's (the same optimiser step on a
GPU with less memory); a step that runs out of GPU memory drops its gradients, halves the passes and runs again.

Validation (``recipe.eval_every`` > 0): every ``eval_every`` steps and after the last one the model
is scored on a fixed subset of validation users (``vllm_padrec.target.evaluate.ValidationSet``: loss
of the first validation item, Recall@K of top-K beam search); the weights with the best
``recipe.val_metric`` are written to ``out_dir/best/`` and become ``out_dir/checkpoint/`` at the end,
and after ``recipe.patience`` validations without improvement the run stops early. The curve is in
``out_dir/val.json``. The list-wise examples come from the training split only: the valid split is
the held-out set that chooses the checkpoint (and test prompts, train + valid history, are never
trained on either).

A call trains for at most ``recipe.time_budget_minutes`` and saves ``out_dir/train_state.pt`` (model,
optimiser, step, RNG, the epoch's batch order, loss log, validation record; ``vllm_padrec.training.loop``) every
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

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import InteractionData, ListwiseExample, listwise_examples
from vllm_padrec.durability import StopSignals, replace_folder
from vllm_padrec.errors import InsufficientMemoryError
from vllm_padrec.target.config import RecipeError, TargetRecipe
from vllm_padrec.target.evaluate import ValidationSet
from vllm_padrec.target.model import add_hidden_dropout, build_model, padded_vocab_size, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer
from vllm_padrec.training.loop import (
    LoopConfig,
    TrainingLoop,
    TrainingTask,
    WarmupCosine,
    load_loop_state,
    plot_training,
    stoppable,
)

STATE_FILE = "train_state.pt"  # resumable state inside out_dir
LOSS_FILE = "loss.json"  # [{"step": s, "loss": mean loss of steps s-log_every+1..s}, ...]
PLOT_FILE = "loss.png"  # the training loss (and the validation loss) over the steps
CHECKPOINT_DIR = "checkpoint"  # the final HF checkpoint inside out_dir
BEST_DIR = "best"  # while training: the checkpoint of the best validation so far (then checkpoint/)
VAL_FILE = "val.json"  # {"metric", "best_step", "best", "stopped_early", "evals": [{"step", "loss", ...}]}
IGNORE = -100  # target id of positions that carry no loss (prompt and padding)
# fields that may change between the calls of one run: they steer the run, not the result
RUN_CONTROL_FIELDS = ("time_budget_minutes", "save_every_minutes", "micro_batch_size")


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


def completion_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, scored: int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy summed over positions whose target is not -100, divided by ``scored``
    (default: their number, the mean): a part of a batch divides by the whole batch's count, so that the
    parts' gradients add up to the batch's."""
    logits = model(input_ids=input_ids, use_cache=False).logits  # [B, T, V']
    if scored is None:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
    summed = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return summed / scored


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
    batch = min(recipe.micro_batch_size or recipe.batch_size, len(examples))
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
            f"for passes of {batch} x {longest} tokens) but {device} has {free / gib:.1f} GiB free: "
            "train it on a GPU that has the memory, with a smaller micro_batch_size (--micro-batch-size), "
            "or choose a smaller recipe"
        )


def _metric_name(recipe: TargetRecipe) -> str:
    return f"recall@{recipe.val_beam}" if recipe.val_metric == "recall" else "loss"


def _val_key(recipe: TargetRecipe, metrics: dict) -> tuple[float, ...]:
    """Larger is better: (Recall@K, -loss) or (-loss,)."""
    if recipe.val_metric == "recall":
        return (metrics[f"recall@{recipe.val_beam}"], -metrics["loss"])
    return (-metrics["loss"],)


def _new_val_record(val_set: ValidationSet | None) -> dict:
    """The validation record: every score, the best so far, validations since it improved."""
    return {
        "users": len(val_set) if val_set else 0,
        "evals": [],
        "best_step": None,
        "best_value": None,
        "best_key": None,
        "bad_evals": 0,
        "stopped_early": False,
    }


class TargetTask(TrainingTask):
    """The target's part of the training loop: the epoch's batch order, the completion loss, and the
    validation that keeps the best weights in ``out_dir/best/`` and stops after ``patience``."""

    def __init__(
        self,
        recipe: TargetRecipe,
        data: InteractionData,
        examples: TokenizedExamples,
        model: torch.nn.Module,
        device: torch.device,
        out_dir: Path,
    ) -> None:
        self.recipe, self.data, self.examples, self.model, self.device, self.out_dir = (
            recipe,
            data,
            examples,
            model,
            device,
            out_dir,
        )
        self.steps = total_steps(recipe, len(examples))
        self.batches_per_epoch = batches_per_epoch(len(examples), recipe.batch_size, recipe.bucket_batches)
        self.validating = recipe.eval_every > 0
        self.val_set = (
            ValidationSet.build(data, recipe.max_history, recipe.val_users, recipe.seed) if self.validating else None
        )
        self.val = _new_val_record(self.val_set)
        self.plan_epoch, self.plan = -1, []  # the batches of epoch plan_epoch
        self.micro_batch = recipe.micro_batch_size or recipe.batch_size  # examples a forward (``backward``)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and recipe.bf16)
        self.tokens_seen = 0  # real tokens trained in this call
        self.val_seconds = 0.0  # time of this call spent validating (not counted in the throughput)
        self.started = time.monotonic()  # for the throughput on the progress bar

    @property
    def stopped_early(self) -> bool:
        return self.val["stopped_early"]

    def batch_rows(self, step: int) -> np.ndarray:  # [B] example indices of optimizer step ``step``
        epoch, index = divmod(step, self.batches_per_epoch)
        if epoch != self.plan_epoch:
            recipe = self.recipe
            self.plan = epoch_batches(
                self.examples.lengths, recipe.batch_size, recipe.bucket_batches, recipe.seed, epoch
            )
            self.plan_epoch = epoch
        return self.plan[index]

    def backward(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's gradients, ``micro_batch`` examples at a time; after a CUDA out-of-memory error the
        step runs again with half as many (and later steps keep the smaller size)."""
        rows = self.batch_rows(step)
        self.tokens_seen += int(self.examples.lengths[rows].sum())
        while True:
            try:
                return self._accumulate(rows)
            except torch.OutOfMemoryError:
                failed = min(self.micro_batch, len(rows))  # examples a pass when memory ran out
                if failed <= 1:
                    raise
            # outside the except block, whose traceback holds the failed attempt's tensors
            self.model.zero_grad(set_to_none=True)  # the parts done before the error
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.micro_batch = failed // 2
            print(
                f"train {self.recipe.name}: out of GPU memory at {failed} examples a pass; step {step} runs again "
                f"at {self.micro_batch} (micro_batch_size: the same step in parts)",
                file=sys.stderr,
                flush=True,
            )

    def _accumulate(self, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = [self.examples.collate(rows[i : i + self.micro_batch]) for i in range(0, len(rows), self.micro_batch)]
        # one pass: the mean; several: each divided by the whole batch's count of scored tokens
        scored = sum(int((targets != IGNORE).sum()) for _, targets in parts) if len(parts) > 1 else None
        total = torch.zeros((), device=self.device)
        for input_ids, targets in parts:  # [b, t], [b, t]
            input_ids = input_ids.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self.autocast:
                part = completion_loss(self.model, input_ids, targets, scored)
            part.backward()
            total += part.detach()
        return total, {}

    def after_step(self, step: int) -> None:
        if self.validating and (step % self.recipe.eval_every == 0 or step == self.steps):
            self.validate(step)

    def validate(self, step: int) -> None:
        """Score the validation set, keep the weights if they are the best so far, count patience."""
        recipe, val = self.recipe, self.val
        started = time.monotonic()
        with self.autocast:
            scores = self.val_set.score(self.model, recipe.val_beam, recipe.batch_size)
        key = _val_key(recipe, scores)
        improved = val["best_key"] is None or key > tuple(val["best_key"])
        if improved:
            self.save_weights(self.out_dir / BEST_DIR)
            val.update(best_step=step, best_value=scores[_metric_name(recipe)], best_key=list(key), bad_evals=0)
        else:
            val["bad_evals"] += 1
        entry = {"step": step, "epoch": round(step / self.batches_per_epoch, 4), **scores, "best": improved}
        val["evals"].append(entry | {"seconds": round(time.monotonic() - started, 3)})
        if recipe.patience and val["bad_evals"] >= recipe.patience and step < self.steps:
            val["stopped_early"] = True
        self.write_val_log()
        self.val_seconds += time.monotonic() - started

    def write_val_log(self) -> None:
        val = self.val
        payload = {
            "metric": _metric_name(self.recipe),
            "users": val["users"],
            "best_step": val["best_step"],
            "best": val["best_value"],
            "stopped_early": val["stopped_early"],
            "evals": val["evals"],
        }
        (self.out_dir / VAL_FILE).write_text(json.dumps(payload, indent=1))

    def save_weights(self, folder: Path) -> Path:
        layout = self.data.catalog.layout
        return save_checkpoint(self.model, build_tokenizer(layout), self.data.catalog, self.recipe, folder)

    def tokens_per_second(self, loop_seconds: float) -> float:
        return self.tokens_seen / max(loop_seconds - self.val_seconds, 1e-9)

    def postfix(self) -> dict[str, str]:
        shown = {"tok_s": f"{self.tokens_per_second(time.monotonic() - self.started):,.0f}"}
        if self.val["evals"]:
            last, metric = self.val["evals"][-1], _metric_name(self.recipe)
            shown |= {"val": f"{last[metric]:.4f}", "best": f"{self.val['best_value']:.4f}@{self.val['best_step']}"}
        return shown

    def state(self, resumable: bool) -> dict:
        """The run's identity and validation record, and the epoch's batch order to continue it."""
        record = {"recipe": _result_recipe_dict(self.recipe), "data": self.examples.fingerprint(), "val": self.val}
        return record | {"plan_epoch": self.plan_epoch, "plan": self.plan} if resumable else record

    def restore(self, state: dict) -> None:
        self.val, self.plan_epoch, self.plan = state["val"], state["plan_epoch"], state["plan"]

    def finish(self, loop: TrainingLoop) -> Path:
        """Write ``out_dir/checkpoint/`` (the best validation's weights, or the last ones without
        validation) and the finished state, in an order that a resumed call can complete."""
        checkpoint_dir = self.out_dir / CHECKPOINT_DIR
        if not self.validating:
            self.save_weights(checkpoint_dir)
        loop.save(weights=False)  # first: a crash before best/ moves is recovered (_finished_checkpoint)
        if self.validating:
            replace_folder(self.out_dir / BEST_DIR, checkpoint_dir)
        return checkpoint_dir


def _saved_state(out_dir: Path, recipe: TargetRecipe, examples: TokenizedExamples, resume: bool) -> dict | None:
    """The state of the run to continue, None to start over (a stale ``best/`` is removed then)."""
    state_path = out_dir / STATE_FILE
    if not (resume and state_path.exists()):
        if (out_dir / BEST_DIR).exists():
            shutil.rmtree(out_dir / BEST_DIR)  # left by an earlier run in this folder
        return None
    state = load_loop_state(state_path, "cpu", ("recipe", "data", "step", "finished"), "train_target")
    if state["recipe"] != _result_recipe_dict(recipe) or state["data"] != examples.fingerprint():
        raise RecipeError(
            f"{state_path} was written by a run with another recipe or other data; "
            "use another out_dir, or resume=False to start over"
        )
    return state


def _finished_checkpoint(out_dir: Path) -> Path:
    """The checkpoint of a finished run, completing a call that stopped between its final writes."""
    best_dir, checkpoint_dir = out_dir / BEST_DIR, out_dir / CHECKPOINT_DIR
    if not (checkpoint_dir / "config.json").exists() and (best_dir / "config.json").exists():
        replace_folder(best_dir, checkpoint_dir)  # the previous call stopped between the two writes
    if not (checkpoint_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{out_dir / STATE_FILE} says the run finished but {checkpoint_dir} is missing; resume=False retrains"
        )
    return checkpoint_dir


def _loop_config(recipe: TargetRecipe, steps: int, out_dir: Path, started: float, progress: bool) -> LoopConfig:
    return LoopConfig(
        lr=recipe.lr,
        schedule=WarmupCosine(int(recipe.warmup_ratio * steps), steps, recipe.min_lr_ratio),
        grad_clip=recipe.grad_clip,
        log_every=recipe.log_every,
        state_path=out_dir / STATE_FILE,
        log_path=out_dir / LOSS_FILE,
        save_every_seconds=recipe.save_every_minutes * 60,
        time_budget_s=recipe.time_budget_minutes * 60,
        budget_start=started,  # the budget covers the whole call
        min_steps=1,  # every call makes progress, however short its budget
        rng_seed=recipe.seed,  # dropout
        progress=progress,
        description=f"train {recipe.name}",
    )


@stoppable
def train_target(
    recipe: TargetRecipe,
    data: InteractionData,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    *,
    stop: StopSignals,  # given by @stoppable
) -> TrainResult:
    """Train (or continue training) the target of ``recipe`` on ``data``'s training split.

    Returns after all steps or an early stop (``finished=True``, checkpoint written: the weights of the
    best validation when ``recipe.eval_every`` > 0, else the last ones), or when the time budget runs
    out or a SIGTERM / SIGINT arrives (``finished=False``, state saved, ``stopped_by`` says why): call
    again to continue. ``resume=False`` starts over.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(device)
    examples = TokenizedExamples(listwise_examples(data, recipe.max_history, recipe.list_items))
    steps = total_steps(recipe, len(examples))
    state = _saved_state(out_dir, recipe, examples, resume)
    if state is not None and state["finished"]:
        val, log = state["val"], state["log"]
        result = TrainResult(True, state["step"], steps, log[-1]["loss"] if log else None, None, 0.0, 0.0)
        return _with_record(result, out_dir, val, _finished_checkpoint(out_dir), started)

    require_memory(recipe, data.catalog.layout, examples, device)
    model = build_model(recipe, data.catalog.layout, device=device)
    add_hidden_dropout(model, recipe.hidden_dropout)
    model.train()
    optimizer = make_optimizer(model, recipe, device)
    task = TargetTask(recipe, data, examples, model, device, out_dir)
    loop = TrainingLoop(task, model, optimizer, _loop_config(recipe, steps, out_dir, started, progress), stop, state)
    del state
    loop.run()

    checkpoint = task.finish(loop) if loop.finished else None
    if checkpoint is None:
        loop.save()
    plot_training(loop.log, out_dir / PLOT_FILE, "target training", task.val["evals"])
    loss = loop.log[-1]["loss"] if loop.log else None
    rate = task.tokens_per_second(loop.run_seconds)
    result = TrainResult(loop.finished, loop.step, steps, loss, None, 0.0, rate, stopped_by=loop.stopped_by())
    return _with_record(result, out_dir, task.val, checkpoint, started)


def _with_record(result: TrainResult, out_dir: Path, val: dict, checkpoint: Path | None, started: float) -> TrainResult:
    """``result`` with its checkpoint, the call's wall time, the validation record and the plot."""
    plot = out_dir / PLOT_FILE
    return dataclasses.replace(
        result,
        checkpoint=checkpoint,
        seconds=time.monotonic() - started,
        best_step=val["best_step"],
        best_metric=val["best_value"],
        stopped_early=val["stopped_early"],
        loss_plot=plot if plot.exists() else None,
    )
