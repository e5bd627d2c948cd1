"""Medusa heads (Cai et al., arXiv 2401.10774) in vLLM 0.26.0's layout, the Medusa baseline.

vLLM's ``Medusa`` model (model_executor/models/medusa.py, VLLM_NOTES.md section 4): per head h a
``ResidualBlock`` of ``num_hidden_layers`` layers ``x = x + SiLU(Linear_{H->H}(x))``, then the head's
own LM head ``lm_heads.{h}``. Input: the target's final hidden state h_p (after the final norm) at
the position p that produced the last token x_{p+1}; head h predicts x_{p+2+h}, i.e. the token h+1
positions after the one the target just produced (head 0 proposes draft token 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MedusaConfig:
    hidden_size: int  # H, the target's hidden size
    vocab_size: int  # V, the target's (padded) vocabulary size; vLLM overwrites a different one
    num_heads: int = 4  # draft tokens per round (vLLM's num_speculative_tokens overwrites it)
    num_layers: int = 1  # residual layers per head (config.json `num_hidden_layers`)
    fc_bias: bool = True  # bias in the residual layers (config.json `medusa_fc_bias`), as FasterDecoding

    def __post_init__(self) -> None:
        for name in ("hidden_size", "vocab_size", "num_heads", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MedusaConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_hf_dict(self) -> dict:
        """config.json for vLLM's MedusaConfig. No other key may hold both "num" and "heads" (or
        "layers"): vLLM renames every such key to num_heads / num_hidden_layers."""
        return {
            "model_type": "medusa",
            "architectures": ["MedusaModel"],
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "truncated_vocab_size": self.vocab_size,
            "num_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "medusa_fc_bias": self.fc_bias,
        }

    @classmethod
    def from_hf_dict(cls, payload: dict) -> MedusaConfig:
        if payload.get("model_type") != "medusa":
            raise ValueError(f"not a Medusa config: model_type is {payload.get('model_type')!r}")
        return cls(
            hidden_size=int(payload["hidden_size"]),
            vocab_size=int(payload["vocab_size"]),
            num_heads=int(payload["num_heads"]),
            num_layers=int(payload["num_hidden_layers"]),
            fc_bias=bool(payload.get("medusa_fc_bias", False)),
        )


class ResidualBlock(nn.Module):
    """``num_layers`` x (x = x + SiLU(Linear(x))), vLLM's ResidualBlock."""

    def __init__(self, hidden_size: int, num_layers: int, bias: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(hidden_size, hidden_size, bias=bias) for _ in range(num_layers)])
        self.act = nn.SiLU()
        # Identity at init: zero weights and bias give SiLU(0) = 0, so x passes through unchanged and
        # every head starts as the target's own LM head on h_p (as FasterDecoding's Medusa).
        for layer in self.layers:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., H]
        for layer in self.layers:
            x = x + self.act(layer(x))  # [..., H]
        return x


class MedusaHeads(nn.Module):
    """``blocks.{h}`` (ResidualBlock) and ``lm_heads.{h}`` (Linear H -> V, no bias) for h < num_heads."""

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config
        H, V = config.hidden_size, config.vocab_size
        self.blocks = nn.ModuleList(
            [ResidualBlock(H, config.num_layers, config.fc_bias) for _ in range(config.num_heads)]
        )
        self.lm_heads = nn.ModuleList([nn.Linear(H, V, bias=False) for _ in range(config.num_heads)])

    @classmethod
    def from_target(cls, target: nn.Module, num_heads: int, num_layers: int = 1, fc_bias: bool = True) -> MedusaHeads:
        """Heads for a HF causal LM; every lm_heads.{h} starts as a copy of the target's LM head."""
        lm_head = target.get_output_embeddings()
        V, H = lm_head.weight.shape
        config = MedusaConfig(hidden_size=H, vocab_size=V, num_heads=num_heads, num_layers=num_layers, fc_bias=fc_bias)
        heads = cls(config)
        heads.init_from_lm_head(lm_head.weight)
        return heads.to(lm_head.weight.device)

    @torch.no_grad()
    def init_from_lm_head(self, weight: torch.Tensor) -> None:  # weight [V, H]
        for head in self.lm_heads:
            head.weight.copy_(weight.to(head.weight.dtype))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [..., H] -> [num_heads, ..., V]
        """Logits of every head; head h's row predicts the token h+1 after the target's next token."""
        return torch.stack(
            [lm_head(block(hidden_states)) for block, lm_head in zip(self.blocks, self.lm_heads)]
        )  # [num_heads, ..., V]
