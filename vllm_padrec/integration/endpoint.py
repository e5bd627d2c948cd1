"""``POST /v1/recommendations``: a vLLM endpoint plugin (entry-point group ``vllm.endpoint_plugins``).

Enable it on ``vllm serve`` by naming it in ``VLLM_PLUGINS`` together with the general plugin (vLLM
loads endpoint plugins only when ``VLLM_PLUGINS`` lists them, and the same list filters every plugin
group, vllm/plugins/__init__.py:56-64, :93-131)::

    VLLM_PLUGINS=padrec,padrec_recommendations vllm serve TARGET [--speculative-model DRAFT]

    curl localhost:8000/v1/recommendations -H 'Content-Type: application/json' \\
        -d '{"history": ["4149", "812", "77"], "num_items": 10}'

Request (JSON, unknown fields refused): ``history`` (item ids, oldest first; at most
``MAX_HISTORY_IDS``), ``num_items`` (10), ``no_repeat`` (true), ``exclude_history`` (false),
``temperature`` (0.0: greedy; finite), ``seed`` (a signed 64-bit integer, as vLLM's own API bounds it),
``model`` (a served model name; default the first). Bodies over ``MAX_BODY_BYTES`` are refused (413)
before they are read.

Answer: ``{"id", "model", "items": [{"rank", "item_id", "semantic_id", "title"}], "usage":
{"prompt_tokens", "completion_tokens"}, "speculation", "history_items_used", "warnings"}``.

What the route does: it loads the catalog where the engine side does (``list_settings.catalog_path``:
``padrec.catalog`` of ``--additional-config``, else ``padrec_catalog.json`` in the served model folder), renders
``<s> h_1 <sep> ... h_H <rec>`` as prompt token ids, and asks the engine for one request with
``SamplingParams(max_tokens=N*(L+1)+1, temperature, seed, stop_token_ids=[</s>],
extra_args={padrec_constraint, padrec_num_items=N, padrec_no_repeat}, output_kind=FINAL_ONLY)``:
the general plugin's masks (``request_lists``) then force exactly N catalog items, so the list takes
N*(L+1) tokens (L codes + a separator or ``</s>`` per item) and the +1 is one token of slack. The
output token ids are parsed back into items (``parse_list``: ``ItemCatalog.parse_completion`` per
item, counting the invalid ones). The prompt goes to ``EngineClient.generate`` as a ``TokensPrompt``
(vllm/engine/protocol.py:65-84); vLLM 0.26 logs once that raw prompts are deprecated in favour of
``renderer.render_cmpl_async`` (vllm/v1/engine/input_processor.py:281-295) but processes them.

Policies:

- History length. The prompt keeps the last ``max_history`` items of the recipe the target was
  trained with (``padrec_recipe.json`` in the model folder, else beside the catalog; no cap without
  one), then drops the oldest items until ``prompt + N*(L+1) + 1`` fits ``max_model_len``.
  ``history_items_used`` and ``warnings`` say so. Only when not even the newest item fits is the
  request refused (422, naming both numbers).
- ``exclude_history``. The engine's masks cannot ban items (verification_mask.py: no ``ban_history``),
  so the route asks for ``N + |distinct history items|`` items (at most ``max_list_items``, and at most
  the catalog size with ``no_repeat``) and drops the history items afterwards. The list can come out
  shorter than N when the model recommends many history items; ``warnings`` says so.
- ``speculation``. vLLM 0.26 reports no per-request acceptance: ``RequestOutput``
  (vllm/outputs.py:85-145) and its ``RequestStateStats`` (vllm/v1/metrics/stats.py:218-236) carry no
  draft counts. So the field is ``null`` without speculative decoding, and otherwise the *server-wide,
  cumulative* counters ``vllm:spec_decode_num_drafts / _num_draft_tokens / _num_accepted_tokens``
  (all requests since start, every engine; the registry is read at most every 0.5 s) from vLLM's
  Prometheus registry (vllm/v1/metrics/prometheus.py:38-51), with ``"scope": "server"``,
  ``"per_request": null`` and ``mean_acceptance_length = 1 + accepted / drafts``. The counters stay
  ``null`` when stats logging is off (``--disable-log-stats``).

Errors: every bad input gets a JSON 4xx in vLLM's error shape ``{"error": {"message", "type",
"param", "code"}}``: 400 body not JSON; 413 body too large; 422 unknown fields or bad values,
unknown item ids (all of them named), empty or too long history, ``num_items`` above
``max_list_items`` or above what the catalog holds (with ``no_repeat``), history that cannot fit
``max_model_len``; 404 unknown ``model``; 503 no catalog. The engine's own input errors
(``ValueError``) give 400; anything else the engine raises gives 500 with the request id and no
detail (the detail, which can hold server paths, goes to the server log); the app keeps serving.
(When the engine process itself dies, vLLM's watchdog still shuts the server down,
vllm/entrypoints/launcher.py:156-177: that is vLLM's policy, untouched here.)

Request ids are the server's own (``rec-<uuid>``; a client's ``X-Request-Id`` is kept inside it, for
logs, never as the whole id): vLLM aborts by the id a client sent, so two clients with one header
must never share an engine id. A client that disconnects cancels the generation, and AsyncLLM aborts
the cancelled ``generate``'s own request (by its internal id, vllm/v1/engine/async_llm.py:588-596).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog, TokenLayout
from vllm_padrec.errors import (
    EmptyHistoryError,
    MalformedSemanticIdError,
    PadRecError,
    UnknownItemError,
    UnknownSemanticIdError,
)
from vllm_padrec.lists import ListSpec

PLUGIN_NAME = "padrec_recommendations"  # the entry-point name, to list in VLLM_PLUGINS
ROUTE = "/v1/recommendations"
STATE_KEY = "padrec_recommendations"  # app.state attribute holding the service (or why it is off)
SPEC_COUNTERS = (  # server-wide Prometheus counters (vllm/v1/spec_decode/metrics.py:228-264)
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
SPEC_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
COUNTERS_MAX_AGE_S = 0.5  # the Prometheus registry is read at most this often
# Request size: a history longer than any context is refused, not scanned (the prompt keeps at most
# max_model_len / (L + 1) items anyway); bodies are capped before they are read.
MAX_HISTORY_IDS = 10_000
MAX_ITEM_ID_CHARS = 256
MAX_BODY_BYTES = 4 * 1024 * 1024
DRAIN_FACTOR = 16  # bodies up to this many times the cap are read (and dropped) before the 413
INT64 = (-(2**63), 2**63 - 1)  # seed bounds, as vLLM's CompletionRequest (and its sampler's int64 state)
_CLIENT_ID = re.compile(r"[^A-Za-z0-9._:-]")  # characters of X-Request-Id kept in the server's id


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


class RecommendationError(Exception):
    """A request the route answers with a JSON error (vLLM's ``ErrorResponse`` shape)."""

    def __init__(self, status: int, message: str, param: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.extra = extra

    def response(self) -> JSONResponse:
        from http import HTTPStatus

        kind = {
            400: "BadRequestError",
            404: "NotFoundError",
            422: "UnprocessableEntityError",
            500: "InternalServerError",
            503: "ServiceUnavailableError",
        }.get(self.status)
        error = {
            "message": self.message,
            "type": kind or HTTPStatus(self.status).phrase,
            "param": self.param,
            "code": self.status,
            **self.extra,
        }
        return JSONResponse({"error": error}, status_code=self.status)


@dataclass
class Plan:
    """What one validated request asks of the engine."""

    prompt_token_ids: list[int]
    num_items: int  # items the client wants
    num_generate: int  # items asked of the engine (more than num_items with exclude_history)
    max_tokens: int
    no_repeat: bool
    temperature: float
    seed: int | None
    model: str
    excluded: frozenset[int]  # item indices dropped from the answer
    history_items_used: int
    warnings: list[str] = field(default_factory=list)

    def extra_args(self) -> dict[str, Any]:
        return ListSpec(constraint=True, num_items=self.num_generate, no_repeat=self.no_repeat).to_extra_args()

    def sampling_params(self):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            stop_token_ids=[TokenLayout.EOS],
            extra_args=self.extra_args(),
            output_kind=RequestOutputKind.FINAL_ONLY,
            detokenize=False,  # the answer is built from token ids; code tokens have no useful text
        )


@dataclass
class Generation:
    token_ids: list[int]
    finish_reason: str | None
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
        self.max_history = max_history
        self.speculative = speculative
        self.catalog_path = catalog_path
        self.metrics_registry = metrics_registry
        self._counters: tuple[float, dict | None] | None = None  # (monotonic time, counters)

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
            max_history=max_history,
            speculative=vllm_config.speculative_config is not None,
            catalog_path=str(path),
        )

    # -- validation --------------------------------------------------------------------------------
    def plan(self, request: RecommendationRequest) -> Plan:
        """Validate ``request`` against the catalog and the server's limits; raises RecommendationError."""
        catalog = self.catalog
        model = self._model_name(request.model)
        try:  # every unknown id is named (catalog.history_indices), in one pass over the history
            history = catalog.history_indices(request.history)
        except EmptyHistoryError as error:
            raise RecommendationError(422, str(error), "history") from None
        except UnknownItemError as error:
            raise RecommendationError(422, str(error), "history", unknown_item_ids=error.item_ids) from None
        n = request.num_items
        cap = self.max_list_items
        if n > cap:
            raise RecommendationError(
                422,
                f"num_items={n} is more than this server's max_list_items={cap} (raise it with "
                '--additional-config \'{"padrec": {"max_list_items": N}}\')',
                "num_items",
            )
        excluded = frozenset(history) if request.exclude_history else frozenset()
        available = len(catalog) - len(excluded)
        if request.no_repeat and n > available:
            where = f"{available} items outside the history" if excluded else f"{len(catalog)} items"
            raise RecommendationError(
                422, f"num_items={n} with no_repeat needs {n} distinct items but the catalog has {where}", "num_items"
            )
        if available == 0:
            raise RecommendationError(
                422, "exclude_history leaves no item: the history holds the whole catalog", "exclude_history"
            )
        num_generate = n
        if excluded:
            num_generate = min(n + len(excluded), cap, len(catalog) if request.no_repeat else cap)
        period = catalog.num_slots + 1
        max_tokens = num_generate * period + 1
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
            raise RecommendationError(
                422,
                f"the prompt needs at least {1 + period} tokens (one history item) and the list "
                f"{max_tokens} tokens ({num_generate} items of {catalog.num_slots} codes + separators + </s> + 1), "
                f"{1 + period + max_tokens} in all, more than max_model_len={self.max_model_len}: ask for fewer items",
                "num_items",
            )
        if len(window) > fits:
            prompt_len = 1 + len(window) * period
            window = window[-fits:]
            warnings.append(
                f"history: kept the last {fits} items: the prompt of {prompt_len} tokens plus {max_tokens} for the "
                f"list would exceed max_model_len={self.max_model_len}"
            )
        return Plan(
            prompt_token_ids=catalog.render_prompt(window),
            num_items=n,
            num_generate=num_generate,
            max_tokens=max_tokens,
            no_repeat=request.no_repeat,
            temperature=request.temperature,
            seed=request.seed,
            model=model,
            excluded=excluded,
            history_items_used=len(window),
            warnings=warnings,
        )

    def _model_name(self, requested: str | None) -> str:
        if requested is None:
            return self.model_names[0]
        if requested not in self.model_names:
            raise RecommendationError(
                404, f"the model {requested!r} does not exist: this server serves {self.model_names}", "model"
            )
        return requested

    # -- engine ------------------------------------------------------------------------------------
    async def generate(self, plan: Plan, request_id: str) -> Generation:
        """One engine request; its final output. When cancelled, closing ``EngineClient.generate`` aborts
        that request in the engine (AsyncLLM aborts it by its internal id)."""
        from vllm.inputs import TokensPrompt

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

    # -- answer --------------------------------------------------------------------------------------
    def parse_items(self, token_ids: list[int]) -> tuple[list[int], int]:
        return parse_list(self.catalog, token_ids)

    def response(self, plan: Plan, generation: Generation, request_id: str) -> dict:
        items, invalid = self.parse_items(generation.token_ids)
        warnings = list(plan.warnings)
        if invalid:
            warnings.append(
                f"{invalid} generated items are not catalog items and were dropped (is the "
                "padrec general plugin loaded with this catalog?)"
            )
        if plan.excluded:
            kept = [i for i in items if i not in plan.excluded]
            if len(kept) < plan.num_items:
                warnings.append(
                    f"exclude_history: {len(items) - len(kept)} of the {len(items)} generated items were "
                    f"history items; {len(kept)} of {plan.num_items} items remain"
                )
            items = kept
        elif len(items) < plan.num_items:
            warnings.append(
                f"the engine returned {len(items)} of {plan.num_items} items (finish_reason={generation.finish_reason})"
            )
        items = items[: plan.num_items]
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
            "speculation": self.speculation(),
            "history_items_used": plan.history_items_used,
            "warnings": warnings,
        }

    def speculation(self) -> dict | None:
        """Server-wide speculative-decoding counters (module docstring); None without speculation."""
        if not self.speculative:
            return None
        now = time.monotonic()
        if self._counters is None or now - self._counters[0] > COUNTERS_MAX_AGE_S:
            self._counters = (now, read_spec_decode_counters(self.metrics_registry))
        counters = self._counters[1]
        record: dict[str, Any] = {
            "scope": "server",
            "per_request": None,
            "num_drafts": None,
            "num_draft_tokens": None,
            "num_accepted_tokens": None,
            "accepted_per_position": None,
            "mean_acceptance_length": None,
            "draft_acceptance_rate": None,
        }
        if counters is None:
            record["note"] = (
                "vLLM reports no per-request acceptance, and the server-wide counters are "
                "unavailable (stats logging off: --disable-log-stats)"
            )
            return record
        drafts, draft_tokens, accepted = (counters.get(name) for name in SPEC_COUNTERS)
        record.update(
            num_drafts=drafts,
            num_draft_tokens=draft_tokens,
            num_accepted_tokens=accepted,
            accepted_per_position=counters.get(SPEC_PER_POS),
            mean_acceptance_length=1 + accepted / drafts if drafts else None,
            draft_acceptance_rate=accepted / draft_tokens if draft_tokens else None,
            note="vLLM reports no per-request acceptance: these are the server's cumulative counters over "
            f"all requests since start, read at most every {COUNTERS_MAX_AGE_S} s "
            "(mean acceptance length = 1 + accepted / drafts)",
        )
        return record


def parse_list(catalog: ItemCatalog, token_ids: Sequence[int]) -> tuple[list[int], int]:
    """(item indices in list order, invalid items) of a generated list ``i_1 <sep> ... i_N </s>``.

    Like ``ItemCatalog.parse_completion(strict=False)``, but counts the items it drops; a trailing
    partial item (no ``</s>``: cut by ``max_tokens``) is dropped without counting.
    """
    items: list[int] = []
    invalid = 0
    chunk: list[int] = []

    def close() -> None:
        nonlocal invalid
        if not chunk:  # an empty item (<sep> <sep>)
            invalid += 1
            return
        try:
            items.extend(catalog.parse_completion(chunk + [TokenLayout.EOS], strict=True))
        except (MalformedSemanticIdError, UnknownSemanticIdError):
            invalid += 1
        chunk.clear()

    for token in (int(t) for t in token_ids):
        if token == TokenLayout.EOS:
            if chunk:
                close()
            return items, invalid
        if token == TokenLayout.SEP:
            close()
        elif token != TokenLayout.PAD:
            chunk.append(token)
    if len(chunk) >= catalog.num_slots:
        close()
    return items, invalid


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


def read_spec_decode_counters(registry: Any = None) -> dict[str, Any] | None:
    """``vllm:spec_decode_*`` counters summed over engines, and accepted tokens per draft position.

    Reads vLLM's Prometheus registry (the multiprocess one with ``--api-server-count`` > 1). None when
    the counters are not registered (no speculation, or stats logging off).
    """
    if registry is None:
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        registry = get_prometheus_registry()
    totals: dict[str, Any] = {}
    per_pos: dict[int, int] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            name = sample.name[: -len("_total")]
            if name in SPEC_COUNTERS:
                totals[name] = totals.get(name, 0) + int(sample.value)
            elif name == SPEC_PER_POS and "position" in sample.labels:
                position = int(sample.labels["position"])
                per_pos[position] = per_pos.get(position, 0) + int(sample.value)
    if not totals:
        return None
    for name in SPEC_COUNTERS:
        totals.setdefault(name, 0)
    totals[SPEC_PER_POS] = [per_pos[p] for p in sorted(per_pos)] if per_pos else None
    return totals


# -- HTTP ---------------------------------------------------------------------------------------------
async def _listen_for_disconnect(raw_request: Request) -> None:
    while True:
        message = await raw_request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(raw_request: Request, work, on_disconnect=None):
    """Await coroutine ``work`` unless the client disconnects first: then cancel it and return None.

    The body must have been read already (the listener consumes the request's messages); the pattern is
    vLLM's ``with_cancellation`` (vllm/entrypoints/serve/utils/api_utils.py:52-90).
    """
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_listen_for_disconnect(raw_request))
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        listener.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    if on_disconnect is not None:
        await on_disconnect()
    return None


def server_request_id(client_id: str | None) -> str:
    """A fresh engine request id; a client's ``X-Request-Id`` (cleaned, at most 64 characters) is kept
    inside it so that logs can be matched (module docstring: never shared between requests)."""
    fresh = uuid.uuid4().hex
    if not client_id:
        return f"rec-{fresh}"
    return f"rec-{_CLIENT_ID.sub('_', client_id[:64])}-{fresh}"


async def read_body(raw_request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes. The rest of a body up to
    ``DRAIN_FACTOR * limit`` is read and dropped (never kept), so that the client, still sending, gets
    the 413 instead of a reset connection; a body declared larger than that is not read at all."""
    declared = raw_request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        return None
    chunks, size = [], 0
    async for chunk in raw_request.stream():
        size += len(chunk)
        if size > DRAIN_FACTOR * limit:
            return None
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg')}")
    return "invalid request: " + "; ".join(parts)


async def create_recommendations(raw_request: Request) -> JSONResponse:
    """``POST /v1/recommendations`` (module docstring)."""
    service = getattr(raw_request.app.state, STATE_KEY, None)
    if not isinstance(service, RecommendationService):
        reason = service if isinstance(service, str) else "the recommendations endpoint is not initialised"
        return RecommendationError(503, reason).response()
    body = await read_body(raw_request, MAX_BODY_BYTES)
    if body is None:
        return RecommendationError(413, f"the body is larger than {MAX_BODY_BYTES} bytes").response()
    try:
        payload = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        return RecommendationError(400, f"the body is not JSON: {error}").response()
    try:
        request = RecommendationRequest.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0].get("loc", ()) if error.errors() else ()
        return RecommendationError(422, _validation_message(error), ".".join(map(str, first)) or None).response()
    try:
        plan = service.plan(request)
    except RecommendationError as error:
        return error.response()
    request_id = server_request_id(raw_request.headers.get("X-Request-Id"))
    try:
        generation = await run_until_disconnect(
            raw_request, service.generate(plan, request_id)
        )  # a disconnect cancels generate(), which aborts the engine request
    except RecommendationError as error:
        return error.response()
    except ValueError as error:  # the engine's own input checks (AsyncLLM.generate re-raises them)
        from vllm.entrypoints.serve.utils.api_utils import sanitize_message

        return RecommendationError(400, f"the engine refused the request: {sanitize_message(str(error))}").response()
    except Exception:  # an engine failure must not take the app down, nor show the server's insides
        _logger().exception("vllm-padrec: request %s failed in the engine", request_id)
        return RecommendationError(
            500, f"the engine failed on request {request_id}; the server log has the details"
        ).response()
    if generation is None:
        return JSONResponse(
            {"error": {"message": "client disconnected", "type": "ClientClosedRequest", "param": None, "code": 499}},
            status_code=499,
        )
    return JSONResponse(service.response(plan, generation, request_id))


class RecommendationsPlugin:
    """The ``vllm.endpoint_plugins`` factory (vllm/plugins/endpoint_plugins/interface.py:42-87)."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)  # not on render-only or pooling servers

    def attach_router(self, app: FastAPI) -> None:
        router = APIRouter()
        router.add_api_route(
            ROUTE,
            create_recommendations,
            methods=["POST"],
            summary="Recommend a list of catalog items from a user's history (vllm-padrec)",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": RecommendationRequest.model_json_schema()}},
                }
            },
        )
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        """Load the catalog; on failure the route answers 503 with the reason (the server still starts)."""
        try:
            service = RecommendationService.from_app_state(engine_client, state, args)
        except (PadRecError, OSError, ValueError, KeyError) as error:
            reason = f"{ROUTE} is unavailable: {error}"
            _logger().warning("vllm-padrec: %s", reason)
            setattr(state, STATE_KEY, reason)
            return
        setattr(state, STATE_KEY, service)
        _logger().info(
            "vllm-padrec: %s serves %d items of %s (max_list_items %d, max_history %s, max_model_len %d)",
            ROUTE,
            len(service.catalog),
            service.catalog_path,
            service.max_list_items,
            service.max_history,
            service.max_model_len,
        )
