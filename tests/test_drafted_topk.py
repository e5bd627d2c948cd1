"""Top-K by drafted beams and strict verification, plain torch (vllm_padrec.decoding.drafted_topk): the
answer is the target's own beam search bit for bit, whatever the head, and the rounds add up.

Fast (CPU, a random tiny Llama target, random PAD-Rec heads, a small synthetic catalog).
"""

from __future__ import annotations

import pytest
import torch
from draft_helpers import random_head, tiny_target

from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.decoding.drafted_topk import TreeScorer, plain_topk, relaxed_topk, speculative_topk


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(SyntheticConfig(num_items=60, num_users=12, codebook_sizes=(4, 4, 4, 4)))


@pytest.mark.parametrize("k, draft_beams, gamma", [(1, 1, 1), (3, 3, 2), (4, 8, 3), (6, 12, 2)])
def test_drafted_rounds_return_the_targets_beam_search_exactly(data, k, draft_beams, gamma):
    catalog = data.catalog
    target = tiny_target(vocab_size=32)
    L = catalog.num_slots
    for seed, sample in enumerate(data.eval_samples("test", 4)[:4]):
        head = random_head(target, catalog.layout, gamma=3, seed=seed)
        scorer = TreeScorer(target, head, catalog, catalog.render_prompt(sample.history, 4))
        drafted = speculative_topk(scorer, k, L, draft_beams, gamma)
        plain = plain_topk(scorer, k, L)
        assert drafted.beams.sequences == plain.sequences
        assert torch.equal(drafted.beams.scores, plain.scores)
        assert drafted.target_passes == 1 + len(drafted.accepted)
        steps = 1 + sum(min(a + 1, L) for a in drafted.accepted)  # each round advances accepted + 1, capped
        assert steps >= L and all(0 <= a <= gamma for a in drafted.accepted)


def test_a_head_that_proposes_the_targets_beams_finishes_in_one_round(data, monkeypatch):
    """With the target's own log-probs as the draft's, every drafted level holds the target's beams."""
    catalog = data.catalog
    target = tiny_target(vocab_size=32)
    sample = data.eval_samples("test", 4)[0]
    prompt = catalog.render_prompt(sample.history, 4)
    scorer = TreeScorer(target, random_head(target, catalog.layout), catalog, prompt)
    oracle = TreeScorer(target, None, catalog, prompt)  # its passes are the draft's, not counted as the target's
    monkeypatch.setattr(scorer, "draft_logprobs", lambda items, m: oracle.target_logprobs(items))
    drafted = speculative_topk(scorer, 3, catalog.num_slots, draft_beams=3, gamma=3)
    assert drafted.accepted == [2] and drafted.target_passes == 2  # the prefill, then one round of 3 steps


def test_the_heads_proposals_follow_the_chain_speculators_alignment(data):
    """Draft log-probs after a start beam and after one drafted code equal those of decoding.speculative's
    HeadProposer (a KV-cached implementation of the same alignment) at round start p = P + m - 2."""
    from vllm_padrec.decoding.speculative import HeadProposer
    from vllm_padrec.topk.select import beam_logprobs
    from vllm_padrec.training.collect import target_hidden_states

    catalog = data.catalog
    target = tiny_target(vocab_size=32)
    head = random_head(target, catalog.layout, gamma=3, seed=5)
    prompt = catalog.render_prompt(data.eval_samples("test", 4)[0].history, 4)
    scorer = TreeScorer(target, head, catalog, prompt)
    start = tuple(catalog.item_token_ids(3)[:2])  # a start beam of m = 2 codes
    drafted = start + (catalog.item_token_ids(3)[2],)
    ours = scorer.draft_logprobs([start, drafted], start_codes=2)

    ids = torch.tensor([list(prompt) + list(drafted)])  # [1, P + 3]
    p = len(prompt) + 2 - 2
    hidden = target_hidden_states(target, ids[:, : p + 1], torch.tensor([p + 1]))  # [1, p + 1, H]
    proposer = HeadProposer(head, 1, torch.device("cpu"))
    with torch.no_grad():
        step0 = proposer.start_round(
            hidden,
            ids[:, 1 : p + 2],
            torch.arange(p + 1)[None],
            torch.ones(1, p + 1, dtype=torch.bool),
            torch.tensor([p]),
        )
        step1 = proposer.next_step(1, ids[0, p + 2 : p + 3], torch.tensor([p + 1]))
    for items, logits in ((start, step0), (drafted, step1)):
        allowed = scorer.constraint.allowed_tokens(scorer.constraint.state_after([list(items)]))
        wanted = beam_logprobs(logits.float(), allowed)[0, : allowed.shape[1]]
        torch.testing.assert_close(ours[items], wanted, rtol=1e-5, atol=1e-5)


def test_relaxed_rounds_with_the_target_as_its_own_draft_are_its_beam_search(data, monkeypatch):
    """q = p and every extension drafted: every drafted candidate is accepted, each step keeps the target's
    K best, and the rounds return the target's beam search (its sequences, scores and order)."""
    catalog = data.catalog
    target = tiny_target(vocab_size=32)
    for sample in data.eval_samples("test", 4)[:3]:
        prompt = catalog.render_prompt(sample.history, 4)
        scorer = TreeScorer(target, random_head(target, catalog.layout), catalog, prompt)
        oracle = TreeScorer(target, None, catalog, prompt)
        monkeypatch.setattr(scorer, "draft_logprobs", lambda items, m, oracle=oracle: oracle.target_logprobs(items))
        drafted = relaxed_topk(scorer, 3, catalog.num_slots, 3 * 32, 3, torch.Generator().manual_seed(0))
        plain = plain_topk(oracle, 3, catalog.num_slots)
        assert drafted.beams.sequences == plain.sequences
        # the rounds score a step's drafted tree in one forward, the plain search one level a forward: the same
        # sums, which a CPU's kernels may round apart in the last bits
        torch.testing.assert_close(drafted.beams.scores, plain.scores, rtol=0, atol=1e-5)
        assert drafted.accepted == [2] and drafted.target_passes == 2


@pytest.mark.parametrize("k, draft_beams, gamma", [(1, 2, 1), (3, 6, 2), (5, 10, 3)])
def test_relaxed_rounds_with_any_head_return_k_distinct_items_ranked_by_the_target(data, k, draft_beams, gamma):
    catalog = data.catalog
    target = tiny_target(vocab_size=32)
    generator = torch.Generator().manual_seed(1)
    for seed, sample in enumerate(data.eval_samples("test", 4)[:4]):
        head = random_head(target, catalog.layout, gamma=3, seed=seed)
        scorer = TreeScorer(target, head, catalog, catalog.render_prompt(sample.history, 4))
        drafted = relaxed_topk(scorer, k, catalog.num_slots, draft_beams, gamma, generator)
        items = catalog.items_of_tokens([list(s) for s in drafted.beams.sequences])
        assert len(items) == k and None not in items and len(set(items)) == k
        assert drafted.beams.scores.tolist() == sorted(drafted.beams.scores.tolist(), reverse=True)
        assert drafted.target_passes == 1 + len(drafted.accepted) <= catalog.num_slots
