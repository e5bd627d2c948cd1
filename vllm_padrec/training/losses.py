"""Distillation losses of the draft heads: EAGLE / PAD-Rec unrolled over γ draft steps, and Medusa.

Vocabulary (see draft/head.py): tokens t_0..t_{n-1} of a training sequence (prompt of P tokens,
then the completion); the target's final hidden states h_0..h_{n-1}; the target's own next token
a_{j+1} = argmax lm_head(h_j). A draft round starts at the last verified position p: the target has
read t_0..t_p and chosen x_{p+1}; draft step k (0..γ-1) runs at position q = p + k and proposes
x_{q+2}. Each step's loss (EAGLE, arXiv 2401.15077):

    reg_weight * SmoothL1(f_q, h_{q+1})  +  cls_weight * CE(lm_head(f_q), a_{q+2})

(CE against the target's distribution softmax(lm_head(h_{q+1})) with ``soft_labels``), summed over
steps with weight step_decay^k and divided by the sum of the weights.

Unrolled alignment: what the head sees at inference, step by step (γ = 3, round start p = 5):

    step 0, position 5:  (h_5,    t_6)  step 0 -> f^0_5 -> proposes x_7   keys: step-0 entries 0..5
    step 1, position 6:  (f^0_5,  t_7)  step 1 -> f^1_6 -> proposes x_8   keys: step-0 0..5, step-1 6
    step 2, position 7:  (f^1_6,  t_8)  step 2 -> f^2_7 -> proposes x_9   keys: step-0 0..5, step-1 6, step-2 7

(vLLM: step 0 runs over every target position of the round at once, with the target's hidden
states; later steps run one position per request on the previous step's output; the draft's KV
cache keeps the step-0 entries for positions <= p, VLLM_NOTES.md 2.3.) At inference the token of
step k is the draft's own x_{q+1}; in training it is t_{q+1}. They agree whenever step k matters:
a round stops at the first wrong proposal.

Training computes step k for every position q at once, each row as step k of the round p = q - k:

    step 0: row q reads (h_q, t_{q+1})              -> f^0_q
    step k: row q reads (f^{k-1}_{q-1}, t_{q+1})    -> f^k_q     (input = step k-1's output shifted right by one)
    targets of row q at every step: h_{q+1} and a_{q+2}

and the KV cache holds the keys of steps 0..k side by side (T keys each). Row q at step k attends
to step-0 keys at positions <= q-k and to the step-j key at position q-k+j for j = 1..k
(``unrolled_attention_mask``). For T = 4, k = 2 (columns: step-0 keys 0..3 | step-1 | step-2):

    q = 2:  1 0 0 0 | 0 1 0 0 | 0 0 1 0        (round p = 0: step-0 key 0, step-1 key 1, itself)
    q = 3:  1 1 0 0 | 0 0 1 0 | 0 0 0 1        (round p = 1)

Rows that count (``loss_rows``): the predicted token x_{q+2} lies in the sequence (q + 2 <= n - 1)
and the round start p = q - k is a real decode position: p >= P - 1 with ``loss_on="completion"``
(the first round starts at the prompt's last token), p >= 0 with ``loss_on="all"``.
Medusa head h at row p (= the round start) predicts x_{p+2+h}: label a_{p+2+h}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vllm_padrec.constraint import apply_mask
from vllm_padrec.draft.head import PadRecDraftHead, new_cache
from vllm_padrec.draft.medusa import MedusaHeads
from vllm_padrec.training.atspeed_losses import (
    ALPHA,
    atspeed_r_tvd,
    atspeed_s_loss,
    distillation_ce,
    sequence_logprobs,
    topk_recall,
)
from vllm_padrec.training.collect import SequenceBatch


@dataclass(frozen=True)
class LossWeights:
    reg_weight: float = 1.0  # feature regression (SmoothL1 to the target's next hidden state); Medusa: unused
    cls_weight: float = 0.1  # cross-entropy to the target's next token (EAGLE's 0.1); Medusa: 1
    step_decay: float = 0.8  # weight of draft step (or Medusa head) k is step_decay ** k
    soft_labels: bool = False  # CE against the target's distribution instead of its argmax
    loss_on: str = "completion"  # "completion": rounds inside the completion only; "all": every position

    def __post_init__(self) -> None:
        if self.loss_on not in ("completion", "all"):
            raise ValueError(f"loss_on must be 'completion' or 'all', got {self.loss_on!r}")
        if min(self.reg_weight, self.cls_weight) < 0 or self.step_decay <= 0:
            raise ValueError("loss weights must be >= 0 and step_decay > 0")


@dataclass(frozen=True)
class TopKTerms:
    """What top-K training data (``training.topk_data``) adds to the unrolled loss."""

    allowed: torch.Tensor  # [B, T, V] bool: row q, the tokens the catalog allows as x_{q+2}
    beams: int  # K, the target's beams
    objective: str  # "distill": the CE; "atspeed_s": AtSpeed-S's mix; "atspeed_r": AtSpeed-R's (CE and TVD)
    group: torch.Tensor | None = None  # [B] long: the history each sequence is a beam of ("atspeed_r")


@dataclass
class LossOutput:
    loss: torch.Tensor  # [] the weighted loss (differentiable)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached 0-dim tensors
    hits: torch.Tensor | None = None  # [K, B, T] bool: step k of the round starting at p proposed the target's token
    full_rounds: torch.Tensor | None = None  # [B, T] bool: round starts p whose K steps all lie in the sequence
    topk_recall: torch.Tensor | None = None  # [K, B, T] float, by round start like hits (TopKTerms given)

    def accepted_length(self) -> torch.Tensor:  # [] mean accepted draft tokens per full round (bonus excluded)
        """Teacher-forced acceptance: leading correct steps of each round, greedy verification."""
        if self.hits is None or self.full_rounds is None or not bool(self.full_rounds.any()):
            return torch.zeros(())
        accepted = self.hits.long().cumprod(0).sum(0)  # [B, T]
        return accepted[self.full_rounds].float().mean()


def unrolled_attention_mask(T: int, step: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[1, 1, T, (step+1)*T] bool: keys of steps 0..step side by side (module docstring)."""
    q = torch.arange(T, device=device)[:, None]  # [T, 1] query position
    key = torch.arange(T, device=device)[None, :]  # [1, T] key position within a block
    blocks = [key <= q - step]  # step-0 keys up to the round start
    blocks += [key == q - step + j for j in range(1, step + 1)]  # one key of each later step
    return torch.cat(blocks, dim=1)[None, None]  # [1, 1, T, (step+1)*T]


def loss_rows(batch: SequenceBatch, back: int, ahead: int, loss_on: str) -> torch.Tensor:  # [B, T] bool
    """Rows q whose round start p = q - back is a decode position and whose x_{q+2+ahead} exists."""
    T = batch.input_ids.shape[1]
    q = torch.arange(T, device=batch.input_ids.device)[None, :]  # [1, T]
    start = (batch.prompt_lens - 1).clamp(min=0) if loss_on == "completion" else torch.zeros_like(batch.prompt_lens)
    return (q - back >= start[:, None]) & (q + 2 + ahead <= batch.lengths[:, None] - 1)  # [B, T]


def _shift_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, j] <- x[:, j + n], zero-filled at the end: [B, T, ...] -> [B, T, ...]."""
    if n == 0:
        return x
    return torch.cat([x[:, n:], torch.zeros_like(x[:, :n])], dim=1)


def _token_loss(logits: torch.Tensor, target_logits: torch.Tensor, soft: bool) -> torch.Tensor:
    """Per-row CE: [N, V], [N, V] -> [N]."""
    logp = F.log_softmax(logits.float(), dim=-1)  # [N, V]
    if soft:
        return -(F.softmax(target_logits.float(), dim=-1) * logp).sum(-1)  # [N]
    return F.nll_loss(logp, target_logits.argmax(-1), reduction="none")  # [N]


def unrolled_features(head: PadRecDraftHead, batch: SequenceBatch, num_steps: int) -> Iterator[torch.Tensor]:
    """Yield the head's features f^k [B, T, H] for k = 0..num_steps-1, row q being step k of round q - k."""
    B, T = batch.input_ids.shape
    device = batch.input_ids.device
    next_ids = _shift_left(batch.input_ids, 1)  # [B, T] t_{q+1}
    positions = batch.position_ids  # [B, T]
    cache = new_cache()  # holds the keys of steps 0..k side by side
    feat = batch.hidden  # [B, T, H] step 0 reads the target's hidden states
    for k in range(num_steps):
        step_ids = torch.full((B, T), k, dtype=torch.long, device=device)  # [B, T]
        mask = unrolled_attention_mask(T, k, device)  # [1, 1, T, (k+1)T]
        f = head(feat, next_ids, step_ids, positions, attention_mask=mask, past_key_values=cache)  # [B, T, H]
        yield f
        feat = torch.cat([torch.zeros_like(f[:, :1]), f[:, :-1]], dim=1)  # [B, T, H] row q reads f^k_{q-1}


def unrolled_draft_loss(
    head: PadRecDraftHead,
    batch: SequenceBatch,
    num_steps: int,
    weights: LossWeights = LossWeights(),
    topk: TopKTerms | None = None,
) -> LossOutput:
    """EAGLE / PAD-Rec loss unrolled over ``num_steps`` draft steps (module docstring). With ``topk`` (the
    batch holds the target's top-K beams): each step also reports the top-K recall of its rows, and with
    ``topk.atspeed_s`` AtSpeed-S's mix of CE, restricted reverse KL and sharpening replaces the CE term."""
    B, T = batch.input_ids.shape
    device = batch.input_ids.device
    h_next = _shift_left(batch.hidden, 1)  # [B, T, H] h_{q+1}
    with torch.no_grad():
        target_logits = head.compute_logits(h_next)  # [B, T, V], row q: the target's distribution of x_{q+2}
    hits = torch.zeros(num_steps, B, T, dtype=torch.bool, device=device)  # indexed by round start p
    recall = torch.zeros(num_steps, B, T, device=device) if topk is not None else None  # indexed by round start p
    beam_logprobs = None  # AtSpeed-R: each beam's (draft, target) log-prob over the steps so far, [B] each
    total, weight_sum = None, 0.0
    metrics: dict[str, torch.Tensor] = {}
    for k, f in enumerate(unrolled_features(head, batch, num_steps)):
        rows = loss_rows(batch, back=k, ahead=0, loss_on=weights.loss_on)  # [B, T]
        if not bool(rows.any()):
            continue
        f_rows = f[rows]  # [N, H]
        logits = head.compute_logits(f_rows)  # [N, V]
        labels = target_logits[rows]  # [N, V]
        reg = F.smooth_l1_loss(f_rows.float(), h_next[rows].float(), reduction="none").mean(-1)  # [N]
        if topk is not None and topk.objective == "atspeed_s":
            parts = atspeed_s_loss(logits, labels, topk.allowed[rows], topk.beams)  # [N] each
            ce, token_term = parts.ce, parts.loss
            metrics[f"rkl_{k}"] = parts.rkl.mean().detach()
            metrics[f"sharpen_{k}"] = parts.reg.mean().detach()
        elif topk is not None and topk.objective == "atspeed_r":
            ce = distillation_ce(logits, labels, topk.allowed[rows])  # [N]
            token_term = (1 - ALPHA) * ce
            beam_logprobs = _round_logprobs(head, f, target_logits, batch, topk.allowed, k, beam_logprobs)
        else:
            ce = token_term = _token_loss(logits, labels, weights.soft_labels)  # [N]
        if recall is not None:
            row_recall = torch.zeros(B, T, device=device)  # [B, T] by row q
            row_recall[rows] = topk_recall(logits.detach(), labels, topk.allowed[rows], topk.beams)
            recall[k, :, : T - k] = row_recall[:, k:]  # row q = p + k -> round start p
            metrics[f"topk_recall_{k}"] = row_recall[rows].mean()
        w = weights.step_decay**k
        step_loss = w * (weights.reg_weight * reg.mean() + weights.cls_weight * token_term.mean())
        total = step_loss if total is None else total + step_loss
        weight_sum += w
        correct = torch.zeros(B, T, dtype=torch.bool, device=device)  # [B, T] by row q
        if topk is None:
            correct[rows] = logits.argmax(-1) == labels.argmax(-1)
        else:  # on top-K data both models' tokens are masked in serving: their best allowed tokens agree
            allowed = topk.allowed[rows]  # [N, V]
            correct[rows] = masked_argmax(logits, allowed) == masked_argmax(labels, allowed)
        hits[k, :, : T - k] = correct[:, k:]  # row q = p + k -> round start p
        metrics[f"reg_{k}"] = reg.mean().detach()
        metrics[f"ce_{k}"] = ce.mean().detach()
        metrics[f"acc_{k}"] = correct[rows].float().mean()
    if total is None:
        raise ValueError("no loss position in this batch: sequences too short for a draft round (check loss_on)")
    if beam_logprobs is not None:  # AtSpeed-R's TVD over each history's beams, weighted like one more step
        tvd = _grouped_tvd(*beam_logprobs, topk.group, topk.beams)  # [G]
        total = total + weight_sum * weights.cls_weight * ALPHA * tvd.mean()
        metrics["tvd"] = tvd.mean().detach()
    full_rounds = _by_round_start(loss_rows(batch, back=num_steps - 1, ahead=0, loss_on=weights.loss_on), num_steps - 1)
    return LossOutput(total / weight_sum, metrics, hits, full_rounds, recall)


def _round_logprobs(
    head: PadRecDraftHead,
    f: torch.Tensor,  # [B, T, H] the head's features at draft step k
    target_logits: torch.Tensor,  # [B, T, V'] row q: the target's logits of x_{q+2}
    batch: SequenceBatch,
    allowed: torch.Tensor,  # [B, T, V] bool
    k: int,
    so_far: tuple[torch.Tensor, torch.Tensor] | None,  # [B] each, the steps before k
) -> tuple[torch.Tensor, torch.Tensor]:  # [B] each: the draft's and the target's log-prob of codes 1 .. k + 1
    """Add step k's token of each beam's round to its draft and target log-probs: the round that starts at the
    prompt's last token (p = P - 1) reads row q = P - 1 + k at step k, which proposes code k + 1 of the item;
    its masked full-vocabulary log-probs, of the beam's own code."""
    B = batch.input_ids.shape[0]
    b = torch.arange(B, device=f.device)
    q = batch.prompt_lens - 1 + k  # [B] the round's row at step k
    token = batch.input_ids[b, q + 2]  # [B] the beam's code k + 1
    rows_allowed = allowed[b, q]  # [B, V]
    draft = sequence_logprobs(head.compute_logits(f[b, q])[:, None], token[:, None], rows_allowed[:, None])  # [B]
    with torch.no_grad():
        target = sequence_logprobs(target_logits[b, q][:, None], token[:, None], rows_allowed[:, None])  # [B]
    return (draft, target) if so_far is None else (so_far[0] + draft, so_far[1] + target)


def _grouped_tvd(draft: torch.Tensor, target: torch.Tensor, group: torch.Tensor, k: int) -> torch.Tensor:
    """[B] beam log-probs, [B] group ids -> [G] TVD of each group's beams (``atspeed_losses.atspeed_r_tvd``)."""
    groups, slot = torch.unique_consecutive(group, return_inverse=True)  # beams of a group sit together
    rank = torch.arange(group.shape[0], device=group.device)
    first = torch.zeros(groups.shape[0], dtype=torch.long, device=group.device).scatter_reduce(
        0, slot, rank, "amin", include_self=False
    )
    column = rank - first[slot]  # [B] the beam's place in its group
    G = groups.shape[0]
    draft_table = torch.full((G, k), float("-inf"), device=draft.device).index_put((slot, column), draft.float())
    target_table = torch.full((G, k), float("-inf"), device=draft.device).index_put((slot, column), target.float())
    live = torch.zeros(G, k, dtype=torch.bool, device=draft.device).index_put((slot, column), torch.tensor(True))
    return atspeed_r_tvd(draft_table, target_table, live)


def masked_argmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:  # [N, V'], [N, V] -> [N] long
    """The best allowed token of each row (what a masked greedy draft or target picks)."""
    return apply_mask(logits.float().clone(), allowed).argmax(-1)


def _by_round_start(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Index rows by round start: out[:, p] = rows[:, p + n] ([B, T] -> [B, T], False at the end)."""
    out = torch.zeros_like(rows)
    out[:, : rows.shape[1] - n] = rows[:, n:]
    return out


def medusa_loss(
    heads: MedusaHeads, batch: SequenceBatch, lm_head: torch.nn.Module, weights: LossWeights = LossWeights()
) -> LossOutput:
    """CE of Medusa head h at round start p against the target's token a_{p+2+h} (module docstring)."""
    B, T = batch.input_ids.shape
    device = batch.input_ids.device
    num_heads = heads.config.num_heads
    with torch.no_grad():
        target_logits = lm_head(batch.hidden.to(lm_head.weight.dtype))  # [B, T, V], row j: distribution of x_{j+1}
    hits = torch.zeros(num_heads, B, T, dtype=torch.bool, device=device)
    total, weight_sum = 0.0, 0.0
    metrics: dict[str, torch.Tensor] = {}
    for h in range(num_heads):
        rows = loss_rows(batch, back=0, ahead=h, loss_on=weights.loss_on)  # [B, T] round starts p
        if not bool(rows.any()):
            continue
        x = heads.blocks[h](batch.hidden[rows].to(heads.lm_heads[h].weight.dtype))  # [N, H]
        logits = heads.lm_heads[h](x)  # [N, V]
        labels = _shift_left(target_logits, 1 + h)[rows]  # [N, V] distribution of x_{p+2+h}
        ce = _token_loss(logits, labels, weights.soft_labels)  # [N]
        w = weights.step_decay**h
        total = total + w * ce.mean()
        weight_sum += w
        hits[h][rows] = logits.argmax(-1) == labels.argmax(-1)
        metrics[f"ce_{h}"] = ce.mean().detach()
        metrics[f"acc_{h}"] = hits[h][rows].float().mean()
    if not weight_sum:
        raise ValueError("no loss position in this batch: sequences too short for a draft round (check loss_on)")
    full_rounds = loss_rows(batch, back=0, ahead=num_heads - 1, loss_on=weights.loss_on)
    return LossOutput(total / weight_sum, metrics, hits, full_rounds)
