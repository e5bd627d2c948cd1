"""benchmarks/bench_acceptance.py on the CPU: a tiny target trained on the synthetic data and a random PAD-Rec
head decode lossless lists, and ``--skip-forced-drafts`` adds the records with the forced draft steps left out
and ``--forced-tail`` the records with draft slots filled from the catalog after the head's (issue 14's catalog
levers), in the JSON and the table."""

from __future__ import annotations

import json

from draft_helpers import random_head

from benchmarks import bench_acceptance
from vllm_padrec.data import open_dataset
from vllm_padrec.draft.checkpoint import save_draft
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import load_checkpoint
from vllm_padrec.target.train import train_target


def test_the_forced_steps_records_keep_the_lists_and_say_what_they_left_out(tmp_path):
    data = open_dataset("synthetic")
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, list_items=4, epochs=0.25)
    checkpoint = train_target(recipe, data, tmp_path / "target", progress=False).checkpoint
    target = load_checkpoint(checkpoint).model
    save_draft(random_head(target, data.catalog.layout, "padrec", gamma=3, seed=1), tmp_path / "draft")
    argv = ["--target", str(checkpoint), "--drafts", f"head={tmp_path / 'draft'}", "--dataset", "synthetic"]
    argv += ["--users", "12", "--gammas", "3", "--device", "cpu", "--out", str(tmp_path), "--name", "t"]
    assert bench_acceptance.main([*argv, "--skip-forced-drafts", "--forced-tail", "2"]) == 0
    plain, skipped, tailed = json.loads((tmp_path / "acceptance_t.json").read_text())["records"]
    assert (plain["method"], skipped["method"]) == ("head", "head (forced steps skipped)")
    assert tailed["method"] == "head (forced tail 2)" and (tailed["gamma"], tailed["forced_tail"]) == (3, 2)
    assert len(tailed["acceptance_rate_by_step"]) == 5 and tailed["stats"]["drafted_by_step"][3] > 0
    assert plain["mismatches"] == skipped["mismatches"] == tailed["mismatches"] == 0  # all lossless
    assert plain["skipped_step_share"] == 0.0 and 0.0 < skipped["skipped_step_share"] < 1.0
    assert skipped["stats"]["decode_steps_skipped"] > 0 and not plain["skip_forced_drafts"]
    table = (tmp_path / "acceptance_t.md").read_text()
    assert f"| {100 * skipped['skipped_step_share']:.1f} % | 0 | 12 |" in table
    assert "| head | 3 |" in table and "| head (forced steps skipped) | 3 |" in table
    assert "| head (forced tail 2) | 3 |" in table


def test_each_lever_is_its_own_decoding():
    assert bench_acceptance.variants("padrec", False, 0) == [(False, 0)]
    assert bench_acceptance.variants("padrec", True, 2) == [(False, 0), (True, 0), (False, 2)]
    assert bench_acceptance.variants("medusa", True, 1) == [(False, 0), (False, 1)]  # no forced step of its own
