"""testing/bench_driver.py: a configuration's child runs with a compile cache of its own and the model-class
inspections every configuration shares."""

from __future__ import annotations

import json
from pathlib import Path

from vllm_padrec.testing import bench_driver


def test_configurations_keep_their_compile_caches_apart_and_share_model_class_inspections(tmp_path, monkeypatch):
    roots = []

    def child(command, stdout, stderr, env):
        root = Path(env["VLLM_CACHE_ROOT"])
        roots.append(root)
        (root / "torch_compile_cache").mkdir(parents=True, exist_ok=True)  # what vLLM compiles: this engine's
        info = root / "modelinfos" / "vllm-model_executor-models-llama-LlamaForCausalLM.json"
        if not info.exists():  # vLLM's registry inspects the class (a subprocess) only on a miss, then caches it
            info.write_text(json.dumps({"hash": "h", "inspected_by": root.name}))
        Path(command[command.index("--result") + 1]).write_text("{}")
        return 0

    monkeypatch.setattr(bench_driver.subprocess, "call", child)
    for config in ("engine_bfloat16", "strict_bfloat16"):
        result, error = bench_driver.run_configuration("m", "tag", config, [], tmp_path, tmp_path / "cache")
        assert (result, error) == ({}, None)
    first, second = roots
    assert first != second and first.name == "engine_bfloat16"
    assert not (second / "torch_compile_cache").samefile(first / "torch_compile_cache")
    shared = json.loads((second / "modelinfos" / "vllm-model_executor-models-llama-LlamaForCausalLM.json").read_text())
    assert shared["inspected_by"] == "engine_bfloat16"  # the second engine found the first one's inspection


def test_an_earlier_runs_model_info_folder_is_kept(tmp_path):
    own = tmp_path / "cache" / "old" / "modelinfos"
    own.mkdir(parents=True)
    (own / "x.json").write_text("{}")
    bench_driver.share_model_info(tmp_path / "cache", "old")
    assert not own.is_symlink() and (own / "x.json").exists()
    bench_driver.share_model_info(tmp_path / "cache", "new")
    assert (tmp_path / "cache" / "new" / "modelinfos").resolve() == (tmp_path / "cache" / "modelinfos").resolve()


def test_a_configuration_past_its_time_is_stopped_with_the_processes_it_started(tmp_path):
    """A real child under a 1 s limit: it and the process it started (as an engine core would be) are gone,
    the error says it was stopped, and the next configuration can run."""
    import time

    (tmp_path / "hangs.py").write_text(
        "import subprocess, sys, time\n"
        "core = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(tmp_path / 'core.pid')!r}, 'w').write(str(core.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result, error = bench_driver.run_configuration(
        "hangs", "tag", "stuck", [], tmp_path, tmp_path / "cache", env={"PYTHONPATH": str(tmp_path)}, timeout_s=1
    )
    assert time.monotonic() - started < 30
    assert result is None and error.startswith("exit 124 without a result, stopped after 1 s")
    core = int((tmp_path / "core.pid").read_text())
    stat = Path(f"/proc/{core}/stat")
    for _ in range(50):  # the signal reaches the whole group; give the process a moment to go
        if not stat.exists() or stat.read_text().split(") ")[-1].startswith("Z"):  # gone, or dead and not reaped
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the child's own process {core} outlived it")
