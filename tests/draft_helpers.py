"""Draft heads with random weights, shared by the draft-training and speculative-decoding tests."""

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
