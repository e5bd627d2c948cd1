"""Top-K recommendation offline: ``recommend_topk`` over a ``vllm.LLM`` that serves the target.

    from vllm import LLM
    llm = LLM(TARGET, additional_config={"padrec": {...}}, ...)  # the padrec general plugin loaded
    ranked = recommend_topk(llm, catalog, histories, k=20, exclude_history=True)  # [[(item, score), ...], ...]

Each history becomes one top-K request (``topk.request``): the engine runs its K beams and hands back
the K best items with their scores, best first, the answer ``decoding.beam_search_items`` (the
plain-torch reference) gives for the same model and catalog. ``LLM.generate`` cannot carry it (its
outputs must be ``RequestOutput``s), so the requests are queued with ``LLM.enqueue`` and collected with
``LLM.wait_for_completion(PoolingRequestOutput)``, vLLM's own pair for requests whose answer is not
generated text.

Every request is checked by the front end's own check (``list_settings.check_request``) before any is
queued: K in 1..``max_topk``, K items left after the history's exclusions, and, while this build's
engine does not serve top-K (``list_settings.TOPK_SERVED``), the front end's refusal; each raises its
``ListSpecError`` (a ``ValueError``) naming ``padrec_topk`` and nothing reaches the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.errors import PadRecError
from vllm_padrec.topk.request import ranked_items, topk_max_tokens, topk_sampling_params, topk_spec


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
) -> list[list[tuple[int, float]]]:
    """For each history, its ``k`` best ``(item index, score)``, best first (module docstring)."""
    from vllm.inputs import TokensPrompt
    from vllm.outputs import PoolingRequestOutput

    from vllm_padrec.integration.list_settings import check_request

    vllm_config = llm.llm_engine.vllm_config
    specs = [topk_spec(k, tuple(sorted(set(h))) if exclude_history else ()) for h in histories]
    for spec in specs:  # all checked before any is queued
        check_request(vllm_config, spec.to_extra_args())
    max_tokens = topk_max_tokens(catalog.num_slots)
    prompts = [TokensPrompt(prompt_token_ids=catalog.render_prompt(h, max_history)) for h in histories]
    params = [topk_sampling_params(spec, max_tokens) for spec in specs]
    request_ids = [external_request_id(i) for i in llm.enqueue(prompts, params, use_tqdm=False)]
    finished = {out.request_id: out for out in llm.wait_for_completion(PoolingRequestOutput, use_tqdm=False)}
    results = []
    for request_id in request_ids:
        if request_id not in finished:
            raise PadRecError(f"top-K request {request_id} did not finish in the engine")
        ranked = ranked_items(finished[request_id], catalog)
        if ranked.invalid:
            raise PadRecError(
                f"top-K request {request_id}: {ranked.invalid} returned items are not items of catalog "
                f"{catalog.name!r}: is the server's catalog another one?"
            )
        results.append(ranked.items)
    return results
