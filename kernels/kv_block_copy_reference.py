"""Plain-torch reference of the KV block copy (the one rule; ``kv_block_copy`` is tested against it).

``pages`` are KV storages viewed as their blocks' bytes, ``[num_blocks, page bytes]`` uint8 each
(``vllm_padrec.topk.kv_copy.block_pages``). For every storage and every i, block ``dst[i]`` becomes block
``src[i]`` as it was before the call: sources are read before any destination is written, so cycles
(0 <- 1, 1 <- 0) and a source that is also a destination are copied as if all at once. ``dst`` holds
distinct blocks (each written once); ``src`` may repeat.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def kv_block_copy_reference(
    pages: Sequence[torch.Tensor],  # [num_blocks, page bytes] uint8 per storage
    src: torch.Tensor,  # [N] long: block copied from
    dst: torch.Tensor,  # [N] long: block copied to; distinct
) -> None:
    if src.shape != dst.shape or src.dim() != 1:
        raise ValueError(
            f"block copies need two index vectors of one length, got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    for blocks in pages:
        gathered = blocks.index_select(0, src)  # [N, page bytes]: a temporary, read before any write
        blocks.index_copy_(0, dst, gathered)
