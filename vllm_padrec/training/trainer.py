"""Train a draft (PAD-Rec, one of its ablations, EAGLE, or Medusa) by distillation from the target.

    from vllm_padrec.target.model import load_checkpoint
    from vllm_padrec.training import DraftTrainConfig, train_draft

    ckpt = load_checkpoint("runs/synthetic/target")
    result = train_draft("padrec", ckpt, data, DraftTrainConfig(), "runs/synthetic/draft-padrec", "cuda",
                         time_budget_minutes=20)
    # result.checkpoint is the folder vLLM loads:
    #   --speculative-config '{"method": "eagle", "model": "<checkpoint>", "num_speculative_tokens": 4}'
    #   (Medusa: "method": "medusa")

Methods: "padrec", its ablations and per-channel gate ("padrec_no_slot", "padrec_no_step", "padrec_no_gates",
"padrec_channel_gate"), "eagle" (see ``draft.config.VARIANTS``) and "medusa". Every method gets the same
budget: the same steps, batch size, learning-rate schedule and data order (``config.seed``);
``time_budget_minutes`` only stops a run early (``result.finished`` is False then, and ``resume=True``
continues it). So does a SIGTERM or SIGINT (``vllm_padrec.durability.StopSignals``): the state is saved at
the next step boundary, the draft written without its held-out evaluation, and ``result.stopped_by`` names the signal.

Output folder:
    out_dir/train_state.pt    resumable state (weights, optimizer, step, log)
    out_dir/draft/            the vLLM-loadable checkpoint (draft.checkpoint.save_draft; whole or not at all)
    out_dir/loss_log.json     one entry per `log_every` steps; out_dir/loss_curve.png (with matplotlib)
    out_dir/result.json       DraftTrainResult

Top-K training (AtSpeed, issue 13): with ``config.topk`` = K the sequences are the target's own top-K
beams of the dataset's training users (``training.topk_data``) and every objective reports each step's
top-K recall; ``config.objective`` "atspeed_s" or "atspeed_r" makes AtSpeed-S's or AtSpeed-R's terms the token
term (``training.losses``). On that data a batch holds whole histories (each history's K beams: AtSpeed-R's
TVD is over them), ``batch_size // topk`` of them, for every objective alike, and the held-out sequences are
whole histories too.

The tiny config (``DraftTrainConfig.tiny()``) trains in seconds on a laptop CPU; tests use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data.interactions import InteractionData
from vllm_padrec.draft.checkpoint import save_draft
from vllm_padrec.draft.config import METHODS, DraftConfig, check_objective
from vllm_padrec.draft.head import PadRecDraftHead
from vllm_padrec.draft.medusa import MedusaHeads
from vllm_padrec.durability import StopSignals
from vllm_padrec.errors import CheckpointError, PadRecError
from vllm_padrec.training.collect import FeatureSource, TrainSequence, autocast_for, training_sequences
from vllm_padrec.training.loop import (
    LoopConfig,
    TrainingLoop,
    TrainingTask,
    WarmupCosine,
    load_loop_state,
    plot_training,
    stoppable,
)
from vllm_padrec.training.losses import LossOutput, LossWeights, TopKTerms, medusa_loss, unrolled_draft_loss
from vllm_padrec.training.topk_data import (
    batch_groups,
    beam_groups,
    completion_allowed,
    topk_beam_sequences,
    training_histories,
)

STATE_FILE = "train_state.pt"
LOG_FILE = "loss_log.json"
PLOT_FILE = "loss_curve.png"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "draft"
# Config fields that do not change the trained weights: a resumed run may change them.
_OPERATIONAL_FIELDS = (
    "features",
    "max_stored_gib",
    "collect_batch_size",
    "max_eval_sequences",
    "log_every",
    "save_every",
)


@dataclass(frozen=True)
class DraftTrainConfig:
    num_draft_steps: int = 4  # γ: unrolled draft steps (PAD-Rec / EAGLE), Medusa heads, vLLM n_predict
    batch_size: int = 32  # sequences per optimizer step
    max_steps: int = 3000  # optimizer steps: the budget every method gets
    lr: float = 1e-3  # peak learning rate (AdamW)
    signal_lr_scale: float = 1.0  # PAD-Rec signal parameters (alpha, E_slot, E_step, gate) learn at lr * this
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100  # linear warmup
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    grad_clip: float = 0.5  # max global grad norm (EAGLE's 0.5); 0 = off
    reg_weight: float = 1.0  # feature regression weight (EAGLE: 1.0)
    cls_weight: float = 0.1  # token term weight: the CE (EAGLE: 0.1), or an AtSpeed objective's; Medusa: CE alone
    step_decay: float = 0.8  # loss weight of draft step / Medusa head k is step_decay ** k
    soft_labels: bool = False  # CE against the target's distribution instead of its argmax
    loss_on: str = "completion"  # "completion" (draft rounds of the recommended list) or "all"
    medusa_layers: int = 1  # residual layers per Medusa head
    features: str = "auto"  # target hidden states: "auto", "stored" or "on_the_fly" (training/collect.py)
    max_stored_gib: float = 8.0  # "auto" stores the hidden states when they fit this
    collect_batch_size: int = 64  # sequences per target forward when collecting
    max_history: int = 20  # list-wise windows (when `data` is a dataset): history items in the prompt
    list_items: int = 10  # ... and items in the completion
    holdout_fraction: float = 0.02  # sequences kept out of training for the final evaluation
    max_eval_sequences: int = 512  # evaluation cap
    log_every: int = 25  # steps per loss-log entry
    save_every: int = 250  # steps per resumable state file
    seed: int = 0  # model init and data order
    # top-K training (AtSpeed, issue 13): the data is the target's own top-K beams (``training.topk_data``)
    topk: int = 0  # K: the target's beams per history in the training sequences; 0 = list-wise windows
    topk_users: int = 2000  # histories (one per training user, seeded draw) whose beams make the data
    objective: str = "distill"  # token term: "distill" (CE to the target's token), "atspeed_s" or "atspeed_r" (topk)
    # draft steps the loss unrolls (PAD-Rec / EAGLE; Medusa's heads ignore it): 0 = all num_draft_steps; 1 = the
    # EAGLE paper's teacher-forced single step. The head drafts num_draft_steps either way (vLLM n_predict)
    trained_steps: int = 0

    def __post_init__(self) -> None:
        if self.num_draft_steps < 1 or self.batch_size < 1 or self.max_steps < 1:
            raise ValueError("num_draft_steps, batch_size and max_steps must be >= 1")
        if self.lr <= 0 or self.signal_lr_scale <= 0:
            raise ValueError(f"lr and signal_lr_scale must be > 0, got {self.lr} and {self.signal_lr_scale}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.log_every < 1 or self.save_every < 1:
            raise ValueError("log_every and save_every must be >= 1")
        if not 0 <= self.trained_steps <= self.num_draft_steps:
            raise ValueError(
                f"trained_steps must be in 0..num_draft_steps ({self.num_draft_steps}), got {self.trained_steps}"
            )
        if self.topk < 0 or self.topk_users < 1:
            raise PadRecError(f"topk must be >= 0 and topk_users >= 1, got {self.topk} and {self.topk_users}")
        check_objective("padrec", self.objective)  # a known objective (the method is train_draft's)
        if self.objective != "distill" and (self.topk < 1 or self.loss_on != "completion"):
            raise PadRecError(
                f"objective {self.objective!r} aligns the draft with the target's top-K beams: it needs topk >= 1 "
                f"and loss_on 'completion', got topk={self.topk}, loss_on={self.loss_on!r}"
            )
        self.loss_weights()  # validates the loss fields

    @classmethod
    def tiny(cls, **changes: Any) -> DraftTrainConfig:
        """Seconds on a laptop CPU: what the tests train."""
        values = dict(
            num_draft_steps=3,
            batch_size=8,
            max_steps=40,
            lr=3e-3,
            warmup_steps=4,
            log_every=5,
            save_every=10,
            max_history=4,
            list_items=3,
            holdout_fraction=0.1,
            max_eval_sequences=32,
            collect_batch_size=16,
        )
        values.update(changes)
        return cls(**values)

    def unrolled_steps(self) -> int:
        """Draft steps the unrolled loss runs (``trained_steps``, 0 meaning all of ``num_draft_steps``)."""
        return self.trained_steps or self.num_draft_steps

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.reg_weight, self.cls_weight, self.step_decay, self.soft_labels, self.loss_on)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def training_fields(self) -> dict:
        """The fields that decide the trained weights (a resumed run must keep them)."""
        return {k: v for k, v in self.to_dict().items() if k not in _OPERATIONAL_FIELDS}


@dataclass
class DraftTrainResult:
    method: str
    checkpoint: str  # the vLLM-loadable folder
    steps: int  # optimizer steps done (over every resumed run)
    max_steps: int
    finished: bool  # steps == max_steps
    final_loss: float | None  # mean training loss of the last log interval
    evaluation: dict  # held-out teacher-forced metrics: accepted_length, acc_k
    feature_mode: str  # "stored" or "on_the_fly"
    elapsed_s: float  # time in the training loop, over every resumed run (no collection, evaluation or saving)
    log_path: str
    plot_path: str | None
    stopped_by: str | None = None  # why an unfinished call returned: "time budget", "step limit", "SIGTERM", "SIGINT"
    objective: str = "distill"  # DraftTrainConfig.objective
    topk: int = 0  # DraftTrainConfig.topk: K of the target's beams it trained on (0: list-wise windows)


def build_draft(method: str, target: nn.Module, layout: TokenLayout, config: DraftTrainConfig) -> nn.Module:
    """A freshly initialised draft (seeded by ``config.seed``) for ``target``, on the target's device."""
    if method not in METHODS:
        raise ValueError(f"unknown draft method {method!r}; choose one of {list(METHODS)}")
    device = target.get_output_embeddings().weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if method == "medusa":
            module: nn.Module = MedusaHeads.from_target(target, config.num_draft_steps, config.medusa_layers)
            module = module.float()
        else:
            draft_config = DraftConfig.from_target(target.config, layout, config.num_draft_steps, variant=method)
            module = PadRecDraftHead(draft_config)
    module = module.to(device)
    if isinstance(module, PadRecDraftHead):
        module.attach_target(target)
    return module


# Parameters of the PAD-Rec signals (draft/head.py); everything else is the EAGLE head's.
SIGNAL_PARAMETERS = ("alpha", "slot_emb.weight", "step_emb.weight", "gate.weight", "gate.bias")


def param_groups(module: nn.Module, config: DraftTrainConfig) -> list[dict]:
    """AdamW groups: the head's own parameters at lr, PAD-Rec's signal parameters at lr * signal_lr_scale.

    The signals start switched off (alpha = 0, E_step = 0); a larger rate lets them grow within a
    short budget without changing the step count or the data every method gets."""
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    signal = [p for name, p in named if name in SIGNAL_PARAMETERS]
    groups = [{"params": [p for name, p in named if name not in SIGNAL_PARAMETERS], "lr_scale": 1.0}]
    if signal:
        groups.append({"params": signal, "lr_scale": config.signal_lr_scale})
    return groups


def batch_indices(step: int, train_units: Sequence[Sequence[int]], config: DraftTrainConfig) -> list[int]:
    """The sequences of optimizer step ``step``: a seeded permutation of the units (``training_units``) per
    epoch, ``units_per_batch`` of them, flattened (resumable, the same for every method and objective)."""
    n, per_batch = len(train_units), units_per_batch(config)
    per_epoch = max(1, n // per_batch)  # full batches only
    epoch, slot = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)[slot * per_batch : (slot + 1) * per_batch]
    return [index for i in order.tolist() for index in train_units[i]]


def units_per_batch(config: DraftTrainConfig) -> int:
    """Sequences per batch, or on top-K data whole histories per batch (at least one)."""
    return max(1, config.batch_size // config.topk) if config.topk else config.batch_size


def training_units(sequences: Sequence[TrainSequence], config: DraftTrainConfig) -> list[list[int]]:
    """What batches and the holdout are drawn by: single sequences, or on top-K data each history's beams."""
    return beam_groups(sequences, config.topk) if config.topk else [[i] for i in range(len(sequences))]


def split_holdout(units: Sequence[Sequence[int]], config: DraftTrainConfig) -> tuple[list[list[int]], list[int]]:
    """(training units, held-out sequence indices): a seeded split of the units."""
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(config.seed)).tolist()
    holdout = int(len(units) * config.holdout_fraction)
    if len(units) - holdout < 1:
        raise ValueError("no training sequence left after the holdout split: lower holdout_fraction")
    return [units[i] for i in sorted(order[holdout:])], [i for u in sorted(order[:holdout]) for i in units[u]]


def draft_loss(
    method: str,
    module: nn.Module,
    batch,
    target: nn.Module,
    config: DraftTrainConfig,
    constraint: ListConstraint | None = None,
    num_steps: int | None = None,  # draft steps unrolled; None: the training's (config.unrolled_steps())
) -> LossOutput:
    """The method's loss on one batch; on top-K data (``config.topk``) the catalog's allowed tokens along the
    beams (``constraint``, one item) give the unrolled loss its top-K terms."""
    if method == "medusa":
        return medusa_loss(module, batch, target.get_output_embeddings(), config.loss_weights())
    topk = None
    if config.topk:
        if constraint is None:
            raise ValueError("top-K training data needs the catalog's one-item constraint")
        group = batch_groups(batch, config.topk) if config.objective == "atspeed_r" else None
        topk = TopKTerms(completion_allowed(constraint, batch), config.topk, config.objective, group)
    steps = config.unrolled_steps() if num_steps is None else num_steps
    return unrolled_draft_loss(module, batch, steps, config.loss_weights(), topk)


@torch.no_grad()
def evaluate_draft(
    method: str,
    module: nn.Module,
    source: FeatureSource,
    indices: Sequence[int],
    target: nn.Module,
    config: DraftTrainConfig,
    constraint: ListConstraint | None = None,
) -> dict:
    """Teacher-forced held-out metrics: per-step top-1 agreement with the target and the mean accepted
    draft tokens per round (greedy verification, bonus token excluded); on top-K data the agreement is of
    both models' best allowed tokens (the catalog masks both in serving), and each step's top-K recall
    (``atspeed_losses.topk_recall``) is reported too, whatever the objective."""
    indices = list(indices)[: config.max_eval_sequences]
    if not indices:
        return {}
    was_training = module.training
    module.eval()
    accepted, rounds = 0.0, 0
    correct = torch.zeros(config.num_draft_steps)
    counted = torch.zeros(config.num_draft_steps)
    recalled = torch.zeros(config.num_draft_steps)
    for start in range(0, len(indices), config.batch_size):
        batch = source.batch(indices[start : start + config.batch_size])
        with autocast_for(source.device):
            out = draft_loss(method, module, batch, target, config, constraint, num_steps=config.num_draft_steps)
        full = out.full_rounds  # [B, T]
        n = int(full.sum())
        if n:
            accepted += float(out.accepted_length()) * n
            rounds += n
        step_rows = full[None].expand_as(out.hits)  # [K, B, T]
        correct += (out.hits & step_rows).flatten(1).sum(1).float().cpu()
        counted += step_rows.flatten(1).sum(1).float().cpu()
        if out.topk_recall is not None:
            recalled += (out.topk_recall * step_rows).flatten(1).sum(1).float().cpu()
    module.train(was_training)
    result = {"accepted_length": accepted / rounds if rounds else 0.0, "rounds": rounds}
    result.update({f"acc_{k}": float(correct[k] / counted[k]) if counted[k] else 0.0 for k in range(len(correct))})
    if config.topk and method != "medusa":
        steps = range(len(recalled))
        result.update({f"topk_recall_{k}": float(recalled[k] / counted[k]) if counted[k] else 0.0 for k in steps})
    return result


class DraftTask(TrainingTask):
    """The draft's part of the training loop: the batches of the training sequences and the draft loss."""

    def __init__(
        self,
        method: str,
        module: nn.Module,
        source: FeatureSource,
        train_units: Sequence[Sequence[int]],
        target: nn.Module,
        config: DraftTrainConfig,
        constraint: ListConstraint | None = None,
    ) -> None:
        self.method, self.module, self.source, self.train_units, self.target, self.config = (
            method,
            module,
            source,
            train_units,
            target,
            config,
        )
        self.constraint = constraint

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = self.source.batch(batch_indices(step, self.train_units, self.config))
        with autocast_for(self.source.device):
            out = draft_loss(self.method, self.module, batch, self.target, self.config, self.constraint)
        return out.loss, out.metrics

    def state(self, resumable: bool) -> dict:
        return {"method": self.method, "config": self.config.to_dict()}

    def check(self, state: dict, path: Path) -> None:
        """Refuse a saved state of another method or training config."""
        saved = {k: v for k, v in state["config"].items() if k not in _OPERATIONAL_FIELDS}
        if state["method"] != self.method or saved != self.config.training_fields():
            raise CheckpointError(
                f"{path} was written for method {state['method']!r} with another config: "
                "use another out_dir, the same config, or resume=False"
            )


def _draft_layout(method: str, target: Any, data: InteractionData | Sequence, layout: TokenLayout | None):
    """The catalog's TokenLayout: given, or carried by a TargetCheckpoint or the dataset."""
    if not isinstance(target, nn.Module) and hasattr(target, "catalog") and hasattr(target, "model"):
        layout = layout or target.catalog.layout  # a TargetCheckpoint
    if layout is None and isinstance(data, InteractionData):
        layout = data.catalog.layout
    if layout is None and method != "medusa":
        raise ValueError("pass layout= (the catalog's TokenLayout): the PAD-Rec slot table is built from it")
    return layout


@stoppable
def train_draft(
    method: str,
    target: Any,
    data: InteractionData | Sequence,
    config: DraftTrainConfig,
    out_dir: str | Path,
    device: str | torch.device,
    time_budget_minutes: float | None = None,
    resume: bool = True,
    *,
    layout: TokenLayout | None = None,
    catalog: ItemCatalog | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
    source: FeatureSource | None = None,
    stop: StopSignals,  # given by @stoppable
) -> DraftTrainResult:
    """Train ``method``'s draft for ``target`` (a HF Llama causal LM or a ``TargetCheckpoint``) on
    ``data`` (a dataset, list-wise examples or token-id sequences; ``layout`` is needed unless the
    data or the checkpoint carries a catalog). Returns where the checkpoint is and how it went.
    The target is moved to ``device``, put in eval mode and frozen (requires_grad False).

    ``stop_after_steps`` ends this call after that many more steps (chunked jobs; ``resume=True``
    continues), like ``time_budget_minutes``; neither changes the schedule. ``source``: the target's
    features from an earlier call with the same target, data and config (``feature_source``), so that
    several methods trained in one process collect them once. A SIGTERM or SIGINT during the call
    stops it at the next step boundary (module docstring).

    Top-K training (``config.topk``, AtSpeed): the sequences are the target's own top-K beams of the
    dataset's training histories (``training.topk_data``), built by ``feature_source``; ``catalog`` is
    needed unless the data or the checkpoint carries one (its constraint gives the allowed tokens)."""
    if method not in METHODS:
        raise ValueError(f"unknown draft method {method!r}; choose one of {list(METHODS)}")
    check_objective(method, config.objective)
    layout = _draft_layout(method, target, data, layout)
    constraint = topk_constraint(target, data, config, catalog, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    target = frozen_target(target, device)
    if source is None:
        source = feature_source(target, data, config, device, progress, catalog=constraint and constraint.catalog)
    elif source.target is not target or source.device != device:
        raise ValueError("the feature source was built for another target or device")
    train_units, holdout_idx = split_holdout(training_units(source.sequences, config), config)
    module = build_draft(method, target, layout, config)
    module.train()
    optimizer = torch.optim.AdamW(
        param_groups(module, config), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    task = DraftTask(method, module, source, train_units, target, config, constraint)
    state_path = out_dir / STATE_FILE
    state = None
    if resume and state_path.exists():
        state = load_loop_state(state_path, device, ("method", "config", "step", "model", "optimizer"), "train_draft")
        task.check(state, state_path)
    loop_config = LoopConfig(
        lr=config.lr,
        schedule=WarmupCosine(config.warmup_steps, config.max_steps, config.min_lr_ratio),
        grad_clip=config.grad_clip,
        log_every=config.log_every,
        state_path=state_path,
        log_path=out_dir / LOG_FILE,
        log_schedule=True,
        save_every_steps=config.save_every,
        time_budget_s=60.0 * time_budget_minutes if time_budget_minutes is not None else math.inf,
        stop_after_steps=stop_after_steps,
        progress=progress,
        description=f"train {method}",
    )
    loop = TrainingLoop(task, module, optimizer, loop_config, stop, state)
    del state
    loop.run()
    loop.save()

    checkpoint = save_draft(module, out_dir / CHECKPOINT_DIR)
    # a stopping signal skips the held-out evaluation: the caller asked for the process to end
    evaluation = {} if stop.signal else evaluate_draft(method, module, source, holdout_idx, target, config, constraint)
    plot_path = plot_training(loop.log, out_dir / PLOT_FILE, f"{method} draft")
    result = DraftTrainResult(
        method=method,
        checkpoint=str(checkpoint),
        steps=loop.step,
        max_steps=config.max_steps,
        finished=loop.finished,
        final_loss=loop.log[-1]["loss"] if loop.log else None,
        evaluation=evaluation,
        feature_mode=source.mode,
        elapsed_s=loop.elapsed_s,
        log_path=str(out_dir / LOG_FILE),
        plot_path=str(plot_path) if plot_path else None,
        stopped_by=loop.stopped_by(),
        objective=config.objective,
        topk=config.topk,
    )
    (out_dir / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def frozen_target(target: Any, device: torch.device) -> nn.Module:
    """The target module (a TargetCheckpoint's ``model``) on ``device``, in eval mode, frozen."""
    if not isinstance(target, nn.Module) and hasattr(target, "model"):
        target = target.model  # a TargetCheckpoint
    return target.to(device).eval().requires_grad_(False)


def topk_constraint(
    target: Any, data: Any, config: DraftTrainConfig, catalog: ItemCatalog | None, device: str | torch.device
) -> ListConstraint | None:
    """On top-K data (``config.topk``): the one-item constraint of the catalog (given, or the checkpoint's or
    the dataset's), whose allowed tokens the top-K terms read; else None."""
    if not config.topk:
        return None
    if catalog is None and not isinstance(target, nn.Module) and hasattr(target, "catalog"):
        catalog = target.catalog  # a TargetCheckpoint
    if catalog is None and isinstance(data, InteractionData):
        catalog = data.catalog
    if catalog is None:
        raise ValueError("top-K training (topk > 0) needs catalog= (or a dataset or checkpoint that carries one)")
    if config.num_draft_steps > catalog.num_slots - 1:
        raise PadRecError(
            f"top-K sequences hold {catalog.num_slots - 1} draft positions per item (codes 1 .. L-1): "
            f"num_draft_steps={config.num_draft_steps} is more"
        )
    return ListConstraint(catalog, num_items=1, device=device)


def feature_source(
    target: Any,
    data: InteractionData | Sequence,
    config: DraftTrainConfig,
    device: str | torch.device,
    progress: bool = True,
    catalog: ItemCatalog | None = None,
) -> FeatureSource:
    """The training sequences of ``data`` with ``target``'s hidden states (stored or on the fly), as
    ``train_draft`` builds them; pass it to several ``train_draft`` calls to collect once. With
    ``config.topk`` and a dataset: the target's top-K beams of its training histories (``training.topk_data``;
    ``catalog`` defaults to the dataset's); other data is taken as the sequences themselves."""
    device = torch.device(device)
    target = frozen_target(target, device)
    if config.topk and isinstance(data, InteractionData):
        histories = training_histories(data, config.max_history, config.topk_users, config.seed)
        sequences = topk_beam_sequences(
            target, catalog or data.catalog, histories, config.topk, config.max_history, progress=progress
        )
    else:
        sequences = training_sequences(data, config.max_history, config.list_items)
    return FeatureSource(
        target, sequences, device, config.features, config.max_stored_gib * 2**30, config.collect_batch_size, progress
    )
