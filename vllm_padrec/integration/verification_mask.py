"""Catalog masks on vLLM's logits: the tokens that may follow each row's list prefix, on the GPU.

Vocabulary (besides ``vllm_padrec.constraint``'s depth, node, banned):

- list: a request's tokens after the last ``<rec>`` of its prompt (``list_start``): committed output,
  then this round's draft tokens. The constraint keeps it aligned: with period P = L + 1, item k
  holds list positions kP .. kP+L-1 and its separator kP+L. So the state after g list tokens is
  arithmetic: depth = g mod P, complete items = g div P (+1 at depth L); only the trie node of the
  partial item and the items already in the list (no-repeat) need the tokens themselves.
- row: one logits row. Verification row j of a request (j = 0..K, K drafts + the bonus row) follows
  the committed tokens and drafts d_0..d_{j-1}; V2 feeds d_{j-1} at row j, so they are the tokens fed
  at rows 1..j of the request (`input_ids[logits_indices]`). Draft step k follows the committed
  tokens and the drafts d_0..d_{k-1} of this round.
- key: an item's codes as one mixed-radix int64, slot 0 most significant; sorted keys are the
  trie's leaves in order, so one ``searchsorted`` finds an item, or the first item under a prefix.
- window: W = max_list_items * P list positions read per row (fixed, for CUDA graphs).

A row whose prefix breaks the list grammar (a rejected draft, a list longer than the window, a
request that was not constrained from its start) is left unmasked: its tokens are never kept,
because the row where the bad token was proposed refused it. Everything is batched torch with fixed
shapes and no host sync, so the draft masks can be captured in CUDA graphs.

Differences from ``ListConstraint``: per-row settings; a list without ``num_items`` stops at
``max_list_items``; history items cannot be banned (``ban_history``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.errors import CatalogError
from vllm_padrec.trie import ItemTrie

# Columns of the per-request settings table ([max_num_reqs, NUM_FIELDS] int32, one row per slot).
ENABLED, LIST_START, MAX_ITEMS, MIN_ITEMS, NO_REPEAT = range(5)
NUM_FIELDS = 5


@dataclass(eq=False)
class CatalogTables:
    """Device tables of one catalog for the masks. Build with ``CatalogTables.build``."""

    layout: TokenLayout
    trie: ItemTrie
    leaf_keys: Tensor  # [N] int64, key of each trie leaf (ascending)
    stride: Tensor  # [L] int64, key weight of slot s: prod_{t > s} C_t
    span: Tensor  # [L + 1] int64, keys under a depth-d prefix: prod_{t >= d} C_t
    token_slot: Tensor  # [V + 1] int64, slot of each token id (L = <sep>, L + 1 = other); row V: ids >= V
    token_code: Tensor  # [V + 1] int64, code of a code token, -1 otherwise
    code_offset: Tensor  # [L] int64, token id of code 0 of slot s
    code_arange: Tensor  # [C_max] int64

    @classmethod
    def build(cls, catalog: ItemCatalog, device: str | torch.device = "cpu") -> CatalogTables:
        layout = catalog.layout
        sizes = layout.codebook_sizes
        span = [1]
        for size in reversed(sizes):
            span.insert(0, span[0] * size)
        if span[0] >= 2**62:
            raise CatalogError(f"codebooks {sizes} have too many semantic IDs for int64 keys")
        trie = ItemTrie.build(catalog.codes, sizes, device=device)
        leaf_codes = torch.from_numpy(catalog.codes).to(device)[trie.leaf_item.long()]  # [N, L] in leaf order
        stride = torch.tensor(span[1:], dtype=torch.long, device=device)  # [L]
        V, L = layout.vocab_size, layout.num_slots
        token_slot = torch.full((V + 1,), layout.other_slot, dtype=torch.long)
        token_slot[:V] = torch.from_numpy(layout.slot_table())
        token_code = torch.full((V + 1,), -1, dtype=torch.long)
        for slot, size in enumerate(sizes):
            start = layout.code_offset(slot)
            token_code[start : start + size] = torch.arange(size)
        return cls(
            layout=layout,
            trie=trie,
            leaf_keys=(leaf_codes * stride).sum(1),
            stride=stride,
            span=torch.tensor(span, dtype=torch.long, device=device),
            token_slot=token_slot.to(device),
            token_code=token_code.to(device),
            code_offset=torch.tensor([layout.code_offset(s) for s in range(L)], dtype=torch.long, device=device),
            code_arange=torch.arange(max(sizes), dtype=torch.long, device=device),
        )

    @property
    def num_slots(self) -> int:
        return self.layout.num_slots

    @property
    def period(self) -> int:
        return self.layout.num_slots + 1

    @property
    def num_items(self) -> int:
        return self.trie.num_items


def allowed_after(
    tables: CatalogTables,
    tokens: Tensor,  # [B, W] long, list tokens from the list start (positions >= length are ignored)
    length: Tensor,  # [B] long, list tokens written
    max_items: Tensor,  # [B] long, items a list may hold (<= W // P)
    min_items: Tensor,  # [B] long, items before </s> is allowed
    no_repeat: Tensor,  # [B] bool, an item at most once per list
) -> tuple[Tensor, Tensor]:  # allowed [B, V] bool, valid [B] bool (False: the prefix breaks the grammar)
    """The tokens that may follow each row's list prefix (module docstring)."""
    L, P, N = tables.num_slots, tables.period, tables.num_items
    V = tables.layout.vocab_size
    B, W = tokens.shape
    n_max = W // P  # items in the window
    pos = torch.arange(W, device=tokens.device)  # [W]
    ids = tokens.clamp(0, V)  # [B, W]; ids past the layout (padded vocabulary) read row V: "other"
    written = pos < length[:, None]  # [B, W]

    # grammar: codes of slot p mod P, a separator at p mod P = L
    expected = pos % P  # [W]
    fits = torch.where(expected == L, tokens == TokenLayout.SEP, tables.token_slot[ids] == expected)  # [B, W]
    grammar_ok = (fits | ~written).all(1)  # [B]

    depth = length % P  # [B] codes of the current item (L: complete)
    current = length // P  # [B] index of the current item
    num_items = current + (depth == L)  # [B] complete items
    codes = tables.token_code[ids][:, : n_max * P].view(B, n_max, P)[:, :, :L].clamp(min=0)  # [B, n_max, L]

    # the complete items, by key
    keys = (codes * tables.stride).sum(-1)  # [B, n_max]
    leaf = torch.searchsorted(tables.leaf_keys, keys).clamp(max=N - 1)  # [B, n_max]
    complete = torch.arange(n_max, device=tokens.device) < num_items[:, None]  # [B, n_max]
    items_ok = ((tables.leaf_keys[leaf] == keys) | ~complete).all(1)  # [B]
    item = tables.trie.leaf_item[leaf].long()  # [B, n_max]
    banned = torch.where(complete & no_repeat[:, None], item, -1)  # [B, n_max]
    same = (banned[:, :, None] == banned[:, None, :]) & (banned[:, :, None] >= 0)  # [B, n_max, n_max]
    repeats = same.sum((1, 2)) > (banned >= 0).sum(1)  # [B] an equal pair off the diagonal

    # the partial item: its trie node, through the first leaf under its prefix
    d = depth.clamp(max=L - 1)  # [B]
    partial = codes.gather(1, current.clamp(max=n_max - 1)[:, None, None].expand(B, 1, L))[:, 0]  # [B, L]
    prefix_key = (partial * tables.stride * (torch.arange(L, device=tokens.device) < d[:, None])).sum(1)  # [B]
    first = torch.searchsorted(tables.leaf_keys, prefix_key).clamp(max=N - 1)  # [B]
    under = tables.span[d]  # [B] keys under a depth-d prefix
    prefix_ok = tables.leaf_keys[first] // under == prefix_key // under  # [B]
    node = tables.trie.item_path[tables.trie.leaf_item[first].long(), d].long()  # [B]

    in_item = depth < L  # [B]
    valid = grammar_ok & items_ok & ~repeats & (current < max_items) & (prefix_ok | ~in_item)

    # the next token (as ListConstraint.allowed_tokens, with per-row settings)
    code_ok = tables.trie.allowed_codes(d, node, banned) & in_item[:, None]  # [B, C_max]
    # code c of slot d is token code_offset[d] + c; refused codes go to <pad>, never allowed
    column = torch.where(code_ok, tables.code_offset[d][:, None] + tables.code_arange, TokenLayout.PAD)
    allowed = torch.zeros((B, V), dtype=torch.bool, device=tokens.device).scatter_(1, column, code_ok)
    is_complete = depth == L
    allowed[:, TokenLayout.SEP] = is_complete & (num_items < max_items) & (~no_repeat | (num_items < N))
    allowed[:, TokenLayout.EOS] = is_complete & (num_items >= min_items)
    return allowed, valid


def list_window(
    all_token_ids: Tensor,  # [S, T] int, every request's prompt + output tokens (vLLM's req_states)
    total_len: Tensor,  # [S] int, tokens of each request in all_token_ids
    settings: Tensor,  # [S, NUM_FIELDS] int32, per-request settings (LIST_START column)
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
    settings: Tensor,  # [S, NUM_FIELDS] int32
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
    row = settings[slot].long()  # [B, NUM_FIELDS]
    tokens, length = list_window(all_token_ids, total_len, settings, slot, extra, num_extra, width)
    allowed, valid = allowed_after(tables, tokens, length, row[:, MAX_ITEMS], row[:, MIN_ITEMS], row[:, NO_REPEAT] != 0)
    constrained = (slots >= 0) & (row[:, ENABLED] != 0) & valid  # [B]
    logits[:, :V].masked_fill_(~allowed & constrained[:, None], float("-inf"))
    if logits.shape[1] > V:
        logits[:, V:].masked_fill_(constrained[:, None], float("-inf"))


def mask_verification_logits(
    logits: Tensor,  # [R, V_model] one row per draft position + bonus of each request
    tables: CatalogTables,
    settings: Tensor,  # [S, NUM_FIELDS] int32
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
    settings: Tensor,  # [S, NUM_FIELDS] int32
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
