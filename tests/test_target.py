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
from vllm_padrec.target.evaluate import evaluate_target, recall_ndcg
from vllm_padrec.target.model import build_model, llama_config, load_checkpoint, padded_vocab_size, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer
from vllm_padrec.target.train import CHECKPOINT_DIR, LOSS_FILE, STATE_FILE, train_target


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models gain nothing from a second thread, and lose a lot when another process holds it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_resume_continues_exactly_where_it_stopped(data, tmp_path):
    recipe = small_recipe(max_steps=9, log_every=2)
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


def test_resume_refuses_another_recipe(data, tmp_path):
    recipe = small_recipe(max_steps=4, time_budget_minutes=1e-6)
    assert not train_target(recipe, data, tmp_path, progress=False).finished
    with pytest.raises(RecipeError, match="another recipe or other data"):
        train_target(recipe.replace(lr=1e-4), data, tmp_path, progress=False)
    other = recipe.replace(lr=1e-4, time_budget_minutes=5)
    restarted = train_target(other, data, tmp_path, resume=False, progress=False)
    assert restarted.finished and restarted.step == 4


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
