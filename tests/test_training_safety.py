"""A stopped or killed training run keeps what it has: checkpoints appear whole or not at all, SIGTERM
and SIGINT save the state at the next step boundary (before the first periodic save too), and a
time-budgeted stop prints the command that continues it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from draft_helpers import tiny_target

from vllm_padrec import cli
from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.draft import checkpoint as draft_checkpoint
from vllm_padrec.durability import StopSignals, atomic_folder
from vllm_padrec.errors import CheckpointError
from vllm_padrec.target.config import RECIPE_FILE, get_recipe
from vllm_padrec.target.model import build_model, load_checkpoint, save_checkpoint
from vllm_padrec.target.tokenizer import build_tokenizer
from vllm_padrec.target.train import CHECKPOINT_DIR, LOSS_FILE, PLOT_FILE, STATE_FILE, train_target
from vllm_padrec.training import DraftTrainConfig, train_draft

TESTS = Path(__file__).parent
# `train-target` through the CLI on the synthetic default: ceil(0.05 * 152) = 8 steps of the tiny recipe
TARGET_ARGS = ["train-target", "--epochs", "0.05", "--device", "cpu"]
SIGNAL_STEP = 3  # the child waits for the signal inside this step's loss; training stops after it


pytestmark = pytest.mark.usefixtures("keep_torch_threads")  # the CLI pins torch's threads (conftest)


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(SyntheticConfig(num_items=60, num_users=40, codebook_sizes=(4, 4, 4, 4)))


def small_recipe(**changes):
    base = dict(hidden_size=32, intermediate_size=64, max_history=4, list_items=3, batch_size=16, log_every=2)
    return get_recipe("tiny", **(base | changes))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def leftovers(folder: Path) -> list[str]:
    """Temporary or set-aside folders of atomic writes."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# -- whole or not at all --------------------------------------------------------------------------------
def test_atomic_folder_is_whole_or_absent(tmp_path):
    final = tmp_path / "checkpoint"
    with pytest.raises(OSError, match="disk full"):
        with atomic_folder(final) as staging:
            (staging / "weights").write_text("w")
            raise OSError("disk full")
    assert not final.exists() and leftovers(tmp_path) == []
    with atomic_folder(final) as staging:
        (staging / "weights").write_text("old")
        (staging / "catalog").write_text("old")
    with pytest.raises(KeyboardInterrupt):  # a failed rewrite keeps the old folder as it was
        with atomic_folder(final) as staging:
            (staging / "weights").write_text("new")
            raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in final.iterdir()} == {"weights": "old", "catalog": "old"}
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"checkpoint.tmp-{dead.pid}").mkdir()  # a writer that was killed
    with atomic_folder(final) as staging:
        (staging / "weights").write_text("new")
    assert [p.name for p in final.iterdir()] == ["weights"] and leftovers(tmp_path) == []


def test_a_checkpoint_that_fails_midway_is_not_written(data, tmp_path, monkeypatch):
    recipe = small_recipe()
    model = build_model(recipe, data.catalog.layout)
    tokenizer = build_tokenizer(data.catalog.layout)
    folder = save_checkpoint(model, tokenizer, data.catalog, recipe, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(self, path):  # after the weights and the tokenizer, before the catalog and the recipe
        raise OSError("disk full")

    monkeypatch.setattr(ItemCatalog, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tokenizer, data.catalog, recipe, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tokenizer, data.catalog, recipe, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old one, untouched
    assert leftovers(tmp_path) == []


def test_a_failed_final_write_leaves_no_partial_checkpoint_and_the_run_still_finishes(data, tmp_path, monkeypatch):
    recipe = small_recipe(max_steps=4)
    with monkeypatch.context() as patch:
        patch.setattr(ItemCatalog, "save", lambda self, path: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            train_target(recipe, data, tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT_DIR).exists() and leftovers(tmp_path) == []
    result = train_target(recipe, data, tmp_path, progress=False)
    assert result.finished and result.checkpoint == tmp_path / CHECKPOINT_DIR
    assert (result.checkpoint / CATALOG_FILE).exists() and (result.checkpoint / RECIPE_FILE).exists()
    assert load_checkpoint(result.checkpoint).catalog.item_ids == data.catalog.item_ids


def test_a_draft_that_fails_midway_is_not_written(data, tmp_path, monkeypatch):
    real_save_file = draft_checkpoint.save_file

    def weights_then_crash(*args, **kwargs):  # the weights are written, config.json is not
        real_save_file(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(draft_checkpoint, "save_file", weights_then_crash)
    with pytest.raises(OSError, match="disk full"):
        train_draft("eagle", tiny_target(), data, DraftTrainConfig.tiny(max_steps=2), tmp_path, "cpu", progress=False)
    assert not (tmp_path / "draft").exists() and leftovers(tmp_path) == []


def test_a_truncated_draft_state_is_a_checkpoint_error(data, tmp_path):
    (tmp_path / "train_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="train_state.pt is truncated or corrupt"):
        train_draft("eagle", tiny_target(), data, DraftTrainConfig.tiny(max_steps=2), tmp_path, "cpu", progress=False)


# the state files of older versions: the target's before the shared training loop, the draft's before its log window
OLD_TARGET_STATE = {
    "recipe": {},
    "data": "",
    "step": 3,
    "log": [(2, 1.5)],
    "val": {},
    "trained_seconds": 1.0,
    "finished": False,
    "model": {},
    "optimizer": {},
    "scheduler": {},
    "plan_epoch": 0,
    "plan": [],
    "window_loss": torch.tensor(0.5),
    "window_steps": 1,
    "rng": {"torch": torch.get_rng_state(), "cuda": None},
}
OLD_DRAFT_STATE = {"method": "eagle", "step": 1, "model": {}, "optimizer": {}, "log": [], "elapsed_s": 1.0}
OLDER_VERSION = (
    "was saved by an older version of vllm-padrec (no {key!r}) and cannot be resumed: "
    "delete it to train from the start, or train into a new --out folder"
)


@pytest.mark.parametrize("finished", [False, True])
def test_a_target_state_of_an_older_version_is_a_one_line_error(tmp_path, capsys, finished):
    state = OLD_TARGET_STATE | {"finished": finished}
    if finished:  # a finished run saved no weights
        for key in ("model", "optimizer", "scheduler", "plan_epoch", "plan", "window_loss", "window_steps", "rng"):
            del state[key]
    torch.save(state, tmp_path / STATE_FILE)
    assert cli.main(TARGET_ARGS + ["--out", str(tmp_path)]) == 2
    message = OLDER_VERSION.format(key="elapsed_s")
    assert capsys.readouterr().err == f"vllm-padrec train-target: error: {tmp_path / STATE_FILE} {message}\n"


def test_a_draft_state_of_an_older_version_is_a_checkpoint_error(data, tmp_path):
    config = DraftTrainConfig.tiny(max_steps=2)
    torch.save(OLD_DRAFT_STATE | {"config": config.to_dict()}, tmp_path / "train_state.pt")
    message = f"{tmp_path / 'train_state.pt'} {OLDER_VERSION.format(key='window')}"
    with pytest.raises(CheckpointError) as raised:
        train_draft("eagle", tiny_target(), data, config, tmp_path, "cpu", progress=False)
    assert str(raised.value) == message


def test_a_draft_state_without_the_finished_flag_resumes(data, tmp_path):
    """The draft's state layout is the loop's but for "finished", which a resumed run does not read."""
    config, target = DraftTrainConfig.tiny(max_steps=2), tiny_target()
    train_draft("eagle", target, data, config, tmp_path, "cpu", stop_after_steps=1, progress=False)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    del state["finished"]
    torch.save(state, tmp_path / "train_state.pt")
    result = train_draft("eagle", target, data, config, tmp_path, "cpu", progress=False)
    assert result.finished and result.steps == 2


# -- stop signals ---------------------------------------------------------------------------------------
def test_stop_signals_set_a_flag_then_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.signal == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_sigint_interrupts_at_once():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with StopSignals() as stop:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                assert stop.signal == signal.SIGINT
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stop_signals_leave_an_ignored_signal_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert stop.signal is None
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stop_signals_leave_other_threads_alone():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def worker():
        with StopSignals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]


# The child trains, and inside the loss of step SIGNAL_STEP tells the parent it is ready and waits
# until the parent has sent the signal: the signal lands mid-step, deterministically. It handles SIGINT as a
# foreground process does, even when pytest runs as a background job (which inherits SIGINT ignored, and
# StopSignals rightly leaves an ignored signal alone).
CHILD = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
ready, go = Path({ready!r}), Path({go!r})
import {module} as patched
original = patched.{loss}
calls = 0

def loss_then_wait(*args, **kwargs):
    global calls
    calls += 1
    if calls == {step}:
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
    return original(*args, **kwargs)

patched.{loss} = loss_then_wait
{run}
"""


def run_child(tmp_path: Path, module: str, loss: str, run: str, signum: int, before_signal=None):
    """Start the child, send ``signum`` during step SIGNAL_STEP; its completed process."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = CHILD.format(
        tests=str(TESTS), ready=str(ready), go=str(go), module=module, loss=loss, step=SIGNAL_STEP, run=run
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never reached the step"
            time.sleep(0.05)
        if before_signal is not None:
            before_signal()
        child.send_signal(signum)
        go.touch()
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_sigterm_saves_the_target_state_before_the_first_periodic_save_and_resuming_matches(tmp_path, capsys):
    out = tmp_path / "stopped"
    argv = TARGET_ARGS + ["--out", str(out)]

    def no_state_yet():  # the run is minutes from its first periodic save (save_every_minutes)
        assert not (out / STATE_FILE).exists()

    run = f"from vllm_padrec.cli import main\nsys.exit(main({argv!r}))"
    child = run_child(tmp_path, "vllm_padrec.target.train", "completion_loss", run, signal.SIGTERM, no_state_yet)
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    message = child.stderr.strip().splitlines()[-1]
    assert message == (
        f"vllm-padrec train-target: stopped by SIGTERM at step {SIGNAL_STEP} of 8; the state is saved "
        f"in {out / STATE_FILE}. To continue, run: {shlex.join(['vllm-padrec', *argv])}"
    )
    assert json.loads(child.stdout[child.stdout.index("{") :])["stopped_by"] == "SIGTERM"
    assert (out / STATE_FILE).exists() and not (out / CHECKPOINT_DIR).exists()
    assert torch.load(out / STATE_FILE, weights_only=False)["step"] == SIGNAL_STEP
    # resumed with the command it printed, it ends where an uninterrupted run ends
    assert cli.main(shlex.split(message.split("To continue, run: ")[1])[1:]) == 0
    assert cli.main(TARGET_ARGS + ["--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()
    logs = [json.loads((tmp_path / run / LOSS_FILE).read_text()) for run in ("stopped", "straight")]
    assert logs[0] == logs[1] and logs[0][-1]["step"] == 8
    weights = [load_checkpoint(tmp_path / run / CHECKPOINT_DIR).model.state_dict() for run in ("stopped", "straight")]
    assert same_state(*weights)


def test_sigint_saves_the_draft_state_and_resuming_matches(data, tmp_path):
    config = DraftTrainConfig.tiny(max_steps=10, save_every=100)  # no periodic save before the end
    run = f"""
import torch
torch.set_num_threads(1)  # as in this process (conftest): the same arithmetic, bit for bit
from draft_helpers import tiny_target
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.training import DraftTrainConfig, train_draft
data = generate_synthetic(SyntheticConfig(num_items=60, num_users=40, codebook_sizes=(4, 4, 4, 4)))
result = train_draft("padrec", tiny_target(), data, DraftTrainConfig.tiny(max_steps=10, save_every=100),
                     {str(tmp_path / "stopped")!r}, "cpu", progress=False)
print(result.stopped_by, result.steps, result.finished)
"""
    child = run_child(tmp_path, "vllm_padrec.training.trainer", "draft_loss", run, signal.SIGINT)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["SIGINT", str(SIGNAL_STEP), "False"]
    state = torch.load(tmp_path / "stopped" / "train_state.pt", weights_only=False)
    assert state["step"] == SIGNAL_STEP
    resumed = train_draft("padrec", tiny_target(), data, config, tmp_path / "stopped", "cpu", progress=False)
    straight = train_draft("padrec", tiny_target(), data, config, tmp_path / "straight", "cpu", progress=False)
    assert resumed.finished and resumed.stopped_by is None and resumed.steps == 10
    assert resumed.final_loss == straight.final_loss
    a, b = (torch.load(tmp_path / run / "train_state.pt", weights_only=False) for run in ("stopped", "straight"))
    assert same_state(a["model"], b["model"])
    assert [e["loss"] for e in a["log"]] == [e["loss"] for e in b["log"]]  # the window cut by the stop included


# -- a time-budgeted stop says how to continue, and the target's loss is plotted -------------------------
def test_a_time_budget_stop_prints_the_command_that_continues(tmp_path, capsys):
    argv = TARGET_ARGS + ["--out", str(tmp_path), "--time-budget-minutes", "1e-6"]  # one step per call
    assert cli.main(argv) == cli.TIME_BUDGET_EXIT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"vllm-padrec train-target: stopped at its time budget at step 1 of 8; the state is saved in "
        f"{tmp_path / STATE_FILE}. To continue, run: "
    )
    again = err.split("To continue, run: ")[1].removesuffix(" (add --until-done to keep going in one process)")
    assert again == shlex.join(["vllm-padrec", *argv])
    assert cli.main(shlex.split(again)[1:] + ["--until-done"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["finished"] and result["step"] == 8 and result["loss_plot"] == str(tmp_path / PLOT_FILE)
    assert (tmp_path / PLOT_FILE).read_bytes().startswith(b"\x89PNG")
