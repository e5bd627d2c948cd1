"""The ``vllm-padrec`` command: every mistake is one line on stderr naming the problem, exit status 2,
found before any model is loaded where the arguments allow it; every option has help."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from vllm_padrec import cli
from vllm_padrec.catalog import CATALOG_FILE
from vllm_padrec.data import generate_synthetic
from vllm_padrec.draft import DraftConfig, PadRecDraftHead, save_draft
from vllm_padrec.target import model as target_model
from vllm_padrec.target import train as target_train
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import build_model, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer

CONTEXT = 512  # the test target's max_position_embeddings: 100 items fit after 2 history items of 4 codes


pytestmark = pytest.mark.usefixtures("keep_torch_threads")  # the CLI pins torch's threads (conftest)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """An untrained target on the synthetic default catalog (what ``--dataset synthetic`` loads), a draft
    head's folder, and two broken copies of the target."""
    root = tmp_path_factory.mktemp("cli_errors")
    catalog = generate_synthetic().catalog
    recipe = get_recipe("tiny", max_position_embeddings=CONTEXT)
    model = build_model(recipe, catalog.layout)
    target = save_checkpoint(model, build_tokenizer(catalog.layout), catalog, recipe, root / "target")
    draft = save_draft(PadRecDraftHead(DraftConfig.from_target(model.config, catalog.layout, 3)), root / "draft")
    truncated = root / "truncated"
    shutil.copytree(target, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    incomplete = root / "incomplete"
    shutil.copytree(target, incomplete)
    (incomplete / CATALOG_FILE).unlink()
    return {"target": target, "draft": draft, "truncated": truncated, "incomplete": incomplete, "root": root}


@pytest.fixture
def refuse_loading(monkeypatch):
    """Fail the test if a command loads a model or builds one to train."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(target_model, "load_checkpoint", fail)
    monkeypatch.setattr(target_train, "build_model", fail)


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``vllm-padrec argv`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse exits itself
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    code, _, err = run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr:\n{err}"
    assert lines[0].startswith(f"vllm-padrec {argv[0]}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# (name, command line with {target} / {draft} / {root} placeholders, fragments of the message)
MISTAKES = [
    (
        "num-items 0",
        "recommend --checkpoint {target} --history item1 --num-items 0",
        ["argument --num-items", "must be an integer >= 1, got '0'"],
    ),
    (
        "num-items -3",
        "recommend --checkpoint {target} --history item1 --num-items -3",
        ["argument --num-items", "got '-3'"],
    ),
    (
        "num-items past the context",
        "recommend --checkpoint {target} --history item1 item2 --num-items 101",
        ["a list of 101 items after 2 history items", f"{CONTEXT}-token context", "at most 100 items fit"],
    ),
    (
        "num-items past the catalog",
        "recommend --checkpoint {target} --history item1 --num-items 401",
        ["--num-items 401 needs 401 distinct items", "catalog 'synthetic' has 400 items"],
    ),
    (
        "every unknown id",
        "recommend --checkpoint {target} --history item1 nope1 item2 nope2",
        ["unknown item ids in the history: 'nope1', 'nope2'"],
    ),
    (
        "split",
        "evaluate --checkpoint {target} --dataset synthetic --split bogus",
        ["argument --split: invalid choice: 'bogus'"],
    ),
    (
        "max-users 0",
        "evaluate --checkpoint {target} --dataset synthetic --max-users 0",
        ["argument --max-users", "got '0'"],
    ),
    (
        "beam wider than the catalog",
        "evaluate --checkpoint {target} --dataset synthetic --beam-width 1000000",
        ["--beam-width 1000000 needs 1000000 distinct items", "400 items"],
    ),
    (
        "nothing to evaluate",
        "evaluate --checkpoint {target} --dataset synthetic --list-items 0 --beam-width 0",
        ["nothing to evaluate"],
    ),
    (
        "method",
        "train-draft --target {target} --dataset synthetic --out {root}/d --method lookahead",
        ["argument --method: invalid choice: 'lookahead'"],
    ),
    (
        "gamma 0",
        "train-draft --target {target} --dataset synthetic --out {root}/d --gamma 0",
        ["argument --gamma", "got '0'"],
    ),
    (
        "draft as target (train-draft)",
        "train-draft --target {draft} --dataset synthetic --out {root}/d",
        ["holds a model of architecture EaglePadRecForCausalLM, not a vllm-padrec target"],
    ),
    (
        "draft as checkpoint (evaluate)",
        "evaluate --checkpoint {draft} --dataset synthetic",
        ["not a vllm-padrec target"],
    ),
    (
        "incomplete checkpoint",
        "evaluate --checkpoint {root}/incomplete --dataset synthetic",
        ["incomplete target checkpoint: no padrec_catalog.json"],
    ),
    ("no checkpoint", "recommend --checkpoint {root}/nowhere --history item1", ["does not exist"]),
    ("unknown dataset", "data --dataset no_such_dataset", ["'no_such_dataset' is neither 'synthetic'"]),
    (
        "device name",
        "evaluate --checkpoint {target} --dataset synthetic --device gpu",
        ["argument --device", "'gpu' is not a device"],
    ),
    ("recipe", "train-target --recipe huge --out {root}/t", ["argument --recipe: invalid choice: 'huge'"]),
    ("epochs 0", "train-target --out {root}/t --epochs 0", ["argument --epochs", "must be a number > 0"]),
    ("time budget nan", "train-target --out {root}/t --time-budget-minutes nan", ["argument --time-budget-minutes"]),
    ("micro batch 0", "train-target --out {root}/t --micro-batch-size 0", ["argument --micro-batch-size"]),
    ("lr 0", "train-draft --target {target} --dataset synthetic --out {root}/d --lr 0", ["argument --lr"]),
    (
        "atspeed without top-K data",
        "train-draft --target {target} --dataset synthetic --out {root}/d --method padrec --objective atspeed_s",
        ["objective 'atspeed_s' aligns the draft with the target's top-K beams: it needs topk >= 1"],
    ),
    (
        "atspeed for medusa",
        "train-draft --target {target} --dataset synthetic --out {root}/d --topk 5 --objective atspeed_s",
        ["objective 'atspeed_s' trains unrolled heads; Medusa trains by distillation"],
    ),
    (
        "top-K deeper than an item",
        "train-draft --target {target} --dataset synthetic --out {root}/d --method padrec --topk 5 --gamma 5",
        ["top-K sequences hold 3 draft positions per item", "num_draft_steps=5"],
    ),
    ("objective", "train-draft --target {target} --dataset synthetic --out {root}/d --objective kl", ["--objective"]),
    (
        "trained steps past gamma",
        "train-draft --target {target} --dataset synthetic --out {root}/d --gamma 3 --train-steps 4",
        ["--train-steps 4 is more than --gamma 3"],
    ),
    ("users -1", "quickstart --users -1", ["argument --users", "must be an integer >= 0, got '-1'"]),
    ("missing option", "evaluate --dataset synthetic", ["the following arguments are required: --checkpoint"]),
]


@pytest.mark.parametrize("argv, fragments", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2_before_any_model_loads(capsys, folders, refuse_loading, argv, fragments):
    assert_one_line_error(capsys, argv.format(**folders).split(), *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu(capsys, folders, refuse_loading):
    argv = ["recommend", "--checkpoint", str(folders["target"]), "--history", "item1", "--device", "cuda"]
    assert_one_line_error(capsys, argv, "argument --device: cuda: this machine has no CUDA GPU")


def test_a_checkpoint_and_a_dataset_of_another_catalog(capsys, folders, refuse_loading, data_dir):
    beauty = str(Path(data_dir) / "beauty_atspeed")
    for argv in (
        ["evaluate", "--checkpoint", str(folders["target"]), "--dataset", beauty],
        ["train-draft", "--target", str(folders["target"]), "--dataset", beauty, "--out", str(folders["root"] / "d")],
    ):
        assert_one_line_error(
            capsys,
            argv,
            "trained on catalog 'synthetic' (400 items, codebooks 8x8x8x8)",
            "dataset 'beauty_atspeed' has 12,035 items",
        )


def test_truncated_weights(capsys, folders):
    argv = ["evaluate", "--checkpoint", str(folders["truncated"]), "--dataset", "synthetic"]
    assert_one_line_error(capsys, argv, f"the weights in {folders['truncated']} are truncated or corrupt")


def test_truncated_training_state(capsys, tmp_path, refuse_loading):
    (tmp_path / target_train.STATE_FILE).write_bytes(b"PK\x03\x04 not the whole zip archive")
    argv = ["train-target", "--out", str(tmp_path)]
    assert_one_line_error(capsys, argv, "train_state.pt is truncated or corrupt", "delete it to start the run over")


def test_a_recipe_too_large_for_the_device_is_refused_before_allocating(capsys, tmp_path, monkeypatch, refuse_loading):
    monkeypatch.setattr(target_train, "free_memory", lambda device: 8 * 2**30)
    argv = ["train-target", "--recipe", "bench", "--out", str(tmp_path), "--device", "cpu"]
    assert_one_line_error(capsys, argv, "recipe 'bench' needs at least", "1.31B parameters", "cpu has 8.0 GiB free")
    # in parts of 8 examples, the activations of a pass shrink 16-fold; the weights and moments stay
    argv += ["--micro-batch-size", "8"]
    assert_one_line_error(
        capsys, argv, "needs at least 21.0 GiB", "activations for passes of 8 x 71 tokens", "--micro-batch-size"
    )


def test_a_list_longer_than_64_items_is_only_bounded_by_the_context(capsys, folders):
    """The list's no-repeat room grows with the list (it was a fixed 64 before)."""
    argv = [
        "recommend",
        "--checkpoint",
        str(folders["target"]),
        "--history",
        "item1",
        "item2",
        "--num-items",
        "65",
        "--device",
        "cpu",
    ]
    code, out, err = run(capsys, argv)
    assert code == 0, err
    ranks = [line.split(".")[0].strip() for line in out.splitlines() if line.startswith("  ") and "." in line[:5]]
    assert ranks[-1] == "65" and len(ranks) == 65


def test_every_option_of_every_command_has_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    names = {"quickstart", "data", "train-target", "train-draft", "evaluate", "recommend", "topk", "gamma-schedule"}
    assert set(commands) == names
    for name, command in commands.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help.strip(), f"{name} {action.option_strings} has no help"


def test_torch_threads_follow_the_allowed_cores(monkeypatch):
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    cli.pin_cpu_threads()
    assert torch.get_num_threads() == 3
