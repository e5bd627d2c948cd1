"""Constrained top-K beam search over one item, with a plain Hugging Face causal LM.

Vocabulary: a *beam* is a prefix of an item's L code tokens written after the prompt's ``<rec>``;
its *score* is the sum of the target's log-probabilities of its tokens, each a log-softmax over the
model's whole vocabulary (the constraint chooses which tokens may extend a beam; it does not
renormalise the scores; Hugging Face's ``prefix_allowed_tokens_fn`` beam search, which AtSpeed uses,
scores the same way). At each of the L steps every beam is extended by every token the
``ListConstraint(catalog, num_items=1)`` allows, and the K best extensions of each prompt survive
(the step rule of ``vllm_padrec.topk.select``, which the engine uses too). After L steps the K beams
are K distinct catalog items, best first.

With K = 1 this is constrained greedy decoding of the first item of a list; with K at least the
number of distinct prefixes at every level it is exact top-K over the catalog.

    ranked = beam_search_items(model, catalog, histories, beam_width=10)  # [[(item, log-prob), ...], ...]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.decoding.greedy import banned_capacity, length_buckets, model_device
from vllm_padrec.topk.select import beam_logprobs, beam_step


@torch.inference_mode()
def beam_search_items(
    model: torch.nn.Module,
    catalog: ItemCatalog,
    histories: Sequence[Sequence[int]],  # per user: item indices, oldest first
    beam_width: int,
    constraint: ListConstraint | None = None,
    batch_size: int = 16,  # prompts per batch (the model sees batch_size * beam_width rows)
    *,
    max_history: int | None = None,  # keep only the last max_history items of each history
    ban_history: bool = False,  # never return one of the user's history items
    progress: bool = False,
) -> list[list[tuple[int, float]]]:
    """For each history, up to ``beam_width`` distinct ``(item index, log-prob)``, best first (fewer
    only when the catalog less the banned items holds fewer); a beam wider than the whole catalog
    raises TooManyItemsError."""
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    catalog.check_distinct_items(beam_width, f"a beam search of width {beam_width}")
    device = model_device(model)
    if constraint is None:
        capacity = banned_capacity(histories, 1, ban_history)
        constraint = ListConstraint(catalog, num_items=1, max_banned=capacity, device=device)
    elif constraint.num_items != 1:
        raise ValueError(
            f"beam search over one item needs ListConstraint(num_items=1), got num_items={constraint.num_items}"
        )
    K, L = beam_width, catalog.num_slots
    prompts = [catalog.render_prompt(h, max_history) for h in histories]
    results: list[list[tuple[int, float]]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=f"beam search K={K}", disable=not progress, dynamic_ncols=True)
    for rows in length_buckets(prompts, batch_size):
        B = len(rows)
        input_ids = torch.tensor([prompts[r] for r in rows], device=device)  # [B, T]
        state = constraint.initial_state(B, [histories[r] for r in rows], ban_history)  # B rows
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        scores = torch.zeros(B, 1, device=device)  # [B, beams]: one empty beam per prompt
        written = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # [B, beams, step] token ids
        for step in range(L):
            beams = scores.shape[1]
            logprobs = beam_logprobs(out.logits[:, -1], constraint.allowed_tokens(state))  # [B * beams, V']
            # the step rule (vllm_padrec.topk.select), dead beams included: a beam without a valid
            # extension (only when fewer than K items are left) copies the best beam's parent and token
            selected = beam_step(scores, logprobs, K)
            scores, parent, tokens = selected.scores, selected.parent, selected.tokens  # [B, k], best first
            k = scores.shape[1]
            # rows of the previous batch (prompt b, beam parent) -> rows b * k + j of the new one
            source = (torch.arange(B, device=device)[:, None] * beams + parent).reshape(-1)  # [B * k]
            state = constraint.advance(state.index_select(source), tokens.reshape(-1))
            written = torch.cat([written.reshape(B * beams, -1)[source].reshape(B, k, -1), tokens[:, :, None]], 2)
            if step + 1 < L:
                cache.reorder_cache(source)
                out = model(input_ids=tokens.reshape(-1, 1), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
        for row, row_tokens, row_scores in zip(rows, written.tolist(), scores.tolist()):
            results[row] = [
                (catalog.parse_completion(item_tokens)[0], score)
                for item_tokens, score in zip(row_tokens, row_scores)
                if score != float("-inf")
            ]
        bar.update(B)
    bar.close()
    return results
