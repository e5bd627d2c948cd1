"""The runner-side top-K coordinator (vllm_padrec.topk.engine) over whole engine lives, on the CPU.

``FakeV2`` plays Model Runner V2 around the plugin's real pieces: the real ``TopKBeams`` rewrite of real
``SchedulerOutput``s, the real model-state hooks of ``patches/init_model_state.py`` (``RequestLists`` with
the eager masks, ``MaskingSampler``, the ``TopKEngine``), a greedy stand-in for vLLM's sampler, V2's
``post_update``, and a paged KV cache whose pages hold the fed tokens. Every row's logits come from the
tiny target (float64) run over the tokens its slot's block table reads back from that cache, so a wrong
token history, first token, block table or KV copy changes the model's input. Two top-K requests
(K = 3 and K = 2, one step apart, so two cohorts share batches) run among an ordinary constrained list
request: their answers must equal ``beam_search_items``' items, order and scores exactly, and the list
request's tokens must equal those of a run without the top-K traffic.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm_fakes import request_lists

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.decoding import beam_search_items
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.integration.patches import init_model_state
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import load_checkpoint
from vllm_padrec.target.train import train_target
from vllm_padrec.topk.admission import cdiv, private_blocks_per_beam
from vllm_padrec.topk.beams import BeamLayout, TopKBeams
from vllm_padrec.topk.engine import TopKEngine
from vllm_padrec.topk.result import decode_items, encode_items

BS = 8  # block size: small, so that prompts span several blocks and some beams need two private blocks
NUM_SLOTS, MAX_MODEL_LEN, NUM_BLOCKS = 16, 96, 96


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny target of test_topk_select.py (float64, for the same reason) and users with full histories."""
    data = generate_synthetic(SyntheticConfig(num_items=40, num_users=150, codebook_sizes=(4, 4, 4, 4), seed=7))
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, max_history=6, list_items=4, epochs=2)
    result = train_target(recipe, data, tmp_path_factory.mktemp("target"), progress=False)
    model = load_checkpoint(result.checkpoint).model.double().eval()
    histories = [s.history for s in data.eval_samples("test", recipe.max_history)]
    return model, data.catalog, [h for h in histories if len(h) == recipe.max_history][:4]


class FakeV2:
    """V2's per-slot state, paged KV and one step's batch, around the plugin's real model-state hooks."""

    def __init__(self, model, lists, engine: TopKEngine | None, seed: int) -> None:
        self.model = model
        self.req_states = SimpleNamespace(
            all_token_ids=SimpleNamespace(gpu=torch.full((NUM_SLOTS, MAX_MODEL_LEN), -1, dtype=torch.int32)),
            total_len=SimpleNamespace(gpu=torch.zeros(NUM_SLOTS, dtype=torch.int32)),
            last_sampled_tokens=torch.zeros(NUM_SLOTS, 1, dtype=torch.int64),
        )
        self.kv = torch.full((NUM_BLOCKS, 1, BS, 2), -1.0)  # [blocks, heads, block_size, K|V]: the fed token id
        self.state = SimpleNamespace(
            custom_sampler=lambda sampler: None, add_request=lambda i, r: None, apply_staged_writes=lambda: None
        )
        init_model_state.install(self.state, lists, SimpleNamespace(speculative_config=None), "cpu", engine)
        self.sampler, _ = self.state.custom_sampler(GreedySampler(self.req_states))
        self.slots: dict[str, int] = {}
        self.req_states.req_id_to_index = self.slots  # V2's map, read by TopKEngine.owner_slot
        self.free = list(range(NUM_SLOTS))
        self.computed: dict[str, int] = {}
        self.prefill_len: dict[str, int] = {}
        self.tables: dict[str, list[int]] = {}
        self.generator = torch.Generator().manual_seed(seed)

    def update_requests(self, out: SchedulerOutput) -> None:
        """V2's finish_requests / add_requests / update_requests: slots freed and given, histories and tables."""
        for req_id in out.finished_req_ids | (out.preempted_req_ids or set()):
            if req_id in self.slots:
                self.free.append(self.slots.pop(req_id))
        for new in out.scheduled_new_reqs:  # V2's add_requests
            slot = self.slots[new.req_id] = self.free.pop(0)
            tokens = torch.tensor(new.prefill_token_ids, dtype=torch.int32)
            self.req_states.all_token_ids.gpu[slot] = -1
            self.req_states.all_token_ids.gpu[slot, : len(tokens)] = tokens
            self.req_states.total_len.gpu[slot] = len(tokens)
            self.computed[new.req_id] = new.num_computed_tokens
            self.prefill_len[new.req_id] = len(tokens)
            (self.tables[new.req_id],) = new.block_ids
            self.new_slot(slot)
            self.state.add_request(slot, new)
        if out.scheduled_new_reqs:
            self.state.apply_staged_writes()
        self.update_cached(out.scheduled_cached_reqs)

    def new_slot(self, slot: int) -> None:
        """What V2 resets in a slot given to a new request (nothing here without drafts)."""

    def update_cached(self, cached) -> None:
        """The scheduler's computed tokens of the cached requests (exact without speculation)."""
        self.computed.update(zip(cached.req_ids, cached.num_computed_tokens))

    def execute(self, out: SchedulerOutput) -> dict[str, int]:
        """One engine step of the runner's (rewritten) output: the sampled token of each request."""
        self.update_requests(out)
        if not out.num_scheduled_tokens:
            return {}

        req_ids = list(out.num_scheduled_tokens)
        req_ids = [req_ids[i] for i in torch.randperm(len(req_ids), generator=self.generator).tolist()]
        logits, fed = [], []
        for req_id in req_ids:
            logits_row, last = self.forward(req_id, out.num_scheduled_tokens[req_id])
            logits.append(logits_row)
            fed.append(last)
        slots = [self.slots[r] for r in req_ids]
        batch = SimpleNamespace(
            req_ids=req_ids,
            idx_mapping_np=np.array(slots, dtype=np.int32),
            cu_num_logits_np=np.arange(len(req_ids) + 1, dtype=np.int32),
            expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32),
            expanded_local_pos=torch.zeros(len(req_ids), dtype=torch.int32),
            input_ids=torch.tensor(fed),
            logits_indices=torch.arange(len(req_ids)),
        )
        sampled = self.sampler(torch.stack(logits), batch).sampled_token_ids  # [num_reqs, 1]
        result = {}
        for i, req_id in enumerate(req_ids):  # V2's post_update (prompts are never chunked here)
            slot, token = self.slots[req_id], int(sampled[i, 0])
            length = int(self.req_states.total_len.gpu[slot])
            self.req_states.all_token_ids.gpu[slot, length] = token
            self.req_states.total_len.gpu[slot] = length + 1
            self.req_states.last_sampled_tokens[slot, 0] = token
            self.computed[req_id] += out.num_scheduled_tokens[req_id]
            result[req_id] = token
        return result

    @torch.inference_mode()
    def forward(self, req_id: str, num_tokens: int) -> tuple[torch.Tensor, int]:
        """Write the fed tokens' KV through the block table, then the model over what the table reads back."""
        slot, start, table = self.slots[req_id], self.computed[req_id], self.tables[req_id]
        if start >= self.prefill_len[req_id]:  # a decode row feeds its last sampled token
            fed = [int(self.req_states.last_sampled_tokens[slot, 0])]
        else:
            fed = self.req_states.all_token_ids.gpu[slot, start : start + num_tokens].tolist()
        for p, token in zip(range(start, start + num_tokens), fed):
            self.kv[table[p // BS], 0, p % BS] = float(token)
        context = [int(self.kv[table[p // BS], 0, p % BS, 0]) for p in range(start + num_tokens)]
        out = self.model(input_ids=torch.tensor([context]), logits_to_keep=1)
        return out.logits[0, -1], fed[-1]


class GreedySampler:
    """vLLM's sampler at temperature 0: the argmax of each (masked) logits row."""

    def __init__(self, req_states) -> None:
        self.req_states = req_states

    def __call__(self, logits: torch.Tensor, input_batch) -> SimpleNamespace:
        return SimpleNamespace(sampled_token_ids=logits.argmax(-1, keepdim=True))


class FakeScheduler:
    """Whole prompts at once, then one token per step; a request stops at </s> or max_tokens."""

    def __init__(self, one_more_step: bool = False) -> None:
        self.requests: dict[str, dict] = {}
        self.next_block = 0
        self.finished: set[str] = set()
        self.just_finished: set[str] = set()  # finished in the last step: the next output's finished_req_ids
        self.just_preempted: set[str] = set()  # preempted before the next step: its preempted_req_ids
        # async scheduling's tail: a request that stops is scheduled once more (that step was scheduled before
        # its output came back); its token there is dropped
        self.one_more_step = one_more_step
        self.stopping: set[str] = set()
        self.just_stopped: set[str] = set()  # stopped (</s> or max_tokens) in the last step

    def preempt(self, req_id: str) -> None:
        """vLLM's _preempt_request: the request leaves the runner and waits, keeping its outputs."""
        self.requests[req_id]["started"] = False
        self.just_preempted.add(req_id)

    def add(self, req_id: str, prompt: list[int], params: SamplingParams, extra_blocks: int = 0) -> None:
        blocks = cdiv(len(prompt) + params.max_tokens, BS) + extra_blocks
        self.requests[req_id] = dict(prompt=prompt, params=params, outputs=[], started=False)
        self.requests[req_id]["blocks"] = list(range(self.next_block, self.next_block + blocks))
        self.next_block += blocks

    def schedule(self, arriving: set[str]) -> SchedulerOutput:
        new, cached = [], []
        for req_id, r in self.requests.items():
            if req_id in self.finished or (not r["started"] and req_id not in arriving):
                continue
            if not r["started"]:
                r["started"] = True
                new.append(
                    NewRequestData(
                        req_id=req_id,
                        prompt_token_ids=list(r["prompt"]),
                        mm_features=[],
                        sampling_params=r["params"],
                        pooling_params=None,
                        block_ids=(list(r["blocks"]),),
                        num_computed_tokens=0,
                        lora_request=None,
                        prefill_token_ids=list(r["prompt"]) + list(r["outputs"]),  # resumed: its outputs too
                    )
                )
            else:
                cached.append((req_id, len(r["prompt"]) + len(r["outputs"]) - 1))
        scheduled = {n.req_id: len(n.prefill_token_ids) for n in new} | {req_id: 1 for req_id, _ in cached}
        out = SchedulerOutput(
            scheduled_new_reqs=new,
            scheduled_cached_reqs=CachedRequestData(
                req_ids=[r for r, _ in cached],
                resumed_req_ids=set(),
                new_token_ids=[],
                all_token_ids={},
                new_block_ids=[None for _ in cached],
                num_computed_tokens=[c for _, c in cached],
                num_output_tokens=[len(self.requests[r]["outputs"]) for r, _ in cached],
            ),
            num_scheduled_tokens=scheduled,
            total_num_scheduled_tokens=sum(scheduled.values()),
            scheduled_spec_decode_tokens={},
            scheduled_encoder_inputs={},
            num_common_prefix_blocks=[0],
            finished_req_ids=set(self.just_finished),
            free_encoder_mm_hashes=[],
            preempted_req_ids=set(self.just_preempted) or None,
        )
        self.just_finished, self.just_preempted = set(), set()
        return out

    def update(self, sampled: dict[str, int]) -> None:
        self.just_stopped = set()
        for req_id in list(self.stopping):  # its one more step ran
            self.stopping.discard(req_id)
            self.finished.add(req_id)
            self.just_finished.add(req_id)
        for req_id, r in self.requests.items():
            if req_id in sampled and req_id not in self.finished and req_id not in self.just_finished:
                r["outputs"].append(sampled[req_id])
                if sampled[req_id] == TokenLayout.EOS or len(r["outputs"]) >= r["params"].max_tokens:
                    self.just_stopped.add(req_id)
                    if self.one_more_step:
                        self.stopping.add(req_id)
                    else:
                        self.finished.add(req_id)
                        self.just_finished.add(req_id)


engines: list[TopKEngine] = []  # every run_engine's engine, latest last


def run_engine(monkeypatch, model, catalog, topk_users, list_user, seed: int = 0, preemptions=None, runs=None):
    """An engine's life: (the top-K answers by request id, the list request's output tokens). ``preemptions``:
    {engine step: (request id, the step it comes back at)}; ``runs``: filled with each request's output tokens."""
    L = catalog.num_slots
    lists = request_lists(monkeypatch, catalog, ListSettings(max_list_items=4), max_num_reqs=NUM_SLOTS)
    engine = TopKEngine("cpu")
    engines.append(engine)
    v2 = FakeV2(model, lists, engine, seed)
    beams = TopKBeams(BeamLayout(item_length=L, block_size=BS))
    engine.attach(beams, [v2.kv], NUM_BLOCKS)
    scheduler = FakeScheduler()
    list_params = SamplingParams(max_tokens=24, extra_args={"padrec_constraint": True, "padrec_num_items": 2})
    scheduler.add("list", catalog.render_prompt(list_user), list_params)
    arrivals = {0: {"list"}}
    for step, (req_id, history, k) in enumerate(topk_users):
        prompt = catalog.render_prompt(history)
        params = SamplingParams(
            max_tokens=L + 1, extra_args={"padrec_constraint": True, "padrec_num_items": 1, "padrec_topk": k}
        )
        private = k * private_blocks_per_beam(len(prompt), L, BS)
        scheduler.add(req_id, prompt, params, extra_blocks=private)  # life, then the private blocks last
        arrivals.setdefault(step, set()).add(req_id)
    for req_id, back in (preemptions or {}).values():
        arrivals.setdefault(back, set()).add(req_id)
    answers = {}
    for step in range(40):
        if step in (preemptions or {}):
            scheduler.preempt(preemptions[step][0])
        out = scheduler.schedule(arrivals.get(step, set()))
        if not out.num_scheduled_tokens and not out.finished_req_ids:
            break
        scheduler.update(v2.execute(beams.rewrite(out)))
        for req_id, items in v2.state.padrec_topk_answers.take().items():  # patches/sample_tokens.py
            answers[req_id] = decode_items(encode_items(items), L)
    assert not lists.refused.any(), "the plugin refused a request"
    assert len(v2.free) == NUM_SLOTS and not engine.groups  # every slot is back, no beam state is left
    assert not beams.resumed  # a resumed request leaves with its id
    if runs is not None:
        runs.update({req_id: r["outputs"] for req_id, r in scheduler.requests.items()})
    return answers, scheduler.requests["list"]["outputs"]


def assert_answers_are_the_reference(answers, users, model, catalog) -> None:
    """Each user's answer: the items, order and scores of ``beam_search_items`` (dead beams left out)."""
    for req_id, history, k in users:
        answer = answers[req_id]
        live = torch.isfinite(answer.scores)
        items = [catalog.parse_completion(tokens)[0] for tokens in answer.tokens[live].tolist()]
        reference = beam_search_items(model, catalog, [history], k)[0]
        assert list(zip(items, answer.scores[live].tolist())) == reference, req_id


@pytest.mark.parametrize("kernel", [False, True], ids=["torch KV copies", "Triton KV copies"])
def test_topk_answers_equal_the_reference_and_leave_a_list_request_unchanged(monkeypatch, tiny, kernel):
    """With the KV block copies of the torch reference, and of the Triton kernel (the interpreter off CUDA)."""
    if kernel:
        monkeypatch.setenv("PADREC_FORCE_TRITON", "1")
    model, catalog, histories = tiny
    users = [("R1", histories[0], 3), ("R2", histories[1], 2)]
    answers, list_tokens = run_engine(monkeypatch, model, catalog, users, histories[2])
    assert sorted(answers) == ["R1", "R2"]
    assert_answers_are_the_reference(answers, users, model, catalog)
    _, alone = run_engine(monkeypatch, model, catalog, [], histories[2])
    assert list_tokens == alone and list_tokens[-1] == TokenLayout.EOS
    # the run with top-K traffic copied its blocks where the test says (a kernel failure would have left None)
    assert (engines[-2].copy_blocks.pointers is not None) == kernel


def test_a_preempted_request_ends_with_eos_and_no_answer_when_it_comes_back(monkeypatch, tiny):
    """R1 is preempted after its step 1 (its beams and KV go) and comes back two steps later with its outputs:
    its next sampled row is </s> and it gives no answer (the front ends then send it again); R2, arriving
    one step later, and the list request are untouched."""
    model, catalog, histories = tiny
    users = [("R1", histories[0], 3), ("R2", histories[1], 2)]
    runs: dict[str, list[int]] = {}
    answers, list_tokens = run_engine(
        monkeypatch, model, catalog, users, histories[2], preemptions={2: ("R1", 4)}, runs=runs
    )
    assert sorted(answers) == ["R2"]
    assert runs["R1"] == [TokenLayout.PAD, TokenLayout.PAD, TokenLayout.EOS]  # steps 0 and 1, then </s> at once
    answer = answers["R2"]
    items = [catalog.parse_completion(tokens)[0] for tokens in answer.tokens.tolist()]
    assert list(zip(items, answer.scores.tolist())) == beam_search_items(model, catalog, [histories[1]], 2)[0]
    _, alone = run_engine(monkeypatch, model, catalog, [], histories[2])
    assert list_tokens == alone


# --- R's own row: <pad> before its last step, </s> at it (RequestLists.mask_topk_owners) -------------------


def test_r_rows_allow_only_pad_then_eos_and_are_never_fully_masked(monkeypatch):
    from vllm_padrec.topk.beams import TopKState

    catalog = generate_synthetic(SyntheticConfig(num_items=40, num_users=20, codebook_sizes=(4, 4, 4), seed=7)).catalog
    L = catalog.num_slots
    settings = ListSettings(max_list_items=4, topk_max_beams=8, max_topk=8)
    lists = request_lists(monkeypatch, catalog, settings, max_num_reqs=NUM_SLOTS)
    engine = TopKEngine("cpu")
    state = SimpleNamespace(
        custom_sampler=lambda s: None, add_request=lambda i, r: None, apply_staged_writes=lambda: None
    )
    init_model_state.install(state, lists, SimpleNamespace(speculative_config=None), "cpu", engine)
    assert engine.lists is lists  # the model state's engine reaches the lists' override
    beams = TopKBeams(BeamLayout(item_length=L, block_size=BS))
    engine.attach(beams, [], 0)  # no KV: nothing here copies blocks

    def topk_state(req_id: str, step: int, ended: bool = False) -> TopKState:
        return TopKState(req_id, 2, 2, L, (5, 6, 7), (), (40, 41), None, step=step, ended=ended)

    steps = {"prefill": -1, "t0": 0, "before_last": L - 2, "last": L - 1, "async_extra": L}
    beams.states = {r: topk_state(r, t) for r, t in steps.items()} | {"leaving": topk_state("leaving", 1, ended=True)}
    req_ids = [*steps, "leaving", "plain"]
    slots = [9, 3, 7, 1, 2, 12, 0]
    batch = SimpleNamespace(
        req_ids=req_ids,
        idx_mapping_np=np.array(slots, dtype=np.int32),
        expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32),
    )
    assert engine.owner_tokens(batch) == {
        3: TokenLayout.PAD,
        7: TokenLayout.PAD,
        1: TokenLayout.EOS,
        2: TokenLayout.EOS,
    }
    V = catalog.layout.vocab_size
    logits = torch.randn(len(req_ids), V, generator=torch.Generator().manual_seed(0))  # [R, V]
    logits[1:5] = float("-inf")  # R's rows as the one-item list mask may leave them: fully masked
    before = logits.clone()
    lists.mask_topk_owners(logits, batch, engine.owner_tokens(batch))
    for row, token in ((1, TokenLayout.PAD), (2, TokenLayout.PAD), (3, TokenLayout.EOS), (4, TokenLayout.EOS)):
        expected = torch.full((V,), float("-inf"))
        expected[token] = 0.0
        assert torch.equal(logits[row], expected), req_ids[row]
    for row in (0, 5, 6):  # a prefill chunk, an R leaving this step and an ordinary request: untouched
        assert torch.equal(logits[row], before[row]), req_ids[row]


def test_no_owner_override_without_topk_requests(monkeypatch):
    catalog = generate_synthetic(SyntheticConfig(num_items=40, num_users=20, codebook_sizes=(4, 4, 4), seed=7)).catalog
    lists = request_lists(monkeypatch, catalog, ListSettings(max_list_items=4), max_num_reqs=NUM_SLOTS)
    engine = TopKEngine("cpu")
    batch = SimpleNamespace(req_ids=["a"], idx_mapping_np=np.array([4]), expanded_idx_mapping=torch.tensor([4]))
    assert engine.owner_tokens(batch) == {}  # no TopKBeams attached yet
    engine.attach(TopKBeams(BeamLayout(item_length=3, block_size=BS)), [], 0)
    assert engine.owner_tokens(batch) == {}
    logits = torch.randn(1, catalog.layout.vocab_size)
    before = logits.clone()
    lists.mask_topk_owners(logits, batch, {})
    assert torch.equal(logits, before)


def test_a_cohort_is_its_members_groups_padded_with_dead_beams_and_each_member_reads_its_row():
    from vllm_padrec.topk.engine import CohortRow, cohort_groups, merge_groups
    from vllm_padrec.topk.select import BeamGroups

    def group(k: int, base: float) -> BeamGroups:  # one request's K beams after t = 2 steps
        scores = -torch.arange(k, dtype=torch.float32)[None] - base  # [1, K]
        tokens = torch.arange(2 * k).view(1, k, 2) + int(base)  # [1, K, 2]
        return BeamGroups(torch.tensor([k]), scores, tokens, tokens.float() / 10)

    wide, narrow = group(3, 10.0), group(2, 20.0)
    cohort = merge_groups([wide, narrow])
    assert cohort.beam_width.tolist() == [3, 2] and cohort.scores.shape == (2, 3)
    assert cohort.scores[1].tolist() == [-20.0, -21.0, float("-inf")]  # rank 2 of the K = 2 request: dead
    assert cohort.tokens[1, 2].tolist() == [0, 0] and cohort.logprobs[1, 2].tolist() == [0.0, 0.0]
    rows = [CohortRow(cohort, 0, 3), CohortRow(cohort, 1, 2)]
    for part, row in zip((wide, narrow), rows):
        for name in ("beam_width", "scores", "tokens", "logprobs"):
            assert torch.equal(getattr(row.own(), name), getattr(part, name)), name
    assert merge_groups([narrow]) is narrow  # one member: its own groups, no copy
    assert cohort_groups(rows) is cohort  # the same members in the same order: the same tensors
    for reordered in (rows[::-1], rows[1:]):  # another order, or a member left: merged again from the rows
        again = cohort_groups(reordered)
        expected = merge_groups([r.own() for r in reordered])
        assert all(torch.equal(getattr(again, n), getattr(expected, n)) for n in ("scores", "tokens", "logprobs"))


def test_a_cohorts_private_blocks_are_built_once_and_never_reused_for_another_request_of_the_same_id():
    from vllm_padrec.topk.beams import TopKState

    def state(req_id: str, blocks: tuple[int, ...]) -> TopKState:
        return TopKState(req_id, 2, 2, 3, (5, 6), (), blocks, None, step=1)

    engine = TopKEngine("cpu")
    cohort = [state("a", (10, 11)), state("b", (20, 21))]
    blocks = engine._private_blocks(cohort, torch.device("cpu"))
    assert engine._private_blocks([state("a", (10, 11)), state("b", (20, 21))], torch.device("cpu")) is blocks
    again = engine._private_blocks([state("a", (30, 31)), state("b", (20, 21))], torch.device("cpu"))
    assert again is not blocks and again.dst.tolist() == [30, 31, 20, 21]  # "a" reused by a new request
