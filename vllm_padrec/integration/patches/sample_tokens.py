"""Patch: ``vllm.v1.worker.gpu.model_runner.GPUModelRunner.sample_tokens`` (vLLM 0.26.0, model_runner.py:1395).

One of the three top-K patches (with ``scheduler_init.py`` and ``execute_model.py``), which rely on each
other; on a server without beam rows (``padrec.topk_max_beams`` = 0) no top-K answer is ever made, and the
wrapper returns vLLM's output as it is.

What: after vLLM's own ``sample_tokens``, for every top-K request R whose final beam step ran in this
engine step, R's answer (``topk.select.TopKItems``, the K items best first with their scores) is set,
encoded by ``topk.result.encode_items``, as R's entry of the step's
``ModelRunnerOutput.pooler_output`` (``[None] * num_reqs`` with R's entries filled; for an
``AsyncOutput``, the ``model_runner_output`` its ``get_output`` returns, which V2 hands on with
``pooler_output`` untouched, async_utils.py:49-67). The scheduler copies ``pooler_outputs[req_index]``
into ``EngineCoreOutput.pooling_output`` for any request (scheduler.py:1715, :1844), and the front end
turns it into a ``PoolingRequestOutput``. A step with no finished top-K request returns vLLM's output
as it is, the same object.

Where the answers come from: the sampler hook leaves them in ``TopKAnswers`` at the model state's
``padrec_topk_answers`` (``ANSWERS_ATTRIBUTE``), keyed by R's request id; this patch takes them, so
each is sent once. A runner without that attribute (no catalog, so no top-K request) passes through.

Why: a top-K answer is K items, more than one request may return as tokens in a step (the async
scheduler expects exactly one token per step, async_scheduler.py:68, and output tokens stop at
``max_model_len``); ``pooler_output`` is the one per-request tensor slot the whole output path already
carries for a generating request.

Why no supported hook serves: the sampler (``custom_sampler``, the plugin's ``MaskingSampler``) returns
a ``SamplerOutput``, which has no per-request tensor field, and the ``ModelRunnerOutput`` is built
after it inside ``sample_tokens``; no ModelState hook sees that output.

How: applied right after ``vllm.v1.worker.gpu.model_runner`` is imported; the wrapper replaces the
class attribute once (idempotent) and keeps vLLM's function as ``__wrapped__``. With async scheduling
(V2's ``AsyncOutput``) the answers' host copy (one for all of the step's answers) is queued behind the
step's work, non-blocking into pinned memory, and the output is wrapped (``AnswersInFlight``) so that
``get_output``, which the engine calls when it needs the step's results anyway, waits for it and fills
``pooler_output``: the host does not wait for the GPU in the step a top-K request ends. A synchronous
``ModelRunnerOutput`` gets them copied at once.

Unnecessary when: vLLM's sampler can return per-request tensors alongside tokens, or serves beam search
inside the engine itself.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from vllm_padrec.integration.patches.marking import mark_patched, wrap_attribute
from vllm_padrec.topk.result import encode_items, encode_items_on_device
from vllm_padrec.topk.select import TopKItems

TARGETS = ("vllm.v1.worker.gpu.model_runner",)
ANSWERS_ATTRIBUTE = "padrec_topk_answers"  # on the runner's model state: the TopKAnswers the sampler hook fills


class TopKAnswers:
    """The answers of top-K requests whose last beam step ran, waiting for this step's output."""

    def __init__(self) -> None:
        self._answers: dict[str, TopKItems] = {}

    def put(self, req_id: str, items: TopKItems) -> None:
        self._answers[req_id] = items

    def take(self) -> dict[str, TopKItems]:
        """Every waiting answer, once: the store is empty afterwards."""
        answers, self._answers = self._answers, {}
        return answers


def attach_answers(runner_output: Any, encoded: dict[str, torch.Tensor]) -> Any:
    """``runner_output`` (a ``ModelRunnerOutput``) with each encoded answer (``topk.result``, on the host)
    as its request's ``pooler_output`` entry; the same object. Answers of requests not in the output are
    dropped (R was aborted in this step)."""
    req_ids = runner_output.req_ids
    pooler_output = list(runner_output.pooler_output or [None] * len(req_ids))
    index = {req_id: i for i, req_id in enumerate(req_ids)}
    for req_id, answer in encoded.items():
        if req_id in index:
            pooler_output[index[req_id]] = answer
    runner_output.pooler_output = pooler_output
    return runner_output


def _async_output_base():
    from vllm.v1.outputs import AsyncModelRunnerOutput

    return AsyncModelRunnerOutput


class AnswersInFlight:
    """V2's ``AsyncOutput`` of a step that answered top-K requests, with the answers' host copy in flight.

    The step's answers, encoded and concatenated on the device, are copied at once, queued on the current
    stream behind the step's work, into pinned memory, and an event marks its end; ``get_output`` waits for
    that event, then for vLLM's own output, and puts the answers in its ``pooler_output``. An instance is an
    ``AsyncModelRunnerOutput`` (``wrap_async_output``), which is what the executors test for before calling
    ``get_output``."""

    def __init__(self, inner: Any, answers: dict[str, TopKItems]) -> None:
        self.inner = inner
        self.req_ids = list(answers)
        parts = [encode_items_on_device(answers[r]) for r in self.req_ids]  # [n_i, 2L + 1] float64 each
        self.sizes = [part.shape[0] for part in parts]
        on_device = torch.cat(parts) if len(parts) > 1 else parts[0]  # one copy for the step's answers
        self.host = torch.empty(on_device.shape, dtype=on_device.dtype, pin_memory=on_device.is_cuda)
        self.host.copy_(on_device, non_blocking=True)
        self.copied = torch.cuda.Event(blocking=True) if torch.cuda.is_available() else None
        if self.copied is not None:
            self.copied.record()

    def get_output(self) -> Any:
        if self.copied is not None:
            self.copied.synchronize()
        # each answer its own tensor (a view would carry the whole step's answers wherever the output goes)
        encoded = {r: part.clone() for r, part in zip(self.req_ids, self.host.split(self.sizes))}
        return attach_answers(self.inner.get_output(), encoded)


def wrap_async_output(inner: Any, answers: dict[str, TopKItems]) -> Any:
    """``AnswersInFlight`` as an ``AsyncModelRunnerOutput`` subclass (made once: vLLM is imported lazily)."""
    global _ANSWERS_IN_FLIGHT
    if _ANSWERS_IN_FLIGHT is None:
        _ANSWERS_IN_FLIGHT = type("AnswersInFlight", (AnswersInFlight, _async_output_base()), {})
    return _ANSWERS_IN_FLIGHT(inner, answers)


_ANSWERS_IN_FLIGHT: type | None = None


def make_sample_tokens(original):
    def sample_tokens(self, grammar_output):
        output = original(self, grammar_output)
        store = getattr(getattr(self, "model_state", None), ANSWERS_ATTRIBUTE, None)
        if store is None:
            return output
        answers = store.take()
        if not answers or output is None:
            return output
        if hasattr(output, "get_output"):  # V2's AsyncOutput: the answers travel with it
            return wrap_async_output(output, answers)
        return attach_answers(output, {r: encode_items(a) for r, a in answers.items()})

    sample_tokens.__doc__ = original.__doc__
    mark_patched(sample_tokens, original)
    return sample_tokens


def apply(module: ModuleType) -> None:
    """Wrap ``GPUModelRunner.sample_tokens`` in ``vllm.v1.worker.gpu.model_runner``; idempotent."""
    wrap_attribute(module.GPUModelRunner, "sample_tokens", make_sample_tokens)
