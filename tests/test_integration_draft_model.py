"""EaglePadRecForCausalLM built and loaded by vLLM's own loader, against the training-side head.

Runs in a spawned process (vLLM's distributed state is global). vLLM is built for the configs, the
target and the draft are loaded with ``get_model`` and V2's ``load_eagle_model`` (strict weight
check, shared embedding and LM head), and the draft's fused input feature h' (embedding, fc and the
PAD-Rec kernel, the part of the forward that reads the step tensor) is compared with
``PadRecDraftHead.fuse`` + ``add_signals`` at every step. The decoder layer needs vLLM's attention
backends and compiled ops, so the whole forward is covered by the GPU tests.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile

import pytest
import torch
from test_integration_cli import small_catalog, write_draft, write_target

NUM_STEPS = 3  # the draft's n_predict (test_integration_cli.NUM_DRAFT_STEPS)


def _load_and_fuse(target: str, draft: str, num_speculative_tokens: int) -> dict:
    os.environ.setdefault("TRITON_INTERPRET", "1" if not torch.cuda.is_available() else "0")
    from vllm import platforms

    if not torch.cuda.is_available():
        from vllm.platforms.cpu import CpuPlatform

        platforms.current_platform = CpuPlatform()
        if not hasattr(torch.ops._C, "silu_and_mul"):  # a CPU box without vLLM's compiled ops:
            library = torch.library.Library("_C", "DEF")  # the MLP only looks the op up when built
            library.define("silu_and_mul(Tensor! out, Tensor input) -> ()")
    import vllm_padrec

    vllm_padrec.register()
    from transformers import LlamaForCausalLM
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model
    from vllm.v1.worker.gpu.spec_decode.eagle.utils import load_eagle_model

    from vllm_padrec.draft import load_draft

    spec = {"method": "eagle", "model": draft, "num_speculative_tokens": num_speculative_tokens}
    config = EngineArgs(
        model=target, speculative_config=spec, dtype="float32", max_model_len=128, enforce_eager=True
    ).create_engine_config()
    with set_current_vllm_config(config):
        init_distributed_environment(1, 0, f"file://{tempfile.mktemp()}", 0, backend="gloo")
        initialize_model_parallel(1, 1)
        target_model = get_model(vllm_config=config)
        model = load_eagle_model(target_model, config)  # what V2's EagleSpeculator loads

    reference = load_draft(draft, target=LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)).float()
    device = next(model.parameters()).device
    ids = torch.tensor([6, 7, 4, 10, 2, 5, 1, 60], device=device)  # codes, separator, specials, padded ids
    hidden = torch.randn(len(ids), reference.config.hidden_size, device=device)
    step = torch.tensor(0, device=device)
    model.attach_speculator(step, torch.zeros(4, dtype=torch.int32, device=device))
    diffs = []
    for k in range(num_speculative_tokens):
        step.fill_(k)  # as V2 does before decode step k
        with torch.no_grad():
            ours = model.model.fuse(ids, hidden, model._step(), torch.empty_like(hidden))
            want = reference.add_signals(reference.fuse(hidden.cpu()[None], ids.cpu()[None]), ids.cpu()[None], k)[0]
        diffs.append((ours.cpu() - want).abs().max().item())
    return {
        "class": type(model).__name__,
        "params": sorted(name for name, _ in model.named_parameters()),
        "shared": (model.model.embed_tokens is target_model.model.embed_tokens, model.lm_head is target_model.lm_head),
        "slot_emb": torch.equal(model.model.slot_emb.weight.cpu(), reference.slot_emb.weight),
        "gate": list(model.model.gate.weight.shape),
        "hidden": reference.config.hidden_size,
        "diffs": diffs,
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft_model")
    catalog = small_catalog()
    target = write_target(root / "target", catalog)
    return str(target), str(write_draft(root / "draft", target, catalog))


@pytest.fixture(scope="module")
def channel_gate_checkpoints(checkpoints, tmp_path_factory):
    """A per-channel-gate draft whose step embedding and gate are not at their init (E_step = 0 hides the gate)."""
    from transformers import AutoConfig

    from vllm_padrec.draft import DraftConfig, PadRecDraftHead, save_draft

    target = checkpoints[0]
    layout = small_catalog().layout
    config = DraftConfig.from_target(
        AutoConfig.from_pretrained(target), layout, NUM_STEPS, variant="padrec_channel_gate"
    )
    head = PadRecDraftHead(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in (head.step_emb.weight, head.gate.weight, head.gate.bias, head.alpha):
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("channel_gate") / "draft"
    save_draft(head, folder)
    return target, str(folder)


@pytest.mark.parametrize("num_speculative_tokens", [NUM_STEPS, 2 * NUM_STEPS])
def test_vllm_loads_the_draft_and_fuses_like_the_head(checkpoints, num_speculative_tokens):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(_load_and_fuse, (*checkpoints, num_speculative_tokens))
    assert result["class"] == "EaglePadRecForCausalLM"
    assert result["params"] == sorted(
        [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.fc.weight",
            "model.alpha",
            "model.slot_emb.weight",
            "model.step_emb.weight",
            "model.gate.weight",
            "model.gate.bias",
            "model.layers.0.self_attn.qkv_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.gate_up_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
        ]
    )
    assert result["shared"] == (True, True) and result["slot_emb"] and result["gate"] == [1, result["hidden"]]
    # steps past n_predict reuse the last step embedding, as the training-side head does
    assert max(result["diffs"]) < 1e-5, result["diffs"]


def test_vllm_loads_a_per_channel_gate_and_fuses_like_the_head(channel_gate_checkpoints):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(_load_and_fuse, (*channel_gate_checkpoints, NUM_STEPS))
    assert result["class"] == "EaglePadRecForCausalLM" and result["gate"] == [result["hidden"]] * 2
    assert max(result["diffs"]) < 1e-5, result["diffs"]
