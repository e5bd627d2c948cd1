"""``vllm serve TARGET --speculative-model DRAFT`` through vLLM's real serve parser, and the draft checks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vllm_padrec
from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.draft import DraftConfig, PadRecDraftHead, save_draft
from vllm_padrec.errors import DraftTargetMismatchError
from vllm_padrec.integration.draft_check import catalog_codebook_sizes, check_draft_matches_target
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import build_model, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer

NUM_DRAFT_STEPS = 3


def small_catalog(codebook_sizes=(4, 3)) -> ItemCatalog:
    codes = np.array([[0, 0], [0, 1], [1, 2], [2, 0], [3, 1]])
    return ItemCatalog([f"i{i}" for i in range(len(codes))], codes, codebook_sizes=codebook_sizes)


def write_target(folder: Path, catalog: ItemCatalog, **recipe_overrides) -> Path:
    recipe = get_recipe("tiny", max_history=2, list_items=2, **recipe_overrides)
    model = build_model(recipe, catalog.layout)
    return save_checkpoint(model, build_tokenizer(catalog.layout), catalog, recipe, folder)


def write_draft(folder: Path, target: Path, catalog: ItemCatalog, **config_changes) -> Path:
    from transformers import AutoConfig

    config = DraftConfig.from_target(AutoConfig.from_pretrained(target), catalog.layout, NUM_DRAFT_STEPS)
    save_draft(PadRecDraftHead(config), folder)
    if config_changes:  # a draft trained for something else: edit its config.json
        path = folder / "config.json"
        payload = json.loads(path.read_text())
        for key, value in config_changes.items():
            if key == "codebook_sizes":
                payload["padrec"][key] = value
                payload["padrec"]["num_slot_kinds"] = len(value) + 2
            else:
                payload[key] = value
        path.write_text(json.dumps(payload))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    catalog = small_catalog()
    target = write_target(root / "target", catalog)
    return {
        "target": target,
        "draft": write_draft(root / "draft", target, catalog),
        "wide": write_draft(root / "wide", target, catalog, hidden_size=128),
        "vocab": write_draft(root / "vocab", target, catalog, vocab_size=128),
        "layout": write_draft(root / "layout", target, catalog, codebook_sizes=[5, 3]),
    }


@pytest.fixture
def serve_parser(monkeypatch):
    """vLLM's `vllm serve` parser with the plugin loaded (the CPU platform where there is no GPU)."""
    from vllm import platforms

    if not torch.cuda.is_available():  # vLLM's DeviceConfig default cannot infer a device otherwise
        from vllm.platforms.cpu import CpuPlatform

        monkeypatch.setattr(platforms, "current_platform", CpuPlatform())
    vllm_padrec.register()
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def speculative_config(args):
    """The SpeculativeConfig vLLM builds from parsed serve args (what `vllm serve` does next)."""
    from vllm.config import ParallelConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    args.model = args.model_tag
    engine_args = AsyncEngineArgs.from_cli_args(args)
    return engine_args.create_speculative_config(engine_args.create_model_config(), ParallelConfig())


def test_flag_folds_into_speculative_config(serve_parser, folders):
    target, draft = str(folders["target"]), str(folders["draft"])
    args = serve_parser.parse_args([target, "--speculative-model", draft])
    assert args.speculative_config == {"method": "eagle", "model": draft, "num_speculative_tokens": NUM_DRAFT_STEPS}
    config = speculative_config(args)
    assert (config.method, config.num_speculative_tokens) == ("eagle", NUM_DRAFT_STEPS)
    assert config.draft_model_config.architectures == ["EaglePadRecForCausalLM"]
    # what EaglePadRecForCausalLM checks when vLLM builds it: vLLM's EAGLEConfig around the draft's config
    check_draft_matches_target(
        config.draft_model_config.hf_config, config.target_model_config.hf_config, catalog_codebook_sizes(target)
    )


@pytest.mark.parametrize(
    "extra,tokens",
    [
        (["--spec-tokens", "2"], 2),
        (["--num-speculative-tokens", "1"], 1),
        (["--speculative-config", '{"num_speculative_tokens": 2}'], 2),
        (["--speculative-config.num_speculative_tokens", "1"], 1),
        (["--spec-method", "eagle"], NUM_DRAFT_STEPS),
    ],
)
def test_overrides_win_in_any_order(serve_parser, folders, extra, tokens):
    target, draft = str(folders["target"]), str(folders["draft"])
    for argv in ([target, "--speculative-model", draft, *extra], [*extra, target, "--speculative-model", draft]):
        config = speculative_config(serve_parser.parse_args(argv))
        assert (config.method, config.model, config.num_speculative_tokens) == ("eagle", draft, tokens)


def test_speculative_config_alone_is_unchanged(serve_parser, folders):
    target, draft = str(folders["target"]), str(folders["draft"])
    given = {"method": "eagle", "model": draft, "num_speculative_tokens": 2}
    args = serve_parser.parse_args([target, "--speculative-config", json.dumps(given)])
    assert args.speculative_config == given
    assert speculative_config(args).num_speculative_tokens == 2
    # offline LLM(model=..., speculative_config={...}) builds its config from EngineArgs the same way
    from vllm.config import ParallelConfig
    from vllm.engine.arg_utils import EngineArgs

    engine_args = EngineArgs(model=target, speculative_config={"method": "eagle", "model": draft})
    config = engine_args.create_speculative_config(engine_args.create_model_config(), ParallelConfig())
    assert (config.method, config.num_speculative_tokens) == ("eagle", NUM_DRAFT_STEPS)  # vLLM: n_predict


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--spec-method", "ngram"], "method 'eagle'"),
        (["--speculative-config", '{"method": "medusa"}'], "method 'eagle'"),
        (["--speculative-config", '{"model": "/elsewhere"}'], "contradicts"),
        (["--spec-model", "/elsewhere"], "contradicts"),
        # above the draft's n_predict vLLM takes only multiples of it (draft_check.speculative_tokens_problem)
        (["--spec-tokens", str(NUM_DRAFT_STEPS + 1)], "not a multiple"),
        (["--speculative-config", json.dumps({"num_speculative_tokens": NUM_DRAFT_STEPS + 1})], "not a multiple"),
    ],
)
def test_contradictions_are_errors(serve_parser, folders, extra, message):
    with pytest.raises(ValueError, match=message):
        serve_parser.parse_args([str(folders["target"]), "--speculative-model", str(folders["draft"]), *extra])


@pytest.mark.parametrize("draft,field", [("wide", "hidden_size"), ("vocab", "vocab_size"), ("layout", "token layout")])
def test_mismatched_draft_is_refused(serve_parser, folders, draft, field):
    with pytest.raises(DraftTargetMismatchError, match=field):
        serve_parser.parse_args([str(folders["target"]), "--speculative-model", str(folders[draft])])


def test_draft_is_checked_against_the_served_catalog(serve_parser, folders, tmp_path):
    """With padrec.catalog set, the draft's layout is checked against that catalog (the one the masks read),
    not the target folder's; the engine-side check (EaglePadRecForCausalLM) reads the same file."""
    from vllm_padrec.integration.draft_check import served_catalog

    other = tmp_path / "other_catalog.json"
    small_catalog(codebook_sizes=(5, 3)).save(other)
    target = str(folders["target"])
    served = ["--additional-config", json.dumps({"padrec": {"catalog": str(other)}})]
    args = serve_parser.parse_args([target, "--speculative-model", str(folders["layout"]), *served])
    assert args.speculative_config["model"] == str(folders["layout"])
    with pytest.raises(DraftTargetMismatchError, match="token layout"):
        serve_parser.parse_args([target, "--speculative-model", str(folders["draft"]), *served])
    config = SimpleNamespace(model_config=SimpleNamespace(model=target), additional_config={"padrec": {}})
    assert catalog_codebook_sizes(served_catalog(config)) == (4, 3)  # default: the target folder's catalog
    config.additional_config = {"padrec": {"catalog": str(other)}}
    assert catalog_codebook_sizes(served_catalog(config)) == (5, 3)
    config.additional_config = {"padrec": {"catalog": str(tmp_path)}}  # a folder without a catalog
    assert catalog_codebook_sizes(served_catalog(config)) is None


def test_compile_cache_key_holds_the_draft(serve_parser, folders, tmp_path):
    """Two drafts of one target must never share vLLM's compile-cache entry (patches.compute_hash)."""
    target, draft = str(folders["target"]), str(folders["draft"])
    eagle_draft = write_draft(
        tmp_path / "eagle", folders["target"], small_catalog(), architectures=["EagleLlamaForCausalLM"]
    )

    def config(draft_folder, tokens=NUM_DRAFT_STEPS):
        spec = json.dumps({"method": "eagle", "model": str(draft_folder), "num_speculative_tokens": tokens})
        return speculative_config(serve_parser.parse_args([target, "--speculative-config", spec]))

    padrec, eagle = config(draft), config(eagle_draft)
    assert eagle.draft_model_config.architectures == ["EagleLlamaForCausalLM"]
    vllms_own = type(padrec).compute_hash.__wrapped__
    assert vllms_own(padrec) == vllms_own(eagle)  # vLLM 0.26.0's key leaves the eagle draft out
    assert padrec.compute_hash() != eagle.compute_hash()
    assert padrec.compute_hash() == config(draft).compute_hash()  # the same pair reuses its entry
    assert padrec.compute_hash() != config(draft, tokens=2).compute_hash()  # gamma shapes the graphs too
