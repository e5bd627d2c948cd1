"""Reference decoders: constrained greedy lists and constrained top-K beam search over one item."""

import pytest
import torch

from vllm_padrec.constraint import ListConstraint, apply_mask
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.decoding import beam_search_items, greedy_lists, length_buckets
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import load_checkpoint
from vllm_padrec.target.train import train_target

NUM_ITEMS = 4  # items per greedy list


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained tiny target (peaked, realistic distributions) and its data."""
    data = generate_synthetic(SyntheticConfig(num_items=120, num_users=150, codebook_sizes=(4, 4, 4, 4), seed=5))
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, max_history=6, list_items=NUM_ITEMS, epochs=2)
    result = train_target(recipe, data, tmp_path_factory.mktemp("target"), progress=False)
    model = load_checkpoint(result.checkpoint).model
    histories = [s.history for s in data.eval_samples("test", recipe.max_history)][:24]
    return model, data.catalog, histories


def item_logprobs(model, catalog, history, items) -> torch.Tensor:  # [len(items)]
    """Summed log-probabilities of each item's L tokens after the prompt, by one full forward."""
    prompt = catalog.render_prompt(history)
    ids = torch.tensor([prompt + catalog.item_token_ids(i) for i in items])  # [I, T + L]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # [I, T + L, V']
    L, T = catalog.num_slots, len(prompt)
    logprobs = torch.log_softmax(logits[:, T - 1 : T - 1 + L], -1)  # [I, L, V']
    return logprobs.gather(2, ids[:, T:, None]).squeeze(2).sum(1)


def naive_greedy(model, catalog, history, num_items) -> list[int]:
    """Batch of one, full forward per token, no KV cache."""
    constraint = ListConstraint(catalog, num_items=num_items, no_repeat=True)
    state = constraint.initial_state(1)
    ids = catalog.render_prompt(history)
    written = []
    for _ in range(num_items * (catalog.num_slots + 1) - 1):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + written])).logits[:, -1].float()  # [1, V']
        token = apply_mask(logits, constraint.allowed_tokens(state)).argmax(-1)  # [1]
        state = constraint.advance(state, token)
        written.append(int(token))
    return catalog.parse_completion(written)


def test_length_buckets_group_equal_lengths_in_bounded_batches():
    prompts = [[0] * n for n in (3, 5, 3, 3, 5, 7)]
    batches = list(length_buckets(prompts, batch_size=2))
    assert sorted(r for b in batches for r in b) == list(range(6))
    assert all(len(b) <= 2 and len({len(prompts[r]) for r in b}) == 1 for b in batches)


def test_greedy_lists_are_valid_and_of_the_requested_length(trained):
    model, catalog, histories = trained
    lists = greedy_lists(model, catalog, histories, NUM_ITEMS, batch_size=5)
    assert len(lists) == len(histories)
    for items in lists:
        assert len(items) == NUM_ITEMS and len(set(items)) == NUM_ITEMS
        assert all(0 <= i < len(catalog) for i in items)
    banned = greedy_lists(model, catalog, histories, NUM_ITEMS, batch_size=5, ban_history=True)
    for items, history in zip(banned, histories):
        assert len(items) == NUM_ITEMS and not set(items) & set(history)


def test_batched_cached_greedy_equals_one_by_one_full_forward(trained):
    model, catalog, histories = trained
    lists = greedy_lists(model, catalog, histories[:6], NUM_ITEMS, batch_size=4)
    assert lists == [naive_greedy(model, catalog, h, NUM_ITEMS) for h in histories[:6]]


def test_beam_returns_k_distinct_items_best_first_with_true_logprobs(trained):
    model, catalog, histories = trained
    K = 6
    ranked = beam_search_items(model, catalog, histories, beam_width=K, batch_size=4)
    for history, beams in zip(histories, ranked):
        items = [i for i, _ in beams]
        scores = torch.tensor([s for _, s in beams])
        assert len(items) == K and len(set(items)) == K and all(0 <= i < len(catalog) for i in items)
        assert torch.all(scores[:-1] >= scores[1:])
        torch.testing.assert_close(scores, item_logprobs(model, catalog, history, items), rtol=0, atol=1e-4)


def test_beam_of_width_one_is_greedys_first_item(trained):
    model, catalog, histories = trained
    lists = greedy_lists(model, catalog, histories, NUM_ITEMS, batch_size=8)
    top1 = beam_search_items(model, catalog, histories, beam_width=1, batch_size=8)
    assert [b[0][0] for b in top1] == [items[0] for items in lists]
    wide = beam_search_items(model, catalog, histories, beam_width=5, batch_size=8)
    for narrow, beams in zip(top1, wide):  # a wider beam never finds a worse best item
        assert beams[0][1] >= narrow[0][1] - 1e-5


def test_beam_as_wide_as_the_catalog_is_exact_top_k(trained):
    model, catalog, histories = trained
    N = len(catalog)
    ranked = beam_search_items(model, catalog, histories[:3], beam_width=N, batch_size=2)
    for history, beams in zip(histories[:3], ranked):
        exact = item_logprobs(model, catalog, history, list(range(N)))  # [N]
        assert sorted(i for i, _ in beams) == list(range(N))
        scores = torch.tensor([s for _, s in beams])
        torch.testing.assert_close(scores, exact.sort(descending=True).values, atol=1e-4, rtol=0)


def test_beam_wider_than_the_catalog_less_the_history_returns_every_allowed_item(trained):
    # K = N with the history banned: fewer than K items are left, so dead beams run to the end and are dropped
    model, catalog, histories = trained
    N = len(catalog)
    ranked = beam_search_items(model, catalog, histories[:3], beam_width=N, batch_size=2, ban_history=True)
    for history, beams in zip(histories[:3], ranked):
        allowed = sorted(set(range(N)) - set(history))
        assert sorted(i for i, _ in beams) == allowed
        scores = torch.tensor([s for _, s in beams])
        exact = item_logprobs(model, catalog, history, allowed)  # [N - |history|]
        torch.testing.assert_close(scores, exact.sort(descending=True).values, atol=1e-4, rtol=0)


def test_a_constraint_for_lists_is_refused_by_beam_search(trained):
    model, catalog, histories = trained
    with pytest.raises(ValueError, match="num_items=1"):
        beam_search_items(model, catalog, histories, 3, constraint=ListConstraint(catalog, num_items=2))
