"""``topk/graphed.py``: replays of a captured pure function equal eager calls, with a CPU stand-in of the capture
that keeps a CUDA graph's contract (outputs are fixed buffers that each replay rewrites from the static inputs).
The real capture runs on the GPU (``test_integration_gpu_topk``, ``PADREC_TOPK_GRAPHS``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from vllm_padrec import envs
from vllm_padrec.topk import graphed
from vllm_padrec.topk.graphed import GraphedFunction, flatten, unflatten


def cpu_capture(function, args):
    """A CUDA graph's contract on the CPU: the outputs of the capture run are the buffers every replay
    rewrites, recomputed from the static inputs that ``args`` are built on."""
    outputs = function(*args)
    _, buffers = flatten(outputs)

    def replay() -> None:
        _, fresh = flatten(function(*args))
        for buffer, value in zip(buffers, fresh):
            buffer.copy_(value)

    return outputs, replay


@dataclass(frozen=True)
class Pair:
    total: Tensor
    level: int
    scaled: Tensor


def combine(pair: Pair, weights: Tensor, k: int) -> tuple[Pair, Tensor]:
    top = (pair.total[:, None] * weights).topk(k, dim=1).values  # [B, k]
    return Pair(top.sum(1), pair.level + 1, pair.scaled * 2), weights  # the second: an input passed through


def pair(b: int, seed: int) -> tuple[Pair, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return Pair(torch.randn(b, generator=g), 3, torch.randn(b, 2, generator=g)), torch.randn(b, 5, generator=g)


def assert_same(got, want) -> None:
    got_structure, got_tensors = flatten(got)
    want_structure, want_tensors = flatten(want)
    assert got_structure == want_structure
    assert all(torch.equal(a, b) for a, b in zip(got_tensors, want_tensors))


def test_replays_equal_eager_calls_and_earlier_results_stay_as_they_were():
    function = GraphedFunction(combine, capture=cpu_capture)
    results, wanted = [], []
    for seed in range(4):
        p, w = pair(3, seed)
        results.append(function(p, w, 2))
        wanted.append(combine(p, w, 2))
    for got, want in zip(results, wanted):  # each result its own tensors, not the replay's buffers
        assert_same(got, want)
    assert len(function.replays) == 1  # one signature: one capture, three replays


def test_each_shape_or_scalar_is_its_own_signature():
    function = GraphedFunction(combine, capture=cpu_capture)
    for b, k in ((3, 2), (4, 2), (3, 3), (3, 2)):
        p, w = pair(b, b + k)
        assert_same(function(p, w, k), combine(p, w, k))
    assert len(function.replays) == 3


def test_past_the_cap_for_large_inputs_and_after_a_failed_capture_the_function_runs_eagerly(monkeypatch):
    capped = GraphedFunction(combine, max_graphs=1, capture=cpu_capture)
    for b in (3, 4):
        p, w = pair(b, b)
        assert_same(capped(p, w, 2), combine(p, w, 2))
    assert list(capped.replays.values())[1] is None
    large = GraphedFunction(combine, capture=cpu_capture, max_input_bytes=4 * (5 + 1 + 2) * 3)  # fits b = 3 only
    for b in (3, 4):
        p, w = pair(b, b)
        assert_same(large(p, w, 2), combine(p, w, 2))
    assert [r is None for r in large.replays.values()] == [False, True]

    warned = []
    monkeypatch.setattr(graphed, "_logger", lambda: type("L", (), {"warning": lambda *a: warned.append(a)})())

    def broken(function, args):
        raise RuntimeError("operation not permitted when stream is capturing")

    failing = GraphedFunction(combine, capture=broken)
    p, w = pair(3, 0)
    assert_same(failing(p, w, 2), combine(p, w, 2))
    assert list(failing.replays.values()) == [None] and "capturing" in str(warned[0][-1])


def test_off_cuda_without_a_capture_or_when_switched_off_it_is_the_plain_function(monkeypatch):
    calls = []
    function = GraphedFunction(lambda x: calls.append(x) or x + 1)
    assert torch.equal(function(torch.ones(2)), torch.full((2,), 2.0)) and not function.replays  # CPU tensors
    monkeypatch.setenv(envs.PADREC_TOPK_GRAPHS, "0")
    assert not envs.topk_graphs()
    monkeypatch.setenv(envs.PADREC_TOPK_GRAPHS, "1")
    assert envs.topk_graphs()


def test_arguments_other_than_tensors_tuples_dataclasses_and_scalars_are_refused():
    with pytest.raises(TypeError, match="list"):
        flatten(([torch.ones(1)],))
    structure, tensors = flatten((Pair(torch.ones(1), 2, torch.zeros(1)), None, 1.5))
    assert unflatten(structure, tensors)[1:] == (None, 1.5) and len(tensors) == 2
