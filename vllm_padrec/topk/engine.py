"""The runner-side coordinator of top-K requests: one ``TopKEngine`` per V2 runner, called from its sampler.

It holds what top-K needs between engine steps and applies ``topk.sampling`` and ``topk.kv_copy`` in
the order V2 runs (topk/DESIGN.md, section 4, steps 7-10):

- ``beams``: the runner's ``TopKBeams`` (the requests' states, rewritten into each ``SchedulerOutput`` by
  ``patches/execute_model.py``), attached with the KV caches once the runner has them (``attach``);
- ``groups``: where each top-K request R's beams are after its latest step (``CohortRow``: a row of its
  cohort's ``BeamGroups``). A *cohort* (the requests of one batch at the same step t) is the
  concatenation of its members' groups, padded to the cohort's K_max with dead beams. Members that stay
  together run the next step on the same tensors; when one leaves (abort, preemption) or the members
  change, the cohort is merged again from its members' rows. The selection is the same bit for bit
  whatever K_max is (``select.grouped_beam_step``);
- ``answers``: the ``TopKAnswers`` store that ``patches/sample_tokens.py`` empties into the step's
  ``pooler_output``.

The hooks, in V2's order within one engine step (each returns at once when no top-K request runs):

1. ``stage_beam_slots`` (the model state's ``apply_staged_writes``, after V2's ``add_requests``): at R's
   step 1 each new beam slot j gets its first token (chosen at step 0): ``all_token_ids[slot, P]``,
   ``total_len = P + 1``, ``last_sampled_tokens``, so its decode row feeds that token at position P;
2. ``before_sampling(logits, input_batch)`` (``MaskingSampler``, before the catalog mask): the cohorts'
   rows of the raw logits are copied (``sampling.beam_row_logits``);
3. ``after_masking(logits)``: the selection (``sampling.select_beams``) reads the refused tokens from the
   masked logits here, before vLLM's sampler changes them in place (its logit bias, bad words,
   temperature and min-p run on the same tensor, ``v1/worker/gpu/sample/sampler.py``); then each R's own
   rows allow only its token of this step (``owner_tokens``: ``<pad>``, ``</s>`` at its last step), through
   ``RequestLists.mask_topk_owners``, so that vLLM's sampler never meets a fully masked row;
4. ``after_sampling(sampler_output, input_batch)``: the tokens go into the sampler's output
   (``sampling.write_sampled_tokens``: each beam's token, ``<pad>`` for R, ``</s>`` at R's last step);
   at step 0 R's partial last prompt block is copied into every beam's first private block; at steps
   t >= 1 every beam slot gets its parent's token history and private KV blocks; at R's last step
   R's answer (every rank, dead beams with score -inf, still on the device: the host copy waits until
   ``patches/sample_tokens.py`` encodes it) goes into ``answers``.

Only host-known shapes and host lists (block ids, slots) cross to the device, each step's in one
non-blocking copy per kind (``device_lists``); nothing is read back until R's answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.device_lists import long_tensors
from vllm_padrec.integration.patches.sample_tokens import TopKAnswers
from vllm_padrec.topk.beams import BEAM_ID_INFIX, TopKBeams, TopKState
from vllm_padrec.topk.kv_copy import BlockCopier, PrivateBlocks, block_pages, prompt_tail_copies
from vllm_padrec.topk.sampling import (
    BeamBatch,
    BeamSelection,
    beam_row_logits,
    copy_token_histories,
    select_beams,
    write_sampled_tokens,
)
from vllm_padrec.topk.select import NEG_INF, BeamGroups, TopKItems


def merge_groups(parts: Sequence[BeamGroups]) -> BeamGroups:
    """One cohort's groups from its members' (each [1, K_g, t]), padded to K_max with dead beams."""
    if len(parts) == 1:
        return parts[0]
    k_max = max(int(p.scores.shape[1]) for p in parts)

    def widen(tensor: Tensor, value: float) -> Tensor:  # [1, K_g, ...] -> [1, K_max, ...]
        if tensor.shape[1] == k_max:
            return tensor
        pad = [0, 0] * (tensor.dim() - 2) + [0, k_max - tensor.shape[1]]
        return F.pad(tensor, pad, value=value)

    return BeamGroups(
        torch.cat([p.beam_width for p in parts]),
        torch.cat([widen(p.scores, NEG_INF) for p in parts]),
        torch.cat([widen(p.tokens, 0) for p in parts]),
        torch.cat([widen(p.logprobs, 0.0) for p in parts]),
    )


@dataclass(frozen=True)
class CohortRow:
    """Where one top-K request's beams are after its latest step: row ``row`` of its cohort's groups (the
    request's first ``width`` ranks; the rest is the cohort's padding). Kept as a reference rather than
    sliced out, so that a cohort whose members stay together runs its next step on the same tensors."""

    groups: BeamGroups  # the cohort's, [G, K_max, t]
    row: int  # g
    width: int  # K_g

    def own(self) -> BeamGroups:
        """The request's own [1, K_g, t] groups (views, no copy): the inverse of ``merge_groups``."""
        g, k = self.row, self.width
        groups = self.groups
        return BeamGroups(
            groups.beam_width[g : g + 1],
            groups.scores[g : g + 1, :k],
            groups.tokens[g : g + 1, :k],
            groups.logprobs[g : g + 1, :k],
        )


def cohort_groups(rows: Sequence[CohortRow]) -> BeamGroups:
    """The groups of a cohort whose members are ``rows``, in that order: the previous cohort's own tensors
    when the members are exactly its rows in its order (the common case), else ``merge_groups`` of theirs."""
    first = rows[0].groups
    if all(r.groups is first and r.row == g for g, r in enumerate(rows)) and len(rows) == first.scores.shape[0]:
        return first
    return merge_groups([r.own() for r in rows])


@dataclass
class Cohort:
    """The top-K requests of one engine step's batch at the same step t, between the sampler's hooks."""

    states: list[TopKState]
    batch: BeamBatch
    raw: Tensor  # [N, V] the cohort's beam rows of the raw logits
    selection: BeamSelection | None = None


@dataclass(frozen=True)
class NewBeamSlot:
    """A beam added in this engine step (R's step 1): its request slot, R's id and its rank j."""

    slot: int
    req_id: str
    rank: int


class TopKEngine:
    """The top-K requests of one V2 runner: their beams, their selection state and their answers."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.answers = TopKAnswers()
        self.beams: TopKBeams | None = None  # attached once the runner knows its block size and catalog
        self.copy_blocks = BlockCopier([])  # over the runner's KV storages, once attached
        self.req_states: Any = None  # V2's RequestState (all_token_ids, total_len, last_sampled_tokens)
        self.lists: Any = None  # the runner's RequestLists (patches/init_model_state.py): R's row override
        self._input_batch: Any = None  # this step's input batch, between before_sampling and after_masking
        self.groups: dict[str, CohortRow] = {}  # R's id -> its beams after its latest step
        self._cohorts: list[Cohort] = []
        self._new_beams: list[NewBeamSlot] = []
        # the cohorts' PrivateBlocks, by their members' (id, private block ids)
        self._blocks_of: dict[tuple[tuple[str, tuple[int, ...]], ...], PrivateBlocks] = {}

    def attach(self, beams: TopKBeams, kv_caches: Any, num_blocks: int) -> None:
        """Called once by the runner's first real step (``patches/execute_model.py``), with the runner's
        ``kv_caches`` (one tensor or list per layer) and the KV cache config's ``num_blocks``."""
        self.beams, self.copy_blocks = beams, BlockCopier(block_pages(kv_caches, num_blocks))

    # -- request slots (the model state's add_request / apply_staged_writes) ----------------------
    def note_new_request(self, slot: int, req_id: str) -> None:
        """Remember a beam given a slot in this step, for ``stage_beam_slots``."""
        if BEAM_ID_INFIX in req_id:
            owner, rank = req_id.split(BEAM_ID_INFIX)
            self._new_beams.append(NewBeamSlot(slot, owner, int(rank)))

    def owner_slot(self, req_id: str) -> int | None:
        """The slot of the top-K request R whose beam ``req_id`` is (R's settings row is the beam's); None for
        R itself, or for a beam whose R has no slot (never: R runs while its beams do)."""
        if BEAM_ID_INFIX not in req_id or self.req_states is None:
            return None
        return self.req_states.req_id_to_index.get(req_id.split(BEAM_ID_INFIX)[0])

    def stage_beam_slots(self) -> None:
        """Each new beam slot's first token (from R's step 0) at position P; after V2's own staged writes."""
        new, self._new_beams = self._new_beams, []
        new = [b for b in new if b.req_id in self.groups and self.beams is not None and b.req_id in self.beams.states]
        if not new:
            return
        states = self.beams.states
        # every first token of the cohorts involved, flattened; R's rank j is at offset[R] + j
        cohorts = list({id(self.groups[b.req_id].groups): self.groups[b.req_id].groups for b in new}.values())
        first = torch.cat([c.tokens[:, :, 0].reshape(-1) for c in cohorts])  # [sum G * K_max]
        base = dict(zip(map(id, cohorts), np.cumsum([0] + [c.tokens[:, :, 0].numel() for c in cohorts]).tolist()))
        offset = {
            r: base[id(ref.groups)] + ref.row * ref.groups.tokens.shape[1]
            for r, ref in ((b.req_id, self.groups[b.req_id]) for b in new)
        }
        slots, position, index = long_tensors(  # [M] each
            [b.slot for b in new],
            [states[b.req_id].prompt_len for b in new],
            [offset[b.req_id] + b.rank for b in new],
            device=self.device,
        )
        tokens = first[index]  # [M]
        req_states = self.req_states
        all_token_ids = req_states.all_token_ids.gpu
        all_token_ids[slots, position] = tokens.to(all_token_ids.dtype)
        req_states.total_len.gpu[slots] = (position + 1).to(req_states.total_len.gpu.dtype)
        req_states.last_sampled_tokens[slots, 0] = tokens.to(req_states.last_sampled_tokens.dtype)

    # -- the sampler's hooks (MaskingSampler) -----------------------------------------------------
    def before_sampling(self, logits: Tensor, input_batch: Any) -> None:
        """Find this step's cohorts and copy their raw logits rows, before the in-place catalog mask."""
        self._cohorts = []
        self._input_batch = input_batch
        if self.beams is None or not self.beams.states:
            self.groups.clear()
            self._blocks_of.clear()
            return
        states = self.beams.states
        for req_id in [r for r in self.groups if r not in states or states[r].ended]:
            del self.groups[req_id]  # R left (finished, aborted, preempted) before its last step
        for key in [key for key in self._blocks_of if not all(r in self.groups for r, _ in key)]:
            del self._blocks_of[key]  # a member answered or left: that cohort will not run again
        in_batch = set(input_batch.req_ids)
        by_step: dict[int, list[TopKState]] = defaultdict(list)
        for state in states.values():
            runs = not state.ended and 0 <= state.step < state.item_length and state.req_id in in_batch
            if runs and (state.step == 0 or state.req_id in self.groups):
                by_step[state.step].append(state)
        for step in sorted(by_step):
            members = by_step[step]
            batch = BeamBatch.build(
                input_batch.req_ids,
                input_batch.cu_num_logits_np,
                input_batch.idx_mapping_np,
                [(s.req_id, s.k, s.prompt_len) for s in members],
                step,
                members[0].item_length,
                device=logits.device,
            )
            self._cohorts.append(Cohort(members, batch, beam_row_logits(logits, batch)))

    def after_masking(self, masked_logits: Tensor) -> None:
        """Select each cohort's beams: the refused tokens are read here, before vLLM's sampler runs."""
        for cohort in self._cohorts:
            if cohort.batch.step == 0:
                groups = BeamGroups.start([s.k for s in cohort.states], device=masked_logits.device)
            else:
                groups = cohort_groups([self.groups[s.req_id] for s in cohort.states])
            cohort.selection = select_beams(groups, cohort.raw, masked_logits, cohort.batch)
        input_batch, self._input_batch = self._input_batch, None
        if self.lists is not None and input_batch is not None:
            self.lists.mask_topk_owners(masked_logits, input_batch, self.owner_tokens(input_batch))

    def owner_tokens(self, input_batch: Any) -> dict[int, int]:
        """Each top-K request R of this batch whose prompt is done: its slot -> the one token its row may
        sample, ``<pad>`` at steps 0 .. L - 2 and ``</s>`` from its last step L - 1 on (a step L that async
        scheduling adds ends R too). R's token in the output is written by ``after_sampling`` either way.
        An R back from a preemption (``TopKBeams.resumed``) may sample only ``</s>``: it finishes without an
        answer, a plain output that the front ends read as "preempted" and send again (``topk.request``)."""
        if self.beams is None or not (self.beams.states or self.beams.resumed):
            return {}
        states, resumed = self.beams.states, self.beams.resumed
        tokens = {}
        for index, req_id in enumerate(input_batch.req_ids):
            state = states.get(req_id)
            if req_id in resumed:  # back from a preemption without its beams: it ends now, with no answer
                tokens[int(input_batch.idx_mapping_np[index])] = TokenLayout.EOS
            elif state is not None and not state.ended and state.step >= 0:
                last = state.step >= state.item_length - 1
                tokens[int(input_batch.idx_mapping_np[index])] = TokenLayout.EOS if last else TokenLayout.PAD
        return tokens

    def after_sampling(self, sampler_output: Any, input_batch: Any) -> None:
        """The tokens into the sampler's output, the beams' histories and KV from their parents, the answers."""
        cohorts, self._cohorts = self._cohorts, []
        for cohort in cohorts:
            selection, batch, states = cohort.selection, cohort.batch, cohort.states
            if selection is None:
                continue
            write_sampled_tokens(sampler_output.sampled_token_ids, selection)
            if batch.step == 0:
                self._copy_prompt_tails(states)
            else:
                copy_token_histories(
                    self.req_states.all_token_ids.gpu,
                    batch.beam_slots,
                    selection.parent_slots,
                    batch.history_end,
                    batch.history_columns,
                )
                blocks = self._private_blocks(states, batch.beam_slots.device)
                self.copy_blocks(blocks.sources(selection.step.parent_rank), blocks.dst)
            for g, state in enumerate(states):
                row = CohortRow(selection.groups, g, state.k)
                if batch.last:
                    self.groups.pop(state.req_id, None)
                    own = row.own()
                    self.answers.put(state.req_id, TopKItems(own.tokens[0], own.scores[0], own.logprobs[0]))
                else:
                    self.groups[state.req_id] = row

    def _private_blocks(self, states: Sequence[TopKState], device: torch.device) -> PrivateBlocks:
        """The cohort's private-block index tensors, built on its first beam step and kept while its members
        run together (a request's blocks do not change during its life). The key holds the blocks too: a
        client may reuse a finished request's id, and the new request has other blocks."""
        key = tuple((s.req_id, s.private_block_ids) for s in states)
        blocks = self._blocks_of.get(key)
        if blocks is None:
            blocks = PrivateBlocks.build([s.private_block_ids for s in states], [s.k for s in states], device=device)
            self._blocks_of[key] = blocks
        return blocks

    def _copy_prompt_tails(self, states: Sequence[TopKState]) -> None:
        """Step 0: R's partial last prompt block into each beam's first private block (none when P % bs == 0)."""
        src: list[int] = []
        dst: list[int] = []
        for state in states:
            if state.tail_block_id is None:
                continue
            s, d = prompt_tail_copies(
                state.prompt_len, self.beams.layout.block_size, state.tail_block_id, state.private_block_ids, state.k
            )
            src += s
            dst += d
        if src:
            self.copy_blocks(*long_tensors(src, dst, device=self.device))
