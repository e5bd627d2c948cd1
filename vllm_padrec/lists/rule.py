"""The allowed-next-token rule of a recommendation list, in plain torch: the reference every list mask
is tested against (``ListConstraint``, the Triton kernel ``kernels/catalog_mask.py``).

A list is ``i_1 <sep> i_2 <sep> ... i_N </s>``, each item its L code tokens (code token of slot s =
``layout.code_offset(s) + code``). With period P = L + 1, item k holds list positions kP .. kP+L-1
and its separator kP+L, so the state after g list tokens is arithmetic: depth = g mod P (codes of
the current item; L: complete), complete items = g div P (+1 at depth L); only the trie node of the
partial item and the items already in the list (no-repeat) need the tokens themselves.

The rule, per row:

- depth < L: the code tokens of slot ``depth`` that lead to a catalog item that is not banned
  (``ItemTrie.allowed_codes``): banned are the request's excluded items and, with no-repeat, the list's;
- depth = L: ``<sep>`` while the list has room for another item and some catalog item is not banned
  (``separator_allowed``), ``</s>`` once the list holds ``min_items`` (``end_allowed``).

``allowed_after`` states the rule for a batch of prefixes with per-row settings; ``ListConstraint``
(the reference decoders' incremental form) builds its masks from the same pieces (``separator_allowed``,
``end_allowed``, ``next_tokens``). Everything is batched torch with fixed shapes and no host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.lists.tables import CatalogTables
from vllm_padrec.trie import ItemTrie


def separator_allowed(complete, num_items, max_items, num_banned, catalog_items):
    """``<sep>`` after a complete item: room for one more item, and a catalog item left that is not banned.
    Elementwise on tensors, or on host ints (then a bool)."""
    return complete & (num_items < max_items) & (num_banned < catalog_items)


def end_allowed(complete, num_items, min_items):
    """``</s>`` after a complete item, once the list holds ``min_items``. Elementwise, as ``separator_allowed``."""
    return complete & (num_items >= min_items)


def next_tokens(
    trie: ItemTrie,
    code_offset: Tensor,  # [>= L] long, token id of code 0 of slot s
    code_arange: Tensor,  # [C_max] long
    vocab_size: int,  # V
    depth: Tensor,  # [B] long, slot of the next code (clamped to L - 1)
    node: Tensor,  # [B] long, trie node of the partial item
    banned: Tensor | None,  # [B, M] long, item indices that may not be completed (-1 = empty)
    in_item: Tensor,  # [B] bool, the next token is a code
    sep_ok: Tensor,  # [B] bool
    eos_ok: Tensor,  # [B] bool
) -> Tensor:  # [B, V] bool
    """The allowed tokens: the trie's codes of slot ``depth`` on rows inside an item, ``<sep>`` and ``</s>``."""
    code_ok = trie.allowed_codes(depth, node, banned) & in_item[:, None]  # [B, C_max]
    # code c of slot d is token code_offset[d] + c; refused codes go to <pad>, which is never allowed
    # (every write there is False)
    column = torch.where(code_ok, code_offset[depth][:, None] + code_arange, TokenLayout.PAD)  # [B, C_max]
    allowed = torch.zeros((depth.shape[0], vocab_size), dtype=torch.bool, device=depth.device)
    allowed.scatter_(1, column, code_ok)
    allowed[:, TokenLayout.SEP] = sep_ok
    allowed[:, TokenLayout.EOS] = eos_ok
    return allowed


def allowed_after(
    tables: CatalogTables,
    tokens: Tensor,  # [B, W] long, list tokens from the list start (positions >= length are ignored)
    length: Tensor,  # [B] long, list tokens written
    max_items: Tensor,  # [B] long, items a list may hold (<= W // P)
    min_items: Tensor,  # [B] long, items before </s> is allowed
    no_repeat: Tensor,  # [B] bool, an item at most once per list
    excluded: Tensor | None = None,  # [B, X] long, distinct catalog indices the list may not hold (-1 = empty)
) -> tuple[Tensor, Tensor]:  # allowed [B, V] bool, valid [B] bool (False: the prefix breaks the rule)
    """The tokens that may follow each row's list prefix (module docstring), and whether the prefix itself
    follows the rule: the grammar, catalog items only, none excluded, no repeat under no-repeat, at most
    ``max_items``."""
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
    in_list = torch.where(complete & no_repeat[:, None], item, -1)  # [B, n_max]
    same = (in_list[:, :, None] == in_list[:, None, :]) & (in_list[:, :, None] >= 0)  # [B, n_max, n_max]
    repeats = same.sum((1, 2)) > (in_list >= 0).sum(1)  # [B] an equal pair off the diagonal
    if excluded is None:
        excluded = torch.full((B, 0), -1, dtype=torch.long, device=tokens.device)
    excluded = excluded.long()
    hit = (item[:, :, None] == excluded[:, None, :]).any(-1) & complete  # [B, n_max] an excluded item
    banned = torch.cat([excluded, in_list], 1)  # [B, X + n_max]

    # the partial item: its trie node, through the first leaf under its prefix
    d = depth.clamp(max=L - 1)  # [B]
    partial = codes.gather(1, current.clamp(max=n_max - 1)[:, None, None].expand(B, 1, L))[:, 0]  # [B, L]
    prefix_key = (partial * tables.stride * (torch.arange(L, device=tokens.device) < d[:, None])).sum(1)  # [B]
    first = torch.searchsorted(tables.leaf_keys, prefix_key).clamp(max=N - 1)  # [B]
    under = tables.span[d]  # [B] keys under a depth-d prefix
    prefix_ok = tables.leaf_keys[first] // under == prefix_key // under  # [B]
    node = tables.trie.item_path[tables.trie.leaf_item[first].long(), d].long()  # [B]

    in_item = depth < L  # [B]
    valid = grammar_ok & items_ok & ~hit.any(1) & ~repeats & (current < max_items) & (prefix_ok | ~in_item)

    is_complete = depth == L  # [B]
    num_banned = (banned >= 0).sum(1)  # [B] the excluded items, and the list's items under no-repeat
    sep_ok = separator_allowed(is_complete, num_items, max_items, num_banned, N)
    eos_ok = end_allowed(is_complete, num_items, min_items)
    allowed = next_tokens(
        tables.trie, tables.code_offset, tables.code_arange, V, d, node, banned, in_item, sep_ok, eos_ok
    )
    return allowed, valid
