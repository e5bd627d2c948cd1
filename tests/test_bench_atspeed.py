"""benchmarks/bench_atspeed.py on the CPU: tiny target and heads trained here, the records' numbers and files.

The H200 runs it on the bench target (benchmarks/gpu_session.py); here it runs end to end on a tiny target
and two tiny heads (distillation and AtSpeed-S on the target's top-K beams), which checks what it measures
(no mismatches, passes between 2 and L) and what it writes, not how well the heads draft.
"""

from __future__ import annotations

import json

import pytest
from conftest import requires_gpu

from benchmarks import bench_atspeed
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import load_checkpoint
from vllm_padrec.target.train import train_target
from vllm_padrec.training import DraftTrainConfig, train_draft


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("atspeed")
    data = generate_synthetic(SyntheticConfig(num_items=40, num_users=60, codebook_sizes=(4, 4, 4, 4), seed=3))
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, max_history=4, list_items=3, epochs=1)
    target = train_target(recipe, data, root / "target", progress=False).checkpoint
    ckpt = load_checkpoint(target)
    drafts = {}
    for objective in ("distill", "atspeed_s"):
        config = DraftTrainConfig.tiny(topk=3, topk_users=20, objective=objective, max_steps=8, max_history=4)
        train_draft("padrec", ckpt, data, config, root / objective, "cpu", progress=False)
        drafts[objective] = root / objective
    return root, data, target, drafts


def test_records_measure_exact_rounds_and_carry_the_trainers_objective(trained, monkeypatch):
    root, data, target, drafts = trained
    monkeypatch.setattr("vllm_padrec.data.open_dataset", lambda name: data)
    argv = ["--target", str(target), "--dataset", "synthetic", "--ks", "1", "3", "--draft-beams", "4", "--gamma", "2"]
    argv += ["--users", "5", "--device", "cpu", "--out", str(root / "results"), "--name", "tiny"]
    argv += ["--drafts", *(f"{name}={path}" for name, path in drafts.items())]
    assert bench_atspeed.main(argv) == 0
    payload = json.loads((root / "results" / "atspeed_tiny.json").read_text())
    records = payload["records"]
    wanted = [(d, rule, k) for rule in ("strict", "relaxed") for d in ("distill", "atspeed_s") for k in (1, 3)]
    assert [(r["draft"], r["rule"], r["k"]) for r in records] == wanted
    for r in records:
        assert r["objective"] == r["draft"] and r["topk"] == 3 and r["users"] == 5
        assert r["mismatches"] == 0 or r["rule"] == "relaxed"  # strict is exact; relaxed may differ
        assert 0 <= r["recall_at_k"] <= 1 and 0 <= r["plain_ndcg_at_k"] <= 1
        assert 2 <= r["target_passes_per_request"] <= r["plain_target_passes"] == 4
        assert r["pass_reduction"] == pytest.approx(4 / r["target_passes_per_request"])
        assert sum(r["accepted_histogram"].values()) >= 5  # at least a round per user
        assert r["draft_beams"] == max(4, r["k"])
    md = (root / "results" / "atspeed_tiny.md").read_text()
    assert md.count("| distill |") == 4 and (root / "results" / "atspeed_tiny.png").exists()
    strict = [r for r in records if r["rule"] == "strict"]
    assert all(r["recall_at_k"] == r["plain_recall_at_k"] for r in strict)  # strict answers are the beam search's


def test_a_run_cut_short_keeps_the_records_it_measured(trained, monkeypatch):
    """The H200 run of 2026-12-02 lost its strict rows when the relaxed ones raised: each record is saved."""
    root, data, target, drafts = trained
    monkeypatch.setattr("vllm_padrec.data.open_dataset", lambda name: data)

    def broken(*args):
        raise RuntimeError("relaxed rounds broke")

    monkeypatch.setattr("vllm_padrec.decoding.drafted_topk.relaxed_topk", broken)
    argv = ["--target", str(target), "--dataset", "synthetic", "--ks", "1", "3", "--draft-beams", "4", "--gamma", "2"]
    argv += ["--users", "3", "--device", "cpu", "--out", str(root / "cut"), "--name", "cut"]
    argv += ["--drafts", *(f"{name}={path}" for name, path in drafts.items())]
    with pytest.raises(RuntimeError, match="relaxed rounds broke"):
        bench_atspeed.main(argv)
    records = json.loads((root / "cut" / "atspeed_cut.json").read_text())["records"]
    assert [(r["draft"], r["rule"], r["k"]) for r in records] == [
        (d, "strict", k) for d in ("distill", "atspeed_s") for k in (1, 3)
    ]
    assert all(r["objective"] == r["draft"] for r in records)  # with their heads' training records


@requires_gpu
def test_relaxed_rounds_run_with_the_models_on_the_gpu(trained, monkeypatch):
    """The H200 run of 2026-12-02 stopped here: relaxed draws need a generator on the models' device."""
    root, data, target, drafts = trained
    monkeypatch.setattr("vllm_padrec.data.open_dataset", lambda name: data)
    argv = ["--target", str(target), "--dataset", "synthetic", "--ks", "3", "--draft-beams", "4", "--gamma", "2"]
    argv += ["--users", "5", "--device", "cuda", "--rules", "relaxed", "--out", str(root / "gpu"), "--name", "gpu"]
    argv += ["--drafts", f"atspeed_s={drafts['atspeed_s']}"]
    assert bench_atspeed.main(argv) == 0
    (record,) = json.loads((root / "gpu" / "atspeed_gpu.json").read_text())["records"]
    assert record["rule"] == "relaxed" and 2 <= record["target_passes_per_request"] <= 4


def test_the_markdown_and_plot_are_rebuilt_from_the_json(trained, tmp_path):
    payload = dict(
        name="x",
        machine="cpu",
        settings=dict(target="/t", dataset="d", users=2, num_slots=4, max_history=4),
        records=[
            dict(
                draft="a",
                rule="strict",
                k=1,
                draft_beams=4,
                gamma=3,
                users=2,
                mean_accepted_per_round=1.5,
                accepted_histogram={"1": 1, "2": 1},
                target_passes_per_request=2.0,
                plain_target_passes=4,
                pass_reduction=2.0,
                mismatches=0,
                seconds=0.1,
                recall_at_k=0.5,
                ndcg_at_k=0.25,
                plain_recall_at_k=0.5,
                plain_ndcg_at_k=0.25,
            )
        ],
    )
    path = tmp_path / "atspeed_x.json"
    path.write_text(json.dumps(payload))
    assert bench_atspeed.main(["--render", str(path)]) == 0
    table = (tmp_path / "atspeed_x.md").read_text()
    assert "| a | - | strict | 1 | 4 | 3 | 1.500 | 2.000 | 2.00x | 0.5000 (0.5000) | 0.2500 (0.2500) | 0 | 2 |" in table
