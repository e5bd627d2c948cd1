"""benchmarks/bench_kv_block_copy.py off the GPU: its options, and its table and plot from a results JSON."""

from __future__ import annotations

import json

from benchmarks import bench_kv_block_copy as bench


def payload() -> dict:
    records = []
    for layers in (1, 28):
        for copies in (20, 1280):
            for mode, gpu, host in (("reference", 0.5, 0.4), ("kernel", 0.2, 0.03)):
                records.append(
                    {
                        "mode": mode,
                        "layers": layers,
                        "copies": copies,
                        "page_bytes": 65536,
                        "gpu_ms": gpu * layers,
                        "host_ms": host * layers,
                        "block_gb_per_s": 100.0,
                    }
                )
    return {"device": "H200", "torch": "2.11", "date": "today", "iters": 50, "repeats": 5, "records": records}


def test_the_table_has_one_row_per_shape_with_both_ways(tmp_path):
    table = bench.markdown(payload())
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4
    assert rows[-1] == "| 28 | 1280 | 64 | 14.0 | 5.6000000000000005 | 11.200000000000001 | 0.84 | 100.0 |"


def test_render_rebuilds_the_markdown_and_plot_from_the_json(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(payload()))
    assert bench.main(["--render", str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "kv_block_copy.md").read_text() == bench.markdown(payload())
    assert (tmp_path / "out" / "kv_block_copy.png").exists()


def test_help_names_every_option(capsys):
    try:
        bench.parse_args(["--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for option in ("--layers", "--copies", "--page-kib", "--num-blocks", "--iters", "--repeats", "--render"):
        assert option in out
