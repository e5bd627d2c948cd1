"""PAD-Rec's two input signals: their parameters and the fused kernel's arguments, for every head class.

    h' = h + alpha * E_slot[slot_table[x]] + g * E_step[k],   g = sigmoid(h . w_g + b_g)
                                                              (channel_gate: g = sigmoid(W_g h + b_g) in R^H)

Both the training head (``draft.head.PadRecDraftHead``) and the vLLM class
(``integration.draft_model.PadRecEagleModel``) call ``add_signal_parameters`` on themselves, so the
parameters carry the same names in both (``slot_emb.weight``, ``alpha``, ``step_emb.weight``,
``gate.weight``, ``gate.bias``: the checkpoint format of ``draft.checkpoint``), and compute h' with
``apply_signals``: the fused kernel ``vllm_padrec.kernels.padrec_input`` or its torch reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vllm_padrec.draft.config import DraftConfig


def add_signal_parameters(module: nn.Module, config: DraftConfig) -> None:
    """Give ``module`` the signal parameters whose flags are on (a flag that is off leaves its parameters
    out: they do not exist), initialised as training starts them, and the ``slot_table`` buffer."""
    H = config.hidden_size
    if config.use_slot:
        module.slot_emb = nn.Embedding(config.num_slot_kinds, H)  # E_slot [S, H]
        nn.init.normal_(module.slot_emb.weight, std=config.init_std)
        if config.slot_gate:
            # alpha starts at alpha_init (0 by default): the slot term starts switched off.
            module.alpha = nn.Parameter(torch.full((1,), float(config.alpha_init)))  # [1]
    if config.use_step:
        # E_step starts at zero: the step term starts switched off, g and E_step learn from there.
        module.step_emb = nn.Embedding(config.num_draft_steps, H)  # E_step [K, H]
        nn.init.zeros_(module.step_emb.weight)
        if config.step_gate:
            # w_g [1, H], b_g [1] (channel_gate: W_g [H, H], b_g [H]); g = 0.5 at init
            module.gate = nn.Linear(H, H if config.channel_gate else 1)
            nn.init.zeros_(module.gate.weight)
            nn.init.zeros_(module.gate.bias)
    # token id -> slot for the whole (padded) vocabulary: ids past the layout are "other". Made by a
    # factory function, so that it lands on the device vLLM builds the model under (``with
    # torch.device(...)``); ``torch.from_numpy`` alone would leave it on the CPU.
    table = torch.from_numpy(config.layout.slot_table(config.vocab_size))  # [V] int64, CPU
    slot_table = torch.empty(config.vocab_size, dtype=torch.long).copy_(table)  # [V] int64
    module.register_buffer("slot_table", slot_table, persistent=False)


def last_trained_step(steps: torch.Tensor, config: DraftConfig) -> torch.Tensor:
    """Draft steps past the trained ones (vLLM asked for more speculative tokens than the head's γ) use
    the last step embedding E_step[γ-1]."""
    return steps.clamp(0, config.num_draft_steps - 1)


def apply_signals(
    module: nn.Module,  # holds the parameters of add_signal_parameters
    config: DraftConfig,
    h: torch.Tensor,  # [T, H] fc's output
    token_ids: torch.Tensor,  # [T] the input token x of each row
    steps: torch.Tensor | None,  # [T] or [] draft step k (None when use_step is off)
    fn: Callable[..., torch.Tensor],  # padrec_input (the fused kernel) or padrec_input_reference
    **kwargs,  # passed on to fn (e.g. out=)
) -> torch.Tensor:  # [T, H] h'
    """h' computed by ``fn`` from ``module``'s signal parameters."""
    H = h.shape[-1]
    gated = config.use_step and config.step_gate
    return fn(
        h,
        token_ids,
        module.slot_table,
        steps,
        module.slot_emb.weight if config.use_slot else None,  # [S, H]
        module.step_emb.weight if config.use_step else None,  # [K, H]
        module.alpha if config.use_slot and config.slot_gate else None,  # [1]
        (module.gate.weight if config.channel_gate else module.gate.weight.view(H)) if gated else None,  # [H] / [H, H]
        module.gate.bias if gated else None,  # [1] / [H]
        use_slot=config.use_slot,
        use_step=config.use_step,
        slot_gate=config.slot_gate,
        step_gate=config.step_gate,
        channel_gate=config.channel_gate,
        **kwargs,
    )
