"""The target's own top-K beams as draft training data (AtSpeed, issue 13), and the catalog's tokens along them.

AtSpeed trains the draft on what the target's beam search returns. For each training history, the K items
the target ranks highest (``decoding.beam_search_items``: the reference that the engine's top-K equals)
each make one sequence ``prompt + the item's L code tokens``. A draft round starts at the prompt's last
token, whose target logits choose code 0; the draft then proposes codes 1 .. L-1 (``training.losses``:
row q proposes x_{q+2}).

``completion_allowed`` gives, for every row q of a batch of such sequences, the tokens the catalog allows
as x_{q+2}: the one-item list constraint of the reference (``ListConstraint(num_items=1)``) after the
item's codes before it. The AtSpeed objective (``training.atspeed_losses``) reads those masks, and so
does the top-K agreement that the trainer reports for every objective on this data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data.interactions import InteractionData
from vllm_padrec.training.collect import SequenceBatch, TrainSequence


def training_histories(data: InteractionData, max_history: int, limit: int | None = None, seed: int = 0) -> list:
    """One history per user with at least two training items: its training items but the last (a history
    whose next item the target was trained on), the last ``max_history`` of them; at most ``limit`` users,
    drawn in a seeded order."""
    histories = [seq.train[:-1][-max_history:] for seq in data.users.values() if len(seq.train) >= 2]
    if limit is not None and len(histories) > limit:
        histories = random.Random(seed).sample(histories, limit)
    if not histories:
        raise ValueError(f"dataset {data.name!r} has no user with two training items: no top-K training history")
    return histories


def topk_beam_sequences(
    target: nn.Module,
    catalog: ItemCatalog,
    histories: Sequence[Sequence[int]],
    k: int,
    max_history: int,
    batch_size: int = 16,
    progress: bool = True,
) -> list[TrainSequence]:
    """``prompt + item`` for each of the target's top-K items of each history, best first per history."""
    from vllm_padrec.decoding import beam_search_items

    ranked = beam_search_items(
        target, catalog, histories, k, batch_size=batch_size, max_history=max_history, progress=progress
    )
    sequences = []
    for history, items in zip(histories, ranked, strict=True):
        prompt = tuple(catalog.render_prompt(history, max_history))
        sequences += [TrainSequence(prompt + tuple(catalog.item_token_ids(item)), len(prompt)) for item, _ in items]
    return sequences


def completion_allowed(constraint: ListConstraint, batch: SequenceBatch) -> Tensor:  # [B, T, V] bool
    """Row q of each sequence: the tokens the one-item constraint allows as x_{q+2}, after the item's codes
    before position q + 2; every token where x_{q+2} is not one of the item's codes (the prompt, past the end).

    The item's codes are the sequence's tokens from its prompt length P on: x_{q+2} is code j = q + 2 - P.
    """
    if constraint.num_items != 1:
        raise ValueError(f"top-K items are one-item lists: ListConstraint(num_items=1), got {constraint.num_items}")
    B, T = batch.input_ids.shape
    L, V = constraint.num_slots, constraint.vocab_size
    allowed = torch.ones(B, T, V, dtype=torch.bool, device=batch.input_ids.device)  # [B, T, V]
    ids, prompt_lens, lengths = batch.input_ids.tolist(), batch.prompt_lens.tolist(), batch.lengths.tolist()
    rows, prefixes = [], []  # (b, q) of each code position, and the item's codes before it
    for b in range(B):
        P = prompt_lens[b]
        for j in range(min(L, lengths[b] - P)):
            if P + j - 2 >= 0:
                rows.append((b, P + j - 2))
                prefixes.append(ids[b][P : P + j])
    if rows:
        masks = constraint.allowed_tokens(constraint.state_after(prefixes))  # [N, V]
        b_index, q_index = (torch.tensor(i, device=allowed.device) for i in zip(*rows))
        allowed[b_index, q_index] = masks.to(allowed.device)
    return allowed


def beam_groups(sequences: Sequence[TrainSequence], k: int) -> list[list[int]]:
    """The sequences of each history, as ``topk_beam_sequences`` lays them out: runs of consecutive sequences
    with the same prompt, at most K each (two neighbouring histories with the same prompt stay two groups)."""
    return _runs([s.token_ids[: s.prompt_len] for s in sequences], k)


def batch_groups(batch: SequenceBatch, k: int) -> Tensor:  # [B] long, 0 .. G-1 in order
    """Each row's group in a batch of whole groups (``beam_groups``' rule over the batch's rows)."""
    ids, prompt_lens = batch.input_ids.tolist(), batch.prompt_lens.tolist()
    runs = _runs([tuple(row[:p]) for row, p in zip(ids, prompt_lens)], k)
    group = [g for g, run in enumerate(runs) for _ in run]
    return torch.tensor(group, dtype=torch.long, device=batch.input_ids.device)


def _runs(prompts: Sequence[Sequence[int]], k: int) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = None
    for index, prompt in enumerate(prompts):
        prompt = tuple(prompt)
        if prompt != previous or len(runs[-1]) == k:
            runs.append([])
        runs[-1].append(index)
        previous = prompt
    return runs
