"""ItemTrie against a plain-Python nested-dict trie, on random catalogs and the shared datasets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import requires_gpu

from vllm_padrec.data import load_dataset
from vllm_padrec.errors import CatalogError
from vllm_padrec.trie import ItemTrie

DATASETS = ("beauty_atspeed", "games_atspeed", "instruments_lcrec")


class ReferenceTrie:
    """Nested dicts: ``root[c_0][c_1]...[c_{L-1}] = item index``."""

    def __init__(self, codes: np.ndarray) -> None:
        self.root: dict = {}
        self.num_slots = codes.shape[1]
        for item, row in enumerate(codes.tolist()):
            children = self.root
            for code in row[:-1]:
                children = children.setdefault(code, {})
            children[row[-1]] = item

    def children(self, prefix) -> dict:
        node = self.root
        for code in prefix:
            node = node[code]
        return node

    def items_under(self, prefix) -> list[int]:
        if len(prefix) == self.num_slots:
            return [self.children(prefix[:-1])[prefix[-1]]]
        out, stack = [], [(self.children(prefix), len(prefix))]
        while stack:
            node, depth = stack.pop()
            if depth == self.num_slots - 1:
                out += list(node.values())
            else:
                stack += [(child, depth + 1) for child in node.values()]
        return out

    def allowed(self, prefix, banned=()) -> set[int]:
        """Codes that extend ``prefix`` to an item outside ``banned``."""
        banned = set(banned)
        return {c for c in self.children(prefix) if set(self.items_under(tuple(prefix) + (c,))) - banned}


def random_codes(rng: np.random.Generator, num_items: int, sizes: tuple[int, ...]) -> np.ndarray:
    """Distinct SIDs with shared prefixes: early slots skewed to few codes, as real tokenizers do."""
    capacity = int(np.prod(sizes))
    if 2 * num_items >= capacity:  # dense catalog: a uniform subset of all SIDs
        flat = rng.choice(capacity, min(num_items, capacity), replace=False)
        rows = set(zip(*(index.tolist() for index in np.unravel_index(flat, sizes))))
    else:
        rows: set[tuple[int, ...]] = set()
        while len(rows) < num_items:
            rows.add(tuple(int(min(s - 1, rng.geometric(min(0.5, 3.0 / s)) - 1)) for s in sizes))
    codes = np.array(sorted(rows), dtype=np.int64)
    return codes[rng.permutation(len(codes))]  # catalog order != lexicographic order


def walk(trie: ItemTrie, codes: np.ndarray, items: np.ndarray, depths: np.ndarray, device) -> torch.Tensor:
    """Node of each ``codes[items[b], :depths[b]]`` by ``advance``, one slot at a time."""
    B = len(items)
    node = torch.zeros(B, dtype=torch.long, device=device)
    for slot in range(codes.shape[1]):
        active = torch.from_numpy(depths > slot).to(device)
        code = torch.from_numpy(codes[items, slot]).to(device)
        child = trie.advance(torch.full((B,), slot, dtype=torch.long, device=device), node, code)
        node = torch.where(active, child, node)
    return node


def check_masks(trie: ItemTrie, ref: ReferenceTrie, codes: np.ndarray, rng, num_prefixes: int, device) -> None:
    N, L = codes.shape
    items = rng.integers(0, N, num_prefixes)
    depths = rng.integers(0, L, num_prefixes)
    node = walk(trie, codes, items, depths, device)  # [B]
    path = trie.item_path.long()[torch.from_numpy(items).to(device), torch.from_numpy(depths).to(device)]
    assert torch.equal(node, path), "advance walk and item_path disagree"
    depth_t = torch.from_numpy(depths).to(device)
    mask = trie.allowed_codes(depth_t, node).cpu().numpy()  # [B, C_max]
    C = trie.max_codebook_size
    for b in range(num_prefixes):
        prefix = tuple(codes[items[b], : depths[b]].tolist())
        expected = np.zeros(C, dtype=bool)
        expected[list(ref.children(prefix))] = True
        assert (mask[b] == expected).all(), f"allowed_codes of prefix {prefix}"
    # advance with any code (also outside the codebook): child iff the reference has it
    code = rng.integers(-1, C + 2, num_prefixes)
    child = trie.advance(depth_t, node, torch.from_numpy(code).to(device)).cpu().numpy()
    for b in range(num_prefixes):
        prefix = tuple(codes[items[b], : depths[b]].tolist())
        has = int(code[b]) in ref.children(prefix)
        assert (child[b] >= 0) == has, f"advance of prefix {prefix} by code {code[b]}"
        if has:
            below = ref.items_under(prefix + (int(code[b]),))[0]
            assert child[b] == int(trie.item_path[below, depths[b] + 1])


CONFIGS = [  # (num_items, codebook sizes)
    (1, (4,)),
    (7, (5,)),
    (60, (3, 4)),
    (300, (8, 8, 8)),
    (500, (16, 6, 9, 4)),
    (400, (32, 32, 32, 32, 2)),
]


@pytest.mark.parametrize("num_items,sizes", CONFIGS)
def test_masks_match_reference_on_random_catalogs(num_items, sizes, device):
    rng = np.random.default_rng(num_items)
    codes = random_codes(rng, num_items, sizes)
    ref = ReferenceTrie(codes)
    for dense_levels in range(len(sizes) + 1):
        trie = ItemTrie.build(codes, sizes, dense_levels=dense_levels, device=device)
        check_masks(trie, ref, codes, rng, 300, device)


def brute_force_allowed(codes: np.ndarray, prefix: np.ndarray, banned: set[int], C: int) -> np.ndarray:
    d = len(prefix)
    live = (codes[:, :d] == prefix).all(1)
    live[list(banned)] = False
    out = np.zeros(C, dtype=bool)
    out[np.unique(codes[live, d])] = True
    return out


def check_banned_masks(trie: ItemTrie, codes: np.ndarray, rng, num_prefixes: int, max_banned: int, device) -> None:
    N, L = codes.shape
    C = trie.max_codebook_size
    items = rng.integers(0, N, num_prefixes)
    depths = rng.integers(0, L, num_prefixes)
    banned = np.full((num_prefixes, max_banned), -1, dtype=np.int64)
    for b in range(num_prefixes):
        d, prefix = depths[b], codes[items[b], : depths[b]]
        under = np.flatnonzero((codes[:, : d + 1] == codes[items[b], : d + 1]).all(1))  # a whole child
        siblings = np.flatnonzero((codes[:, :d] == prefix).all(1))
        whole_child = under if rng.random() < 0.5 else under[:1]
        pool = np.concatenate([whole_child, rng.choice(siblings, 3), rng.integers(0, N, 2)])
        chosen = list(dict.fromkeys(pool.tolist()))[: int(rng.integers(0, max_banned + 1))]
        banned[b, : len(chosen)] = chosen
        banned[b] = banned[b, rng.permutation(max_banned)]  # padding anywhere in the row
    node = walk(trie, codes, items, depths, device)
    mask = (
        trie.allowed_codes(torch.from_numpy(depths).to(device), node, torch.from_numpy(banned).to(device)).cpu().numpy()
    )
    unbanned = trie.allowed_codes(torch.from_numpy(depths).to(device), node).cpu().numpy()
    assert (mask != unbanned).any(), "the test bans no whole subtree: it checks nothing"
    for b in range(num_prefixes):
        prefix = codes[items[b], : depths[b]]
        expected = brute_force_allowed(codes, prefix, set(banned[b][banned[b] >= 0].tolist()), C)
        assert (mask[b] == expected).all(), f"no-repeat mask of prefix {prefix.tolist()}, banned {banned[b].tolist()}"


@pytest.mark.parametrize("num_items,sizes", CONFIGS)
def test_banned_masks_match_brute_force(num_items, sizes, device):
    rng = np.random.default_rng(100 + num_items)
    codes = random_codes(rng, num_items, sizes)
    for dense_levels in range(len(sizes) + 1):
        trie = ItemTrie.build(codes, sizes, dense_levels=dense_levels, device=device)
        check_banned_masks(trie, codes, rng, 200, 12, device)


def test_structure(device):
    rng = np.random.default_rng(3)
    sizes = (6, 5, 7)
    codes = random_codes(rng, 150, sizes)
    trie = ItemTrie.build(torch.from_numpy(codes), sizes, dense_levels=1, device=device)
    ref = ReferenceTrie(codes)
    N, L = codes.shape
    assert trie.level_sizes == (1,) + tuple(len({tuple(r[: l + 1]) for r in codes.tolist()}) for l in range(L))
    path = trie.item_path.long().cpu()
    assert (path[:, 0] == 0).all() and torch.equal(path[:, L].sort().values, torch.arange(N))
    assert torch.equal(trie.leaf_item.long().cpu()[path[:, L]], torch.arange(N))
    for l, counts in enumerate(trie.subtree_items):
        for node in range(trie.level_sizes[l]):
            item = int(torch.nonzero(path[:, l] == node)[0])
            assert int(counts[node]) == len(ref.items_under(tuple(codes[item, :l].tolist())))
    # per-level views have the documented shapes; CSR edges are the children's ids in order
    dense_child, row_ptr, col_code = trie.dense_child, trie.row_ptr, trie.col_code
    assert dense_child[0].shape == (1, sizes[0]) and row_ptr[0] is None
    for l in range(1, L):
        assert dense_child[l] is None and row_ptr[l].shape == (trie.level_sizes[l] + 1,)
        assert col_code[l].shape == (trie.level_sizes[l + 1],) and int(row_ptr[l][-1]) == trie.level_sizes[l + 1]
    assert trie.memory_bytes() > 0 and trie.bytes_per_item() == trie.memory_bytes() / N
    moved = trie.to("cpu")
    assert moved.device.type == "cpu" and torch.equal(moved.item_path, trie.item_path.cpu())


def test_bad_input():
    with pytest.raises(CatalogError, match="share the semantic ID"):
        ItemTrie.build(np.array([[0, 1], [0, 1]]), (2, 2))
    with pytest.raises(CatalogError, match=r"\[0, C_s\)"):
        ItemTrie.build(np.array([[0, 2]]), (2, 2))
    with pytest.raises(CatalogError, match="codebook sizes"):
        ItemTrie.build(np.array([[0, 1]]), (2,))


def test_dead_rows_get_nothing(device):
    # node -1 (a code that was no child) allows nothing and stays -1; codes outside the codebook are no child
    codes = np.array([[0, 1], [1, 0]])
    for dense_levels in (0, 1, 2):
        trie = ItemTrie.build(codes, (2, 2), dense_levels=dense_levels, device=device)
        depth = torch.tensor([0, 1, 0, 0, 1], device=device)
        node = torch.tensor([-1, -1, 0, 0, 0], device=device)
        code = torch.tensor([0, 1, 2, -1, 5], device=device)
        assert not trie.allowed_codes(depth[:2], node[:2]).any()
        assert (trie.advance(depth, node, code) == -1).all()


@pytest.fixture(scope="module")
def shared_catalogs(data_dir):
    catalogs = {}
    for name in DATASETS:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            catalogs[name] = load_dataset(path).catalog
    if not catalogs:
        pytest.skip(f"none of {DATASETS} under {data_dir}")
    return catalogs


@pytest.mark.parametrize("name", DATASETS)
def test_masks_match_reference_on_shared_datasets(name, shared_catalogs, device):
    if name not in shared_catalogs:
        pytest.skip(f"dataset {name} not found")
    catalog = shared_catalogs[name]
    codes, sizes = catalog.codes, catalog.layout.codebook_sizes
    rng = np.random.default_rng(7)
    ref = ReferenceTrie(codes)
    for dense_levels in (0, 2, catalog.num_slots):
        trie = ItemTrie.build(codes, sizes, dense_levels=dense_levels, device=device)
        check_masks(trie, ref, codes, rng, 1000, device)
    check_banned_masks(trie, codes, rng, 300, 16, device)


@requires_gpu
def test_cuda_graph_capture():
    rng = np.random.default_rng(11)
    sizes = (64, 32, 32, 16)
    codes = random_codes(rng, 5000, sizes)
    trie = ItemTrie.build(codes, sizes, device="cuda")
    B, M = 32, 8
    depth = torch.zeros(B, dtype=torch.long, device="cuda")
    node = torch.zeros_like(depth)
    code = torch.zeros_like(depth)
    banned = torch.full((B, M), -1, dtype=torch.long, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside the graph
            trie.allowed_codes(depth, node, banned), trie.advance(depth, node, code)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mask_out = trie.allowed_codes(depth, node, banned)
        child_out = trie.advance(depth, node, code)
    items = rng.integers(0, len(codes), B)
    depths = rng.integers(0, 4, B)
    depth.copy_(torch.from_numpy(depths))
    node.copy_(walk(trie, codes, items, depths, "cuda"))
    code.copy_(torch.from_numpy(codes[items, np.minimum(depths, 3)]))
    banned[:, 0] = torch.from_numpy(items)
    graph.replay()
    assert torch.equal(mask_out, trie.allowed_codes(depth, node, banned))
    assert torch.equal(child_out, trie.advance(depth, node, code))
