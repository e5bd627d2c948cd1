"""The list masks on vLLM's logits, in plain torch: the rule (``vllm_padrec.lists.rule``) applied to the rows
of an engine step. The reference of the Triton kernel (``kernels/catalog_mask.py``: same arguments, same
masked logits) and the plugin's fallback when the kernel cannot run.

Vocabulary (besides ``vllm_padrec.lists.rule``'s):

- list: a request's tokens after the last ``<rec>`` of its prompt (the settings table's ``LIST_START``):
  committed output, then this round's draft tokens.
- row: one logits row. Verification row j of a request (j = 0..K, K drafts + the bonus row) follows
  the committed tokens and drafts d_0..d_{j-1}; V2 feeds d_{j-1} at row j, so they are the tokens fed
  at rows 1..j of the request (`input_ids[logits_indices]`). Draft step k follows the committed
  tokens and the drafts d_0..d_{k-1} of this round.
- window: W = max_list_items * P list positions read per row (fixed, for CUDA graphs).

A row whose prefix breaks the rule (a rejected draft, a list longer than the window, a request that
was not constrained from its start) is left unmasked: its tokens are never kept, because the row
where the bad token was proposed refused it. Everything is batched torch with fixed shapes and no
host sync, so the draft masks can be captured in CUDA graphs.

Differences from ``ListConstraint``: per-row settings; a list without ``num_items`` stops at
``max_list_items``; the excluded items (``ban_history``'s history) are per row, in the settings table.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_padrec.lists.rule import allowed_after
from vllm_padrec.lists.spec import ENABLED, LIST_START, MAX_ITEMS, MIN_ITEMS, NO_REPEAT, NUM_FIELDS
from vllm_padrec.lists.tables import CatalogTables


def list_window(
    all_token_ids: Tensor,  # [S, T] int, every request's prompt + output tokens (vLLM's req_states)
    total_len: Tensor,  # [S] int, tokens of each request in all_token_ids
    settings: Tensor,  # [S, NUM_FIELDS + X] int32, per-request settings (LIST_START column)
    slots: Tensor,  # [B] long, request slot of each row (>= 0)
    extra: Tensor,  # [B, E] long, tokens after the committed ones (drafts)
    num_extra: Tensor,  # [B] long, how many of `extra` follow the committed tokens
    width: int,  # W
) -> tuple[Tensor, Tensor]:  # tokens [B, W] long, length [B] long
    """Each row's list: committed tokens from the list start, then its first ``num_extra`` extras."""
    start = settings[slots, LIST_START].long()  # [B]
    committed = (total_len[slots].long() - start).clamp(min=0)  # [B]
    pos = torch.arange(width, device=slots.device)  # [W]
    column = (start[:, None] + pos).clamp(max=all_token_ids.shape[1] - 1)  # [B, W]
    from_committed = all_token_ids[slots[:, None], column].long()  # [B, W]
    e = (pos - committed[:, None]).clamp(0, max(extra.shape[1] - 1, 0))  # [B, W]
    from_extra = extra.gather(1, e) if extra.shape[1] else torch.zeros_like(from_committed)
    tokens = torch.where(pos < committed[:, None], from_committed, from_extra)  # [B, W]
    return tokens, committed + num_extra


def mask_rows(
    logits: Tensor,  # [B, V_model] float, masked in place (V_model >= V: padded vocabulary)
    tables: CatalogTables,
    settings: Tensor,  # [S, NUM_FIELDS + X] int32
    all_token_ids: Tensor,  # [S, T] int
    total_len: Tensor,  # [S] int
    slots: Tensor,  # [B] long, request slot per row; < 0 = padding row (left alone)
    extra: Tensor,  # [B, E] long
    num_extra: Tensor,  # [B] long
    width: int,  # W, a multiple of P
) -> None:
    """Set the logits of refused tokens to -inf on rows of enabled requests with a valid prefix."""
    V = tables.layout.vocab_size
    slot = slots.long().clamp(min=0)  # [B]
    row = settings[slot].long()  # [B, NUM_FIELDS + X]
    tokens, length = list_window(all_token_ids, total_len, settings, slot, extra, num_extra, width)
    excluded = row[:, NUM_FIELDS:]  # [B, X]
    allowed, valid = allowed_after(
        tables, tokens, length, row[:, MAX_ITEMS], row[:, MIN_ITEMS], row[:, NO_REPEAT] != 0, excluded
    )
    constrained = (slots >= 0) & (row[:, ENABLED] != 0) & valid  # [B]
    logits[:, :V].masked_fill_(~allowed & constrained[:, None], float("-inf"))
    if logits.shape[1] > V:
        logits[:, V:].masked_fill_(constrained[:, None], float("-inf"))


def mask_verification_logits(
    logits: Tensor,  # [R, V_model] one row per draft position + bonus of each request
    tables: CatalogTables,
    settings: Tensor,  # [S, NUM_FIELDS + X] int32
    all_token_ids: Tensor,  # [S, T]
    total_len: Tensor,  # [S]
    row_slots: Tensor,  # [R] request slot of each row (InputBatch.expanded_idx_mapping)
    local_pos: Tensor,  # [R] j, the row's index within its request (InputBatch.expanded_local_pos)
    fed_tokens: Tensor,  # [R] token fed at each row (input_ids[logits_indices]): last sampled, d_0, d_1, ...
    max_drafts: int,  # K, most drafts per request
    width: int,
) -> None:
    """Mask the target's verification rows: row j of a request follows its drafts d_0..d_{j-1}."""
    R = logits.shape[0]
    j = local_pos.long()  # [R]
    first = torch.arange(R, device=logits.device) - j  # [R] the request's row 0
    # drafts before row j: fed at rows first+1 .. first+j  ([a0, a1, a2] -> row a2 reads a1, a2)
    index = (first[:, None] + 1 + torch.arange(max(max_drafts, 1), device=logits.device)).clamp(0, R - 1)
    extra = fed_tokens.long()[index]  # [R, max(K, 1)]
    mask_rows(logits, tables, settings, all_token_ids, total_len, row_slots, extra, j, width)


def mask_draft_logits(
    logits: Tensor,  # [B, V_model] one row per (padded) batch row
    tables: CatalogTables,
    settings: Tensor,  # [S, NUM_FIELDS + X] int32
    all_token_ids: Tensor,  # [S, T]
    total_len: Tensor,  # [S]
    idx_mapping: Tensor,  # [B] batch row -> request slot (-1 or stale on padding rows)
    draft_tokens: Tensor,  # [B, K] this round's drafts so far (row b, step i)
    draft_step: Tensor,  # [] long, k: drafts 0..k-1 are written
    width: int,
) -> None:
    """Mask the draft's logits at step k: row b follows its committed tokens and d_0..d_{k-1}."""
    B = logits.shape[0]
    num_extra = draft_step.long().expand(B)  # [B]
    mask_rows(logits, tables, settings, all_token_ids, total_len, idx_mapping, draft_tokens.long(), num_extra, width)
