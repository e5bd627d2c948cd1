"""The beam step over an engine batch (vllm_padrec.topk.sampling) and the sample_tokens patch, on the CPU.

The main test plays a runner through two top-K requests' whole lives with fake tensors of V2's shapes:
a batch where the beams sit among another request's rows (one with three logits, as under speculative
decoding) in a new order every step, the raw logits copied before an in-place catalog mask, the
sampler's output overwritten, the beams' token histories (``all_token_ids``) and private KV blocks
copied from their parents, then V2's ``post_update`` append. Every beam slot's history and KV must then
hold exactly the tokens of the beam of its rank in ``BeamGroups`` (the selection core that
``test_topk_select.py`` proves equal to the reference decoder).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.v1.outputs import ModelRunnerOutput

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.constraint import apply_mask
from vllm_padrec.integration.patches import sample_tokens as sample_tokens_patch
from vllm_padrec.topk.beams import beam_req_id
from vllm_padrec.topk.kv_copy import BlockCopier, PrivateBlocks, block_pages, prompt_tail_copies
from vllm_padrec.topk.result import decode_items
from vllm_padrec.topk.sampling import (
    BeamBatch,
    beam_row_logits,
    copy_token_histories,
    select_beams,
    write_sampled_counts,
    write_sampled_tokens,
)
from vllm_padrec.topk.select import BeamGroups, BeamRows, TopKItems, beam_logprobs

V, L, BS = 11, 3, 16  # vocabulary, tokens per item, block size


def batch_layout(entries, slots):
    """``entries`` = [(request id, logits)] in batch order -> (req_ids, cu_num_logits, idx_mapping)."""
    req_ids = [req_id for req_id, _ in entries]
    cu = [0]
    for _, n in entries:
        cu.append(cu[-1] + n)
    return req_ids, cu, [slots[r] for r in req_ids]


def test_batch_rows_at_step_zero_are_the_requests_own_last_logits():
    slots = {"x": 4, "a": 0, "b": 7}
    req_ids, cu, idx = batch_layout([("x", 3), ("a", 1), ("b", 2)], slots)  # b: last chunk with a draft's logits
    batch = BeamBatch.build(req_ids, cu, idx, [("a", 3, 5), ("b", 2, 7)], step=0, item_length=L)
    assert torch.equal(batch.logits_rows, torch.tensor([3, 5]))
    assert torch.equal(batch.rows.group, torch.tensor([0, 1])) and torch.equal(batch.rows.rank, torch.tensor([0, 0]))
    assert torch.equal(batch.owner_requests, torch.tensor([1, 2]))
    assert batch.beam_requests.numel() == batch.beam_slots.numel() == batch.beam_index.numel() == 0
    assert not batch.last


def test_batch_rows_at_a_later_step_are_the_beams_rows_and_slots():
    a, b = [beam_req_id("a", j) for j in range(3)], [beam_req_id("b", j) for j in range(2)]
    slots = {"x": 4, "a": 0, "b": 7, a[0]: 1, a[1]: 9, a[2]: 3, b[0]: 2, b[1]: 5}
    order = [(a[2], 1), ("x", 3), (b[1], 1), ("a", 1), (a[0], 1), ("b", 1), (b[0], 1), (a[1], 1)]
    req_ids, cu, idx = batch_layout(order, slots)
    batch = BeamBatch.build(req_ids, cu, idx, [("a", 3, 5), ("b", 2, 7)], step=2, item_length=L)
    assert batch.last
    assert torch.equal(batch.logits_rows, torch.tensor([6, 9, 0, 8, 4]))  # a0, a1, a2, b0, b1
    assert torch.equal(batch.rows.group, torch.tensor([0, 0, 0, 1, 1]))
    assert torch.equal(batch.rows.rank, torch.tensor([0, 1, 2, 0, 1]))
    assert torch.equal(batch.owner_requests, torch.tensor([3, 5]))
    assert torch.equal(batch.beam_requests, torch.tensor([4, 7, 0, 6, 2]))
    assert torch.equal(batch.beam_slots, torch.tensor([1, 9, 3, 2, 5]))
    assert torch.equal(batch.beam_index, torch.tensor([0, 1, 2, 3, 4]))  # g * K_max + j, K_max = 3
    assert torch.equal(batch.history_end, torch.tensor([7, 7, 7, 9, 9]))
    assert batch.history_columns == (5, 9)


def test_log_probs_are_of_the_raw_logits_then_masked():
    """The selection's log-probs are the full-vocabulary log-softmax of the logits before the in-place
    mask (not renormalised over the allowed tokens), and never pick a refused token."""
    gen = torch.Generator().manual_seed(3)
    req_ids, cu, idx = batch_layout([("x", 1), ("a", 1)], {"x": 1, "a": 0})
    batch = BeamBatch.build(req_ids, cu, idx, [("a", 4, 6)], step=0, item_length=L)
    logits = 2 * torch.randn(2, V, generator=gen)  # [num_logits, V]
    allowed = torch.zeros(2, V, dtype=torch.bool)
    allowed[:, 6:10] = True
    raw = beam_row_logits(logits, batch)
    apply_mask(logits, allowed)  # the catalog mask, in place
    selection = select_beams(BeamGroups.start([4]), raw, logits, batch)
    full = torch.log_softmax(raw.float(), -1)[0]  # [V]
    tokens = selection.groups.tokens[0, :, 0]
    assert torch.equal(selection.groups.logprobs[0, :, 0], full[tokens])
    assert torch.equal(tokens.sort().values, torch.arange(6, 10))
    assert torch.equal(selection.output_rows, torch.tensor([1])) and torch.equal(
        selection.output_tokens, torch.tensor([TokenLayout.PAD])
    )


class FakeRunner:
    """V2's per-slot state for the life test: token histories, a KV cache, one forward's KV writes."""

    def __init__(self, slots: dict[str, int], num_blocks: int) -> None:
        self.slots = slots
        self.all_token_ids = torch.full((max(slots.values()) + 1, 32), -7, dtype=torch.int32)  # UVA in V2
        self.total_len = {}
        self.kv = torch.zeros(num_blocks, 2, BS, 4)  # [blocks, heads, block_size, 2 * head_size]
        self.block_tables: dict[str, list[int]] = {}

    def add(self, req_id: str, tokens: list[int], blocks: list[int]) -> None:
        self.all_token_ids[self.slots[req_id], : len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.total_len[req_id] = len(tokens)
        self.block_tables[req_id] = blocks

    def forward(self, req_id: str, positions) -> None:
        """The attention layers' KV writes: each fed token's id stands for its K and V."""
        row = self.all_token_ids[self.slots[req_id]]
        for p in positions:
            self.kv[self.block_tables[req_id][p // BS], :, p % BS, :] = float(row[p])

    def kv_tokens(self, req_id: str, length: int) -> torch.Tensor:  # [length]: the tokens whose KV the slot sees
        table = self.block_tables[req_id]
        return torch.stack([self.kv[table[p // BS], 0, p % BS, 0] for p in range(length)]).long()

    def post_update(self, req_ids, sampled: torch.Tensor) -> None:
        for i, req_id in enumerate(req_ids):
            self.all_token_ids[self.slots[req_id], self.total_len[req_id]] = sampled[i, 0]
            self.total_len[req_id] += 1


def test_two_requests_lives_keep_every_beam_slots_history_and_kv_equal_to_its_beam():
    gen = torch.Generator().manual_seed(11)
    groups_spec = [("a", 3, 5), ("b", 2, 7)]  # (R, K, P); P < BS: each beam has one private block, no full block
    prompts = {"a": [6, 7, 8, 9, 6], "b": [9, 9, 8, 7, 6, 7, 8]}
    private = {"a": [3, 4, 5], "b": [6, 7]}  # B = 1; R's own prompt blocks: a -> 1, b -> 2
    beams = {R: [beam_req_id(R, j) for j in range(k)] for R, k, _ in groups_spec}
    slot_order = ["a", "b", "x", *beams["a"], *beams["b"]]
    slots = dict(zip(slot_order, [0, 2, 1, 7, 3, 6, 4, 5]))
    runner = FakeRunner(slots, num_blocks=8)
    runner.add("x", [6, 7, 8], [0])
    runner.add("a", prompts["a"], [1])
    runner.add("b", prompts["b"], [2])
    blocks = PrivateBlocks.build([private["a"], private["b"]], beam_width=[3, 2])
    groups = BeamGroups.start([3, 2])
    reference = BeamGroups.start([3, 2])
    for t in range(L):
        if t == 0:
            entries = [("x", 3), ("a", 1), ("b", 1)]
            runner.forward("a", range(5))
            runner.forward("b", range(7))
        else:
            entries = [("x", 3), ("a", 1), ("b", 1)] + [(beam, 1) for beam in beams["a"] + beams["b"]]
            entries = [entries[i] for i in torch.randperm(len(entries), generator=gen).tolist()]
            for R, _, P in groups_spec:
                for beam in beams[R]:
                    runner.forward(beam, [P + t - 1])  # the beam's fed token, at position P + t - 1
        req_ids, cu, idx = batch_layout(entries, slots)
        batch = BeamBatch.build(req_ids, cu, idx, groups_spec, step=t, item_length=L)
        logits = 3 * torch.randn(cu[-1], V, generator=gen)  # [num_logits, V]
        allowed = torch.rand(cu[-1], V, generator=gen) < 0.6
        allowed[:, 2] = True  # never fewer than K valid tokens

        raw = beam_row_logits(logits, batch)
        reference_logprobs = beam_logprobs(logits, allowed)  # [num_logits, V], for the oracle
        apply_mask(logits, allowed)  # MaskingSampler's in-place mask
        selection = select_beams(groups, raw, logits, batch)
        sampled = torch.randint(0, V, (len(req_ids), 1), generator=gen, dtype=torch.int64)  # vLLM's sampler
        others = sampled.clone()
        write_sampled_tokens(sampled, selection)
        if t == 0:
            for R, k, P in groups_spec:
                src, dst = prompt_tail_copies(P, BS, runner.block_tables[R][0], private[R], k)
                BlockCopier(block_pages([runner.kv], 8))(torch.tensor(src), torch.tensor(dst))
        else:
            copy_token_histories(
                runner.all_token_ids, batch.beam_slots, selection.parent_slots, batch.history_end, batch.history_columns
            )
            BlockCopier(block_pages([runner.kv], 8))(blocks.sources(selection.step.parent_rank), blocks.dst)
        runner.post_update(req_ids, sampled)
        groups = selection.groups

        # the oracle: BeamGroups on the reference's log-probs, rows given as the batch's logits rows
        oracle_rows = BeamRows(torch.full((cu[-1],), -1), torch.zeros(cu[-1], dtype=torch.long))
        oracle_rows.group[batch.logits_rows] = batch.rows.group
        oracle_rows.rank[batch.logits_rows] = batch.rows.rank
        reference, _ = reference.step(reference_logprobs, oracle_rows)
        assert torch.equal(groups.scores, reference.scores)
        assert torch.equal(groups.tokens, reference.tokens) and torch.equal(groups.logprobs, reference.logprobs)

        owner = TokenLayout.EOS if t == L - 1 else TokenLayout.PAD
        for i, req_id in enumerate(req_ids):
            expected = owner if req_id in ("a", "b") else others[i, 0]
            if req_id in beams["a"] or req_id in beams["b"]:
                R = req_id.split("\x00")[0]
                g, j = (0, beams["a"].index(req_id)) if R == "a" else (1, beams["b"].index(req_id))
                expected = groups.tokens[g, j, t]
            assert sampled[i, 0] == expected, (t, req_id)

        if t == 0:  # the beams join the runner (apply_staged_writes): prompt + first token, tail KV copied
            for g, (R, _, _) in enumerate(groups_spec):
                for j, beam in enumerate(beams[R]):
                    runner.add(beam, prompts[R] + [int(groups.tokens[g, j, 0])], [private[R][j]])
        for g, (R, _, P) in enumerate(groups_spec):
            for j, beam in enumerate(beams[R]):
                slot_row = runner.all_token_ids[runner.slots[beam]]
                assert torch.equal(slot_row[:P].long(), torch.tensor(prompts[R]))
                assert torch.equal(slot_row[P : P + t + 1].long(), groups.tokens[g, j]), (t, beam)
                assert torch.equal(
                    runner.kv_tokens(beam, P + t), torch.cat([torch.tensor(prompts[R]), groups.tokens[g, j, :t]])
                )
                assert torch.equal(slot_row[P + t + 1 :], torch.full_like(slot_row[P + t + 1 :], -7))


def test_token_histories_copy_cycles_and_many_children_within_their_window():
    ids = torch.arange(6 * 10, dtype=torch.int32).view(6, 10)  # [slots, max_model_len]
    before = ids.clone()
    child = torch.tensor([0, 1, 2, 4])
    parent = torch.tensor([1, 0, 4, 4])  # a swap, and slot 4 the parent of 2 and of itself
    end = torch.tensor([6, 6, 8, 8])  # P + t: group A (slots 0, 1) P = 4, group B (2, 4) P = 6, t = 2
    copy_token_histories(ids, child, parent, end, columns=(4, 8))
    expected = before.clone()
    expected[0, 4:6], expected[1, 4:6] = before[1, 4:6], before[0, 4:6]
    expected[2, 4:8] = before[4, 4:8]  # columns 4, 5 are prompt columns of group B: equal among its beams
    assert torch.equal(ids, expected)


def test_owner_rows_get_pad_before_the_last_step_and_eos_at_it():
    req_ids, cu, idx = batch_layout(
        [("a", 1), (beam_req_id("a", 0), 1), (beam_req_id("a", 1), 1)],
        {
            "a": 0,
            beam_req_id("a", 0): 1,
            beam_req_id("a", 1): 2,
        },
    )
    for step, owner in [(1, TokenLayout.PAD), (L - 1, TokenLayout.EOS)]:
        batch = BeamBatch.build(req_ids, cu, idx, [("a", 2, 4)], step=step, item_length=L)
        logits = torch.randn(3, V, generator=torch.Generator().manual_seed(step))
        groups = BeamGroups(
            torch.tensor([2]), torch.tensor([[-1.0, -2.0]]), torch.zeros(1, 2, step).long(), torch.zeros(1, 2, step)
        )
        selection = select_beams(groups, beam_row_logits(logits, batch), logits, batch)
        sampled = torch.full((3, 2), 99)  # two columns: a runner with drafts; only column 0 is written
        write_sampled_tokens(sampled, selection)
        assert torch.equal(sampled[:, 0], torch.cat([torch.tensor([owner]), selection.step.tokens[0]]))
        assert torch.equal(sampled[:, 1], torch.full((3,), 99))


def test_each_top_k_row_keeps_one_token_when_r_carries_drafts():
    """On a server with a draft, R's row has 1 + gamma logits rows and the rejection sampler may accept a
    draft that matched R's allowed token: every row the hook writes keeps exactly one token."""
    req_ids, cu, idx = batch_layout(
        [("o", 3), ("a", 3), (beam_req_id("a", 0), 1), (beam_req_id("a", 1), 1)],
        {"o": 3, "a": 0, beam_req_id("a", 0): 1, beam_req_id("a", 1): 2},
    )
    batch = BeamBatch.build(req_ids, cu, idx, [("a", 2, 4)], step=1, item_length=L)
    assert batch.output_logits.tolist() == [1, 1, 3]  # beam 0, beam 1, then R
    logits = torch.randn(int(cu[-1]), V, generator=torch.Generator().manual_seed(0))
    groups = BeamGroups(
        torch.tensor([2]), torch.tensor([[-1.0, -2.0]]), torch.zeros(1, 2, 1).long(), torch.zeros(1, 2, 1)
    )
    selection = select_beams(groups, beam_row_logits(logits, batch), logits, batch)
    num_sampled, num_rejected = torch.tensor([2, 3, 1, 1]), torch.tensor([1, 0, 0, 0])  # "a" accepted 2 drafts
    write_sampled_counts(num_sampled, num_rejected, selection, batch)
    assert num_sampled.tolist() == [2, 1, 1, 1] and num_rejected.tolist() == [1, 2, 0, 0]  # "o" untouched


# -- patches/sample_tokens.py ------------------------------------------------------------------


def items(n: int, seed: int) -> TopKItems:
    gen = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(n, L, generator=gen)  # [n, L]
    return TopKItems(
        torch.randint(0, 100, (n, L), generator=gen), logprobs.sum(1).sort(descending=True).values, logprobs
    )


def runner_output(req_ids) -> ModelRunnerOutput:
    return ModelRunnerOutput(req_ids=list(req_ids), req_id_to_index={r: i for i, r in enumerate(req_ids)})


def patched_runner_class(output):
    class Runner:
        def sample_tokens(self, grammar_output):
            return output

    sample_tokens_patch.apply(SimpleNamespace(GPUModelRunner=Runner))
    return Runner


def test_a_step_without_a_finished_topk_request_returns_vllms_output_as_it_is():
    output = SimpleNamespace(model_runner_output=runner_output(["x", "a"]))
    runner_class = patched_runner_class(output)
    bare = runner_class()
    bare.model_state = SimpleNamespace()  # no catalog: no answers store
    assert bare.sample_tokens(None) is output
    runner = runner_class()
    runner.model_state = SimpleNamespace(padrec_topk_answers=sample_tokens_patch.TopKAnswers())
    assert runner.sample_tokens(None) is output
    assert output.model_runner_output.pooler_output is None


class FakeAsyncOutput:
    """V2's AsyncOutput as the patch sees it: ``model_runner_output``, and ``get_output`` handing it on."""

    def __init__(self, model_runner_output: ModelRunnerOutput) -> None:
        self.model_runner_output = model_runner_output
        self.waited = False

    def get_output(self) -> ModelRunnerOutput:
        self.waited = True
        return self.model_runner_output


def test_finished_topk_requests_get_their_encoded_answer_as_pooler_output():
    from vllm.v1.outputs import AsyncModelRunnerOutput

    output = FakeAsyncOutput(runner_output(["x", "a", beam_req_id("a", 0), "b"]))
    runner = patched_runner_class(output)()
    answers = sample_tokens_patch.TopKAnswers()
    runner.model_state = SimpleNamespace(padrec_topk_answers=answers)
    answers.put("a", items(3, seed=1))
    answers.put("b", items(2, seed=2))
    answers.put("gone", items(1, seed=3))  # aborted in this step: not in the output, dropped
    in_flight = runner.sample_tokens(None)
    # the executors call get_output on an AsyncModelRunnerOutput; until then nothing waits for the copies
    assert isinstance(in_flight, AsyncModelRunnerOutput) and in_flight.inner is output
    assert not output.waited and output.model_runner_output.pooler_output is None
    assert in_flight.get_output() is output.model_runner_output and output.waited
    pooled = output.model_runner_output.pooler_output
    assert pooled[0] is None and pooled[2] is None
    for index, (req_id, seed, n) in {1: ("a", 1, 3), 3: ("b", 2, 2)}.items():
        back, sent = decode_items(pooled[index], L), items(n, seed)
        assert torch.equal(back.tokens, sent.tokens) and torch.equal(back.scores, sent.scores), req_id
        assert torch.equal(back.logprobs, sent.logprobs)
    assert answers.take() == {}  # each answer is sent once
    plain = runner_output(["a"])  # a ModelRunnerOutput itself, with no AsyncOutput around it
    runner = patched_runner_class(plain)()
    runner.model_state = SimpleNamespace(padrec_topk_answers=answers)
    answers.put("a", items(1, seed=4))
    assert runner.sample_tokens(None) is plain
    assert torch.equal(decode_items(plain.pooler_output[0], L).tokens, items(1, seed=4).tokens)


def test_the_patch_is_idempotent():
    class Runner:
        def sample_tokens(self, grammar_output):
            return None

    module = SimpleNamespace(GPUModelRunner=Runner)
    sample_tokens_patch.apply(module)
    wrapped = Runner.sample_tokens
    sample_tokens_patch.apply(module)
    assert Runner.sample_tokens is wrapped and wrapped.__wrapped__.__name__ == "sample_tokens"


@pytest.mark.parametrize("n", [0, 1])
def test_answers_store_takes_each_answer_once(n):
    answers = sample_tokens_patch.TopKAnswers()
    for i in range(n):
        answers.put(f"r{i}", items(1, seed=i))
    assert len(answers.take()) == n and answers.take() == {}
