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
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch

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
