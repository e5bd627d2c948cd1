"""Environment variables read by vllm-padrec, each with its default. Read lazily, never at import."""

from __future__ import annotations

import os

# Folder of the shared datasets (AtSpeed / LC-Rec formats); tests and benchmarks read it.
PADREC_DATA_DIR = "PADREC_DATA_DIR"
_DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def data_dir() -> str:
    return os.path.normpath(os.environ.get(PADREC_DATA_DIR, _DEFAULT_DATA_DIR))


# "1": the draft head uses the fused Triton kernel even off CUDA (tests, under TRITON_INTERPRET=1).
PADREC_FORCE_TRITON = "PADREC_FORCE_TRITON"


def force_triton() -> bool:
    return os.environ.get(PADREC_FORCE_TRITON, "0") == "1"


# "1": every drafted top-K round's rows are checked against V2's state before verification (host syncs; debugging
# only: ``vllm_padrec/topk/round_checks.py``).
PADREC_TOPK_CHECKS = "PADREC_TOPK_CHECKS"


def topk_checks() -> bool:
    return os.environ.get(PADREC_TOPK_CHECKS, "0") == "1"


# "0": drafted top-K rounds run their draft beam steps and their verification eagerly instead of replaying CUDA
# graphs of them (``vllm_padrec/topk/graphed.py``; default on, where the tensors are on CUDA).
PADREC_TOPK_GRAPHS = "PADREC_TOPK_GRAPHS"


def topk_graphs() -> bool:
    return os.environ.get(PADREC_TOPK_GRAPHS, "1") != "0"
