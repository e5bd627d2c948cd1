"""``POST /v1/recommendations`` (integration/endpoint.py) on CPU: FastAPI's TestClient and a fake engine.

The fake engine's ``generate`` is an async generator yielding one vLLM ``RequestOutput`` with chosen
token ids, and records what it was asked. The catalog folder is a tiny one in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from argparse import Namespace
from types import SimpleNamespace
from typing import get_args

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog, TokenLayout
from vllm_padrec.integration import endpoint as ep
from vllm_padrec.integration import spec_decode_counters
from vllm_padrec.integration.prefill_graphs import eager_prefill_warning, prefill_graph_mode_note
from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS
from vllm_padrec.lists import REQUEST_KEYS, ListLimits, ListSpec, parse_list

SEP, EOS = TokenLayout.SEP, TokenLayout.EOS
MODEL = "padrec-target"
MAX_LIST_ITEMS = 6


def make_catalog() -> ItemCatalog:
    # 8 items, L = 2 slots of 3 codes each
    codes = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [2, 2]])
    return ItemCatalog([f"i{n}" for n in range(8)], codes, (3, 3), [f"title {n}" for n in range(8)], name="tiny")


CATALOG = make_catalog()


def completion(*items: int, eos: bool = True) -> list[int]:
    return CATALOG.render_completion(items) if eos else CATALOG.render_items(items)


class FakeEngine:
    """``EngineClient.generate`` / ``abort`` as the route uses them. It answers ``token_ids``, except for a
    request with excluded items (``padrec_exclude_items``), which it answers as the engine's masks would
    let the list out: ``token_ids``'s items that are not excluded, then the catalog's other items in order,
    up to ``padrec_num_items`` items (distinct with ``padrec_no_repeat``)."""

    def __init__(self, token_ids=(), finish_reason="stop", error: Exception | None = None, block: bool = False):
        self.token_ids = list(token_ids)
        self.finish_reason = finish_reason
        self.error = error
        self.block = block
        self.calls: list[tuple] = []
        self.aborted: list[str] = []
        self.closed: list[str] = []

    async def generate(self, prompt, sampling_params, request_id, **kwargs):
        from vllm.outputs import CompletionOutput, RequestOutput

        self.calls.append((prompt, sampling_params, request_id))
        try:
            if self.error is not None:
                raise self.error
            if self.block:
                await asyncio.Event().wait()
            token_ids = self.masked(sampling_params.extra_args or {})
            output = CompletionOutput(0, "", token_ids, None, None, finish_reason=self.finish_reason)
            yield RequestOutput(request_id, None, list(prompt["prompt_token_ids"]), None, [output], finished=True)
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def masked(self, extra_args) -> list[int]:
        excluded = set(extra_args.get(REQUEST_KEYS["exclude_items"], ()))
        if not excluded:
            return list(self.token_ids)
        num_items, no_repeat = extra_args[REQUEST_KEYS["num_items"]], extra_args[REQUEST_KEYS["no_repeat"]]
        items: list[int] = []
        for item in parse_list(CATALOG, self.token_ids).items + list(range(len(CATALOG))):
            if item not in excluded and not (no_repeat and item in items) and len(items) < num_items:
                items.append(item)
        return CATALOG.render_completion(items)


def write_model_folder(path, max_history: int | None = None, catalog: bool = True):
    path.mkdir(parents=True, exist_ok=True)
    if catalog:
        CATALOG.save(path / CATALOG_FILE)
    if max_history is not None:
        (path / "padrec_recipe.json").write_text(json.dumps({"name": "tiny", "max_history": max_history}))
    return path


def make_app(
    folder,
    engine,
    *,
    max_model_len=64,
    max_list_items=MAX_LIST_ITEMS,
    speculative=False,
    graphs=None,
    graph_mode=None,
    **settings,
):
    """What vLLM's build_app / init_app_state do for an endpoint plugin, on a bare FastAPI app; ``graphs``: the
    engine's CUDA-graph capture sizes (None: a config that does not say); ``graph_mode``: its ``cudagraph_mode``'s
    name (None: unsaid); ``settings``: more of the server's ``padrec`` settings."""
    compilation = SimpleNamespace(cudagraph_capture_sizes=graphs)
    if graph_mode is not None:
        compilation.cudagraph_mode = SimpleNamespace(name=graph_mode)
    plugin = ep.RecommendationsPlugin()
    app = FastAPI()
    plugin.attach_router(app)
    app.state.vllm_config = SimpleNamespace(
        model_config=SimpleNamespace(model=str(folder), max_model_len=max_model_len),
        additional_config={"padrec": {"max_list_items": max_list_items, **settings}},
        speculative_config=SimpleNamespace(num_speculative_tokens=3) if speculative else None,
        **({} if graphs is None else {"compilation_config": compilation}),
    )
    args = Namespace(served_model_name=[MODEL], model=str(folder))
    asyncio.run(plugin.init_state(engine, app.state, args))
    return app


@pytest.fixture
def folder(tmp_path):
    return write_model_folder(tmp_path / "target")


def post(app, payload, **kwargs):
    with TestClient(app) as client:
        return client.post(ep.ROUTE, json=payload, **kwargs)


def test_happy_path(folder):
    engine = FakeEngine(completion(4, 0, 2))
    reply = post(make_app(folder, engine), {"history": ["i1", "i3"], "num_items": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == MODEL and body["id"].startswith("rec-")
    assert body["items"] == [
        {"rank": 1, "item_id": "i4", "semantic_id": "<a_1><b_1>", "title": "title 4"},
        {"rank": 2, "item_id": "i0", "semantic_id": "<a_0><b_0>", "title": "title 0"},
        {"rank": 3, "item_id": "i2", "semantic_id": "<a_0><b_2>", "title": "title 2"},
    ]
    prompt = CATALOG.render_prompt([1, 3])
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 9, "total_tokens": len(prompt) + 9}
    assert body["speculation"] is None  # no speculative decoding on this server
    assert body["history_items_used"] == 2 and body["warnings"] == []
    ((sent_prompt, params, request_id),) = engine.calls
    assert sent_prompt == {"prompt_token_ids": prompt} and request_id == body["id"]


def test_sampling_params_and_extra_args_reach_the_engine(folder):
    from vllm.sampling_params import RequestOutputKind

    from vllm_padrec.lists import settings_row
    from vllm_padrec.lists import spec as table  # the settings table's columns

    def engine_row(extra_args, prompt_token_ids):  # what the general plugin's engine side makes of them
        spec = ListSpec.from_extra_args(extra_args, ListSpec(), ListLimits(MAX_LIST_ITEMS, len(CATALOG)))
        return settings_row(spec, prompt_token_ids, MAX_LIST_ITEMS)

    engine = FakeEngine(completion(4, 4))
    payload = {"history": ["i1"], "num_items": 2, "no_repeat": False, "temperature": 0.7, "seed": 3}
    assert post(make_app(folder, engine), payload).status_code == 200
    prompt, params, _ = engine.calls[0]
    assert params.max_tokens == 2 * 3 + 1 and params.temperature == 0.7 and params.seed == 3
    assert params.stop_token_ids == [EOS] and params.output_kind == RequestOutputKind.FINAL_ONLY
    assert params.extra_args == {"padrec_constraint": True, "padrec_num_items": 2, "padrec_no_repeat": False}
    # the general plugin's engine side reads these keys into a constrained row
    row = engine_row(params.extra_args, prompt["prompt_token_ids"])
    assert row[table.ENABLED] == 1 and row[table.LIST_START] == len(prompt["prompt_token_ids"])
    assert (row[table.MAX_ITEMS], row[table.MIN_ITEMS], row[table.NO_REPEAT]) == (2, 2, 0)
    engine = FakeEngine(completion(0))
    assert post(make_app(folder, engine), {"history": ["i1"], "num_items": 1}).status_code == 200
    params = engine.calls[0][1]
    assert params.extra_args["padrec_no_repeat"] is True and params.temperature == 0.0 and params.seed is None
    assert engine_row(params.extra_args, engine.calls[0][0]["prompt_token_ids"])[table.NO_REPEAT] == 1


def error_of(reply, status):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == status and error["message"]
    return error


@pytest.mark.parametrize(
    "payload, param, words",
    [
        ({"history": []}, "history", ["history is empty"]),
        ({"history": ["i1"], "num_items": 0}, "num_items", ["num_items", "greater than or equal to 1"]),
        ({"history": ["i1"], "num_items": -3}, "num_items", ["num_items"]),
        ({"history": ["i1"], "num_items": MAX_LIST_ITEMS + 1}, "num_items", ["max_list_items=6", "num_items=7"]),
        ({"history": ["i1"], "temperature": -1}, "temperature", ["temperature"]),
        ({"history": ["i1"], "beam_width": 4}, "beam_width", ["beam_width", "not permitted"]),
        ({"history": "i1"}, "history", ["history", "list"]),
        ({}, "history", ["history", "required"]),
        ({"history": ["i1", None]}, "history.1", ["history.1"]),
    ],
)
def test_bad_requests_get_422_naming_the_problem(folder, payload, param, words):
    engine = FakeEngine(completion(0))
    error = error_of(post(make_app(folder, engine), payload), 422)
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    assert engine.calls == []  # nothing reached the engine


def test_unknown_item_ids_are_all_named(folder):
    error = error_of(post(make_app(folder, FakeEngine()), {"history": ["i1", "x9", "i2", "zz", "x9"]}), 422)
    assert "'x9'" in error["message"] and "'zz'" in error["message"] and "'i1'" not in error["message"]
    assert error["unknown_item_ids"] == ["x9", "zz"] and error["param"] == "history"


def test_numeric_item_ids_are_read_as_strings(tmp_path):
    catalog = ItemCatalog(["10", "11", "12"], np.array([[0, 0], [0, 1], [1, 0]]), (2, 2))
    folder = tmp_path / "numeric"
    folder.mkdir()
    catalog.save(folder / CATALOG_FILE)
    engine = FakeEngine(catalog.render_completion([2]))
    reply = post(make_app(folder, engine), {"history": [10, "11"], "num_items": 1})
    assert reply.status_code == 200, reply.text
    assert [i["item_id"] for i in reply.json()["items"]] == ["12"]


def test_no_repeat_cannot_ask_for_more_items_than_the_catalog(folder):
    app = make_app(folder, FakeEngine(), max_list_items=32)
    error = error_of(post(app, {"history": ["i1"], "num_items": 9}), 422)
    assert "8 items" in error["message"] and error["param"] == "num_items"
    error = error_of(post(app, {"history": ["i1", "i2"], "num_items": 7, "exclude_history": True}), 422)
    assert "6 items outside the history" in error["message"]
    engine = FakeEngine(completion(*[0] * 9))  # repeats allowed: 9 items of 8 is fine
    assert (
        post(
            make_app(folder, engine, max_list_items=32), {"history": ["i1"], "num_items": 9, "no_repeat": False}
        ).status_code
        == 200
    )


def test_body_not_json_and_unknown_model(folder):
    app = make_app(folder, FakeEngine())
    with TestClient(app) as client:
        reply = client.post(ep.ROUTE, content=b"{not json", headers={"Content-Type": "application/json"})
    assert "not JSON" in error_of(reply, 400)["message"]
    error = error_of(post(app, {"history": ["i1"], "model": "other"}), 404)
    assert "'other'" in error["message"] and MODEL in error["message"]


def test_prompt_that_cannot_fit_is_refused_naming_both_numbers(folder):
    # num_items=3: list 3 * (2 + 1) + 1 = 10 tokens; one history item: <s> + 2 codes + <rec> = 4 tokens
    error = error_of(post(make_app(folder, FakeEngine(), max_model_len=13), {"history": ["i1"], "num_items": 3}), 422)
    assert "max_model_len=13" in error["message"] and "14" in error["message"] and "10 tokens" in error["message"]
    engine = FakeEngine(completion(0, 2, 4))
    assert post(make_app(folder, engine, max_model_len=14), {"history": ["i1"], "num_items": 3}).status_code == 200


def test_long_history_keeps_the_most_recent_items_that_fit(tmp_path):
    folder = write_model_folder(tmp_path / "target", max_history=5)
    history = [f"i{n}" for n in (7, 6, 5, 4, 3, 2, 1)]
    # num_items=2: 7 list tokens; max_model_len 20 leaves 13 = <s> + 4 items of 3 tokens
    engine = FakeEngine(completion(0, 5))
    reply = post(make_app(folder, engine, max_model_len=20), {"history": history, "num_items": 2})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["history_items_used"] == 4
    prompt = engine.calls[0][0]["prompt_token_ids"]
    assert prompt == CATALOG.render_prompt([4, 3, 2, 1]) and len(prompt) + 2 * 3 + 1 <= 20
    assert len(body["warnings"]) == 2
    assert "last 5 of 7" in body["warnings"][0] and "trained on at most 5" in body["warnings"][0]
    assert "last 4 items" in body["warnings"][1] and "max_model_len=20" in body["warnings"][1]
    # the recipe's window alone
    engine = FakeEngine(completion(0, 5))
    body = post(make_app(folder, engine), {"history": history, "num_items": 2}).json()
    assert body["history_items_used"] == 5 and engine.calls[0][0]["prompt_token_ids"] == CATALOG.render_prompt(
        [5, 4, 3, 2, 1]
    )


def test_exclude_history_bans_the_history_in_the_engine(folder):
    engine = FakeEngine(completion(1, 4, 3, 0))
    reply = post(make_app(folder, engine), {"history": ["i1", "i3", "i1"], "num_items": 2, "exclude_history": True})
    assert reply.status_code == 200, reply.text
    assert [i["item_id"] for i in reply.json()["items"]] == ["i4", "i0"]
    params = engine.calls[0][1]  # exactly N items asked, the history's distinct items banned
    assert params.extra_args["padrec_num_items"] == 2 and params.max_tokens == 2 * 3 + 1
    assert params.extra_args[REQUEST_KEYS["exclude_items"]] == [1, 3]
    limits = ListLimits(MAX_LIST_ITEMS, len(CATALOG), max_exclude_items=2)  # what the engine side reads
    assert ListSpec.from_extra_args(params.extra_args, ListSpec(), limits).exclude_items == (1, 3)
    engine = FakeEngine(completion(1, 3, 4, 3))  # the model insists on history items
    body = post(
        make_app(folder, engine), {"history": ["i1", "i3"], "num_items": 3, "exclude_history": True, "no_repeat": False}
    ).json()
    items = [i["item_id"] for i in body["items"]]
    assert len(items) == 3 and not {"i1", "i3"} & set(items) and body["warnings"] == []
    # without exclude_history nothing is banned
    engine = FakeEngine(completion(1, 3))
    body = post(make_app(folder, engine), {"history": ["i1", "i3"], "num_items": 2}).json()
    assert [i["item_id"] for i in body["items"]] == ["i1", "i3"]
    assert REQUEST_KEYS["exclude_items"] not in engine.calls[0][1].extra_args


def test_exclude_history_beyond_the_servers_limit_is_refused(folder):
    app = make_app(folder, FakeEngine(completion(0, 4)), max_exclude_items=2)
    payload = {"history": ["i1", "i2", "i3", "i1"], "num_items": 2, "exclude_history": True}
    error = error_of(post(app, payload), 422)
    assert error["param"] == "exclude_history"
    assert "3 distinct items" in error["message"] and "max_exclude_items=2" in error["message"]
    assert post(app, {**payload, "history": ["i1", "i2", "i1"]}).status_code == 200  # 2 distinct items
    assert post(app, {**payload, "exclude_history": False}).status_code == 200


def test_invalid_and_cut_generations_are_reported(folder):
    # item <a_1><b_2> is no catalog item; a malformed item (two slot-a codes); then one valid item
    a1, b2 = CATALOG.layout.token_id(0, 1), CATALOG.layout.token_id(1, 2)
    tokens = [a1, b2, SEP, a1, a1, SEP] + CATALOG.item_token_ids(5) + [EOS]
    body = post(make_app(folder, FakeEngine(tokens)), {"history": ["i1"], "num_items": 3}).json()
    assert [i["item_id"] for i in body["items"]] == ["i5"]
    assert any("2 generated items are not catalog items" in w for w in body["warnings"])
    # cut by max_tokens: the trailing partial item is dropped silently
    tokens = completion(2, 6, eos=False) + [SEP, a1]
    app = make_app(folder, FakeEngine(tokens, finish_reason="length"))
    body = post(app, {"history": ["i1"], "num_items": 3}).json()
    assert [i["item_id"] for i in body["items"]] == ["i2", "i6"]
    assert body["warnings"] == ["the engine returned 2 of 3 items (finish_reason=length)"]


def test_engine_errors_give_json_and_the_app_keeps_serving(folder):
    engine = FakeEngine(completion(0, 2), error=RuntimeError("CUDA fell over"))
    app = make_app(folder, engine)
    with TestClient(app) as client:
        reply = client.post(ep.ROUTE, json={"history": ["i1"], "num_items": 2})
        message = error_of(reply, 500)["message"]  # the request id, never the engine's own text (paths)
        assert "CUDA fell over" not in message and "server log" in message and reply.json()["error"]["type"]
        assert engine.calls[-1][2] in message
        engine.error = ValueError("The decoder prompt (length 999) is longer than the maximum model length")
        reply = client.post(ep.ROUTE, json={"history": ["i1"], "num_items": 2})
        assert "longer than the maximum" in error_of(reply, 400)["message"]
        engine.error = None
        reply = client.post(ep.ROUTE, json={"history": ["i1"], "num_items": 2})
        assert reply.status_code == 200 and [i["item_id"] for i in reply.json()["items"]] == ["i0", "i2"]
    empty = FakeEngine()

    async def no_output(*args, **kwargs):
        return
        yield

    empty.generate = no_output
    assert "no output" in error_of(post(make_app(folder, empty), {"history": ["i1"], "num_items": 1}), 500)["message"]


def test_missing_catalog_answers_503_and_the_server_starts(tmp_path):
    folder = write_model_folder(tmp_path / "plain", catalog=False)
    app = make_app(folder, FakeEngine())

    @app.get("/health")
    def health():
        return {}

    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        error = error_of(client.post(ep.ROUTE, json={"history": ["i1"]}), 503)
    assert CATALOG_FILE in error["message"] and str(folder) in error["message"]


SMALL_GRAPHS, PROMPT_GRAPHS = [1, 2], [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    ("graphs", "mode", "warned", "noted"),
    [
        (SMALL_GRAPHS, "FULL_AND_PIECEWISE", True, False),  # eager prefills: the warning alone
        (PROMPT_GRAPHS, "FULL_AND_PIECEWISE", False, True),  # vLLM's default mode: replayed piecewise, a note
        (PROMPT_GRAPHS, "PIECEWISE", False, True),
        (PROMPT_GRAPHS, "FULL_DECODE_ONLY", False, True),  # prefills eager whatever the sizes
        (PROMPT_GRAPHS, "FULL", False, False),  # replayed whole: nothing to say
        (PROMPT_GRAPHS, None, False, False),  # a config that names no mode
        (None, None, False, False),
    ],
)
def test_the_server_says_at_start_how_its_prompts_prefill(tmp_path, monkeypatch, graphs, mode, warned, noted):
    """A target trained on 4 history items writes prompts of 1 + 4 x (codes + 1) tokens. An engine whose graphs are
    smaller (one request a server) prefills them eagerly, and a warning says how to fix it, once; one whose graphs
    hold them but does not replay a prefill whole gets a note naming cudagraph_mode FULL, once."""
    folder = write_model_folder(tmp_path / "target", max_history=4)
    longest = 1 + 4 * (CATALOG.num_slots + 1)
    warnings, infos = [], []

    def log(level, text, *args):
        {logging.WARNING: warnings, logging.INFO: infos}[level].append(text % args)

    logger = SimpleNamespace(
        log=log,
        info=lambda text, *args: log(logging.INFO, text, *args),
        warning=lambda text, *args: log(logging.WARNING, text, *args),
    )
    monkeypatch.setattr(ep, "_logger", lambda: logger)
    app = make_app(folder, FakeEngine(completion(3)), graphs=graphs, graph_mode=mode)
    assert 2 < longest <= 16  # the small graphs are smaller than the prompts, the prompt graphs hold them
    config = app.state.vllm_config
    assert [line for line in warnings if "prefill eagerly" in line] == (
        [f"vllm-padrec: {eager_prefill_warning(longest, config)}"] if warned else []
    )
    assert [line for line in infos if "cudagraph_mode" in line] == (
        [f"vllm-padrec: {prefill_graph_mode_note(longest, config)}"] if noted else []
    )
    assert post(app, {"history": ["i1"], "num_items": 1}).status_code == 200  # the route serves either way


def test_catalog_from_additional_config(tmp_path):
    catalog_dir = write_model_folder(tmp_path / "elsewhere")
    target = write_model_folder(tmp_path / "target", catalog=False)
    app = make_app(target, FakeEngine(completion(3)))
    app.state.vllm_config.additional_config["padrec"]["catalog"] = str(catalog_dir / CATALOG_FILE)
    asyncio.run(ep.RecommendationsPlugin().init_state(FakeEngine(completion(3)), app.state, Namespace()))
    body = post(app, {"history": ["i1"], "num_items": 1}).json()
    assert [i["item_id"] for i in body["items"]] == ["i3"] and body["model"] == str(target)


def spec_registry(drafts, draft_tokens, accepted, per_pos):
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    counters = [Counter(name, name, ["model_name", "engine"], registry=registry) for name in SPEC_COUNTERS]
    pos = Counter(SPEC_PER_POS, "per pos", ["model_name", "engine", "position"], registry=registry)
    for engine in ("0", "1"):  # two engines: the counters are summed
        for counter, value in zip(counters, (drafts, draft_tokens, accepted)):
            counter.labels(MODEL, engine).inc(value)
        for position, value in enumerate(per_pos):
            pos.labels(MODEL, engine, str(position)).inc(value)
    return registry


def test_speculation_reports_server_counters(folder):
    app = make_app(folder, FakeEngine(completion(0, 2)), speculative=True)
    service = app.state.padrec_recommendations
    service.speculation = spec_decode_counters.SpeculationReport(spec_registry(10, 30, 18, [8, 6, 4]))
    spec = post(app, {"history": ["i1"], "num_items": 2}).json()["speculation"]
    assert spec["scope"] == "server" and spec["per_request"] is None
    assert (spec["num_drafts"], spec["num_draft_tokens"], spec["num_accepted_tokens"]) == (20, 60, 36)
    assert spec["accepted_per_position"] == [16, 12, 8]
    assert spec["mean_acceptance_length"] == pytest.approx(1 + 36 / 20)
    assert spec["draft_acceptance_rate"] == pytest.approx(36 / 60)
    # stats logging off: no counters registered
    from prometheus_client import CollectorRegistry

    service.speculation = spec_decode_counters.SpeculationReport(CollectorRegistry())
    spec = post(app, {"history": ["i1"], "num_items": 2}).json()["speculation"]
    assert spec["scope"] == "server" and spec["num_drafts"] is None and "disable-log-stats" in spec["note"]


class DisconnectedRequest:
    """A Starlette Request whose client has gone; ``app`` is what vLLM's disconnect listener reads (its
    load-tracking flag)."""

    def __init__(self, app=None) -> None:
        self.app = app or SimpleNamespace(state=SimpleNamespace())

    async def receive(self):
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}


def answer_after_disconnect(service, plan, app=None):
    """``answer_until_disconnect`` for a client that hangs up; the cancelled task finishes its clean-up on
    the next loop turns before this returns."""

    async def answer_and_settle():
        result = await ep.answer_until_disconnect(service, DisconnectedRequest(app), plan, "rec-gone")
        await asyncio.sleep(0.01)
        return result

    return asyncio.run(answer_and_settle())


def test_client_disconnect_cancels_its_own_request_only(folder):
    app = make_app(folder, FakeEngine(block=True))
    service = app.state.padrec_recommendations
    plan = service.plan(ep.RecommendationRequest(history=["i1"], num_items=2))

    result = answer_after_disconnect(service, plan)
    assert result is None
    # the engine's generator is closed (AsyncLLM then aborts that request by its internal id); the route
    # aborts nothing by the client-visible id, which another request may share
    assert service.engine_client.closed == ["rec-gone"] and service.engine_client.aborted == []


def test_server_load_count_stays_balanced(folder):
    """With --enable-server-load-tracking, vLLM's count rises per request and falls on its answer or its
    disconnect (vLLM's disconnect listener decrements it), as for vLLM's own routes."""
    app = make_app(folder, FakeEngine(completion(0, 2)))
    app.state.enable_server_load_tracking = True
    app.state.server_load_metrics = 0
    assert post(app, {"history": ["i1"], "num_items": 2}).status_code == 200
    assert app.state.server_load_metrics == 0
    blocked = make_app(folder, FakeEngine(block=True))
    blocked.state.enable_server_load_tracking = True
    blocked.state.server_load_metrics = 0
    service = blocked.state.padrec_recommendations
    plan = service.plan(ep.RecommendationRequest(history=["i1"], num_items=2))

    assert answer_after_disconnect(service, plan, app=blocked) is None
    assert blocked.state.server_load_metrics == 0


def test_plugin_satisfies_vllms_endpoint_plugin_interface():
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin
    from vllm.tasks import GenerationTask

    plugin = ep.RecommendationsPlugin()
    assert isinstance(plugin, EndpointPlugin)
    assert plugin.name == ep.PLUGIN_NAME == "padrec_recommendations"
    assert set(plugin.required_tasks) <= set(get_args(GenerationTask))
    assert inspect.iscoroutinefunction(plugin.init_state)
    assert list(inspect.signature(plugin.init_state).parameters) == ["engine_client", "state", "args"]
    app = FastAPI()
    plugin.attach_router(app)
    assert ep.ROUTE in {route.path for route in app.routes}
    schema = app.openapi()["paths"][ep.ROUTE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False and "history" in schema["required"]


def test_vllm_loader_finds_the_plugin_through_the_entry_point(monkeypatch):
    from importlib.metadata import entry_points

    from vllm.plugins import ENDPOINT_PLUGINS_GROUP, load_endpoint_plugins

    (entry,) = [e for e in entry_points(group=ENDPOINT_PLUGINS_GROUP) if e.name == ep.PLUGIN_NAME]
    assert entry.value == "vllm_padrec.integration.endpoint:RecommendationsPlugin"
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert load_endpoint_plugins(("generate",)) == []  # endpoint plugins are opt-in
    monkeypatch.setenv("VLLM_PLUGINS", "padrec,padrec_recommendations")
    plugins = [p for p in load_endpoint_plugins(("generate",)) if p.name == ep.PLUGIN_NAME]
    assert len(plugins) == 1 and isinstance(plugins[0], ep.RecommendationsPlugin)
    assert not [p for p in load_endpoint_plugins(("embed",)) if p.name == ep.PLUGIN_NAME]  # no generate task
    monkeypatch.setenv("VLLM_PLUGINS", "padrec")
    assert not [p for p in load_endpoint_plugins(("generate",)) if p.name == ep.PLUGIN_NAME]


def test_vllm_api_server_wiring(folder, monkeypatch):
    """vLLM's own build_app / init_app_state steps attach the route and initialise the state."""
    from vllm.entrypoints.openai import api_server

    monkeypatch.setenv("VLLM_PLUGINS", "padrec,padrec_recommendations")
    app = FastAPI()
    api_server._attach_endpoint_plugins(app, ("generate",))
    assert ep.ROUTE in {route.path for route in app.routes}
    engine = FakeEngine(completion(6))
    app.state.vllm_config = SimpleNamespace(
        model_config=SimpleNamespace(model=str(folder), max_model_len=64),
        additional_config=None,
        speculative_config=None,
    )
    asyncio.run(api_server._init_endpoint_plugins_state(engine, app.state, Namespace(served_model_name=None)))
    body = post(app, {"history": ["i1"], "num_items": 1}).json()
    assert [i["item_id"] for i in body["items"]] == ["i6"] and body["model"] == str(folder)


# -- "mode": "topk" (issue 12): the K best single items, through add_request and a PoolingRequestOutput --------
def topk_answer(items, scores):
    """What the engine's runner hands back for a top-K request (topk/result.py): the items' code tokens, their
    per-token log-probs (here the score split evenly) and their scores, best first."""
    from vllm_padrec.topk.result import encode_items
    from vllm_padrec.topk.select import TopKItems

    tokens = torch.tensor([CATALOG.item_token_ids(i) for i in items])  # [n, L]
    scores_t = torch.tensor(scores, dtype=torch.float32)  # [n]
    return encode_items(TopKItems(tokens, scores_t, scores_t[:, None].expand(-1, CATALOG.num_slots) / 2))


class FakeTopKEngine:
    """``AsyncLLM.add_request`` / ``abort`` as the top-K route uses them: ``add_request`` returns vLLM's own
    ``RequestOutputCollector`` under an internal id (as AsyncLLM assigns one), holding a finished
    ``PoolingRequestOutput`` of ``answer`` (nothing with ``block``; ``error`` put instead; ``output`` as is)."""

    def __init__(self, answer=None, *, block=False, error: Exception | None = None, output=None, outputs=()):
        self.answer, self.block, self.error, self.output = answer, block, error, output
        self.outputs = list(outputs)  # the first calls' outputs, one per call (then ``output`` / ``answer``)
        self.calls: list[tuple] = []
        self.aborted: list[tuple[str, bool]] = []

    async def add_request(self, request_id, prompt, params, **kwargs):
        from vllm.outputs import PoolingOutput, PoolingRequestOutput
        from vllm.v1.engine.output_processor import RequestOutputCollector

        self.calls.append((prompt, params, request_id))
        collector = RequestOutputCollector(params.output_kind, f"{request_id}-internal")
        prompt_ids = list(prompt["prompt_token_ids"])
        if self.outputs:
            collector.put(self.outputs.pop(0))
        elif self.error is not None:
            collector.put(self.error)
        elif self.output is not None:
            collector.put(self.output)
        elif not self.block:
            collector.put(PoolingRequestOutput(collector.request_id, PoolingOutput(self.answer), prompt_ids, 0, True))
        return collector

    async def generate(self, *args, **kwargs):
        raise AssertionError("a top-K request must not go through generate (it asserts RequestOutput)")
        yield

    async def abort(self, request_id, internal=False):
        self.aborted.append((request_id, internal))


def topk_app(folder, engine, **settings):
    """A server that serves top-K: it holds beam rows (``padrec.topk_max_beams``) for at least ``max_topk``."""
    return make_app(folder, engine, topk_max_beams=TOPK_BEAMS, **settings)


TOPK_BEAMS = 256  # the default max_topk's


def test_topk_on_a_server_without_beam_rows_gets_the_front_ends_400_naming_the_setting(folder):
    from vllm_padrec.integration import list_settings
    from vllm_padrec.lists import ListSpecError

    engine = FakeTopKEngine(topk_answer([4], [-1.0]))
    app = make_app(folder, engine)  # padrec.topk_max_beams left at 0
    error = error_of(post(app, {"history": ["i1"], "mode": "topk", "k": 3}), 400)
    with pytest.raises(ListSpecError) as front_end:  # what vLLM's front end answers padrec_topk=3 with
        list_settings.check_request(app.state.vllm_config, {"padrec_constraint": True, "padrec_topk": 3})
    assert error["message"] == str(front_end.value) and "padrec.topk_max_beams is 0" in error["message"]
    assert error["param"] == "mode" and engine.calls == []


def test_topk_answers_the_engines_items_best_first_with_scores(folder):
    from vllm.sampling_params import RequestOutputKind

    engine = FakeTopKEngine(topk_answer([4, 0, 2], [-0.5, -1.25, -3.0625]))
    reply = post(topk_app(folder, engine), {"history": ["i1", "i3"], "mode": "topk", "k": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["mode"] == "topk" and body["model"] == MODEL and body["id"].startswith("rec-")
    assert body["items"] == [
        {"rank": 1, "item_id": "i4", "semantic_id": "<a_1><b_1>", "title": "title 4", "score": -0.5},
        {"rank": 2, "item_id": "i0", "semantic_id": "<a_0><b_0>", "title": "title 0", "score": -1.25},
        {"rank": 3, "item_id": "i2", "semantic_id": "<a_0><b_2>", "title": "title 2", "score": -3.0625},
    ]
    prompt = CATALOG.render_prompt([1, 3])
    assert body["usage"] == {"prompt_tokens": len(prompt), "total_tokens": len(prompt)} and body["warnings"] == []
    ((sent_prompt, params, request_id),) = engine.calls
    assert sent_prompt == {"prompt_token_ids": prompt} and request_id == body["id"]
    assert params.extra_args == {
        "padrec_constraint": True,
        "padrec_num_items": 1,
        "padrec_no_repeat": False,
        "padrec_topk": 3,
    }
    assert params.max_tokens == CATALOG.num_slots and params.temperature == 0.0 and params.seed is None
    assert params.output_kind == RequestOutputKind.FINAL_ONLY and params.detokenize is False
    assert params.stop_token_ids == [EOS]
    limits = ListLimits(MAX_LIST_ITEMS, len(CATALOG))  # what the engine side reads: a top-K request of K=3
    assert ListSpec.from_extra_args(params.extra_args, ListSpec(), limits).topk == 3


def test_topk_exclude_history_and_dead_beams(folder):
    engine = FakeTopKEngine(topk_answer([5, 7, 6], [-0.75, -2.0, float("-inf")]))  # one dead beam
    payload = {"history": ["i1", "i3", "i1"], "mode": "topk", "k": 3, "exclude_history": True}
    body = post(topk_app(folder, engine), payload).json()
    assert [(i["item_id"], i["score"]) for i in body["items"]] == [("i5", -0.75), ("i7", -2.0)]
    assert body["warnings"] == ["the engine returned 2 of 3 items"]
    params = engine.calls[0][1]
    assert params.extra_args[REQUEST_KEYS["exclude_items"]] == [1, 3] and params.extra_args["padrec_topk"] == 3


@pytest.mark.parametrize(
    "payload, param, words",
    [
        ({"history": ["i1"], "k": 3}, "k", ['"mode": "topk" only']),
        ({"history": ["i1"], "mode": "list", "k": 3}, "k", ['"mode": "topk" only']),
        ({"history": ["i1"], "mode": "topk"}, "k", ["k is required"]),
        ({"history": ["i1"], "mode": "topk", "k": 0}, "k", ["greater than or equal to 1"]),
        ({"history": ["i1"], "mode": "topk", "k": 5}, "k", ["k=5", "max_topk=4"]),
        ({"history": ["i1"], "mode": "topk", "k": 3, "num_items": 3}, "num_items", ['"mode": "list" only']),
        ({"history": ["i1"], "mode": "topk", "k": 3, "temperature": 0.5}, "temperature", ['"mode": "list" only']),
        ({"history": ["i1"], "mode": "beam", "k": 3}, "mode", ["'list' or 'topk'"]),
        ({"history": ["i1"], "verification": "strict"}, "verification", ['"mode": "topk" only']),
        (
            {"history": ["i1"], "mode": "topk", "k": 3, "verification": "fast"},
            "verification",
            ["'strict' or 'relaxed'"],
        ),
    ],
)
def test_topk_bad_requests_get_422_naming_the_field(folder, payload, param, words):
    engine = FakeTopKEngine(topk_answer([0], [-1.0]))
    error = error_of(post(topk_app(folder, engine, max_topk=4), payload), 422)
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    assert engine.calls == []


@pytest.mark.parametrize("rule", ["strict", "relaxed"])
def test_topk_verification_on_a_server_that_drafts_no_top_k_is_a_400_naming_it(folder, rule):
    """A server that does not draft its top-K beams (no padrec.topk_draft_beams) refuses the rule by the front
    end's own check, before the engine, with the message vLLM's front end gives padrec_topk_verification."""
    engine = FakeTopKEngine(topk_answer([0], [-1.0]))
    error = error_of(post(topk_app(folder, engine), {**TOPK_BODY, "verification": rule}), 400)
    assert error["param"] == "verification" and "does not draft top-K beams" in error["message"]
    assert engine.calls == []


def test_topk_larger_than_the_catalog_after_exclusions_is_refused(folder):
    engine = FakeTopKEngine(topk_answer([0], [-1.0]))
    app = topk_app(folder, engine, max_topk=16)
    error = error_of(post(app, {"history": ["i1"], "mode": "topk", "k": 9}), 422)
    assert error["param"] == "k" and "k=9" in error["message"] and "8 items" in error["message"]
    payload = {"history": ["i1", "i2"], "mode": "topk", "k": 7, "exclude_history": True}
    error = error_of(post(app, payload), 422)
    assert error["param"] == "k" and "6 items outside the history" in error["message"]
    assert engine.calls == []
    assert post(app, {**payload, "k": 6}).status_code == 200  # 6 items are left: K = 6 is served


def test_topk_engine_failures_abort_the_request_by_its_internal_id(folder):
    engine = FakeTopKEngine(error=RuntimeError("CUDA fell over"))
    message = error_of(post(topk_app(folder, engine), {"history": ["i1"], "mode": "topk", "k": 2}), 500)["message"]
    assert "CUDA fell over" not in message and engine.calls[0][2] in message
    assert engine.aborted == [(f"{engine.calls[0][2]}-internal", True)]
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    garbled = PoolingRequestOutput("rec-x-internal", PoolingOutput(torch.zeros(2, 3)), [1], 0, True)  # not [n, 2L+1]
    message = error_of(post(topk_app(folder, FakeTopKEngine(output=garbled)), TOPK_BODY), 500)["message"]
    assert "no top-K answer" in message


TOPK_BODY = {"history": ["i1"], "mode": "topk", "k": 2}


def preempted_output():
    """What a top-K request that vLLM preempted comes back as: a plain, finished RequestOutput ending in </s>."""
    from vllm.outputs import CompletionOutput, RequestOutput

    tokens = CompletionOutput(0, "", [TokenLayout.EOS], None, None, finish_reason="stop")
    return RequestOutput("rec-x-internal", None, [1], None, [tokens], finished=True)


def test_a_preempted_topk_request_is_sent_again_once(folder):
    engine = FakeTopKEngine(topk_answer([4, 0], [-0.5, -1.25]), outputs=[preempted_output()])
    reply = post(topk_app(folder, engine), TOPK_BODY)
    assert reply.status_code == 200, reply.text
    assert [item["item_id"] for item in reply.json()["items"]] == ["i4", "i0"]
    assert len(engine.calls) == 2 and engine.calls[0][1:] == engine.calls[1][1:]  # the same request again
    twice = FakeTopKEngine(outputs=[preempted_output(), preempted_output()])
    message = error_of(post(topk_app(folder, twice), TOPK_BODY), 503)["message"]
    assert "preempted it 2 times" in message and len(twice.calls) == 2


def test_topk_client_disconnect_aborts_its_own_request(folder):
    app = topk_app(folder, FakeTopKEngine(block=True))
    service = app.state.padrec_recommendations
    plan = service.plan(ep.RecommendationRequest(history=["i1"], mode="topk", k=2))

    assert answer_after_disconnect(service, plan) is None
    assert service.engine_client.aborted == [("rec-gone-internal", True)]  # the engine's id, not the client's
