"""Fused PAD-Rec input kernel: add the item-slot and draft-step signals to the draft's input feature.

One launch computes, for every row of the fused EAGLE input feature h, two embedding gathers, the
context gate's dot product and sigmoid, and two multiply-adds (the math is written above the
kernel; the plain-torch reference, vocabulary and flags are in ``padrec_input_reference.py``).
A per-channel step gate (``channel_gate``: gate_w [H, H], one gate per channel) is a matmul, which
the launcher leaves to cuBLAS (``F.linear`` writes the [T, H] gate logits in h's dtype) before the
launch; the kernel then reads a logit per element instead of taking a dot product per row.

CUDA-graph safety: the launcher reads no device value on the host (no ``.item()``), allocates
nothing but the output (nothing when ``out`` is given) and, with the per-channel gate, its [T, H]
logits, and takes the draft step either per row
([T]) or as one 0-dim device tensor broadcast to every row (stride 0), which is how vLLM's
``current_draft_step`` scalar is passed. alpha and gate_b are read inside the kernel.

Index ranges are not checked (that would need a device sync): token ids must lie in
[0, len(slot_table)), slot_table values in [0, S) and step ids in [0, K).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["padrec_input"]

# Launch configuration, from sweeps on an H200 (bf16, H = 128, 1536, 2048, 4096; T = 8 .. 32768):
# - one pass (BLOCK_H = next power of two >= H) up to this H; above it two passes over H chunks
#   of _TWO_PASS_BLOCK_H (the gate pass, then the output pass, re-reading h from cache);
# - few rows (T * BLOCK_H <= _FEW_ROWS_ELEMENTS, decode-sized batches): tiles of
#   _FEW_ROWS_TILE elements, i.e. one row per program for H >= 2048, so that many programs are
#   in flight; many rows: tiles of _MANY_ROWS_TILE elements;
# - 4 warps for 4096-element tiles, 8 for the others (2048 or >= 8192 elements).
# At T = 32768 (bf16) this moves h in and out at 77% (H = 1536) and 94% (H = 4096) of the copy
# bandwidth (benchmarks/results/padrec_kernel.md).
_MAX_ONE_PASS_H = 8192
_TWO_PASS_BLOCK_H = 2048
_FEW_ROWS_ELEMENTS = 1 << 21
_FEW_ROWS_TILE = 2048
_MANY_ROWS_TILE = 4096

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INDEX_DTYPES = (torch.int32, torch.int64)


@triton.jit
def _add_signals(
    x,  # [BLOCK_T, BLOCK_H] fp32, a tile of h
    cols,  # [BLOCK_H] column indices of the tile
    mask,  # [BLOCK_T, BLOCK_H] valid elements
    slot_rows,  # [BLOCK_T, 1] pointers to E_slot[s_t]
    alpha,  # fp32 scalar
    step_rows,  # [BLOCK_T, 1] pointers to E_step[k_t]
    gate,  # [BLOCK_T, 1] fp32, or [BLOCK_T, BLOCK_H] per channel (1.0 when STEP_GATE is off)
    USE_SLOT: tl.constexpr,
    USE_STEP: tl.constexpr,
    STEP_GATE: tl.constexpr,
):
    if USE_SLOT:
        e_slot = tl.load(slot_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x += alpha * e_slot
    if USE_STEP:
        e_step = tl.load(step_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if STEP_GATE:
            x += gate * e_step
        else:
            x += e_step
    return x


# Per row t of h [T, H] (fp32 arithmetic, result in h's dtype):
#   s_t   = slot_table[token_ids[t]]                 k_t = step_ids[t * stride_step_ids]
#   g_t   = sigmoid(dot(h_t, gate_w) + gate_b)       (1.0 when STEP_GATE is off)
#         = sigmoid(gate_logits[t])  [H]             (CHANNEL_GATE: logits from the launcher's matmul)
#   out_t = h_t + alpha * E_slot[s_t] + g_t * E_step[k_t]
# alpha is 1.0 when SLOT_GATE is off; a term is dropped when USE_SLOT / USE_STEP is off.
# One program per BLOCK_T rows. ONE_PASS: the row tile covers H and stays in registers between the
# gate and the multiply-adds. Otherwise: one loop over H for the gate, a second for the output.
# T (rows) changes with every batch: not specialised (Triton would compile new variants for T == 1 and
# T % 16 == 0 while vLLM serves, after its warm-up; vLLM's JIT monitor warned about it on the H200).
@triton.jit(do_not_specialize=["T"])
def _padrec_input_kernel(
    h_ptr,  # [T, H] float, row stride stride_h
    out_ptr,  # [T, H] h's dtype, row stride stride_out
    token_ids_ptr,  # [T] int32/int64
    slot_table_ptr,  # [V] int32/int64
    step_ids_ptr,  # [T] (stride 1) or [] (stride 0) int32/int64
    slot_emb_ptr,  # [S, H] float
    step_emb_ptr,  # [K, H] float
    alpha_ptr,  # [1] float
    gate_w_ptr,  # [H] float
    gate_b_ptr,  # [1] float
    gate_logits_ptr,  # [T, H] float, row stride stride_gate_logits (CHANNEL_GATE)
    T,
    H,
    stride_h,
    stride_out,
    stride_slot_emb,
    stride_step_emb,
    stride_step_ids,
    stride_gate_logits,
    USE_SLOT: tl.constexpr,
    USE_STEP: tl.constexpr,
    SLOT_GATE: tl.constexpr,
    STEP_GATE: tl.constexpr,
    CHANNEL_GATE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T] int64
    row_mask = rows < T  # [BLOCK_T]
    cols = tl.arange(0, BLOCK_H)  # [BLOCK_H]
    h_rows = h_ptr + rows[:, None] * stride_h  # [BLOCK_T, 1]
    out_rows = out_ptr + rows[:, None] * stride_out  # [BLOCK_T, 1]
    logit_rows = gate_logits_ptr + rows[:, None] * stride_gate_logits  # [BLOCK_T, 1] (CHANNEL_GATE)

    # Placeholders for the terms a flag switches off (never read then).
    slot_rows = slot_emb_ptr
    step_rows = step_emb_ptr
    alpha = 1.0
    gate = 1.0

    if USE_SLOT:
        tok = tl.load(token_ids_ptr + rows, mask=row_mask, other=0)  # [BLOCK_T]
        slot = tl.load(slot_table_ptr + tok, mask=row_mask, other=0).to(tl.int64)  # [BLOCK_T]
        slot_rows = slot_emb_ptr + slot[:, None] * stride_slot_emb  # [BLOCK_T, 1]
        if SLOT_GATE:
            alpha = tl.load(alpha_ptr).to(tl.float32)
    if USE_STEP:
        step = tl.load(step_ids_ptr + rows * stride_step_ids, mask=row_mask, other=0)  # [BLOCK_T]
        step_rows = step_emb_ptr + step.to(tl.int64)[:, None] * stride_step_emb  # [BLOCK_T, 1]

    if ONE_PASS:
        col_mask = cols < H  # [BLOCK_H]
        mask = row_mask[:, None] & col_mask[None, :]  # [BLOCK_T, BLOCK_H]
        x = tl.load(h_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_H]
        if USE_STEP:
            if STEP_GATE:
                if CHANNEL_GATE:
                    logit = tl.load(logit_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                    gate = tl.sigmoid(logit)  # [BLOCK_T, BLOCK_H]
                else:
                    w = tl.load(gate_w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)  # [BLOCK_H]
                    logit = tl.sum(x * w[None, :], axis=1)  # [BLOCK_T]
                    gate = tl.sigmoid(logit + tl.load(gate_b_ptr).to(tl.float32))[:, None]  # [BLOCK_T, 1]
        y = _add_signals(x, cols, mask, slot_rows, alpha, step_rows, gate, USE_SLOT, USE_STEP, STEP_GATE)
        tl.store(out_rows + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        if USE_STEP:
            if STEP_GATE:
                if not CHANNEL_GATE:
                    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)  # [BLOCK_T, BLOCK_H]
                    for h0 in range(0, H, BLOCK_H):
                        c = h0 + cols  # [BLOCK_H]
                        col_mask = c < H
                        mask = row_mask[:, None] & col_mask[None, :]
                        x = tl.load(h_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                        w = tl.load(gate_w_ptr + c, mask=col_mask, other=0.0).to(tl.float32)
                        acc += x * w[None, :]
                    logit = tl.sum(acc, axis=1)  # [BLOCK_T]
                    gate = tl.sigmoid(logit + tl.load(gate_b_ptr).to(tl.float32))[:, None]  # [BLOCK_T, 1]
        for h0 in range(0, H, BLOCK_H):
            c = h0 + cols  # [BLOCK_H]
            mask = row_mask[:, None] & (c < H)[None, :]  # [BLOCK_T, BLOCK_H]
            x = tl.load(h_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
            g = gate
            if USE_STEP:
                if STEP_GATE:
                    if CHANNEL_GATE:
                        logit = tl.load(logit_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                        g = tl.sigmoid(logit)  # [BLOCK_T, BLOCK_H]
            y = _add_signals(x, c, mask, slot_rows, alpha, step_rows, g, USE_SLOT, USE_STEP, STEP_GATE)
            tl.store(out_rows + c[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _triton_takes_cpu_tensors() -> bool:
    """Under the interpreter kernels run on CPU tensors; under ``vllm_padrec.testing.compile_only``'s driver they
    are compiled for the GPU and not launched. Otherwise a CPU tensor would reach a GPU kernel."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    try:
        return bool(getattr(triton.runtime.driver.active, "compile_only", False))
    except RuntimeError:  # no GPU driver at all: Triton cannot run anything here
        return False


def _launch_config(num_rows: int, hidden: int, block_h: int | None) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_T, num_warps) for [num_rows, hidden] features; block_h forces the H tile."""
    if block_h is None:
        block_h = 1 << (hidden - 1).bit_length()  # next power of two (triton.next_power_of_2 is slower)
        if block_h > _MAX_ONE_PASS_H:
            block_h = _TWO_PASS_BLOCK_H
    few_rows = num_rows * block_h <= _FEW_ROWS_ELEMENTS
    block_t = max(1, (_FEW_ROWS_TILE if few_rows else _MANY_ROWS_TILE) // block_h)
    num_warps = 4 if block_t * block_h == 4096 else 8  # tiles hold 2048, 4096 or >= 8192 elements
    return block_h, block_t, num_warps


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"padrec_input: {name} is on {t.device} but h is on {device}; move it to {device}")


def _check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"padrec_input: {name} has dtype {t.dtype}; expected one of {names}")


def _check_vector(name: str, t: torch.Tensor, length: int | None, dtypes: tuple[torch.dtype, ...]) -> None:
    """A 1-D contiguous tensor of the given length (None: any length)."""
    _check_dtype(name, t, dtypes)
    if t.dim() != 1 or (length is not None and t.shape[0] != length):
        want = f"[{length}]" if length is not None else "1-D"
        raise ValueError(f"padrec_input: {name} has shape {list(t.shape)}; expected {want}")
    if not t.is_contiguous():
        raise ValueError(f"padrec_input: {name} must be contiguous (stride {t.stride()}); call .contiguous()")


def _check_scalar(name: str, t: torch.Tensor) -> None:
    """A 0-dim or 1-element float tensor, read inside the kernel."""
    _check_dtype(name, t, _FLOAT_DTYPES)
    if t.dim() > 1 or t.numel() != 1:
        raise ValueError(f"padrec_input: {name} has shape {list(t.shape)}; expected [] or [1]")


def _check_matrix(name: str, t: torch.Tensor, width: int, dtypes: tuple[torch.dtype, ...]) -> None:
    """A 2-D [rows, width] tensor with unit stride along width (rows may be strided)."""
    _check_dtype(name, t, dtypes)
    shape = t.shape
    if len(shape) != 2 or shape[1] != width:
        raise ValueError(f"padrec_input: {name} has shape {list(shape)}; expected [*, {width}] (H = h.shape[1])")
    stride = t.stride()
    if shape[1] > 1 and stride[1] != 1 or shape[0] > 1 and stride[0] < width:
        raise ValueError(
            f"padrec_input: {name} must be row-major with unit stride along H (got strides {stride}); "
            "call .contiguous()"
        )


def _require(name: str, t: torch.Tensor | None, why: str) -> torch.Tensor:
    if t is None:
        raise ValueError(f"padrec_input: {name} is None but {why}")
    return t


def padrec_input(
    h: torch.Tensor,  # [T, H] fp16/bf16/fp32, unit stride along H
    token_ids: torch.Tensor | None,  # [T] int32/int64
    slot_table: torch.Tensor | None,  # [V] int32/int64, token id -> slot
    step_ids: torch.Tensor | None,  # [T] or [] int32/int64, draft step
    slot_emb: torch.Tensor | None,  # [S, H] fp16/bf16/fp32, E_slot
    step_emb: torch.Tensor | None,  # [K, H] fp16/bf16/fp32, E_step
    alpha: torch.Tensor | None,  # [] or [1] float, slot scale
    gate_w: torch.Tensor | None,  # [H] float, context gate weight ([H, H] with channel_gate)
    gate_b: torch.Tensor | None,  # [] or [1] float, context gate bias ([H] with channel_gate)
    *,
    use_slot: bool = True,
    use_step: bool = True,
    slot_gate: bool = True,
    step_gate: bool = True,
    channel_gate: bool = False,
    out: torch.Tensor | None = None,  # [T, H] h's dtype; may be h itself (in place)
    block_h: int | None = None,
) -> torch.Tensor:  # [T, H] h's dtype
    """Fused ``padrec_input_reference``: out = h + alpha * E_slot[s] + g * E_step[k], one launch.

    Same arguments as the reference (arguments that a flag leaves unused may be None), plus
    ``out`` (written in full; may alias h) and ``block_h``, a power of two that forces the H tile
    (and the two-pass loop when smaller than H); None picks it from H. Not differentiable: use the
    reference for training.
    """
    if not isinstance(h, torch.Tensor) or h.dim() != 2:
        raise ValueError(f"padrec_input: h must be a 2-D [T, H] tensor; got {getattr(h, 'shape', type(h))}")
    num_rows, hidden = h.shape
    device = h.device
    _check_matrix("h", h, hidden, _FLOAT_DTYPES)
    if device.type == "cpu" and not _triton_takes_cpu_tensors():
        raise ValueError(
            "padrec_input: h is on the CPU; use CUDA tensors (or set TRITON_INTERPRET=1 before importing triton)"
        )

    if use_slot:
        token_ids = _require("token_ids", token_ids, "use_slot=True")
        slot_table = _require("slot_table", slot_table, "use_slot=True")
        slot_emb = _require("slot_emb", slot_emb, "use_slot=True")
        _check_vector("token_ids", token_ids, num_rows, _INDEX_DTYPES)
        _check_vector("slot_table", slot_table, None, _INDEX_DTYPES)
        _check_matrix("slot_emb", slot_emb, hidden, _FLOAT_DTYPES)
        for name, t in (("token_ids", token_ids), ("slot_table", slot_table), ("slot_emb", slot_emb)):
            _check_device(name, t, device)
        if slot_gate:
            alpha = _require("alpha", alpha, "use_slot=True and slot_gate=True")
            _check_scalar("alpha", alpha)
            _check_device("alpha", alpha, device)
    if use_step:
        step_ids = _require("step_ids", step_ids, "use_step=True")
        step_emb = _require("step_emb", step_emb, "use_step=True")
        _check_dtype("step_ids", step_ids, _INDEX_DTYPES)
        if step_ids.dim() == 0:
            stride_step_ids = 0  # one draft step for every row
        elif step_ids.dim() == 1 and step_ids.shape[0] == num_rows:
            if not step_ids.is_contiguous():
                raise ValueError(f"padrec_input: step_ids must be contiguous (stride {step_ids.stride()})")
            stride_step_ids = 1
        else:
            raise ValueError(
                f"padrec_input: step_ids has shape {list(step_ids.shape)}; "
                f"expected [{num_rows}] (one per row) or [] (all rows)"
            )
        _check_matrix("step_emb", step_emb, hidden, _FLOAT_DTYPES)
        _check_device("step_ids", step_ids, device)
        _check_device("step_emb", step_emb, device)
        if step_gate:
            gate_w = _require("gate_w", gate_w, "use_step=True and step_gate=True")
            gate_b = _require("gate_b", gate_b, "use_step=True and step_gate=True")
            if channel_gate:
                _check_matrix("gate_w", gate_w, hidden, _FLOAT_DTYPES)
                if gate_w.shape[0] != hidden:
                    raise ValueError(
                        f"padrec_input: gate_w has shape {list(gate_w.shape)}; expected [{hidden}, {hidden}] "
                        "(channel_gate=True)"
                    )
                _check_vector("gate_b", gate_b, hidden, _FLOAT_DTYPES)
            else:
                _check_vector("gate_w", gate_w, hidden, _FLOAT_DTYPES)
                _check_scalar("gate_b", gate_b)
            _check_device("gate_w", gate_w, device)
            _check_device("gate_b", gate_b, device)
    else:
        stride_step_ids = 0
    channel_gate = channel_gate and use_step and step_gate

    if out is None:
        out = torch.empty_like(h, memory_format=torch.contiguous_format)  # [T, H]
    else:
        if out.shape != h.shape or out.dtype != h.dtype:
            raise ValueError(
                f"padrec_input: out is {list(out.shape)} {out.dtype}; "
                f"expected h's shape and dtype {list(h.shape)} {h.dtype}"
            )
        _check_device("out", out, device)
        _check_matrix("out", out, hidden, (h.dtype,))
    if num_rows == 0 or hidden == 0:
        return out

    if block_h is not None and (block_h < 1 or block_h & (block_h - 1)):
        raise ValueError(f"padrec_input: block_h={block_h} must be a power of two")
    block_h, block_t, num_warps = _launch_config(num_rows, hidden, block_h)
    gate_logits = (  # [T, H] h's dtype: W_g h + b_g, one cuBLAS matmul (the kernel takes the sigmoid)
        torch.nn.functional.linear(h, gate_w.to(h.dtype), gate_b.to(h.dtype)) if channel_gate else h
    )

    # Unused pointers get h as a placeholder (never read: their branch is compiled out).
    grid = ((num_rows + block_t - 1) // block_t,)
    _padrec_input_kernel[grid](
        h,
        out,
        token_ids if use_slot else h,
        slot_table if use_slot else h,
        step_ids if use_step else h,
        slot_emb if use_slot else h,
        step_emb if use_step else h,
        alpha if use_slot and slot_gate else h,
        gate_w if use_step and step_gate else h,
        gate_b if use_step and step_gate else h,
        gate_logits,
        num_rows,
        hidden,
        h.stride(0),
        out.stride(0),
        slot_emb.stride(0) if use_slot else 0,
        step_emb.stride(0) if use_step else 0,
        stride_step_ids,
        gate_logits.stride(0),
        USE_SLOT=use_slot,
        USE_STEP=use_step,
        SLOT_GATE=slot_gate,
        STEP_GATE=step_gate,
        CHANNEL_GATE=channel_gate,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        ONE_PASS=block_h >= hidden,
        num_warps=num_warps,
    )
    return out
