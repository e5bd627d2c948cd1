"""One drafted round over an engine batch: what the sampler hook does on the rows of drafted top-K requests.

The drafted form of ``topk.sampling`` (issue 13, ATSPEED.md section 3). In a round each of a request R's
rows (``beams.py``: its K beams' rows, then the draft's extra rows) is a spec-decode row of 1 + gamma query
tokens: its root beam's last code, then its chain of gamma draft tokens. V2 lays out ``1 + gamma`` logits
per row (``input_batch.cu_num_logits``: after the fed code, then after each draft token), and its
rejection sampler returns ``sampled_token_ids`` ``[num_reqs, 1 + gamma]``, ``num_sampled`` and
``num_rejected`` ``[num_reqs]``, which ``post_update`` and the speculator read
(``worker/gpu/spec_decode/rejection_sampler.py``, ``input_batch.py``). A *round cohort* is the drafted
requests of one batch; the hook runs, per cohort:

1. ``round_row_logits``: every row's 1 + gamma raw logits rows, copied before the in-place catalog mask;
2. the verification mask on ``logits``, in place;
3. ``round_logprobs``: the step rule's log-probs (``select.beam_logprobs``) of those rows, [G, R, 1 + gamma, V],
   which ``chains.chain_round`` and ``strict.strict_round_batched`` verify and ``rounds.round_outcome``
   turns into what each row keeps;
4. after vLLM's sampler: ``write_round`` puts each row's tokens and counts in the sampler's output (the
   rows' of the outcome; R's own row one token, ``</s>`` where the item is complete, else ``<pad>``), and
   ``copy_round_histories`` and ``kv_copy.BlockCopier`` (``PrivateBlocks.build`` over the rows) give each
   row its source row's token history and private KV blocks.

Everything but ``RoundBatch.build`` (host lists, once per step, copied in one non-blocking copy) runs on
tensors of host-known shapes with no host sync: which items are complete is read on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.device_lists import long_tensors
from vllm_padrec.topk.beams import beam_req_ids
from vllm_padrec.topk.rounds import RoundOutcome
from vllm_padrec.topk.sampling import copy_token_histories
from vllm_padrec.topk.select import beam_logprobs


@dataclass(frozen=True)
class RoundBatch:
    """Where one round cohort (G drafted top-K requests) sits in an engine step's batch, rows padded to R_max."""

    gamma: int
    logits_rows: Tensor  # [G, R_max, 1 + gamma] long: each row's logits rows (a padding row repeats row 0's)
    row_present: Tensor  # [G, R_max] bool: the group has that row
    row_requests: Tensor  # [M] long: the output row (batch index) of every present row, group by group
    row_slots: Tensor  # [M] long: its request slot
    row_index: Tensor  # [M] long: g * R_max + r, its place in [G, R_max]
    row_prompt_len: Tensor  # [M] long: P of its group
    owner_requests: Tensor  # [G] long: R's row in the sampler's output
    owner_logits: Tensor  # [G] long: R's own logits rows this step (1 + its scheduled drafts)
    history_columns: tuple[int, int]  # (min P, max P + L): the columns where the rows' histories may differ

    @classmethod
    def build(
        cls,
        req_ids: Sequence[str],  # input_batch.req_ids: batch index -> request id
        cu_num_logits: Sequence[int] | np.ndarray,  # input_batch.cu_num_logits_np: [num_reqs + 1]
        idx_mapping: Sequence[int] | np.ndarray,  # input_batch.idx_mapping_np: batch index -> slot
        groups: Sequence[tuple[str, int, int]],  # (R's id, its rows, P) of each group
        gamma: int,
        item_length: int,  # L
        device: torch.device | str = "cpu",
    ) -> RoundBatch:
        index = {req_id: i for i, req_id in enumerate(req_ids)}
        cu_num_logits, idx_mapping = np.asarray(cu_num_logits), np.asarray(idx_mapping)
        rows = np.array([r for _, r, _ in groups])  # [G]
        G, r_max = len(groups), int(rows.max())
        row_requests = np.array([index[b] for req_id, r, _ in groups for b in beam_req_ids(req_id, r)])  # [M]
        counts = cu_num_logits[row_requests + 1] - cu_num_logits[row_requests]
        if (counts != 1 + gamma).any():
            bad = int(np.argmax(counts != 1 + gamma))
            raise RuntimeError(
                f"drafted row {req_ids[row_requests[bad]]!r} has {int(counts[bad])} logits rows; a round needs "
                f"1 + gamma = {1 + gamma}"
            )
        group = np.repeat(np.arange(G), rows)  # [M]
        rank = np.concatenate([np.arange(r) for r in rows])  # [M]
        row_index = group * r_max + rank
        first = np.full(G * r_max, -1, dtype=np.int64)
        first[row_index] = cu_num_logits[row_requests]
        present = first >= 0
        first = np.where(present, first, np.repeat(first.reshape(G, r_max)[:, 0], r_max))  # padding: row 0's
        logits_rows = first.reshape(G, r_max, 1)[:, :, [0]] + np.arange(1 + gamma)[None, None, :]
        owners = np.array([index[req_id] for req_id, _, _ in groups])  # [G]
        prompt_lens = np.array([p for _, _, p in groups])
        lists = (
            present.reshape(-1),
            logits_rows.reshape(-1),
            row_requests,
            idx_mapping[row_requests],
            row_index,
            prompt_lens[group],
            owners,
            cu_num_logits[owners + 1] - cu_num_logits[owners],
        )
        row_present, flat_rows, row_requests_, row_slots, row_index_, row_prompt_len, owners_, owner_logits = (
            long_tensors(*lists, device=device)  # one pinned, non-blocking copy: no host sync
        )
        return cls(
            gamma=gamma,
            logits_rows=flat_rows.view(G, r_max, 1 + gamma),
            row_present=row_present.view(G, r_max).bool(),
            row_requests=row_requests_,
            row_slots=row_slots,
            row_index=row_index_,
            row_prompt_len=row_prompt_len,
            owner_requests=owners_,
            owner_logits=owner_logits,
            history_columns=(int(prompt_lens.min()), int(prompt_lens.max()) + item_length),
        )


def round_row_logits(
    logits: Tensor,  # [num_logits, V] raw logits, before the catalog mask
    batch: RoundBatch,
) -> Tensor:  # [G, R_max, 1 + gamma, V]: a copy, which the in-place mask that runs next does not touch
    return logits[batch.logits_rows]


def round_logprobs(
    raw: Tensor,  # [G, R_max, 1 + gamma, V] from ``round_row_logits``
    masked_logits: Tensor,  # [num_logits, V]: after the catalog mask (-inf: refused)
    batch: RoundBatch,
) -> Tensor:  # [G, R_max, 1 + gamma, V] float32
    """The step rule's log-probs after every row's root and each prefix of its chain."""
    allowed = masked_logits[batch.logits_rows] != float("-inf")
    return beam_logprobs(raw, allowed)


def write_round(
    sampled_token_ids: Tensor,  # [num_reqs, 1 + drafts]: SamplerOutput.sampled_token_ids, changed in place
    num_sampled: Tensor,  # [num_reqs]: SamplerOutput.num_sampled, changed in place
    num_rejected: Tensor,  # [num_reqs]: SamplerOutput.num_rejected, changed in place
    outcome: RoundOutcome,
    batch: RoundBatch,
) -> None:
    """Every row's tokens and counts (the outcome's), and R's own row: one token, ``</s>`` once the item is
    complete, else ``<pad>``, all its drafts rejected."""
    G, r_max, width = outcome.sampled.shape
    group = batch.row_index // r_max  # [M]
    rows_tokens = outcome.sampled.reshape(G * r_max, width)[batch.row_index]  # [M, 1 + gamma]
    sampled_token_ids[batch.row_requests, :width] = rows_tokens.to(sampled_token_ids.dtype)
    num_sampled[batch.row_requests] = outcome.num_sampled[group].to(num_sampled.dtype)
    num_rejected[batch.row_requests] = outcome.num_rejected[group].to(num_rejected.dtype)
    owner_token = torch.where(outcome.done, TokenLayout.EOS, TokenLayout.PAD)  # [G]
    sampled_token_ids[batch.owner_requests, 0] = owner_token.to(sampled_token_ids.dtype)
    num_sampled[batch.owner_requests] = 1
    num_rejected[batch.owner_requests] = (batch.owner_logits - 1).to(num_rejected.dtype)


def copy_round_histories(
    all_token_ids: Tensor,  # [max_num_reqs, max_model_len]: RequestState.all_token_ids.gpu, changed in place
    outcome: RoundOutcome,
    steps_before: Tensor,  # [G] long: the codes the round's start beams held (their histories' P + m)
    batch: RoundBatch,
) -> None:
    """Each row's history up to P + m becomes its source row's (``copy_token_histories``, sources read first);
    ``post_update`` then appends the row's sampled tokens."""
    G, r_max = outcome.source_row.shape
    group = batch.row_index // r_max  # [M]
    slot_of = torch.zeros(G * r_max, dtype=torch.long, device=batch.row_slots.device)
    slot_of[batch.row_index] = batch.row_slots
    source = outcome.source_row.reshape(-1)[batch.row_index] + group * r_max  # [M]
    history_end = batch.row_prompt_len + steps_before[group]
    copy_token_histories(all_token_ids, batch.row_slots, slot_of[source], history_end, batch.history_columns)
