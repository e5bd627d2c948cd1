"""Chain speculative decoding (decoding.speculative) and its verifier (decoding.rejection).

Fast (CPU: a briefly trained tiny target with briefly trained drafts, random drafts, and a random
target over a 12-token catalog for the statistical tests):

    python -m pytest tests/test_speculative.py -q

Greedy speculation must return ``greedy_lists`` token for token; sampling must return lists
distributed as the target's own constrained samples (chi-square against the exact distribution,
which is computed by enumerating every list of the tiny catalog).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from draft_helpers import random_head
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

import vllm_padrec.decoding.rejection as rejection
import vllm_padrec.decoding.speculative as speculative
from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.constraint import ListConstraint, apply_mask
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.decoding import greedy_lists, length_buckets
from vllm_padrec.decoding.speculative import SpeculationStats, speculative_lists
from vllm_padrec.draft import MedusaConfig, MedusaHeads, PadRecDraftHead, load_draft
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import load_checkpoint
from vllm_padrec.target.train import train_target
from vllm_padrec.training import DraftTrainConfig, train_draft
from vllm_padrec.training.collect import SequenceBatch
from vllm_padrec.training.losses import unrolled_features

NUM_ITEMS = 4  # items per list of the trained target
TRAINED = ("padrec", "eagle", "medusa")
RANDOM = ("random_padrec", "random_eagle", "random_medusa")


def random_medusa(target, num_heads: int = 5, seed: int = 0, scale: float = 0.3) -> MedusaHeads:
    V, H = target.get_output_embeddings().weight.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = MedusaHeads(MedusaConfig(hidden_size=H, vocab_size=V, num_heads=num_heads))
        with torch.no_grad():
            for p in heads.parameters():
                p.copy_(scale * torch.randn_like(p))
    return heads.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A briefly trained tiny target, its plain greedy lists, trained drafts (that agree with the
    target often) and random drafts (mostly rejected)."""
    data = generate_synthetic(SyntheticConfig(num_items=120, num_users=150, codebook_sizes=(4, 4, 4, 4), seed=5))
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, max_history=6, list_items=NUM_ITEMS, epochs=2)
    out = tmp_path_factory.mktemp("spec")
    target = load_checkpoint(train_target(recipe, data, out / "target", progress=False).checkpoint).model
    layout = data.catalog.layout
    drafts = {}
    for method in TRAINED:
        result = train_draft(
            method,
            target,
            data,
            DraftTrainConfig.tiny(num_draft_steps=4, max_steps=60),
            out / method,
            "cpu",
            layout=layout,
            progress=False,
        )
        drafts[method] = load_draft(result.checkpoint, target).eval()
    drafts["random_padrec"] = random_head(target, layout, "padrec", seed=1)
    drafts["random_eagle"] = random_head(target, layout, "eagle", seed=2)
    drafts["random_medusa"] = random_medusa(target, seed=3)
    histories = [s.history for s in data.eval_samples("test", recipe.max_history)][:30]
    greedy = greedy_lists(target, data.catalog, histories, NUM_ITEMS, batch_size=16)
    return target, data.catalog, histories, greedy, drafts


# -- greedy: token for token ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", TRAINED + RANDOM)
@pytest.mark.parametrize("gamma,batch_size", [(1, 30), (3, 7), (4, 1)])
def test_greedy_speculation_equals_greedy(world, method, gamma, batch_size):
    target, catalog, histories, greedy, drafts = world
    lists, token_ids, stats = speculative_lists(
        target, drafts[method], catalog, histories, NUM_ITEMS, gamma, batch_size=batch_size
    )
    assert lists == greedy
    assert token_ids == [catalog.render_completion(items) for items in greedy]
    assert 1.0 <= stats.mean_accepted_length <= gamma + 1
    assert stats.tokens == sum(len(t) for t in token_ids)


@pytest.mark.parametrize("method", ["padrec", "eagle", "random_padrec", "medusa"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_leaving_out_the_forced_draft_steps_keeps_the_lists_and_saves_forwards(world, method, batch_size):
    """skip_forced_drafts: the draft steps whose draft the constraint forces run no head forward (one request at
    a time, exactly the steps counted as skipped), and greedy lists stay the target's own."""
    target, catalog, histories, greedy, drafts = world
    run = lambda skip: speculative_lists(  # noqa: E731
        target, drafts[method], catalog, histories, NUM_ITEMS, 4, batch_size=batch_size, skip_forced_drafts=skip
    )
    plain_lists, _, plain = run(False)
    lists, token_ids, skipped = run(True)
    assert lists == greedy == plain_lists
    assert token_ids == [catalog.render_completion(items) for items in greedy]
    assert plain.decode_steps_skipped == 0 and plain.skipped_step_share == 0.0
    if method == "medusa":  # its heads all run in step 0: no step to leave out, nothing counted as run
        assert skipped.draft_calls == plain.draft_calls
        return
    assert 0.2 < skipped.skipped_step_share < 0.8  # separators and deep codes are forced, first codes are not
    if batch_size == 1:  # head forwards: step 0 of each round, and each step run (a skipped one runs none)
        assert plain.draft_calls == plain.rounds + plain.decode_steps_run
        assert skipped.draft_calls == skipped.rounds + skipped.decode_steps_run


@pytest.mark.parametrize("method", ["padrec", "random_padrec", "medusa"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_a_forced_tail_keeps_the_lists_adds_accepted_tokens_and_runs_no_head(world, method, batch_size):
    """forced_tail: E draft slots after the head's gamma, filled from the constraint alone. Greedy lists stay the
    target's own; the head runs the same forwards as without a tail; tail slots are proposed in rounds whose
    budget allows them and accepted where the chain before them was (a forced token always is)."""
    target, catalog, histories, greedy, drafts = world
    run = lambda tail: speculative_lists(  # noqa: E731
        target, drafts[method], catalog, histories, NUM_ITEMS, 3, batch_size=batch_size, forced_tail=tail
    )
    _, _, plain = run(0)
    lists, token_ids, tailed = run(2)
    assert lists == greedy
    assert token_ids == [catalog.render_completion(items) for items in greedy]
    assert tailed.gamma == 5 and tailed.forced_tail == 2 and len(tailed.accepted_by_step) == 5
    assert tailed.drafted_by_step[3] > 0 and tailed.accepted_by_step[3] > 0  # the tail's first slot
    # a tail slot is accepted only after the head's drafts were: never more often than step 2
    assert tailed.accepted_by_step[3] <= tailed.accepted_by_step[2]
    if method != "random_padrec":  # every head draft accepted often enough for the tail to add tokens
        assert tailed.mean_accepted_length > plain.mean_accepted_length
    if batch_size == 1 and method != "medusa":  # head forwards: step 0 of each round and gamma - 1 more
        assert tailed.draft_calls == tailed.rounds + tailed.decode_steps_run
        assert tailed.decode_steps_run <= 2 * tailed.rounds


def test_a_forced_tail_token_is_the_only_allowed_one_else_the_first():
    """_BatchDecoder._tail_draft: from the allowed tokens alone; one-hot over the model's vocabulary when sampling."""
    allowed = torch.tensor([[False, False, True, False], [False, True, True, True]])  # [B, V]
    decoder = object.__new__(speculative._BatchDecoder)
    decoder.temperature = 0.0
    tokens, probs = decoder._tail_draft(allowed, 6)
    assert tokens.tolist() == [2, 1] and probs is None
    decoder.temperature = 1.0
    tokens, probs = decoder._tail_draft(allowed, 6)
    assert probs.shape == (2, 6) and probs.sum(-1).tolist() == [1.0, 1.0] and probs[1, 1] == 1.0


def test_trained_drafts_are_accepted_more_than_random_ones(world):
    target, catalog, histories, _, drafts = world
    length = {
        m: speculative_lists(target, d, catalog, histories, NUM_ITEMS, 4)[2].mean_accepted_length
        for m, d in drafts.items()
    }
    for method in TRAINED:
        assert length[method] > 2.5, length  # 4-token rounds mostly succeed
        assert length[method] > length["random_" + method] + 0.5, length


@pytest.mark.parametrize("options", ["ban_history", "repeats", "min_items"])
def test_greedy_equality_holds_under_every_list_option(world, options):
    target, catalog, histories, _, drafts = world
    kwargs, constraint = {}, None
    if options == "ban_history":
        kwargs = dict(ban_history=True)
    elif options == "repeats":
        kwargs = dict(no_repeat=False)
    else:  # any length >= 2: the token budget N * (L + 1) cuts the list, as greedy_lists does
        constraint = ListConstraint(catalog, min_items=2, no_repeat=True)
    for method in ("padrec", "random_medusa"):
        expected = greedy_lists(target, catalog, histories, NUM_ITEMS, constraint, batch_size=8, **kwargs)
        lists, token_ids, _ = speculative_lists(
            target, drafts[method], catalog, histories, NUM_ITEMS, 3, constraint, batch_size=8, **kwargs
        )
        assert lists == expected, method
        assert all(len(t) <= NUM_ITEMS * (catalog.num_slots + 1) for t in token_ids)


class Recorder(speculative.Proposer):
    """Wraps a proposer and records, per call: (step, position, draft logits [V'], input token or None)."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log
        log.append([])  # one list of calls per batch (batch_size=1: per prompt)

    def start_round(self, hidden, next_tokens, positions, valid, last):
        assert hidden.shape[0] == 1
        logits = self.inner.start_round(hidden, next_tokens, positions, valid, last)
        self.log[-1].append((0, int(positions[0, last[0]]), logits[0].clone(), None))
        return logits

    def next_step(self, step, tokens, positions, run=None):
        logits = self.inner.next_step(step, tokens, positions, run)
        self.log[-1].append((step, int(positions[0]), logits[0].clone(), int(tokens[0])))
        return logits

    def end_round(self):
        self.inner.end_round()

    def select(self, rows):
        self.inner.select(rows)


@pytest.mark.parametrize("method", ["padrec", "random_padrec", "medusa"])
def test_draft_inputs_are_the_training_inputs(world, method, monkeypatch):
    """Each draft step's logits at inference (KV cache with rejected columns as holes) equal the
    training computation on the final sequence (``unrolled_features`` / Medusa on h_p), wherever the
    step's earlier drafts were accepted."""
    target, catalog, histories, _, drafts = world
    draft, log = drafts[method], []
    make = speculative.make_proposer
    monkeypatch.setattr(speculative, "make_proposer", lambda *a: Recorder(make(*a), log))
    chosen = histories[:6]
    _, token_ids, _ = speculative_lists(target, draft, catalog, chosen, NUM_ITEMS, 4, batch_size=1)
    log = log[1:]  # the first proposer is the up-front type check; then one per batch, in bucket order
    order = [rows[0] for rows in length_buckets([catalog.render_prompt(h) for h in chosen], 1)]
    gamma, compared = 4, 0
    for row, calls in zip(order, log):
        history, tokens = chosen[row], token_ids[row]
        seq = catalog.render_prompt(history) + tokens
        ids = torch.tensor([seq])  # [1, n]
        with torch.no_grad():
            hidden = target.model(input_ids=ids).last_hidden_state  # [1, n, H]
            if isinstance(draft, PadRecDraftHead):
                batch = SequenceBatch(ids, torch.tensor([len(seq)]), torch.tensor([len(seq) - len(tokens)]), hidden)
                features = list(unrolled_features(draft, batch, gamma))  # gamma x [1, n, H]
        round_start, inputs = None, []
        for step, position, logits, token in calls:
            if step == 0:
                round_start, inputs = position, []
            else:
                inputs.append(token)
            assert position == round_start + step
            if inputs != seq[round_start + 2 : round_start + 2 + step]:
                continue  # an earlier draft of the round was rejected: training never sees this input
            with torch.no_grad():
                if isinstance(draft, PadRecDraftHead):
                    expected = draft.compute_logits(features[step][0, position])  # [V']
                else:
                    expected = draft(hidden[0, round_start])[step]  # [V']
            # fp32 noise grows with the random head's large activations: tolerance relative to the logits' scale
            scale = float(expected.abs().max())
            torch.testing.assert_close(
                logits,
                expected,
                rtol=1e-4,
                atol=1e-4 * max(1.0, scale),
                msg=lambda m, round_start=round_start, step=step: f"round {round_start}, step {step}: {m}",
            )
            compared += 1
    assert compared > 40


def test_stats_add_up_and_merge(world):
    target, catalog, histories, _, drafts = world
    a = speculative_lists(target, drafts["padrec"], catalog, histories[:10], NUM_ITEMS, 3, batch_size=4)
    b = speculative_lists(target, drafts["padrec"], catalog, histories[10:], NUM_ITEMS, 3, batch_size=4)
    whole = speculative_lists(target, drafts["padrec"], catalog, histories, NUM_ITEMS, 3, batch_size=4)
    stats = a[2].merge(b[2])
    for name in (
        "rounds",
        "round_tokens",
        "accepted",
        "drafted",
        "tokens",
        "lists",
        "target_passes",
        "drafted_by_step",
        "reached_by_step",
        "accepted_by_step",
        "reached_by_slot",
        "accepted_by_slot",
        "length_counts",
    ):
        assert getattr(stats, name) == getattr(whole[2], name), name
    s = whole[2]
    assert s.lists == len(histories) and s.tokens == len(histories) * NUM_ITEMS * (catalog.num_slots + 1)
    assert s.target_passes == s.rounds + s.lists  # one prefill per list, one pass per round
    assert s.round_tokens == s.tokens - s.lists  # the first token of each list comes from the prefill
    assert s.mean_accepted_length == pytest.approx(s.round_tokens / s.rounds)
    # vLLM's definitions: every round adds one token; per position over rounds, not over proposed drafts
    closing_rounds = s.rounds + s.accepted - s.round_tokens  # rounds whose accepted drafts closed the list
    assert closing_rounds >= 0 and s.vllm_acceptance_length == pytest.approx(1 + s.accepted / s.rounds)
    assert s.vllm_acceptance_length >= s.mean_accepted_length
    assert sum(s.vllm_acceptance_by_position) == pytest.approx(s.vllm_acceptance_length - 1)
    assert all(v <= r for v, r in zip(s.vllm_acceptance_by_position, s.acceptance_rate_by_step))
    assert SpeculationStats.from_dict(s.to_dict()) == s  # JSON records give the same counts back
    assert sum(s.length_counts) == s.rounds and sum(n * c for n, c in enumerate(s.length_counts)) == s.round_tokens
    assert sum(s.accepted_by_step) == s.accepted == sum(s.accepted_by_slot)
    assert s.drafted_by_step[0] == s.reached_by_step[0] == s.rounds
    assert all(a <= r <= d for a, r, d in zip(s.accepted_by_step, s.reached_by_step, s.drafted_by_step))
    assert s.reached_by_step[1:] == s.accepted_by_step[:-1]  # reached step k+1 <=> accepted step k
    assert s.acceptance_by_slot[catalog.num_slots] == 1.0  # <sep> is forced while items are missing
    assert (a[2] + b[2]).to_dict()["acceptance_by_slot"].keys() == {"slot0", "slot1", "slot2", "slot3", "sep", "other"}
    assert SpeculationStats(2, 4).merge(SpeculationStats(4, 4)).gamma == 4


def test_wrong_draft_or_gamma_is_refused(world):
    target, catalog, histories, _, drafts = world
    with pytest.raises(ValueError, match="Medusa heads"):
        speculative_lists(target, drafts["random_medusa"], catalog, histories, NUM_ITEMS, 6)
    with pytest.raises(TypeError, match="PadRecDraftHead"):
        speculative_lists(target, torch.nn.Linear(2, 2), catalog, histories, NUM_ITEMS, 2)
    with pytest.raises(ValueError, match="gamma"):
        speculative_lists(target, drafts["padrec"], catalog, histories, NUM_ITEMS, 0)


def test_sampled_lists_are_valid(world):
    target, catalog, histories, _, drafts = world
    generator = torch.Generator().manual_seed(0)
    lists, token_ids, stats = speculative_lists(
        target,
        drafts["padrec"],
        catalog,
        histories,
        NUM_ITEMS,
        3,
        temperature=1.0,
        generator=generator,
        ban_history=True,
    )
    for items, tokens, history in zip(lists, token_ids, histories):
        assert len(items) == NUM_ITEMS == len(set(items)) and not set(items) & set(history)
        assert tokens == catalog.render_completion(items)
    assert stats.mean_accepted_length > 1.5


# -- sampling: the output distribution is the target's ------------------------------------------------------
def chi2_pvalue(counts, probs) -> float:
    """Chi-square goodness of fit of ``counts`` to ``probs`` (cells with probability 0 must be empty)."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    assert counts[probs == 0].sum() == 0, "a token of probability 0 was emitted"
    return chisquare(counts[probs > 0], counts.sum() * probs[probs > 0] / probs.sum()).pvalue


def test_rejection_step_reproduces_the_target_distribution():
    """One draft step, many rows: the emitted token (accepted draft or recovered) follows p, and the
    bonus after an acceptance follows p_1; wrong acceptance or a skipped residual does not."""
    p = torch.tensor([[0.05, 0.5, 0.05, 0.3, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]])  # p_0, p_1
    q = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.1, 0.0])  # q_0: far from p_0
    B = 100_000

    def emitted(accept_fn=None, residual_fn=None):
        generator = torch.Generator().manual_seed(0)
        draft = torch.multinomial(q, B, replacement=True, generator=generator)[:, None]  # [B, 1]
        with pytest.MonkeyPatch.context() as mp:
            if accept_fn:
                mp.setattr(rejection, "acceptance_probability", accept_fn)
            if residual_fn:
                mp.setattr(rejection, "residual_distribution", residual_fn)
            n, token = rejection.rejection_verify(
                draft, q.expand(B, 1, 6), p.expand(B, 2, 6), torch.ones(B, dtype=torch.long), generator
            )
        first = torch.where(n == 1, draft[:, 0], token)  # [B]
        return first, token[n == 1]

    first, bonus = emitted()
    assert chi2_pvalue(torch.bincount(first, minlength=6), p[0]) > 1e-3
    assert chi2_pvalue(torch.bincount(bonus, minlength=6), p[1]) > 1e-3
    wrong_accept = lambda pd, qd: (qd / pd).clamp(max=1.0)  # noqa: E731
    skip_residual = lambda pp, qq: pp  # noqa: E731
    for kwargs in (dict(accept_fn=wrong_accept), dict(residual_fn=skip_residual)):
        first, _ = emitted(**kwargs)
        assert chi2_pvalue(torch.bincount(first, minlength=6), p[0]) < 1e-6


@pytest.fixture(scope="module")
def tiny_world():
    """A random target over a 12-token catalog (6 items of 2 codes): every 2-item list enumerable."""
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 2], [2, 1], [2, 2]])
    catalog = ItemCatalog([f"i{n}" for n in range(6)], codes, codebook_sizes=(3, 3), name="tiny")
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        initializer_range=0.15,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        target = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    drafts = {
        "padrec": random_head(target, catalog.layout, "padrec", gamma=3, seed=5),
        "medusa": random_medusa(target, num_heads=3, seed=6, scale=0.15),
    }
    return target, catalog, drafts


def exact_list_distribution(target, catalog, history, num_items, temperature) -> dict[tuple, float]:
    """P(list tokens) under the target's own constrained sampling, for every possible list."""
    constraint = ListConstraint(catalog, num_items=num_items, no_repeat=True)
    prompt = catalog.render_prompt(history)
    lists = [catalog.render_completion(items) for items in itertools.permutations(range(len(catalog)), num_items)]
    ids = torch.tensor([prompt + tokens[:-1] for tokens in lists])  # [S, P + n - 1]
    with torch.no_grad():
        logits = target(input_ids=ids).logits[:, len(prompt) - 1 :].float()  # [S, n, V']
    state = constraint.initial_state(len(lists))
    total = torch.zeros(len(lists))
    for t in range(len(lists[0])):
        token = torch.tensor([tokens[t] for tokens in lists])  # [S]
        masked = apply_mask(logits[:, t].clone(), constraint.allowed_tokens(state))
        total += torch.log_softmax(masked / temperature, -1).gather(1, token[:, None])[:, 0]
        state = constraint.advance(state, token)
    probs = total.exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-4)
    return {tuple(tokens): float(p) for tokens, p in zip(lists, probs)}


def sampled_pvalue(
    target, draft, catalog, temperature, samples, seed=0, skip_forced_drafts=False, forced_tail=0
) -> float:
    history = [0, 3]
    exact = exact_list_distribution(target, catalog, history, 2, temperature)
    generator = torch.Generator().manual_seed(seed)
    _, token_ids, stats = speculative_lists(
        target,
        draft,
        catalog,
        [history] * samples,
        2,
        3,
        temperature=temperature,
        generator=generator,
        batch_size=samples,
        skip_forced_drafts=skip_forced_drafts,
        forced_tail=forced_tail,
    )
    assert (stats.decode_steps_skipped > 0) == skip_forced_drafts
    keys = list(exact)
    observed = np.zeros(len(keys))
    index = {k: n for n, k in enumerate(keys)}
    for tokens in token_ids:
        observed[index[tuple(tokens)]] += 1
    expected = np.array([exact[k] for k in keys]) * samples
    big = expected >= 5  # pool the rare lists into one cell
    observed = np.append(observed[big], observed[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert 1.05 < stats.mean_accepted_length < 3.5 + forced_tail  # drafts are neither always nor never accepted
    return chi2_pvalue(observed, expected)


@pytest.mark.parametrize("method,temperature", [("padrec", 1.0), ("medusa", 0.7)])
def test_speculative_sampling_matches_the_target_distribution(tiny_world, method, temperature):
    target, catalog, drafts = tiny_world
    assert sampled_pvalue(target, drafts[method], catalog, temperature, samples=20_000) > 1e-3


def test_sampling_with_the_forced_draft_steps_left_out_matches_the_target_distribution(tiny_world):
    """A left-out step's draft is forced, its draft distribution one-hot: rejection sampling stays exact."""
    target, catalog, drafts = tiny_world
    pvalue = sampled_pvalue(target, drafts["padrec"], catalog, 1.0, samples=20_000, skip_forced_drafts=True)
    assert pvalue > 1e-3


def test_sampling_with_a_forced_tail_matches_the_target_distribution(tiny_world):
    """A tail draft's distribution is one-hot (its guess included): rejection sampling stays exact."""
    target, catalog, drafts = tiny_world
    pvalue = sampled_pvalue(target, drafts["padrec"], catalog, 1.0, samples=20_000, forced_tail=2)
    assert pvalue > 1e-3


@pytest.mark.parametrize("mistake", ["accept_q_over_p", "no_residual"])
def test_the_statistical_test_catches_a_wrong_verifier(tiny_world, mistake, monkeypatch):
    target, catalog, drafts = tiny_world
    if mistake == "accept_q_over_p":
        monkeypatch.setattr(rejection, "acceptance_probability", lambda pd, qd: (qd / pd).clamp(max=1.0))
    else:
        monkeypatch.setattr(rejection, "residual_distribution", lambda p, q: p)
    assert sampled_pvalue(target, drafts["padrec"], catalog, 1.0, samples=8_000) < 1e-6


def test_a_row_left_out_of_a_draft_step_keeps_its_feature_and_gets_a_hole(world):
    """HeadProposer.next_step with ``run``: the rows run move on to the step's feature and a live KV column,
    a row left out keeps its last feature (the stand-in) and a hole; with no row to run the head does not run."""
    target, catalog, _, _, drafts = world
    proposer = speculative.HeadProposer(drafts["padrec"], 2, torch.device("cpu"))
    H = target.config.hidden_size
    hidden = torch.randn(2, 3, H)
    tokens = torch.tensor([[5, 6, 7], [5, 6, 8]])
    positions = torch.arange(3).expand(2, 3)
    proposer.start_round(hidden, tokens, positions, torch.ones(2, 3, dtype=torch.bool), torch.tensor([2, 2]))
    before, calls = proposer.feature.clone(), proposer.calls
    proposer.next_step(1, torch.tensor([9, 9]), torch.tensor([3, 3]), torch.tensor([True, False]))
    assert not torch.equal(proposer.feature[0], before[0]) and torch.equal(proposer.feature[1], before[1])
    assert proposer.cache.keep[:, -1].tolist() == [True, False] and proposer.calls == calls + 1
    logits = proposer.next_step(2, torch.tensor([9, 9]), torch.tensor([4, 4]), torch.tensor([False, False]))
    assert proposer.calls == calls + 1 and proposer.cache.keep.shape[1] == 4  # no forward, no column
    assert logits.shape == proposer.logits.shape
    proposer.end_round()
    assert proposer.cache.keep.shape[1] == 3  # the round's step-k columns dropped, the skipped one never written
