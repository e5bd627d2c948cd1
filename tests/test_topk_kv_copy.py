"""The beams' KV block copies (vllm_padrec.topk.kv_copy) over V2's real KV layouts, on the CPU.

The fake KV caches are made by vLLM 0.26.0's own ``_reshape_attention_kv_cache`` from raw int8 storage,
with FlashAttention / Triton / Flex's blocks-first shape and both of their stride orders, the K/V-first
shape restrided to block-major as ``_update_hybrid_attention_layout`` does, and one backing shared by
several layers. Each check reads the logical block dimension: block ``dst[i]`` must equal block
``src[i]`` as it was, every other block must be unchanged, bit for bit.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from vllm.v1.worker.gpu.attn_utils import _reshape_attention_kv_cache

from vllm_padrec.topk.kv_copy import (
    BlockCopier,
    PrivateBlocks,
    block_pages,
    block_storages,
    prompt_tail_copies,
)

NUM_BLOCKS, BS, HEADS, HEAD = 8, 16, 2, 4
BLOCKS_FIRST = (NUM_BLOCKS, HEADS, BS, 2 * HEAD)  # FlashAttentionBackend.get_kv_cache_shape: (B, H, N, 2 * D)
NHD, HND = (0, 2, 1, 3), (0, 1, 2, 3)  # FlashAttentionBackend.get_kv_cache_stride_order, flash_attn.py:143-163


def blocks_first_cache(stride_order, dtype=torch.float16, seed=0) -> torch.Tensor:  # [NUM_BLOCKS, H, BS, 2 * D]
    page = HEADS * BS * 2 * HEAD * torch.finfo(dtype).bits // 8
    raw = torch.zeros(NUM_BLOCKS * page, dtype=torch.int8)
    spec = SimpleNamespace(dtype=dtype, page_size_padded=None)
    kv = _reshape_attention_kv_cache(raw, spec, BLOCKS_FIRST, stride_order, NUM_BLOCKS, None)
    kv.copy_(torch.randn(kv.shape, generator=torch.Generator().manual_seed(seed)))
    return kv


def kv_first_cache(seed=0) -> torch.Tensor:  # [2, NUM_BLOCKS, BS, H, D], block i's K and V side by side in memory
    kv = torch.zeros(2, NUM_BLOCKS, BS, HEADS, HEAD)
    hidden = BS * HEADS * HEAD
    kv.as_strided_(size=kv.shape, stride=(hidden, 2 * hidden, *kv.stride()[2:]))  # attn_utils.py:505-514
    kv.copy_(torch.randn(kv.shape, generator=torch.Generator().manual_seed(seed)))
    return kv


def expect_copied(before: torch.Tensor, after: torch.Tensor, src, dst, block_dim: int = 0) -> None:
    """Blocks dst[i] of ``after`` equal blocks src[i] of ``before``; every other block is unchanged."""
    expected = before.clone()
    for s, d in zip(src, dst):
        expected.select(block_dim, d).copy_(before.select(block_dim, s))
    assert torch.equal(after, expected)


def copy_blocks(kv_caches, num_blocks: int, src: torch.Tensor, dst: torch.Tensor) -> None:
    """The engine's copies (``BlockCopier`` over ``block_pages``, made at attach) of the runner's ``kv_caches``."""
    BlockCopier(block_pages(kv_caches, num_blocks))(src, dst)


COPIES = {
    "swap (a cycle 0 <- 1, 1 <- 0)": ([1, 0], [0, 1]),
    "three-cycle and a fixed point": ([2, 0, 1, 5], [0, 1, 2, 5]),
    "many children of one parent, itself among them": ([3, 3, 3, 3], [3, 5, 6, 0]),
    "children of a block that is itself overwritten": ([4, 4, 7], [7, 2, 4]),
}


@pytest.mark.parametrize("copies", COPIES.values(), ids=COPIES.keys())
@pytest.mark.parametrize("stride_order", [NHD, HND], ids=["NHD", "HND"])
def test_blocks_first_layouts_copy_whole_blocks(copies, stride_order):
    layers = [blocks_first_cache(stride_order, seed=s) for s in range(3)]
    before = [kv.clone() for kv in layers]
    src, dst = copies
    copy_blocks(layers, NUM_BLOCKS, torch.tensor(src), torch.tensor(dst))
    for old, new in zip(before, layers):
        expect_copied(old, new, src, dst)


@pytest.mark.parametrize("copies", COPIES.values(), ids=COPIES.keys())
def test_kv_first_layout_restrided_to_block_major_copies_k_and_v(copies):
    kv = kv_first_cache()
    before = kv.clone()
    src, dst = copies
    copy_blocks([kv], NUM_BLOCKS, torch.tensor(src), torch.tensor(dst))
    expect_copied(before, kv, src, dst, block_dim=1)


def test_layers_sharing_one_backing_are_copied_once():
    """Two layers viewing one storage (vLLM's packed backing, or shared KV layers): a cycle copied twice
    would swap back."""
    kv = blocks_first_cache(NHD)
    alias = kv.view(kv.shape)  # a second layer over the same bytes
    before = kv.clone()
    assert len(block_storages([kv, [alias]])) == 1
    copy_blocks([kv, [alias]], NUM_BLOCKS, torch.tensor([1, 0]), torch.tensor([0, 1]))
    expect_copied(before, kv, [1, 0], [0, 1])


def test_pages_made_once_copy_what_the_cache_holds_at_each_copy():
    """The engine makes the pages at attach and copies through them every step: they are views, so later
    writes to the cache (the forward's new KV) are what a later copy moves."""
    layers = [blocks_first_cache(NHD, seed=1), blocks_first_cache(HND, seed=2)]
    pages = block_pages(layers, NUM_BLOCKS)
    assert [tuple(p.shape) for p in pages] == [(NUM_BLOCKS, HEADS * BS * 2 * HEAD * 2)] * 2
    for step, (src, dst) in enumerate(COPIES.values()):
        for kv in layers:  # the step's forward writes new KV into every block
            kv.copy_(torch.randn(kv.shape, generator=torch.Generator().manual_seed(10 + step)))
        before = [kv.clone() for kv in layers]
        BlockCopier(pages)(torch.tensor(src), torch.tensor(dst))
        for kv, old in zip(layers, before):
            expect_copied(old, kv, src, dst)


def test_equals_vllms_own_block_copy(monkeypatch):
    """The same bytes as ``copy_kv_cache_blocks_inplace`` (vLLM's copy-on-write copies) for one set of copies."""
    from vllm.utils import torch_utils
    from vllm.v1.worker.utils import copy_kv_cache_blocks_inplace

    monkeypatch.setattr(torch_utils, "PIN_MEMORY", False)  # no pinned memory without a GPU
    src, dst = [2, 0, 1, 3, 3], [0, 1, 2, 5, 6]
    ours, theirs = blocks_first_cache(NHD, seed=4), blocks_first_cache(NHD, seed=4)
    copy_blocks([ours], NUM_BLOCKS, torch.tensor(src), torch.tensor(dst))
    copy_kv_cache_blocks_inplace([theirs], NUM_BLOCKS, list(zip(src, dst)))
    assert torch.equal(ours, theirs)


def test_mismatched_indices_and_storage_are_refused():
    kv = blocks_first_cache(NHD)
    with pytest.raises(ValueError, match="one length"):
        copy_blocks([kv], NUM_BLOCKS, torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="not 3 equal blocks"):
        copy_blocks([kv], 3, torch.tensor([1]), torch.tensor([0]))


def test_prompt_tail_goes_to_each_beams_first_private_block():
    # P = 21, bs = 16: R's block 1 holds positions 16..20; K = 3 beams of B = 2 private blocks
    assert prompt_tail_copies(21, 16, tail_block=9, private_block_ids=[4, 5, 6, 7, 2, 3], k=3) == (
        [9, 9, 9],
        [4, 6, 2],
    )
    assert prompt_tail_copies(32, 16, tail_block=9, private_block_ids=[4, 5, 6], k=3) == ([], [])  # no tail
    assert prompt_tail_copies(21, 16, tail_block=9, private_block_ids=[], k=3) == ([], [])  # L = 1: no beams


def test_private_block_table_of_groups_of_different_k_and_b():
    blocks = PrivateBlocks.build([[7, 9], [4, 5]], beam_width=[2, 1])  # the docstring's example
    assert torch.equal(blocks.table, torch.tensor([[[7, -1], [9, -1]], [[4, 5], [-1, -1]]]))
    assert torch.equal(blocks.dst, torch.tensor([7, 9, 4, 5]))
    assert torch.equal(blocks.group, torch.tensor([0, 0, 1, 1]))
    assert torch.equal(blocks.rank, torch.tensor([0, 1, 0, 0]))
    assert torch.equal(blocks.column, torch.tensor([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="cannot be split among 2 beams"):
        PrivateBlocks.build([[1, 2, 3]], beam_width=[2])


def test_each_beam_gets_its_parents_private_blocks():
    """Group 0: K = 3, B = 2, parents (1, 0, 0): a swap of beams 0 and 1 and a second child of 0. Group 1:
    K = 2, B = 1, parents (1, 1); its padded rank 2 (K_max = 3) has no blocks and is never written."""
    kv = blocks_first_cache(HND, seed=7)
    before = kv.clone()
    blocks = PrivateBlocks.build([[0, 1, 2, 3, 4, 5], [6, 7]], beam_width=[3, 2])
    parent_rank = torch.tensor([[1, 0, 0], [1, 1, 0]])  # [G, K_max]
    src = blocks.sources(parent_rank)
    assert torch.equal(src, torch.tensor([2, 3, 0, 1, 0, 1, 7, 7]))
    copy_blocks([kv], NUM_BLOCKS, src, blocks.dst)
    expect_copied(before, kv, [2, 3, 0, 1, 0, 1, 7, 7], [0, 1, 2, 3, 4, 5, 6, 7])


def test_a_parent_without_blocks_leaves_the_child_as_it_is():
    """Group 1 (K = 1) padded to K_max = 2: a parent rank 1 there has no blocks (no live candidate at all,
    which admission rules out); its child's block is left as it is rather than read from -1."""
    blocks = PrivateBlocks.build([[3, 4], [5]], beam_width=[2, 1])
    src = blocks.sources(torch.tensor([[1, 0], [1, 0]]))
    assert torch.equal(src, torch.tensor([4, 3, 5]))


def test_the_copier_takes_the_kernel_where_it_can_and_the_reference_otherwise(monkeypatch, caplog):
    """CUDA (here: PADREC_FORCE_TRITON=1 under the interpreter) takes the Triton kernel; pages of two sizes, or a
    kernel that fails, take the torch reference, with the reason in the log."""
    from vllm_padrec.topk import kv_copy

    src, dst = torch.tensor([2, 0, 1, 5]), torch.tensor([0, 1, 2, 5])
    layers = [blocks_first_cache(NHD, seed=1), blocks_first_cache(HND, seed=2)]
    before = [kv.clone() for kv in layers]
    assert BlockCopier(block_pages(layers, NUM_BLOCKS)).pointers is None  # CPU: the reference
    monkeypatch.setenv("PADREC_FORCE_TRITON", "1")
    copier = BlockCopier(block_pages(layers, NUM_BLOCKS))
    assert copier.pointers is not None
    copier(src, dst)
    for kv, old in zip(layers, before):
        expect_copied(old, kv, src.tolist(), dst.tolist())
    with caplog.at_level(logging.WARNING, logger="vllm.padrec"):
        mixed = BlockCopier(block_pages([blocks_first_cache(NHD), torch.zeros(NUM_BLOCKS, 3)], NUM_BLOCKS))
    assert mixed.pointers is None and "torch reference" in caplog.text

    def broken(*args):
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(kv_copy, "kv_block_copy", broken)
    before = [kv.clone() for kv in layers]
    with caplog.at_level(logging.ERROR, logger="vllm.padrec"):
        copier(src, dst)  # falls back for this call and every later one
    assert copier.pointers is None and "no kernel today" in caplog.text
    for kv, old in zip(layers, before):
        expect_copied(old, kv, src.tolist(), dst.tolist())
