"""Drafted top-K rounds over whole engine lives, on the CPU (issue 13, ATSPEED.md plan step 6).

``RoundsV2`` extends ``test_topk_engine.FakeV2`` to spec-decode rows: a row scheduled with 1 + gamma tokens
feeds its last sampled token and its drafts, writes their KV through its block table and gets a logits row
after each (V2's layout: ``cu_num_logits``, ``expanded_idx_mapping``, ``expanded_local_pos``, the fed tokens
at ``logits_indices``); a stand-in rejection sampler keeps one token a row (the hook owns the drafted rows);
``post_update`` appends ``num_sampled`` tokens and advances the computed tokens by the query less
``num_rejected``. After each step a stand-in of V2's draft loop runs over the step's batch: per batch row the
speculator's feature, next token and drafts, and one forward per level that reads each row's path from them
and from the row's runner state (the draft's log-probs with the catalog mask), checking that each row holding
a beam feeds its last draft, carries the feature of its path and holds its root beam's history, last code and
KV. Between forwards the plugin's ``RoundSearch`` (``integration/topk_draft_search.py``) advances the search
and moves the rows; at the end it writes each row's chain as its drafts and stages the round. Before the
search the extra rows' history, last code and KV are made stale (``<pad>``), as a later round finds them.

Everything else is the plugin's: the ``TopKBeams`` rewrite (rows, drafts, bounds), the model-state hooks
with the real ``RequestLists`` masks, ``TopKEngine`` (the plain steps 0 and 1, then rounds:
``round_sampling``, ``chains``, ``strict``, ``rounds``, the history and KV copies). Every logit comes from
the tiny target run over what each row's block table reads back, so a wrong copy changes the answer. The
answers must be the target's own beam search (items, order and scores) whatever the draft: the target
itself (every drafted step accepted: an item of L = 4 in three engine steps) or a random-weight model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_topk_engine import (  # noqa: F401
    BS,
    NUM_BLOCKS,
    NUM_SLOTS,
    FakeScheduler,
    FakeV2,
    assert_answers_are_the_reference,
    tiny,
)
from transformers import LlamaForCausalLM
from vllm import SamplingParams
from vllm_fakes import request_lists

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.integration.speculator import PadRecSpeculator
from vllm_padrec.topk import rounds as rounds_module
from vllm_padrec.topk.admission import private_blocks_per_beam
from vllm_padrec.topk.beams import BeamLayout, TopKBeams, beam_req_id, beam_req_ids
from vllm_padrec.topk.engine import RoundRows, TopKEngine
from vllm_padrec.topk.result import decode_items, encode_items
from vllm_padrec.topk.select import beam_logprobs

GAMMA, DRAFT_BEAMS = 2, 3


class RejectOneSampler:
    """A rejection sampler at temperature 0 that keeps one token a row: the argmax of its first logits row."""

    def __init__(self, req_states) -> None:
        self.req_states = req_states

    def __call__(self, logits: torch.Tensor, input_batch) -> SimpleNamespace:
        first = torch.as_tensor(input_batch.cu_num_logits_np[:-1], dtype=torch.long)  # [num_reqs]
        counts = torch.as_tensor(np.diff(input_batch.cu_num_logits_np), dtype=torch.long)
        sampled = torch.zeros(len(first), 1 + GAMMA, dtype=torch.long)
        sampled[:, 0] = logits[first].argmax(-1)
        return SimpleNamespace(sampled_token_ids=sampled, num_sampled=torch.ones_like(counts), num_rejected=counts - 1)


class RoundsV2(FakeV2):
    """FakeV2 with spec-decode rows (module docstring)."""

    def __init__(self, model, lists, engine: TopKEngine, seed: int) -> None:
        super().__init__(model, lists, engine, seed)
        self.sampler, _ = self.state.custom_sampler(RejectOneSampler(self.req_states))
        self.drafts = torch.zeros(NUM_SLOTS, GAMMA, dtype=torch.long)  # V2's req_states.draft_tokens

    def new_slot(self, slot: int) -> None:
        self.drafts[slot] = 0  # states.py:113

    def update_cached(self, cached) -> None:
        """V2 keeps its own (GPU) computed tokens; the scheduler's are only an upper bound of them."""
        for req_id, bound in zip(cached.req_ids, cached.num_computed_tokens):
            assert self.computed[req_id] <= bound, (req_id, self.computed[req_id], bound)

    def execute(self, out) -> dict[str, int]:
        self.update_requests(out)
        if not out.num_scheduled_tokens:
            return {}

        req_ids = list(out.num_scheduled_tokens)
        req_ids = [req_ids[i] for i in torch.randperm(len(req_ids), generator=self.generator).tolist()]
        self.batch_req_ids = req_ids  # V2's input_batch.req_ids: what the speculator's rows are
        logits, fed_all, counts, logits_indices, local = [], [], [], [], []
        for req_id in req_ids:
            drafts = len(out.scheduled_spec_decode_tokens.get(req_id, ()))
            rows, fed = self.forward_rows(req_id, out.num_scheduled_tokens[req_id], drafts)
            logits_indices += list(range(len(fed_all) + len(fed) - len(rows), len(fed_all) + len(fed)))
            fed_all += fed
            logits += rows
            counts.append(len(rows))
            local += list(range(len(rows)))
        slots = [self.slots[r] for r in req_ids]
        batch = SimpleNamespace(
            req_ids=req_ids,
            idx_mapping_np=np.array(slots, dtype=np.int32),
            cu_num_logits_np=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
            expanded_idx_mapping=torch.tensor(np.repeat(slots, counts), dtype=torch.int32),
            expanded_local_pos=torch.tensor(local, dtype=torch.int32),
            input_ids=torch.tensor(fed_all),
            logits_indices=torch.tensor(logits_indices),
        )
        output = self.sampler(torch.stack(logits), batch)
        result = {}
        for i, req_id in enumerate(req_ids):  # V2's post_update
            slot, n = self.slots[req_id], int(output.num_sampled[i])
            length = int(self.req_states.total_len.gpu[slot])
            tokens = output.sampled_token_ids[i, :n]
            self.req_states.all_token_ids.gpu[slot, length : length + n] = tokens.to(torch.int32)
            self.req_states.total_len.gpu[slot] = length + n
            if n:  # input_batch.py:482: a row that sampled nothing keeps its last token
                self.req_states.last_sampled_tokens[slot, 0] = tokens[-1]
            self.computed[req_id] += out.num_scheduled_tokens[req_id] - int(output.num_rejected[i])
            result[req_id] = int(tokens[0])
        return result

    @torch.inference_mode()
    def forward_rows(self, req_id: str, num_tokens: int, drafts: int) -> tuple[list[torch.Tensor], list[int]]:
        """The fed tokens' KV through the block table, then a logits row after each of the last 1 + drafts."""
        slot, start, table = self.slots[req_id], self.computed[req_id], self.tables[req_id]
        if start >= self.prefill_len[req_id]:  # a decode row: its last sampled token, then its drafts
            fed = [int(self.req_states.last_sampled_tokens[slot, 0])] + self.drafts[slot, :drafts].tolist()
        else:
            fed = self.req_states.all_token_ids.gpu[slot, start : start + num_tokens].tolist()
        assert len(fed) == num_tokens
        for p, token in zip(range(start, start + num_tokens), fed):
            self.kv[table[p // BS], 0, p % BS] = float(token)
        context = [int(self.kv[table[p // BS], 0, p % BS, 0]) for p in range(start + num_tokens)]
        out = self.model(input_ids=torch.tensor([context]), logits_to_keep=1 + drafts)
        return list(out.logits[0]), fed


class Speculator:
    """The draft's beam search on each drafted request's rows after a step (the ``propose`` override's job)."""

    def __init__(self, draft, catalog, v2: RoundsV2, engine: TopKEngine, beams: TopKBeams) -> None:
        self.draft, self.v2, self.engine, self.beams = draft, v2, engine, beams
        self.constraint = ListConstraint(catalog, num_items=1)

    @torch.inference_mode()
    def logprobs(self, prompt: tuple[int, ...], paths: list[tuple[int, ...]]) -> torch.Tensor:  # [n, V]
        allowed = self.constraint.allowed_tokens(self.constraint.state_after([list(p) for p in paths]))
        logits = torch.stack(
            [self.draft(input_ids=torch.tensor([prompt + p]), logits_to_keep=1).logits[0, -1] for p in paths]
        )
        return beam_logprobs(logits, allowed)[:, : allowed.shape[1]]

    def check_beam_rows(self, req_id: str, state, start, m: int) -> None:
        """V2's view of each live beam's row j < K before a round: its history is beam j's path (prompt, then
        its m codes), it feeds beam j's last code next, and m - 1 codes have KV (the last is fed next)."""
        P, v2 = state.prompt_len, self.v2
        if m >= state.item_length:  # complete: its last round sampled a <pad> past the item, and it ends
            return
        for j in range(state.k):
            if not torch.isfinite(start.scores[0, j]):
                continue
            row_id = beam_req_id(req_id, j)
            slot = v2.slots[row_id]
            path = start.codes[0, j, :m].tolist()
            assert v2.req_states.all_token_ids.gpu[slot, P : P + m].tolist() == path, (row_id, path)
            assert int(v2.req_states.total_len.gpu[slot]) == P + m
            assert int(v2.req_states.last_sampled_tokens[slot, 0]) == path[-1]
            assert v2.computed[row_id] == P + m - 1

    def constraint_ok(self, path: tuple[int, ...]) -> bool:
        try:
            self.constraint.state_after([list(path)])
        except PadRecError:
            return False
        return True

    def check_row_copies(self, req_id: str, state, r: int, root: int, m: int) -> None:
        """Row r holds start beam ``root``'s path as V2 reads it: its token history, the code it feeds, and the
        KV of the path's fed codes (positions from R's partial prompt block to P + m - 2), as row ``root`` does."""
        P, v2 = state.prompt_len, self.v2
        row, source = beam_req_id(req_id, r), beam_req_id(req_id, root)
        slot, src = v2.slots[row], v2.slots[source]
        history = v2.req_states.all_token_ids.gpu
        assert torch.equal(history[slot, P : P + m], history[src, P : P + m]), (row, "history")
        assert int(v2.req_states.last_sampled_tokens[slot, 0]) == int(v2.req_states.last_sampled_tokens[src, 0])
        for position in range((P // BS) * BS, P + m - 1):
            here, there = v2.tables[row], v2.tables[source]
            kv = v2.kv[here[position // BS], 0, position % BS], v2.kv[there[position // BS], 0, position % BS]
            assert torch.equal(*kv), (row, position)

    def make_extra_rows_stale(self, req_id: str, state) -> None:
        """Overwrite the extra rows' (r >= K) token history, last code and private KV past the prompt with
        ``<pad>``: whatever a row held before, ``stage_rounds`` must give it its root beam's."""
        P, v2 = state.prompt_len, self.v2
        for r in range(state.k, state.rows):
            row_id = beam_req_id(req_id, r)
            slot, table = v2.slots[row_id], v2.tables[row_id]
            v2.req_states.all_token_ids.gpu[slot, P : P + state.item_length] = TokenLayout.PAD
            v2.req_states.last_sampled_tokens[slot, 0] = TokenLayout.PAD
            for p in range(P, min(P + state.item_length + GAMMA, len(table) * BS)):
                v2.kv[table[p // BS], 0, p % BS] = float(TokenLayout.PAD)

    def propose(self) -> None:
        """The plugin's ``PadRecSpeculator.propose`` over the step's batch, on V2's draft loop in little
        (``install_draft_loop``): per batch row the speculator's feature, next token and drafts, and a forward
        per level that reads each row's path from them and from its runner state. The plugin's ``RoundSearch``
        advances and moves the rows between the forwards, writes the chains as drafts and stages the round."""
        v2, engine = self.v2, self.engine
        drafting = [r for r in engine.round_beams if not self.beams.states[r].ended and self.beams.states[r].runs_beams]
        for req_id in drafting:  # rows >= K hold another round's paths; rows < K the start beams
            state, start = self.beams.states[req_id], engine.round_beams[req_id]
            self.check_beam_rows(req_id, state, start, int(start.steps_done[0]))
            self.make_extra_rows_stale(req_id, state)
        batch = v2.batch_req_ids  # the last step's batch, in its order
        drafts = self.shell.propose(SimpleNamespace(req_ids=batch, num_reqs=len(batch)))  # [num_reqs, gamma]
        rows = {row: req_id for req_id in drafting for row in beam_req_ids(req_id, self.beams.states[req_id].rows)}
        for b, row in enumerate(batch):  # V2 copies propose's drafts to the rows' slots
            if row in rows:
                v2.drafts[v2.slots[row]] = drafts[b]
        for req_id in drafting:  # what the rows feed is what the hook verifies: the staged chains
            staged = engine.round_rows[req_id].chain[0]  # [R, gamma]
            fed = torch.stack([v2.drafts[v2.slots[row]] for row in beam_req_ids(req_id, staged.shape[0])])
            assert torch.equal(fed, staged), (req_id, fed, staged)

    @functools.cached_property
    def shell(self) -> PadRecSpeculator:
        """A ``PadRecSpeculator`` holding what its propose reads: V2's buffers per batch row, the kept log-probs,
        the engine, a decode graph manager; V2's own loop is ``install_draft_loop``'s."""
        shell = PadRecSpeculator.__new__(PadRecSpeculator)
        shell.num_speculative_steps, shell.max_num_reqs, shell.device = GAMMA, NUM_SLOTS, torch.device("cpu")
        shell.speculative_config = SimpleNamespace(num_speculative_tokens_per_batch_size=None)
        shell.hidden_states = torch.full((NUM_SLOTS, 1), float("nan"))
        shell.input_buffers = SimpleNamespace(input_ids=torch.zeros(NUM_SLOTS, dtype=torch.int32))
        shell.draft_tokens = torch.zeros(NUM_SLOTS, GAMMA, dtype=torch.long)
        shell.model = SimpleNamespace(draft_logprobs=torch.full((NUM_SLOTS, self.v2.model.config.vocab_size), 0.0))
        shell.decode_cudagraph_manager = DecodeGraphs(self)
        shell._topk_engine, shell._draft_loop = self.engine, self
        return shell

    def forward(self, level: int, num_reqs: int) -> None:
        """One draft forward of V2's loop: every batch row of a drafted request that holds a beam reads its
        path and writes the kept log-probs; the rest of the batch gets -inf (nothing reads it)."""
        shell, v2 = self.shell, self.v2
        shell.model.draft_logprobs[:num_reqs] = float("-inf")
        vocab = v2.model.config.vocab_size
        for search in shell._round_searches:
            rows = search.searcher.rows  # the rows read after this forward: those holding a beam
            for g, req_id in enumerate(search.req_ids):
                m = int(self.engine.round_beams[req_id].steps_done[0])
                for r in sorted({int(r) for r in rows.beam_row[g].tolist() if r >= 0}):
                    self.check_row_copies(req_id, self.beams.states[req_id], r, int(rows.root[g, r]), m)
                    b = int(search.batch_rows[g, r])
                    shell.model.draft_logprobs[b] = self.row_forward(req_id, b, level, shell, vocab)

    def row_forward(self, req_id: str, b: int, level: int, speculator, vocab: int) -> torch.Tensor:  # [V]
        """The draft forward of batch row b at ``level``: its path is its runner history (the root beam's codes,
        which ``copy_rows`` gave it) then its drafts so far; from level 1 on it must feed its last draft and carry
        the feature the forward before it left after the path one token shorter."""
        state, v2 = self.beams.states[req_id], self.v2
        slot, P = v2.slots[v2.batch_req_ids[b]], state.prompt_len
        m = int(self.engine.round_beams[req_id].steps_done[0])
        path = tuple(v2.req_states.all_token_ids.gpu[slot, P : P + m].tolist())
        drafts = tuple(speculator.draft_tokens[b, :level].tolist())
        if level > 0:
            assert int(speculator.input_buffers.input_ids[b]) == drafts[-1], (b, level, "input token")
            assert speculator.hidden_states[b, 0] == float(hash(path + drafts[:-1]) % 1000003), (b, level, "feature")
        speculator.hidden_states[b, 0] = float(hash(path + drafts) % 1000003)  # this forward's output feature
        logprobs = torch.full((vocab,), float("-inf"))
        row = self.logprobs(state.prompt_token_ids, [path + drafts])[0]
        logprobs[: row.shape[0]] = row
        speculator.input_buffers.input_ids[b] = int(logprobs.argmax())  # V2's greedy pick: the search overwrites it
        if level < GAMMA:
            speculator.draft_tokens[b, level] = int(logprobs.argmax())
        return logprobs


class DecodeGraphs:
    """V2's decode graph manager in little: a replay is the stand-in's draft forward at the current step."""

    def __init__(self, loop: Speculator) -> None:
        self.loop = loop

    def run_fullgraph(self, batch_desc) -> None:
        self.loop.forward(self.loop.shell.current_step, batch_desc)


def install_draft_loop(monkeypatch) -> None:
    """V2's ``AutoRegressiveSpeculator.propose`` and ``_multi_step_decode`` in little (autoregressive/
    speculator.py): draft step 0, then, unless gamma is 1, one decode replay per further step; the forwards are
    the stand-in's (``Speculator.forward``)."""
    from vllm.v1.worker.gpu.spec_decode.autoregressive.speculator import AutoRegressiveSpeculator

    def propose(self, input_batch, *args, dummy_run=False, **kwargs):
        num_reqs = input_batch.num_reqs
        self._draft_loop.forward(0, num_reqs)
        if self.num_speculative_steps == 1:
            return self.draft_tokens[:num_reqs, :1]
        self._multi_step_decode(num_reqs, False, num_reqs, None)
        return self.draft_tokens[:num_reqs]

    def multi_step_decode(self, num_reqs, skip_attn, batch_desc, num_tokens_across_dp):
        for step in range(1, self.num_speculative_steps):
            self.current_step = step
            self.decode_cudagraph_manager.run_fullgraph(batch_desc)

    monkeypatch.setattr(AutoRegressiveSpeculator, "propose", propose)
    monkeypatch.setattr(AutoRegressiveSpeculator, "_multi_step_decode", multi_step_decode)


class GreedyChains(Speculator):
    """V2's own drafting, for one row per beam (N = 1): each row of a drafted request gets the draft's greedy
    masked chain after its own history, and nothing is staged: the hook reads the rows from the batch."""

    def propose(self) -> None:
        v2 = self.v2
        for req_id, state in self.beams.states.items():
            if state.ended or req_id not in self.engine.round_beams or not state.runs_beams:
                continue  # (R's step after its last: its rows have left)
            for r in range(state.rows):
                slot = v2.slots[beam_req_id(req_id, r)]
                length = int(v2.req_states.total_len.gpu[slot])
                path = tuple(v2.req_states.all_token_ids.gpu[slot, state.prompt_len : length].tolist())
                chain = []
                for _ in range(GAMMA):
                    if not self.constraint_ok(path + tuple(chain)) or len(path) + len(chain) >= state.item_length:
                        chain.append(TokenLayout.PAD)  # past the item: a draft the verification never keeps
                        continue
                    chain.append(int(self.logprobs(state.prompt_token_ids, [path + tuple(chain)])[0].argmax()))
                v2.drafts[slot] = torch.tensor(chain)


def run_rounds(
    monkeypatch,
    model,
    draft,
    catalog,
    users,
    verification: str | None = None,
    draft_beams: int = DRAFT_BEAMS,
    one_more_step: bool = False,
):
    """An engine's life with drafted top-K requests: (answers by request id, engine steps each R ran). With
    ``draft_beams`` 1 the stand-in speculator is V2's own: a greedy chain per row, nothing staged. With
    ``one_more_step`` the scheduler runs each R once more after it stops, as async scheduling does."""
    L = catalog.num_slots
    lists = request_lists(monkeypatch, catalog, ListSettings(max_list_items=4), NUM_SLOTS, max_drafts=GAMMA)
    lists.limits = dataclasses.replace(lists.limits, topk_rules=("strict", "relaxed"))  # a server drafting top-K
    engine = TopKEngine("cpu")
    v2 = RoundsV2(model, lists, engine, seed=0)
    layout = BeamLayout(item_length=L, block_size=BS, lookahead=GAMMA, draft_beams=draft_beams, gamma=GAMMA)
    beams = TopKBeams(layout)
    engine.attach(beams, [v2.kv], NUM_BLOCKS)
    if draft_beams > 1:
        install_draft_loop(monkeypatch)
    speculator = (Speculator if draft_beams > 1 else GreedyChains)(draft, catalog, v2, engine, beams)
    scheduler = FakeScheduler(one_more_step)
    for req_id, history, k in users:
        prompt = catalog.render_prompt(history)
        args = {"padrec_constraint": True, "padrec_num_items": 1, "padrec_topk": k}
        if verification is not None:
            args["padrec_topk_verification"] = verification
        params = SamplingParams(max_tokens=L + 1, extra_args=args)
        private = layout.rows(k) * private_blocks_per_beam(len(prompt), L, BS, lookahead=GAMMA)
        scheduler.add(req_id, prompt, params, extra_blocks=private)
    answers, steps = {}, dict.fromkeys([u[0] for u in users], 0)
    for step in range(40):
        out = scheduler.schedule({u[0] for u in users} if step == 0 else set())
        if not out.num_scheduled_tokens and not out.finished_req_ids:
            break
        for req_id in steps:
            steps[req_id] += req_id in out.num_scheduled_tokens
        scheduler.update(v2.execute(beams.rewrite(out)))
        speculator.propose()
        taken = v2.state.padrec_topk_answers.take()
        for req_id in scheduler.just_stopped & taken.keys():  # the answer of the step R wrote </s>
            answers[req_id] = decode_items(encode_items(taken[req_id]), L)
    assert not lists.refused.any(), "the plugin refused a request"
    assert len(v2.free) == NUM_SLOTS and not engine.groups
    # which items are complete is known only on the GPU: a finished R's round state goes at the next batch
    assert all(beams.states[r].ended for r in engine.round_beams.keys() | engine.round_rows.keys())
    return answers, steps


def draft_model(model, kind: str):
    """The target as its own draft, or a random-weight model of its shape (seeded)."""
    if kind == "the target":
        return model
    torch.manual_seed(3)
    return LlamaForCausalLM(model.config).double().eval()


def count_relaxed_rounds(monkeypatch) -> list[int]:
    """A list that gets an entry each time the engine verifies a round by the relaxed rule."""
    calls: list[int] = []
    original = rounds_module.relaxed_round_batched

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(rounds_module, "relaxed_round_batched", counted)  # inside rounds.relaxed_outcome
    return calls


@pytest.mark.parametrize("draft_kind", ["the target", "random weights"])
def test_drafted_rounds_answer_as_the_targets_beam_search_whatever_the_draft(monkeypatch, tiny, draft_kind):  # noqa: F811
    model, catalog, histories = tiny
    draft = draft_model(model, draft_kind)
    users = [("R1", histories[0], 3), ("R2", histories[1], 2)]
    calls = count_relaxed_rounds(monkeypatch)
    answers, steps = run_rounds(monkeypatch, model, draft, catalog, users)
    assert sorted(answers) == ["R1", "R2"] and not calls  # strict, the default
    assert_answers_are_the_reference(answers, users, model, catalog)
    L = catalog.num_slots
    if draft_kind == "the target":  # steps 0 and 1, then one round that accepts everything and ends the item
        assert steps == {"R1": 3, "R2": 3}
    else:  # a round advances one step at least: never more steps than without a draft
        assert all(n <= L for n in steps.values()), steps


def test_drafted_rounds_replayed_from_captured_graphs_answer_as_the_beam_search(monkeypatch, tiny):  # noqa: F811
    """The draft's beam steps and the strict and relaxed verification through ``topk/graphed.py`` (the CPU stand-in of a
    CUDA graph's capture: fixed output buffers rewritten by each replay from the static inputs), over whole
    engine lives with a random draft, two K and two prompt lengths: the answers are the beam search's, and
    replays served them."""
    from test_topk_graphed import cpu_capture

    from vllm_padrec.topk import draft_search, rounds

    model, catalog, histories = tiny
    draft = draft_model(model, "random weights")
    users = [("R1", histories[0], 3), ("R2", histories[2][:3], 2)]
    relaxed_eager, _ = run_rounds(monkeypatch, model, draft, catalog, users, verification="relaxed")
    used = (draft_search.GRAPHED_DRAFT_STEP, rounds.GRAPHED_STRICT_OUTCOME, rounds.GRAPHED_RELAXED_OUTCOME)
    for graphed_function in used:
        monkeypatch.setattr(graphed_function, "capture", cpu_capture)
        monkeypatch.setattr(graphed_function, "replays", {})
    answers, _ = run_rounds(monkeypatch, model, draft, catalog, users)
    assert_answers_are_the_reference(answers, users, model, catalog)
    # relaxed rounds draw their random numbers outside the graph: the same numbers, the same answers
    relaxed_graphed, _ = run_rounds(monkeypatch, model, draft, catalog, users, verification="relaxed")
    for req_id, _, _ in users:
        for field in ("tokens", "scores", "logprobs"):
            assert torch.equal(getattr(relaxed_graphed[req_id], field), getattr(relaxed_eager[req_id], field))
    assert all(any(r is not None for r in f.replays.values()) for f in used), [f.replays.keys() for f in used]


@torch.inference_mode()
def target_logprobs(model, catalog, prompt: list[int], tokens: list[int]) -> list[float]:
    """The target's masked log-prob of each code of an item after the prompt (the step rule's)."""
    constraint = ListConstraint(catalog, num_items=1)
    out = []
    for i in range(len(tokens)):
        logits = model(input_ids=torch.tensor([prompt + tokens[:i]])).logits[0, -1]
        allowed = constraint.allowed_tokens(constraint.state_after([tokens[:i]]))
        out.append(float(beam_logprobs(logits[None], allowed)[0, tokens[i]]))
    return out


@pytest.mark.parametrize("draft_kind", ["the target", "random weights"])
def test_relaxed_rounds_keep_k_distinct_items_scored_by_the_target(monkeypatch, tiny, draft_kind):  # noqa: F811
    """Relaxed verification is not lossless, but what it keeps is K distinct catalog items, each with the
    target's own log-probs and their sum as its score, best first. With the target as its own draft every
    drafted candidate is accepted (p = q) and the answer is the target's beam search."""
    model, catalog, histories = tiny
    draft = draft_model(model, draft_kind)
    users = [("R1", histories[0], 3), ("R2", histories[1], 2)]
    calls = count_relaxed_rounds(monkeypatch)
    answers, _ = run_rounds(monkeypatch, model, draft, catalog, users, verification="relaxed")
    assert sorted(answers) == ["R1", "R2"] and calls  # the rounds ran the relaxed rule
    for req_id, history, k in users:
        answer = answers[req_id]
        assert torch.isfinite(answer.scores).all()
        assert torch.equal(answer.scores, answer.scores.sort(descending=True).values)
        items = [catalog.parse_completion(tokens)[0] for tokens in answer.tokens.tolist()]
        assert len(set(items)) == k and None not in items
        prompt = catalog.render_prompt(history)
        for tokens, logprobs, score in zip(answer.tokens.tolist(), answer.logprobs, answer.scores):
            want = torch.tensor(target_logprobs(model, catalog, prompt, tokens), dtype=torch.float64)
            assert torch.allclose(logprobs.double(), want, atol=1e-5)
            assert abs(float(score) - float(want.sum())) < 1e-4
    if draft_kind == "the target":
        assert_answers_are_the_reference(answers, users, model, catalog)


def test_relaxed_rows_without_the_drafts_log_probs_are_refused_when_staged():
    """The speculator side must hand a relaxed request's rows with the draft's log-probs: without them the
    next round could not run, so ``stage_rounds`` refuses at once, naming the request."""
    from vllm_padrec.topk.beams import TopKState

    engine = TopKEngine("cpu")
    engine.beams = TopKBeams(BeamLayout(item_length=4, block_size=BS, lookahead=GAMMA, draft_beams=1, gamma=GAMMA))
    engine.beams.states["R"] = TopKState("R", 2, 2, 4, (5, 6), (), (40, 41), None, step=2, gamma=GAMMA, relaxed=True)
    rows = RoundRows(
        torch.zeros(1, 2, dtype=torch.long),
        torch.zeros(1, 2, GAMMA, dtype=torch.long),
        torch.ones(1, 2, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="'R' verifies by the relaxed rule: its rows need the draft's log-probs"):
        engine.stage_rounds(["R"], rows)


@pytest.mark.parametrize("draft_kind", ["the target", "random weights"])
def test_one_row_per_beam_with_v2s_greedy_chains_answers_as_the_beam_search(monkeypatch, tiny, draft_kind):  # noqa: F811
    """N = 1: no draft rows and no staged rows; the hook reads each row's chain from the batch (what V2 fed).
    Strict stays exact; for K = 1 a draft equal to the target is accepted whole (three engine steps)."""
    model, catalog, histories = tiny
    draft = draft_model(model, draft_kind)
    users = [("R1", histories[0], 3), ("R2", histories[1], 1)]
    answers, steps = run_rounds(monkeypatch, model, draft, catalog, users, draft_beams=1)
    assert sorted(answers) == ["R1", "R2"]
    assert_answers_are_the_reference(answers, users, model, catalog)
    if draft_kind == "the target":
        assert steps["R2"] == 3


def test_a_drafted_requests_prompt_tails_are_copied_again_after_propose():
    """The draft writes its KV of R's partial prompt block in step 0's propose, after the hook copied that block
    to the rows: the copies of drafted requests (gamma > 0) run once more, then never again."""
    engine = TopKEngine("cpu")
    copies = []
    engine.copy_blocks = lambda src, dst: copies.append((src.tolist(), dst.tolist()))
    engine.beams = SimpleNamespace(layout=SimpleNamespace(block_size=BS))
    P = BS + 3  # a partial last prompt block: R's block 9
    drafted = SimpleNamespace(tail_block_id=9, prompt_len=P, private_block_ids=(20, 21, 22), rows=3, gamma=2)
    plain = SimpleNamespace(tail_block_id=8, prompt_len=P, private_block_ids=(30, 31), rows=2, gamma=0)
    engine._copy_prompt_tails([drafted, plain])
    assert copies == [([9, 9, 9, 8, 8], [20, 21, 22, 30, 31])]
    engine.after_propose()
    assert copies[1] == ([9, 9, 9], [20, 21, 22])
    engine.after_propose()
    assert len(copies) == 2


def capture_engines(monkeypatch) -> list[TopKEngine]:
    """A list that gets every ``TopKEngine`` made from now on (``run_rounds`` makes its own)."""
    created: list[TopKEngine] = []
    original_init = TopKEngine.__init__

    def keep(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(TopKEngine, "__init__", keep)
    return created


def test_the_round_checks_find_nothing_in_correct_rounds_and_name_a_broken_row(monkeypatch, tiny):  # noqa: F811
    """PADREC_TOPK_CHECKS=1 (``topk/round_checks.py``): over correct rounds every live row passes; a row whose
    fed code is overwritten after the drafts are staged (as a wrong copy would leave it) is reported as such."""
    from vllm_padrec.topk import round_checks

    monkeypatch.setenv(round_checks.ENV, "1")
    logged: list[str] = []
    log = SimpleNamespace(info=lambda text, *args: logged.append(text % args), error=lambda *args: None)
    monkeypatch.setattr(round_checks, "_logger", lambda: log)
    model, catalog, histories = tiny
    users = [("R1", histories[0], 3), ("R2", histories[1][:4], 2)]  # two prompt lengths
    created = capture_engines(monkeypatch)
    answers, _ = run_rounds(monkeypatch, model, model, catalog, users)
    assert_answers_are_the_reference(answers, users, model, catalog)
    checks = created[-1].round_checks
    assert checks.rows_checked > 0 and not checks.counts, checks.summary()
    first = int(logged[0].split("1 rounds, ")[1].split(" rows")[0])  # the first summary counts its round's rows
    assert first > 0 and logged[0].endswith("violations: none"), logged

    broken = {"done": False}
    original_propose = Speculator.propose

    def propose_then_break(self):  # after the first staged round, row 1 of R1 feeds another code
        original_propose(self)
        if not broken["done"] and "R1" in self.engine.round_rows:
            slot = self.v2.slots[beam_req_id("R1", 1)]
            self.v2.req_states.last_sampled_tokens[slot, 0] = TokenLayout.PAD
            broken["done"] = True

    monkeypatch.setattr(Speculator, "propose", propose_then_break)
    with contextlib.suppress(AssertionError):  # the stand-in's own checks may stop the run too
        run_rounds(monkeypatch, model, model, catalog, users)
    checks = created[-1].round_checks
    assert checks.counts["last"] >= 1 and checks.counts["fed"] >= 1, checks.summary()


@pytest.mark.parametrize("draft_kind", ["the target", "random weights"])
def test_rounds_with_more_beams_than_draft_beams_and_several_prompt_lengths(monkeypatch, tiny, draft_kind):  # noqa: F811
    """The bench's shape in little: K = 5 beams, N = 4 draft beams, gamma 3, three users of three prompt lengths
    side by side (the rows of one search group and one round cohort): still the beam search's answers."""
    import test_topk_engine

    slots = 64
    for module in (test_topk_engine, sys.modules[__name__]):
        monkeypatch.setattr(module, "NUM_SLOTS", slots)
        monkeypatch.setattr(module, "NUM_BLOCKS", 400)
    monkeypatch.setattr(sys.modules[__name__], "GAMMA", 3)
    model, catalog, histories = tiny
    draft = draft_model(model, draft_kind)
    users = [(f"R{i}", histories[i][: 2 + 2 * i], 5) for i in range(3)]
    assert len({len(catalog.render_prompt(h)) for _, h, _ in users}) == 3
    answers, _ = run_rounds(monkeypatch, model, draft, catalog, users, draft_beams=4)
    assert_answers_are_the_reference(answers, users, model, catalog)


@pytest.mark.parametrize("draft_beams", [1, DRAFT_BEAMS])
def test_a_step_after_an_early_finish_writes_only_the_rows_own_blocks(monkeypatch, tiny, draft_beams):  # noqa: F811
    """Async scheduling schedules R once more after the round that completes its item (the host learns of the
    </s> a step later). With the target as its own draft an item completes in the first round, so its rows
    then feed the item's last code and gamma drafts: every position they write must lie in their own private
    blocks (the stand-in reads each row's block table for every fed position: one past it fails), for every
    prompt length modulo the block size; the answers stay the beam search's."""
    import test_topk_engine

    for module in (test_topk_engine, sys.modules[__name__]):
        monkeypatch.setattr(module, "NUM_SLOTS", 64)
        monkeypatch.setattr(module, "NUM_BLOCKS", 400)
    model, catalog, histories = tiny
    by_residue = {}  # one history per prompt length modulo the block size
    for history in histories:
        for n in range(1, len(history) + 1):
            by_residue.setdefault(len(catalog.render_prompt(history[:n])) % BS, history[:n])
    L = catalog.num_slots
    tight = (-(L - 1 + GAMMA)) % BS  # P mod bs whose beams' private blocks end right after the last draft
    assert tight in by_residue, sorted(by_residue)
    users = [(f"R{r}", history, 1) for r, history in sorted(by_residue.items())]
    from vllm_padrec.topk import round_checks

    monkeypatch.setenv(round_checks.ENV, "1")  # the engine's own checks of every round's rows, blocks included
    created = capture_engines(monkeypatch)
    answers, steps = run_rounds(monkeypatch, model, model, catalog, users, draft_beams=draft_beams, one_more_step=True)
    assert_answers_are_the_reference(answers, users, model, catalog)
    checks = created[-1].round_checks
    assert checks.rows_checked > 0 and not checks.counts, checks.summary()
    assert all(n == 4 for n in steps.values()), steps  # steps 0, 1, the round that completes the item, one more
