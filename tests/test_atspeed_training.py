"""AtSpeed's draft training on the target's own top-K beams (issue 13, training item): the data, the catalog's
allowed tokens along it, the top-K recall it reports, and the trainer with ``objective="atspeed_s"``.

Fast (CPU, a random tiny Llama target, a small synthetic catalog):

    python -m pytest tests/test_atspeed_training.py -q
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from draft_helpers import small_catalog_data, tiny_target

from vllm_padrec.constraint import ListConstraint
from vllm_padrec.decoding import beam_search_items
from vllm_padrec.training import DraftTrainConfig, FeatureSource, LossWeights, losses, train_draft
from vllm_padrec.training.atspeed_losses import ALPHA, topk_recall
from vllm_padrec.training.collect import TrainSequence
from vllm_padrec.training.losses import TopKTerms, _grouped_tvd, unrolled_draft_loss, unrolled_features
from vllm_padrec.training.topk_data import (
    batch_groups,
    beam_groups,
    completion_allowed,
    topk_beam_sequences,
    training_histories,
)
from vllm_padrec.training.trainer import batch_indices, split_holdout, training_units

K = 5
VOCAB = 32


@pytest.fixture(scope="module")
def data():
    return small_catalog_data(VOCAB)


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def histories(data):
    return training_histories(data, max_history=4, limit=12)


def test_training_histories_are_each_users_training_items_but_the_last(data):
    every = training_histories(data, max_history=3)
    users = [seq for seq in data.users.values() if len(seq.train) >= 2]
    assert every == [seq.train[:-1][-3:] for seq in users]
    drawn = training_histories(data, max_history=3, limit=7, seed=1)
    assert len(drawn) == 7 and all(h in every for h in drawn)
    assert drawn == training_histories(data, max_history=3, limit=7, seed=1)


def test_topk_sequences_are_the_prompt_and_each_of_the_targets_top_k_items(data, target, histories):
    catalog = data.catalog
    sequences = topk_beam_sequences(target, catalog, histories, K, max_history=4, progress=False)
    ranked = beam_search_items(target, catalog, histories, K, max_history=4)
    assert len(sequences) == sum(len(items) for items in ranked) == K * len(histories)
    expected = [
        (tuple(catalog.render_prompt(h, 4)) + tuple(catalog.item_token_ids(item)), len(catalog.render_prompt(h, 4)))
        for h, items in zip(histories, ranked)
        for item, _ in items
    ]
    assert [(s.token_ids, s.prompt_len) for s in sequences] == expected


def brute_force_allowed(catalog, codes_before: list[int]) -> set[int]:
    """The tokens that continue ``codes_before`` (code tokens of slots 0 ..) towards some catalog item."""
    j = len(codes_before)
    return {
        catalog.item_token_ids(i)[j] for i in range(len(catalog)) if catalog.item_token_ids(i)[:j] == list(codes_before)
    }


def test_allowed_tokens_along_the_beams_are_the_catalogs_continuations(data, target, histories):
    """Row q allows, for x_{q+2} = code j of the item, exactly the codes that continue codes 0 .. j-1 to an
    item (brute force over the catalog); every other row allows every token."""
    catalog = data.catalog
    sequences = topk_beam_sequences(target, catalog, histories[:4], K, max_history=4, progress=False)
    source = FeatureSource(target, sequences, "cpu", progress=False)
    batch = source.batch(range(len(sequences)))
    allowed = completion_allowed(ListConstraint(catalog, num_items=1), batch)  # [B, T, V]
    B, T, V = allowed.shape
    L = catalog.num_slots
    for b, seq in enumerate(sequences):
        P = seq.prompt_len
        for q in range(T):
            j = q + 2 - P
            if 0 <= j < L and q + 2 < len(seq.token_ids):
                wanted = brute_force_allowed(catalog, list(seq.token_ids[P : P + j]))
                assert set(torch.nonzero(allowed[b, q]).flatten().tolist()) == wanted, (b, q)
                assert seq.token_ids[q + 2] in wanted
            else:
                assert bool(allowed[b, q].all()), (b, q)


def test_topk_recall_counts_the_targets_top_k_allowed_tokens_that_the_draft_ranks_top_k():
    allowed = torch.tensor(
        [[True, True, True, True, True, False], [False, False, True, False, False, False]]
    )  # [2, 6]: row 0 allows five tokens, row 1 one
    target = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 9.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])  # top-2 allowed: 1, 3
    draft = torch.tensor([[0.0, 1.0, 2.0, 6.0, 5.0, 9.0], [9.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # top-2 allowed: 3, 4
    torch.testing.assert_close(topk_recall(draft, target, allowed, 2), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(topk_recall(target, target, allowed, 2), torch.tensor([1.0, 1.0]))
    # the 9.0 on a refused token is never a candidate: with K = 1, the draft's best allowed token is 3
    torch.testing.assert_close(topk_recall(draft, target, allowed, 1), torch.tensor([0.0, 1.0]))


def test_the_atspeed_objective_needs_top_k_data_and_an_unrolled_head(data, target, tmp_path):
    for objective in ("atspeed_s", "atspeed_r"):
        with pytest.raises(ValueError, match="needs topk >= 1"):
            DraftTrainConfig.tiny(objective=objective)
    with pytest.raises(ValueError, match="objective must be one of"):
        DraftTrainConfig.tiny(objective="atspeed")
    config = DraftTrainConfig.tiny(topk=K, objective="atspeed_s", max_steps=2)
    with pytest.raises(ValueError, match="Medusa trains by distillation"):
        train_draft("medusa", target, data, config, tmp_path, "cpu", progress=False)
    too_deep = DraftTrainConfig.tiny(topk=K, num_draft_steps=4, max_steps=2)
    with pytest.raises(ValueError, match="3 draft positions per item"):
        train_draft("padrec", target, data, too_deep, tmp_path, "cpu", progress=False)


@pytest.mark.parametrize("objective", ["distill", "atspeed_s", "atspeed_r"])
def test_each_objective_trains_on_the_top_k_beams_and_reports_top_k_recall(data, target, objective, tmp_path):
    config = DraftTrainConfig.tiny(topk=K, topk_users=24, objective=objective, max_steps=20, holdout_fraction=0.2)
    result = train_draft("padrec", target, data, config, tmp_path, "cpu", progress=False)
    log = json.loads((tmp_path / "loss_log.json").read_text())
    assert result.finished and log[-1]["loss"] < log[0]["loss"], [e["loss"] for e in log]
    steps = range(config.num_draft_steps)
    assert all(0.0 <= result.evaluation[f"topk_recall_{k}"] <= 1.0 for k in steps)
    assert result.evaluation["rounds"] > 0
    logged = set(log[-1])
    assert all(f"topk_recall_{k}" in logged for k in steps)
    assert all(f"rkl_{k}" in logged for k in steps) == (objective == "atspeed_s")
    assert ("tvd" in logged) == (objective == "atspeed_r")


def test_the_objective_changes_the_trained_weights_and_a_resume_keeps_it(data, target, tmp_path):
    """Same budget, same data order: only the token term differs. A state of one objective is not resumed
    under the other."""
    weights = {}
    for objective in ("distill", "atspeed_s"):
        config = DraftTrainConfig.tiny(topk=K, topk_users=16, objective=objective, max_steps=6, save_every=3)
        train_draft("padrec", target, data, config, tmp_path / objective, "cpu", progress=False)
        weights[objective] = torch.load(tmp_path / objective / "train_state.pt", weights_only=False)["model"]
    assert any(not torch.equal(weights["distill"][n], weights["atspeed_s"][n]) for n in weights["distill"])
    other = DraftTrainConfig.tiny(topk=K, topk_users=16, objective="distill", max_steps=8, save_every=3)
    with pytest.raises(ValueError, match="another config"):
        train_draft("padrec", target, data, other, tmp_path / "atspeed_s", "cpu", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the H200 device machine)")
@pytest.mark.parametrize("objective", ["atspeed_s", "atspeed_r"])
def test_atspeed_trains_on_gpu_with_bf16_autocast(data, target, objective, tmp_path):
    """The beams, the allowed tokens and the AtSpeed terms on CUDA, under bf16 autocast."""
    import copy

    config = DraftTrainConfig.tiny(topk=K, topk_users=24, objective=objective, max_steps=20, holdout_fraction=0.2)
    result = train_draft("padrec", copy.deepcopy(target).to("cuda"), data, config, tmp_path, "cuda", progress=False)
    log = json.loads((tmp_path / "loss_log.json").read_text())
    assert result.finished and log[-1]["loss"] < log[0]["loss"], [e["loss"] for e in log]
    assert result.evaluation["rounds"] > 0
    assert all(0.0 <= result.evaluation[f"topk_recall_{k}"] <= 1.0 for k in range(config.num_draft_steps))


def test_beams_are_grouped_by_history_in_runs_of_at_most_k():
    def seq(prompt, item):
        return TrainSequence(tuple(prompt) + (item,), len(prompt))

    sequences = [seq([1, 2], 7), seq([1, 2], 8), seq([1, 2], 9), seq([3], 7), seq([1, 2], 7), seq([1, 2], 8)]
    assert beam_groups(sequences, 2) == [[0, 1], [2], [3], [4, 5]]
    assert beam_groups(sequences, 3) == [[0, 1, 2], [3], [4, 5]]
    source_batch = SimpleNamespace(
        input_ids=torch.tensor([[1, 2, 7], [1, 2, 8], [3, 7, 0], [1, 2, 9]]), prompt_lens=torch.tensor([2, 2, 1, 2])
    )
    assert batch_groups(source_batch, 3).tolist() == [0, 0, 1, 2]


def test_batches_and_the_holdout_take_whole_histories_on_top_k_data(data, target, histories):
    sequences = topk_beam_sequences(target, data.catalog, histories, K, max_history=4, progress=False)
    config = DraftTrainConfig.tiny(topk=K, batch_size=2 * K + 1, holdout_fraction=0.25)
    units = training_units(sequences, config)
    assert units == [list(range(g * K, (g + 1) * K)) for g in range(len(histories))]
    train, held_out = split_holdout(units, config)
    assert len(held_out) == 3 * K and not set(held_out) & {i for u in train for i in u}
    for step in range(5):
        batch = batch_indices(step, train, config)
        assert len(batch) == 2 * K and all(batch[j : j + K] in train for j in range(0, 2 * K, K))
    plain = DraftTrainConfig.tiny(batch_size=4)  # list-wise data: single sequences, as before
    assert training_units(sequences[:6], plain) == [[i] for i in range(6)]


def test_grouped_tvd_is_half_the_l1_distance_of_each_historys_beam_probabilities():
    draft = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.3, 0.3]))
    target = torch.log(torch.tensor([0.4, 0.4, 0.1, 0.1, 0.6]))
    group = torch.tensor([0, 0, 0, 1, 1])
    tvd = _grouped_tvd(draft, target, group, k=3)
    torch.testing.assert_close(tvd, torch.tensor([0.5 * (0.1 + 0.2 + 0.0), 0.5 * (0.2 + 0.3)]))


def test_the_tvd_term_reads_each_beams_codes_through_the_draft_steps(data, target, histories, monkeypatch):
    """metrics["tvd"] against a loop: per beam, the product over draft steps k of the draft's (and the target's)
    masked probability of code k + 1 at row P - 1 + k, then 0.5 * sum |q - p| per history."""
    from draft_helpers import random_head

    sequences = topk_beam_sequences(target, data.catalog, histories[:3], K, max_history=4, progress=False)
    batch = FeatureSource(target, sequences, "cpu", progress=False).batch(range(len(sequences)))
    head = random_head(target, data.catalog.layout, gamma=3)
    allowed = completion_allowed(ListConstraint(data.catalog, num_items=1), batch)
    group = batch_groups(batch, K)
    terms = TopKTerms(allowed, K, "atspeed_r", group)
    with torch.no_grad():
        out = unrolled_draft_loss(head, batch, 3, topk=terms)
        features = list(unrolled_features(head, batch, 3))
        target_logits = head.compute_logits(torch.cat([batch.hidden[:, 1:], batch.hidden[:, :1]], 1))
    V = allowed.shape[-1]

    def probability(logits, b, q):
        logprobs = torch.log_softmax(logits.double(), -1)[:V].masked_fill(~allowed[b, q], float("-inf"))
        return float(logprobs[batch.input_ids[b, q + 2]].exp())

    q_seq, p_seq = [], []
    for b, seq in enumerate(sequences):
        q_prob = p_prob = 1.0
        for k in range(3):
            q = seq.prompt_len - 1 + k
            q_prob *= probability(head.compute_logits(features[k][b, q]), b, q)
            p_prob *= probability(target_logits[b, q], b, q)
        q_seq.append(q_prob)
        p_seq.append(p_prob)
    tvds = [
        0.5 * sum(abs(q_seq[i] - p_seq[i]) for i in range(len(sequences)) if int(group[i]) == g)
        for g in range(int(group.max()) + 1)
    ]
    assert float(out.metrics["tvd"]) == pytest.approx(sum(tvds) / len(tvds), rel=1e-5)
    # the loss: each step's feature regression and (1 - alpha) CE, then alpha TVD, as one more step's weight
    w = LossWeights()
    steps = [w.step_decay**k for k in range(3)]
    per_step = [
        w.reg_weight * out.metrics[f"reg_{k}"] + w.cls_weight * (1 - ALPHA) * out.metrics[f"ce_{k}"] for k in range(3)
    ]
    # this random head's TVD (about 1e-4) is below float32's resolution of the loss: a stand-in of 2.0 shows its weight
    monkeypatch.setattr(losses, "_grouped_tvd", lambda *args: torch.tensor([2.0, 2.0, 2.0]))
    with torch.no_grad():
        loss = unrolled_draft_loss(head, batch, 3, topk=terms).loss
    tvd_term = float(loss) - float(sum(s * term for s, term in zip(steps, per_step)) / sum(steps))
    assert tvd_term == pytest.approx(w.cls_weight * ALPHA * 2.0, rel=1e-4)


def test_on_top_k_data_agreement_is_between_the_best_allowed_tokens(data, target, histories):
    """acc_k (and the accepted length built from it) compares what masked greedy decoding would pick: each
    model's most likely allowed token, by a loop over the rows."""
    from draft_helpers import random_head

    sequences = topk_beam_sequences(target, data.catalog, histories[:3], K, max_history=4, progress=False)
    batch = FeatureSource(target, sequences, "cpu", progress=False).batch(range(len(sequences)))
    head = random_head(target, data.catalog.layout, gamma=3)
    allowed = completion_allowed(ListConstraint(data.catalog, num_items=1), batch)
    with torch.no_grad():
        out = unrolled_draft_loss(head, batch, 3, topk=TopKTerms(allowed, K, "distill"))
        f0 = next(iter(unrolled_features(head, batch, 1)))  # [B, T, H] step 0
        target_logits = head.compute_logits(torch.cat([batch.hidden[:, 1:], batch.hidden[:, :1]], 1))
    agree, rows = 0, 0
    for b, seq in enumerate(sequences):
        for q in range(seq.prompt_len - 1, len(seq.token_ids) - 2):  # step 0's loss rows
            options = torch.nonzero(allowed[b, q]).flatten().tolist()
            draft_logits, wanted_logits = head.compute_logits(f0[b, q]), target_logits[b, q]
            draft = max(options, key=lambda t: float(draft_logits[t]))
            wanted = max(options, key=lambda t: float(wanted_logits[t]))
            agree, rows = agree + (draft == wanted), rows + 1
    assert float(out.metrics["acc_0"]) == pytest.approx(agree / rows)
