"""Plain-torch reference of the PAD-Rec input feature (the one reference; tests, benchmarks and
training import it from here).

Vocabulary (METHODS.md section 1, PAD-Rec, arXiv 2604.27747):
- item: L semantic-ID tokens; a list is items joined by a separator token.
- slot: the within-item position of a token (code slot 0..L-1, separator, other), read from the
  token id through ``slot_table``.
- step: the draft step (speculation depth) k = 0..K-1 of a draft position within a draft round.

For each row t of the fused EAGLE input feature h:

    s_t   = slot_table[token_ids[t]]
    k_t   = step_ids[t]                      (or one step for every row when step_ids is 0-dim)
    g_t   = sigmoid(dot(h_t, gate_w) + gate_b)              a scalar: gate_w [H], gate_b [1]
          = sigmoid(gate_w @ h_t + gate_b)                   per channel (channel_gate): gate_w [H, H], gate_b [H]
    out_t = h_t + alpha * E_slot[s_t] + g_t * E_step[k_t]    (g_t * E_step[k_t] elementwise per channel)

Flags (the ablations): ``use_slot=False`` drops the slot term, ``use_step=False`` drops the step
term, ``slot_gate=False`` fixes alpha to 1.0, ``step_gate=False`` fixes g_t to 1.0. With every
flag off the function is the identity (the plain EAGLE head). ``channel_gate=True`` makes the step
gate a vector, one gate per channel of E_step[k] (METHODS.md: "a scalar or per-channel gate from the
same features"). Arguments that a flag leaves unused may be None.

Arithmetic is in fp32; the result has h's dtype. The function is differentiable in h, slot_emb,
step_emb, alpha, gate_w and gate_b.
"""

from __future__ import annotations

import torch


def padrec_input_reference(
    h: torch.Tensor,  # [T, H] float
    token_ids: torch.Tensor | None,  # [T] int32/int64, the input token of each row
    slot_table: torch.Tensor | None,  # [V] int32/int64, token id -> slot in 0..S-1
    step_ids: torch.Tensor | None,  # [T] or [] int32/int64, draft step in 0..K-1
    slot_emb: torch.Tensor | None,  # [S, H] float, E_slot
    step_emb: torch.Tensor | None,  # [K, H] float, E_step
    alpha: torch.Tensor | None,  # [] or [1] float, slot scale
    gate_w: torch.Tensor | None,  # [H] float, context gate weight ([H, H] with channel_gate)
    gate_b: torch.Tensor | None,  # [] or [1] float, context gate bias ([H] with channel_gate)
    *,
    use_slot: bool = True,
    use_step: bool = True,
    slot_gate: bool = True,
    step_gate: bool = True,
    channel_gate: bool = False,
) -> torch.Tensor:  # [T, H], h.dtype
    """Return h + alpha * E_slot[slot_table[token_ids]] + g * E_step[step_ids] (see module doc)."""
    out = h.float()  # [T, H] fp32
    if use_slot:
        slots = slot_table[token_ids.long()].long()  # [T]
        slot_rows = slot_emb.float()[slots]  # [T, H]
        if slot_gate:
            slot_rows = alpha.float().reshape(()) * slot_rows  # [T, H]
        out = out + slot_rows  # [T, H]
    if use_step:
        step_rows = step_emb.float()[step_ids.long()]  # [T, H], or [H] when step_ids is 0-dim
        if step_gate and channel_gate:
            logit = h.float() @ gate_w.float().T + gate_b.float()  # [T, H]
            step_rows = torch.sigmoid(logit) * step_rows  # [T, H]
        elif step_gate:
            logit = h.float() @ gate_w.float() + gate_b.float().reshape(())  # [T]
            step_rows = torch.sigmoid(logit)[:, None] * step_rows  # [T, H]
        out = out + step_rows  # [T, H]
    return out.to(h.dtype)  # [T, H]
