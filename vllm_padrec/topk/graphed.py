"""Pure tensor functions of drafted rounds replayed from CUDA graphs: one launch instead of a hundred.

A drafted top-K round is host-bound (ATSPEED.md, section 6): the draft's beam step between two draft
forwards (``DraftRows.step``) and the verification of a round (``chain_round``, ``strict_round_batched``,
``round_outcome``) are 70 to 240 small torch operations each, every one a kernel launch from Python, for a few
microseconds of GPU work. They are pure functions of their tensors, on fixed shapes, with no host sync, so each
is captured once per signature in a CUDA graph and replayed:

- the signature is the arguments' structure (tuples, frozen dataclasses, Python scalars such as a level or K,
  which the function's code may branch on) and every tensor's shape, dtype and device;
- a call copies its tensors into the graph's static inputs, replays, and returns clones of the static outputs
  (so a result stays valid whatever replays come after it; an output may be an input passed through);
- off CUDA, with ``PADREC_TOPK_GRAPHS=0``, past ``max_graphs`` signatures, for inputs of more than
  ``max_input_bytes``, or where a capture fails (logged once), the function runs eagerly: the same code, the
  same results.

Capture is ``torch.cuda.graph`` with a private memory pool per graph, ``capture_error_mode="thread_local"``
(vLLM's output thread may touch CUDA meanwhile), after two warm-up runs on a side stream. The function must
not read the host or allocate on it, and must not keep state between calls: its outputs are its only effect.
``tests/test_topk_graphed.py`` checks the bookkeeping with a CPU stand-in of the capture; the GPU tests
compare replays with eager runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vllm_padrec import envs

MAX_GRAPHS = 48  # signatures captured per function; the rest run eagerly (large batches vary G a lot)
# signatures whose tensors pass this run eagerly: a graph keeps a copy of its inputs (a 64-user round's target
# log-probs at K = 20, N = 40: 150 MB), and at that size the launches are a small part of the work anyway
MAX_INPUT_BYTES = 32 << 20


def flatten(value: Any) -> tuple[Any, list[Tensor]]:
    """(structure, tensors): the structure holds every non-tensor leaf and a placeholder per tensor."""
    tensors: list[Tensor] = []

    def walk(v: Any) -> Any:
        if isinstance(v, Tensor):
            tensors.append(v)
            return (Tensor, len(tensors) - 1)
        if isinstance(v, tuple):
            return (tuple, tuple(walk(x) for x in v))
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return (type(v), tuple((f.name, walk(getattr(v, f.name))) for f in dataclasses.fields(v)))
        if v is None or isinstance(v, (bool, int, float, str)):
            return (None, v)
        raise TypeError(f"graphed functions take tensors, tuples, dataclasses and scalars, got {type(v).__name__}")

    return walk(value), tensors


def unflatten(structure: Any, tensors: list[Tensor]) -> Any:
    kind, payload = structure
    if kind is Tensor:
        return tensors[payload]
    if kind is tuple:
        return tuple(unflatten(x, tensors) for x in payload)
    if kind is None:
        return payload
    return kind(**{name: unflatten(x, tensors) for name, x in payload})


def signature(structure: Any, tensors: list[Tensor]) -> tuple:
    return (structure, tuple((tuple(t.shape), t.dtype, t.device) for t in tensors))


@dataclasses.dataclass
class Replay:
    """One captured signature: its static inputs and outputs, and what runs the graph."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    structure: Any  # of the outputs
    replay: Callable[[], None]


def cuda_capture(function: Callable, args: tuple) -> tuple[Any, Callable[[], None]]:
    """Capture ``function(*args)`` (``args`` built on static inputs) in a CUDA graph: (outputs, replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: lazy initialisations (cuBLAS handles, Triton JIT) happen outside capture
            function(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = function(*args)
    return outputs, graph.replay


class GraphedFunction:
    """``function`` (pure, tensors in and out) replayed from one CUDA graph per signature (module docstring).
    ``capture``: what captures a call, ``(function, args) -> (outputs, replay)``; ``cuda_capture`` by default
    (the tests give a CPU stand-in with the same contract)."""

    def __init__(
        self,
        function: Callable,
        max_graphs: int = MAX_GRAPHS,
        capture: Callable | None = None,
        max_input_bytes: int = MAX_INPUT_BYTES,
    ) -> None:
        self.function = function
        self.max_graphs = max_graphs
        self.capture = capture
        self.max_input_bytes = max_input_bytes
        self.replays: dict[tuple, Replay | None] = {}  # None: runs eagerly (its capture failed, or past the cap)

    def wanted(self, tensors: list[Tensor]) -> bool:
        if self.capture is not None:
            return True
        return envs.topk_graphs() and bool(tensors) and all(t.is_cuda for t in tensors)

    def __call__(self, *args: Any) -> Any:
        structure, tensors = flatten(args)
        if not self.wanted(tensors):
            return self.function(*args)
        key = signature(structure, tensors)
        if key not in self.replays:
            small = sum(t.numel() * t.element_size() for t in tensors) <= self.max_input_bytes
            room = len(self.replays) < self.max_graphs
            self.replays[key] = self._capture(structure, tensors) if small and room else None
        entry = self.replays[key]
        if entry is None:
            return self.function(*args)
        for static, tensor in zip(entry.inputs, tensors):
            static.copy_(tensor)
        entry.replay()
        return unflatten(entry.structure, [t.clone() for t in entry.outputs])

    def _capture(self, structure: Any, tensors: list[Tensor]) -> Replay | None:
        inputs = [t.clone() for t in tensors]
        try:
            outputs, replay = (self.capture or cuda_capture)(self.function, unflatten(structure, inputs))
        except Exception as error:  # noqa: BLE001 - any capture failure leaves the eager path, which is the same code
            _logger().warning(
                "vllm-padrec: %s runs eagerly for one signature: its CUDA-graph capture failed (%s)",
                getattr(self.function, "__qualname__", self.function),
                error,
            )
            return None
        out_structure, out_tensors = flatten(outputs)
        return Replay(inputs, out_tensors, out_structure, replay)


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)
