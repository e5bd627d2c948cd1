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

Drafted requests (issue 13, ``ATSPEED.md``; a layout with ``draft_beams`` > 0) take the plain steps 0 and 1,
then *rounds*: their rows feed 1 + gamma tokens, the hooks verify the draft's rows of the request
(``stage_rounds``, from the speculator's side) with ``round_sampling``, ``chains``, ``strict`` and ``rounds``,
write every row's tokens and counts into the rejection sampler's output and copy each row's history and KV
from its source row. A round cohort is the drafted requests of a batch with the same K. Which items are
complete is known only on the GPU: each round leaves its members' answers, and R's row writes ``</s>`` in
the round that completes the item.

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
from vllm_padrec.topk import round_checks
from vllm_padrec.topk.beams import BEAM_ID_INFIX, FIRST_ROUND_STEP, TopKBeams, TopKState, beam_req_ids
from vllm_padrec.topk.kv_copy import BlockCopier, PrivateBlocks, block_pages, prompt_tail_copies
from vllm_padrec.topk.relaxed import gumbel_noise
from vllm_padrec.topk.round_sampling import (
    RoundBatch,
    copy_round_histories,
    round_logprobs,
    round_row_logits,
    write_round,
)
from vllm_padrec.topk.rounds import GRAPHED_RELAXED_OUTCOME, GRAPHED_STRICT_OUTCOME, RoundOutcome
from vllm_padrec.topk.sampling import (
    BeamBatch,
    BeamSelection,
    beam_row_logits,
    copy_token_histories,
    select_beams,
    write_sampled_counts,
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
class RoundBeams:
    """A drafted request's beams between rounds (what ``rounds.round_outcome`` carries), G = 1 or a cohort's G."""

    codes: Tensor  # [G, K, L] long: each beam's codes so far
    logprobs: Tensor  # [G, K, L] float32: each code's log-prob
    scores: Tensor  # [G, K] float32, best first; -inf: dead
    steps_done: Tensor  # [G] long: codes each beam holds

    def row(self, g: int) -> RoundBeams:
        return RoundBeams(
            self.codes[g : g + 1], self.logprobs[g : g + 1], self.scores[g : g + 1], self.steps_done[g : g + 1]
        )

    @classmethod
    def cat(cls, parts: Sequence[RoundBeams]) -> RoundBeams:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("codes", "logprobs", "scores", "steps_done")))

    @classmethod
    def from_groups(cls, groups: BeamGroups, item_length: int) -> RoundBeams:
        """The beams after the plain steps 0 .. t - 1 (``BeamGroups``, [G, K, t]) as a round's start."""
        G, K, t = groups.tokens.shape
        pad = item_length - t
        return cls(
            F.pad(groups.tokens, (0, pad)),
            F.pad(groups.logprobs.float(), (0, pad)),
            groups.scores,
            torch.full((G,), t, dtype=torch.long, device=groups.scores.device),
        )


@dataclass(frozen=True)
class RoundRows:
    """The rows a drafted request's next round verifies: the draft's search (``DraftRows.round_rows``)."""

    root: Tensor  # [G, R] long: the start beam each row extends
    chain: Tensor  # [G, R, gamma] long: each row's draft tokens, what the row feeds after its root's last code
    row_live: Tensor  # [G, R] bool: rows holding a drafted path
    # relaxed verification only: the draft's log-probs after each row's root and chain prefixes, and how many
    # of each row's chain tokens are a draft beam's (``relaxed.RoundDraft.from_rows``)
    draft_logprobs: Tensor | None = None  # [G, R, gamma, V] float32
    depth: Tensor | None = None  # [G, R] long

    def row(self, g: int) -> RoundRows:
        """Request g's rows ([1, ...] views), the inverse of ``cat``."""
        fields = (self.root, self.chain, self.row_live, self.draft_logprobs, self.depth)
        return RoundRows(*(None if f is None else f[g : g + 1] for f in fields))

    @classmethod
    def cat(cls, parts: Sequence[RoundRows]) -> RoundRows:
        fields = ("root", "chain", "row_live", "draft_logprobs", "depth")
        return cls(
            *(None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts]) for f in fields)
        )


def rows_from_batch(batch: RoundBatch, input_batch: Any, beams: RoundBeams) -> RoundRows:
    """A round's rows read from the batch when each row is one beam's (K rows, no draft rows: N = 1): row j
    extends start beam j with the draft tokens V2 fed it, the fed tokens at its logits rows 1 .. gamma
    (``input_ids[logits_indices]``, what the rejection sampler reads as the drafts). Live: the live beams."""
    G, R, _ = batch.logits_rows.shape
    fed = input_batch.input_ids[input_batch.logits_indices.long()]  # [num_logits]
    chain = fed[batch.logits_rows[:, :, 1:]].long()  # [G, R, gamma]
    root = torch.arange(R, device=chain.device).expand(G, R)
    return RoundRows(root, chain, torch.isfinite(beams.scores[:, :R]))


@dataclass
class RoundCohort:
    """The drafted top-K requests of one engine step's batch with the same K, in a round, between the hooks."""

    states: list[TopKState]
    batch: RoundBatch
    raw: Tensor  # [G, R, 1 + gamma, V] the rows' raw logits
    beams: RoundBeams
    rows: RoundRows
    outcome: RoundOutcome | None = None


@dataclass(frozen=True)
class NewBeamSlot:
    """A beam added in this engine step (R's step 1): its request slot, R's id and its rank j."""

    slot: int
    req_id: str
    rank: int


@dataclass(frozen=True)
class RowCopyPlan:
    """The constants of ``TopKEngine.copy_rows`` for one group of drafted requests during one ``propose``."""

    slots: Tensor  # [G, R] long: each row's V2 slot
    history_end: Tensor  # [G * R] long: P + the beams' steps, each row's history end
    columns: tuple[int, int]  # the window of history columns that may move (``copy_token_histories``)
    blocks: PrivateBlocks  # the rows' private blocks


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
        # drafted requests (issue 13): R's id -> its beams between rounds, and the rows its next round verifies
        self.round_beams: dict[str, RoundBeams] = {}
        self.round_rows: dict[str, RoundRows] = {}
        # step 0's prompt-tail copies (src, dst block ids) of drafted requests, run again after propose
        self._tails_after_propose: tuple[list[int], list[int]] | None = None
        self._rounds: list[RoundCohort] = []
        self.generator: torch.Generator | None = None  # relaxed verification's random numbers, made on first use
        self._new_beams: list[NewBeamSlot] = []
        # the cohorts' PrivateBlocks, by their members' (id, private block ids)
        self._blocks_of: dict[tuple[tuple[str, tuple[int, ...]], ...], PrivateBlocks] = {}
        # PADREC_TOPK_CHECKS=1: every drafted round's rows checked against V2's state first (host syncs)
        self.round_checks = round_checks.RoundChecks() if round_checks.enabled() else None

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
            # a drafted request's extra rows (rank >= K) start as a copy of beam rank % K: their first round's
            # drafting gives them their paths (``stage_rounds``)
            [offset[b.req_id] + b.rank % self.groups[b.req_id].width for b in new],
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
        self._cohorts, self._rounds = [], []
        self._input_batch = input_batch
        if self.beams is None or not self.beams.states:
            self.groups.clear()
            self.round_beams.clear()
            self.round_rows.clear()
            self._blocks_of.clear()
            return
        states = self.beams.states
        for held in (self.groups, self.round_beams, self.round_rows):
            for req_id in [r for r in held if r not in states or states[r].ended]:
                del held[req_id]  # R left (finished, aborted, preempted) before its last step
        running = self.groups.keys() | self.round_beams.keys()
        for key in [key for key in self._blocks_of if not all(r in running for r, *_ in key)]:
            del self._blocks_of[key]  # a member answered or left: that cohort will not run again
        in_batch = set(input_batch.req_ids)
        by_step: dict[int, list[TopKState]] = defaultdict(list)
        by_k: dict[tuple[int, bool], list[TopKState]] = defaultdict(list)  # drafted, in a round, by (K, relaxed)
        for state in states.values():
            runs = not state.ended and 0 <= state.step < state.item_length and state.req_id in in_batch
            if runs and state.drafts:
                staged = state.req_id in self.round_rows
                if state.req_id in self.round_beams and (staged or state.rows == state.k):
                    # without staged rows (one row per beam: V2's own greedy draft chains) the rule is strict:
                    # relaxed verification reads the draft's log-probs, which only the speculator side gives
                    by_k[state.k, state.relaxed and staged].append(state)
                elif self.round_checks is not None:
                    self.round_checks.violation(
                        "unverified",
                        f"{state.req_id!r} step {state.step}: its rows feed drafts, but no round is verified for it "
                        f"(round beams: {state.req_id in self.round_beams}, staged rows: {staged})",
                    )
            elif runs and (state.step == 0 or state.req_id in self.groups):
                by_step[state.step].append(state)
        for members in by_k.values():
            batch = RoundBatch.build(
                input_batch.req_ids,
                input_batch.cu_num_logits_np,
                input_batch.idx_mapping_np,
                [(s.req_id, s.rows, s.prompt_len) for s in members],
                members[0].gamma,
                members[0].item_length,
                device=logits.device,
            )
            beams = RoundBeams.cat([self.round_beams[s.req_id] for s in members])
            if all(s.req_id in self.round_rows for s in members):
                rows = RoundRows.cat([self.round_rows.pop(s.req_id) for s in members])
            else:  # V2's own drafts: row j holds beam j and feeds its chain (no member here has extra rows)
                rows = rows_from_batch(batch, input_batch, beams)
                for s in members:
                    self.round_rows.pop(s.req_id, None)
            if self.round_checks is not None:
                self.round_checks.check_round(self, members, beams, rows, batch, input_batch)
            self._rounds.append(RoundCohort(members, batch, round_row_logits(logits, batch), beams, rows))
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
        for round_ in self._rounds:
            logprobs = round_logprobs(round_.raw, masked_logits, round_.batch)  # [G, R, 1 + gamma, V]
            beams, rows = round_.beams, round_.rows
            steps_left = round_.states[0].item_length - beams.steps_done
            k = round_.states[0].k
            if round_.states[0].relaxed:
                uniform, gumbel = self._random_numbers(
                    (len(round_.states), rows.chain.shape[2], k * logprobs.shape[-1])
                )
                round_.outcome = GRAPHED_RELAXED_OUTCOME(
                    beams.scores, rows.root, rows.chain, rows.row_live, rows.depth, rows.draft_logprobs, logprobs,
                    steps_left, beams.codes, beams.logprobs, beams.steps_done, uniform, gumbel,
                )  # fmt: skip
            else:
                round_.outcome = GRAPHED_STRICT_OUTCOME(
                    beams.scores, rows.root, rows.chain, rows.row_live, logprobs, steps_left, beams.codes,
                    beams.logprobs, beams.steps_done,
                )  # fmt: skip
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
        rounds, self._rounds = self._rounds, []
        for round_ in rounds:
            self._finish_round(round_, sampler_output)
        for cohort in cohorts:
            selection, batch, states = cohort.selection, cohort.batch, cohort.states
            if selection is None:
                continue
            write_sampled_tokens(sampler_output.sampled_token_ids, selection)
            if getattr(sampler_output, "num_sampled", None) is not None:
                write_sampled_counts(sampler_output.num_sampled, sampler_output.num_rejected, selection, batch)
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
                elif state.gamma and batch.step + 1 >= FIRST_ROUND_STEP:  # drafted rounds from the next step on
                    self.groups.pop(state.req_id, None)
                    self.round_beams[state.req_id] = RoundBeams.from_groups(row.own(), state.item_length)
                else:
                    self.groups[state.req_id] = row

    def _finish_round(self, round_: RoundCohort, sampler_output: Any) -> None:
        """A round's tokens and counts into the sampler's output, each row's history and KV from its source
        row, the beams kept for the next round. Which items are complete is known only on the GPU, so every
        round leaves its members' answers: the one read is that of the step in which R's row writes ``</s>``
        (``patches/sample_tokens.py`` attaches answers to the step's output; a FINAL_ONLY request surfaces
        only its final output)."""
        outcome, batch, states = round_.outcome, round_.batch, round_.states
        write_round(
            sampler_output.sampled_token_ids, sampler_output.num_sampled, sampler_output.num_rejected, outcome, batch
        )
        copy_round_histories(self.req_states.all_token_ids.gpu, outcome, round_.beams.steps_done, batch)
        blocks = self._private_blocks(states, batch.row_slots.device, rows=True)
        self.copy_blocks(blocks.sources(outcome.source_row), blocks.dst)
        after = RoundBeams(outcome.codes, outcome.logprobs, outcome.scores, outcome.steps_done)
        for g, state in enumerate(states):
            self.round_beams[state.req_id] = after.row(g)
            self.answers.put(state.req_id, TopKItems(outcome.codes[g], outcome.scores[g], outcome.logprobs[g]))

    def _random_numbers(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """One U[0, 1) and one standard Gumbel per candidate of each relaxed step, on the device."""
        if self.generator is None:
            self.generator = torch.Generator(device=self.device).manual_seed(0)
        uniform = torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float64)
        return uniform, gumbel_noise(shape, generator=self.generator, device=self.device, dtype=torch.float64)

    # -- the drafts of a round (the speculator's side: ``propose``) ------------------------------------------
    def stage_rounds(self, req_ids: Sequence[str], rows: RoundRows, plan: RowCopyPlan | None = None) -> None:
        """The rows the next round of each of ``req_ids`` (the same K and rows each; ``rows``: [G, ...] in their
        order) verifies, from the draft's search over its rows (``DraftRows``): kept for the sampler hook, and
        each extra row (r >= K) given its root beam's token history, last code and private KV (row root[r] < K
        holds that beam), so that it feeds the root's last code, then its chain (ATSPEED.md, "Extra rows before
        verification"), in one ``copy_rows`` for all of them (``plan``: theirs, when the caller has it). The
        chains themselves go into V2's draft buffer by the caller. Called after the rounds' start beams are in
        rows 0 .. K - 1 (the previous step's hook)."""
        states = [self.beams.states[r] for r in req_ids]
        for state in states:
            if state.relaxed and (rows.draft_logprobs is None or rows.depth is None):
                raise ValueError(
                    f"top-K request {state.req_id!r} verifies by the relaxed rule: its rows need the draft's log-probs"
                )
        for g, req_id in enumerate(req_ids):
            self.round_rows[req_id] = rows.row(g)
        K, R = states[0].k, states[0].rows
        if R == K:
            return
        rank = torch.arange(R, device=self.device)
        self.copy_rows(req_ids, torch.where(rank < K, rank, rows.root), plan)  # [G, R]

    def row_copy_plan(self, req_ids: Sequence[str], num_rows: int) -> RowCopyPlan:
        """What every ``copy_rows`` of the rows of ``req_ids`` during one ``propose`` reads: their V2 slots, the end
        of their histories, the private blocks (the beams' steps do not change between the step's hooks)."""
        states = [self.beams.states[r] for r in req_ids]
        G, R = len(req_ids), num_rows
        index = self.req_states.req_id_to_index
        slots, prompt_len = long_tensors(
            [index[b] for r in req_ids for b in beam_req_ids(r, R)], [s.prompt_len for s in states], device=self.device
        )  # one pinned, non-blocking copy each: no host sync
        steps = torch.cat([self.round_beams[r].steps_done for r in req_ids])  # [G]
        return RowCopyPlan(
            slots=slots.view(G, R),
            history_end=(prompt_len + steps)[:, None].expand(G, R).reshape(-1),
            columns=(min(s.prompt_len for s in states), max(s.prompt_len + s.item_length for s in states)),
            blocks=self._private_blocks(states, self.device, rows=True),
        )

    def copy_rows(self, req_ids: Sequence[str], source: Tensor, plan: RowCopyPlan | None = None) -> None:
        """Give each row of the drafted requests ``req_ids`` (the same rows each) the token history, last code and
        private KV of row ``source[g, r]`` of its request ([G, R] long; itself where nothing moves): before a
        round, an extra row takes its root beam's (``stage_rounds``); during the draft's search, a new row its
        parent row's (``DraftStep.source``), so that the draft's masks and attention read its path. One copy of
        each kind for all of them; gather, then scatter: sources may be rows that change too. ``plan``: the
        rows' ``row_copy_plan``, built here when not given."""
        plan = plan or self.row_copy_plan(req_ids, source.shape[1])
        children = plan.slots.reshape(-1)  # [G * R]
        sources = plan.slots.gather(1, source).reshape(-1)  # [G * R]
        copy_token_histories(self.req_states.all_token_ids.gpu, children, sources, plan.history_end, plan.columns)
        last = self.req_states.last_sampled_tokens
        last[children] = last[sources].clone()
        self.copy_blocks(plan.blocks.sources(source), plan.blocks.dst)

    def _private_blocks(self, states: Sequence[TopKState], device: torch.device, rows: bool = False) -> PrivateBlocks:
        """The cohort's private-block index tensors, built on its first beam step and kept while its members
        run together (a request's blocks do not change during its life). The key holds the blocks too: a
        client may reuse a finished request's id, and the new request has other blocks. ``rows``: over every
        row of drafted requests, else over their K beams' rows."""
        key = tuple((s.req_id, s.private_block_ids, rows) for s in states)
        blocks = self._blocks_of.get(key)
        if blocks is None:
            width = [s.rows if rows else s.k for s in states]
            blocks = PrivateBlocks.build(
                [s.private_block_ids[: w * s.blocks_per_beam] for s, w in zip(states, width)], width, device=device
            )
            self._blocks_of[key] = blocks
        return blocks

    def _copy_prompt_tails(self, states: Sequence[TopKState]) -> None:
        """Step 0: R's partial last prompt block into each row's first private block (none when P % bs == 0).
        A drafted request's copies run again after this step's ``propose`` (``after_propose``): the draft writes
        its KV of R's prompt there, after this hook."""
        src: list[int] = []
        dst: list[int] = []
        drafted: tuple[list[int], list[int]] = ([], [])
        for state in states:
            if state.tail_block_id is None:
                continue
            s, d = prompt_tail_copies(
                state.prompt_len, self.beams.layout.block_size, state.tail_block_id, state.private_block_ids, state.rows
            )
            src += s
            dst += d
            if state.gamma:
                drafted[0].extend(s)
                drafted[1].extend(d)
        if src:
            self.copy_blocks(*long_tensors(src, dst, device=self.device))
        if drafted[0]:
            self._tails_after_propose = drafted

    def after_propose(self) -> None:
        """After the speculator's ``propose`` of a step: the drafted requests' prompt tails copied again, now that
        the draft layer's KV of R's partial prompt block is written (the rows' drafts attend to it)."""
        pending = self._tails_after_propose
        if pending is not None:
            self._tails_after_propose = None
            self.copy_blocks(*long_tensors(*pending, device=self.device))
