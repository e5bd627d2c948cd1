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
``model`` (a served model name; default the first), ``mode`` ("list", the default, or "topk") and ``k``
(with "topk" only, 1..``max_topk``). Bodies over ``MAX_BODY_BYTES`` are refused (413) before they are read.

With ``"mode": "topk"`` the answer is the ``k`` best single items by the target's constrained beam search
(issue 12), best first, each with its ``score`` (the sum of its code tokens' log-probabilities); a
top-K request takes ``history``, ``exclude_history``, ``model`` and ``k``, and the list's own fields
(``num_items``, ``no_repeat``, ``temperature``, ``seed``) are refused with it::

    curl localhost:8000/v1/recommendations -H 'Content-Type: application/json' \\
        -d '{"history": ["4149", "812", "77"], "mode": "topk", "k": 20, "exclude_history": true}'

Answer: ``{"id", "model", "items": [{"rank", "item_id", "semantic_id", "title"}], "usage":
{"prompt_tokens", "completion_tokens"}, "speculation", "history_items_used", "warnings"}``; a top-K
answer adds ``"mode": "topk"`` and each item's ``score``, and its ``usage`` counts the prompt only. The catalog
is the one the engine's masks read (``list_settings.catalog_path``: ``padrec.catalog`` of
``--additional-config``, else ``padrec_catalog.json`` in the served model folder); how a request becomes
an engine request, and the policies on history length, ``exclude_history`` and ``speculation``, are in
``recommendation_service``.

This module is the HTTP side, kept apart from vLLM's handlers where they do not serve:

- The body is read here, not parsed by FastAPI (which reads any size): bodies over ``MAX_BODY_BYTES``
  get a 413, after the rest of the body (up to ``DRAIN_FACTOR`` times the cap) is read and dropped so
  that a client still sending gets the answer rather than a reset connection.
- Errors are vLLM's ``ErrorResponse`` (``{"error": {"message", "type", "param", "code"}}``), built here
  rather than by the app's exception handlers: those are not installed on every app the plugin can be
  attached to, replace server paths in messages (a 503 names the missing catalog file), and drop
  ``unknown_item_ids``; their validation message is pydantic's raw error list. Statuses: 400 body not
  JSON; 413 body too large; 422 unknown fields or bad values, unknown item ids (all of them named in
  ``unknown_item_ids``), empty or too long history, ``num_items`` above ``max_list_items`` or above what
  the catalog holds (with ``no_repeat``), history that cannot fit ``max_model_len``, ``exclude_history``
  with more distinct history items than ``max_exclude_items``, ``k`` without ``"mode": "topk"``,
  ``"mode": "topk"`` without ``k`` or with a list field, ``k`` above ``max_topk`` or above the catalog's
  items (outside the history, with ``exclude_history``); 404 unknown ``model``; 503 no catalog, or a
  top-K request the engine preempted twice before its answer. A top-K request on a server that holds no
  beam rows (``padrec.topk_max_beams`` = 0) gets the front end's own 400 (``list_settings.check_request``).
  The engine's own input errors (``ValueError``) give 400 (``create_error_response``); anything else the
  engine raises gives 500 with the request id and no detail (the detail, which can hold server paths,
  goes to the server log); the app keeps serving. (When the engine process itself dies, vLLM's
  watchdog still shuts the server down, vllm/entrypoints/launcher.py:156-177: that is vLLM's policy,
  untouched here.)
- Request ids are the server's own (``rec-<uuid>``; a client's ``X-Request-Id`` is kept inside it, for
  logs, never as the whole id): vLLM aborts by the id a client sent, so two clients with one header
  must never share an engine id. A client that disconnects cancels the generation through vLLM's
  ``with_cancellation`` (vllm/entrypoints/serve/utils/api_utils.py:52-94), and AsyncLLM aborts the
  cancelled ``generate``'s own request (by its internal id, vllm/v1/engine/async_llm.py:588-596).
"""

from __future__ import annotations

import json
import re
import uuid
from argparse import Namespace
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.recommendation_service import (
    Plan,
    RecommendationError,
    RecommendationRequest,
    RecommendationService,
)

PLUGIN_NAME = "padrec_recommendations"  # the entry-point name, to list in VLLM_PLUGINS
ROUTE = "/v1/recommendations"
STATE_KEY = "padrec_recommendations"  # app.state attribute holding the service (or why it is off)
MAX_BODY_BYTES = 4 * 1024 * 1024
DRAIN_FACTOR = 16  # bodies up to this many times the cap are read (and dropped) before the 413
CLIENT_CLOSED = 499  # the status logged for a request whose client disconnected (nobody reads it)
_CLIENT_ID = re.compile(r"[^A-Za-z0-9._:-]")  # characters of X-Request-Id kept in the server's id
_ERROR_TYPES = {  # as vLLM's create_error_response names them; other statuses: the HTTP phrase
    400: "BadRequestError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)


def error_response(error: RecommendationError) -> JSONResponse:
    """``error`` as vLLM's ``ErrorResponse``; its extra fields (``unknown_item_ids``) join the error record."""
    from http import HTTPStatus

    from vllm.entrypoints.openai.engine.protocol import ErrorInfo, ErrorResponse

    kind = _ERROR_TYPES.get(error.status) or HTTPStatus(error.status).phrase
    info = ErrorInfo(message=error.message, type=kind, param=error.param, code=error.status, **error.extra)
    return JSONResponse(ErrorResponse(error=info).model_dump(), status_code=error.status)


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


async def read_request(raw_request: Request) -> RecommendationRequest:
    """The validated body; raises RecommendationError (413, 400 or 422: module docstring)."""
    body = await read_body(raw_request, MAX_BODY_BYTES)
    if body is None:
        raise RecommendationError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise RecommendationError(400, f"the body is not JSON: {error}") from None
    try:
        return RecommendationRequest.model_validate(payload)
    except ValidationError as error:
        raise _invalid_request(error) from None


def _invalid_request(error: ValidationError) -> RecommendationError:
    """A 422 naming every field at fault (``param``: the first), each as its dotted path."""
    problems = [(".".join(str(part) for part in item.get("loc", ())), item.get("msg")) for item in error.errors()]
    message = "invalid request: " + "; ".join(f"{where or 'body'}: {msg}" for where, msg in problems)
    return RecommendationError(422, message, (problems[0][0] or None) if problems else None)


async def answer(service: RecommendationService, raw_request: Request, plan: Plan, request_id: str) -> JSONResponse:
    """Run ``plan`` in the engine and answer it; engine failures become JSON errors (module docstring).
    ``raw_request`` is the second argument, where vLLM's route wrappers look for it."""
    try:
        generation = await service.generate(plan, request_id)
    except RecommendationError as error:
        return error_response(error)
    except ValueError as error:  # the engine's own input checks (AsyncLLM.generate re-raises them)
        from vllm.entrypoints.serve.utils.error_response import create_error_response

        refused = create_error_response(f"the engine refused the request: {error}")  # 400, server paths hidden
        return JSONResponse(refused.model_dump(), status_code=refused.error.code)
    except Exception:  # an engine failure must not take the app down, nor show the server's insides
        _logger().exception("vllm-padrec: request %s failed in the engine", request_id)
        message = f"the engine failed on request {request_id}; the server log has the details"
        return error_response(RecommendationError(500, message))
    return JSONResponse(service.answer(plan, generation, request_id))


async def answer_until_disconnect(
    service: RecommendationService, raw_request: Request, plan: Plan, request_id: str
) -> JSONResponse | None:
    """``answer``, cancelled when the client disconnects first (then None), as vLLM's own routes are: its
    ``with_cancellation`` around its ``load_aware_call`` (the server-load count of
    ``--enable-server-load-tracking``, which the disconnect listener decrements). The body must have been
    read: the listener consumes the request's messages."""
    from vllm.entrypoints.serve.utils.api_utils import load_aware_call, with_cancellation

    return await with_cancellation(load_aware_call(answer))(service, raw_request, plan, request_id)


async def create_recommendations(raw_request: Request) -> JSONResponse:
    """``POST /v1/recommendations`` (module docstring)."""
    service = getattr(raw_request.app.state, STATE_KEY, None)
    if not isinstance(service, RecommendationService):
        reason = service if isinstance(service, str) else "the recommendations endpoint is not initialised"
        return error_response(RecommendationError(503, reason))
    try:
        plan = service.plan(await read_request(raw_request))
    except RecommendationError as error:
        return error_response(error)
    request_id = server_request_id(raw_request.headers.get("X-Request-Id"))
    response = await answer_until_disconnect(service, raw_request, plan, request_id)
    if response is None:  # a disconnect cancelled generate(), which aborts the engine request
        return error_response(RecommendationError(CLIENT_CLOSED, "client disconnected"))
    return response


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
        if (advice := service.prefill_graph_advice()) is not None:
            level, line = advice
            _logger().log(level, "vllm-padrec: %s", line)
