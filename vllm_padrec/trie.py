"""The prefix trie of the catalog's semantic IDs, stored as GPU tensors (code space: no token ids here).

Vocabulary:

- slot ``s`` (0..L-1): the position of a code inside a semantic ID; slot ``s`` draws from codebook
  ``s`` of ``C_s`` codes. ``C_max = max_s C_s``.
- level ``l`` (0..L): the depth of a trie node. Level 0 holds the root (node 0); level ``l`` holds one
  node per distinct ``l``-code prefix of the catalog; level L holds the leaves, one per item.
- node: numbered per level, ``0..n_l - 1``, in lexicographic order of the prefixes, so the children
  of a node are consecutive and sorted by code. A node id only means something with its level.
- depth (of a decoding row): how many codes of the current item it has written = the level of its
  current node; its next code is for slot ``depth``.
- banned item: a catalog index that a row may not complete (already recommended, or in the history).

Layout (STATIC, "Vectorizing the Trie", arXiv 2602.22647): the first ``dense_levels`` levels keep a
dense child table (``dense_child[l][node, code]`` = child id or -1); the deeper, sparse levels keep
CSR rows (``row_ptr[l]``, ``col_code[l]``) whose edge index *is* the child's node id at level l+1.
``subtree_items[l]`` counts the items under each node and ``item_path[i]`` lists item i's node at
every level; together they answer "does this child still hold a non-banned item?" without a walk.

The per-level tensors are views into a few stacked buffers, so that one gather serves the rows of
every level at once (a batch mixes depths): the dense tables of all dense levels stacked into
``[sum n_l, C_max]``, the CSR rows of all sparse levels concatenated, the subtree counts of all
levels concatenated. The query methods are batched torch with fixed output shapes and no host sync,
so they can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vllm_padrec.errors import CatalogError


@dataclass(eq=False)
class ItemTrie:
    """Prefix trie of N distinct semantic IDs of L slots. Build with ``ItemTrie.build``."""

    codebook_sizes: tuple[int, ...]  # C_s for each slot s; L = len(codebook_sizes)
    level_sizes: tuple[int, ...]  # n_l for l = 0..L (n_0 = 1, n_L = N)
    dense_levels: int  # levels 0..dense_levels-1 use dense child tables, the others CSR
    max_degree: tuple[int, ...]  # most children of one node, per level l = 0..L-1
    dense_table: Tensor  # [sum_{l < dense_levels} n_l, C_max] int32: stacked dense child tables
    row_ptr_flat: Tensor  # [sum_{l >= dense_levels} (n_l + 1)] int32: stacked CSR row pointers (level-local)
    col_code_flat: Tensor  # [sum_{l >= dense_levels} n_{l+1}] int32: stacked CSR edge codes
    subtree_flat: Tensor  # [sum_{l <= L} n_l] int32: items under each node, levels stacked
    item_path: Tensor  # [N, L + 1] int32: node id of item i at level l
    leaf_item: Tensor  # [n_L] int32: catalog index of each leaf

    def __post_init__(self) -> None:
        L, n = self.num_slots, self.level_sizes
        dense = self.dense_levels
        device = self.item_path.device

        def offsets(sizes: Sequence[int]) -> list[int]:
            return [0] + np.cumsum(sizes).tolist()

        # Python offsets of each level's block inside the stacked buffers (indexed by level).
        self._dense_off = offsets([n[l] for l in range(dense)])
        self._rp_off = [0] * dense + offsets([n[l] + 1 for l in range(dense, L)])
        self._cc_off = [0] * dense + offsets([n[l + 1] for l in range(dense, L)])
        self._node_off = offsets(n)

        # One row per depth d (0..L-1), gathered once per call: where level d's blocks start in the
        # stacked buffers, and where the nodes of level d+1 start in subtree_flat.
        rows = [
            [
                self._dense_off[d] if d < dense else 0,
                self._rp_off[d] if d >= dense else 0,
                self._cc_off[d] if d >= dense else 0,
                self._node_off[d + 1],
            ]
            for d in range(L)
        ]
        self._depth_table = torch.tensor(rows, dtype=torch.long, device=device)  # [L, 4]
        self._csr_width = max([self.max_degree[l] for l in range(dense, L)], default=1)  # D
        self._edge_arange = torch.arange(self._csr_width, device=device)  # [D]
        self._two = torch.arange(2, device=device)  # [2]

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        codes: np.ndarray | Tensor,  # [N, L] int, per-slot codes, every row distinct
        codebook_sizes: Sequence[int],
        dense_levels: int = 2,
        device: str | torch.device = "cpu",
    ) -> ItemTrie:
        """Build the trie of ``codes``; row i of ``codes`` becomes item (catalog index) i."""
        if isinstance(codes, Tensor):
            codes = codes.detach().cpu().numpy()
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise CatalogError(f"codes must be a non-empty [num_items, num_slots] array, got shape {codes.shape}")
        N, L = codes.shape
        sizes = tuple(int(c) for c in codebook_sizes)
        if len(sizes) != L:
            raise CatalogError(f"{len(sizes)} codebook sizes for {L} slots")
        if (codes < 0).any() or (codes >= np.array(sizes)).any():
            raise CatalogError(f"every code must lie in [0, C_s) for codebook sizes {sizes}")
        if N >= 2**31:
            raise CatalogError(f"{N} items do not fit int32 node ids")
        if dense_levels < 0:
            raise ValueError(f"dense_levels must be >= 0, got {dense_levels}")
        dense = min(dense_levels, L)
        C = max(sizes)

        order = np.lexsort(codes.T[::-1])  # [N] catalog index of the i-th SID in lexicographic order
        sorted_codes = codes[order]  # [N, L]
        opens = np.ones((N, L), dtype=bool)
        opens[1:] = sorted_codes[1:] != sorted_codes[:-1]
        # opens[i, l]: sorted SID i starts a new (l+1)-code prefix (it differs in some slot <= l)
        opens = np.logical_or.accumulate(opens, axis=1)
        if not opens[:, L - 1].all():
            dup = sorted_codes[int(np.flatnonzero(~opens[:, L - 1])[0])].tolist()
            raise CatalogError(f"two items share the semantic ID {dup}: apply the catalog's collision rule first")
        path = np.zeros((N, L + 1), dtype=np.int64)  # [N, L + 1] node of sorted SID i at level l
        path[:, 1:] = np.cumsum(opens, axis=0) - 1
        level_sizes = (1,) + tuple(int(path[-1, l]) + 1 for l in range(1, L + 1))

        dense_blocks, row_ptrs, col_codes, max_degree = [], [], [], []
        for l in range(L):
            first = np.flatnonzero(opens[:, l])  # [n_{l+1}] first sorted SID under each level-(l+1) node
            parent = path[first, l]  # [n_{l+1}] non-decreasing
            code = sorted_codes[first, l]  # [n_{l+1}] sorted within each parent
            degree = np.bincount(parent, minlength=level_sizes[l])  # [n_l]
            max_degree.append(int(degree.max()))
            if l < dense:
                block = np.full((level_sizes[l], C), -1, dtype=np.int32)
                block[parent, code] = np.arange(level_sizes[l + 1], dtype=np.int32)
                dense_blocks.append(block)
            else:
                row_ptrs.append(np.concatenate([[0], np.cumsum(degree)]))
                col_codes.append(code)
        subtree = [np.bincount(path[:, l], minlength=level_sizes[l]) for l in range(L + 1)]
        item_path = np.empty_like(path)
        item_path[order] = path

        def stack(blocks: list[np.ndarray], shape_tail: tuple[int, ...] = ()) -> Tensor:
            array = np.concatenate(blocks) if blocks else np.zeros((0,) + shape_tail)
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int32)).to(device)

        return cls(
            codebook_sizes=sizes,
            level_sizes=level_sizes,
            dense_levels=dense,
            max_degree=tuple(max_degree),
            dense_table=stack(dense_blocks, (C,)),
            row_ptr_flat=stack(row_ptrs),
            col_code_flat=stack(col_codes),
            subtree_flat=stack(subtree),
            item_path=stack([item_path], (L + 1,)),
            leaf_item=stack([order]),
        )

    def to(self, device: str | torch.device) -> ItemTrie:
        """A copy of the trie with every tensor on ``device``."""
        return ItemTrie(
            codebook_sizes=self.codebook_sizes,
            level_sizes=self.level_sizes,
            dense_levels=self.dense_levels,
            max_degree=self.max_degree,
            dense_table=self.dense_table.to(device),
            row_ptr_flat=self.row_ptr_flat.to(device),
            col_code_flat=self.col_code_flat.to(device),
            subtree_flat=self.subtree_flat.to(device),
            item_path=self.item_path.to(device),
            leaf_item=self.leaf_item.to(device),
        )

    # -- sizes and per-level views ---------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_items(self) -> int:
        return self.level_sizes[-1]

    @property
    def max_codebook_size(self) -> int:
        return max(self.codebook_sizes)

    @property
    def device(self) -> torch.device:
        return self.item_path.device

    @property
    def dense_child(self) -> list[Tensor | None]:
        """Per level l: ``[n_l, C_l]`` int32 child node id at level l+1 (-1: none); None for CSR levels."""
        n, C = self.level_sizes, self.codebook_sizes
        return [
            self.dense_table[self._dense_off[l] : self._dense_off[l] + n[l], : C[l]] if l < self.dense_levels else None
            for l in range(self.num_slots)
        ]

    @property
    def row_ptr(self) -> list[Tensor | None]:
        """Per level l: ``[n_l + 1]`` int32 CSR row pointers into ``col_code[l]``; None for dense levels."""
        n = self.level_sizes
        return [
            self.row_ptr_flat[self._rp_off[l] : self._rp_off[l] + n[l] + 1] if l >= self.dense_levels else None
            for l in range(self.num_slots)
        ]

    @property
    def col_code(self) -> list[Tensor | None]:
        """Per level l: ``[n_{l+1}]`` int32 edge codes; edge e leads to node e of level l+1. None for dense levels."""
        n = self.level_sizes
        return [
            self.col_code_flat[self._cc_off[l] : self._cc_off[l] + n[l + 1]] if l >= self.dense_levels else None
            for l in range(self.num_slots)
        ]

    @property
    def subtree_items(self) -> list[Tensor]:
        """Per level l = 0..L: ``[n_l]`` int32 number of items under each node."""
        return [self.subtree_flat[self._node_off[l] : self._node_off[l + 1]] for l in range(self.num_slots + 1)]

    def memory_bytes(self) -> int:
        """Bytes of device memory held by the trie's tensors."""
        tensors = [
            self.dense_table,
            self.row_ptr_flat,
            self.col_code_flat,
            self.subtree_flat,
            self.item_path,
            self.leaf_item,
            self._depth_table,
            self._edge_arange,
            self._two,
        ]
        return sum(t.numel() * t.element_size() for t in tensors)

    def bytes_per_item(self) -> float:
        return self.memory_bytes() / self.num_items

    # -- queries (batched, fixed shapes, no host sync) ---------------------------------------------
    def child_table(
        self,
        depth: Tensor,  # [B] long, 0..L-1
        node: Tensor,  # [B] long, node id at level depth[b]
    ) -> Tensor:  # [B, C_max] long: child of node[b] through code c (node id at level depth+1), -1 if none
        """Children of each row's node, indexed by code; all -1 for a row whose node is -1 (a dead row)."""
        offsets = self._depth_table[depth.clamp(0, self.num_slots - 1)]  # [B, 4]
        return self._child_table(depth, node, offsets)

    def _child_table(self, depth: Tensor, node: Tensor, offsets: Tensor) -> Tensor:  # [B, C_max] long
        L, C, dense = self.num_slots, self.max_codebook_size, self.dense_levels
        children = None
        if dense > 0:
            row = (offsets[:, 0] + node).clamp_(0, self.dense_table.shape[0] - 1)  # [B]
            children = self.dense_table[row]  # [B, C] int32
        if dense < L:
            # Gather the padded CSR row (width D = max degree of the sparse levels), then scatter each
            # edge to its code's column: row [c=3 -> 17, c=9 -> 18] becomes [.., -1, 17, -1, .., 18, ..].
            edge, valid = self._csr_edges(node, offsets)  # [B, D], [B, D]
            code = self.col_code_flat[(offsets[:, 2:3] + edge).clamp_(0, self.col_code_flat.numel() - 1)]  # [B, D]
            column = torch.where(valid, code, C).long()  # padding edges land in the dropped column C
            sparse = torch.full((node.shape[0], C + 1), -1, dtype=torch.long, device=node.device)
            sparse = sparse.scatter_(1, column, edge)[:, :C]  # [B, C]
            children = sparse if children is None else torch.where((depth < dense)[:, None], children, sparse)
        return torch.where(node[:, None] >= 0, children, -1).long()

    def _csr_edges(self, node: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        # Level-local edge ids (= child node ids) of each row's CSR row, padded to width D, and which are real.
        g = (offsets[:, 1] + node).clamp_(0, self.row_ptr_flat.numel() - 2)  # [B]
        bounds = self.row_ptr_flat[g[:, None] + self._two]  # [B, 2]: first edge, end
        edge = bounds[:, :1] + self._edge_arange  # [B, D]
        return edge, edge < bounds[:, 1:]

    def allowed_codes(
        self,
        depth: Tensor,  # [B] long, 0..L-1
        node: Tensor,  # [B] long, node id at level depth[b]
        banned: Tensor | None = None,  # [B, M] long: distinct item indices per row, -1 = padding
    ) -> Tensor:  # [B, C_max] bool
        """Codes of slot ``depth[b]`` that extend row b's prefix towards an item.

        With ``banned``, a code is allowed only if the child's subtree still holds an item that row b
        has not banned: a banned item is never completed and no prefix leads into a dead end.
        """
        L = self.num_slots
        depth = depth.clamp(0, L - 1)
        offsets = self._depth_table[depth]  # [B, 4]
        child = self._child_table(depth, node, offsets)  # [B, C]
        allowed = child >= 0
        if banned is None:
            return allowed
        items_below = self.subtree_flat[(offsets[:, 3:4] + child).clamp_(min=0)]  # [B, C]
        # node of each banned item at the children's level depth+1; -2 never equals a child id (or -1)
        banned_node = self.item_path.reshape(-1)[banned.clamp(min=0) * (L + 1) + (depth + 1)[:, None]]  # [B, M]
        banned_node = torch.where(banned >= 0, banned_node, -2)
        banned_below = (child[:, :, None] == banned_node[:, None, :]).sum(-1)  # [B, C]
        return allowed & (items_below > banned_below)

    def advance(
        self,
        depth: Tensor,  # [B] long, 0..L-1
        node: Tensor,  # [B] long, node id at level depth[b]
        code: Tensor,  # [B] long, code of slot depth[b]
    ) -> Tensor:  # [B] long: child node id at level depth+1, -1 if the code is not a child
        L, C, dense = self.num_slots, self.max_codebook_size, self.dense_levels
        depth = depth.clamp(0, L - 1)
        offsets = self._depth_table[depth]  # [B, 4]
        child = None
        if dense > 0:
            row = (offsets[:, 0] + node).clamp_(0, self.dense_table.shape[0] - 1)  # [B]
            child = self.dense_table[row, code.clamp(0, C - 1)]  # [B] int32
        if dense < L:
            edge, valid = self._csr_edges(node, offsets)  # [B, D]
            edge_code = self.col_code_flat[(offsets[:, 2:3] + edge).clamp_(0, self.col_code_flat.numel() - 1)]
            hit = valid & (edge_code == code[:, None])  # [B, D], at most one hit per row
            sparse = torch.where(hit, edge, -1).amax(1)  # [B]
            child = sparse if child is None else torch.where(depth < dense, child, sparse)
        return torch.where((node >= 0) & (code >= 0) & (code < C), child, -1).long()
