"""The PAD-Rec draft head, its config, the Medusa heads and the vLLM checkpoint format.

Fast (CPU, a random tiny Llama target); the Triton kernel runs under the interpreter on CPU
machines (tests/conftest.py sets TRITON_INTERPRET=1):

    python -m pytest tests/test_draft_head.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

import vllm_padrec.draft.head as head_module
from vllm_padrec import envs
from vllm_padrec.catalog import TokenLayout
from vllm_padrec.draft import VARIANTS, DraftConfig, MedusaHeads, PadRecDraftHead, load_draft, new_cache, save_draft
from vllm_padrec.draft.config import EAGLE_ARCHITECTURE, PADREC_ARCHITECTURE
from vllm_padrec.errors import DraftTargetMismatchError

LAYOUT = TokenLayout((4, 4, 4, 4))  # 22 tokens, slots 0..3, <sep> = 4, other = 5
VOCAB = 32  # the target's padded vocabulary: ids 22..31 are "other"
H = 32
GAMMA = 3

# vLLM's EagleLlamaForCausalLM weight names (VLLM_NOTES.md 3.1), and PAD-Rec's per flag.
EAGLE_NAMES = {
    "fc.weight",
    "layers.0.self_attn.q_proj.weight",
    "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.v_proj.weight",
    "layers.0.self_attn.o_proj.weight",
    "layers.0.mlp.gate_proj.weight",
    "layers.0.mlp.up_proj.weight",
    "layers.0.mlp.down_proj.weight",
    "layers.0.post_attention_layernorm.weight",
}
EXTRA_NAMES = {
    "padrec": {"slot_emb.weight", "alpha", "step_emb.weight", "gate.weight", "gate.bias"},
    "padrec_no_slot": {"step_emb.weight", "gate.weight", "gate.bias"},
    "padrec_no_step": {"slot_emb.weight", "alpha"},
    "padrec_no_gates": {"slot_emb.weight", "step_emb.weight"},
    "padrec_channel_gate": {"slot_emb.weight", "alpha", "step_emb.weight", "gate.weight", "gate.bias"},
    "eagle": set(),
}
PADREC_VARIANTS = [v for v in VARIANTS if v != "eagle"]


def make_target(vocab: int = VOCAB, hidden: int = H, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        rope_theta=5000.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return make_target()


def make_head(target, variant: str = "padrec", seed: int = 0, randomize: bool = True, **overrides) -> PadRecDraftHead:
    config = DraftConfig.from_target(target.config, LAYOUT, GAMMA, variant=variant, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = PadRecDraftHead(config).attach_target(target)
        if randomize:  # non-trivial alpha, gate and E_step (they start at 0)
            with torch.no_grad():
                for name, p in head.named_parameters():
                    p.copy_(1.0 + 0.1 * torch.randn_like(p) if "layernorm" in name else 0.3 * torch.randn_like(p))
    return head


def inputs(B: int = 2, T: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)  # [B, T, H]
    ids = torch.randint(0, VOCAB, (B, T), generator=g)  # [B, T], some past the layout (padding ids)
    steps = torch.randint(0, GAMMA, (B, T), generator=g)  # [B, T]
    positions = torch.arange(T).expand(B, T)  # [B, T]
    return hidden, ids, steps, positions


# -- config ---------------------------------------------------------------------------------------
def test_config_copies_the_target_and_round_trips(target):
    for variant in VARIANTS:
        config = DraftConfig.from_target(target.config, LAYOUT, GAMMA, variant=variant)
        assert (config.hidden_size, config.vocab_size, config.num_heads, config.num_kv_heads, config.head_dim) == (
            H,
            VOCAB,
            4,
            2,
            8,
        )
        assert config.rope_theta == 5000.0 and config.intermediate_size == 64
        assert config.num_slot_kinds == LAYOUT.num_slot_kinds and config.num_draft_steps == GAMMA
        assert config.variant == variant
        hf = config.to_hf_config()
        assert DraftConfig.from_hf_config(hf) == config
        assert DraftConfig.from_hf_config(hf.to_dict()) == config
        assert hf.n_predict == GAMMA and hf.num_hidden_layers == 1


def test_config_errors_say_what_to_change(target):
    config = DraftConfig.from_target(target.config, LAYOUT, GAMMA)
    with pytest.raises(ValueError, match="use_slot"):
        config.replace(method="eagle")
    with pytest.raises(ValueError, match="num_slot_kinds"):
        config.replace(num_slot_kinds=5)
    with pytest.raises(ValueError, match="vocab_size"):
        config.replace(vocab_size=10)
    with pytest.raises(ValueError, match="num_kv_heads"):
        config.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="padrec_no_slot"):
        DraftConfig.from_target(target.config, LAYOUT, GAMMA, variant="no_slot")


def test_slot_table_covers_the_padded_vocabulary(target):
    head = make_head(target)
    expected = list(LAYOUT.slot_table()) + [LAYOUT.other_slot] * (VOCAB - LAYOUT.vocab_size)
    assert head.slot_table.tolist() == expected


def test_signal_buffers_are_built_on_the_device_the_model_is_built_under(target):
    """vLLM builds the draft under ``with torch.device("cuda")``: every parameter and the slot table must
    follow that device (a table made with torch.from_numpy alone stayed on the CPU and broke the kernel)."""
    from torch import nn

    from vllm_padrec.draft.signals import add_signal_parameters

    config = make_head(target).config
    module = nn.Module()
    with torch.device("meta"):
        add_signal_parameters(module, config)
    assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}


# -- parameters and EAGLE equivalence ----------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameters_exist_only_for_the_flags_that_are_on(target, variant):
    names = set(make_head(target, variant).state_dict())
    assert names == EAGLE_NAMES | EXTRA_NAMES[variant]


def test_channel_gate_has_a_gate_per_channel_and_needs_the_step_gate(target):
    state = make_head(target, "padrec_channel_gate").state_dict()
    assert state["gate.weight"].shape == (H, H) and state["gate.bias"].shape == (H,)
    assert make_head(target, "padrec").state_dict()["gate.weight"].shape == (1, H)
    config = DraftConfig.from_target(target.config, LAYOUT, GAMMA, variant="padrec_channel_gate")
    for off in ("use_step", "step_gate"):
        with pytest.raises(ValueError, match="channel_gate"):
            config.replace(**{off: False})


def test_a_config_saved_before_the_channel_gate_reads_as_a_scalar_gate(target):
    config = DraftConfig.from_target(target.config, LAYOUT, GAMMA)
    saved = config.to_hf_config().to_dict()
    del saved["padrec"]["channel_gate"]
    assert DraftConfig.from_hf_config(saved) == config and not config.channel_gate


def test_all_flags_off_is_exactly_eagle(target):
    eagle = make_head(target, "eagle", seed=3)
    off = make_head(target, "padrec", seed=4, use_slot=False, use_step=False, slot_gate=False, step_gate=False)
    assert off.config.method == "padrec" and set(off.state_dict()) == set(eagle.state_dict())
    off.load_state_dict(eagle.state_dict(), strict=True)
    hidden, ids, steps, positions = inputs()
    other_steps = (steps + 1) % GAMMA
    torch.testing.assert_close(off(hidden, ids, steps, positions), eagle(hidden, ids, steps, positions), rtol=0, atol=0)
    expected = eagle(hidden, ids, steps, positions)
    torch.testing.assert_close(off(hidden, ids, other_steps, positions), expected, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["padrec", "padrec_no_slot", "padrec_no_step", "padrec_channel_gate"])
def test_training_starts_from_the_eagle_head(target, variant):
    """Same seed: same fc and decoder layer; alpha = 0 and E_step = 0 switch the signals off."""
    eagle = make_head(target, "eagle", seed=7, randomize=False)
    padrec = make_head(target, variant, seed=7, randomize=False)
    for name, tensor in eagle.state_dict().items():
        torch.testing.assert_close(padrec.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    hidden, ids, steps, positions = inputs()
    torch.testing.assert_close(padrec(hidden, ids, steps, positions), eagle(hidden, ids, steps, positions))


# -- each flag does what it says ----------------------------------------------------------------------
def expected_signals(head: PadRecDraftHead, h, ids, steps):
    """h' - h written out by hand: alpha * E_slot[slot(x)] + g * E_step[k] with the flags applied."""
    cfg = head.config
    delta = torch.zeros_like(h)
    if cfg.use_slot:
        alpha = head.alpha if cfg.slot_gate else 1.0
        delta = delta + alpha * head.slot_emb.weight[head.slot_table[ids]]
    if cfg.use_step:
        if cfg.step_gate and cfg.channel_gate:  # a gate per channel: W_g [H, H], b_g [H]
            g = torch.sigmoid(h @ head.gate.weight.T + head.gate.bias)
        elif cfg.step_gate:
            g = torch.sigmoid(h @ head.gate.weight[0] + head.gate.bias)[..., None]
        else:
            g = 1.0
        delta = delta + g * head.step_emb.weight[steps]
    return delta


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_signals_follow_the_formula(target, variant):
    head = make_head(target, variant)
    hidden, ids, steps, _ = inputs()
    h = head.fuse(hidden, ids)  # [B, T, H]
    got = head.add_signals(h, ids, steps) - h
    torch.testing.assert_close(got, expected_signals(head, h, ids, steps), rtol=1e-5, atol=1e-5)


def test_no_slot_ignores_the_slot_and_no_step_ignores_the_step(target):
    hidden, ids, steps, positions = inputs()
    h = torch.randn(2, 9, H)
    # same token embedding contribution, different slots: compare the signal term only
    other_ids = torch.where(ids < LAYOUT.vocab_size, (ids + 4) % LAYOUT.vocab_size, ids)
    no_slot = make_head(target, "padrec_no_slot")
    torch.testing.assert_close(no_slot.add_signals(h, ids, steps), no_slot.add_signals(h, other_ids, steps))
    no_step = make_head(target, "padrec_no_step")
    other_steps = (steps + 1) % GAMMA
    torch.testing.assert_close(no_step(hidden, ids, steps, positions), no_step(hidden, ids, other_steps, positions))
    full = make_head(target, "padrec")
    assert not torch.allclose(full(hidden, ids, steps, positions), full(hidden, ids, (steps + 1) % GAMMA, positions))
    assert not torch.allclose(full.add_signals(h, ids, steps), full.add_signals(h, other_ids, steps))


def test_no_gates_uses_alpha_one_and_g_one(target):
    head = make_head(target, "padrec_no_gates")
    assert not hasattr(head, "alpha") and not hasattr(head, "gate")
    hidden, ids, steps, _ = inputs()
    h = head.fuse(hidden, ids)
    expected = head.slot_emb.weight[head.slot_table[ids]] + head.step_emb.weight[steps]
    torch.testing.assert_close(head.add_signals(h, ids, steps) - h, expected, rtol=1e-5, atol=1e-5)


def test_steps_past_gamma_reuse_the_last_step_embedding(target):
    head = make_head(target)
    hidden, ids, _, positions = inputs()
    torch.testing.assert_close(head(hidden, ids, GAMMA + 2, positions), head(hidden, ids, GAMMA - 1, positions))


# -- kernel path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", PADREC_VARIANTS)
@pytest.mark.parametrize("scalar_step", [False, True])
def test_kernel_path_equals_reference_path(variant, scalar_step, device, monkeypatch):
    """Grad-free calls take the fused kernel (CUDA, or the interpreter with PADREC_FORCE_TRITON=1)."""
    target = make_target().to(device)
    head = make_head(target, variant).to(device)
    hidden, ids, steps, positions = (t.to(device) for t in inputs(T=15))
    step = torch.tensor(1, device=device) if scalar_step else steps
    reference = head(hidden, ids, step, positions)  # grad enabled: the torch reference
    calls = []
    kernel = head_module.padrec_input

    def spy(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(head_module, "padrec_input", spy, raising=True)
    if device == "cpu":
        monkeypatch.setenv(envs.PADREC_FORCE_TRITON, "1")
    with torch.no_grad():
        fused = head(hidden, ids, step, positions)
    assert calls, "the fused kernel was not used"
    torch.testing.assert_close(fused, reference.detach(), rtol=1e-5, atol=1e-5)


def test_reference_path_without_force_flag(target, monkeypatch):
    monkeypatch.delenv(envs.PADREC_FORCE_TRITON, raising=False)
    assert not PadRecDraftHead.uses_kernel(torch.zeros(2, H))  # CPU: the reference
    monkeypatch.setenv(envs.PADREC_FORCE_TRITON, "1")
    assert PadRecDraftHead.uses_kernel(torch.zeros(2, H)) is (not torch.is_grad_enabled())


# -- KV cache ---------------------------------------------------------------------------------------
def test_kv_cache_step_by_step_equals_one_pass(target):
    head = make_head(target)
    hidden, ids, steps, positions = inputs(B=2, T=8)
    full = head(hidden, ids, steps, positions)  # [B, T, H], causal
    cache = new_cache()
    parts = [head(hidden[:, :5], ids[:, :5], steps[:, :5], positions[:, :5], past_key_values=cache)]
    for t in range(5, 8):  # one query at a time (GQA with a single query)
        parts.append(
            head(
                hidden[:, t : t + 1],
                ids[:, t : t + 1],
                steps[:, t : t + 1],
                positions[:, t : t + 1],
                past_key_values=cache,
            )
        )
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    # roll back the last two positions and recompute them
    cache.crop(-2)
    redo = head(hidden[:, 6:], ids[:, 6:], steps[:, 6:], positions[:, 6:], past_key_values=cache)
    torch.testing.assert_close(redo, full[:, 6:], rtol=1e-4, atol=1e-4)


def test_padding_mask_keeps_real_positions(target):
    head = make_head(target)
    hidden, ids, steps, positions = inputs(B=2, T=8)
    keep = torch.ones(2, 8, dtype=torch.long)
    keep[1, 5:] = 0  # row 1 is 5 tokens long, right-padded
    padded = head(hidden, ids, steps, positions, attention_mask=keep)
    short = head(hidden[1:, :5], ids[1:, :5], steps[1:, :5], positions[1:, :5])
    torch.testing.assert_close(padded[1:, :5], short, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(padded).all()


# -- Medusa -------------------------------------------------------------------------------------------
def test_medusa_starts_as_the_target_lm_head(target):
    heads = MedusaHeads.from_target(target, num_heads=GAMMA, num_layers=2)
    assert set(heads.state_dict()) == (
        {f"blocks.{h}.layers.{l}.{p}" for h in range(GAMMA) for l in range(2) for p in ("weight", "bias")}
        | {f"lm_heads.{h}.weight" for h in range(GAMMA)}
    )
    x = torch.randn(5, H)
    logits = heads(x)  # [GAMMA, 5, V]
    assert logits.shape == (GAMMA, 5, VOCAB)
    for h in range(GAMMA):
        torch.testing.assert_close(heads.blocks[h](x), x, rtol=0, atol=0)
        torch.testing.assert_close(logits[h], target.lm_head(x))
    assert heads.lm_heads[0].weight.data_ptr() != heads.lm_heads[1].weight.data_ptr()  # no shared module


# -- checkpoints --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpoint_round_trip_in_vllm_layout(target, variant, tmp_path):
    head = make_head(target, variant)
    folder = save_draft(head, tmp_path / variant)
    names = set(load_file(str(folder / "model.safetensors")))
    assert names == EAGLE_NAMES | EXTRA_NAMES[variant]
    assert not any("lm_head" in n or "embed_tokens" in n or "input_layernorm" in n for n in names)
    payload = json.loads((folder / "config.json").read_text())
    assert payload["architectures"] == [EAGLE_ARCHITECTURE if variant == "eagle" else PADREC_ARCHITECTURE]
    assert payload["model_type"] == "llama" and payload["num_hidden_layers"] == 1
    assert payload["n_predict"] == GAMMA and payload["tie_word_embeddings"] is False
    assert payload["padrec"]["variant"] == variant and payload["padrec"]["codebook_sizes"] == [4, 4, 4, 4]
    for key in (
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "hidden_act",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "rope_parameters",
    ):
        assert key in payload, key
    hf = AutoConfig.from_pretrained(folder)  # what vLLM's config loader does for model_type llama
    assert isinstance(hf, LlamaConfig) and hf.padrec["num_draft_steps"] == GAMMA
    loaded = load_draft(folder, target)
    hidden, ids, steps, positions = inputs()
    expected = head(hidden, ids, steps, positions)
    torch.testing.assert_close(loaded(hidden, ids, steps, positions), expected, rtol=0, atol=0)


def test_medusa_checkpoint_round_trip(target, tmp_path):
    heads = MedusaHeads.from_target(target, num_heads=GAMMA)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = save_draft(heads, tmp_path / "medusa")
    payload = json.loads((folder / "config.json").read_text())
    assert payload["model_type"] == "medusa" and payload["architectures"] == ["MedusaModel"]
    assert (payload["num_heads"], payload["num_hidden_layers"], payload["hidden_size"], payload["vocab_size"]) == (
        GAMMA,
        1,
        H,
        VOCAB,
    )
    # vLLM renames every key holding "num" and "heads"/"layers": only these two may
    assert [k for k in payload if "num" in k and ("heads" in k or "layers" in k)] == ["num_heads", "num_hidden_layers"]
    names = set(load_file(str(folder / "model.safetensors")))
    assert names == {f"blocks.{h}.layers.0.{p}" for h in range(GAMMA) for p in ("weight", "bias")} | {
        f"lm_heads.{h}.weight" for h in range(GAMMA)
    }
    loaded = load_draft(folder, target)
    x = torch.randn(4, H)
    torch.testing.assert_close(loaded(x), heads(x), rtol=0, atol=0)


def test_load_draft_refuses_another_target(target, tmp_path):
    folder = save_draft(make_head(target), tmp_path / "draft")
    with pytest.raises(DraftTargetMismatchError, match="hidden size"):
        load_draft(folder, make_target(vocab=64))


def test_vllm_reads_the_configs(target, tmp_path):
    """vLLM's own config classes (skipped where vLLM is not installed)."""
    configs = pytest.importorskip("vllm.transformers_utils.configs")
    folder = save_draft(MedusaHeads.from_target(target, num_heads=GAMMA), tmp_path / "medusa")
    medusa = configs.MedusaConfig.from_pretrained(str(folder))
    assert (medusa.num_heads, medusa.num_hidden_layers, medusa.vocab_size) == (GAMMA, 1, VOCAB)
    for variant, arch in (("padrec", PADREC_ARCHITECTURE), ("eagle", EAGLE_ARCHITECTURE)):
        folder = save_draft(make_head(target, variant), tmp_path / variant)
        eagle = configs.EAGLEConfig(AutoConfig.from_pretrained(folder), method="eagle")
        assert eagle.architectures == [arch]
        assert eagle.n_predict == GAMMA
