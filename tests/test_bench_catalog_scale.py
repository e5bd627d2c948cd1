"""benchmarks/bench_catalog_scale.py (issue 15, memory and scale): what a step masks, that each timed kernel call
equals the reference, the capacity arithmetic and the written results. The timings themselves need a CUDA GPU
(gpu_session's ``bench_catalog_scale`` job); here the kernel runs under the Triton interpreter, timed by a
stand-in."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_catalog_scale as scale
from vllm_padrec.lists.tables import CatalogTables

SHAPES = (("list", 2, 1, 5), ("topk", 2, 3, 0))  # two requests drafting 5 tokens; two users of 3 beams


@pytest.fixture(scope="module")
def small():
    catalog, host = scale.build_catalog(3_000)
    return catalog, host, CatalogTables.build(catalog)


def fake_timer(calls: list):
    """Runs the timed call once (the kernel, under the interpreter here) and says 0.01 ms."""

    def timer(fn, iters, repeats, graph):
        fn()
        calls.append(graph)
        return 0.01

    return timer


def test_a_step_masks_the_rows_of_its_workload_and_pays_its_draft_steps(small):
    catalog, _, tables = small
    calls = []
    lists, topk = scale.mask_timings(catalog, tables, 1, 1, "cpu", shapes=SHAPES, timer=fake_timer(calls))
    # lists: verification over B * (drafts + 1) rows, plainly launched, and a draft step replayed from a graph
    assert lists["rows"] == 2 * 6 and lists["verification_us"] == 10.0 and lists["draft_step_us"] == 10.0
    assert lists["per_step_us"] == 10.0 + 5 * 10.0
    # top-K: one verification over every user's beams, no draft step
    assert topk["rows"] == 2 * 3 and topk["beams"] == 3 and "draft_step_us" not in topk
    assert topk["per_step_us"] == 10.0
    assert calls == [False, True, False]
    assert {lists["items"], topk["items"]} == {3_000}


def test_a_kernel_that_differs_from_the_reference_stops_the_benchmark(small, monkeypatch):
    catalog, _, tables = small
    import vllm_padrec.kernels as kernels

    monkeypatch.setattr(kernels, "catalog_mask_verification", lambda logits, *rest: None)  # masks nothing
    with pytest.raises(AssertionError, match="differs from the eager one"):
        scale.mask_timings(catalog, tables, 1, 1, "cpu", shapes=SHAPES[1:], timer=fake_timer([]))


def test_the_host_record_counts_the_catalogs_memory(small):
    catalog, host, _ = small
    assert len(catalog) == 3_000 and host["host_build_s"] >= 0
    if host["host_bytes"] is not None:  # Linux: /proc/self/statm
        assert host["host_bytes_per_item"] == round(host["host_bytes"] / 3_000, 1)


def test_capacity_reads_the_largest_catalog_and_stops_at_the_id_space():
    catalogs = [
        {"items": 1_000_000, "device_bytes_per_item": 60.0, "device_peak_build_bytes": 90_000_000},
        {"items": 10_000_000, "device_bytes_per_item": 50.0, "device_peak_build_bytes": 800_000_000},
    ]
    cap = scale.capacity(catalogs, budget_gib=8.0, device_gib=139.8)
    assert cap["from_items"] == 10_000_000 and cap["items_per_gib"] == int(2**30 / 50.0)
    assert cap["largest_items_in_budget"] == int(8 * 2**30 / 80.0)  # the build's peak per item bounds it
    huge = scale.capacity(catalogs, budget_gib=1e6, device_gib=139.8)
    assert huge["largest_items_in_budget"] == scale.ID_SPACE == 200 * 256**3


def test_the_results_are_written_and_redrawn_from_their_json(tmp_path, small):
    catalog, host, tables = small
    masks = scale.mask_timings(catalog, tables, 1, 1, "cpu", shapes=SHAPES, timer=fake_timer([]))
    record = {"items": 3_000, **host, "device_build_s": 0.1, "device_bytes": 180_000}
    record |= {"device_peak_build_bytes": 300_000, "device_bytes_per_item": 60.0, "trie_bytes": 100_000}
    payload = {"gpu": "cpu", "torch": torch.__version__, "date": "today", "command": "python3 -m x"}
    payload |= {"catalogs": [record], "masks": masks, "capacity": scale.capacity([record], 14.0, 139.8)}
    scale.write(payload, str(tmp_path))
    text = (tmp_path / "catalog_scale.md").read_text()
    assert "| 3,000 | topk | 2 | 3 | 6 | 10 | - | 10 |" in text
    assert "| 3,000 | list | 2 | 5 | 12 | 10 | 10 | 60 |" in text
    assert "Masks: the fused Triton kernel, checked equal to the plain-torch reference first" in text
    assert json.loads((tmp_path / "catalog_scale.json").read_text())["masks"] == masks
    (tmp_path / "catalog_scale.md").unlink()
    assert scale.main(["--render", str(tmp_path / "catalog_scale.json")]) == 0
    assert (tmp_path / "catalog_scale.md").read_text() == text


def test_the_tables_count_every_tensor_they_hold(small):
    """``CatalogTables.memory_bytes`` against a walk over every tensor of the tables and their trie: a tensor added
    to either and left out of the count fails here."""
    _, _, tables = small
    held = {}
    for owner in (tables, tables.trie):
        for value in vars(owner).values():
            for tensor in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(tensor, torch.Tensor):
                    held[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    assert tables.memory_bytes() == sum(held.values())


def test_on_the_cpu_the_tables_bytes_are_their_tensors_and_the_capacity_reads_them(small):
    catalog, _, tables = small
    _, record = scale.build_tables(catalog, "cpu")
    assert record["device_bytes"] == record["tables_bytes"] == tables.memory_bytes()
    assert record["device_peak_build_bytes"] is None and record["device_bytes_per_item"] == round(
        tables.memory_bytes() / 3_000, 1
    )
    cap = scale.capacity([{"items": 3_000, **record}], budget_gib=1.0, device_gib=None)
    assert cap["bound"] == "tables held" and cap["device_gib"] is None
    assert cap["largest_items_in_budget"] == int(2**30 / (tables.memory_bytes() / 3_000))


def test_memory_only_runs_each_size_in_a_fresh_process_and_writes_its_own_results(tmp_path, monkeypatch):
    import pickle

    real = scale.memory_record
    monkeypatch.setattr(scale, "memory_record", lambda n, path: real(n, path))
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):  # the work crosses processes
        scale.memory_records([3_000], str(tmp_path))
    monkeypatch.undo()
    records = scale.memory_records([4_000, 3_000], str(tmp_path))
    assert [r["items"] for r in records] == [3_000, 4_000]  # smallest first
    assert all(r["device_peak_build_bytes"] is None and r["tables_bytes"] > 0 for r in records)
    # the catalog saved as a checkpoint holds it, then loaded by a fresh process; the file is removed after
    assert all(r["file_bytes"] > 0 and r["load_s"] >= 0 and r["load_peak_bytes_per_item"] >= 0 for r in records)
    assert not list(tmp_path.glob("catalog_*.json"))
    assert scale.main(["--memory-only", "--sizes", "3000", "--out", str(tmp_path), "--note", "a CPU look"]) == 0
    assert not (tmp_path / "catalog_scale.json").exists()
    text = (tmp_path / "catalog_scale_memory.md").read_text()
    assert "Note: a CPU look" in text and "by the tables held per item" in text and "| 3,000 |" in text
    assert "Loading the catalog from a checkpoint's `padrec_catalog.json`" in text
    assert (tmp_path / "catalog_scale_memory.png").exists()
    (tmp_path / "catalog_scale_memory.md").unlink()
    assert scale.main(["--render", str(tmp_path / "catalog_scale_memory.json")]) == 0
    assert (tmp_path / "catalog_scale_memory.md").read_text() == text
    # a note given to --render replaces the run's, in the Markdown and in the JSON
    assert scale.main(["--render", str(tmp_path / "catalog_scale_memory.json"), "--note", "rerun later"]) == 0
    assert "Note: rerun later" in (tmp_path / "catalog_scale_memory.md").read_text()
    assert json.loads((tmp_path / "catalog_scale_memory.json").read_text())["note"] == "rerun later"


@pytest.mark.parametrize("sizes", [["5"], [str(scale.ID_SPACE + 1)]])
def test_impossible_sizes_are_a_one_line_error(sizes, capsys):
    with pytest.raises(SystemExit):
        scale.parse_args(["--sizes", *sizes])
    assert "--sizes" in capsys.readouterr().err
