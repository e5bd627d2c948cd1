"""Fused catalog mask kernel: the list masks of ``vllm_padrec.lists.masks`` in one launch.

The plain-torch reference is ``catalog_mask_reference.py`` (the masks of ``vllm_padrec.lists.masks``,
which apply the rule of ``vllm_padrec.lists.rule``; their docstrings define list, row, key and window);
this kernel computes the same masks, one program per logits row, and writes -inf into the same logits.

Per row (program):

1. the row's list window, W tokens: committed tokens from the list start (``all_token_ids``), then
   the row's extra tokens (verification: the drafts fed at the request's earlier rows; draft step
   k: ``draft_tokens[b, :k]``);
2. the prefix checks: grammar (a code of slot p mod P, a separator at p mod P = L), every complete
   item a catalog key and not one of the request's excluded items (the settings row's columns
   NUM_FIELDS.., as keys through ``item_key``), no key twice (no-repeat), fewer items than
   ``max_items``, the partial item a catalog prefix;
3. when the row is constrained (enabled request, valid prefix): -inf on every column except the
   allowed ones. The allowed codes come from the sorted leaf keys alone, without the trie's node
   tables: code c of slot d extends prefix key k when some leaf lies in
   [k + c * stride_d, k + (c + 1) * stride_d), and when more leaves lie there than banned items
   (excluded items, and with no-repeat the list's) (two binary searches per code).

CUDA-graph safety: the launchers read no device value on the host and allocate nothing; the draft
step is read inside the kernel from its 0-dim device tensor. Index ranges follow the reference's
clamps, so a padding row (slot -1) or a stale slot reads in-bounds memory and writes nothing wrong.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from vllm_padrec.lists import spec

__all__ = ["catalog_mask_verification", "catalog_mask_draft"]

_BLOCK_V = 1024  # logits columns per store
_MAX_BLOCK_C = 256  # codes of one slot judged at once
_MAX_BLOCK_X = 32  # excluded items compared at once
_MAX_BLOCK_X_COUNT = 1024  # exclusion columns counted at once


@triton.jit
def _lower_bound(keys_ptr, N, n_steps, x):
    """First index i with keys[i] >= x (N when none), for each element of x (any shape, int64)."""
    lo = tl.zeros_like(x)
    hi = tl.zeros_like(x) + N
    for _ in range(n_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(keys_ptr + tl.minimum(mid, N - 1), mask=active, other=0)
        right = active & (v < x)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    return lo


@triton.jit
def _list_token(
    pos,  # int64 list positions (any shape)
    mask,  # positions to read
    committed,  # list tokens in all_token_ids
    ids_row,  # pointer to all_token_ids[slot, list_start]
    last_col,  # T - 1 - list_start: the last readable column, relative to ids_row
    extra_ptr,
    extra_base,  # VERIFY: index of the request's row 1 in fed_tokens; else offset of draft_tokens[b]
    extra_col_stride,
    E,  # extras per row (>= 1)
    R,  # VERIFY: rows of fed_tokens
    VERIFY: tl.constexpr,
):
    """The token at each list position: committed, else the row's (clamped) extra token."""
    from_committed = tl.load(ids_row + tl.minimum(pos, last_col), mask=mask & (pos < committed), other=0)
    e = tl.minimum(tl.maximum(pos - committed, 0), E - 1)
    if VERIFY:
        index = tl.minimum(tl.maximum(extra_base + e, 0), R - 1)
        from_extra = tl.load(extra_ptr + index * extra_col_stride, mask=mask & (pos >= committed), other=0)
    else:
        from_extra = tl.load(extra_ptr + extra_base + e * extra_col_stride, mask=mask & (pos >= committed), other=0)
    return tl.where(pos < committed, from_committed.to(tl.int64), from_extra.to(tl.int64))


@triton.jit
def _excluded_keys(columns, x0, X, item_key_ptr, N, BLOCK_X: tl.constexpr):
    """Keys of the excluded items in columns x0 .. x0 + BLOCK_X - 1 of a settings row (-1: none)."""
    x = x0 + tl.arange(0, BLOCK_X)
    index = tl.load(columns + x, mask=x < X, other=-1).to(tl.int64)
    key = tl.load(item_key_ptr + tl.minimum(tl.maximum(index, 0), N - 1), mask=index >= 0, other=-1)
    return tl.where(index >= 0, key, -1)


@triton.jit(do_not_specialize=["R", "X"])  # R, the row count, changes every engine step: one compiled variant
def _catalog_mask_kernel(
    logits_ptr,
    logits_row_stride,
    V_model,
    leaf_keys_ptr,
    item_key_ptr,
    N,
    n_steps,
    stride_ptr,
    span_ptr,
    token_slot_ptr,
    token_code_ptr,
    code_offset_ptr,
    V,
    settings_ptr,
    settings_row_stride,
    X,
    ids_ptr,
    ids_row_stride,
    T,
    total_len_ptr,
    slots_ptr,
    local_pos_ptr,
    extra_ptr,
    extra_row_stride,
    extra_col_stride,
    E,
    R,
    draft_step_ptr,
    L: tl.constexpr,
    P: tl.constexpr,
    W: tl.constexpr,
    N_MAX: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_X_COUNT: tl.constexpr,
    SEP: tl.constexpr,
    EOS: tl.constexpr,
    NUM_FIELDS: tl.constexpr,
    ENABLED: tl.constexpr,
    LIST_START: tl.constexpr,
    MAX_ITEMS: tl.constexpr,
    MIN_ITEMS: tl.constexpr,
    NO_REPEAT: tl.constexpr,
    VERIFY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    setting = settings_ptr + tl.maximum(slot, 0) * settings_row_stride
    enabled = tl.load(setting + ENABLED) != 0
    start = tl.load(setting + LIST_START).to(tl.int64)
    max_items = tl.load(setting + MAX_ITEMS).to(tl.int64)
    min_items = tl.load(setting + MIN_ITEMS).to(tl.int64)
    no_repeat = tl.load(setting + NO_REPEAT) != 0
    committed = tl.maximum(tl.load(total_len_ptr + tl.maximum(slot, 0)).to(tl.int64) - start, 0)
    if VERIFY:  # row j of a request follows its drafts d_0..d_{j-1}, fed at its rows 1..j
        j = tl.load(local_pos_ptr + row).to(tl.int64)
        extra_base = row - j + 1
        num_extra = j
    else:  # draft step k: row b follows draft_tokens[b, :k]
        extra_base = row * extra_row_stride
        num_extra = tl.load(draft_step_ptr).to(tl.int64)
    length = committed + num_extra
    ids_row = ids_ptr + tl.maximum(slot, 0) * ids_row_stride + start
    last_col = T - 1 - start

    # grammar over the window
    pos = tl.arange(0, BLOCK_W).to(tl.int64)  # [BLOCK_W]
    in_window = pos < W
    tokens = _list_token(
        pos, in_window, committed, ids_row, last_col, extra_ptr, extra_base, extra_col_stride, E, R, VERIFY
    )
    ids = tl.minimum(tl.maximum(tokens, 0), V)  # ids past the layout read row V: "other"
    expected = pos % P
    token_slot = tl.load(token_slot_ptr + ids, mask=in_window, other=0)
    fits = tl.where(expected == L, tokens == SEP, token_slot == expected)
    grammar_ok = tl.sum((in_window & (pos < length) & ~fits).to(tl.int32), 0) == 0

    depth = length % P  # codes of the current item (L: complete)
    current = length // P  # index of the current item
    num_items = current + (depth == L).to(tl.int64)  # complete items

    # the complete items' keys: [BLOCK_N, BLOCK_L] codes -> [BLOCK_N]
    item = tl.arange(0, BLOCK_N).to(tl.int64)
    code_slot = tl.arange(0, BLOCK_L).to(tl.int64)
    item_mask = (item[:, None] < N_MAX) & (code_slot[None, :] < L)
    item_tokens = _list_token(
        item[:, None] * P + code_slot[None, :],
        item_mask,
        committed,
        ids_row,
        last_col,
        extra_ptr,
        extra_base,
        extra_col_stride,
        E,
        R,
        VERIFY,
    )
    codes = tl.load(token_code_ptr + tl.minimum(tl.maximum(item_tokens, 0), V), mask=item_mask, other=0)
    slot_stride = tl.load(stride_ptr + code_slot, mask=code_slot < L, other=0)  # [BLOCK_L]
    keys = tl.sum(tl.maximum(codes, 0) * slot_stride[None, :], 1)  # [BLOCK_N]
    complete = item < tl.minimum(num_items, N_MAX)
    leaf = _lower_bound(leaf_keys_ptr, N, n_steps, keys)
    leaf_key = tl.load(leaf_keys_ptr + tl.minimum(leaf, N - 1))
    items_ok = tl.sum((complete & (leaf_key != keys)).to(tl.int32), 0) == 0
    banned = complete & no_repeat  # [BLOCK_N]
    pair = (keys[:, None] == keys[None, :]) & banned[:, None] & banned[None, :] & (item[:, None] != item[None, :])
    repeats = tl.sum(tl.sum(pair.to(tl.int32), 1), 0) > 0

    # the excluded items (catalog indices, then -1): how many, and whether the list holds one
    # (the excluded items come first in their columns: a row whose first column is -1 excludes nothing)
    first_excluded = tl.load(setting + NUM_FIELDS, mask=X > 0, other=-1)
    num_excluded = tl.zeros((), tl.int64)
    for x0 in range(0, tl.where(first_excluded >= 0, X, 0), BLOCK_X_COUNT):
        x = x0 + tl.arange(0, BLOCK_X_COUNT)
        index = tl.load(setting + NUM_FIELDS + x, mask=x < X, other=-1)
        num_excluded += tl.sum((index >= 0).to(tl.int64), 0)
    hits = tl.zeros((), tl.int32)
    for y0 in range(0, num_excluded, BLOCK_X):
        excluded_key = _excluded_keys(setting + NUM_FIELDS, y0, X, item_key_ptr, N, BLOCK_X)  # [BLOCK_X]
        hit = complete[:, None] & (keys[:, None] == excluded_key[None, :])  # [BLOCK_N, BLOCK_X]
        hits += tl.sum(tl.sum(hit.to(tl.int32), 1), 0)

    # the partial item: its prefix key, and whether any catalog item lies under it
    d = tl.minimum(depth, L - 1)
    partial = tl.minimum(current, N_MAX - 1)
    prefix_mask = code_slot < d
    prefix_tokens = _list_token(
        partial * P + code_slot,
        prefix_mask,
        committed,
        ids_row,
        last_col,
        extra_ptr,
        extra_base,
        extra_col_stride,
        E,
        R,
        VERIFY,
    )
    prefix_codes = tl.load(token_code_ptr + tl.minimum(tl.maximum(prefix_tokens, 0), V), mask=prefix_mask, other=0)
    prefix_key = tl.sum(tl.where(prefix_mask, tl.maximum(prefix_codes, 0) * slot_stride, 0), 0)
    under = tl.load(span_ptr + d)  # keys under a depth-d prefix
    first = tl.load(leaf_keys_ptr + tl.minimum(_lower_bound(leaf_keys_ptr, N, n_steps, prefix_key), N - 1))
    prefix_ok = first // under == prefix_key // under

    in_item = depth < L
    valid = grammar_ok & items_ok & (hits == 0) & ~repeats & (current < max_items) & (prefix_ok | ~in_item)
    if (slot >= 0) & enabled & valid:
        is_complete = depth == L
        num_banned = num_excluded + tl.where(no_repeat, num_items, 0)  # excluded items, the list's (no-repeat)
        sep_ok = is_complete & (num_items < max_items) & (num_banned < N)
        eos_ok = is_complete & (num_items >= min_items)
        code_start = tl.load(code_offset_ptr + d)  # token id of code 0 of slot d
        num_codes = tl.where(in_item, under // tl.load(span_ptr + d + 1), 0)  # C_d (0: no code allowed)
        out = logits_ptr + row * logits_row_stride
        # every column but slot d's codes, <sep> and </s> when they are allowed
        for v0 in range(0, V_model, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            keep = ((cols >= code_start) & (cols < code_start + num_codes)) | ((cols == SEP) & sep_ok)
            keep = keep | ((cols == EOS) & eos_ok)
            neg_inf = tl.full([BLOCK_V], float("-inf"), tl.float32).to(logits_ptr.dtype.element_ty)
            tl.store(out + cols, neg_inf, mask=(cols < V_model) & ~keep)
        # slot d's codes: a leaf under prefix + code, and with no-repeat one that is not in the list
        step = tl.load(stride_ptr + d)  # keys under a depth-(d+1) prefix
        for c0 in range(0, num_codes, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            low = prefix_key + c * step  # [BLOCK_C] first key under prefix + c
            below = _lower_bound(leaf_keys_ptr, N, n_steps, low + step) - _lower_bound(leaf_keys_ptr, N, n_steps, low)
            inside = banned[None, :] & (keys[None, :] >= low[:, None]) & (keys[None, :] < low[:, None] + step)
            banned_below = tl.sum(inside.to(tl.int64), 1)  # [BLOCK_C]
            for z0 in range(0, num_excluded, BLOCK_X):
                block_key = _excluded_keys(setting + NUM_FIELDS, z0, X, item_key_ptr, N, BLOCK_X)  # [BLOCK_X]
                lies_inside = (block_key[None, :] >= low[:, None]) & (block_key[None, :] < low[:, None] + step)
                banned_below += tl.sum(lies_inside.to(tl.int64), 1)
            neg_inf = tl.full([BLOCK_C], float("-inf"), tl.float32).to(logits_ptr.dtype.element_ty)
            tl.store(out + code_start + c, neg_inf, mask=(c < num_codes) & (below <= banned_below))


@functools.lru_cache(maxsize=16)
def _launch_constants(tables, width: int, num_excluded_columns: int) -> dict:
    """The kernel's per-catalog arguments (binary-search steps and constexprs), once per catalog and
    window: the launcher runs every engine step."""
    layout = tables.layout
    n_max = width // tables.period
    return dict(
        n_steps=math.ceil(math.log2(tables.num_items + 1)),
        L=tables.num_slots,
        P=tables.period,
        W=width,
        N_MAX=n_max,
        BLOCK_W=triton.next_power_of_2(width),
        BLOCK_N=triton.next_power_of_2(n_max),
        BLOCK_L=triton.next_power_of_2(tables.num_slots),
        BLOCK_C=min(triton.next_power_of_2(max(layout.codebook_sizes)), _MAX_BLOCK_C),
        BLOCK_V=_BLOCK_V,
        BLOCK_X=min(triton.next_power_of_2(max(num_excluded_columns, 1)), _MAX_BLOCK_X),
        BLOCK_X_COUNT=min(triton.next_power_of_2(max(num_excluded_columns, 1)), _MAX_BLOCK_X_COUNT),
        SEP=layout.SEP,
        EOS=layout.EOS,
        NUM_FIELDS=spec.NUM_FIELDS,
        ENABLED=spec.ENABLED,
        LIST_START=spec.LIST_START,
        MAX_ITEMS=spec.MAX_ITEMS,
        MIN_ITEMS=spec.MIN_ITEMS,
        NO_REPEAT=spec.NO_REPEAT,
    )


def _launch(
    logits: torch.Tensor,  # [R, V_model] float, masked in place
    tables,  # vllm_padrec.lists.tables.CatalogTables
    settings: torch.Tensor,  # [S, NUM_FIELDS + X] int32
    all_token_ids: torch.Tensor,  # [S, T] int
    total_len: torch.Tensor,  # [S] int
    slots: torch.Tensor,  # [R] request slot per row (< 0: padding)
    local_pos: torch.Tensor,  # [R] verification: row index within its request (draft: unused)
    extra: torch.Tensor,  # verification: fed_tokens [R]; draft: draft_tokens [B, K]
    num_extras: int,  # E: extras a row may read (verification: max(K, 1); draft: K)
    draft_step: torch.Tensor,  # [] draft: drafts written so far (verification: unused)
    width: int,  # W, a multiple of P
    verify: bool,
) -> None:
    if logits.stride(1) != 1 or all_token_ids.stride(1) != 1 or not settings.is_contiguous():
        raise ValueError("logits, all_token_ids (unit column stride) and settings (contiguous) have the wrong layout")
    rows = logits.shape[0]
    if rows == 0:
        return
    num_excluded_columns = settings.shape[1] - spec.NUM_FIELDS  # X
    constants = dict(_launch_constants(tables, width, num_excluded_columns))
    n_steps = constants.pop("n_steps")
    row_stride, col_stride = (0, extra.stride(0)) if verify else (extra.stride(0), extra.stride(1))
    _catalog_mask_kernel[(rows,)](
        logits,
        logits.stride(0),
        logits.shape[1],
        tables.leaf_keys,
        tables.item_key,
        tables.num_items,
        n_steps,
        tables.stride,
        tables.span,
        tables.token_slot,
        tables.token_code,
        tables.code_offset,
        tables.layout.vocab_size,
        settings,
        settings.stride(0),
        num_excluded_columns,
        all_token_ids,
        all_token_ids.stride(0),
        all_token_ids.shape[1],
        total_len,
        slots,
        local_pos,
        extra,
        row_stride,
        col_stride,
        max(num_extras, 1),
        rows,
        draft_step,
        VERIFY=verify,
        **constants,
    )


def catalog_mask_verification(
    logits: torch.Tensor,  # [R, V_model] one row per draft position + bonus of each request
    tables,
    settings: torch.Tensor,  # [S, NUM_FIELDS + X] int32
    all_token_ids: torch.Tensor,  # [S, T]
    total_len: torch.Tensor,  # [S]
    row_slots: torch.Tensor,  # [R] request slot of each row
    local_pos: torch.Tensor,  # [R] j, the row's index within its request
    fed_tokens: torch.Tensor,  # [R] token fed at each row: last sampled, d_0, d_1, ...
    max_drafts: int,  # K
    width: int,  # W
) -> None:
    """``vllm_padrec.lists.masks.mask_verification_logits`` in one launch (same arguments, same result)."""
    _launch(
        logits,
        tables,
        settings,
        all_token_ids,
        total_len,
        row_slots,
        local_pos,
        fed_tokens,
        max(max_drafts, 1),
        local_pos,
        width,
        verify=True,
    )


def catalog_mask_draft(
    logits: torch.Tensor,  # [B, V_model] one row per (padded) batch row
    tables,
    settings: torch.Tensor,  # [S, NUM_FIELDS + X] int32
    all_token_ids: torch.Tensor,  # [S, T]
    total_len: torch.Tensor,  # [S]
    idx_mapping: torch.Tensor,  # [B] batch row -> request slot (-1 or stale on padding rows)
    draft_tokens: torch.Tensor,  # [B, K] this round's drafts so far
    draft_step: torch.Tensor,  # [] long, k: drafts 0..k-1 are written
    width: int,
) -> None:
    """``vllm_padrec.lists.masks.mask_draft_logits`` in one launch (same arguments, same result)."""
    _launch(
        logits,
        tables,
        settings,
        all_token_ids,
        total_len,
        idx_mapping,
        idx_mapping,
        draft_tokens,
        draft_tokens.shape[1],
        draft_step,
        width,
        verify=False,
    )
