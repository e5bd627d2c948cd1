"""The project's Triton kernels compiled for the H200 on a machine without a GPU, through their real launchers.

The CPU tests run the kernels under Triton's interpreter (``TRITON_INTERPRET=1``), which executes a kernel as
Python: it cannot see what only the compiler rejects (an expression the code generator cannot lower, a tile that
needs more shared memory than the GPU has). Here Triton's active driver is replaced by ``CompileOnlyDriver``: a
launcher called with CPU tensors runs as it would on the GPU, Triton specialises and compiles the kernel with its
CUDA backend and ptxas for the H200's sm_90, checks the kernel's shared memory against the H200's, and the launch
itself is skipped. Nothing is computed; the interpreter tests check the values.

Run in a process where ``TRITON_INTERPRET`` is unset (the kernels must be compiled functions, not interpreted ones):

    python -m vllm_padrec.testing.compile_only

compiles every kernel of ``kernels/`` in the variants its launchers make (PAD-Rec's input kernel in every flag
combination, one and two passes; the catalog masks' verification and draft calls; the KV block copies) and
prints, as JSON, how many variants of each kernel were compiled. ``tests/test_compile_only.py`` runs it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator

H200 = dict(arch=90, warp_size=32, max_shared_mem=232_448, max_threads_per_block=1024)  # sm_90: 227 KiB a block


class CompileOnlyDriver:
    """Stands in for Triton's CUDA driver (``triton.runtime.driver``): reports an H200 as the current device,
    lets Triton compile for it, and turns each launch into nothing. ``compiled`` counts kernels by name."""

    compile_only = True  # read by launchers that refuse CPU tensors outside the interpreter

    def __init__(self, arch: int, warp_size: int, max_shared_mem: int, max_threads_per_block: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, warp_size)
        self.properties = dict(max_shared_mem=max_shared_mem, multiprocessor_count=132, max_num_regs=65536)
        self.max_threads_per_block = max_threads_per_block
        self.compiled: Counter[str] = Counter()
        self.utils = self  # Triton reads driver.utils.load_binary and driver.utils.get_device_properties

    # -- what Triton's JIT and CompiledKernel ask of a driver (triton 3.6: runtime/jit.py, compiler/compiler.py)
    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_device_properties(self, device: int) -> dict:
        return self.properties

    def load_binary(self, name: str, binary: bytes, shared: int, device: int):
        """(module, function, registers, spills, threads a block may have): the compiled cubin is counted, not
        loaded."""
        self.compiled[name] += 1
        return None, None, 0, 0, self.max_threads_per_block

    def launcher_cls(self, src, metadata):
        return _skip_launch


def _skip_launch(*args, **kwargs) -> None:
    return None


@contextlib.contextmanager
def compile_only(**device) -> Iterator[CompileOnlyDriver]:
    """Triton compiles for ``device`` (default ``H200``) and skips every launch inside the block."""
    from triton.runtime import driver

    fake = CompileOnlyDriver(**{**H200, **device})
    previous = driver._active  # None until a driver was first asked for (driver.reset_active would create one)
    driver.set_active(fake)
    try:
        yield fake
    finally:
        driver.set_active(previous)


# -- the kernels of kernels/, through their launchers ----------------------------------------------------------------
def padrec_input_variants() -> int:
    """Every flag combination of the PAD-Rec input kernel, one and two passes, a step per row and one for all."""
    import torch

    from vllm_padrec.kernels import padrec_input

    calls = 0
    g = torch.Generator().manual_seed(0)
    for T, H, block_h in ((6, 128, None), (6, 100, 32)):  # one pass (BLOCK_H >= H); two passes over 32-wide chunks
        h = torch.randn(T, H, generator=g).to(torch.bfloat16)  # [T, H]
        tensors = dict(
            token_ids=torch.randint(0, 50, (T,), generator=g),  # [T]
            slot_table=torch.randint(0, 6, (50,), generator=g),  # [V]
            slot_emb=torch.randn(6, H, generator=g).to(torch.bfloat16),  # [S, H]
            step_emb=torch.randn(5, H, generator=g).to(torch.bfloat16),  # [K, H]
            alpha=torch.randn(1, generator=g).to(torch.bfloat16),  # [1]
        )
        for use_slot, use_step, slot_gate, step_gate, channel_gate, scalar_step in itertools.product((0, 1), repeat=6):
            if channel_gate and not (use_step and step_gate):
                continue
            width = H if channel_gate else 1  # the per-channel gate: W_g [H, H], b_g [H]
            gate_w = torch.randn(width, H, generator=g).to(torch.bfloat16)
            padrec_input(
                h,
                step_ids=torch.tensor(1) if scalar_step else torch.randint(0, 5, (T,), generator=g),
                gate_w=gate_w if channel_gate else gate_w[0],
                gate_b=torch.randn(width, generator=g).to(torch.bfloat16),
                use_slot=bool(use_slot),
                use_step=bool(use_step),
                slot_gate=bool(slot_gate),
                step_gate=bool(step_gate),
                channel_gate=bool(channel_gate),
                block_h=block_h,
                **tensors,
            )
            calls += 1
    return calls


def catalog_mask_variants() -> int:
    """The catalog masks' verification and draft calls on a V2-shaped engine step of a synthetic catalog."""
    import torch

    from vllm_padrec.data.synthetic import SyntheticConfig, generate_synthetic
    from vllm_padrec.kernels import catalog_mask_draft, catalog_mask_verification
    from vllm_padrec.lists.tables import CatalogTables
    from vllm_padrec.testing.mask_inputs import LIST_ITEMS, draft_args, make_inputs, verification_args

    catalog = generate_synthetic(SyntheticConfig(num_items=150, num_users=4, codebook_sizes=(6, 5, 7))).catalog
    tables = CatalogTables.build(catalog, device="cpu")
    width = LIST_ITEMS * tables.period
    calls = 0
    for num_drafts in (1, 5):
        x = make_inputs(catalog, 8, num_drafts, seed=0, device="cpu")
        catalog_mask_verification(x["verify_logits"], *verification_args(x, tables, num_drafts, width))
        catalog_mask_draft(x["draft_logits"], *draft_args(x, tables, width, torch.tensor(0)))
        calls += 2
    return calls


def kv_block_copy_variants() -> int:
    """The KV block copies over storages of 8-byte words and of bytes."""
    import torch

    from vllm_padrec.kernels import StoragePointers, kv_block_copy

    calls = 0
    for page_bytes in (4104, 37):  # 8-byte words past one tile; bytes
        pages = [torch.zeros(8, page_bytes, dtype=torch.uint8) for _ in range(3)]
        kv_block_copy(StoragePointers.of(pages), torch.tensor([1, 0, 3]), torch.tensor([0, 1, 2]))
        calls += 1
    return calls


VARIANTS = {
    "padrec_input": padrec_input_variants,
    "catalog_mask": catalog_mask_variants,
    "kv_block_copy": kv_block_copy_variants,
}


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_only: unset TRITON_INTERPRET: interpreted kernels are not compiled", file=sys.stderr)
        return 2
    with compile_only() as fake:
        calls = {name: make() for name, make in VARIANTS.items()}
    print(json.dumps({"launcher_calls": calls, "compiled": dict(sorted(fake.compiled.items()))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
