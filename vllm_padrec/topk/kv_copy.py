"""The beams' KV copies: whole KV blocks copied inside V2's block-major KV storage, on the GPU, with no host sync.

A top-K request R's beams each own B private KV blocks (``topk/admission.py``, ``topk/beams.py``). Two
copies keep them right (topk/DESIGN.md, section 4, steps 7 and 9):

- step 0: R's partial last prompt block (the P mod bs prompt tokens past R's full blocks) is copied into
  the first private block of every beam (``prompt_tail_copies``; none when P mod bs = 0);
- steps 1 .. L-1: once the step's selection is known, beam j continues the beam of rank ``parent_j``,
  so beam j's private blocks get a copy of that parent's (``PrivateBlocks.sources``). A beam that is
  its own parent copies its blocks onto themselves: a no-op in value, kept so that the index tensors
  have one fixed, host-known shape and the parents never leave the GPU (skipping them would need a
  host sync; in a beam step most children have another parent anyway).

Storage: vLLM 0.26.0 allocates each layer's KV (or one backing shared by several layers) as raw bytes
in which block i owns the contiguous range [i * page, (i + 1) * page) for every attention layout
(``worker/gpu/attn_utils.py``: ``_allocate_kv_cache``, ``_reshape_attention_kv_cache``; the blocks-first
shapes ``(num_blocks, heads, block_size, 2 * head_size)`` of FlashAttention, Triton and Flex, with
any stride order, padded pages, and the K/V-first shapes that ``_update_hybrid_attention_layout``
restrides to block-major). The copies go through that byte view (``block_pages``, made once per
engine), exactly as vLLM's own ``copy_kv_cache_blocks_inplace`` (``worker/utils.py:541``) does for its
copy-on-write of partial prefix hits, but with GPU index tensors instead of a host list, since the
parents are only known on the GPU. Each storage is copied once however many layers view it, and the
sources are gathered into a temporary before any destination is written, so permutations with cycles
(0 <- 1, 1 <- 0) and many children of one parent are safe. ``BlockCopier`` runs them as one Triton
kernel over every storage (``vllm_padrec.kernels.kv_block_copy``: two launches per step instead of two
per layer) or, off CUDA, as its torch reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vllm_padrec.device_lists import long_tensors
from vllm_padrec.envs import force_triton
from vllm_padrec.kernels import StoragePointers, kv_block_copy, kv_block_copy_reference


def block_storages(kv_caches: Iterable[Tensor | Sequence[Tensor]]) -> list[Tensor]:
    """One tensor per distinct backing storage among the runner's KV caches (layers may share one)."""
    storages: list[Tensor] = []
    seen: set[int] = set()
    for entry in kv_caches:
        for tensor in entry if isinstance(entry, (list, tuple)) else (entry,):
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in seen:
                seen.add(pointer)
                storages.append(tensor)
    return storages


def block_pages(
    kv_caches: Iterable[Tensor | Sequence[Tensor]],  # the runner's ``kv_caches``: one tensor (or list) per layer
    num_blocks: int,  # the KV cache config's num_blocks
) -> list[Tensor]:  # per distinct storage: [num_blocks, page bytes] uint8, a view of it
    """Every KV storage as its blocks' byte pages (module docstring). The views stay valid as long as the
    storages do, so the engine makes them once (``TopKEngine.attach``) rather than at every copy."""
    pages = []
    for tensor in block_storages(kv_caches):
        blocks = torch.empty(0, dtype=torch.uint8, device=tensor.device)
        blocks.set_(tensor.untyped_storage())
        if blocks.numel() % num_blocks:
            raise ValueError(f"a KV storage of {blocks.numel()} bytes is not {num_blocks} equal blocks")
        pages.append(blocks.view(num_blocks, -1))
    return pages


class BlockCopier:
    """The engine's block copies over its KV storages: ``block[dst[i]] = block[src[i]]`` (as they were before
    the call) in every storage. On CUDA (or anywhere with ``PADREC_FORCE_TRITON=1``) the Triton kernel does all
    storages in two launches (``vllm_padrec.kernels.kv_block_copy``); otherwise, or when the storages' pages
    differ in size, or once the kernel has failed, its torch reference (two operations per storage)."""

    def __init__(self, pages: Sequence[Tensor]) -> None:
        self.pages = list(pages)  # from ``block_pages``: [num_blocks, page bytes] per storage
        self.pointers: StoragePointers | None = None
        if self.pages and (self.pages[0].is_cuda or force_triton()):
            try:
                self.pointers = StoragePointers.of(self.pages)
            except ValueError as why:
                _logger().warning("vllm-padrec: top-K KV copies use the torch reference: %s", why)

    def __call__(self, src: Tensor, dst: Tensor) -> None:  # [N] long each, dst distinct
        if self.pointers is not None:
            try:
                return kv_block_copy(self.pointers, src, dst)
            except Exception as error:  # compile and launch errors come at each kernel's first launch, before
                # the first scatter has written a block, so the reference below starts from the blocks as they were
                _logger().error(
                    "vllm-padrec: the KV block copy kernel failed (%s: %s); using the torch reference",
                    type(error).__name__,
                    error,
                )
                self.pointers = None
        kv_block_copy_reference(self.pages, src, dst)


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)


def prompt_tail_copies(
    prompt_len: int,  # P
    block_size: int,  # bs
    tail_block: int,  # R's block holding prompt positions (P // bs) * bs .. P - 1 (its block list's entry P // bs)
    private_block_ids: Sequence[int],  # [K * B] R's private blocks, beam j's the j-th run of B
    k: int,  # K
) -> tuple[list[int], list[int]]:  # (src, dst): R's tail block into each beam's first private block
    """Step 0's copies (host lists, known when R is admitted); none when the prompt fills its last block."""
    if prompt_len % block_size == 0 or not private_block_ids:
        return [], []
    B = len(private_block_ids) // k
    return [tail_block] * k, [private_block_ids[j * B] for j in range(k)]


@dataclass(frozen=True)
class PrivateBlocks:
    """The private blocks of the beams of G top-K requests, as index tensors for the parent copies.

    Built on the host once per set of groups (the blocks of a request do not change during its life):
    ``table`` is padded to [G, K_max, B_max] with -1, and ``group``/``rank``/``column`` list every real
    private block (g, j, b), j < K_g, b < B_g, whose id is ``dst``. E.g. two groups with K = (2, 1),
    B = (1, 2) and blocks ([7, 9], [4, 5]) give table [[[7, -1], [9, -1]], [[4, 5], [-1, -1]]] and
    dst = [7, 9, 4, 5].
    """

    table: Tensor  # [G, K_max, B_max] long: block b of beam (g, j); -1 where none
    group: Tensor  # [N] long
    rank: Tensor  # [N] long
    column: Tensor  # [N] long: b
    dst: Tensor  # [N] long: table[group, rank, column], every private block once

    @classmethod
    def build(
        cls,
        private_block_ids: Sequence[Sequence[int]],  # per group: its K_g * B_g private blocks, beam by beam
        beam_width: Sequence[int],  # K_g
        device: torch.device | str = "cpu",
    ) -> PrivateBlocks:
        if len(private_block_ids) != len(beam_width) or not beam_width:
            raise ValueError(f"{len(private_block_ids)} block lists for {len(beam_width)} groups")
        per_beam = []
        for blocks, k in zip(private_block_ids, beam_width):
            if k < 1 or len(blocks) % k:
                raise ValueError(f"{len(blocks)} private blocks cannot be split among {k} beams")
            per_beam.append(len(blocks) // k)
        G, k_max, b_max = len(beam_width), max(beam_width), max(per_beam)
        table = np.full((G, k_max, b_max), -1, dtype=np.int64)
        group, rank, column = [], [], []
        for g, (blocks, k, B) in enumerate(zip(private_block_ids, beam_width, per_beam)):
            if B:
                table[g, :k, :B] = np.asarray(blocks, dtype=np.int64).reshape(k, B)
            for j in range(k):
                for b in range(B):
                    group.append(g)
                    rank.append(j)
                    column.append(b)
        dst = table[
            np.asarray(group, dtype=np.int64), np.asarray(rank, dtype=np.int64), np.asarray(column, dtype=np.int64)
        ]
        flat_table, *index, dst = long_tensors(table, group, rank, column, dst, device=device)
        return cls(flat_table.view(G, k_max, b_max), *index, dst)

    def sources(
        self,
        parent_rank: Tensor,  # [G, K_max] long: the rank of the beam each new beam continues (GroupedBeamStep)
    ) -> Tensor:  # [N] long: for each block in ``dst``, the block it copies
        """The parent's block b for beam j's block b. A parent with no such block (a rank past K_g: a group
        with no live candidate at all, which admission rules out) leaves the block as it is."""
        parent = parent_rank[self.group, self.rank]  # [N], < K_max by construction (flat // V of K_max * V)
        src = self.table[self.group, parent, self.column]  # [N]
        return torch.where(src >= 0, src, self.dst)
