"""One top-K request as the front ends send it to vLLM, and its answer read back into ranked items.

The three front ends of top-K (``POST /v1/recommendations`` with ``"mode": "topk"``, the offline
``recommend_topk`` and, once the engine serves top-K, the benchmark) ask the same thing
(``topk/DESIGN.md`` section 4, step 1): the prompt ``<s> h_1 <sep> ... h_H <rec>`` and

    SamplingParams(max_tokens=L, temperature=0, stop_token_ids=[</s>], detokenize=False,
                   output_kind=FINAL_ONLY, extra_args=ListSpec(constraint, topk=K, exclude_items).to_extra_args())

The request itself writes exactly L tokens (a ``<pad>`` per beam step, then ``</s>``), and ``max_tokens = L``
tells the scheduler so: with async scheduling it schedules no step past R's L-th (``scheduler.py:474-488``),
where a slack token would cost one more engine step per call. A resumed R (below) writes at most L too.
Its answer is not in those tokens: the runner hands the K items over as the request's ``pooler_output``,
which reaches the front end as a ``PoolingRequestOutput`` whose ``outputs.data`` is ``topk/result.py``'s
tensor. ``ranked_items`` reads that tensor into ``(item index, score)`` pairs,
best first, the form ``decoding.beam_search_items`` (the reference) returns.

A top-K request that vLLM preempted and resumed has lost its beams (their KV went with the preemption):
the runner ends it at once with ``</s>`` and no answer (``topk.engine``), so it comes back as a plain
``RequestOutput``. ``ranked_items`` then raises ``TopKPreempted``, and the front ends send the request
again, once (``SUBMISSIONS``): the answer is deterministic, so the second one is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.errors import PadRecError
from vllm_padrec.lists import ListSpec
from vllm_padrec.topk.result import decode_items
from vllm_padrec.topk.select import NEG_INF

SUBMISSIONS = 2  # a top-K request is sent again once when vLLM preempted it (module docstring)


class TopKPreempted(PadRecError):
    """vLLM preempted the top-K request before its answer: send it again (module docstring)."""


def topk_spec(k: int, exclude_items: tuple[int, ...] = (), verification: str | None = None) -> ListSpec:
    """The list settings of a top-K request: the constraint, one item per candidate, K candidates; a drafted
    request's verification rule when one is asked for (None: strict)."""
    return ListSpec(constraint=True, topk=k, exclude_items=exclude_items, topk_verification=verification)


def topk_max_tokens(num_slots: int) -> int:
    """Tokens a top-K request writes: one per code slot (``<pad>`` ... ``</s>``), and no slack (module docstring)."""
    return num_slots


def topk_sampling_params(spec: ListSpec, max_tokens: int) -> Any:
    """The ``SamplingParams`` of a top-K request (module docstring); ``max_tokens``: ``topk_max_tokens(L)``."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    if spec.topk is None:
        raise ValueError(f"not a top-K request: {spec}")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        stop_token_ids=[TokenLayout.EOS],
        extra_args=spec.to_extra_args(),
        output_kind=RequestOutputKind.FINAL_ONLY,
        detokenize=False,  # also what tells a top-K request from one of the OpenAI routes (DESIGN.md step 2)
    )


@dataclass(frozen=True)
class RankedItems:
    """A top-K answer read back: the catalog items, best first, and how many rows named no item."""

    items: list[tuple[int, float]]  # (item index, score), best first; dead beams (-inf) dropped
    invalid: int  # rows whose codes are no catalog item (never, when the engine's masks use this catalog)


def ranked_items(output: Any, catalog: ItemCatalog) -> RankedItems:
    """The items of a finished top-K request's ``PoolingRequestOutput``; a ``TypeError`` for any other output."""
    from vllm.outputs import PoolingRequestOutput, RequestOutput

    if isinstance(output, RequestOutput) and output.finished:
        raise TopKPreempted(f"top-K request {output.request_id} was preempted by the engine before its answer")
    if not isinstance(output, PoolingRequestOutput):
        raise TypeError(
            f"a top-K request's answer is a PoolingRequestOutput, got {type(output).__name__}: does this "
            "engine serve padrec_topk?"
        )
    answer = decode_items(output.outputs.data, catalog.num_slots)
    items, invalid = [], 0
    for item, score in zip(catalog.items_of_tokens(answer.tokens.numpy()), answer.scores.tolist()):
        if score == NEG_INF:  # a dead beam: fewer items were left than K
            continue
        if item is None:  # codes of no item
            invalid += 1
        else:
            items.append((item, score))
    return RankedItems(items, invalid)
