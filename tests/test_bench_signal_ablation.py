"""benchmarks/bench_signal_ablation.py: the paired gain over EAGLE and its verdicts, the summary over seeds, and a
run on the CPU (a tiny target on the synthetic data, heads of a few steps) that trains each head once, reuses it,
and writes lossless records, the table and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import bench_signal_ablation as ablation
from vllm_padrec.data import open_dataset
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.train import train_target


def test_paired_gain_reads_each_seed_against_its_own_eagle_head():
    gain = ablation.paired_gain({0: 3.3, 1: 2.2, 2: 4.4}, {0: 3.0, 1: 2.0, 2: 4.0, 3: 9.9})
    assert gain["seeds"] == [0, 1, 2] and gain["gains"] == pytest.approx([0.1, 0.1, 0.1])
    assert gain["mean"] == pytest.approx(0.1) and gain["std"] == pytest.approx(0.0, abs=1e-12)
    assert gain["shown"] and gain["goal_shown"]  # +10 % on every seed, no spread


def test_a_gain_within_the_seed_spread_is_not_shown():
    # +6 % on average, but one seed loses: two standard errors reach below 0
    gain = ablation.paired_gain({0: 1.20, 1: 0.98, 2: 1.00}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert gain["mean"] == pytest.approx(0.06)
    assert gain["stderr"] == pytest.approx(math.sqrt(((0.14**2) + (0.08**2) + (0.06**2)) / 2) / math.sqrt(3))
    assert not gain["shown"] and not gain["goal_shown"]
    # above 0 beyond the spread, but not above the goal's 5 %
    small = ablation.paired_gain({0: 1.03, 1: 1.04, 2: 1.03}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert small["shown"] and not small["goal_shown"]
    # three seeds clear of 0 by two standard errors, not by t(0.975, 2) = 4.3 of them: not shown
    near = ablation.paired_gain({0: 1.001, 1: 1.005, 2: 1.006}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert near["mean"] - 2 * near["stderr"] > 0 and near["low"] < 0 and not near["shown"]
    assert ablation.t_quantile(2) == pytest.approx(4.303) and ablation.t_quantile(40) == pytest.approx(1.96)


def test_one_seed_never_shows_a_gain_and_no_common_seed_gives_none():
    one = ablation.paired_gain({0: 2.0}, {0: 1.0})
    assert one["mean"] == pytest.approx(1.0) and one["std"] is None and not one["shown"]
    assert ablation.paired_gain({0: 2.0}, {1: 1.0}) is None


def _record(variant: str, seed: int, gamma: int, length: float, rates=(0.5, 0.25)) -> dict:
    return dict(
        variant=variant,
        seed=seed,
        gamma=gamma,
        acceptance_length=length,
        acceptance_rate_by_step=list(rates),
        mismatches=0,
    )


def test_summary_pairs_variants_with_eagle_at_the_same_depth():
    records = [
        _record("eagle", 0, 5, 2.0, (0.6, 0.2)),
        _record("eagle", 1, 5, 2.2, (0.4, 0.4)),
        _record("padrec", 0, 5, 2.2),
        _record("padrec", 1, 5, 2.2),
        _record("eagle", 0, 8, 3.0),
        _record("padrec", 0, 8, 2.7),
    ]
    rows = {(r["variant"], r["gamma"]): r for r in ablation.summarize(records)}
    eagle = rows[("eagle", 5)]
    assert eagle["acceptance_length"] == pytest.approx(2.1) and eagle["acceptance_lengths"] == [2.0, 2.2]
    assert eagle["acceptance_rate_by_step"] == pytest.approx([0.5, 0.3]) and eagle["gain_over_eagle"] is None
    assert rows[("padrec", 5)]["gain_over_eagle"]["gains"] == pytest.approx([0.1, 0.0])
    assert rows[("padrec", 8)]["gain_over_eagle"]["gains"] == pytest.approx([-0.1])  # paired with γ 8's EAGLE


def test_every_variant_is_read_against_both_eagle_heads_where_they_ran():
    records = [
        _record("eagle", 0, 5, 2.0),
        _record("eagle", 1, 5, 2.0),
        _record("eagle_one_step", 0, 5, 2.5),
        _record("eagle_one_step", 1, 5, 1.6),
        _record("padrec", 0, 5, 2.2),
        _record("padrec", 1, 5, 2.4),
        _record("eagle", 0, 8, 3.0),
        _record("padrec", 0, 8, 2.7),
    ]
    rows = {(r["variant"], r["gamma"]): r for r in ablation.summarize(records)}
    padrec = rows[("padrec", 5)]
    assert padrec["gain_over_eagle"]["gains"] == pytest.approx([0.1, 0.2])
    assert padrec["gain_over_eagle_one_step"]["gains"] == pytest.approx([2.2 / 2.5 - 1, 0.5])  # paired by seed
    assert rows[("eagle_one_step", 5)]["gain_over_eagle"]["gains"] == pytest.approx([0.25, -0.2])
    assert rows[("eagle", 5)]["gain_over_eagle_one_step"]["gains"] == pytest.approx([-0.2, 0.25])
    assert rows[("eagle_one_step", 5)]["gain_over_eagle_one_step"] is None  # not against itself
    assert rows[("padrec", 8)]["gain_over_eagle_one_step"] is None  # no one-step head at γ 8


def test_a_one_step_head_is_its_variant_with_a_one_step_loss():
    assert ablation.head_recipe("eagle_one_step") == ("eagle", 1)
    assert ablation.head_recipe("padrec_one_step") == ("padrec", 1)
    assert ablation.head_recipe("padrec_channel_gate") == ("padrec_channel_gate", 0)  # unrolled over its γ
    from vllm_padrec.draft.config import VARIANTS

    assert {ablation.head_recipe(v)[0] for v in ablation.ablation_variants()} == set(VARIANTS)  # the trainer's own


def test_cli_refuses_a_run_without_eagle_or_with_a_repeated_seed(capsys):
    for argv, message in (
        (["--target", "t", "--dataset", "synthetic", "--variants", "padrec"], "must include 'eagle'"),
        (["--target", "t", "--dataset", "synthetic", "--seeds", "1", "1"], "repeats a seed"),
        (["--dataset", "synthetic"], "--target and --dataset are required"),
    ):
        with pytest.raises(SystemExit):
            ablation.main(argv)
        assert message in capsys.readouterr().err


def test_a_cpu_run_trains_each_head_once_and_writes_lossless_records(tmp_path, monkeypatch):
    data = open_dataset("synthetic")
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, list_items=4, epochs=0.25)
    checkpoint = train_target(recipe, data, tmp_path / "target", progress=False).checkpoint
    argv = ["--target", str(checkpoint), "--dataset", "synthetic", "--variants", "eagle", "padrec_channel_gate"]
    argv += ["eagle_one_step"]
    argv += ["--gammas", "2", "--seeds", "0", "1", "--draft-steps", "6", "--users", "8", "--device", "cpu"]
    argv += ["--work", str(tmp_path / "heads"), "--out", str(tmp_path), "--name", "t"]
    assert ablation.main(argv) == 0
    result = json.loads((tmp_path / "signal_ablation_t.json").read_text())
    records = result["records"]
    assert [(r["seed"], r["variant"]) for r in records] == [
        (0, "eagle"),
        (0, "padrec_channel_gate"),
        (0, "eagle_one_step"),
        (1, "eagle"),
        (1, "padrec_channel_gate"),
        (1, "eagle_one_step"),
    ]
    assert all(r["mismatches"] == 0 and r["gamma"] == 2 and r["training_steps"] == 6 for r in records)
    assert [r["loss_draft_steps"] for r in records[:3]] == [2, 2, 1]  # the one-step head's loss: one draft step
    one_step = [r for r in records if r["variant"] == "eagle_one_step"]
    eagle = [r for r in records if r["variant"] == "eagle"]
    for taught, unrolled in zip(one_step, eagle):  # the same seed's init and data, another loss: other weights
        assert taught["seed"] == unrolled["seed"]
        weights = [(Path(r["draft"]) / "model.safetensors").read_bytes() for r in (taught, unrolled)]
        assert weights[0] != weights[1]
    channel = next(r for r in result["summary"] if r["variant"] == "padrec_channel_gate")
    assert channel["gain_over_eagle"]["seeds"] == [0, 1] and channel["gain_over_eagle_one_step"]["seeds"] == [0, 1]
    table = (tmp_path / "signal_ablation_t.md").read_text()
    assert "| eagle | 2 |" in table and "| padrec_channel_gate | 2 |" in table and "| eagle_one_step | 2 |" in table
    assert "| gain over EAGLE | gain over one-step EAGLE |" in table
    # a second run reuses the finished heads: no training step runs again
    from vllm_padrec.training import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("a finished head was trained again")

    monkeypatch.setattr(trainer.TrainingLoop, "_train_step", no_training)
    assert ablation.main(argv) == 0
    again = json.loads((tmp_path / "signal_ablation_t.json").read_text())["records"]
    assert [r["acceptance_length"] for r in again] == [r["acceptance_length"] for r in records]


def test_a_head_stopped_by_a_signal_stops_the_run_and_resumes_on_the_next(tmp_path, monkeypatch, capsys):
    """A head that returned before its budget (SIGTERM) is never read beside full ones: the run stops in one line,
    and the same command again resumes that head and finishes."""
    import dataclasses

    from vllm_padrec.training import trainer

    data = open_dataset("synthetic")
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, list_items=4, epochs=0.25)
    checkpoint = train_target(recipe, data, tmp_path / "target", progress=False).checkpoint
    argv = ["--target", str(checkpoint), "--dataset", "synthetic", "--variants", "eagle", "--gammas", "2"]
    argv += ["--seeds", "0", "--draft-steps", "6", "--users", "8", "--device", "cpu"]
    argv += ["--work", str(tmp_path / "heads"), "--out", str(tmp_path), "--name", "t"]
    real = trainer.train_draft

    def stopped(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), finished=False, steps=3, stopped_by="SIGTERM")

    monkeypatch.setattr(trainer, "train_draft", stopped)
    assert ablation.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the trainer's progress lines
    assert err.startswith("bench_signal_ablation stopped: eagle (seed 0, γ 2) stopped after 3 of 6 steps (SIGTERM)")
    assert not (tmp_path / "signal_ablation_t.json").exists()  # nothing written from a short head
    monkeypatch.setattr(trainer, "train_draft", real)
    assert ablation.main(argv) == 0
    assert json.loads((tmp_path / "signal_ablation_t.json").read_text())["records"][0]["training_steps"] == 6


def _run(steps: int, lengths: dict[str, list[float]], target: str = "t", dataset: str = "d") -> dict:
    """An ablation payload whose heads trained ``steps`` steps: ``lengths[variant]`` per seed at γ 8."""
    records = [
        _record(variant, seed, 8, value) for variant, values in lengths.items() for seed, value in enumerate(values)
    ]
    settings = dict(target=target, dataset=dataset, draft_steps=steps, users=9, num_items=5, preset="tiny")
    return dict(settings=settings, records=records)


def test_the_budget_view_reads_each_run_at_its_training_steps(tmp_path, capsys):
    short = _run(400, {"eagle": [2.0, 2.2], "padrec": [2.1, 2.1]})
    long = _run(1600, {"eagle": [3.0], "padrec": [3.3]})
    rows = ablation.budget_rows([long, short])
    assert [(r["variant"], r["draft_steps"]) for r in rows] == [
        ("eagle", 400),
        ("eagle", 1600),
        ("padrec", 400),
        ("padrec", 1600),
    ]
    assert rows[0]["acceptance_length"] == pytest.approx(2.1) and rows[0]["acceptance_lengths"] == [2.0, 2.2]
    assert rows[3]["acceptance_length"] == pytest.approx(3.3)
    with pytest.raises(ValueError, match="one target and dataset"):
        ablation.budget_rows([short, _run(1600, {"eagle": [3.0]}, target="other")])
    with pytest.raises(ValueError, match=r"different training steps, got steps \[400, 400\]"):
        ablation.budget_rows([short, short])
    paths = []
    for n, payload in enumerate((short, long)):
        paths.append(tmp_path / f"run{n}.json")
        paths[-1].write_text(json.dumps(payload))
    assert ablation.main(["--budget", "b", *map(str, paths), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "signal_ablation_budget_b.md").read_text()
    assert "| variant | γ | 400 steps | 1600 steps |" in table
    assert "| eagle | 8 | 2.100 (2) | 3.000 (1) |" in table and "| padrec | 8 | 2.100 (2) | 3.300 (1) |" in table
    assert json.loads((tmp_path / "signal_ablation_budget_b.json").read_text())["rows"] == rows
    with pytest.raises(SystemExit):  # one run is no comparison
        ablation.main(["--budget", "b", str(paths[0])])
    assert "a name and at least two runs" in capsys.readouterr().err
