"""Patch: ``vllm.v1.worker.gpu.model_runner.GPUModelRunner.sample_tokens`` (vLLM 0.26.0, model_runner.py:1395).

Installed only while top-K is served (``list_settings.TOPK_SERVED``: today only in a process tree started
with ``VLLM_PADREC_TOPK_BRINGUP=1``, the GPU bring-up), together with the other two top-K patches
(``patches.TOPK_PATCHES``): alone, any one of them would break the others' assumptions.

What: after vLLM's own ``sample_tokens``, for every top-K request R whose final beam step ran in this
engine step, R's answer (``topk.select.TopKItems``, the K items best first with their scores) is set,
encoded by ``topk.result.encode_items``, as R's entry of the step's
``ModelRunnerOutput.pooler_output`` (``[None] * num_reqs`` with R's entries filled; for an
``AsyncOutput``, its ``model_runner_output``, which V2's ``get_output`` hands on with
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
class attribute once (idempotent) and keeps vLLM's function as ``__wrapped__``. The answers' encoding
copies them to the host, after the step's sampling work is queued; that wait happens once per top-K
request, at its last step.

Unnecessary when: vLLM's sampler can return per-request tensors alongside tokens, or serves beam search
inside the engine itself.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from vllm_padrec.integration.patches.marking import mark_patched, wrap_attribute
from vllm_padrec.topk.result import encode_items
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


def attach_answers(output: Any, answers: dict[str, TopKItems]) -> Any:
    """``output`` (an ``AsyncOutput`` or a ``ModelRunnerOutput``) with each answer as its request's
    ``pooler_output`` entry; the same object. Answers of requests not in the output are dropped (R was
    aborted in this step)."""
    runner_output = getattr(output, "model_runner_output", output)
    req_ids = runner_output.req_ids
    pooler_output = list(runner_output.pooler_output or [None] * len(req_ids))
    index = {req_id: i for i, req_id in enumerate(req_ids)}
    for req_id, items in answers.items():
        if req_id in index:
            pooler_output[index[req_id]] = encode_items(items)
    runner_output.pooler_output = pooler_output
    return output


def make_sample_tokens(original):
    def sample_tokens(self, grammar_output):
        output = original(self, grammar_output)
        store = getattr(getattr(self, "model_state", None), ANSWERS_ATTRIBUTE, None)
        if store is None:
            return output
        answers = store.take()
        if not answers or output is None:
            return output
        return attach_answers(output, answers)

    sample_tokens.__doc__ = original.__doc__
    mark_patched(sample_tokens, original)
    return sample_tokens


def apply(module: ModuleType) -> None:
    """Wrap ``GPUModelRunner.sample_tokens`` in ``vllm.v1.worker.gpu.model_runner``; idempotent."""
    wrap_attribute(module.GPUModelRunner, "sample_tokens", make_sample_tokens)
