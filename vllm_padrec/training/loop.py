"""One resumable training loop, under both trainers (the target's and the drafts').

A trainer says what it trains by a ``TrainingTask`` (the loss of step s, or its own backward of it,
what runs after a step such as validation, its own resumable fields); ``TrainingLoop`` owns everything else:

- the step: the learning rate of the step (``WarmupCosine`` times the group's ``lr_scale``), backward,
  gradient clipping, the optimizer step;
- the loss log: every metric the task returns is averaged over ``log_every`` steps (the last window of
  a run is logged too, even when cut short); the window survives a stop, so a resumed run logs what an
  uninterrupted one logs;
- stopping: at the last step, when the task says the run is complete (early stopping), at a SIGTERM or
  SIGINT (``StopSignals``, read at each step boundary), after ``stop_after_steps`` steps of this call,
  or at the time budget;
- saving: the state (weights, optimizer, step, log, the open log window, torch's RNG when the task
  draws from it, and the task's own fields) every ``save_every_steps`` steps or ``save_every_seconds``
  seconds and when the loop stops, whole or not at all (``durability.save_state``), with the log file
  beside it; ``restore`` continues a saved run bit for bit (on CPU); ``load_loop_state`` reads it back,
  and refuses a state file of another layout (one saved by an older vllm-padrec) with a CheckpointError;
- the progress bar, and the loss plot (``plot_training``).

A trainer wraps its entry point in ``@stoppable``: the whole call runs inside ``StopSignals``, so a
signal that arrives while loading or during the final writes also stops the caller.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vllm_padrec.durability import StopSignals, load_state, save_state
from vllm_padrec.errors import CheckpointError
from vllm_padrec.plotting import pyplot

TIME_BUDGET = "time budget"  # a stop reason (``TrainingLoop.stopped_by``)
STEP_LIMIT = "step limit"  # ... after ``stop_after_steps`` steps of this call
RECORD_KEYS = ("step", "log", "elapsed_s")  # in every state the loop saves (``TrainingLoop.snapshot``)
RESUMABLE_KEYS = ("model", "optimizer", "window")  # ... and in one an unfinished run continues from


def stoppable(train: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``train`` inside ``StopSignals``, passing it as the ``stop`` keyword argument."""

    @functools.wraps(train)
    def run(*args: Any, **kwargs: Any) -> Any:
        with StopSignals() as stop:
            return train(*args, **kwargs, stop=stop)

    return run


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up over ``warmup_steps`` (step s at (s + 1) / warmup_steps of the peak), then a
    cosine decay to ``min_lr_ratio`` of the peak at ``total_steps``."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def factor(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) over the peak learning rate."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LoopConfig:
    lr: float  # peak learning rate; a parameter group trains at lr * schedule * its "lr_scale" (default 1)
    schedule: WarmupCosine
    grad_clip: float  # max global gradient norm; 0 = off
    log_every: int  # steps per loss-log entry
    state_path: Path  # the resumable state file
    log_path: Path  # the loss log (JSON list of entries), written with every save
    log_schedule: bool = False  # log entries also carry the step's "lr" and the training "elapsed_s"
    save_every_steps: int | None = None  # periodic saves by steps ...
    save_every_seconds: float | None = None  # ... or by wall time
    time_budget_s: float = math.inf  # the loop stops once this has passed since ``budget_start``
    budget_start: float | None = None  # time.monotonic() the budget counts from (None: when the loop starts)
    min_steps: int = 0  # steps a call makes before it checks the time budget (1: every call makes progress)
    stop_after_steps: int | None = None  # this call stops after that many steps (chunked jobs)
    rng_seed: int | None = None  # the task draws from torch's RNG (dropout): seeded so, saved and restored
    progress: bool = True  # a tqdm progress bar
    description: str = "train"  # its label

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps


def load_loop_state(path: Path, map_location: str | torch.device, required: tuple[str, ...], writer: str) -> dict:
    """The state saved in ``path`` by ``writer`` (``durability.load_state``, which checks the task's
    ``required`` keys); raises CheckpointError when the loop's own keys are missing, naming the file and
    how to go on."""
    state = load_state(path, map_location, required, writer)
    needed = RECORD_KEYS if state.get("finished") else RECORD_KEYS + RESUMABLE_KEYS
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} was saved by an older version of vllm-padrec (no {missing[0]!r}) and cannot be resumed: "
            "delete it to train from the start, or train into a new --out folder"
        )
    return state


class TrainingTask:
    """What a trainer plugs into ``TrainingLoop``; every hook but ``loss`` (or ``backward``) may be left as it is."""

    stopped_early = False  # True once the run is complete before its last step (early stopping)

    def loss(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of optimizer step ``step`` (0-based) to back-propagate, and the metrics to log
        (each a scalar tensor; the loss is logged as "loss")."""
        raise NotImplementedError

    def backward(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Back-propagate the loss of optimizer step ``step`` into the gradients; the loss (detached) and
        the metrics to log. A task that accumulates gradients over parts of a batch overrides it."""
        loss, metrics = self.loss(step)
        loss.backward()
        return loss.detach(), metrics

    def after_step(self, step: int) -> None:
        """Runs after optimizer step ``step`` (1-based: the steps done), before it is logged."""

    def postfix(self) -> dict[str, str]:
        """Shown on the progress bar beside the logged loss."""
        return {}

    def state(self, resumable: bool) -> dict:
        """The task's fields of the saved state: what identifies the run, and with ``resumable`` what a
        continuing call needs."""
        return {}

    def restore(self, state: dict) -> None:
        """Continue from a state written by ``state``."""


class TrainingLoop:
    """The step loop of one training call (module docstring)."""

    def __init__(
        self,
        task: TrainingTask,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        config: LoopConfig,
        stop: StopSignals,
        state: dict | None = None,  # a saved state to continue from (``load_loop_state``)
    ) -> None:
        self.task, self.model, self.optimizer, self.config, self.stop = task, model, optimizer, config, stop
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.step = 0  # optimizer steps done, over every call
        self.log: list[dict] = []  # the loss log
        self.elapsed_before = 0.0  # seconds in the step loop of the earlier calls
        self.sums: dict[str, Tensor] = {}  # per metric: its sum over the steps since the last log entry
        self.count = 0  # steps since the last log entry
        self.started = 0.0  # time.monotonic() this call's step loop started
        self.running = False  # inside ``run``
        self.run_seconds = 0.0  # this call's time in the step loop
        self.reason: str | None = None  # why the step loop stopped before the last step (``stopped_by``)
        if state is not None:
            self._restore(state)
        elif config.rng_seed is not None:
            torch.manual_seed(config.rng_seed)

    # -- state -----------------------------------------------------------------------------------------
    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.log, self.elapsed_before = state["step"], state["log"], state["elapsed_s"]
        window = state["window"]  # a stop between two log entries
        self.sums = {name: total.to(self.device) for name, total in window["sums"].items()}
        self.count = window["count"]
        if self.config.rng_seed is not None:
            torch.set_rng_state(state["rng"]["torch"])
            if self.device.type == "cuda" and state["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.task.restore(state)

    @property
    def elapsed_s(self) -> float:
        """Seconds in the step loop over every call."""
        this_call = time.monotonic() - self.started if self.running else self.run_seconds
        return self.elapsed_before + this_call

    def snapshot(self, weights: bool = True) -> dict:
        """The resumable state; without ``weights``, a record of the run without the weights, the optimizer
        and what only a continuing call needs (a finished trainer has written its checkpoint)."""
        record = {"step": self.step, "log": self.log, "elapsed_s": self.elapsed_s, "finished": self.finished}
        record |= self.task.state(weights)
        if not weights:
            return record
        record |= {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "window": {"sums": {name: total.detach().cpu() for name, total in self.sums.items()}, "count": self.count},
        }
        if self.config.rng_seed is not None:
            cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            record["rng"] = {"torch": torch.get_rng_state(), "cuda": cuda_rng}
        return record

    def save(self, weights: bool = True) -> None:
        """The state file (whole or not at all), then the loss log."""
        save_state(self.snapshot(weights), self.config.state_path)
        self.write_log()

    def write_log(self) -> None:
        self.config.log_path.write_text(json.dumps(self.log, indent=1))

    # -- the loop --------------------------------------------------------------------------------------
    def _stop_reason(self, call_steps: int) -> str | None:
        """Why the loop stops before its next step ("" when the run is complete), None to go on."""
        config = self.config
        if self.step >= config.total_steps or self.task.stopped_early:
            return ""
        if self.stop.signal is not None:
            return self.stop.signal.name
        if config.stop_after_steps is not None and call_steps >= config.stop_after_steps:
            return STEP_LIMIT
        budget_start = self.started if config.budget_start is None else config.budget_start
        if call_steps >= config.min_steps and time.monotonic() - budget_start >= config.time_budget_s:
            return TIME_BUDGET
        return None

    def _train_step(self) -> None:
        """One optimizer step at the scheduled learning rate; its metrics join the log window."""
        factor = self.config.schedule.factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor * group.get("lr_scale", 1.0)
        loss, metrics = self.task.backward(self.step)
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        for name, value in {"loss": loss, **metrics}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.float()
        self.count += 1

    def _log_window(self) -> None:
        """Close the log window: one entry with the mean of every metric over its steps."""
        entry: dict[str, Any] = {"step": self.step}
        if self.config.log_schedule:
            entry["lr"] = self.config.lr * self.config.schedule.factor(self.step - 1)
            entry["elapsed_s"] = self.elapsed_s
        entry |= {name: float(total) / self.count for name, total in self.sums.items()}
        self.log.append(entry)
        self.sums, self.count = {}, 0

    def run(self) -> None:
        """Train until a stop (module docstring); the state is saved periodically, not at the end: the
        caller saves it with ``save`` once it has written what a finished run writes."""
        config = self.config
        self.started, self.running = time.monotonic(), True
        last_save = self.started
        call_steps = 0
        bar = tqdm(
            total=config.total_steps,
            initial=self.step,
            disable=not config.progress,
            desc=config.description,
            dynamic_ncols=True,
        )
        postfix: dict[str, str] = {}
        try:
            while (reason := self._stop_reason(call_steps)) is None:
                self._train_step()
                call_steps += 1
                self.task.after_step(self.step)
                if self.step % config.log_every == 0 or self.step == config.total_steps or self.task.stopped_early:
                    self._log_window()
                    postfix["loss"] = f"{self.log[-1]['loss']:.4f}"
                bar.set_postfix(postfix | self.task.postfix(), refresh=False)
                bar.update(1)
                if self._stop_reason(call_steps) is None and self._save_due(last_save):
                    self.save()
                    last_save = time.monotonic()
        finally:
            bar.close()
            self.run_seconds, self.running = time.monotonic() - self.started, False
        self.reason = reason or None

    def _save_due(self, last_save: float) -> bool:
        by_steps = self.config.save_every_steps is not None and self.step % self.config.save_every_steps == 0
        by_time = self.config.save_every_seconds is not None
        return by_steps or (by_time and time.monotonic() - last_save >= self.config.save_every_seconds)

    @property
    def finished(self) -> bool:
        return self.step >= self.config.total_steps or self.task.stopped_early

    def stopped_by(self) -> str | None:
        """Why the call returns before the run is finished: a signal's name (also one that came after the
        loop, during the final writes: the caller should stop), "step limit" or "time budget"; None when
        the run is finished."""
        if self.stop.signal is not None:
            return self.stop.signal.name
        return None if self.finished else self.reason


def plot_training(log: list[dict], path: Path, title: str, validation: list[dict] | None = None) -> Path | None:
    """The training loss of ``log`` (with ``validation``, the validation loss and its best step; with
    per-step agreement metrics "acc_k", a second panel of them) as a PNG; None when matplotlib is not
    installed or nothing is logged yet."""
    plt = pyplot()
    if plt is None or not log:
        return None
    steps = [entry["step"] for entry in log]
    agreement = sorted(key for key in log[-1] if key.startswith("acc_"))
    fig, axes = plt.subplots(1, 2 if agreement else 1, figsize=(10 if agreement else 6, 4), squeeze=False)
    ax_loss = axes[0][0]
    ax_loss.plot(steps, [entry["loss"] for entry in log], label="training loss")
    if validation:
        ax_loss.plot(
            [e["step"] for e in validation], [e["loss"] for e in validation], marker="o", label="validation loss"
        )
        best = [e for e in validation if e["best"]][-1]
        ax_loss.axvline(best["step"], color="grey", linestyle=":", label=f"best validation (step {best['step']})")
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax_loss.legend()
    if agreement:
        ax_acc = axes[0][1]
        for key in agreement:
            ax_acc.plot(steps, [entry.get(key, float("nan")) for entry in log], label=f"step {key[4:]}")
        ax_acc.set(xlabel="step", ylabel="top-1 agreement with the target", title="draft accuracy")
        ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
