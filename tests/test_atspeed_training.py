"""AtSpeed's draft training on the target's own top-K beams (issue 13, training item): the data, the catalog's
allowed tokens along it, the top-K recall it reports, and the trainer with ``objective="atspeed_s"``.

Fast (CPU, a random tiny Llama target, a small synthetic catalog):

    python -m pytest tests/test_atspeed_training.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from draft_helpers import tiny_target

from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.decoding import beam_search_items
from vllm_padrec.training import DraftTrainConfig, FeatureSource, train_draft
from vllm_padrec.training.atspeed_losses import topk_recall
from vllm_padrec.training.topk_data import completion_allowed, topk_beam_sequences, training_histories

K = 5
VOCAB = 32


@pytest.fixture(scope="module")
def data():
    data = generate_synthetic(SyntheticConfig(num_items=60, num_users=40, codebook_sizes=(4, 4, 4, 4)))
    assert data.catalog.layout.vocab_size <= VOCAB
    return data


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
    with pytest.raises(ValueError, match="needs topk >= 1"):
        DraftTrainConfig.tiny(objective="atspeed_s")
    with pytest.raises(ValueError, match="objective must be one of"):
        DraftTrainConfig.tiny(objective="atspeed")
    config = DraftTrainConfig.tiny(topk=K, objective="atspeed_s", max_steps=2)
    with pytest.raises(ValueError, match="Medusa trains by distillation"):
        train_draft("medusa", target, data, config, tmp_path, "cpu", progress=False)
    too_deep = DraftTrainConfig.tiny(topk=K, num_draft_steps=4, max_steps=2)
    with pytest.raises(ValueError, match="3 draft positions per item"):
        train_draft("padrec", target, data, too_deep, tmp_path, "cpu", progress=False)


@pytest.mark.parametrize("objective", ["distill", "atspeed_s"])
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
def test_atspeed_s_trains_on_gpu_with_bf16_autocast(data, target, tmp_path):
    """The beams, the allowed tokens and the AtSpeed-S term on CUDA, under bf16 autocast."""
    import copy

    config = DraftTrainConfig.tiny(topk=K, topk_users=24, objective="atspeed_s", max_steps=20, holdout_fraction=0.2)
    result = train_draft("padrec", copy.deepcopy(target).to("cuda"), data, config, tmp_path, "cuda", progress=False)
    log = json.loads((tmp_path / "loss_log.json").read_text())
    assert result.finished and log[-1]["loss"] < log[0]["loss"], [e["loss"] for e in log]
    assert result.evaluation["rounds"] > 0
    assert all(0.0 <= result.evaluation[f"topk_recall_{k}"] <= 1.0 for k in range(config.num_draft_steps))
