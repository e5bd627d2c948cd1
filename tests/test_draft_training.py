"""Draft training: hidden-state collection, the unrolled alignment, the losses and the trainer.

Fast (CPU, a random tiny Llama target, a small synthetic catalog):

    python -m pytest tests/test_draft_training.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from draft_helpers import random_head, small_catalog_data, tiny_target
from transformers import LlamaForCausalLM

from vllm_padrec.draft import DraftConfig, MedusaConfig, MedusaHeads, PadRecDraftHead, load_draft, new_cache
from vllm_padrec.training import DraftTrainConfig, FeatureSource, LossWeights, train_draft, training_sequences
from vllm_padrec.training.collect import SequenceBatch, target_hidden_states
from vllm_padrec.training.losses import (
    loss_rows,
    medusa_loss,
    unrolled_attention_mask,
    unrolled_draft_loss,
    unrolled_features,
)
from vllm_padrec.training.trainer import METHODS, SIGNAL_PARAMETERS, build_draft, feature_source, param_groups

VOCAB = 32  # the target's padded vocabulary
H = 32
GAMMA = 3


@pytest.fixture(scope="module")
def data():
    return small_catalog_data(VOCAB)


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_target(vocab_size=VOCAB, hidden_size=H)


@pytest.fixture(scope="module")
def sequences(data):
    return training_sequences(data, max_history=4, list_items=3)


# -- collection ---------------------------------------------------------------------------------------
def test_collected_hidden_state_is_after_the_final_norm(target, sequences):
    source = FeatureSource(target, sequences[:4], "cpu", mode="on_the_fly", progress=False)
    batch = source.batch([0, 1, 2, 3])
    captured = {}
    hook = target.model.norm.register_forward_hook(lambda mod, args, out: captured.update(out=out))
    try:
        hidden = target_hidden_states(target, batch.input_ids, batch.lengths)  # [B, T, H]
    finally:
        hook.remove()
    torch.testing.assert_close(hidden, captured["out"], rtol=0, atol=0)
    with torch.no_grad():
        out = target(input_ids=batch.input_ids, output_hidden_states=True)
    real = torch.arange(batch.input_ids.shape[1])[None, :] < batch.lengths[:, None]  # [B, T]
    torch.testing.assert_close(out.hidden_states[-1][real], hidden[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target.lm_head(hidden)[real], out.logits[real], rtol=1e-5, atol=1e-5)


def test_stored_and_on_the_fly_features_agree(target, sequences):
    stored = FeatureSource(target, sequences[:20], "cpu", mode="stored", collect_batch_size=6, progress=False)
    fly = FeatureSource(target, sequences[:20], "cpu", mode="on_the_fly", progress=False)
    indices = [3, 17, 0, 9]
    a, b = stored.batch(indices), fly.batch(indices)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.lengths, b.lengths)
    real = torch.arange(a.input_ids.shape[1])[None, :] < a.lengths[:, None]
    torch.testing.assert_close(a.hidden[real], b.hidden[real], rtol=1e-5, atol=1e-5)
    assert (a.hidden[~real] == 0).all()


# -- the unrolled alignment -------------------------------------------------------------------------------
def test_unrolled_mask_is_the_documented_one():
    mask = unrolled_attention_mask(4, 2)[0, 0].int()  # [4, 12]
    assert mask[2].tolist() == [1, 0, 0, 0] + [0, 1, 0, 0] + [0, 0, 1, 0]
    assert mask[3].tolist() == [1, 1, 0, 0] + [0, 0, 1, 0] + [0, 0, 0, 1]
    assert unrolled_attention_mask(5, 0)[0, 0].equal(torch.ones(5, 5, dtype=torch.bool).tril())


def test_loss_rows_are_the_completion_rounds():
    ids, hidden = torch.zeros(1, 12, dtype=torch.long), torch.zeros(1, 12, 2)  # n = 10 real tokens, P = 4
    batch = SequenceBatch(ids, torch.tensor([10]), torch.tensor([4]), hidden)
    rows = [loss_rows(batch, back=k, ahead=0, loss_on="completion")[0].nonzero().flatten().tolist() for k in range(3)]
    assert rows == [[3, 4, 5, 6, 7], [4, 5, 6, 7], [5, 6, 7]]  # round start p >= P - 1, x_{q+2} inside
    assert loss_rows(batch, back=1, ahead=0, loss_on="all")[0].nonzero().flatten().tolist() == list(range(1, 8))
    assert loss_rows(batch, back=0, ahead=2, loss_on="completion")[0].nonzero().flatten().tolist() == [3, 4, 5]


def test_unrolled_training_sees_what_inference_sees(target, data, sequences):
    """Step k of the unrolled pass at row q == running the head round by round with a KV cache:
    step 0 over positions 0..p with the target's hidden states, then one position per step on
    the head's own previous output (as vLLM does)."""
    head = random_head(target, data.catalog.layout)
    source = FeatureSource(target, sequences[:2], "cpu", mode="on_the_fly", progress=False)
    batch = source.batch([0, 1])
    with torch.no_grad():
        unrolled = list(unrolled_features(head, batch, GAMMA))  # GAMMA x [B, T, H]
        for b in range(2):
            n = int(batch.lengths[b])
            ids, hidden = batch.input_ids[b : b + 1], batch.hidden[b : b + 1]  # [1, T], [1, T, H]
            for p in range(0, n - GAMMA - 1, 3):
                cache = new_cache()
                pos = torch.arange(p + 1)[None]  # [1, p+1]
                f = head(hidden[:, : p + 1], ids[:, 1 : p + 2], torch.zeros_like(pos), pos, past_key_values=cache)
                feat = f[:, -1:]  # [1, 1, H] f^0_p
                torch.testing.assert_close(feat[0, 0], unrolled[0][b, p], rtol=1e-4, atol=1e-4)
                for k in range(1, GAMMA):
                    q = p + k
                    feat = head(
                        feat, ids[:, q + 1 : q + 2], torch.full((1, 1), k), torch.full((1, 1), q), past_key_values=cache
                    )  # [1, 1, H] f^k_q
                    torch.testing.assert_close(
                        feat[0, 0], unrolled[k][b, q], rtol=1e-4, atol=1e-4, msg=f"row {b}, round {p}, step {k}"
                    )


def test_unrolled_training_reaches_every_step_embedding(target, data, sequences):
    config = DraftConfig.from_target(target.config, data.catalog.layout, GAMMA)
    head = PadRecDraftHead(config).attach_target(target)  # fresh init: alpha = 0, E_step = 0
    batch = FeatureSource(target, sequences[:8], "cpu", mode="on_the_fly", progress=False).batch(list(range(8)))
    out = unrolled_draft_loss(head, batch, GAMMA)
    out.loss.backward()
    assert (head.step_emb.weight.grad.abs().sum(1) > 0).all(), "a step embedding got no gradient"
    assert head.alpha.grad.abs().item() > 0
    assert {f"acc_{k}" for k in range(GAMMA)} <= set(out.metrics)


def test_medusa_head_h_is_scored_against_the_token_h_plus_1_ahead():
    """Hidden state h_j is one-hot(j) and the target's LM head the identity, so the target's token
    after position j is a_{j+1} = j. Head h must propose a_{p+2+h} = p+1+h from h_p: "shift by h+1"."""
    T, V = 12, 16
    hidden = 10.0 * torch.eye(V)[:T][None]  # [1, T, V]: h_j = 10 * e_j, argmax lm_head(h_j) = j
    batch = SequenceBatch(torch.arange(T)[None], torch.tensor([T]), torch.tensor([0]), hidden)
    lm_head = torch.nn.Linear(V, V, bias=False)
    with torch.no_grad():
        lm_head.weight.copy_(torch.eye(V))
    heads = MedusaHeads(MedusaConfig(hidden_size=V, vocab_size=V, num_heads=3))

    def accuracies(shift: int) -> list[float]:
        with torch.no_grad():
            for h, head in enumerate(heads.lm_heads):
                head.weight.copy_(torch.roll(torch.eye(V), shifts=h + shift, dims=0))  # logit i = x[i - h - shift]
        out = medusa_loss(heads, batch, lm_head, LossWeights(loss_on="all"))
        return [out.metrics[f"acc_{h}"].item() for h in range(3)], out.accepted_length().item()

    assert accuracies(shift=1) == ([1.0, 1.0, 1.0], 3.0)  # head h proposes x_{p+2+h} = a_{p+2+h}
    assert accuracies(shift=2) == ([0.0, 0.0, 0.0], 0.0)  # one position off: never right


# -- the trainer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_saves_a_loadable_draft(target, data, method, tmp_path):
    config = DraftTrainConfig.tiny(max_steps=20)
    result = train_draft(method, target, data, config, tmp_path, "cpu", progress=False)
    log = json.loads((tmp_path / "loss_log.json").read_text())
    assert result.finished and result.steps == 20 and len(log) == 4
    assert log[-1]["loss"] < log[0]["loss"], f"{method}: loss did not fall: {[e['loss'] for e in log]}"
    assert 0.0 <= result.evaluation["accepted_length"] <= GAMMA
    draft = load_draft(result.checkpoint, target)
    assert isinstance(draft, MedusaHeads if method == "medusa" else PadRecDraftHead)
    if method != "medusa":
        assert draft.config.variant == method


def test_resume_continues_exactly(target, data, tmp_path):
    config = DraftTrainConfig.tiny(max_steps=10)
    straight = train_draft("padrec", target, data, config, tmp_path / "straight", "cpu", progress=False)
    first = train_draft("padrec", target, data, config, tmp_path / "chunked", "cpu", stop_after_steps=5, progress=False)
    assert not first.finished and first.steps == 5
    second = train_draft("padrec", target, data, config, tmp_path / "chunked", "cpu", progress=False)
    assert second.finished and second.steps == 10
    a = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=False)
    b = torch.load(tmp_path / "chunked" / "train_state.pt", weights_only=False)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)
    assert [e["loss"] for e in a["log"]] == [e["loss"] for e in b["log"]]
    with pytest.raises(ValueError, match="another config"):
        train_draft(
            "padrec", target, data, DraftTrainConfig.tiny(max_steps=11), tmp_path / "chunked", "cpu", progress=False
        )
    assert straight.final_loss == second.final_loss


def test_a_shared_feature_source_trains_the_same_weights(target, data, tmp_path):
    config = DraftTrainConfig.tiny(max_steps=6)
    own = train_draft("padrec", target, data, config, tmp_path / "own", "cpu", progress=False)
    source = feature_source(target, data, config, "cpu", progress=False)
    shared = train_draft("padrec", target, data, config, tmp_path / "shared", "cpu", progress=False, source=source)
    a = torch.load(tmp_path / "own" / "train_state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "shared" / "train_state.pt", weights_only=False)["model"]
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=0, msg=name)
    assert own.evaluation == shared.evaluation
    other = LlamaForCausalLM._from_config(target.config, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="another target"):
        train_draft("eagle", other, data, config, tmp_path / "other", "cpu", progress=False, source=source)


def test_signal_lr_scale_speeds_up_only_the_signal_parameters(target, data, tmp_path):
    layout = data.catalog.layout
    moved = {}
    for scale in (1.0, 20.0):
        config = DraftTrainConfig.tiny(max_steps=4, signal_lr_scale=scale)
        init = build_draft("padrec", target, layout, config).state_dict()
        train_draft("padrec", target, data, config, tmp_path / str(scale), "cpu", progress=False)
        trained = torch.load(tmp_path / str(scale) / "train_state.pt", weights_only=False)["model"]
        moved[scale] = {name: float((trained[name] - init[name]).abs().max()) for name in init}
    for name in moved[1.0]:
        ratio = moved[20.0][name] / max(moved[1.0][name], 1e-12)
        if name in SIGNAL_PARAMETERS:
            assert ratio > 5, f"{name} moved {ratio:.2f}x as far at 20x its learning rate"
        else:
            assert 0.2 < ratio < 5, f"{name} is not a signal parameter but moved {ratio:.2f}x as far"
    config = DraftTrainConfig.tiny(signal_lr_scale=3.0)
    eagle = build_draft("eagle", target, layout, config)
    assert [g["lr_scale"] for g in param_groups(eagle, config)] == [1.0]  # no signal parameters
    padrec = build_draft("padrec", target, layout, config)
    groups = param_groups(padrec, config)
    assert [g["lr_scale"] for g in groups] == [1.0, 3.0] and len(groups[1]["params"]) == len(SIGNAL_PARAMETERS)
    with pytest.raises(ValueError, match="signal_lr_scale"):
        DraftTrainConfig.tiny(signal_lr_scale=0.0)


def test_time_budget_stops_early_and_still_saves(target, data, tmp_path):
    result = train_draft(
        "eagle", target, data, DraftTrainConfig.tiny(), tmp_path, "cpu", time_budget_minutes=0.0, progress=False
    )
    assert result.steps == 0 and not result.finished
    assert isinstance(load_draft(result.checkpoint, target), PadRecDraftHead)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the H200 device machine)")
@pytest.mark.parametrize("features", ["stored", "on_the_fly"])
def test_trains_on_gpu_with_bf16_autocast(target, data, features, tmp_path):
    """bf16 autocast, stored bf16 hidden states, and the fused kernel in the grad-free evaluation."""
    import copy

    gpu_target = copy.deepcopy(target).to("cuda")
    for method in ("padrec", "medusa"):
        config = DraftTrainConfig.tiny(max_steps=20, features=features)
        result = train_draft(method, gpu_target, data, config, tmp_path / method, "cuda", progress=False)
        log = json.loads((tmp_path / method / "loss_log.json").read_text())
        assert result.feature_mode == features and log[-1]["loss"] < log[0]["loss"]
        assert result.evaluation["rounds"] > 0


def test_trained_steps_unrolls_the_loss_that_far_and_the_head_still_drafts_gamma(target, data, tmp_path, monkeypatch):
    """trained_steps=1: EAGLE's teacher-forced single step; the saved head drafts num_draft_steps (n_predict)."""
    from vllm_padrec.training import trainer

    unrolled = []
    real = trainer.unrolled_draft_loss

    def spy(module, batch, num_steps, *args, **kwargs):
        unrolled.append(num_steps)
        return real(module, batch, num_steps, *args, **kwargs)

    monkeypatch.setattr(trainer, "unrolled_draft_loss", spy)
    config = DraftTrainConfig.tiny(max_steps=4, trained_steps=1)
    result = train_draft("eagle", target, data, config, tmp_path, "cpu", progress=False)
    assert unrolled[:4] == [1] * 4 and set(unrolled) == {1, GAMMA}  # 4 training steps: 1; evaluation: every step
    assert load_draft(result.checkpoint, target).config.num_draft_steps == GAMMA
    assert [f"acc_{k}" in result.evaluation for k in range(GAMMA + 1)] == [True] * GAMMA + [False]  # every step
    assert DraftTrainConfig.tiny().unrolled_steps() == GAMMA
    with pytest.raises(ValueError, match=r"trained_steps must be in 0..num_draft_steps \(3\), got 4"):
        DraftTrainConfig.tiny(trained_steps=4)
