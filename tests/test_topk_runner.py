"""The runner's view of top-K requests (topk/beams.py, patches/execute_model.py): DESIGN.md test plan 7.4.

Each test drives the rewrite through a request's life with vLLM's real ``SchedulerOutput``,
``NewRequestData`` and ``CachedRequestData``, built as the scheduler builds them
(scheduler.py:1088-1160, :1329-1386), and checks what the runner would execute: the beams' rows and
block tables, their computed and scheduled tokens, their removal, and that the scheduler's own object
is left exactly as it was.
"""

from __future__ import annotations

import copy
import dataclasses
from types import ModuleType, SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput

from vllm_padrec.integration.patches import execute_model as execute_model_patch
from vllm_padrec.topk.beams import (
    BeamLayout,
    TopKBeams,
    advance_states,
    beam_req_id,
    is_beam_req_id,
    rewrite_scheduler_output,
)

BS = 16  # block size
L = 4  # tokens per item
LAYOUT = BeamLayout(item_length=L, block_size=BS)  # no draft: B = cdiv(P mod 16 + 3, 16)


def topk_params(k: int) -> SamplingParams:
    return SamplingParams(max_tokens=L + 1, extra_args={"padrec_topk": k})


def new_request(req_id: str, prompt: list[int], block_ids: list[int], params, computed: int = 0, outputs=()):
    """R's NewRequestData as the V2 scheduler sends it (prefill_token_ids = all its tokens so far)."""
    return NewRequestData(
        req_id=req_id,
        prompt_token_ids=list(prompt),
        mm_features=[],
        sampling_params=params,
        pooling_params=None,
        block_ids=(list(block_ids),),
        num_computed_tokens=computed,
        lora_request=None,
        prefill_token_ids=list(prompt) + list(outputs),
    )


def step_output(new=(), cached=(), finished=(), preempted=None) -> SchedulerOutput:
    """One engine step: ``new`` = [(NewRequestData, tokens)], ``cached`` = [(req_id, num_computed, tokens)]."""
    scheduled = {r.req_id: n for r, n in new} | {req_id: n for req_id, _, n in cached}
    cached_data = CachedRequestData(
        req_ids=[req_id for req_id, _, _ in cached],
        resumed_req_ids=set(),
        new_token_ids=[],
        all_token_ids={},
        new_block_ids=[None for _ in cached],
        num_computed_tokens=[c for _, c, _ in cached],
        num_output_tokens=[max(c - 1, 0) for _, c, _ in cached],
    )
    return SchedulerOutput(
        scheduled_new_reqs=[r for r, _ in new],
        scheduled_cached_reqs=cached_data,
        num_scheduled_tokens=scheduled,
        total_num_scheduled_tokens=sum(scheduled.values()),
        scheduled_spec_decode_tokens={},
        scheduled_encoder_inputs={},
        num_common_prefix_blocks=[0],
        finished_req_ids=set(finished),
        free_encoder_mm_hashes=[],
        preempted_req_ids=set(preempted) if preempted is not None else None,
    )


def run(beams: TopKBeams, out: SchedulerOutput) -> SchedulerOutput:
    """The rewrite of one step, checking that the scheduler's object comes out of it exactly as it went in."""
    before = copy.deepcopy(out)
    seen = beams.rewrite(out)
    assert out == before, "the rewrite changed the scheduler's SchedulerOutput"
    assert seen.total_num_scheduled_tokens == sum(seen.num_scheduled_tokens.values())
    return seen


def beams_of(req_id: str, k: int) -> list[str]:
    return [beam_req_id(req_id, j) for j in range(k)]


def cached_entries(seen: SchedulerOutput) -> dict[str, tuple[int, int, object]]:
    """req_id -> (num_computed_tokens, num_output_tokens, new_block_ids) of the runner's cached requests."""
    c = seen.scheduled_cached_reqs
    assert len(c.req_ids) == len(c.num_computed_tokens) == len(c.num_output_tokens) == len(c.new_block_ids)
    return {r: (n, o, b) for r, n, o, b in zip(c.req_ids, c.num_computed_tokens, c.num_output_tokens, c.new_block_ids)}


def test_beam_block_tables_make_room_for_a_drafts_lookahead():
    """With a draft writing 3 slots past the fed token, P = 29 needs cdiv(13 + 3 + 3, 16) = 2 blocks per beam
    (1 without): the split must use the scheduler's B, or beams would own each other's blocks."""
    layout = BeamLayout(item_length=L, block_size=BS, lookahead=3)
    assert (LAYOUT.blocks_per_beam(29), layout.blocks_per_beam(29)) == (1, 2)
    beams = TopKBeams(layout)
    seen = run(beams, step_output(new=[(new_request("R", [9] * 29, [1, 2, 3, 7, 8, 9, 10], topk_params(2)), 29)]))
    assert seen.scheduled_new_reqs[0].block_ids == ([1, 2, 3],)
    seen = run(beams, step_output(cached=[("R", 29, 1)]))
    assert [n.block_ids for n in seen.scheduled_new_reqs] == [([1, 7, 8],), ([1, 9, 10],)]


@pytest.mark.parametrize(("P", "tail"), [(21, 11), (37, 12), (16, None), (32, None)])
def test_state_names_the_prompts_partial_last_block_for_the_tail_copy(P, tail):
    """Entry P // bs of R's block list holds prompt positions (P // bs) * bs .. P - 1; a full last block: none."""
    beams = TopKBeams(LAYOUT)
    own = [10, 11, 12, 13]  # cdiv(P + L, BS) <= 4 life blocks, then K * B = 2 private ones
    run(beams, step_output(new=[(new_request("R", [5] * P, own + [20, 21], topk_params(2)), P)]))
    assert beams.states["R"].tail_block_id == tail


def test_beam_ids_never_name_a_client_request():
    assert beam_req_id("R", 3) == "R\x00beam3"
    assert is_beam_req_id(beam_req_id("R", 0)) and not is_beam_req_id("R-beam0")


def test_one_topk_request_over_its_life_with_an_ordinary_request():
    K, P = 3, 21  # B = 1
    prompt = list(range(100, 100 + P))
    params = topk_params(K)
    life, private = [10, 11], [20, 21, 22]  # cdiv(P + L, BS) life blocks, then K * B private ones
    beams = TopKBeams(LAYOUT)

    # step 0: R's whole prompt next to an ordinary request's prompt
    ordinary = new_request("o", [7] * 5, [30], SamplingParams(max_tokens=8))
    r = new_request("R", prompt, life + private, params)
    seen = run(beams, step_output(new=[(r, P), (ordinary, 5)]))
    assert [n.req_id for n in seen.scheduled_new_reqs] == ["R", "o"]
    assert seen.scheduled_new_reqs[0].block_ids == (life,)  # the private blocks are hidden from R's row
    assert seen.scheduled_new_reqs[1] is ordinary
    assert seen.num_scheduled_tokens == {"R": P, "o": 5} and seen.total_num_scheduled_tokens == P + 5

    # step 1: the beams arrive as decode requests over R's full prompt blocks + their own
    seen = run(beams, step_output(cached=[("R", P, 1), ("o", 5, 1)]))
    new = {n.req_id: n for n in seen.scheduled_new_reqs}
    assert list(new) == beams_of("R", K)
    for j, beam_id in enumerate(beams_of("R", K)):
        beam = new[beam_id]
        assert beam.block_ids == ([10, private[j]],)  # floor(21 / 16) = 1 full prompt block
        assert beam.num_computed_tokens == P
        assert beam.prompt_token_ids == prompt and beam.prefill_token_ids == prompt
        assert beam.sampling_params is params
        assert beam.pooling_params is None and beam.lora_request is None and beam.mm_features == []
    assert seen.num_scheduled_tokens == {"R": 1, "o": 1} | dict.fromkeys(beams_of("R", K), 1)
    assert seen.total_num_scheduled_tokens == 2 + K
    assert seen.finished_req_ids == set()

    # steps 2 .. L-1: cached entries one position further each step
    for t in range(2, L):
        seen = run(beams, step_output(cached=[("R", P + t - 1, 1), ("o", 5 + t - 1, 1)]))
        assert seen.scheduled_new_reqs == []
        entries = cached_entries(seen)
        assert list(entries) == ["R", "o"] + beams_of("R", K)
        assert all(entries[b] == (P + t - 1, t, None) for b in beams_of("R", K))
        assert seen.num_scheduled_tokens == {"R": 1, "o": 1} | dict.fromkeys(beams_of("R", K), 1)
        assert seen.total_num_scheduled_tokens == 2 + K
        assert seen.finished_req_ids == set()

    # step L: the extra step async scheduling ran for R before seeing it finish: the beams leave, none is added
    seen = run(beams, step_output(cached=[("R", P + L - 1, 1), ("o", 5 + L - 1, 1)]))
    assert seen.finished_req_ids == set(beams_of("R", K))
    assert seen.num_scheduled_tokens == {"R": 1, "o": 1} and seen.total_num_scheduled_tokens == 2
    assert list(cached_entries(seen)) == ["R", "o"]

    # R finishes: nothing is left to remove, and the scheduler's object goes through as it is
    out = step_output(cached=[("o", 5 + L, 1)], finished={"R"})
    assert run(beams, out) is out
    assert beams.states == {"R": beams.states["R"]} and beams.states["R"].ended
    out = step_output(cached=[("o", 6 + L, 1)])
    assert run(beams, out) is out and beams.states == {}


DRAFTED = BeamLayout(item_length=L, block_size=BS, lookahead=3, draft_beams=3, gamma=3)  # K + 2 * 3 rows


def with_drafts(out: SchedulerOutput, drafts: dict[str, int]) -> SchedulerOutput:
    """``out`` with the scheduler's placeholder drafts for ordinary requests (async scheduling's -1s)."""
    scheduled = out.num_scheduled_tokens | {r: out.num_scheduled_tokens[r] + n for r, n in drafts.items()}
    return dataclasses.replace(
        out,
        num_scheduled_tokens=scheduled,
        total_num_scheduled_tokens=sum(scheduled.values()),
        scheduled_spec_decode_tokens={r: [-1] * n for r, n in drafts.items()},
    )


def test_drafted_rounds_run_every_row_with_its_draft_tokens_until_r_ends():
    """With drafted rounds (issue 13) R's rows are its K beams and the draft's extra rows. They join at R's step 1,
    a plain beam step; from step 2 each is scheduled with gamma placeholder drafts (V2 reads only their count)
    and an upper bound of its computed tokens, until R leaves, which a round that completes the item brings
    before step L - 1."""
    K, P, gamma = 2, 21, 3
    rows = DRAFTED.rows(K)
    assert rows == 8 and DRAFTED.blocks_per_beam(P) == 1  # cdiv(5 + 3 + 3 + 1, 16)
    life, private = [10, 11], list(range(20, 20 + rows))
    beams = TopKBeams(DRAFTED)
    ordinary = new_request("o", [7] * 5, [30], SamplingParams(max_tokens=8))
    r = new_request("R", [3] * P, life + private, topk_params(K))
    seen = run(beams, step_output(new=[(r, P), (ordinary, 5)]))
    assert seen.scheduled_new_reqs[0].block_ids == (life,) and seen.scheduled_spec_decode_tokens == {}

    # R's step 1: every row new, over R's full prompt block and its own private block; a plain beam step
    seen = run(beams, with_drafts(step_output(cached=[("R", P, 1), ("o", 5, 1)]), {"R": gamma, "o": gamma}))
    ids = beams_of("R", rows)
    assert [n.req_id for n in seen.scheduled_new_reqs] == ids
    assert [n.block_ids for n in seen.scheduled_new_reqs] == [([10, b],) for b in private]
    assert all(n.num_computed_tokens == P for n in seen.scheduled_new_reqs)
    assert seen.num_scheduled_tokens == {"R": 1 + gamma, "o": 1 + gamma} | dict.fromkeys(ids, 1)
    assert seen.scheduled_spec_decode_tokens == dict.fromkeys(["R", "o"], [-1] * gamma)

    # step 2, the first round: cached rows with their drafts, at P + 1 computed tokens
    seen = run(beams, with_drafts(step_output(cached=[("R", P + 1, 1), ("o", 6, 1)]), {"R": gamma, "o": gamma}))
    entries = cached_entries(seen)
    assert [entries[i][:2] for i in ids] == [(P + 1, 2)] * rows
    assert seen.num_scheduled_tokens == {"R": 1 + gamma, "o": 1 + gamma} | dict.fromkeys(ids, 1 + gamma)
    assert seen.scheduled_spec_decode_tokens == dict.fromkeys(["R", "o", *ids], [-1] * gamma)

    # step 3, the second round: the host's count is an upper bound, P + min(2 + gamma, L - 1) (the GPU's is exact;
    # the rows may have fed the item's last code already, when the first round completed it)
    seen = run(beams, with_drafts(step_output(cached=[("R", P + 2, 1), ("o", 7, 1)]), {"R": gamma, "o": gamma}))
    entries = cached_entries(seen)
    assert [entries[i][:2] for i in ids] == [(P + L - 1, L)] * rows

    # that round completed the item: R's row sampled </s>, and every row leaves with R
    seen = run(beams, with_drafts(step_output(cached=[("o", 8, 1)], finished={"R"}), {"o": gamma}))
    assert seen.finished_req_ids == {"R"} | set(ids)
    assert seen.num_scheduled_tokens == {"o": 1 + gamma} and seen.scheduled_spec_decode_tokens == {"o": [-1] * 3}


def test_drafted_rounds_at_one_token_a_round_stop_at_the_items_last_step():
    """A round advances at least one beam step: rows run R's steps 1 .. L - 1 at most, as undrafted beams do,
    their host count capped at P + L - 1: a row may feed the item's last code (at that position) in the step
    async scheduling adds after a round that completed the item early."""
    K, P = 1, 16
    layout = dataclasses.replace(DRAFTED, draft_beams=2)  # K + 1 * 3 = 4 rows
    beams = TopKBeams(layout)
    rows = layout.rows(K)
    run(beams, step_output(new=[(new_request("R", [3] * P, [1, 2] + list(range(20, 20 + rows)), topk_params(K)), P)]))
    bounds = []
    for t in range(1, L + 1):
        seen = run(beams, step_output(cached=[("R", P + t - 1, 1)]))
        entries = cached_entries(seen)
        bounds.append({entries[i][0] for i in beams_of("R", rows) if i in entries})
    assert bounds == [set(), {P + 1}, {P + L - 1}, set()]  # step 1 adds them new; step L: they left
    assert seen.finished_req_ids == set(beams_of("R", rows))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"draft_beams": 3}, "both draft_beams and gamma"),
        ({"gamma": 2}, "both"),
        ({"draft_beams": 2, "gamma": 4}, "lookahead"),
    ],
)
def test_a_drafted_layout_refuses_what_its_rows_cannot_hold(fields, says):
    with pytest.raises(ValueError, match=says):
        BeamLayout(item_length=L, block_size=BS, lookahead=3, **fields)


def test_beams_leave_with_r_when_it_finishes_after_its_last_step():
    K, P = 2, 16  # P mod bs = 0: B = cdiv(3, 16) = 1, and R has one full prompt block
    beams = TopKBeams(LAYOUT)
    run(beams, step_output(new=[(new_request("R", [5] * P, [1, 2, 8, 9], topk_params(K)), P)]))
    seen = run(beams, step_output(cached=[("R", P, 1)]))
    assert [n.block_ids for n in seen.scheduled_new_reqs] == [([1, 8],), ([1, 9],)]
    for t in range(2, L):
        run(beams, step_output(cached=[("R", P + t - 1, 1)]))
    # no extra step: R's finish and the beams' removal come together, in an output with nothing scheduled
    seen = run(beams, step_output(finished={"R"}))
    assert seen.finished_req_ids == {"R"} | set(beams_of("R", K))
    assert seen.total_num_scheduled_tokens == 0 and seen.num_scheduled_tokens == {}


def test_two_topk_requests_of_different_k_staggered_with_chunked_prefill():
    """R1 (K=2, P=21, one chunk) and R2 (K=3, P=40 in chunks of 24 + 16, starting a step later), with an
    ordinary request throughout: every step's beams, block tables, computed and scheduled tokens."""
    beams = TopKBeams(LAYOUT)
    p1, p2 = [11] * 21, [22] * 40
    b1 = [100, 101] + [110, 111]  # B1 = cdiv(5 + 3, 16) = 1
    b2 = [200, 201, 202] + [210, 211, 212]  # B2 = cdiv(8 + 3, 16) = 1
    ordinary = new_request("o", [3] * 4, [300], SamplingParams(max_tokens=20))

    # engine step 0: R1 step 0, R2's first chunk (its step -1), o's prefill
    r1 = new_request("R1", p1, b1, topk_params(2))
    r2 = new_request("R2", p2, b2, topk_params(3))
    seen = run(beams, step_output(new=[(r1, 21), (r2, 24), (ordinary, 4)]))
    assert [n.block_ids for n in seen.scheduled_new_reqs] == [([100, 101],), ([200, 201, 202],), ([300],)]
    assert seen.total_num_scheduled_tokens == 21 + 24 + 4

    # engine step 1: R1 step 1 (its beams arrive), R2's last chunk (step 0)
    seen = run(beams, step_output(cached=[("R1", 21, 1), ("R2", 24, 16), ("o", 4, 1)]))
    assert {n.req_id: n.block_ids for n in seen.scheduled_new_reqs} == {
        beam_req_id("R1", 0): ([100, 110],),
        beam_req_id("R1", 1): ([100, 111],),
    }
    assert seen.total_num_scheduled_tokens == 1 + 16 + 1 + 2

    # engine step 2: R1 step 2 (cached beams at P + 1), R2 step 1 (its beams arrive over 2 full prompt blocks)
    seen = run(beams, step_output(cached=[("R1", 22, 1), ("R2", 40, 1), ("o", 5, 1)]))
    assert {n.req_id: n.block_ids for n in seen.scheduled_new_reqs} == {
        beam_req_id("R2", j): ([200, 201, 210 + j],) for j in range(3)
    }
    assert all(n.num_computed_tokens == 40 for n in seen.scheduled_new_reqs)
    entries = cached_entries(seen)
    assert {b: entries[b] for b in beams_of("R1", 2)} == dict.fromkeys(beams_of("R1", 2), (22, 2, None))
    assert seen.total_num_scheduled_tokens == 3 + 2 + 3

    # engine step 3: R1 step 3 = L-1, R2 step 2
    seen = run(beams, step_output(cached=[("R1", 23, 1), ("R2", 41, 1), ("o", 6, 1)]))
    entries = cached_entries(seen)
    assert [entries[b] for b in beams_of("R1", 2)] == [(23, 3, None)] * 2
    assert [entries[b] for b in beams_of("R2", 3)] == [(41, 2, None)] * 3
    assert seen.total_num_scheduled_tokens == 3 + 2 + 3 and seen.finished_req_ids == set()

    # engine step 4: R1 has finished (its beams leave), R2 step 3 = L-1
    seen = run(beams, step_output(cached=[("R2", 42, 1), ("o", 7, 1)], finished={"R1"}))
    assert seen.finished_req_ids == {"R1"} | set(beams_of("R1", 2))
    assert list(cached_entries(seen)) == ["R2", "o"] + beams_of("R2", 3)
    assert seen.total_num_scheduled_tokens == 2 + 3

    # engine step 5: R2's extra async step: its beams leave
    seen = run(beams, step_output(cached=[("R2", 43, 1), ("o", 8, 1)]))
    assert seen.finished_req_ids == set(beams_of("R2", 3)) and seen.total_num_scheduled_tokens == 2


@pytest.mark.parametrize("how", ["preempted", "aborted"])
def test_beams_leave_when_r_leaves_mid_life(how):
    K, P = 3, 21
    beams = TopKBeams(LAYOUT)
    run(beams, step_output(new=[(new_request("R", [9] * P, [1, 2, 5, 6, 7], topk_params(K)), P)]))
    run(beams, step_output(cached=[("R", P, 1)]))  # step 1: the beams arrive
    run(beams, step_output(cached=[("R", P + 1, 1)]))  # step 2
    other = new_request("o", [4] * 3, [40], SamplingParams(max_tokens=4))
    gone = {"preempted": {"preempted": {"R"}}, "aborted": {"finished": {"R"}}}[how]
    seen = run(beams, step_output(new=[(other, 3)], **gone))
    assert set(beams_of("R", K)) <= seen.finished_req_ids
    assert seen.num_scheduled_tokens == {"o": 3} and seen.scheduled_cached_reqs.req_ids == []
    out = step_output(cached=[("o", 3, 1)])
    assert run(beams, out) is out and beams.states == {}  # removed once, forgotten after


def test_preempted_r_resumed_in_the_same_step_loses_its_beams_and_gets_none():
    """A preempted R comes back with its output in prefill_token_ids: no private blocks, no beams (phase 1)."""
    K, P = 2, 21
    beams = TopKBeams(LAYOUT)
    run(beams, step_output(new=[(new_request("R", [9] * P, [1, 2, 5, 6], topk_params(K)), P)]))
    run(beams, step_output(cached=[("R", P, 1)]))  # step 1: the beams arrive
    resumed = new_request("R", [9] * P, [3, 4], topk_params(K), outputs=[0, 0])  # recomputed from scratch
    seen = run(beams, step_output(new=[(resumed, P + 2)], preempted={"R"}))
    assert seen.finished_req_ids == set(beams_of("R", K))
    assert seen.scheduled_new_reqs == [resumed]  # R's own blocks, none hidden
    assert seen.num_scheduled_tokens == {"R": P + 2}
    out = step_output(cached=[("R", P + 2, 1)])
    assert run(beams, out) is out and beams.states == {}  # and no beams ever again


def test_r_readmitted_fresh_in_the_step_it_left_still_loses_its_beams():
    """Defensive: were R preempted with beams and admitted again before any output of it reached the scheduler,
    its old beams must still leave (else their slots would leak), and the new R starts from step 0."""
    K, P = 2, 21
    beams = TopKBeams(LAYOUT)
    run(beams, step_output(new=[(new_request("R", [9] * P, [1, 2, 5, 6], topk_params(K)), P)]))
    run(beams, step_output(cached=[("R", P, 1)]))  # step 1: the beams arrive
    again = new_request("R", [9] * P, [3, 4, 7, 8], topk_params(K))
    seen = run(beams, step_output(new=[(again, P)], preempted={"R"}))
    assert seen.finished_req_ids == set(beams_of("R", K))
    assert seen.scheduled_new_reqs[0].block_ids == ([3, 4],)
    seen = run(beams, step_output(cached=[("R", P, 1)]))
    assert [n.block_ids for n in seen.scheduled_new_reqs] == [([3, 7],), ([3, 8],)]


def test_beams_wait_for_the_last_prefill_chunk():
    K, P = 2, 40  # prefilled in chunks of 16, 16 and 8
    beams = TopKBeams(LAYOUT)
    out = step_output(new=[(new_request("R", [9] * P, [1, 2, 3, 5, 6], topk_params(K)), 16)])
    assert run(beams, out).scheduled_new_reqs[0].block_ids == ([1, 2, 3],)
    for chunk in (step_output(cached=[("R", 16, 16)]), step_output(cached=[("R", 32, 8)])):  # step -1, then step 0
        assert run(beams, chunk) is chunk
    seen = run(beams, step_output(cached=[("R", P, 1)]))  # step 1
    assert [n.block_ids for n in seen.scheduled_new_reqs] == [([1, 2, 5],), ([1, 2, 6],)]


def test_r_leaving_before_its_first_beam_step_removes_nothing():
    beams = TopKBeams(LAYOUT)
    run(beams, step_output(new=[(new_request("R", [9] * 40, [1, 2, 3, 5, 6], topk_params(2)), 24)]))  # chunk 1
    out = step_output(finished={"R"})
    assert run(beams, out) is out


def test_outputs_without_a_topk_request_pass_through_as_the_same_object():
    beams = TopKBeams(LAYOUT)
    ordinary = new_request("o", [1, 2, 3], [7], SamplingParams(max_tokens=3, extra_args={"padrec_num_items": 2}))
    for out in (
        step_output(new=[(ordinary, 3)]),
        step_output(cached=[("o", 3, 1)]),
        step_output(finished={"o"}),
        SchedulerOutput.make_empty(),
    ):
        assert run(beams, out) is out
    assert beams.states == {}
    assert rewrite_scheduler_output(out, {}) is out


def test_the_rewrite_itself_is_pure_in_its_states():
    out = step_output(new=[(new_request("R", [9] * 21, [1, 2, 5, 6], topk_params(2)), 21)])
    states = advance_states(out, {}, LAYOUT)
    frozen = dict(states)
    first, second = rewrite_scheduler_output(out, states), rewrite_scheduler_output(out, states)
    assert states == frozen and first == second and first is not out
    assert states["R"].private_block_ids == (5, 6) and states["R"].prompt_block_ids == (1,)


def test_a_topk_request_without_its_private_blocks_is_refused_loudly():
    beams = TopKBeams(LAYOUT)
    out = step_output(new=[(new_request("R", [9] * 21, [1, 2], topk_params(3)), 21)])
    with pytest.raises(RuntimeError, match="did not reserve"):
        beams.rewrite(out)


# --- the patch -------------------------------------------------------------------------------------------


class RecordingRunner:
    """GPUModelRunner's execute_model signature over a recorder of what the runner would execute."""

    def __init__(self, lists, num_groups: int = 1, speculative_config=None, additional_config=None):
        self.vllm_config = SimpleNamespace(
            speculative_config=speculative_config, num_speculative_tokens=3, additional_config=additional_config or {}
        )
        self.model_state = SimpleNamespace(padrec_lists=lists)
        spec = SimpleNamespace(kv_cache_spec=SimpleNamespace(block_size=BS))
        self.kv_cache_config = SimpleNamespace(kv_cache_groups=[spec] * num_groups)
        self.executed = []

    def execute_model(
        self,
        scheduler_output,
        intermediate_tensors=None,
        dummy_run=False,
        skip_attn_for_dummy_run=False,
        is_profile=False,
    ):
        self.executed.append((scheduler_output, intermediate_tensors, dummy_run, skip_attn_for_dummy_run, is_profile))
        return "output"


def patched_runner_module() -> ModuleType:
    module = ModuleType("fake_model_runner")

    class GPUModelRunner(RecordingRunner):
        pass

    module.GPUModelRunner = GPUModelRunner
    execute_model_patch.apply(module)
    execute_model_patch.apply(module)
    return module


def catalog_lists(num_slots: int = L):
    return SimpleNamespace(tables=SimpleNamespace(num_slots=num_slots))


def test_patch_wraps_execute_model_once_and_rewrites_real_steps():
    module = patched_runner_module()
    wrapper = module.GPUModelRunner.execute_model
    assert wrapper._padrec_patch and wrapper.__wrapped__ is RecordingRunner.execute_model
    runner = module.GPUModelRunner(catalog_lists())
    step0 = step_output(new=[(new_request("R", [9] * 21, [1, 2, 5, 6], topk_params(2)), 21)])
    assert runner.execute_model(step0, "tensors") == "output"
    seen, tensors, dummy, skip_attn, profile = runner.executed[-1]
    assert seen is not step0 and seen.scheduled_new_reqs[0].block_ids == ([1, 2],)
    assert (tensors, dummy, skip_attn, profile) == ("tensors", False, False, False)
    runner.execute_model(step_output(cached=[("R", 21, 1)]))
    assert [n.req_id for n in runner.executed[-1][0].scheduled_new_reqs] == beams_of("R", 2)
    # a dummy run (profiling, DP padding) goes through untouched, with its arguments
    dummy_out = step_output(cached=[("R", 22, 1)])
    runner.execute_model(dummy_out, None, dummy_run=True, skip_attn_for_dummy_run=True, is_profile=True)
    assert runner.executed[-1] == (dummy_out, None, True, True, True) and runner.executed[-1][0] is dummy_out


@pytest.mark.parametrize("lists, num_groups", [(None, 1), (catalog_lists(), 2)])
def test_patch_passes_the_same_object_where_no_topk_request_can_be(lists, num_groups):
    runner = patched_runner_module().GPUModelRunner(lists, num_groups)
    out = step_output(new=[(new_request("R", [9] * 21, [1, 2, 5, 6], topk_params(2)), 21)])
    runner.execute_model(out)
    assert runner.executed[-1][0] is out


def test_patch_passes_the_same_object_without_a_topk_request():
    runner = patched_runner_module().GPUModelRunner(catalog_lists())
    out = step_output(new=[(new_request("o", [1, 2], [3], SamplingParams(max_tokens=2)), 2)])
    runner.execute_model(out)
    assert runner.executed[-1][0] is out


def speculative(method: str):
    """A SpeculativeConfig's method checks (config/speculative.py:1324-1345) for one method."""
    return SimpleNamespace(
        use_eagle=lambda: method == "eagle",
        uses_draft_model=lambda: method == "draft_model",
        use_dflash=lambda: method == "dflash",
        use_dspark=lambda: method == "dspark",
    )


@pytest.mark.parametrize(
    "method, lookahead", [(None, 0), ("eagle", 3), ("draft_model", 3), ("dflash", 4), ("ngram", 0)]
)
def test_patch_sizes_the_beams_with_the_schedulers_lookahead(method, lookahead):
    spec = speculative(method) if method is not None else None
    runner = patched_runner_module().GPUModelRunner(catalog_lists(), speculative_config=spec)
    assert execute_model_patch.topk_beams(runner).layout == BeamLayout(L, BS, lookahead)


def test_patch_lays_out_drafted_rounds_on_a_server_that_drafts_its_top_k_beams():
    """padrec.topk_draft_beams with an EAGLE draft of gamma 3: the beams' layout carries N and gamma
    (integration/topk_drafting.py), the lookahead the scheduler's."""
    spec = speculative("eagle")
    spec.method, spec.num_speculative_tokens, spec.num_speculative_tokens_per_batch_size = "eagle", 3, None
    padrec = {"topk_max_beams": 8, "max_topk": 8, "topk_draft_beams": 1}
    runner = patched_runner_module().GPUModelRunner(
        catalog_lists(), speculative_config=spec, additional_config={"padrec": padrec}
    )
    layout = execute_model_patch.topk_beams(runner).layout
    assert layout == BeamLayout(L, BS, lookahead=3, draft_beams=1, gamma=3) and layout.rows(8) == 8


def test_patch_applies_to_vllms_runner_class(monkeypatch):
    from vllm.v1.worker.gpu import model_runner

    # vLLM's own method (the plugin, loaded by another test, may have patched the class already)
    original = getattr(
        model_runner.GPUModelRunner.execute_model, "__wrapped__", model_runner.GPUModelRunner.execute_model
    )
    monkeypatch.setattr(model_runner.GPUModelRunner, "execute_model", original)  # restored after the test
    execute_model_patch.apply(model_runner)
    execute_model_patch.apply(model_runner)
    assert model_runner.GPUModelRunner.execute_model.__wrapped__ is original
    assert execute_model_patch.TARGETS == ("vllm.v1.worker.gpu.model_runner",)


def test_patch_attaches_the_runners_beams_and_kv_caches_to_the_model_states_engine():
    from vllm_padrec.topk.engine import TopKEngine

    runner = patched_runner_module().GPUModelRunner(catalog_lists())
    engine = runner.model_state.padrec_topk_engine = TopKEngine("cpu")  # patches/init_model_state.py, top-K on
    runner.kv_caches = [torch.zeros(77, 2, 4), torch.zeros(77, 3)]  # initialize_kv_cache: one tensor per layer
    runner.kv_cache_config.num_blocks = 77
    runner.execute_model(step_output(new=[(new_request("o", [1, 2], [3], SamplingParams(max_tokens=2)), 2)]))
    beams = execute_model_patch.topk_beams(runner)
    assert engine.beams is beams
    # each layer's storage as 77 byte pages (kv_copy.block_pages), views of the runner's own tensors
    pages = engine.copy_blocks.pages
    assert [tuple(p.shape) for p in pages] == [(77, 2 * 4 * 4), (77, 3 * 4)]
    assert [p.untyped_storage().data_ptr() for p in pages] == [t.untyped_storage().data_ptr() for t in runner.kv_caches]
    runner.execute_model(step_output(cached=[("o", 2, 1)]))  # attached once: the same objects stay
    assert execute_model_patch.topk_beams(runner) is beams and engine.beams is beams


def test_patch_attaches_nothing_to_a_runner_without_an_engine():
    runner = patched_runner_module().GPUModelRunner(catalog_lists())  # top-K off: no padrec_topk_engine, no kv_caches
    runner.execute_model(step_output(new=[(new_request("o", [1, 2], [3], SamplingParams(max_tokens=2)), 2)]))
    assert execute_model_patch.topk_beams(runner) is not None


def test_top_k_rows_are_read_without_padrec_topk_and_the_schedulers_request_keeps_it(monkeypatch):
    """The lists see a top-K request R as a one-item list: read without padrec_topk, the scheduler's object keeps
    it. R's beams get R's row by a device copy (add_copy): nothing is parsed for them, and a beam whose R was
    refused is refused too."""
    from vllm_fakes import request_lists

    from vllm_padrec.data import SyntheticConfig, generate_synthetic
    from vllm_padrec.integration.list_settings import ListSettings
    from vllm_padrec.lists import ListSpec

    catalog = generate_synthetic(SyntheticConfig(num_items=40, num_users=10, codebook_sizes=(4,) * L, seed=7)).catalog
    lists = request_lists(monkeypatch, catalog, ListSettings(max_list_items=4, max_topk=8, topk_max_beams=8))
    params = SamplingParams(
        max_tokens=5, extra_args={"padrec_topk": 3, "padrec_constraint": True, "padrec_num_items": 1}
    )
    parsed = []
    real = ListSpec.from_extra_args
    monkeypatch.setattr(ListSpec, "from_extra_args", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    lists.add_request(0, new_request("R", [1, 2, 3], [4], params), drop_topk=True)
    lists.apply_staged_writes()  # R's step 0: its row is on the device before its beams come
    assert parsed == [{"padrec_constraint": True, "padrec_num_items": 1}]
    assert params.extra_args == {"padrec_topk": 3, "padrec_constraint": True, "padrec_num_items": 1}
    other = SamplingParams(max_tokens=5, extra_args={"padrec_constraint": True, "padrec_num_items": 2})
    lists.add_request(3, new_request("S", [1, 2], [5], other))  # staged in the same step as the beams' copies
    lists.add_copy(1, 0)
    lists.add_copy(2, 0)
    assert len(parsed) == 2 and not lists.refused[:3].any() and lists.enabled[:3].all()
    lists.apply_staged_writes()
    rows = lists.rows.gpu
    assert torch.equal(rows[1], rows[0]) and torch.equal(rows[2], rows[0]) and not torch.equal(rows[3], rows[0])
    lists.add_request(5, new_request("U", [1, 2, 3], [7], params))  # no drop_topk: padrec_topk refused here
    lists.apply_staged_writes()
    lists.add_copy(6, 5)  # a beam of a refused request: refused too
    lists.apply_staged_writes()
    assert lists.refused[5] and lists.refused[6] and torch.equal(rows[6], rows[5])
