"""KV block copies in every layer's storage at once: two Triton launches instead of two per storage.

The rule is ``kv_block_copy_reference`` (block ``dst[i]`` becomes block ``src[i]`` as it was, in every
storage). The reference runs two operations per storage: 56 launches per beam step for a 28-layer target,
each with Python around it. Here one launch gathers the source blocks of every storage into a scratch
buffer and a second scatters them, so sources are read before any write (cycles and blocks that are
both source and destination are safe, as in the reference). The storages are separate allocations; the
kernels reach them through a device tensor of their base addresses (``StoragePointers``, made once),
which Triton reads as pointers.

Scratch: ``[storages, N, page]``. When that exceeds ``max_scratch_bytes`` the storages are taken in
groups that fit (two launches per group), so a batch of many top-K requests never allocates gigabytes.
More copies than a grid's second dimension holds (65,535) take more launches, every gather of a group
before any of its scatters.

The launcher reads nothing back from the device (no ``.item()``), so it can run between V2's CUDA-graph
replays without a sync. Index ranges are not checked on the device: ``src`` and ``dst`` must lie in
[0, num_blocks) and ``dst`` must be distinct, as the reference requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["StoragePointers", "kv_block_copy"]

_TILE = 1024  # words of a page per program
_MAX_SCRATCH_BYTES = 256 << 20
_MAX_COPIES_PER_LAUNCH = 65535  # CUDA's limit on a grid's second dimension


@dataclass(frozen=True)
class StoragePointers:
    """The storages of ``pages`` as the kernels see them: base addresses on the device, one page size."""

    pages: tuple[torch.Tensor, ...]  # [num_blocks, page bytes] uint8 each
    bases: torch.Tensor  # [S] int64 on the pages' device: each storage's address
    page_bytes: int
    word_bytes: int  # 8 when every page and base allows 8-byte words, else 1

    @classmethod
    def of(cls, pages: Sequence[torch.Tensor]) -> StoragePointers:
        """Raises ValueError unless the pages are uint8 [num_blocks, page bytes] views of one size and device."""
        pages = tuple(pages)
        if not pages:
            raise ValueError("no KV storages")
        shapes = {tuple(p.shape[1:]) for p in pages}
        devices = {p.device for p in pages}
        if len(shapes) != 1 or len(devices) != 1 or any(p.dtype != torch.uint8 or p.dim() != 2 for p in pages):
            raise ValueError(f"pages of one size, uint8, on one device are needed: {sorted(shapes)}, {devices}")
        if any(not p.is_contiguous() for p in pages):
            raise ValueError("each storage's pages must be contiguous")
        page_bytes = pages[0].shape[1]
        aligned = page_bytes % 8 == 0 and all(p.data_ptr() % 8 == 0 for p in pages)
        bases = torch.tensor([p.data_ptr() for p in pages], dtype=torch.int64).to(pages[0].device)
        return cls(pages, bases, page_bytes, 8 if aligned else 1)


@triton.jit
def _gather_blocks(
    bases,  # [S] int64: storage addresses
    src,  # [N] int64: block copied from
    scratch,  # [S_group, N, W] words
    first_storage,  # the group's first storage
    N,
    W: tl.constexpr,  # words per page
    WORD: tl.constexpr,  # tl.int64 or tl.uint8
    TILE: tl.constexpr,
):
    s = tl.program_id(0)  # storage within the group
    i = tl.program_id(1)  # copy
    tile = tl.program_id(2)
    base = tl.load(bases + first_storage + s).to(tl.pointer_type(WORD))
    block = tl.load(src + i)
    words = tile * TILE + tl.arange(0, TILE)
    inside = words < W
    values = tl.load(base + block * W + words, mask=inside)
    tl.store(scratch + (s.to(tl.int64) * N + i) * W + words, values, mask=inside)


@triton.jit
def _scatter_blocks(
    bases,  # [S] int64
    dst,  # [N] int64: block copied to
    scratch,  # [S_group, N, W] words
    first_storage,
    N,
    W: tl.constexpr,
    WORD: tl.constexpr,
    TILE: tl.constexpr,
):
    s = tl.program_id(0)
    i = tl.program_id(1)
    tile = tl.program_id(2)
    base = tl.load(bases + first_storage + s).to(tl.pointer_type(WORD))
    block = tl.load(dst + i)
    words = tile * TILE + tl.arange(0, TILE)
    inside = words < W
    values = tl.load(scratch + (s.to(tl.int64) * N + i) * W + words, mask=inside)
    tl.store(base + block * W + words, values, mask=inside)


def kv_block_copy(
    storages: StoragePointers,
    src: torch.Tensor,  # [N] long, on the storages' device
    dst: torch.Tensor,  # [N] long; distinct
    max_scratch_bytes: int = _MAX_SCRATCH_BYTES,
) -> None:
    """``kv_block_copy_reference(storages.pages, src, dst)`` in two launches per group of storages."""
    if src.shape != dst.shape or src.dim() != 1:
        raise ValueError(
            f"block copies need two index vectors of one length, got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    n = src.shape[0]
    if n == 0:
        return
    word_dtype, tl_word = (torch.int64, tl.int64) if storages.word_bytes == 8 else (torch.uint8, tl.uint8)
    words = storages.page_bytes // storages.word_bytes
    total = storages.bases.shape[0]
    group = max(1, min(total, max_scratch_bytes // (n * storages.page_bytes)))
    scratch = torch.empty(group * n * words, dtype=word_dtype, device=src.device)
    src, dst = src.long(), dst.long()
    tiles = triton.cdiv(words, _TILE)
    chunk = _MAX_COPIES_PER_LAUNCH
    for first in range(0, total, group):
        count = min(group, total - first)
        views = scratch.view(group, n, words)[:count]  # [count, n, words]
        # every source of the group is gathered before any destination is written, chunk by chunk of copies
        for kernel, blocks in ((_gather_blocks, src), (_scatter_blocks, dst)):
            for start in range(0, n, chunk):
                part = views[:, start : start + chunk]  # [count, m, words], strided: rows of n copies
                m = part.shape[1]
                kernel[(count, m, tiles)](
                    storages.bases, blocks[start : start + m], part, first, n, W=words, WORD=tl_word, TILE=_TILE
                )
