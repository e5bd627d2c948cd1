"""The target recipe: model shape, data shape and optimisation of the LLM recommender, in one record.

A recipe is a frozen, self-validating dataclass; ``RECIPES`` holds the presets:

- ``tiny``: a 2-layer Llama that trains on the synthetic default in well under a minute on 2 CPU
  cores (what the tests and CI train);
- ``bench``: shaped like Qwen2.5-1.5B (hidden 1536, 28 layers, 12 query / 2 KV heads, MLP 8960;
  about 1.31B parameters with our ~1k-token vocabulary), trained from scratch on beauty_atspeed on one
  H200 in about 10 minutes, validated every 1/6 epoch and stopped early on the validation loss (the
  measurements behind its values: ``benchmarks/results/bench_target_recipe.md``).

    recipe = get_recipe("tiny", epochs=4)      # a preset with fields overridden
    recipe.num_parameters(vocab_size=1088)     # parameter count from the shape, no allocation
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.errors import PadRecError, PromptTooLongError

RECIPE_FILE = "padrec_recipe.json"  # name of the recipe inside a target checkpoint folder
VOCAB_MULTIPLE = 64  # the embedding / LM head rows are padded to a multiple of this, for speed


def padded_vocab_size(layout: TokenLayout) -> int:
    """``layout.vocab_size`` rounded up to a multiple of VOCAB_MULTIPLE (the extra rows are never sampled)."""
    return -(-layout.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class RecipeError(PadRecError):
    """A target recipe whose values do not fit together; the message says which field to change."""


@dataclass(frozen=True)
class TargetRecipe:
    name: str = "custom"  # preset name, recorded in the checkpoint
    # -- model shape (a plain LlamaForCausalLM, so that `vllm serve` runs it unmodified) ----------
    hidden_size: int = 64  # width of the residual stream
    num_layers: int = 2  # decoder layers
    num_heads: int = 4  # query heads; head_dim = hidden_size / num_heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention); divides num_heads
    intermediate_size: int = 256  # SwiGLU MLP width
    max_position_embeddings: int = 512  # context length written to config.json (vLLM's max_model_len)
    rope_theta: float = 10000.0  # RoPE base; prompts are at most a few hundred tokens
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    initializer_range: float = 0.02  # std of the normal init of every linear / embedding weight
    tie_word_embeddings: bool = False  # share the input embedding with the LM head
    # -- regularisation (training only: the checkpoint stays a plain Llama, served as is) --------
    attention_dropout: float = 0.0  # dropout on the attention probabilities (LlamaConfig's own field)
    # residual dropout, as in GPT-2: on the token embeddings and on the output of every attention
    # (o_proj) and MLP block before it joins the residual stream; forward hooks added by the trainer
    # (vllm_padrec.target.model.add_hidden_dropout), so neither config.json nor the weights change
    hidden_dropout: float = 0.0
    # -- data shape ----------------------------------------------------------------------------
    max_history: int = 20  # H: items in a prompt (the last H of the user's history)
    list_items: int = 10  # N: items in a completion (the recommendation list)
    # -- optimisation --------------------------------------------------------------------------
    lr: float = 1e-3  # peak learning rate of AdamW
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_ratio: float = 0.05  # fraction of all steps spent in linear warm-up from 0
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not on norms)
    adam_betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    batch_size: int = 32  # examples (prompt + completion sequences) per optimiser step
    epochs: float = 1.0  # passes over the list-wise training examples (fractions allowed)
    max_steps: int | None = None  # if set, stop after this many steps (whichever comes first)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 disables)
    bf16: bool = True  # bf16 autocast on CUDA (weights and optimiser state stay fp32); ignored on CPU
    bucket_batches: int = 64  # examples are sorted by length inside windows of this many batches
    seed: int = 0  # init, data order and every other random choice
    # -- validation and early stopping ------------------------------------------------------------
    # Every eval_every steps (and after the last one) the model is scored on a fixed, seeded subset
    # of val_users validation users (``data.eval_samples("valid")``: history = the last H training
    # items, target = the first validation item):
    #   loss:     mean cross-entropy of the target's L code tokens after the prompt (teacher-forced);
    #   recall@K: Recall@K (= hit rate: one target) of constrained top-K beam search over one item.
    # The weights with the best val_metric so far are kept (out_dir/best/ while training, then the
    # final out_dir/checkpoint/); after `patience` validations in a row without improvement training
    # stops. The training examples come from the training split only, so the valid split stays a
    # clean held-out set (test prompts, the last H of train + valid items, are never trained on
    # either; the windows of the training split already cover every prompt length 1..H).
    # The loss is the default metric: it is smooth, while Recall@10 of a few thousand users rests on
    # a few dozen hits on beauty_atspeed (~1-2% hit rate: +-18% standard error at 2,048 users). CPU
    # study (hidden 128, 2 layers, no dropout): the 2,048-user Recall@10 went 0.015, 0.012, 0.015,
    # 0.014 over the first 2 epochs while the test Recall@10 doubled and the loss fell steadily;
    # stopping on the loss (patience 2) kept epoch 2, after which the test Recall@10 fell by ~half.
    eval_every: int = 0  # optimiser steps between validations; 0 disables validation (last weights kept)
    val_users: int = 512  # validation users scored (a fixed seeded subset; 0 = all of them)
    val_beam: int = 10  # K of the validation beam search (0: no beam search, the loss only)
    val_metric: str = "loss"  # "loss" (lower is better) or "recall" (beam Recall@K, ties broken by the loss)
    patience: int = 0  # validations without improvement before stopping early (0: never stop early)
    # -- run control ---------------------------------------------------------------------------
    time_budget_minutes: float = 9.0  # stop, save train_state.pt and return after this long
    save_every_minutes: float = 3.0  # also save train_state.pt this often
    log_every: int = 10  # steps per entry of loss.json (the mean loss over those steps)
    # examples per forward and backward: each batch is cut into passes of this many whose gradients add up
    # to the whole batch's (gradient accumulation: the same optimiser step, for a GPU with less memory);
    # None: the whole batch at once. A step that runs out of CUDA memory halves it and runs again.
    micro_batch_size: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise RecipeError(f"recipe {self.name!r}: {message}")

        positive = [
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "max_position_embeddings",
            "max_history",
            "list_items",
            "batch_size",
            "bucket_batches",
            "log_every",
        ]
        for field in positive:
            value = getattr(self, field)
            need(isinstance(value, int) and value > 0, f"{field} must be a positive integer, got {value!r}")
        need(
            self.hidden_size % self.num_heads == 0,
            f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}",
        )
        need(
            self.num_heads % self.num_kv_heads == 0,
            f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}",
        )
        need((self.hidden_size // self.num_heads) % 2 == 0, "head_dim (hidden_size / num_heads) must be even for RoPE")
        need(self.rope_theta > 0 and self.rms_norm_eps > 0, "rope_theta and rms_norm_eps must be positive")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        betas_ok = len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas)
        need(betas_ok, f"adam_betas must be two values in [0, 1), got {self.adam_betas}")
        need(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        need(self.max_steps is None or self.max_steps > 0, f"max_steps must be positive or None, got {self.max_steps}")
        need(self.time_budget_minutes > 0, f"time_budget_minutes must be positive, got {self.time_budget_minutes}")
        need(self.save_every_minutes > 0, f"save_every_minutes must be positive, got {self.save_every_minutes}")
        need(
            self.micro_batch_size is None or (isinstance(self.micro_batch_size, int) and self.micro_batch_size > 0),
            f"micro_batch_size must be a positive integer or None, got {self.micro_batch_size!r}",
        )
        for field in ("attention_dropout", "hidden_dropout"):
            value = getattr(self, field)
            need(0 <= value < 1, f"{field} must be in [0, 1), got {value}")
        for field in ("eval_every", "val_users", "val_beam", "patience"):
            value = getattr(self, field)
            need(isinstance(value, int) and value >= 0, f"{field} must be a non-negative integer, got {value!r}")
        need(self.val_metric in ("recall", "loss"), f"val_metric must be 'recall' or 'loss', got {self.val_metric!r}")
        need(
            self.val_metric == "loss" or self.val_beam > 0 or self.eval_every == 0,
            "val_metric 'recall' needs val_beam > 0 (or use val_metric='loss')",
        )
        need(self.patience == 0 or self.eval_every > 0, "patience needs validation: set eval_every > 0")

    # -- derived values ------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def tokens_needed(self, layout: TokenLayout) -> int:
        """Longest training sequence: ``<s>`` H items ``<rec>`` N items ``</s>``, plus slack.

        ``(H + N) * (L + 1) + 4`` with L code slots: each item is L tokens and a separator (or
        ``<rec>`` / ``</s>`` for the last item of a side), ``<s>`` and 3 tokens of slack.
        """
        return (self.max_history + self.list_items) * (layout.num_slots + 1) + 4

    def check_layout(self, layout: TokenLayout) -> None:
        """Raise RecipeError if a prompt and its list do not fit ``max_position_embeddings``."""
        needed = self.tokens_needed(layout)
        if self.max_position_embeddings < needed:
            raise RecipeError(
                f"recipe {self.name!r}: max_position_embeddings {self.max_position_embeddings} is shorter than "
                f"the {needed} tokens that H={self.max_history} + N={self.list_items} items of "
                f"{layout.num_slots} slots take; raise max_position_embeddings to at least {needed}"
            )

    def max_list_items(self, layout: TokenLayout, history_items: int) -> int:
        """Most items a list can hold after a prompt of ``history_items`` items within the model's context
        (``max_position_embeddings``): the prompt ``<s> h_1 <sep> ... h_H <rec>`` takes 1 + H(L + 1)
        tokens and each item of the list L codes and a ``<sep>`` (the last one ``</s>``)."""
        period = layout.num_slots + 1
        return (self.max_position_embeddings - 1 - history_items * period) // period

    def check_list_fits(self, layout: TokenLayout, history_items: int, list_items: int) -> None:
        """Raise PromptTooLongError, naming the limit, if a list of ``list_items`` items after
        ``history_items`` history items does not fit the model's context."""
        limit = self.max_list_items(layout, history_items)
        if list_items > limit:
            raise PromptTooLongError(
                f"a list of {list_items} items after {history_items} history items does not fit the "
                f"{self.max_position_embeddings}-token context of recipe {self.name!r} (max_position_embeddings): "
                f"at most {max(limit, 0)} items fit"
            )

    def training_bytes(self, vocab_size: int, batch_tokens: int, activation_bytes: int) -> tuple[int, int]:
        """A lower bound of the memory one training step takes, as (state, activations) in bytes.

        state: fp32 weights, gradients and AdamW's two moments, 16 bytes per parameter.
        activations: what autograd keeps of a batch of ``batch_tokens`` tokens (padding included): at
        least 4 hidden-wide values per token and layer (the inputs of both norms, the attention's
        output, its o_proj input) and 2 intermediate-wide ones (the MLP's gate and up projections),
        ``activation_bytes`` each (4 in fp32, 2 under bf16 autocast), plus the logits and their
        gradient in fp32: a lower bound (bench_target_recipe.md compares it with a measured peak).
        """
        per_token = self.num_layers * (4 * self.hidden_size + 2 * self.intermediate_size) * activation_bytes
        per_token += 2 * vocab_size * 4
        return 16 * self.num_parameters(vocab_size), batch_tokens * per_token

    def num_parameters(self, vocab_size: int) -> int:
        """Parameters of the LlamaForCausalLM this recipe builds over ``vocab_size`` (padded) tokens."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = h * h + 2 * h * kv + h * h  # q, k, v, o projections (no biases)
        mlp = 3 * h * self.intermediate_size  # gate, up, down
        layer = attention + mlp + 2 * h  # + two RMSNorm weights
        embeddings = vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embeddings + h  # + final norm

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TargetRecipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise RecipeError(f"unknown recipe fields {unknown}; known fields are {sorted(known)}")
        values = dict(payload)
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TargetRecipe:
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILE
        return cls.from_dict(json.loads(path.read_text()))

    def replace(self, **changes: Any) -> TargetRecipe:
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise RecipeError(f"unknown recipe fields {unknown}; known fields are {sorted(known)}")
        return dataclasses.replace(self, **changes)


TINY = TargetRecipe(
    name="tiny",
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=256,
    max_position_embeddings=256,
    max_history=10,
    list_items=5,
    lr=3e-3,
    warmup_ratio=0.05,
    weight_decay=0.01,
    batch_size=32,
    # synthetic default: 4,841 examples of ~45 tokens (H=10, N=5) -> 152 steps per epoch; 4 epochs
    # take 20-45 s on 2 CPU cores and reach test Recall@10 ~0.78 with beam search (chance: 0.025)
    epochs=4.0,
    bucket_batches=16,
    time_budget_minutes=9.0,
    log_every=10,
)

BENCH = TargetRecipe(
    name="bench",
    hidden_size=1536,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    intermediate_size=8960,
    max_position_embeddings=512,
    # 1.31B parameters for 122k training interactions memorise the overlapping sliding windows: dropout,
    # a low lr, a 2-epoch horizon and early stopping on the validation loss keep the weights that
    # generalise (the runs behind these values: benchmarks/results/bench_target_recipe.md)
    attention_dropout=0.1,
    hidden_dropout=0.1,
    max_history=20,
    list_items=10,
    lr=2e-4,
    min_lr_ratio=0.1,
    warmup_ratio=0.03,
    # AdamW's decoupled decay shrinks the weights by exp(-sum of lr * wd) = ~2% over this run: a
    # standard value that barely regularises at this step count; dropout and early stopping do.
    weight_decay=0.1,
    # 128 examples per step: the largest that fits an H200 (memory: bench_target_recipe.md)
    batch_size=128,
    # 2 epochs of beauty_atspeed (1,608 steps) plus validations fit about 10 minutes on one H200
    # (the arithmetic and its measurements: bench_target_recipe.md)
    epochs=2.0,
    grad_clip=1.0,
    bucket_batches=64,
    # validate every 1/6 epoch (134 steps, ~27 s of training); stop after 4 validations (2/3 epoch)
    # without a lower validation loss. 2,048 of the 4,295 validation users: the per-user loss has a
    # standard deviation of ~1.6 nats, so the mean's standard error is ~0.035, and less between two
    # validations of the same users; on the CPU the loss moved by 0.05-0.5 nats per half epoch.
    eval_every=134,
    val_users=2048,
    val_beam=10,
    val_metric="loss",
    patience=4,
    # a call must end within the device's 10-minute command limit: 8 minutes of training, then the
    # state save (~16 GB: fp32 weights + AdamW moments), interpreter start and data loading
    time_budget_minutes=8.0,
    save_every_minutes=4.0,
    log_every=20,
)

RECIPES: dict[str, TargetRecipe] = {"tiny": TINY, "bench": BENCH}


def get_recipe(name: str, **overrides: Any) -> TargetRecipe:
    """A preset by name, with fields overridden (``get_recipe("bench", epochs=2)``)."""
    if name not in RECIPES:
        raise RecipeError(f"unknown target recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name].replace(**overrides) if overrides else RECIPES[name]
