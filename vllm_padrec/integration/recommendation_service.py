"""What ``POST /v1/recommendations`` does with a validated body: plan it, run it, answer it.

``RecommendationService.plan`` checks a ``RecommendationRequest`` against the catalog and the server's
limits and turns it into a ``Plan``: the prompt ``<s> h_1 <sep> ... h_H <rec>`` as token ids, and
``SamplingParams(max_tokens=N*(L+1)+1, temperature, seed, stop_token_ids=[</s>], extra_args=ListSpec(...),
output_kind=FINAL_ONLY)``. The general plugin's masks in the engine then force exactly N catalog items, so
the list takes N*(L+1) tokens (L codes + a separator or ``</s>`` per item) and the +1 is one token of
slack. ``generate`` sends it to ``EngineClient.generate`` as a ``TokensPrompt``
(vllm/engine/protocol.py:65-84; vLLM 0.26 logs once that raw prompts are deprecated in favour of
``renderer.render_cmpl_async``, vllm/v1/engine/input_processor.py:281-295, but processes them), and
``answer`` parses the output token ids back into items (``vllm_padrec.lists.parse_list``, counting the
chunks that name no item).

A top-K request (``"mode": "topk", "k": K``) plans ``topk.request``'s request instead (``ListSpec(constraint,
topk=K, exclude_items)``, ``max_tokens = L + 1``, greedy), after the front end's own check
(``list_settings.check_request``: on a server without beam rows its refusal becomes a 400 here).
``generate_topk`` submits it with ``add_request`` rather than ``generate`` (whose outputs must be
``RequestOutput``s), and ``answer_topk`` returns the K items of the answer's ``PoolingRequestOutput``
with their scores, best first.

Policies:

- History length. The prompt keeps the last ``max_history`` items of the recipe the target was
  trained with (``padrec_recipe.json`` in the model folder, else beside the catalog; no cap without
  one), then drops the oldest items until ``prompt + N*(L+1) + 1`` fits ``max_model_len``.
  ``history_items_used`` and ``warnings`` say so. Only when not even the newest item fits is the
  request refused (422, naming both numbers).
- ``exclude_history``. The history's distinct items (all of them, also those the prompt leaves out) go
  to the engine as ``ListSpec.exclude_items`` (``padrec_exclude_items``): its masks never let the list
  complete one of them, so the list still holds exactly N items, none from the history, and nothing is
  filtered here. A history of more distinct items than the server's ``max_exclude_items``
  (``--additional-config``, default 256) is refused (422, naming both numbers).
- ``speculation``: ``null`` without speculative decoding, else the server-wide counters
  (``spec_decode_counters.SpeculationReport``).

Bad requests raise ``RecommendationError`` (HTTP status, message, the field at fault).
"""

from __future__ import annotations

import json
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog, TokenLayout
from vllm_padrec.errors import EmptyHistoryError, PadRecError, UnknownItemError
from vllm_padrec.integration.spec_decode_counters import SpeculationReport
from vllm_padrec.lists import ListSpec, parse_list
from vllm_padrec.lists.spec import DEFAULT_MAX_TOPK
from vllm_padrec.topk.request import (
    SUBMISSIONS,
    RankedItems,
    TopKPreempted,
    ranked_items,
    topk_max_tokens,
    topk_spec,
)

# Request size: a history longer than any context is refused, not scanned (the prompt keeps at most
# max_model_len / (L + 1) items anyway).
MAX_HISTORY_IDS = 10_000
MAX_ITEM_ID_CHARS = 256
INT64 = (-(2**63), 2**63 - 1)  # seed bounds, as vLLM's CompletionRequest (and its sampler's int64 state)
# fields that shape a list and mean nothing to "mode": "topk" (a top-K request naming one is refused)
LIST_ONLY_FIELDS = ("num_items", "no_repeat", "temperature", "seed")


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)


class RecommendationRequest(BaseModel):
    """Body of ``POST /v1/recommendations``."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    history: list[Annotated[str, Field(max_length=MAX_ITEM_ID_CHARS)]] = Field(
        max_length=MAX_HISTORY_IDS, description="item ids the user interacted with, oldest first"
    )
    num_items: int = Field(10, ge=1, description="length of the recommended list")
    no_repeat: bool = Field(True, description="an item at most once in the list")
    exclude_history: bool = Field(False, description="leave out items of the history")
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="0: greedy")
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1], description="sampling seed (temperature > 0)")
    model: str | None = Field(None, description="served model name; default: the first")
    mode: Literal["list", "topk"] = Field(
        "list", description="list: one generated list of num_items; topk: the k best single items, best first"
    )
    k: int | None = Field(None, ge=1, description='with "mode": "topk": how many items (1..max_topk)')
    verification: Literal["strict", "relaxed"] | None = Field(
        None,
        description='with "mode": "topk" on a server that drafts top-K beams: strict (the exact beam search, the '
        "default) or relaxed (AtSpeed's relaxed sampling, not lossless)",
    )


class RecommendationError(Exception):
    """A request answered with an error: HTTP ``status``, ``message``, the field at fault (``param``) and
    ``extra`` fields of the error record."""

    def __init__(self, status: int, message: str, param: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.extra = extra


@dataclass
class Plan:
    """What one validated request asks of the engine."""

    prompt_token_ids: list[int]
    spec: ListSpec  # the list: N items, no_repeat, the history's items banned with exclude_history
    max_tokens: int
    temperature: float
    seed: int | None
    model: str
    history_items_used: int
    warnings: list[str] = field(default_factory=list)

    @property
    def topk(self) -> int | None:
        """K of a top-K plan (``"mode": "topk"``); None for a list."""
        return self.spec.topk

    def sampling_params(self):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if self.topk is not None:
            from vllm_padrec.topk.request import topk_sampling_params

            return topk_sampling_params(self.spec, self.max_tokens)
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            stop_token_ids=[TokenLayout.EOS],
            extra_args=self.spec.to_extra_args(),
            output_kind=RequestOutputKind.FINAL_ONLY,
            detokenize=False,  # the answer is built from token ids; code tokens have no useful text
        )


@dataclass
class Generation:
    """The engine's final output for one request."""

    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int


@dataclass
class TopKGeneration:
    """The engine's answer to one top-K request, read back (``topk.request.ranked_items``)."""

    ranked: RankedItems
    prompt_tokens: int


class RecommendationService:
    """The route's state: engine client, catalog and the server's limits."""

    def __init__(
        self,
        engine_client: Any,
        catalog: ItemCatalog,
        *,
        model_names: list[str],
        max_model_len: int,
        max_list_items: int,
        max_exclude_items: int,
        max_topk: int = DEFAULT_MAX_TOPK,
        vllm_config: Any = None,  # the server's; the front end's check of top-K requests reads it
        max_history: int | None = None,
        speculative: bool = False,
        catalog_path: str = "",
        metrics_registry: Any = None,  # prometheus registry; None: vLLM's (get_prometheus_registry)
    ) -> None:
        self.engine_client = engine_client
        self.catalog = catalog
        self.model_names = list(model_names)
        self.max_model_len = int(max_model_len)
        self.max_list_items = int(max_list_items)
        self.max_exclude_items = int(max_exclude_items)
        self.max_topk = int(max_topk)
        self.vllm_config = vllm_config
        self.max_history = max_history
        self.catalog_path = catalog_path
        self.speculation = SpeculationReport(metrics_registry) if speculative else None

    # -- set-up ----------------------------------------------------------------------------------
    @classmethod
    def from_app_state(cls, engine_client: Any, state: Any, args: Namespace) -> RecommendationService:
        """Build from vLLM's app state; raises PadRecError (with the fix) when the catalog is missing."""
        from vllm_padrec.integration.list_settings import catalog_path, load_catalog, server_settings

        if engine_client is None:
            raise PadRecError("this server has no engine (render-only server): recommendations need one")
        vllm_config = getattr(state, "vllm_config", None) or engine_client.vllm_config
        model_config = vllm_config.model_config
        settings = server_settings(vllm_config)
        target = Path(model_config.model)
        path = catalog_path(vllm_config, settings)
        catalog = load_catalog(path)
        if catalog is None:
            raise PadRecError(
                f"no catalog at {path}: save {CATALOG_FILE} in the served model folder or set "
                '--additional-config \'{"padrec": {"catalog": PATH}}\''
            )
        max_history = read_max_history(target, path.parent)
        names = getattr(args, "served_model_name", None) or [model_config.model]
        if isinstance(names, str):
            names = [names]
        return cls(
            engine_client,
            catalog,
            model_names=names,
            max_model_len=model_config.max_model_len,
            max_list_items=settings.max_list_items,
            max_exclude_items=settings.max_exclude_items,
            max_topk=settings.max_topk,
            vllm_config=vllm_config,
            max_history=max_history,
            speculative=vllm_config.speculative_config is not None,
            catalog_path=str(path),
        )

    def longest_prompt(self) -> int | None:
        """The tokens of the longest prompt the route writes: ``<s>``, ``max_history`` items and their separators;
        None where the target's recipe names no ``max_history`` (then max_model_len alone bounds a history)."""
        if not self.max_history or len(self.catalog) == 0:
            return None
        return len(self.catalog.render_prompt([0] * self.max_history))  # every item renders to the same length

    def prefill_graph_advice(self) -> tuple[int, str] | None:
        """``prefill_graphs.prefill_graph_advice`` for the route's longest prompt and the server's engine."""
        from vllm_padrec.integration.prefill_graphs import prefill_graph_advice

        longest = self.longest_prompt()
        return None if longest is None else prefill_graph_advice(longest, self.vllm_config)

    # -- validation --------------------------------------------------------------------------------
    def plan(self, request: RecommendationRequest) -> Plan:
        """Validate ``request`` against the catalog and the server's limits; raises RecommendationError."""
        catalog = self.catalog
        model = self._model_name(request.model)
        self._check_mode_fields(request)
        try:  # every unknown id is named (catalog.history_indices), in one pass over the history
            history = catalog.history_indices(request.history)
        except EmptyHistoryError as error:
            raise RecommendationError(422, str(error), "history") from None
        except UnknownItemError as error:
            raise RecommendationError(422, str(error), "history", unknown_item_ids=error.item_ids) from None
        if request.mode == "topk":
            if request.k > self.max_topk:
                raise RecommendationError(
                    422,
                    f"k={request.k} is more than this server's max_topk={self.max_topk} (raise it with "
                    '--additional-config \'{"padrec": {"max_topk": K}}\')',
                    "k",
                )
        else:
            n = request.num_items
            cap = self.max_list_items
            if n > cap:
                raise RecommendationError(
                    422,
                    f"num_items={n} is more than this server's max_list_items={cap} (raise it with "
                    '--additional-config \'{"padrec": {"max_list_items": N}}\')',
                    "num_items",
                )
        excluded = tuple(sorted(set(history))) if request.exclude_history else ()
        if len(excluded) > self.max_exclude_items:
            raise RecommendationError(
                422,
                f"exclude_history: the history holds {len(excluded)} distinct items, more than this server's "
                f"max_exclude_items={self.max_exclude_items} (raise it with --additional-config "
                '\'{"padrec": {"max_exclude_items": N}}\')',
                "exclude_history",
            )
        available = len(catalog) - len(excluded)
        if request.mode == "topk":
            if request.k > available:
                where = f"{available} items outside the history" if excluded else f"{len(catalog)} items"
                raise RecommendationError(
                    422, f"k={request.k} asks for {request.k} distinct items but the catalog has {where}", "k"
                )
            spec = topk_spec(request.k, excluded, request.verification)
            max_tokens, asked, param = topk_max_tokens(catalog.num_slots), "a smaller k cannot help", "history"
        else:
            if request.no_repeat and n > available:
                where = f"{available} items outside the history" if excluded else f"{len(catalog)} items"
                raise RecommendationError(
                    422,
                    f"num_items={n} with no_repeat needs {n} distinct items but the catalog has {where}",
                    "num_items",
                )
            spec = ListSpec(constraint=True, num_items=n, no_repeat=request.no_repeat, exclude_items=excluded)
            max_tokens, asked, param = n * (catalog.num_slots + 1) + 1, "ask for fewer items", "num_items"
        if available == 0:
            raise RecommendationError(
                422, "exclude_history leaves no item: the history holds the whole catalog", "exclude_history"
            )
        if spec.topk is not None:
            self._check_topk_on(spec)
        period = catalog.num_slots + 1
        warnings: list[str] = []
        window = history
        if self.max_history is not None and len(window) > self.max_history:
            window = window[-self.max_history :]
            warnings.append(
                f"history: kept the last {len(window)} of {len(history)} items (the target was trained on "
                f"at most {self.max_history})"
            )
        budget = self.max_model_len - max_tokens
        fits = max(0, (budget - 1) // period)  # <s> + k items * (L + 1) (each with <sep> or <rec>)
        if fits < 1:
            what = (
                f"the top-K answer {max_tokens} tokens ({catalog.num_slots} codes + 1)"
                if spec.topk is not None
                else f"the list {max_tokens} tokens ({n} items of {catalog.num_slots} codes + separators + </s> + 1)"
            )
            raise RecommendationError(
                422,
                f"the prompt needs at least {1 + period} tokens (one history item) and {what}, "
                f"{1 + period + max_tokens} in all, more than max_model_len={self.max_model_len}: {asked}",
                param,
            )
        if len(window) > fits:
            prompt_len = 1 + len(window) * period
            window = window[-fits:]
            warnings.append(
                f"history: kept the last {fits} items: the prompt of {prompt_len} tokens plus {max_tokens} for the "
                f"{'answer' if spec.topk is not None else 'list'} would exceed max_model_len={self.max_model_len}"
            )
        return Plan(
            prompt_token_ids=catalog.render_prompt(window),
            spec=spec,
            max_tokens=max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            model=model,
            history_items_used=len(window),
            warnings=warnings,
        )

    @staticmethod
    def _check_mode_fields(request: RecommendationRequest) -> None:
        """422 for a field the request's mode does not read (``k`` of top-K, the list's own fields)."""
        given = request.model_fields_set
        if request.mode == "list":
            if "k" in given:
                raise RecommendationError(422, 'k applies to "mode": "topk" only (a list asks for num_items)', "k")
            if "verification" in given:
                raise RecommendationError(422, 'verification applies to "mode": "topk" only', "verification")
            return
        if request.k is None:
            raise RecommendationError(422, 'k is required with "mode": "topk" (the number of items, best first)', "k")
        for name in LIST_ONLY_FIELDS:
            if name in given:
                raise RecommendationError(
                    422,
                    f'{name} applies to "mode": "list" only: "mode": "topk" returns the k best single items, '
                    "ranked by the target's log-probabilities (greedy, no sampling)",
                    name,
                )

    def _check_topk_on(self, spec: ListSpec) -> None:
        """The front end's own check of a top-K request (``list_settings.check_request``): on a server without
        beam rows (``padrec.topk_max_beams`` = 0) its refusal, as a 400 with the same message."""
        from vllm_padrec.integration.list_settings import check_request
        from vllm_padrec.lists import REQUEST_KEYS, ListSpecError

        try:
            check_request(self.vllm_config, spec.to_extra_args())
        except ListSpecError as error:
            param = "verification" if error.key == REQUEST_KEYS["topk_verification"] else "mode"
            raise RecommendationError(400, str(error), param) from None

    def _model_name(self, requested: str | None) -> str:
        if requested is None:
            return self.model_names[0]
        if requested not in self.model_names:
            raise RecommendationError(
                404, f"the model {requested!r} does not exist: this server serves {self.model_names}", "model"
            )
        return requested

    # -- engine ------------------------------------------------------------------------------------
    async def generate(self, plan: Plan, request_id: str) -> Generation | TopKGeneration:
        """One engine request; its final output. When cancelled, closing ``EngineClient.generate`` aborts
        that request in the engine (AsyncLLM aborts it by its internal id). A top-K plan goes through
        ``generate_topk``."""
        from vllm.inputs import TokensPrompt

        if plan.topk is not None:
            return await self.generate_topk(plan, request_id)
        final = None
        async for output in self.engine_client.generate(
            TokensPrompt(prompt_token_ids=plan.prompt_token_ids), plan.sampling_params(), request_id
        ):
            final = output
        if final is None or not final.outputs:
            raise RecommendationError(500, f"the engine returned no output for request {request_id}")
        completion = final.outputs[0]
        prompt_ids = final.prompt_token_ids
        return Generation(
            token_ids=[int(t) for t in completion.token_ids],
            finish_reason=completion.finish_reason,
            prompt_tokens=len(prompt_ids) if prompt_ids is not None else len(plan.prompt_token_ids),
        )

    async def generate_topk(self, plan: Plan, request_id: str) -> TopKGeneration:
        """One top-K request; its ranked items.

        Not ``EngineClient.generate``: AsyncLLM's ``generate`` asserts that every output is a
        ``RequestOutput`` (vllm/v1/engine/async_llm.py:583), and a top-K answer is a ``PoolingRequestOutput``
        (``topk.request``). So the request is added with ``AsyncLLM.add_request``, which ``generate`` and
        ``encode`` call too (:280-398), and its ``RequestOutputCollector`` is drained here as they drain
        it. On cancellation (a client disconnect) or any failure after the request was added, the request
        is aborted by the collector's id, the engine's internal one, as ``generate`` does (:588-625).
        A request that vLLM preempted comes back without an answer (``TopKPreempted``) and is sent again,
        up to ``SUBMISSIONS`` times in all; then the answer is a 503 (the server is short of KV cache).
        """
        for _ in range(SUBMISSIONS):
            final = await self._submit_topk(plan, request_id)
            try:
                ranked = ranked_items(final, self.catalog)
            except TopKPreempted:
                continue
            except (TypeError, ValueError) as error:
                message = f"request {request_id}: the engine gave no top-K answer: {error}"
                raise RecommendationError(500, message) from None
            prompt_ids = final.prompt_token_ids
            return TopKGeneration(ranked, len(prompt_ids) if prompt_ids is not None else len(plan.prompt_token_ids))
        raise RecommendationError(
            503,
            f"request {request_id}: the engine preempted it {SUBMISSIONS} times before its answer (short of KV "
            "cache under this load): try again later",
        )

    async def _submit_topk(self, plan: Plan, request_id: str) -> Any:
        """Add the top-K request and drain its collector to the final output (``generate_topk``)."""
        from vllm.inputs import TokensPrompt

        collector = await self.engine_client.add_request(
            request_id, TokensPrompt(prompt_token_ids=plan.prompt_token_ids), plan.sampling_params()
        )
        try:
            final = None
            while final is None or not final.finished:
                final = collector.get_nowait() or await collector.get()
        except BaseException:  # CancelledError included: the engine must not keep computing a dropped request
            await self.engine_client.abort(collector.request_id, internal=True)
            raise
        finally:
            collector.close()
        return final

    # -- answer --------------------------------------------------------------------------------------
    def answer(self, plan: Plan, generation: Generation | TopKGeneration, request_id: str) -> dict:
        """The JSON answer (the route's docstring): the generated items, usage, speculation, warnings."""
        if isinstance(generation, TopKGeneration):
            return self.answer_topk(plan, generation, request_id)
        parsed = parse_list(self.catalog, generation.token_ids)
        items, invalid = parsed.items, parsed.invalid
        warnings = list(plan.warnings)
        if invalid:
            warnings.append(
                f"{invalid} generated items are not catalog items and were dropped (is the "
                "padrec general plugin loaded with this catalog?)"
            )
        num_items = plan.spec.num_items
        if len(items) < num_items:
            warnings.append(
                f"the engine returned {len(items)} of {num_items} items (finish_reason={generation.finish_reason})"
            )
        items = items[:num_items]
        return {
            "id": request_id,
            "object": "recommendation",
            "model": plan.model,
            "items": [{"rank": rank, **self.catalog.describe(index)} for rank, index in enumerate(items, 1)],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": len(generation.token_ids),
                "total_tokens": generation.prompt_tokens + len(generation.token_ids),
            },
            "speculation": self.speculation.record() if self.speculation is not None else None,
            "history_items_used": plan.history_items_used,
            "warnings": warnings,
        }

    def answer_topk(self, plan: Plan, generation: TopKGeneration, request_id: str) -> dict:
        """The JSON answer of a top-K request: the list answer's fields, with each item's ``score`` (the sum
        of its code tokens' full-vocabulary log-probabilities) and ``"mode": "topk"``. ``usage`` counts the
        prompt only: the items come back as a result, not as generated tokens."""
        ranked = generation.ranked
        warnings = list(plan.warnings)
        if ranked.invalid:
            warnings.append(
                f"{ranked.invalid} returned items are not catalog items and were dropped (is the padrec general "
                "plugin loaded with this catalog?)"
            )
        if len(ranked.items) < plan.topk:
            warnings.append(f"the engine returned {len(ranked.items)} of {plan.topk} items")
        items = ranked.items[: plan.topk]
        return {
            "id": request_id,
            "object": "recommendation",
            "model": plan.model,
            "mode": "topk",
            "items": [
                {"rank": rank, **self.catalog.describe(index), "score": score}
                for rank, (index, score) in enumerate(items, 1)
            ],
            "usage": {"prompt_tokens": generation.prompt_tokens, "total_tokens": generation.prompt_tokens},
            "speculation": self.speculation.record() if self.speculation is not None else None,
            "history_items_used": plan.history_items_used,
            "warnings": warnings,
        }


def read_max_history(*folders: Path) -> int | None:
    """``max_history`` of the first ``padrec_recipe.json`` among ``folders``; None without one.

    Read as plain JSON (not ``TargetRecipe``), so that a recipe from another version still gives its H.
    """
    from vllm_padrec.target.config import RECIPE_FILE

    for folder in folders:
        path = Path(folder) / RECIPE_FILE
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text()).get("max_history")
        except (OSError, ValueError, AttributeError) as error:
            _logger().warning("vllm-padrec: ignoring %s: %s", path, error)
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        return None
    return None
