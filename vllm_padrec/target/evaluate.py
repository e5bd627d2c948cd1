"""Recommendation quality of a target: Recall@k and NDCG@k of its greedy lists and of its beam search.

For each evaluation user (``InteractionData.eval_samples``: history -> the items the user went on to
interact with), two rankings are scored:

- greedy: the constrained greedy list of ``list_items`` distinct items (``greedy_lists``), in order;
- beam: the ``beam_width`` items of constrained beam search over one item (``beam_search_items``),
  best first.

Recall@k = |top-k ∩ targets| / |targets|; NDCG@k = DCG@k / IDCG@k with binary relevance,
DCG@k = sum over hits at rank r (1-based) of 1 / log2(r + 1), IDCG@k the DCG of min(k, |targets|)
hits at the top. Both are averaged over users.

    ckpt = load_checkpoint("runs/tiny/checkpoint")
    metrics = evaluate_target(ckpt.model, data, list_items=ckpt.recipe.list_items, max_history=ckpt.recipe.max_history)

``ValidationSet`` is the cheap score the trainer takes every few hundred steps (early stopping and the
choice of the best checkpoint): a fixed subset of users, the loss of their first target item and the
Recall@K / NDCG@K of top-K beam search over one item.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.data import InteractionData
from vllm_padrec.decoding import beam_search_items, greedy_lists


def recall_ndcg(ranked: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], k: int) -> dict[str, float]:
    """``{"recall@k", "ndcg@k"}`` averaged over users (users without targets are skipped) and ``users``."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings for {len(targets)} target lists")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    recall = ndcg = 0.0
    users = 0
    for items, wanted in zip(ranked, targets):
        wanted = set(wanted)
        if not wanted:
            continue
        users += 1
        top = list(items)[:k]
        hits = [rank for rank, item in enumerate(top) if item in wanted]
        recall += len(hits) / len(wanted)
        dcg = sum(1.0 / math.log2(rank + 2) for rank in hits)
        idcg = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(wanted))))
        ndcg += dcg / idcg
    users_or_one = max(users, 1)
    return {f"recall@{k}": recall / users_or_one, f"ndcg@{k}": ndcg / users_or_one, "users": users}


def evaluate_target(
    model: torch.nn.Module,
    data: InteractionData,
    split: str = "test",
    list_items: int = 10,
    beam_width: int = 10,
    max_users: int | None = None,
    batch_size: int = 64,
    *,
    max_history: int = 20,  # H of the recipe the model was trained with
    ban_history: bool = False,  # exclude the user's history items from both rankings
    progress: bool = True,
) -> dict[str, float | int | str]:
    """Greedy-list Recall@N / NDCG@N and beam Recall@K / NDCG@K on ``split``, with counts and timings.

    Keys: ``split``, ``users``, ``targets``, ``greedy_recall@N``, ``greedy_ndcg@N``, ``greedy_seconds``,
    ``beam_recall@K``, ``beam_ndcg@K``, ``beam_seconds`` (N = list_items, K = beam_width).
    ``beam_width=0`` skips beam search, ``list_items=0`` skips greedy lists.
    """
    if beam_width > 0:  # before the greedy lists, not after them
        data.catalog.check_distinct_items(beam_width, f"a beam search of width {beam_width}")
    samples = data.eval_samples(split, max_history)
    if max_users is not None:
        samples = samples[:max_users]
    if not samples:
        raise ValueError(f"split {split!r} of {data.name} has no user with both a history and a target")
    histories = [s.history for s in samples]
    targets = [s.targets for s in samples]
    was_training = model.training
    model.eval()
    metrics: dict[str, float | int | str] = {
        "split": split,
        "users": len(samples),
        "targets": sum(len(t) for t in targets),
    }
    catalog = data.catalog
    if list_items > 0:
        started = time.monotonic()
        lists = greedy_lists(
            model, catalog, histories, list_items, batch_size=batch_size, ban_history=ban_history, progress=progress
        )
        metrics["greedy_seconds"] = time.monotonic() - started
        scored = recall_ndcg(lists, targets, list_items)
        metrics[f"greedy_recall@{list_items}"] = scored[f"recall@{list_items}"]
        metrics[f"greedy_ndcg@{list_items}"] = scored[f"ndcg@{list_items}"]
    if beam_width > 0:
        started = time.monotonic()
        beams = beam_search_items(
            model,
            catalog,
            histories,
            beam_width,
            batch_size=max(1, batch_size // beam_width),
            ban_history=ban_history,
            progress=progress,
        )
        metrics["beam_seconds"] = time.monotonic() - started
        scored = recall_ndcg([[item for item, _ in b] for b in beams], targets, beam_width)
        metrics[f"beam_recall@{beam_width}"] = scored[f"recall@{beam_width}"]
        metrics[f"beam_ndcg@{beam_width}"] = scored[f"ndcg@{beam_width}"]
    model.train(was_training)
    return metrics


@dataclass(frozen=True)
class ValidationSet:
    """A fixed subset of one split's users, scored cheaply and deterministically during training.

    Each user contributes its history (the last ``max_history`` items) and its *first* target item
    (on the valid split that is the only one: ``eval_samples("valid")``). ``score`` returns

    - ``loss``: mean cross-entropy of the target item's L code tokens right after the prompt
      (teacher-forced, one forward pass per batch);
    - ``recall@K`` / ``ndcg@K``: of constrained top-K beam search over one item (``beam_search_items``).
    """

    catalog: ItemCatalog
    histories: list[list[int]]  # per user: item indices, oldest first (already cut to max_history)
    targets: list[int]  # per user: the first target item

    @classmethod
    def build(
        cls, data: InteractionData, max_history: int, users: int = 0, seed: int = 0, split: str = "valid"
    ) -> ValidationSet:
        """``users`` users drawn once from ``split`` with ``seed`` (0: all of them), in dataset order."""
        samples = data.eval_samples(split, max_history)
        if not samples:
            raise ValueError(f"split {split!r} of {data.name} has no user with both a history and a target")
        if 0 < users < len(samples):
            picked = np.sort(np.random.default_rng([seed, 7]).choice(len(samples), users, replace=False))
            samples = [samples[i] for i in picked]
        return cls(data.catalog, [list(s.history) for s in samples], [s.targets[0] for s in samples])

    def __len__(self) -> int:
        return len(self.targets)

    @torch.inference_mode()
    def loss(self, model: torch.nn.Module, batch_size: int = 64) -> float:
        """Mean next-token cross-entropy over the L code tokens of each user's target item."""
        device = next(model.parameters()).device
        prompts = [self.catalog.render_prompt(h) for h in self.histories]
        order = sorted(range(len(prompts)), key=lambda r: len(prompts[r]))  # similar lengths, little padding
        L = self.catalog.num_slots
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(prompts[r]) for r in rows) + L
            input_ids = torch.full((len(rows), width), TokenLayout.PAD, dtype=torch.long)  # [B, T]
            targets = torch.full((len(rows), width), -100, dtype=torch.long)  # [B, T]
            for b, r in enumerate(rows):
                item = self.catalog.item_token_ids(self.targets[r])
                n = len(prompts[r])
                input_ids[b, : n + L] = torch.tensor(prompts[r] + item)
                targets[b, n - 1 : n - 1 + L] = torch.tensor(item)  # position t predicts token t + 1
            logits = model(input_ids=input_ids.to(device), use_cache=False).logits  # [B, T, V']
            total += F.cross_entropy(
                logits.flatten(0, 1).float(), targets.to(device).flatten(), ignore_index=-100, reduction="sum"
            )
        return total.item() / (len(prompts) * L)

    def score(self, model: torch.nn.Module, beam_width: int = 10, batch_size: int = 64) -> dict[str, float]:
        """``{"loss", "recall@K", "ndcg@K"}`` (no beam keys with ``beam_width=0``); eval mode inside,
        the model's mode is restored. Batches of ``batch_size`` sequences (loss) / prompts (beam search)."""
        was_training = model.training
        model.eval()
        try:
            metrics = {"loss": self.loss(model, batch_size)}
            if beam_width > 0:
                beams = beam_search_items(model, self.catalog, self.histories, beam_width, batch_size=batch_size)
                ranked = [[item for item, _ in b] for b in beams]
                scored = recall_ndcg(ranked, [[t] for t in self.targets], beam_width)
                metrics[f"recall@{beam_width}"] = scored[f"recall@{beam_width}"]
                metrics[f"ndcg@{beam_width}"] = scored[f"ndcg@{beam_width}"]
        finally:
            model.train(was_training)
        return metrics
