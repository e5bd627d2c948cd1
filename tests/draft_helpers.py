"""Draft heads with random weights, a tiny target and a small dataset, shared by the draft tests."""

from __future__ import annotations

import torch

from vllm_padrec.draft import DraftConfig, PadRecDraftHead


def random_head(target, layout, variant: str = "padrec", gamma: int = 3, seed: int = 0) -> PadRecDraftHead:
    """A head with random weights (and non-zero PAD-Rec signals): its drafts are mostly rejected."""
    config = DraftConfig.from_target(target.config, layout, gamma, variant=variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = PadRecDraftHead(config).attach_target(target)
        with torch.no_grad():
            for name, p in head.named_parameters():
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if "layernorm" in name else 0.3 * torch.randn_like(p))
    return head.eval()


def tiny_target(vocab_size: int = 32, hidden_size: int = 32, seed: int = 0):
    """A 2-layer random Llama target, frozen, the same for the same arguments in every process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def small_catalog_data(vocab_size: int = 32):
    """60 synthetic items of 4 codes of 4 (a vocabulary within ``vocab_size``) and 40 users: the draft-training
    tests' dataset."""
    from vllm_padrec.data import SyntheticConfig, generate_synthetic

    data = generate_synthetic(SyntheticConfig(num_items=60, num_users=40, codebook_sizes=(4, 4, 4, 4)))
    assert data.catalog.layout.vocab_size <= vocab_size
    return data
