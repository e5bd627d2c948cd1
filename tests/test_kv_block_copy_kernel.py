"""The KV block copy kernel (kernels/kv_block_copy.py) against its torch reference, byte for byte.

On a machine without a CUDA GPU the kernel runs under the Triton interpreter (tests/conftest.py).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from vllm_padrec.kernels import StoragePointers, kv_block_copy, kv_block_copy_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_BLOCKS = 8

COPIES = {
    "swap (a cycle 0 <- 1, 1 <- 0)": ([1, 0], [0, 1]),
    "three-cycle and a fixed point": ([2, 0, 1, 5], [0, 1, 2, 5]),
    "many children of one parent, itself among them": ([3, 3, 3, 3], [3, 5, 6, 0]),
    "children of a block that is itself overwritten": ([4, 4, 7], [7, 2, 4]),
    "nothing to copy": ([], []),
}


def storages(count: int, page_bytes: int, seed: int = 0) -> list[torch.Tensor]:  # [NUM_BLOCKS, page bytes] each
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (NUM_BLOCKS, page_bytes), generator=generator, dtype=torch.uint8).to(DEVICE)
        for _ in range(count)
    ]


@pytest.mark.parametrize("page_bytes", [64, 4104, 37], ids=["8-byte words", "pages past one tile", "byte words"])
@pytest.mark.parametrize("copies", COPIES.values(), ids=COPIES.keys())
def test_equals_the_reference_in_every_storage(copies, page_bytes):
    src, dst = (torch.tensor(v, dtype=torch.long, device=DEVICE) for v in copies)
    ours, theirs = storages(3, page_bytes), storages(3, page_bytes)
    pointers = StoragePointers.of(ours)
    assert pointers.word_bytes == (8 if page_bytes % 8 == 0 else 1)
    kv_block_copy(pointers, src, dst)
    kv_block_copy_reference(theirs, src, dst)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_storages_in_groups_when_the_scratch_would_be_too_large():
    src, dst = (torch.tensor(v, device=DEVICE) for v in ([2, 0, 1, 5], [0, 1, 2, 5]))
    ours, theirs = storages(5, 64, seed=3), storages(5, 64, seed=3)
    kv_block_copy(StoragePointers.of(ours), src, dst, max_scratch_bytes=2 * 4 * 64)  # two storages at a time
    kv_block_copy_reference(theirs, src, dst)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_storages_of_another_size_or_dtype_are_refused():
    with pytest.raises(ValueError, match="one size"):
        StoragePointers.of([*storages(1, 64), *storages(1, 32)])
    with pytest.raises(ValueError, match="one size"):
        StoragePointers.of([torch.zeros(NUM_BLOCKS, 8, dtype=torch.float32, device=DEVICE)])
    with pytest.raises(ValueError, match="no KV storages"):
        StoragePointers.of([])
    with pytest.raises(ValueError, match="one length"):
        kv_block_copy(StoragePointers.of(storages(1, 64)), torch.tensor([1, 2]), torch.tensor([0]))


@pytest.mark.parametrize("copies", COPIES.values(), ids=COPIES.keys())
def test_copies_in_launches_of_a_few_still_read_every_source_first(copies, monkeypatch):
    """More copies than one launch's grid holds: every chunk gathers before any chunk scatters (cycles)."""
    module = importlib.import_module("vllm_padrec.kernels.kv_block_copy")  # the module, not its function
    monkeypatch.setattr(module, "_MAX_COPIES_PER_LAUNCH", 2)
    src, dst = (torch.tensor(v, dtype=torch.long, device=DEVICE) for v in copies)
    ours, theirs = storages(3, 64, seed=5), storages(3, 64, seed=5)
    kv_block_copy(StoragePointers.of(ours), src, dst, max_scratch_bytes=2 * max(len(copies[0]), 1) * 64)
    kv_block_copy_reference(theirs, src, dst)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
