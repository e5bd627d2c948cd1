"""The target recipe, model checkpoint, resumable training and the ranking metrics."""

import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from vllm_padrec.catalog import CATALOG_FILE, TokenLayout
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.errors import PadRecError
from vllm_padrec.target.config import RECIPE_FILE, RECIPES, RecipeError, TargetRecipe, get_recipe
from vllm_padrec.target.evaluate import ValidationSet, evaluate_target, recall_ndcg
from vllm_padrec.target.model import (
    add_hidden_dropout,
    build_model,
    llama_config,
    load_checkpoint,
    padded_vocab_size,
    save_checkpoint,
)
from vllm_padrec.target.tokenizer import build_tokenizer
from vllm_padrec.target.train import BEST_DIR, CHECKPOINT_DIR, LOSS_FILE, STATE_FILE, VAL_FILE, train_target


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(SyntheticConfig(num_items=120, num_users=150, codebook_sizes=(4, 4, 4, 4), seed=3))


def small_recipe(**changes) -> TargetRecipe:
    base = dict(hidden_size=32, intermediate_size=64, max_history=6, list_items=3, batch_size=16, log_every=2)
    return get_recipe("tiny", **(base | changes))


# -- recipe ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(hidden_size=100, num_heads=3), "hidden_size 100 must be a multiple of num_heads 3"),
        (dict(num_heads=4, num_kv_heads=3), "num_heads 4 must be a multiple of num_kv_heads 3"),
        (dict(num_layers=0), "num_layers must be a positive integer"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(min_lr_ratio=1.5), r"min_lr_ratio must be in \[0, 1\]"),
        (dict(max_steps=0), "max_steps must be positive or None"),
        (dict(epochs=-1), "epochs must be positive"),
        (dict(hidden_dropout=1.0), r"hidden_dropout must be in \[0, 1\)"),
        (dict(attention_dropout=-0.1), r"attention_dropout must be in \[0, 1\)"),
        (dict(eval_every=-1), "eval_every must be a non-negative integer"),
        (dict(val_metric="ndcg"), "val_metric must be 'recall' or 'loss'"),
        (dict(eval_every=5, val_beam=0, val_metric="recall"), "val_metric 'recall' needs val_beam > 0"),
        (dict(patience=2), "patience needs validation: set eval_every > 0"),
        (dict(micro_batch_size=0), "micro_batch_size must be a positive integer or None, got 0"),
    ],
)
def test_recipe_validation_names_the_field(changes, message):
    with pytest.raises(RecipeError, match=message):
        get_recipe("tiny", **changes)


def test_recipe_errors_are_padrec_errors_and_name_the_choices():
    with pytest.raises(PadRecError, match=r"unknown target recipe 'huge'; choose one of \['bench', 'tiny'\]"):
        get_recipe("huge")
    with pytest.raises(RecipeError, match=r"unknown recipe fields \['hidden'\]"):
        get_recipe("tiny", hidden=3)


def test_context_too_short_for_the_data_shape():
    layout = TokenLayout((256, 256, 256, 256))
    recipe = get_recipe("bench", max_position_embeddings=100)
    with pytest.raises(RecipeError, match="raise max_position_embeddings to at least 154"):
        llama_config(recipe, layout)


def test_recipe_round_trips_through_json(tmp_path):
    for recipe in RECIPES.values():
        recipe.save(tmp_path / RECIPE_FILE)
        assert TargetRecipe.load(tmp_path) == recipe


def test_bench_preset_is_a_deep_billion_parameter_model_without_allocating_it():
    recipe = RECIPES["bench"]
    layout = TokenLayout((256, 256, 256, 256))  # the shared datasets' codebooks (1,030 tokens)
    vocab = padded_vocab_size(layout)
    assert vocab == 1088
    assert recipe.num_layers >= 24
    assert recipe.num_parameters(vocab) >= 1_000_000_000
    assert recipe.max_position_embeddings >= recipe.tokens_needed(layout)
    assert (recipe.max_history, recipe.list_items) == (20, 10)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(recipe, layout))
    assert sum(p.numel() for p in model.parameters()) == recipe.num_parameters(vocab)


# -- model and checkpoint --------------------------------------------------------------------------------
def test_checkpoint_round_trip(data, tmp_path):
    recipe = small_recipe()
    model = build_model(recipe, data.catalog.layout)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= data.catalog.layout.vocab_size
    assert sum(p.numel() for p in model.parameters()) == recipe.num_parameters(model.config.vocab_size)
    folder = save_checkpoint(model, build_tokenizer(data.catalog.layout), data.catalog, recipe, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == config["torch_dtype"] == "float32"  # CPU weights are saved as they are
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert (folder / "model.safetensors").exists() and (folder / CATALOG_FILE).exists()
    loaded = load_checkpoint(folder)
    assert loaded.recipe == recipe and loaded.catalog.item_ids == data.catalog.item_ids
    ids = torch.tensor([data.catalog.render_prompt([0, 1, 2])])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, model(ids).logits)
    bf16 = save_checkpoint(model, loaded.tokenizer, data.catalog, recipe, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_checkpoint(bf16).model.dtype == torch.bfloat16


# -- training ---------------------------------------------------------------------------------------------
def test_tiny_training_lowers_the_loss_and_writes_a_checkpoint(data, tmp_path):
    recipe = small_recipe(epochs=3)
    result = train_target(recipe, data, tmp_path, progress=False)
    assert result.finished and result.step == result.total_steps
    log = json.loads((tmp_path / LOSS_FILE).read_text())
    losses = [entry["loss"] for entry in log]
    assert log[-1]["step"] == result.step
    window = max(2, len(losses) // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    assert last < 0.6 * first, (first, last)
    assert (result.checkpoint / "config.json").exists()
    again = train_target(recipe, data, tmp_path, progress=False)  # finished: returns at once
    assert again.finished and again.step == result.step


@pytest.mark.parametrize(
    "changes",
    [
        dict(),
        # validation (and the best checkpoint) every 4 steps, dropout drawing from the saved RNG
        dict(eval_every=4, val_users=24, val_beam=4, hidden_dropout=0.1, attention_dropout=0.1),
    ],
    ids=["plain", "validation+dropout"],
)
def test_resume_continues_exactly_where_it_stopped(data, tmp_path, changes):
    recipe = small_recipe(max_steps=9, log_every=2, **changes)
    straight = train_target(recipe, data, tmp_path / "straight", progress=False)
    assert straight.finished and straight.step == 9
    # a budget shorter than one step: every call trains one step, saves its state and returns
    chunked = recipe.replace(time_budget_minutes=1e-6)
    steps = []
    for _ in range(20):
        result = train_target(chunked, data, tmp_path / "chunked", progress=False)
        steps.append(result.step)
        if result.finished:
            break
        assert (tmp_path / "chunked" / STATE_FILE).exists()
    assert steps == list(range(1, 10))
    assert json.loads((tmp_path / "chunked" / LOSS_FILE).read_text()) == json.loads(
        (tmp_path / "straight" / LOSS_FILE).read_text()
    )
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT_DIR).model.state_dict()
    b = load_checkpoint(tmp_path / "chunked" / CHECKPOINT_DIR).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if recipe.eval_every:
        logs = [json.loads((tmp_path / run / VAL_FILE).read_text()) for run in ("straight", "chunked")]
        for log in logs:
            for entry in log["evals"]:
                entry.pop("seconds")  # wall time, the only field allowed to differ
        assert logs[0] == logs[1]
        assert [e["step"] for e in logs[0]["evals"]] == [4, 8, 9]  # every 4 steps and after the last
        last_best = [e["step"] for e in logs[0]["evals"] if e["best"]][-1]
        assert last_best == logs[0]["best_step"] == straight.best_step == result.best_step
        assert not (tmp_path / "chunked" / BEST_DIR).exists()  # moved to checkpoint/


def test_resume_refuses_another_recipe(data, tmp_path):
    recipe = small_recipe(max_steps=4, time_budget_minutes=1e-6)
    assert not train_target(recipe, data, tmp_path, progress=False).finished
    with pytest.raises(RecipeError, match="another recipe or other data"):
        train_target(recipe.replace(lr=1e-4), data, tmp_path, progress=False)
    other = recipe.replace(lr=1e-4, time_budget_minutes=5)
    restarted = train_target(other, data, tmp_path, resume=False, progress=False)
    assert restarted.finished and restarted.step == 4


# -- micro-batches (gradient accumulation) ------------------------------------------------------------
def weights_close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_micro_batches_train_what_the_whole_batch_trains_and_a_run_resumes_with_another_size(data, tmp_path):
    recipe = small_recipe(max_steps=6)  # batches of 16: parts of 5, 5, 5 and 1 below
    whole = train_target(recipe, data, tmp_path / "whole", progress=False)
    # one step in whole batches, then resumed in parts (micro_batch_size steers the run, not its result)
    first = train_target(
        recipe.replace(max_steps=6, time_budget_minutes=1e-6), data, tmp_path / "parts", progress=False
    )
    assert first.step == 1 and not first.finished
    parts = train_target(recipe.replace(micro_batch_size=5), data, tmp_path / "parts", progress=False)
    assert whole.finished and parts.finished and parts.step == 6
    logs = [json.loads((tmp_path / run / LOSS_FILE).read_text()) for run in ("whole", "parts")]
    assert [e["step"] for e in logs[0]] == [e["step"] for e in logs[1]]
    assert [e["loss"] for e in logs[0]] == pytest.approx([e["loss"] for e in logs[1]], rel=1e-5)
    a = load_checkpoint(tmp_path / "whole" / CHECKPOINT_DIR).model.state_dict()
    b = load_checkpoint(tmp_path / "parts" / CHECKPOINT_DIR).model.state_dict()
    assert weights_close(a, b)
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the parts really ran: summation order differs


@pytest.mark.parametrize("fails_on", ["the first part", "a later part"])
def test_running_out_of_memory_halves_the_micro_batch_and_redoes_the_step(data, tmp_path, monkeypatch, capfd, fails_on):
    import vllm_padrec.target.train as target_train

    real_loss, calls = target_train.completion_loss, []

    def loss_or_out_of_memory(model, input_ids, targets, scored=None):
        calls.append(input_ids.shape[0])
        too_big = input_ids.shape[0] > 4 if fails_on == "the first part" else len(calls) == 2
        if too_big:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 58.00 MiB.")
        return real_loss(model, input_ids, targets, scored)

    recipe = small_recipe(max_steps=3, micro_batch_size=None if fails_on == "the first part" else 8)
    monkeypatch.setattr(target_train, "completion_loss", loss_or_out_of_memory)
    retried = train_target(recipe, data, tmp_path / "retried", progress=False)
    monkeypatch.undo()
    planned = train_target(recipe.replace(micro_batch_size=4), data, tmp_path / "planned", progress=False)
    assert retried.finished and planned.finished
    # the failed attempts leave nothing behind: the same steps as parts of 4 from the start, bit for bit
    a = load_checkpoint(tmp_path / "retried" / CHECKPOINT_DIR).model.state_dict()
    b = load_checkpoint(tmp_path / "planned" / CHECKPOINT_DIR).model.state_dict()
    assert same_weights(a, b)
    if fails_on == "the first part":
        assert calls[:3] == [16, 8, 4] and set(calls[3:]) == {4}  # later steps keep the smaller size
        expected = ["at 16 examples a pass; step 0 runs again at 8", "at 8 examples a pass; step 0 runs again at 4"]
    else:
        assert calls[:2] == [8, 8] and set(calls[2:]) == {4}
        expected = ["at 8 examples a pass; step 0 runs again at 4"]
    notes = [line for line in capfd.readouterr().err.splitlines() if "out of GPU memory" in line]
    assert [note.split("out of GPU memory ")[1].split(" (")[0] for note in notes] == expected


def test_out_of_memory_at_one_example_a_pass_is_raised(data, tmp_path, monkeypatch):
    import vllm_padrec.target.train as target_train

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(target_train, "completion_loss", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        train_target(small_recipe(max_steps=1, micro_batch_size=1), data, tmp_path, progress=False)


# -- validation, best checkpoint and early stopping -------------------------------------------------------
class ScriptedValidation:
    """Stands in for ValidationSet.score (set on the class, it is called without the ValidationSet):
    returns the scripted metrics in turn and keeps the weights it saw."""

    def __init__(self, recalls, losses=None):
        self.recalls, self.losses = list(recalls), list(losses or [1.0] * len(recalls))
        self.weights = []  # the model's state dict at each validation

    def __call__(self, model, beam_width=10, batch_size=64):
        n = len(self.weights)
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"loss": self.losses[n], f"recall@{beam_width}": self.recalls[n], f"ndcg@{beam_width}": 0.0}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "metric, recalls, losses, best",
    [
        ("recall", [0.1, 0.3, 0.2, 0.25], None, 1),  # the second validation is the best
        ("recall", [0.1, 0.3, 0.3, 0.2], [2.0, 1.5, 1.2, 1.0], 2),  # a tie in recall: the lower loss wins
        ("loss", [0.5, 0.1, 0.1, 0.1], [2.0, 1.4, 1.1, 1.3], 2),  # the loss alone, lower is better
    ],
)
def test_the_checkpoint_is_the_best_validation(data, tmp_path, monkeypatch, metric, recalls, losses, best):
    scripted = ScriptedValidation(recalls, losses)
    monkeypatch.setattr(ValidationSet, "score", scripted)
    recipe = small_recipe(max_steps=12, eval_every=3, val_users=8, val_metric=metric)
    result = train_target(recipe, data, tmp_path, progress=False)
    assert result.finished and result.step == 12 and not result.stopped_early
    assert len(scripted.weights) == 4  # steps 3, 6, 9, 12
    assert result.best_step == 3 * (best + 1)
    assert result.best_metric == (recalls if metric == "recall" else losses)[best]
    assert not same_weights(scripted.weights[best], scripted.weights[-1])  # the weights did move on
    saved = load_checkpoint(result.checkpoint).model.state_dict()
    assert same_weights(saved, scripted.weights[best])
    log = json.loads((tmp_path / VAL_FILE).read_text())
    assert log["best_step"] == result.best_step and log["metric"] == ("recall@10" if metric == "recall" else "loss")
    assert [e["step"] for e in log["evals"]] == [3, 6, 9, 12] and not log["stopped_early"]
    assert [e["recall@10"] for e in log["evals"]] == recalls


def test_early_stopping_stops_after_patience_validations_without_improvement(data, tmp_path, monkeypatch):
    scripted = ScriptedValidation([0.1, 0.3, 0.2, 0.3, 0.9, 0.9])  # 0.3 again is no improvement
    monkeypatch.setattr(ValidationSet, "score", scripted)
    recipe = small_recipe(
        max_steps=30, eval_every=2, val_users=8, val_metric="recall", patience=2, time_budget_minutes=1e-6
    )
    # one step per call (the budget): the patience count and the best survive the resumes
    results = [train_target(recipe, data, tmp_path, progress=False) for _ in range(8)]
    assert [r.finished for r in results] == [False] * 7 + [True]
    result = results[-1]
    assert result.stopped_early and result.step == 8 and result.best_step == 4 and result.best_metric == 0.3
    assert len(scripted.weights) == 4  # stopped after the 4th validation, never ran the 5th
    assert same_weights(load_checkpoint(result.checkpoint).model.state_dict(), scripted.weights[1])
    log = json.loads((tmp_path / VAL_FILE).read_text())
    assert log["stopped_early"] and [e["best"] for e in log["evals"]] == [True, True, False, False]
    assert json.loads((tmp_path / LOSS_FILE).read_text())[-1]["step"] == 8  # the last partial window is logged
    # a call that died between writing the finished state and moving best/ to checkpoint/
    (tmp_path / CHECKPOINT_DIR).rename(tmp_path / BEST_DIR)
    again = train_target(recipe, data, tmp_path, progress=False)  # finished: returns at once
    assert again.finished and again.stopped_early and again.step == 8 and len(scripted.weights) == 4
    assert same_weights(load_checkpoint(again.checkpoint).model.state_dict(), scripted.weights[1])


def test_validation_set_scores_the_first_target_item(data):
    recipe = small_recipe()
    model = build_model(recipe, data.catalog.layout)
    val_set = ValidationSet.build(data, recipe.max_history, users=20, seed=0)
    assert len(val_set) == 20 and val_set.histories == ValidationSet.build(data, 6, 20, 0).histories  # seeded
    assert all(1 <= len(h) <= 6 for h in val_set.histories)
    model.train()
    scores = val_set.score(model, beam_width=4, batch_size=7)
    assert model.training  # the mode is restored
    assert set(scores) == {"loss", "recall@4", "ndcg@4"} and 0 <= scores["recall@4"] <= 1
    # the loss: mean cross-entropy of the L code tokens of the target after the prompt, user by user
    model.eval()
    total = 0.0
    with torch.no_grad():
        for history, target in zip(val_set.histories, val_set.targets):
            prompt, item = data.catalog.render_prompt(history), data.catalog.item_token_ids(target)
            logits = model(torch.tensor([prompt + item])).logits[0, len(prompt) - 1 : -1]  # [L, V']
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(item), reduction="sum").item()
    assert scores["loss"] == pytest.approx(total / (len(val_set) * data.catalog.num_slots), rel=1e-5)
    assert val_set.score(model, beam_width=0).keys() == {"loss"}


def test_hidden_dropout_acts_in_training_only_and_leaves_the_checkpoint_plain(data, tmp_path):
    recipe = small_recipe(hidden_dropout=0.2, attention_dropout=0.1)
    model = build_model(recipe, data.catalog.layout)
    plain = build_model(recipe, data.catalog.layout)
    handles = add_hidden_dropout(model, recipe.hidden_dropout)
    assert len(handles) == 1 + 2 * recipe.num_layers
    ids = torch.tensor([data.catalog.render_prompt([0, 1, 2])])
    with torch.no_grad():
        model.eval(), plain.eval()
        assert torch.equal(model(ids).logits, plain(ids).logits)
        model.train()
        torch.manual_seed(0)
        assert not torch.equal(model(ids).logits, plain(ids).logits)
    folder = save_checkpoint(model, build_tokenizer(data.catalog.layout), data.catalog, recipe, tmp_path / "ckpt")
    assert json.loads((folder / "config.json").read_text())["attention_dropout"] == 0.1
    assert load_checkpoint(folder).model.state_dict().keys() == plain.state_dict().keys()


# -- metrics -------------------------------------------------------------------------------------------------
def test_recall_ndcg_on_hand_made_rankings():
    ranked = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1]]
    targets = [[2], [6, 4], [10], []]  # the last user has no target and is skipped
    metrics = recall_ndcg(ranked, targets, k=3)
    # user 1: hit at rank 2 -> recall 1, ndcg 1/log2(3); user 2: hits at ranks 1 and 3 of 2 targets
    # -> recall 1, ndcg (1 + 1/log2(4)) / (1 + 1/log2(3)); user 3: nothing
    ndcg = (1 / math.log2(3) + (1 + 0.5) / (1 + 1 / math.log2(3)) + 0) / 3
    assert metrics["users"] == 3
    assert metrics["recall@3"] == pytest.approx(2 / 3)
    assert metrics["ndcg@3"] == pytest.approx(ndcg)
    cut = recall_ndcg(ranked, targets, k=1)  # only user 2's first item counts: 1 of 2 targets
    assert cut["recall@1"] == pytest.approx(0.5 / 3) and cut["ndcg@1"] == pytest.approx(1 / 3)
    perfect = recall_ndcg([[3, 4, 9]], [[4, 3]], k=5)  # IDCG over min(k, |targets|) = 2 hits
    assert perfect["recall@5"] == 1.0 and perfect["ndcg@5"] == pytest.approx(1.0)


def test_evaluate_target_reports_both_rankings(data):
    recipe = small_recipe()
    model = build_model(recipe, data.catalog.layout)
    metrics = evaluate_target(
        model, data, list_items=3, beam_width=4, max_users=20, batch_size=8, max_history=6, progress=False
    )
    assert metrics["users"] == 20 and metrics["split"] == "test"
    for key in ("greedy_recall@3", "greedy_ndcg@3", "beam_recall@4", "beam_ndcg@4"):
        assert 0.0 <= metrics[key] <= 1.0
