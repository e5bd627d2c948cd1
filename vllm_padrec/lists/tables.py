"""``CatalogTables``: one catalog's device tables for the list masks (the reference rule and the Triton kernel).

- key: an item's codes as one mixed-radix int64, slot 0 most significant; sorted keys are the
  trie's leaves in order, so one ``searchsorted`` finds an item, or the first item under a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.errors import CatalogError
from vllm_padrec.trie import ItemTrie


@dataclass(eq=False)
class CatalogTables:
    """Device tables of one catalog for the masks. Build with ``CatalogTables.build``."""

    layout: TokenLayout
    trie: ItemTrie
    leaf_keys: Tensor  # [N] int64, key of each trie leaf (ascending)
    item_key: Tensor  # [N] int64, key of each catalog item (by catalog index)
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
        token_slot = torch.from_numpy(layout.slot_table(V + 1))  # [V + 1]; row V (ids >= V) is "other"
        token_code = torch.full((V + 1,), -1, dtype=torch.long)
        for slot, size in enumerate(sizes):
            start = layout.code_offset(slot)
            token_code[start : start + size] = torch.arange(size)
        leaf_keys = (leaf_codes * stride).sum(1)  # [N]
        item_key = torch.empty_like(leaf_keys).scatter_(0, trie.leaf_item.long(), leaf_keys)  # [N]
        return cls(
            layout=layout,
            trie=trie,
            leaf_keys=leaf_keys,
            item_key=item_key,
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

    def memory_bytes(self) -> int:
        """Bytes held by the tables' tensors, the trie's included: what they take on any device (a GPU's
        allocator rounds each tensor up to its block size on top)."""
        own = (self.leaf_keys, self.item_key, self.stride, self.span, self.token_slot, self.token_code)
        own += (self.code_offset, self.code_arange)
        return self.trie.memory_bytes() + sum(t.numel() * t.element_size() for t in own)
