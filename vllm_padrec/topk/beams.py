"""The beams of top-K requests as the V2 runner sees them: per-request state and the rewritten scheduler output.

The scheduler sees a top-K request R as one ordinary request: its prompt of P tokens, then one token
per engine step. The runner gives R's K beams rows of their own: each beam j is a runner-private
pseudo-request ``f"{R}\\x00beam{j}"`` (``beam_req_id``), a plain one-token decode row to V2. This
module turns each ``SchedulerOutput`` into the one the runner executes, so that V2's own
``finish_requests`` / ``add_requests`` / ``update_requests`` / ``prepare_inputs`` do every beam's
bookkeeping (topk/DESIGN.md, section 4, steps 6 and 8).

Vocabulary:

- L, the *item length*: tokens of one item (the catalog's slots); R's steps are t = 0 .. L - 1.
- *step t* of R: the t-th engine step in which R is scheduled once its prompt is computed. Step 0 is
  the step that computes the prompt's last token (its last prefill chunk): its logits pick the first
  token of every beam. Steps 1 .. L-1 run the beams; step L-1 picks the final K items. Under async
  scheduling one more step of R (step L) may be scheduled before the scheduler sees R finish.
- *private blocks*: the admission wrapper of the scheduler (topk/DESIGN.md, section 4, step 5)
  appends K * B blocks to the end of R's block list, B = ``BeamLayout.blocks_per_beam(P)`` (its one
  definition is ``topk.admission.private_blocks_per_beam``); beam j owns the j-th run of B of them. They
  hold a copy of the prompt's partial last block, then the beam's own tokens (positions P .. P + L - 2)
  and, on a server with a draft, the draft's lookahead slots.

The rewrite, engine step by engine step (``rewrite_scheduler_output``):

- R's ``NewRequestData``: R's last K * B block ids are taken out; R's own row never sees them.
- step 1: K ``NewRequestData``, one per beam: prompt = R's prompt, ``num_computed_tokens = P``,
  ``block_ids`` = R's floor(P / bs) full prompt blocks + the beam's private blocks, R's
  ``sampling_params``; one scheduled token each.
- step t in 2 .. L-1: K ``CachedRequestData`` entries, ``num_computed_tokens = P + t - 1``, one
  scheduled token each.
- the beams leave (their ids join ``finished_req_ids``) in the first engine step after R's step L-1,
  or when R finishes, is aborted or is preempted before that; step L adds no beams.
- drafted rounds (issue 13, ``ATSPEED.md``; ``BeamLayout.draft_beams`` N > 0): R holds
  K + (N - 1) * gamma rows (``admission.beam_rows``), the K beams' first, each with its own B private
  blocks (B counts gamma lookahead slots). Step 1 is a plain beam step (the rows are new: nothing drafted
  for them yet); from step 2 every row is scheduled with 1 + gamma tokens, gamma of them placeholder
  drafts in ``scheduled_spec_decode_tokens`` (V2 reads the ids from the speculator's buffer), and a
  cached row's ``num_computed_tokens`` is an upper bound (``TopKState.computed_bound``): the GPU's count,
  advanced by each round's accepted tokens, is the exact one. A round advances 1 to gamma + 1 beam steps,
  so R may finish before its step L - 1; its rows leave with it.

Worked example, no draft: P = 21, bs = 16, L = 4, K = 2, so B = cdiv(21 mod 16 + 3, 16) = 1. The
scheduler gives R the block list [a, b, c, d] (a, b: R's own, its positions 0 .. 31; c, d: private).
R's row gets [a, b]; beam 0 gets [a, c], beam 1 gets [a, d] (c and d start with a copy of b's
positions 16 .. 20, then hold the beam's positions 21 .. 23).

The parts: ``TopKState`` (one request, frozen), ``advance_states`` (the states for the next engine
step), ``rewrite_scheduler_output`` (the output the runner executes), both pure; ``TopKBeams`` carries
the states from step to step for ``patches/execute_model.py``. Beams carry R's ``sampling_params``,
``padrec_topk`` included: hooks that read it tell a beam from R by ``is_beam_req_id``.

The scheduler's object is never changed: an in-process engine shares it (and the lists and sets in it)
with the scheduler. An output with no top-K request in it is returned as it is, the same object.
A top-K request that comes back after a preemption with output already (its ``prefill_token_ids``
longer than its prompt) gets no private blocks and no beams (DESIGN.md, section 5, "Preemption"):
``TopKBeams.resumed`` names it until it leaves, and the engine ends it without an answer.

Nothing here touches a GPU: the beams' tokens, scores and KV copies belong to the sampler hook.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm_padrec.topk.admission import beam_rows, private_blocks_per_beam, topk_of, topk_verification_of

BEAM_ID_INFIX = "\x00beam"  # no request id from a client holds a NUL, so beam ids never collide with one


FIRST_ROUND_STEP = 2  # a drafted request's first drafted round: the rows' second step (``TopKState.drafts``)


def beam_req_id(req_id: str, beam: int) -> str:
    """The runner-private request id of beam ``beam`` of top-K request ``req_id``."""
    return f"{req_id}{BEAM_ID_INFIX}{beam}"


@functools.lru_cache(maxsize=4096)
def beam_req_ids(req_id: str, k: int) -> tuple[str, ...]:
    """The ids of the K beams of ``req_id`` (``beam_req_id`` of each), made once per request: every engine
    step reads them for every running top-K request."""
    return tuple(beam_req_id(req_id, j) for j in range(k))


def is_beam_req_id(req_id: str) -> bool:
    """Whether ``req_id`` names a beam row (``beam_req_id``) rather than a request of the scheduler."""
    return BEAM_ID_INFIX in req_id


def topk_of_request(sampling_params: Any) -> int | None:
    """K of a top-K request (its ``padrec_topk``), None for any other request (and for pooling ones)."""
    return topk_of(getattr(sampling_params, "extra_args", None))


@dataclass(frozen=True)
class BeamLayout:
    """What fixes the beams' blocks on one server; the scheduler's admission wrapper uses the same numbers."""

    item_length: int  # L: tokens of one item (the catalog's slots)
    block_size: int  # the KV cache manager's block size: block ids count in it
    lookahead: int = 0  # the scheduler's num_lookahead_tokens: KV slots a draft writes past the fed token
    draft_beams: int = 0  # N: the draft's beams in a drafted round (issue 13); 0: top-K runs undrafted
    gamma: int = 0  # draft tokens each row carries into a drafted round's verification

    def __post_init__(self) -> None:
        if (self.draft_beams > 0) != (self.gamma > 0):
            raise ValueError(f"drafted rounds need both draft_beams and gamma, got {self.draft_beams} and {self.gamma}")
        if self.gamma > self.lookahead:
            raise ValueError(f"gamma={self.gamma} draft tokens need as many lookahead slots, got {self.lookahead}")

    @property
    def drafted(self) -> bool:
        return self.draft_beams > 0

    def blocks_per_beam(self, prompt_len: int) -> int:
        """B, from ``topk.admission`` (the one definition, shared with the scheduler's allocation)."""
        return private_blocks_per_beam(prompt_len, self.item_length, self.block_size, self.lookahead)

    def rows(self, k: int) -> int:
        """The rows a request of K beams holds (``topk.admission.beam_rows``)."""
        return beam_rows(k, self.draft_beams, self.gamma)


@dataclass(frozen=True)
class TopKState:
    """One top-K request R in the runner, as of one engine step."""

    req_id: str
    k: int  # K: beams
    rows: int  # the runner rows R holds: K, or with drafted rounds K + (N - 1) * gamma (``BeamLayout.rows``)
    item_length: int  # L: tokens of one item, R's steps 0 .. L - 1
    prompt_token_ids: tuple[int, ...]  # R's prompt, P tokens (a copy: the scheduler's list is live)
    prompt_block_ids: tuple[int, ...]  # R's floor(P / bs) full prompt blocks, shared by every beam
    private_block_ids: tuple[int, ...]  # [rows * B] the last rows * B ids of R's block list; row j owns [j*B, (j+1)*B)
    sampling_params: Any  # R's SamplingParams, handed to the beams as they are
    # R's block holding its partial last prompt block (positions (P // bs) * bs .. P - 1): its block list's
    # entry P // bs, copied into each beam's first private block at step 0 (``kv_copy.prompt_tail_copies``);
    # None when P % bs == 0 (the prompt fills its blocks: nothing to copy)
    tail_block_id: int | None = None
    step: int = -1  # t of R's latest scheduled engine step (this one when R is scheduled); -1: prompt not done
    ended: bool = False  # R leaves the runner in this engine step (finished, aborted or preempted)
    beams_held: bool = False  # the runner holds R's beams as this engine step begins
    gamma: int = 0  # draft tokens per row in a drafted round; 0: undrafted, one token per row and step
    relaxed: bool = False  # a drafted request's rounds use relaxed sampling verification (else strict)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def blocks_per_beam(self) -> int:
        return len(self.private_block_ids) // self.rows

    @property
    def beam_req_ids(self) -> tuple[str, ...]:
        """Every row's id: the K beams' first, then a drafted round's extra rows."""
        return beam_req_ids(self.req_id, self.rows)

    @property
    def drafts(self) -> int:
        """Draft tokens each row carries in this engine step: gamma in a drafted round (steps 2 .. L - 1), else 0.
        Step 1 is a plain beam step even for a drafted request: its rows join the runner in that step, so no
        ``propose`` has drafted for them yet (ATSPEED.md, "Round 1 has no rows to draft on")."""
        return self.gamma if self.step >= FIRST_ROUND_STEP else 0

    def computed_bound(self) -> int:
        """An upper bound of each row's computed tokens as step ``step`` (>= 1) begins, what V2's host mirror
        holds (its GPU copy, advanced by each step's accepted tokens, is the real count, model_runner.py:838-860,
        1581-1587): P + t - 1 undrafted; drafted, each round from step 2 on advances at most gamma + 1 beam
        steps, and the rows have fed at most the item's L codes (the last one, at P + L - 1, in the step async
        scheduling adds after a round that completes the item early: ``admission.private_blocks_per_beam``)."""
        rounds = max(self.step - FIRST_ROUND_STEP, 0)
        return self.prompt_len + min(self.step - 1 + rounds * self.gamma, self.item_length - 1)

    def beam_block_ids(self, beam: int) -> list[int]:
        """The block table row of beam ``beam``: the shared full prompt blocks, then its private blocks."""
        B = self.blocks_per_beam
        return list(self.prompt_block_ids) + list(self.private_block_ids[beam * B : (beam + 1) * B])

    @property
    def runs_beams(self) -> bool:
        """Whether R's beams are rows of the runner after this engine step: R's steps 1 .. L - 1."""
        return not self.ended and 1 <= self.step <= self.item_length - 1

    @classmethod
    def admit(
        cls,
        new_req: Any,  # vllm.v1.core.sched.output.NewRequestData of R
        k: int,
        num_scheduled_tokens: int,  # R's tokens in this engine step
        layout: BeamLayout,
    ) -> TopKState:
        """R's state from its first ``NewRequestData``, whose block list ends with the K * B private blocks."""
        prompt = tuple(new_req.prompt_token_ids)
        P = len(prompt)
        if len(new_req.block_ids) != 1:
            raise RuntimeError(
                f"top-K request {new_req.req_id!r}: {len(new_req.block_ids)} KV cache groups; the beams' private "
                "blocks need exactly one (hybrid and sliding-window models are refused in the front end)"
            )
        (block_ids,) = new_req.block_ids
        bs = layout.block_size
        rows = layout.rows(k)
        num_private = rows * layout.blocks_per_beam(P)
        if len(block_ids) < -(-P // bs) + num_private:
            raise RuntimeError(
                f"top-K request {new_req.req_id!r}: {len(block_ids)} blocks cannot hold a prompt of {P} tokens "
                f"(block size {bs}) and {num_private} private blocks: the scheduler's admission wrapper "
                "did not reserve them"
            )
        computed = new_req.num_computed_tokens + num_scheduled_tokens
        return cls(
            req_id=new_req.req_id,
            k=k,
            rows=rows,
            item_length=layout.item_length,
            prompt_token_ids=prompt,
            prompt_block_ids=tuple(block_ids[: P // bs]),
            private_block_ids=tuple(block_ids[len(block_ids) - num_private :]),
            sampling_params=new_req.sampling_params,
            tail_block_id=block_ids[P // bs] if P % bs else None,
            step=0 if computed >= P else -1,
            gamma=layout.gamma,
            relaxed=topk_verification_of(getattr(new_req.sampling_params, "extra_args", None)) == "relaxed",
        )

    def scheduled(self, num_computed_tokens: int, num_scheduled_tokens: int) -> TopKState:
        """This state once R is scheduled again in this engine step (a later prefill chunk, or step t + 1)."""
        if self.step >= 0:
            return dataclasses.replace(self, step=self.step + 1)
        done = num_computed_tokens + num_scheduled_tokens >= self.prompt_len
        return dataclasses.replace(self, step=0 if done else -1)


def advance_states(
    out: Any,  # the scheduler's SchedulerOutput for this engine step
    states: Mapping[str, TopKState],  # as the previous engine step left them
    layout: BeamLayout,
) -> dict[str, TopKState]:
    """The top-K requests' states for this engine step (pure: neither argument is changed).

    States that ended in the previous step are dropped; R in ``finished_req_ids`` or
    ``preempted_req_ids`` is marked ended; a scheduled R moves one step on; a top-K request new to the
    runner gets a state (unless it resumes after a preemption with output already).
    """
    leaving = set(out.finished_req_ids) | set(out.preempted_req_ids or ())
    cached = out.scheduled_cached_reqs
    computed = dict(zip(cached.req_ids, cached.num_computed_tokens))
    scheduled = out.num_scheduled_tokens
    result: dict[str, TopKState] = {}
    for req_id, state in states.items():
        if state.ended:
            continue
        state = dataclasses.replace(state, beams_held=state.runs_beams)
        if req_id in leaving:
            state = dataclasses.replace(state, ended=True)
        elif req_id in computed and req_id in scheduled:
            state = state.scheduled(computed[req_id], scheduled[req_id])
        result[req_id] = state
    for new_req in out.scheduled_new_reqs:
        k = topk_of_request(new_req.sampling_params)
        if k is None or resumed_with_output(new_req):
            continue
        state = TopKState.admit(new_req, k, scheduled.get(new_req.req_id, 0), layout)
        earlier = result.get(new_req.req_id)  # R left and came back in this same step
        result[new_req.req_id] = dataclasses.replace(state, beams_held=earlier is not None and earlier.beams_held)
    return result


def resumed_with_output(new_req: Any) -> bool:
    """Whether a request new to the runner comes back from a preemption with output already (V2 re-adds a
    preempted request with its outputs in ``prefill_token_ids``)."""
    return len(new_req.prefill_token_ids or ()) > len(new_req.prompt_token_ids or ())


def rewrite_scheduler_output(out: Any, states: Mapping[str, TopKState]) -> Any:
    """The SchedulerOutput the runner executes: ``out`` with R's private blocks hidden and R's beams in it.

    ``states`` are this engine step's (``advance_states``). Pure: ``out`` and everything in it stay as
    they are (the result holds new lists, sets and dicts where it differs). Returns ``out`` itself
    when there is nothing to change.
    """
    from vllm.v1.core.sched.output import NewRequestData

    new_reqs = []
    hidden = False
    for new_req in out.scheduled_new_reqs:
        state = states.get(new_req.req_id)
        if state is not None and not state.ended and len(state.private_block_ids):
            (block_ids,) = new_req.block_ids
            own = list(block_ids[: len(block_ids) - len(state.private_block_ids)])
            new_req = dataclasses.replace(new_req, block_ids=(own,))
            hidden = True
        new_reqs.append(new_req)

    leaving: list[str] = []  # beams removed in this step
    cached_beams: list[tuple[TopKState, str, int]] = []  # (R, beam id, beam)
    for state in states.values():
        if state.beams_held and not state.runs_beams:
            leaving.extend(state.beam_req_ids)
        if state.ended or state.req_id not in out.num_scheduled_tokens or not state.runs_beams:
            continue
        if state.step == 1:  # the beams' first step: new to the runner
            for j, beam_id in enumerate(state.beam_req_ids):
                new_reqs.append(
                    NewRequestData(
                        req_id=beam_id,
                        prompt_token_ids=list(state.prompt_token_ids),
                        mm_features=[],
                        sampling_params=state.sampling_params,
                        pooling_params=None,
                        block_ids=(state.beam_block_ids(j),),
                        num_computed_tokens=state.prompt_len,
                        lora_request=None,
                        prefill_token_ids=list(state.prompt_token_ids),
                    )
                )
        else:
            cached_beams.extend((state, beam_id, j) for j, beam_id in enumerate(state.beam_req_ids))

    added = [r.req_id for r in new_reqs[len(out.scheduled_new_reqs) :]] + [b for _, b, _ in cached_beams]
    if not (hidden or leaving or added):
        return out

    cached = out.scheduled_cached_reqs
    if cached_beams:
        cached = dataclasses.replace(
            cached,
            req_ids=cached.req_ids + [beam_id for _, beam_id, _ in cached_beams],
            # pipeline parallelism only (refused for top-K): one empty list per request when it is in use
            new_token_ids=cached.new_token_ids + [[] for _ in cached_beams] if cached.new_token_ids else [],
            new_block_ids=cached.new_block_ids + [None for _ in cached_beams],
            num_computed_tokens=cached.num_computed_tokens + [state.computed_bound() for state, _, _ in cached_beams],
            num_output_tokens=cached.num_output_tokens
            + [state.computed_bound() - state.prompt_len + 1 for state, _, _ in cached_beams],
        )
    # each row feeds its last token, and in a drafted round its gamma draft tokens: V2 reads only their count
    # here, the ids from the speculator's buffer (ATSPEED.md, section 4, "The scheduler never sees the counts")
    gamma_of = {b: state.drafts for state in states.values() for b in state.beam_req_ids}
    num_scheduled_tokens = dict(out.num_scheduled_tokens)
    num_scheduled_tokens.update({b: 1 + gamma_of[b] for b in added})
    spec_tokens = dict(out.scheduled_spec_decode_tokens)
    spec_tokens.update({b: [-1] * gamma_of[b] for b in added if gamma_of[b]})
    return dataclasses.replace(
        out,
        scheduled_new_reqs=new_reqs,
        scheduled_cached_reqs=cached,
        num_scheduled_tokens=num_scheduled_tokens,
        total_num_scheduled_tokens=out.total_num_scheduled_tokens + sum(1 + gamma_of[b] for b in added),
        scheduled_spec_decode_tokens=spec_tokens,
        finished_req_ids=set(out.finished_req_ids) | set(leaving),
    )


class TopKBeams:
    """The top-K requests of one runner, carried from engine step to engine step."""

    def __init__(self, layout: BeamLayout) -> None:
        self.layout = layout
        self.states: dict[str, TopKState] = {}
        # top-K requests back from a preemption with output already: no beams; the engine ends each at its
        # next sampled row with </s> and no answer (topk.request.TopKPreempted), and the front end resubmits
        self.resumed: set[str] = set()

    def rewrite(self, out: Any) -> Any:
        """This engine step's SchedulerOutput as the runner should execute it (``out`` itself when unchanged)."""
        new_topk = [r for r in out.scheduled_new_reqs if topk_of_request(r.sampling_params) is not None]
        if not self.states and not self.resumed and not new_topk:
            return out  # the common case: no top-K request in the runner
        leaving = set(out.finished_req_ids) | set(out.preempted_req_ids or ())
        self.resumed = (self.resumed - leaving) | {r.req_id for r in new_topk if resumed_with_output(r)}
        self.states = advance_states(out, self.states, self.layout)
        return rewrite_scheduler_output(out, self.states)
