"""Every Triton kernel of kernels/ compiled for the H200 (sm_90) by Triton's CUDA backend and ptxas, on any machine,
through its real launcher (``vllm_padrec.testing.compile_only``): the interpreter, which the other kernel tests run
under on the CPU, executes a kernel as Python and misses what only the compiler rejects."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, not interpreted
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))  # afresh, whatever a run cached
    done = subprocess.run(
        [sys.executable, "-m", "vllm_padrec.testing.compile_only"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_padrec_input_variant_compiles(compiled):
    # 2 passes x (2**6 flag and step-shape combinations less the 3 * 8 with a channel gate but no step gate)
    assert compiled["launcher_calls"]["padrec_input"] == 2 * (2**6 - 3 * 8)
    assert compiled["compiled"]["_padrec_input_kernel"] == compiled["launcher_calls"]["padrec_input"]


def test_the_catalog_masks_and_the_kv_block_copies_compile(compiled):
    assert compiled["compiled"]["_catalog_mask_kernel"] == 4  # verification and draft, 1 and 5 drafts
    assert compiled["compiled"]["_gather_blocks"] == compiled["compiled"]["_scatter_blocks"] == 2


def test_interpreted_kernels_are_refused():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "vllm_padrec.testing.compile_only"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "unset TRITON_INTERPRET" in done.stderr
