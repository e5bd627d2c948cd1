"""The fused PAD-Rec input kernel against its plain-torch reference.

On a machine without a CUDA GPU these run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported); on a GPU they run natively:

    TRITON_INTERPRET=1 python -m pytest tests/test_padrec_kernel.py -q
"""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

from vllm_padrec.kernels import padrec_input, padrec_input_reference

NUM_TOKENS = 50  # V: vocabulary of the slot table
NUM_SLOTS = 6  # S: L = 4 code slots + separator + other
NUM_STEPS = 5  # K: draft steps

# Per-dtype tolerances of the kernel against the reference: both compute in fp32 and round once;
# only the gate's dot product is summed in another order, so bf16 may differ by one rounding step.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}

FLAG_NAMES = ("use_slot", "use_step", "slot_gate", "step_gate")
# All on, each of the four off, all off.
FLAG_CASES = [dict.fromkeys(FLAG_NAMES, True)]
FLAG_CASES += [{**dict.fromkeys(FLAG_NAMES, True), name: False} for name in FLAG_NAMES]
FLAG_CASES += [dict.fromkeys(FLAG_NAMES, False)]


def _flag_id(flags: dict) -> str:
    off = [name for name in FLAG_NAMES if not flags[name]]
    return "all_on" if not off else "all_off" if len(off) == 4 else "no_" + "_".join(off)


def make_inputs(
    T: int,
    H: int,
    dtype: torch.dtype,
    device: str,
    *,
    seed: int,
    param_dtype: torch.dtype | None = None,
    id_dtype: torch.dtype = torch.int64,
    scalar_step: bool = False,
) -> dict:
    """Fresh random inputs (never zeros), drawn on the CPU from `seed`, then moved to `device`."""
    g = torch.Generator().manual_seed(seed)
    param_dtype = param_dtype or dtype
    step_shape = () if scalar_step else (T,)
    inputs = dict(
        h=torch.randn(T, H, generator=g).to(dtype),  # [T, H]
        token_ids=torch.randint(0, NUM_TOKENS, (T,), generator=g).to(id_dtype),  # [T]
        slot_table=torch.randint(0, NUM_SLOTS, (NUM_TOKENS,), generator=g).to(id_dtype),  # [V]
        step_ids=torch.randint(0, NUM_STEPS, step_shape, generator=g).to(id_dtype),  # [T] or []
        slot_emb=(0.5 * torch.randn(NUM_SLOTS, H, generator=g)).to(param_dtype),  # [S, H]
        step_emb=(0.5 * torch.randn(NUM_STEPS, H, generator=g)).to(param_dtype),  # [K, H]
        alpha=torch.randn((), generator=g).to(param_dtype),  # []
        gate_w=(torch.randn(H, generator=g) / math.sqrt(H)).to(param_dtype),  # [H]
        gate_b=torch.randn((1,), generator=g).to(param_dtype),  # [1]
    )
    return {name: t.to(device) for name, t in inputs.items()}


def _seed(*case) -> int:
    return zlib.crc32(repr(case).encode())


def with_channel_gate(inputs: dict, *, seed: int) -> dict:
    """``inputs`` with a per-channel step gate: gate_w [H, H] and gate_b [H], random, in gate_w's dtype."""
    g = torch.Generator().manual_seed(seed)
    H, dtype, device = inputs["h"].shape[1], inputs["gate_w"].dtype, inputs["gate_w"].device
    gate_w = (torch.randn(H, H, generator=g) / math.sqrt(H)).to(dtype)  # [H, H]
    gate_b = torch.randn(H, generator=g).to(dtype)  # [H]
    return {**inputs, "gate_w": gate_w.to(device), "gate_b": gate_b.to(device)}


def run_and_compare(inputs: dict, flags: dict, case: str, **kernel_kwargs) -> torch.Tensor:
    """Run the kernel into a NaN-poisoned `out`, check every element was written and that it matches
    the reference; the assertion message names the tensor and the case."""
    h = inputs["h"]  # [T, H]
    out = torch.full_like(h, float("nan"))  # [T, H] poisoned
    got = padrec_input(**inputs, **flags, out=out, **kernel_kwargs)  # [T, H]
    assert got is out, f"{case}: padrec_input did not return the `out` tensor it was given"
    unwritten = torch.isnan(out).sum().item()
    assert unwritten == 0, f"{case}: tensor 'out' has {unwritten} of {out.numel()} elements left unwritten (NaN)"
    want = padrec_input_reference(**inputs, **flags)  # [T, H]
    assert want.dtype == h.dtype and want.shape == h.shape, (
        f"{case}: tensor 'reference' has {want.dtype} {list(want.shape)}"
    )
    torch.testing.assert_close(
        out.float(),
        want.float(),
        **TOLERANCES[h.dtype],
        msg=lambda m: f"{case}: tensor 'out' (kernel) differs from the reference:\n{m}",
    )
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H", [100, 128, 256])
@pytest.mark.parametrize("T", [1, 15, 63, 300])
def test_shapes_all_flags_on(T, H, dtype, device):
    inputs = make_inputs(T, H, dtype, device, seed=_seed("shapes", T, H, dtype))
    run_and_compare(inputs, FLAG_CASES[0], f"T={T} H={H} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("flags", FLAG_CASES, ids=_flag_id)
def test_flags(flags, dtype, device):
    T, H = 63, 100
    inputs = make_inputs(T, H, dtype, device, seed=_seed("flags", _flag_id(flags), dtype))
    out = run_and_compare(inputs, flags, f"T={T} H={H} {dtype} {_flag_id(flags)}")
    if not flags["use_slot"] and not flags["use_step"]:
        assert torch.equal(out, inputs["h"]), f"{_flag_id(flags)}: tensor 'out' should equal h with both terms off"


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("scalar_step", [False, True], ids=["step_ids_T", "step_ids_0dim"])
@pytest.mark.parametrize("T", [1, 63])
def test_step_ids_shape_and_index_dtypes(T, scalar_step, id_dtype, device):
    dtype = torch.bfloat16
    inputs = make_inputs(
        T, 128, dtype, device, seed=_seed("ids", T, scalar_step, id_dtype), id_dtype=id_dtype, scalar_step=scalar_step
    )
    case = f"T={T} step_ids {'0-dim' if scalar_step else '[T]'} {id_dtype}"
    for flags in (FLAG_CASES[0], {**FLAG_CASES[0], "step_gate": False}):
        run_and_compare(inputs, flags, f"{case} {_flag_id(flags)}")


# The Triton interpreter turns the loop bound H into an index with a NumPy call deprecated in 1.25.
@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
@pytest.mark.parametrize("flags", [FLAG_CASES[0], FLAG_CASES[4], FLAG_CASES[1]], ids=_flag_id)
@pytest.mark.parametrize("T", [15, 300])
def test_two_pass_loop_over_h(T, flags, device):
    """block_h < H forces the two-pass loop (gate pass, then output pass) with a ragged last chunk."""
    inputs = make_inputs(T, 100, torch.float32, device, seed=_seed("two_pass", T, _flag_id(flags)))
    run_and_compare(inputs, flags, f"T={T} H=100 block_h=32 {_flag_id(flags)}", block_h=32)


CHANNEL_GATE = {**FLAG_CASES[0], "channel_gate": True}


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
@pytest.mark.parametrize("block_h", [None, 32], ids=["one_pass", "two_pass"])
@pytest.mark.parametrize("scalar_step", [False, True], ids=["step_ids_T", "step_ids_0dim"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 63])
def test_per_channel_step_gate(T, dtype, scalar_step, block_h, device):
    """A gate per channel (gate_w [H, H], gate_b [H]): logits from the launcher's matmul, sigmoid in the kernel."""
    case = ("channel", T, dtype, scalar_step, block_h)
    inputs = make_inputs(T, 100, dtype, device, seed=_seed(*case), scalar_step=scalar_step)
    inputs = with_channel_gate(inputs, seed=_seed(*case, "gate"))
    run_and_compare(inputs, CHANNEL_GATE, f"T={T} H=100 {dtype} channel gate block_h={block_h}", block_h=block_h)


def test_per_channel_gate_with_equal_rows_is_the_scalar_gate(device):
    """W_g = 1 w^T and b_g = b 1 give every channel the scalar gate's logit h . w + b: the two modes agree."""
    inputs = make_inputs(15, 100, torch.float32, device, seed=_seed("equal_rows"))
    H = inputs["h"].shape[1]
    tied_w = inputs["gate_w"][None, :].expand(H, H).contiguous()  # [H, H], every row w
    tied = {**inputs, "gate_w": tied_w, "gate_b": inputs["gate_b"].expand(H).contiguous()}
    for fn in (padrec_input, padrec_input_reference):
        torch.testing.assert_close(
            fn(**tied.copy(), channel_gate=True),
            padrec_input_reference(**inputs),
            **TOLERANCES[torch.float32],
            msg=lambda m, fn=fn: f"{fn.__name__}: tensor 'out' (tied channel gate) differs from the scalar gate: {m}",
        )
    # and a per-channel gate whose rows differ is not the scalar gate
    untied = with_channel_gate(inputs, seed=_seed("equal_rows", "gate"))
    diff = (padrec_input_reference(**untied, channel_gate=True) - padrec_input_reference(**inputs)).abs().max()
    assert diff > 1e-3, f"tensor 'out' with an untied per-channel gate equals the scalar gate's (max diff {diff})"


def test_fp32_parameters_with_bf16_features(device):
    inputs = make_inputs(63, 128, torch.bfloat16, device, seed=_seed("mixed"), param_dtype=torch.float32)
    run_and_compare(inputs, FLAG_CASES[0], "bf16 h with fp32 slot/step embeddings and gate")


def test_fp16(device):
    inputs = make_inputs(63, 100, torch.float16, device, seed=_seed("fp16"))
    run_and_compare(inputs, FLAG_CASES[0], "T=63 H=100 fp16")


def test_in_place_and_allocated_output(device):
    inputs = make_inputs(15, 100, torch.float32, device, seed=_seed("in_place"))
    want = padrec_input_reference(**inputs)  # [T, H]
    allocated = padrec_input(**inputs)  # [T, H]
    torch.testing.assert_close(
        allocated, want, **TOLERANCES[torch.float32], msg=lambda m: f"tensor 'allocated out': {m}"
    )
    h = inputs["h"].clone()  # [T, H]
    got = padrec_input(**{**inputs, "h": h}, out=h)  # [T, H]
    assert got is h
    torch.testing.assert_close(h, want, **TOLERANCES[torch.float32], msg=lambda m: f"tensor 'in-place out': {m}")


def test_unused_arguments_may_be_none(device):
    inputs = make_inputs(15, 100, torch.float32, device, seed=_seed("none"))
    flags = dict.fromkeys(FLAG_NAMES, False)
    nones = dict.fromkeys([name for name in inputs if name != "h"])
    torch.testing.assert_close(padrec_input(inputs["h"], **nones, **flags), inputs["h"], atol=0, rtol=0)
    flags = dict(use_slot=True, use_step=False, slot_gate=False, step_gate=False)
    partial = {**inputs, "alpha": None, "step_ids": None, "step_emb": None, "gate_w": None, "gate_b": None}
    run_and_compare(partial, flags, "slot term only, unused arguments None")


@pytest.mark.parametrize("channel_gate", [False, True], ids=["scalar_gate", "channel_gate"])
def test_reference_is_differentiable(channel_gate):
    inputs = make_inputs(15, 100, torch.float32, "cpu", seed=_seed("grad"))
    if channel_gate:
        inputs = with_channel_gate(inputs, seed=_seed("grad", "gate"))
    learnable = ("h", "slot_emb", "step_emb", "alpha", "gate_w", "gate_b")
    for name in learnable:
        inputs[name].requires_grad_(True)
    padrec_input_reference(**inputs, channel_gate=channel_gate).square().sum().backward()
    for name in learnable:
        grad = inputs[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"tensor '{name}': no gradient"


def _channel(inputs: dict, **breakers) -> dict:
    """``inputs`` with a per-channel gate, each named tensor passed through its breaker."""
    channel = {**with_channel_gate(inputs, seed=1), "channel_gate": True}
    return {**channel, **{name: breaker(channel[name]) for name, breaker in breakers.items()}}


# Invalid inputs: (what is wrong, how to break the inputs, text the error must contain).
def _other_device(device: str) -> str:
    return "cpu" if device == "cuda" else "meta"


INVALID_CASES = [
    ("wrong H in slot_emb", lambda x, d: {**x, "slot_emb": x["slot_emb"][:, :-1]}, "slot_emb has shape"),
    ("non-contiguous h", lambda x, d: {**x, "h": x["h"].t().contiguous().t()}, "h must be row-major"),
    ("strided h columns", lambda x, d: {**x, "h": torch.cat([x["h"], x["h"]], 1)[:, ::2]}, "h must be row-major"),
    ("wrong device", lambda x, d: {**x, "slot_emb": x["slot_emb"].to(_other_device(d))}, "slot_emb is on"),
    ("float token ids", lambda x, d: {**x, "token_ids": x["token_ids"].float()}, "token_ids has dtype"),
    ("step_ids [2T]", lambda x, d: {**x, "step_ids": x["step_ids"].repeat(2)}, "step_ids has shape"),
    ("alpha [2]", lambda x, d: {**x, "alpha": x["alpha"].repeat(2)}, "alpha has shape"),
    ("gate_w [H-1]", lambda x, d: {**x, "gate_w": x["gate_w"][:-1]}, "gate_w has shape"),
    ("channel gate_w [H]", lambda x, d: {**x, "channel_gate": True}, "gate_w has shape"),
    ("channel gate_w [H-1, H]", lambda x, d: _channel(x, gate_w=lambda w: w[:-1]), "expected \\[100, 100\\]"),
    ("channel gate_b [1]", lambda x, d: _channel(x, gate_b=lambda b: b[:1]), "gate_b has shape"),
    ("missing step_emb", lambda x, d: {**x, "step_emb": None}, "step_emb is None"),
    ("fp64 h", lambda x, d: {**x, "h": x["h"].double()}, "h has dtype"),
]


@pytest.mark.parametrize("what,breaker,message", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_invalid_input_gives_clear_error(what, breaker, message, device):
    inputs = make_inputs(15, 100, torch.float32, device, seed=_seed("invalid", what))
    with pytest.raises(ValueError, match=message):
        padrec_input(**breaker(inputs, device))


def test_invalid_out_gives_clear_error(device):
    inputs = make_inputs(15, 100, torch.float32, device, seed=_seed("invalid_out"))
    with pytest.raises(ValueError, match="out is"):
        padrec_input(**inputs, out=torch.empty(15, 100, dtype=torch.bfloat16, device=device))
    with pytest.raises(ValueError, match="block_h"):
        padrec_input(**inputs, block_h=48)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the H200 device machine)")
def test_large_bf16_and_cuda_graph_replay():
    """H=1536, T=4096 bf16 natively, then a CUDA-graph capture with a 0-dim step tensor that is
    refilled between replays (how vLLM passes `current_draft_step`)."""
    T, H, dtype = 4096, 1536, torch.bfloat16
    inputs = make_inputs(T, H, dtype, "cuda", seed=_seed("large"))
    for flags in FLAG_CASES:
        run_and_compare(inputs, flags, f"T={T} H={H} bf16 {_flag_id(flags)}")
    run_and_compare(inputs, FLAG_CASES[0], f"T={T} H={H} bf16 two-pass", block_h=512)
    channel = with_channel_gate(inputs, seed=_seed("large", "gate"))
    run_and_compare(channel, CHANNEL_GATE, f"T={T} H={H} bf16 channel gate")
    run_and_compare(channel, CHANNEL_GATE, f"T={T} H={H} bf16 channel gate two-pass", block_h=512)

    graph_inputs = make_inputs(64, H, dtype, "cuda", seed=_seed("graph"), scalar_step=True)
    for flags in (FLAG_CASES[0], CHANNEL_GATE):  # the channel gate's matmul is captured too
        if flags is CHANNEL_GATE:
            graph_inputs = with_channel_gate(graph_inputs, seed=_seed("graph", "gate"))
        out = torch.empty_like(graph_inputs["h"])  # [64, H]
        padrec_input(**graph_inputs, **flags, out=out)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            padrec_input(**graph_inputs, **flags, out=out)
        for step in itertools.chain(range(NUM_STEPS), [0]):
            graph_inputs["step_ids"].fill_(step)
            graph_inputs["h"].normal_()
            out.fill_(float("nan"))
            graph.replay()
            want = padrec_input_reference(**graph_inputs, **flags)  # [64, H]
            torch.testing.assert_close(
                out,
                want,
                **TOLERANCES[dtype],
                msg=lambda m, step=step, flags=flags: f"tensor 'out' after graph replay at step {step} {flags}: {m}",
            )
