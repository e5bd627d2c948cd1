"""One beam step over an engine batch: what the sampler hook does on the rows of top-K requests.

V2's sampler gets ``logits`` ``[num_logits, V]`` (raw: ``compute_logits`` output, unpadded vocabulary)
and returns ``sampled_token_ids`` ``[num_reqs, 1 + drafts]`` whose row i is request i of the batch
(``input_batch.req_ids``); ``post_update`` then appends each request's sampled token to its slot's
``all_token_ids`` and ``last_sampled_tokens`` (``worker/gpu/input_batch.py:519``). A *cohort* is the
top-K requests of one batch that are at the same step t (``BeamGroups`` carries beams of one length);
the hook runs this module once per cohort, in this order (topk/DESIGN.md, section 4, steps 7-10):

1. ``beam_row_logits``: the cohort's beam rows of the raw logits, copied BEFORE the catalog mask runs
   in place (the log-probs are over the full vocabulary, unmasked);
2. the existing verification mask on ``logits``, in place;
3. ``select_beams``: the one step rule of ``topk.select`` (``beam_logprobs``: float32 log-softmax of
   the raw rows, then -inf wherever the mask put -inf; then ``BeamGroups.step``);
4. after vLLM's sampler: ``write_sampled_tokens`` puts each new beam j's token in the output row of
   beam j's slot and ``<pad>`` (``</s>`` at the last step, t = L - 1) in R's own row, and
   ``write_sampled_counts`` keeps exactly that one token per row (R's drafts, on a draft server, rejected); then
   ``copy_token_histories`` and ``kv_copy.BlockCopier`` give beam j's slot its parent's token history and
   private KV blocks. ``post_update`` then appends the written tokens.

Rows. At step 0 a group's one beam (rank 0, score 0) is R's own row, the last logit of R's last prefill
chunk; the K new beams have no rows yet (they become runner-private requests at step 1, ``topk/beams.py``).
At steps t >= 1 beam j of R is the request ``beam_req_id(R, j)``, one token and one logit, and its
slot always holds rank j: after each step's copies it holds the new beam of rank j.

Everything but ``BeamBatch.build`` (host lists, once per step, copied in one non-blocking copy:
``device_lists``) runs on tensors of host-known shapes, with no host sync.
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
from vllm_padrec.topk.select import BeamGroups, BeamRows, GroupedBeamStep, beam_logprobs


@dataclass(frozen=True)
class BeamBatch:
    """Where one cohort (G top-K requests at step t) sits in an engine step's batch."""

    step: int  # t, the same for every group of the cohort
    last: bool  # t = L - 1: the final selection, R's row gets </s>
    logits_rows: Tensor  # [N] long: the logits row of each current beam (at t = 0 each R's own row)
    rows: BeamRows  # [N]: (group, rank) of each of those rows, over the N rows of ``beam_row_logits``
    owner_requests: Tensor  # [G] long: R's row in the sampler's output (its batch index)
    beam_requests: Tensor  # [M] long: output row of every new beam that has a slot (t >= 1: all j < K_g)
    beam_slots: Tensor  # [M] long: that beam's request slot (``idx_mapping``)
    beam_index: Tensor  # [M] long: g * K_max + j, its place in the [G, K_max] selection
    history_end: Tensor  # [M] long: P_g + t, the tokens its slot holds before this step's token
    history_columns: tuple[int, int]  # (min P_g, max P_g + t): the columns where the beams' histories differ
    output_logits: Tensor  # [M + G] long: the logits rows of each beam row, then of each R (1 + its drafts)

    @classmethod
    def build(
        cls,
        req_ids: Sequence[str],  # input_batch.req_ids: batch index -> request id
        cu_num_logits: Sequence[int] | np.ndarray,  # input_batch.cu_num_logits_np: [num_reqs + 1]
        idx_mapping: Sequence[int] | np.ndarray,  # input_batch.idx_mapping_np: batch index -> slot
        groups: Sequence[tuple[str, int, int]],  # (R's id, K, P) of each group, in BeamGroups order
        step: int,  # t
        item_length: int,  # L
        device: torch.device | str = "cpu",
    ) -> BeamBatch:
        index = {req_id: i for i, req_id in enumerate(req_ids)}
        cu_num_logits, idx_mapping = np.asarray(cu_num_logits), np.asarray(idx_mapping)
        widths = np.array([k for _, k, _ in groups])  # [G]
        k_max = int(widths.max())
        owners = np.array([index[req_id] for req_id, _, _ in groups])  # [G] R's batch index
        if step == 0:  # each group's one beam is R's own row: the last logit of its last prefill chunk
            logits_rows = cu_num_logits[owners + 1] - 1
            group, rank = np.arange(len(groups)), np.zeros(len(groups), dtype=np.int64)
            beam_requests = beam_slots = beam_index = history_end = np.empty(0, dtype=np.int64)
        else:  # beam j of group g: one request, one logit
            beam_requests = np.array([index[b] for req_id, k, _ in groups for b in beam_req_ids(req_id, k)])  # [M]
            logits_rows = cu_num_logits[beam_requests]
            beam_slots = idx_mapping[beam_requests]
            group = np.repeat(np.arange(len(groups)), widths)  # [M]
            rank = np.concatenate([np.arange(k) for k in widths])  # [M]
            beam_index = group * k_max + rank
            history_end = np.repeat(np.array([p for _, _, p in groups]) + step, widths)

        output = np.concatenate([beam_requests, owners]).astype(np.int64)  # [M + G]
        output_logits = cu_num_logits[output + 1] - cu_num_logits[output]
        lists = (logits_rows, group, rank, owners, beam_requests, beam_slots, beam_index, history_end, output_logits)
        logits_rows_, group_, rank_, owners_, beam_requests_, beam_slots_, beam_index_, history_end_, output_logits_ = (
            long_tensors(*lists, device=device)
        )
        return cls(
            step=step,
            last=step == item_length - 1,
            logits_rows=logits_rows_,
            rows=BeamRows(group_, rank_),
            owner_requests=owners_,
            beam_requests=beam_requests_,
            beam_slots=beam_slots_,
            beam_index=beam_index_,
            history_end=history_end_,
            history_columns=(min(p for _, _, p in groups), max(p for _, _, p in groups) + step),
            output_logits=output_logits_,
        )


def beam_row_logits(
    logits: Tensor,  # [num_logits, V] raw logits, before the catalog mask
    batch: BeamBatch,
) -> Tensor:  # [N, V]: a copy, which the in-place mask that runs next does not touch
    return logits[batch.logits_rows]


@dataclass(frozen=True)
class BeamSelection:
    """One cohort's beam step: the new beams and what the runner writes for them."""

    groups: BeamGroups  # the beams after this step (tokens and log-probs one longer)
    step: GroupedBeamStep  # [G, K_max] scores, parent ranks, parent rows (in ``beam_row_logits``' rows), tokens
    output_rows: Tensor  # [M + G] long: rows of the sampler's output whose token is replaced
    output_tokens: Tensor  # [M + G] long: the new beams' tokens, then <pad> or </s> for each R
    parent_slots: Tensor  # [M] long: the slot of the beam each of the M slotted beams continues


def select_beams(
    groups: BeamGroups,  # the cohort's beams as of the previous step
    raw: Tensor,  # [N, V] from ``beam_row_logits``, taken before the mask
    masked_logits: Tensor,  # [num_logits, V]: the step's logits after the catalog mask (-inf: refused)
    batch: BeamBatch,
) -> BeamSelection:
    """The step rule of ``topk.select`` on the cohort's rows, and the tokens and parents it implies."""
    allowed = masked_logits[batch.logits_rows] != float("-inf")  # [N, V]
    logprobs = beam_logprobs(raw, allowed)  # [N, V] float32
    new_groups, step = groups.step(logprobs, batch.rows)
    G, k_max = step.tokens.shape
    beam_tokens = step.tokens.reshape(G * k_max)[batch.beam_index]  # [M]
    # slot of each parent: rank j's slot is beam_slots where beam_index = g * K_max + j
    slot_of = torch.full((G * k_max,), -1, dtype=torch.long, device=raw.device)
    slot_of[batch.beam_index] = batch.beam_slots
    parent_index = torch.arange(G, device=raw.device)[:, None] * k_max + step.parent_rank  # [G, K_max]
    parent_slots = slot_of[parent_index.reshape(-1)[batch.beam_index]]  # [M]; -1 only without any candidate
    parent_slots = torch.where(parent_slots >= 0, parent_slots, batch.beam_slots)
    owner_token = TokenLayout.EOS if batch.last else TokenLayout.PAD
    return BeamSelection(
        groups=new_groups,
        step=step,
        output_rows=torch.cat([batch.beam_requests, batch.owner_requests]),
        output_tokens=torch.cat([beam_tokens, torch.full_like(batch.owner_requests, owner_token)]),
        parent_slots=parent_slots,
    )


def write_sampled_tokens(
    sampled_token_ids: Tensor,  # [num_reqs, 1 + drafts]: SamplerOutput.sampled_token_ids, changed in place
    selection: BeamSelection,
) -> None:
    """Each beam row and each R row samples exactly one token (no drafts): column 0 is replaced."""
    sampled_token_ids[selection.output_rows, 0] = selection.output_tokens.to(sampled_token_ids.dtype)


def write_sampled_counts(
    num_sampled: Tensor,  # [num_reqs]: SamplerOutput.num_sampled, changed in place
    num_rejected: Tensor | None,  # [num_reqs]: SamplerOutput.num_rejected (None from a sampler without drafts)
    selection: BeamSelection,
    batch: BeamBatch,
) -> None:
    """Each beam row and each R row keeps exactly the one token ``write_sampled_tokens`` wrote: on a server with
    a draft R's row carries drafts too, and one that matched R's allowed token would otherwise be accepted, so R
    would write several tokens a step and reach ``max_tokens`` before its ``</s>``."""
    num_sampled[selection.output_rows] = 1
    if num_rejected is not None:
        num_rejected[selection.output_rows] = (batch.output_logits - 1).to(num_rejected.dtype)


def copy_token_histories(
    all_token_ids: Tensor,  # [max_num_reqs, max_model_len]: RequestState.all_token_ids.gpu, changed in place
    child_slots: Tensor,  # [M] long: distinct slots, each written once
    parent_slots: Tensor,  # [M] long: the slot each copies from (may repeat, may be the child itself)
    history_end: Tensor,  # [M] long: P + t; the child's columns P .. P + t - 1 become the parent's
    columns: tuple[int, int],  # (start, stop) with start <= every P and stop >= every P + t (host-known)
) -> None:
    """``all_token_ids[child, P:P + t] = all_token_ids[parent, P:P + t]`` for every pair, parents read first.

    Only the window ``columns`` moves (``all_token_ids`` lives in host memory mapped into the GPU, so a
    whole row would cross the bus). Its columns below a row's P are prompt tokens, equal among a
    request's beams, so copying them too is exact; columns from ``history_end`` on keep the child's own
    values (``post_update`` writes the step's token at column P + t).
    """
    start, stop = columns
    if child_slots.numel() == 0 or stop <= start:
        return
    window = all_token_ids[:, start:stop]  # [max_num_reqs, stop - start], a view
    position = torch.arange(start, stop, device=all_token_ids.device)  # [stop - start]
    keep_parent = position[None, :] < history_end[:, None]  # [M, stop - start]
    parents = window.index_select(0, parent_slots)  # [M, stop - start]: a temporary, read before any write
    children = window.index_select(0, child_slots)  # [M, stop - start]
    window.index_copy_(0, child_slots, torch.where(keep_parent, parents, children))
