"""benchmarks/results_page.py: the page says what each committed payload measured, when and by which command,
names what is not measured yet, and the committed ``benchmarks/RESULTS.md`` is what the committed results give."""

from __future__ import annotations

import json

from benchmarks import gpu_session, results_page


def topk_payload() -> dict:
    base = {"mode": "engine", "k": 20, "objective": None, "draft_beams": None, "gamma": None, "users": 30}
    records = [
        {**base, "dtype": "bfloat16", "batch_size": 1, "p50_ms": 22.75, "recall_at_k": 0.1, "ndcg_at_k": 0.05},
        {**base, "dtype": "bfloat16", "batch_size": 64, "users": 128, "users_per_s": 369.0, "recall_at_k": 0.2,
         "ndcg_at_k": 0.06},
        {**base, "dtype": "float32", "batch_size": 64, "users": 500, "recall_at_k": 0.0167, "ndcg_at_k": 0.0066,
         "equal_to_reference": 500, "users_compared": 500},
        {**base, "mode": "strict", "objective": "atspeed_s", "draft_beams": 40, "gamma": 3, "dtype": "bfloat16",
         "batch_size": 1, "p50_ms": 14.5, "recall_at_k": 0.1, "ndcg_at_k": 0.05},
        {**base, "mode": "vllm_beam_search", "dtype": "bfloat16", "batch_size": 1, "p50_ms": 66.4,
         "recall_at_k": 0.1, "ndcg_at_k": 0.05, "measured_on": "2026-12-01T05:23:30+0000"},
    ]  # fmt: skip
    goals = [{"goal": "K = 20: strict at least 1.6x", "met": True, "measured": "1.57x"}]
    command = "python3 -m benchmarks.bench_topk --ks 20"
    return {"date": "2026-12-03", "device": "NVIDIA H200", "concurrency": 64, "records": records, "goals": goals,
            "command": command}  # fmt: skip


def spec_decode_payload() -> dict:
    record = {"method": "padrec", "gamma": 5, "batch_size": 1, "list_len": 10, "mode": "offline",
              "tokens_per_s": 1000.0, "speedup_vs_no_spec": 2.45, "acceptance_length": 4.61, "p50_ms": 43.6,
              "equal_to_no_spec": 100, "users_compared": 100, "recall_at_10": 0.05, "ndcg_at_10": 0.03}  # fmt: skip
    served = {**record, "mode": "serve", "tokens_per_s": 1.0}
    paired = {**record, "batch_size": 4, "paired_speedup": 1.74}  # the goals and the page read the paired figure
    earlier = {**record, "method": "eagle", "measured_on": "2026-12-02T15:14:57+0000"}  # kept by --merge
    goals = [{"goal": "PAD-Rec at least 3.1x", "met": False, "measured": "2.45x"}]
    return {"date": "2026-12-03", "device": "NVIDIA H200", "dtype": "bfloat16", "goals": goals,
            "records": [record, served, paired, earlier]}  # fmt: skip


def test_the_page_tells_each_measurement_its_date_command_and_values(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "topk_beauty_atspeed.json").write_text(json.dumps(topk_payload()))
    (results / "topk_beauty_atspeed.png").write_bytes(b"png")
    (results / "spec_decode_games_atspeed.json").write_text(json.dumps(spec_decode_payload()))
    text = results_page.page(results, tmp_path / "RESULTS.md")
    beauty, games = text.split("## games_atspeed")
    assert "Measured 2026-12-03 on NVIDIA H200 by `python3 -m benchmarks.bench_topk --ks 20`." in beauty
    assert "| K = 20: strict at least 1.6x | met | 1.57x |" in beauty
    # p50 one at a time, users/s at 64, quality of the pass over the most users, float32 equality
    assert "| engine | 20 | 22.8 | 369.0 | 0.0167 | 0.0066 | 500 | 500 / 500 |" in beauty
    assert "| strict (atspeed_s, N = 40, gamma 3) | 20 | 14.5 | - |" in beauty
    assert "| vllm_beam_search (measured 2026-12-01) | 20 | 66.4 |" in beauty
    assert "![topk_beauty_atspeed](results/topk_beauty_atspeed.png)" in beauty
    assert beauty.count("Not measured yet (issue 14, then 15).") == 1
    assert "| padrec | 5 | 1 | 10 | 1,000 | 2.45 | 4.61 | 43.6 | 100 / 100 | 0.0500 | 0.0300 |" in games
    assert "| padrec | 5 | 4 | 10 | 1,000 | 1.74 paired | 4.61 |" in games
    assert "| eagle (run of 2026-12-02) | 5 | 1 | 10 | 1,000 | 2.45 |" in games
    assert "| PAD-Rec at least 3.1x | **missed** | 2.45x |" in games
    assert games.count("| padrec |") == 2  # the two offline passes; the served one after them, marked so
    assert games.index("| padrec | 5 | 4 |") < games.index("| padrec, serve | 5 | 1 | 10 | 1 | 2.45 |")
    assert "its command not recorded in this payload" in games and "![" not in games
    assert "Not measured yet (issue 13, then 15)." in games and text.rstrip().endswith("Not measured yet (issue 15).")


def test_check_fails_on_a_stale_page_and_passes_once_written(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    out = ["--results", str(results), "--out", str(tmp_path / "RESULTS.md")]
    assert results_page.main([*out, "--check"]) == 1 and "out of date" in capsys.readouterr().err
    assert results_page.main(out) == 0 and results_page.main([*out, "--check"]) == 0
    (results / "tp2.json").write_text(json.dumps({"date": "d", "records": []}))
    assert results_page.main([*out, "--check"]) == 1


def test_the_committed_page_is_what_the_committed_results_give():
    assert results_page.main(["--check"]) == 0, "run: python -m benchmarks.results_page"


def test_the_two_gpu_section_has_bench_tp2s_goals_and_rows(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    record = {"workload": "lists", "method": "padrec", "tensor_parallel_size": 2, "dtype": "float32"}
    record |= {"batch_size": 64, "tokens_per_s": 1234.4, "users_per_s": None}
    record |= {"equal_to_single_gpu": 255, "users_compared": 256}
    goal = {"goal": "float32: outputs at TP = 2 equal to one GPU's", "met": False, "measured": "255 / 256"}
    (results / "tp2.json").write_text(json.dumps({"date": "d", "command": "c", "records": [record], "goals": [goal]}))
    text = results_page.page(results, tmp_path / "RESULTS.md")
    section = text[text.index("## Two GPUs") :]
    assert "| float32: outputs at TP = 2 equal to one GPU's | **missed** | 255 / 256 |" in section
    assert "| lists | padrec | 2 | float32 | 64 | 1,234 | - | 255 / 256 |" in section


def test_the_catalog_scale_section_shows_bytes_per_item_and_the_step_costs(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    catalog = {"items": 10_000_000, "device_bytes_per_item": 52.3, "host_bytes_per_item": 376.0}
    masks = [
        {"items": 10_000_000, "kind": "list", "batch": 64, "beams": None, "per_step_us": 61.5},
        {"items": 10_000_000, "kind": "topk", "batch": 64, "beams": 20, "per_step_us": 48.25},
        {"items": 10_000_000, "kind": "topk", "batch": 1, "beams": 20, "per_step_us": 9.0},
    ]
    capacity = {"items_per_gib": 20_530_000, "largest_items_in_budget": 190_000_000, "budget_gib": 14.0}
    payload = {"date": "d", "gpu": "H200", "command": "c", "catalogs": [catalog], "masks": masks}
    (results / "catalog_scale.json").write_text(json.dumps(payload | {"capacity": capacity | {"device_gib": 139.8}}))
    text = results_page.page(results, tmp_path / "RESULTS.md")
    section = text[text.index("## The catalog at scale") : text.index("## Two GPUs")]
    assert "| 10,000,000 | 52.3 | 376.0 | 61.5 | 48.2 |" in section  # B = 64: the lists' and the 20 beams' steps
    assert "190,000,000 items fit 14 GiB of the 139.8 GiB device" in section


def test_without_a_gpu_run_the_catalog_scale_section_reads_the_memory_only_run(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    catalog = {"items": 1_000_000, "device_bytes_per_item": 44.2, "host_bytes_per_item": 375.9}
    capacity = {"items_per_gib": 24_000_000, "largest_items_in_budget": 300_000_000, "budget_gib": 14.0}
    capacity |= {"device_gib": None, "bound": "tables held"}
    payload = {"name": "catalog_scale_memory", "date": "d", "gpu": "CPU", "command": "c", "catalogs": [catalog]}
    (results / "catalog_scale_memory.json").write_text(json.dumps(payload | {"masks": [], "capacity": capacity}))
    (results / "catalog_scale_memory.png").write_bytes(b"png")
    text = results_page.page(results, tmp_path / "RESULTS.md")
    section = text[text.index("## The catalog at scale") : text.index("## Two GPUs")]
    assert "`results/catalog_scale_memory.md`" in section and "not measured yet" in section
    assert "| 1,000,000 | 44.2 | 375.9 | - | - |" in section
    assert "300,000,000 items fit 14 GiB (by the tables held per item)" in section
    assert "catalog_scale_memory.png" in section
    gpu = {**payload, "name": "catalog_scale", "masks": [], "capacity": capacity, "gpu": "H200"}
    (results / "catalog_scale.json").write_text(json.dumps(gpu))
    section = results_page.page(results, tmp_path / "RESULTS.md").split("## The catalog at scale")[1]
    assert "on H200" in section  # a GPU run, once there is one, wins


def test_further_list_runs_and_the_targets_own_quality_stand_beside_the_goals_file(tmp_path):
    """Runs of other settings (``spec_decode_<dataset>_*.json``) each get their provenance, rows and plot after
    the dataset's main tables; the target's Recall/NDCG over every test user stands under the list table."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "spec_decode_beauty_atspeed.json").write_text(json.dumps(spec_decode_payload()))
    deeper = spec_decode_payload() | {"command": "python3 -m benchmarks.bench_spec_decode --gammas 8"}
    deeper["note"] = "Partial: the hold ran out of time."  # bench_spec_decode --render --note
    deeper["records"] = [deeper["records"][0] | {"gamma": 8, "paired_speedup": 2.73}]
    deeper["goals"] = [
        {"goal": "PAD-Rec at least 3.1x", "met": False, "measured": "2.73x paired"},
        {"goal": "float32 lists equal", "met": None, "measured": "not measured"},
    ]
    (results / "spec_decode_beauty_atspeed_depth8.json").write_text(json.dumps(deeper))
    (results / "spec_decode_beauty_atspeed_depth8.png").write_bytes(b"png")
    (results / "spec_decode_games_atspeed_depth8.json").write_text(json.dumps(deeper))
    (results / "spec_decode_beauty_atspeed_small_depth8.json").write_text(json.dumps(deeper))  # the small target's
    quality = {"split": "test", "users": 3553, "greedy_recall@10": 0.00887, "greedy_ndcg@10": 0.00586}
    (results / "target_beauty.json").write_text(json.dumps(quality))
    beauty, games = results_page.page(results, tmp_path / "RESULTS.md").split("## games_atspeed")
    further = beauty.split("### Further list-generation runs")[1]
    assert "#### `spec_decode_beauty_atspeed_depth8`" in further and "#### `spec_decode_games" not in further
    assert "_small" not in further  # a check on the small target is not the product's result
    small_run = gpu_session.Settings(target="small").spec_results_name()  # the names the session gives those runs
    assert small_run.startswith(f"spec_decode_beauty_atspeed{results_page.SMALL_TARGET_SUFFIX}")
    assert (
        "by `python3 -m benchmarks.bench_spec_decode --gammas 8`.\n\nNote: Partial: the hold ran out of time."
        in further
    )
    assert "| padrec | 8 | 1 | 10 | 1,000 | 2.73 paired |" in further
    assert "| PAD-Rec at least 3.1x | **missed** | 2.73x paired |" in further  # the goals this run measured
    assert "float32 lists equal" not in further  # and not those it did not
    assert "![spec_decode_beauty_atspeed_depth8](results/spec_decode_beauty_atspeed_depth8.png)" in further
    assert "over all 3,553 test users: Recall@10 0.0089, NDCG@10 0.0059 (`results/target_beauty.json`)" in beauty
    assert "#### `spec_decode_games_atspeed_depth8`" in games and "over all" not in games  # games: no evaluation
