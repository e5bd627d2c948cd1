"""Top-K recommendation offline: ``recommend_topk`` over a ``vllm.LLM`` that serves the target.

    from vllm import LLM
    llm = LLM(TARGET, **topk_engine_args(max_k=20, concurrent_users=64))  # the padrec general plugin loaded
    ranked = recommend_topk(llm, catalog, histories, k=20, exclude_history=True)  # [[(item, score), ...], ...]

With a draft head (``topk_engine_args(..., draft=DRAFT_FOLDER)``) the engine drafts the beams (issue 13,
``topk/ATSPEED.md``) and ``recommend_topk(..., verification="strict")`` verifies them exactly.

Each history becomes one top-K request (``topk.request``): the engine runs its K beams and hands back
the K best items with their scores, best first, the answer ``decoding.beam_search_items`` (the
plain-torch reference) gives for the same model and catalog. ``LLM.generate`` cannot carry it (its
outputs must be ``RequestOutput``s), so the requests are queued with ``LLM.enqueue`` and collected with
``LLM.wait_for_completion``, vLLM's own pair for requests whose answer is not generated text.
``topk_engine_args`` sizes the ``LLM`` for the users it will answer at once.

A request that vLLM preempted before its answer is queued again, once (``topk.request.SUBMISSIONS``).

Every request is checked by the front end's own check (``list_settings.check_request``) before any is
queued: K in 1..``max_topk``, and K items left after the history's exclusions; each raises its
``ListSpecError`` (a ``ValueError``) naming ``padrec_topk`` and nothing reaches the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.prefill_graphs import VLLM_CAPTURE_CAP, capture_grid_ceiling
from vllm_padrec.topk.request import (
    SUBMISSIONS,
    TopKPreempted,
    ranked_items,
    topk_max_tokens,
    topk_sampling_params,
    topk_spec,
)


def topk_engine_args(
    max_k: int,
    concurrent_users: int,
    max_num_seqs: int = 0,
    prefill_tokens: int = 8192,
    *,
    draft: str | None = None,  # a draft head folder (EAGLE-family, e.g. PAD-Rec): top-K in drafted rounds
    draft_beams: int = 1,  # N, the draft's beams in a round (``integration/topk_drafting.py``)
    gamma: int = 3,  # draft tokens each row carries into a round
) -> dict:
    """``vllm.LLM`` arguments under which ``concurrent_users`` top-K requests of up to ``max_k`` items run at
    once: beam rows for all of them (``padrec.topk_max_beams``), and request slots and token rows beyond those
    rows for the requests themselves and their prompts' prefill (the scheduler holds the beam rows back from
    both, ``patches/scheduler_init.reserve_beam_rows``). ``max_num_seqs``: at least this many slots anyway.
    With a ``draft``, every request runs in drafted rounds: K + (N - 1) * gamma rows each, every row carrying
    1 + gamma tokens a step, and every request (a spec-decode row itself) 1 + gamma tokens too. Where one
    request's round passes vLLM's default CUDA-graph limit (512 tokens; ``one_round_graph_size``), the limit is
    raised to hold it, so that a request alone verifies in a FULL graph, not eagerly."""
    from vllm_padrec.integration.list_settings import MAX_TOPK_BEAMS_LIMIT
    from vllm_padrec.topk.admission import beam_rows

    rows = concurrent_users * (beam_rows(max_k, draft_beams, gamma) if draft else max_k)
    if rows > MAX_TOPK_BEAMS_LIMIT:
        raise PadRecError(
            f"{concurrent_users} users at K = {max_k} need {rows} beam rows, more than {MAX_TOPK_BEAMS_LIMIT}: "
            "send fewer users at once"
        )
    drafts = gamma if draft else 0  # tokens a row and a request carry beyond their own one
    padrec = {"max_topk": max_k, "topk_max_beams": rows}
    args = {
        "max_num_seqs": max(max_num_seqs, rows + concurrent_users),
        "max_num_batched_tokens": rows * (1 + drafts) + concurrent_users * drafts + prefill_tokens,
        "additional_config": {"padrec": padrec},
    }
    if draft:
        padrec["topk_draft_beams"] = draft_beams
        args["speculative_config"] = {"method": "eagle", "model": draft, "num_speculative_tokens": gamma}
        graph_size = one_round_graph_size(max_k, draft_beams, gamma)
        if graph_size > VLLM_CAPTURE_CAP:  # vLLM's largest default graph (integration/prefill_graphs.py)
            args["compilation_config"] = {"max_cudagraph_capture_size": graph_size}
    return args


def one_round_graph_size(max_k: int, draft_beams: int, gamma: int) -> int:
    """The tokens of one drafted request's verification step (its beam rows and its own row, 1 + gamma each),
    rounded up to vLLM's capture grid (``integration/prefill_graphs.capture_grid_ceiling``): e.g. K = 20, N = 40,
    gamma 3: (137 + 1) * 4 = 552 -> 560."""
    from vllm_padrec.topk.admission import beam_rows

    return capture_grid_ceiling((beam_rows(max_k, draft_beams, gamma) + 1) * (1 + gamma))


def external_request_id(internal: str) -> str:
    """The id an output of ``LLM.wait_for_completion`` carries for a request ``LLM.enqueue`` returned as
    ``internal``: vLLM 0.26.0 gives the engine ``f"{id}-{8 random characters}"`` for the counter's ``id``
    (``InputProcessor.assign_request_id``; unchanged with ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION``) and
    labels outputs with ``id``, which the counter makes digits only."""
    head, dash, _ = internal.rpartition("-")
    return head if dash and head.isdigit() else internal


def recommend_topk(
    llm: Any,  # a vllm.LLM serving the target with the padrec general plugin
    catalog: ItemCatalog,  # the catalog the server's masks read
    histories: Sequence[Sequence[int]],  # per user: item indices, oldest first
    k: int,
    exclude_history: bool = False,  # never return one of the user's history items
    *,
    max_history: int | None = None,  # keep only the last max_history items of each history in the prompt
    verification: str | None = None,  # on a server that drafts top-K beams: "strict" (the default) or "relaxed"
) -> list[list[tuple[int, float]]]:
    """For each history, its ``k`` best ``(item index, score)``, best first (module docstring)."""
    from vllm.inputs import TokensPrompt

    from vllm_padrec.integration.list_settings import check_request

    vllm_config = llm.llm_engine.vllm_config
    specs = [topk_spec(k, tuple(sorted(set(h))) if exclude_history else (), verification) for h in histories]
    for spec in specs:  # all checked before any is queued
        check_request(vllm_config, spec.to_extra_args())
    max_tokens = topk_max_tokens(catalog.num_slots)
    prompts = [TokensPrompt(prompt_token_ids=catalog.render_prompt(h, max_history)) for h in histories]
    params = [topk_sampling_params(spec, max_tokens) for spec in specs]
    results: list[list[tuple[int, float]] | None] = [None] * len(histories)
    pending = list(range(len(histories)))  # users without an answer yet
    for _ in range(SUBMISSIONS):
        answers = run_topk_requests(llm, [prompts[u] for u in pending], [params[u] for u in pending])
        preempted = []
        for user, (request_id, output) in zip(pending, answers):
            try:
                ranked = ranked_items(output, catalog)
            except TopKPreempted:
                preempted.append(user)
                continue
            if ranked.invalid:
                raise PadRecError(
                    f"top-K request {request_id}: {ranked.invalid} returned items are not items of catalog "
                    f"{catalog.name!r}: is the server's catalog another one?"
                )
            results[user] = ranked.items
        pending = preempted
        if not pending:
            return results
    raise PadRecError(
        f"{len(pending)} top-K requests were preempted {SUBMISSIONS} times before their answers: the engine is short "
        "of KV cache (raise gpu_memory_utilization or lower padrec.topk_max_beams)"
    )


def run_topk_requests(llm: Any, prompts: list, params: list) -> list[tuple[str, Any]]:
    """Queue the requests, run the engine until every one finished: (request id, final output) per request.
    A preempted top-K request finishes as a plain ``RequestOutput`` (``topk.request``), hence both types."""
    from vllm.outputs import PoolingRequestOutput, RequestOutput

    request_ids = [external_request_id(i) for i in llm.enqueue(prompts, params, use_tqdm=False)]
    outputs = llm.wait_for_completion((PoolingRequestOutput, RequestOutput), use_tqdm=False)
    finished = {out.request_id: out for out in outputs}
    missing = [r for r in request_ids if r not in finished]
    if missing:
        raise PadRecError(f"top-K requests {missing} did not finish in the engine")
    return [(r, finished[r]) for r in request_ids]
