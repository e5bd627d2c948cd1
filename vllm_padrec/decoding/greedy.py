"""Constrained greedy generation of recommendation lists with a plain Hugging Face causal LM.

Vocabulary: a *list* is ``i_1 <sep> ... i_N </s>``; each *item* is L code tokens; a *step* writes
one token for every row of a batch. At each step the target's next-token logits are masked by the
``ListConstraint`` (only tokens that keep the list valid survive: trie-valid codes, ``<sep>`` /
``</s>`` after a complete item, no repeated item with ``no_repeat``) and the argmax is taken, so
every returned list holds exactly ``num_items`` distinct catalog items.

Prompts are batched per length (``length_buckets``): no padding, so every row computes exactly what
a batch of one computes, and the KV cache of Hugging Face's ``DynamicCache`` needs no masks.

    lists = greedy_lists(model, catalog, histories, num_items=10)   # [[item index, ...], ...]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.constraint import ListConstraint, apply_mask


def length_buckets(prompts: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Row indices of ``prompts`` in batches of at most ``batch_size`` prompts of equal length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_length: dict[int, list[int]] = defaultdict(list)
    for row, prompt in enumerate(prompts):
        by_length[len(prompt)].append(row)
    for length in sorted(by_length):
        rows = by_length[length]
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def greedy_lists(
    model: torch.nn.Module,
    catalog: ItemCatalog,
    histories: Sequence[Sequence[int]],  # per user: item indices, oldest first
    num_items: int,
    constraint: ListConstraint | None = None,
    batch_size: int = 64,
    no_repeat: bool = True,
    *,
    max_history: int | None = None,  # keep only the last max_history items of each history
    ban_history: bool = False,  # the lists may not contain the user's history items
    progress: bool = False,
) -> list[list[int]]:
    """The greedy list of ``num_items`` item indices for each history.

    ``constraint`` defaults to ``ListConstraint(catalog, num_items=num_items, no_repeat=no_repeat)``;
    a given constraint must allow lists of ``num_items`` items (``no_repeat`` is then its own).
    """
    device = model_device(model)
    if constraint is None:
        room = banned_capacity(histories, num_items, ban_history)
        constraint = ListConstraint(catalog, num_items=num_items, no_repeat=no_repeat, max_banned=room, device=device)
    elif constraint.num_items is not None and constraint.num_items != num_items:
        raise ValueError(f"the constraint makes lists of {constraint.num_items} items, not {num_items}")
    prompts = [catalog.render_prompt(h, max_history) for h in histories]
    max_steps = num_items * (catalog.num_slots + 1)  # N items, N-1 separators, </s>
    results: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc="greedy lists", disable=not progress, dynamic_ncols=True)
    for rows in length_buckets(prompts, batch_size):
        input_ids = torch.tensor([prompts[r] for r in rows], device=device)  # [B, T]
        state = constraint.initial_state(len(rows), [histories[r] for r in rows], ban_history)
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        written = []  # per step: [B] token ids
        for _ in range(max_steps):
            logits = out.logits[:, -1].float()  # [B, V']
            apply_mask(logits, constraint.allowed_tokens(state))
            tokens = logits.argmax(-1)  # [B]
            written.append(tokens)
            state = constraint.advance(state, tokens)
            if bool(state.finished.all()):
                break
            out = model(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        for row, tokens in zip(rows, torch.stack(written, 1).tolist()):  # [B, steps]
            results[row] = catalog.parse_completion(tokens)
        bar.update(len(rows))
    bar.close()
    return results


def banned_capacity(histories: Sequence[Sequence[int]], num_items: int, ban_history: bool) -> int:
    """``max_banned`` that holds a list's items and, with ``ban_history``, the longest history."""
    longest = max((len(set(h)) for h in histories), default=0) if ban_history else 0
    return max(64, num_items + longest)
