"""No request reaches the engine with a value it cannot serve, and no plugin failure escapes the engine step.

Requests take the paths they take in ``vllm serve``, through the plugin's real hooks:

- ``/v1/completions``: the raw JSON body is parsed as vLLM's server parses it (``json.loads``, which
  reads ``NaN``, ``Infinity`` and ``1e309``; vLLM's own ``CompletionRequest``), turned into vLLM's
  ``SamplingParams``, and checked by the front-end hook (``patches/process_inputs.py``, installed in
  vLLM's ``InputProcessor``); vLLM's own ``create_error_response`` gives the status;
- ``/v1/recommendations``: the route itself (FastAPI's TestClient), whose engine client passes each
  request through the same front-end check;
- whatever passes is served by the engine-side hooks (``RequestLists``, eager masks, on the CPU) in
  ``vllm_fakes.EngineLoop``, which must return a valid list of catalog items.
"""

from __future__ import annotations

import asyncio
import json
import logging
from argparse import Namespace
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm_fakes import EngineLoop, request_lists

import vllm_padrec
from vllm_padrec.catalog import CATALOG_FILE, TokenLayout
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.integration import endpoint as ep
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.integration.patches.process_inputs import check_params
from vllm_padrec.testing.hostile import COMPLETIONS, HOSTILE_REQUESTS, RECOMMENDATIONS

CATALOG = generate_synthetic(SyntheticConfig(num_items=40, num_users=4, codebook_sizes=(4, 4, 5))).catalog
MAX_LIST_ITEMS = 12
MODEL = "target"


def server(folder, **padrec) -> SimpleNamespace:
    """The parts of vLLM's VllmConfig the plugin reads."""
    return SimpleNamespace(
        model_config=SimpleNamespace(model=str(folder), max_model_len=256),
        additional_config={"padrec": {"max_list_items": MAX_LIST_ITEMS, **padrec}},
        speculative_config=None,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("target")
    CATALOG.save(path / CATALOG_FILE)
    return path


@pytest.fixture(autouse=True, scope="module")
def plugin():
    vllm_padrec.register()  # the front-end patches, as vLLM's plugin loader applies them


@pytest.fixture
def loop(monkeypatch):
    lists = request_lists(monkeypatch, CATALOG, ListSettings(max_list_items=MAX_LIST_ITEMS))
    return EngineLoop(lists)


def prompt_ids() -> list[int]:
    return CATALOG.render_prompt([0, 5, 9])


def prompt_text() -> str:
    return "".join(CATALOG.layout.token_strings()[t] for t in prompt_ids())


def completions(config, raw_body: str, loop: EngineLoop):
    """(status, output tokens) of ``POST /v1/completions`` as vLLM serves it, through the plugin's hooks."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.utils.error_response import create_error_response

    try:
        body = json.loads(raw_body)  # as Starlette's Request.json()
        request = CompletionRequest.model_validate(body)
    except (ValueError, ValidationError):
        return 400, None  # vLLM's RequestValidationError handler
    try:
        if request.use_beam_search:  # vLLM's serving_completion converts such requests this way
            request.to_beam_search_params(request.max_tokens or 16, {})
            return 200, None
        params = request.to_sampling_params(max_tokens=request.max_tokens or 16, default_sampling_params={})
        check_params(config, params)
    except Exception as error:  # what vLLM's handlers make of it
        return create_error_response(error).error.code, str(error)
    return 200, loop.run(0, "cmpl-1", prompt_ids(), params, max_tokens=params.max_tokens)


def assert_valid_list(tokens, num_items=None, no_repeat=False):
    """A well-formed list of catalog items, ended by </s>."""
    assert tokens and tokens[-1] == TokenLayout.EOS, tokens
    items = CATALOG.parse_completion(tokens, strict=True)
    assert num_items is None or len(items) == num_items, (items, num_items)
    assert not no_repeat or len(set(items)) == len(items)
    return items


def test_register_installs_the_front_end_check_once():
    from vllm.v1.engine.input_processor import InputProcessor

    vllm_padrec.register()
    patched = InputProcessor.process_inputs
    assert patched._padrec_patch and not getattr(patched.__wrapped__, "_padrec_patch", False)


def test_the_check_runs_inside_vllms_process_inputs_before_anything_else(folder):
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    vllm_padrec.register()
    processor = SimpleNamespace(vllm_config=server(folder))  # vLLM's own code would fail on this stand-in
    bad = SamplingParams(max_tokens=8, extra_args={"padrec_constraint": 1, "padrec_num_items": float("inf")})
    with pytest.raises(VLLMValidationError) as error:
        InputProcessor.process_inputs(processor, "r1", {"prompt_token_ids": prompt_ids()}, bad, ("generate",))
    assert error.value.parameter == "vllm_xargs.padrec_num_items" and "1..12" in str(error.value)
    good = SamplingParams(max_tokens=8, extra_args={"padrec_constraint": 1, "padrec_num_items": 2})
    with pytest.raises(AttributeError):  # passed the check: vLLM's own processing ran (on the stand-in)
        InputProcessor.process_inputs(processor, "r2", {"prompt_token_ids": prompt_ids()}, good, ("generate",))


@pytest.mark.parametrize("case", [c for c in HOSTILE_REQUESTS if c.path == COMPLETIONS], ids=lambda c: c.name)
def test_hostile_completions_get_400_and_never_reach_the_engine(folder, loop, case):
    calls = []
    loop.lists.add_request = lambda *args: calls.append(args)
    status, message = completions(server(folder), case.render(MODEL, prompt_text(), []), loop)
    assert status in case.statuses, (status, message)
    assert case.says in (message or ""), (case.says, message)
    assert calls == []


def test_good_completions_after_hostile_ones_get_their_lists(folder, loop):
    config = server(folder)
    body = {
        "model": MODEL,
        "prompt": prompt_text(),
        "max_tokens": 40,
        "temperature": 0,
        "vllm_xargs": {"padrec_constraint": 1, "padrec_num_items": 4, "padrec_no_repeat": 1},
    }
    for case in HOSTILE_REQUESTS:
        if case.path == COMPLETIONS:
            completions(config, case.render(MODEL, prompt_text(), []), loop)
    status, tokens = completions(config, json.dumps(body), loop)
    assert status == 200
    assert_valid_list(tokens, num_items=4, no_repeat=True)


def test_constraint_on_a_server_without_catalog_is_refused(tmp_path, loop):
    body = {"model": MODEL, "prompt": "x", "vllm_xargs": {"padrec_constraint": 1}}
    status, message = completions(server(tmp_path), json.dumps(body), loop)
    assert status == 400 and "no item catalog" in message and str(tmp_path / CATALOG_FILE) in message
    body["vllm_xargs"] = {"padrec_constraint": 0}
    assert completions(server(tmp_path), json.dumps(body), loop)[0] == 200  # not the plugin's: served as asked


def test_constraint_on_a_model_runner_v1_server_is_refused(folder, loop):
    """vLLM runs Medusa and n-gram drafts on Model Runner V1, where the plugin installs no masks."""
    config = server(folder)
    config.use_v2_model_runner = False
    config.speculative_config = SimpleNamespace(method="medusa")
    body = {"model": MODEL, "prompt": "x", "vllm_xargs": {"padrec_constraint": 1}}
    status, message = completions(config, json.dumps(body), loop)
    assert status == 400 and "Model Runner V1" in message and "'medusa'" in message


# -- top-K: parsed in full, then refused until the engine serves it ------------------------------------
TOPK = {"padrec_constraint": 1, "padrec_topk": 10}


def test_a_well_formed_topk_request_on_a_server_without_beam_rows_is_refused_before_the_engine(folder, loop):
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    calls = []
    loop.lists.add_request = lambda *args: calls.append(args)
    body = {"model": MODEL, "prompt": prompt_text(), "max_tokens": 8, "vllm_xargs": TOPK}
    status, message = completions(server(folder), json.dumps(body), loop)
    assert status == 400 and "this server does not serve top-K requests (padrec.topk_max_beams is 0)" in message
    assert calls == []
    processor = SimpleNamespace(vllm_config=server(folder))
    params = SamplingParams(max_tokens=8, extra_args=TOPK)
    with pytest.raises(VLLMValidationError, match=r"padrec\.topk_max_beams is 0") as error:
        InputProcessor.process_inputs(processor, "r1", {"prompt_token_ids": prompt_ids()}, params, ("generate",))
    assert error.value.parameter == "vllm_xargs.padrec_topk"


def test_a_server_with_beam_rows_passes_the_topk_request_as_the_spec_it_asked_for(folder):
    """On a server that holds beam rows the same request passes the front end; bad values keep their own
    messages on both kinds of server."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    from vllm_padrec.integration.list_settings import check_request
    from vllm_padrec.lists import ListSpec

    serving = server(folder, topk_max_beams=256)
    assert check_request(serving, TOPK) == ListSpec(True, 1, topk=10)
    check_params(serving, SamplingParams(max_tokens=8, extra_args=TOPK))
    for config in (serving, server(folder)):
        with pytest.raises(VLLMValidationError, match="must be an integer in 1..256"):
            check_params(config, SamplingParams(max_tokens=8, extra_args={**TOPK, "padrec_topk": 257}))


def test_topk_against_the_servers_max_topk_and_catalog(folder, loop):
    def message(config, xargs):
        body = {"model": MODEL, "prompt": prompt_text(), "max_tokens": 8, "vllm_xargs": xargs}
        status, text = completions(config, json.dumps(body), loop)
        assert status == 400
        return text

    assert "1..5 (this server's max_topk), got 6" in message(server(folder, max_topk=5), {**TOPK, "padrec_topk": 6})
    assert "padrec.topk_max_beams is 0" in message(server(folder, max_topk=5), {**TOPK, "padrec_topk": 5})
    assert "the catalog has 40 items, fewer than the 41 asked" in message(server(folder), {**TOPK, "padrec_topk": 41})
    excluded = {**TOPK, "padrec_exclude_items": list(range(35))}
    assert "padrec_exclude_items leaves 5 of the catalog's 40 items, fewer than the 10 asked" in message(
        server(folder), excluded
    )
    assert "padrec.topk_max_beams is 0" in message(server(folder), {**excluded, "padrec_topk": 5})


def test_max_topk_reaches_the_limits(folder):
    from vllm_padrec.integration.list_settings import list_limits, server_settings

    assert server_settings(server(folder)).max_topk == 256
    config = server(folder, max_topk=4096)
    assert list_limits(config, server_settings(config)).max_topk == 4096
    bare = server(folder, max_topk=7, catalog=str(folder / "missing.json"))
    assert list_limits(bare, server_settings(bare)).max_topk == 7


# -- the engine side contains its own failures ---------------------------------------------------------
def test_a_request_the_engine_cannot_serve_ends_alone_with_an_empty_list(loop, caplog):
    from vllm.sampling_params import SamplingParams

    bad = SamplingParams(max_tokens=20, extra_args={"padrec_constraint": 1, "padrec_num_items": float("inf")})
    with caplog.at_level(logging.ERROR, logger="vllm.padrec"):
        assert loop.run(1, "bad-1", prompt_ids(), bad, max_tokens=20) == [TokenLayout.EOS]
    assert "bad-1 refused" in caplog.text and "padrec_num_items" in caplog.text
    assert loop.lists.refused[1]
    good = SamplingParams(max_tokens=40, extra_args={"padrec_constraint": 1, "padrec_num_items": 3})
    assert_valid_list(loop.run(2, "good-1", prompt_ids(), good, max_tokens=40), num_items=3)
    # a slot reused by a good request is served again
    assert_valid_list(loop.run(1, "good-2", prompt_ids(), good, max_tokens=40), num_items=3)
    assert not loop.lists.refused[1]
    # prompt embeddings carry no token ids to find the list in: refused, never served unconstrained
    from vllm_fakes import new_request

    loop.lists.add_request(3, new_request("embeds-1", None, good))
    assert loop.lists.refused[3] and not loop.lists.enabled[3]
    # a top-K request (refused by the front end until the engine serves top-K) is never served as a list
    topk = SamplingParams(max_tokens=20, extra_args={"padrec_constraint": 1, "padrec_topk": 5})
    with caplog.at_level(logging.ERROR, logger="vllm.padrec"):
        assert loop.run(4, "topk-1", prompt_ids(), topk, max_tokens=20) == [TokenLayout.EOS]
    assert "topk-1 refused" in caplog.text and "padrec_topk" in caplog.text


def test_excluded_items_never_reach_the_list(loop):
    """The history ban runs in the engine: a list of N items never holds an excluded one, so it never needs
    over-generation. Excluding all but 3 items leaves exactly those 3 for a 3-item list without repeats."""
    from vllm.sampling_params import SamplingParams

    kept = [4, 17, 31]
    excluded = [i for i in range(len(CATALOG)) if i not in kept]
    xargs = {"padrec_constraint": 1, "padrec_num_items": 3, "padrec_no_repeat": 1, "padrec_exclude_items": excluded}
    for slot in range(3):
        params = SamplingParams(max_tokens=40, extra_args=xargs)
        items = assert_valid_list(loop.run(slot, f"r{slot}", prompt_ids(), params, max_tokens=40), 3, no_repeat=True)
        assert sorted(items) == kept
    assert not loop.lists.refused[:3].any()
    repeats = {**xargs, "padrec_no_repeat": 0, "padrec_num_items": 5}
    params = SamplingParams(max_tokens=40, extra_args=repeats)
    assert set(assert_valid_list(loop.run(3, "r3", prompt_ids(), params, max_tokens=40), 5)) <= set(kept)


def test_failing_masks_fall_back_then_refuse(loop, monkeypatch, caplog):
    from vllm.sampling_params import SamplingParams

    from vllm_padrec.lists import masks as vm

    good = SamplingParams(max_tokens=40, extra_args={"padrec_constraint": 1, "padrec_num_items": 2})

    def broken(*args):
        raise RuntimeError("kernel launch failed")

    loop.lists._verify = broken  # the fast masks fail: the eager torch masks take over, same lists
    with caplog.at_level(logging.ERROR, logger="vllm.padrec"):
        assert_valid_list(loop.run(0, "r0", prompt_ids(), good, max_tokens=40), num_items=2)
    assert loop.lists._verify is vm.mask_verification_logits and "using the eager torch masks" in caplog.text
    monkeypatch.setattr(vm, "mask_verification_logits", broken)  # the eager masks fail too: refused, not unmasked
    loop.lists._verify = vm.mask_verification_logits
    assert loop.run(1, "r1", prompt_ids(), good, max_tokens=40) == [TokenLayout.EOS]
    assert "refusing the 1 constrained requests" in caplog.text


def test_a_failing_draft_mask_leaves_drafts_unmasked(loop):
    import torch

    loop.lists._draft = lambda *args: 1 / 0
    logits = torch.zeros(2, loop.vocab_size)
    loop.lists.mask_draft_logits(
        logits,
        torch.zeros(2, dtype=torch.int32),
        torch.zeros(2, 1, dtype=torch.long),
        torch.zeros((), dtype=torch.long),
    )
    assert loop.lists._draft is None and torch.equal(logits, torch.zeros(2, loop.vocab_size))


# -- fuzz: any body, any vllm_xargs -------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["1", "0", "true", "off", "12", "2.0", "NaN"])
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
xarg_keys = st.sampled_from(
    [
        "padrec_constraint",
        "padrec_num_items",
        "padrec_min_items",
        "padrec_no_repeat",
        "padrec_exclude_items",
        "padrec_topk",
        "padrec_history",
        "other_plugin_key",
    ]
)


def dumps(value) -> str:
    return json.dumps(value)  # writes NaN / Infinity as clients may


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(xargs=st.dictionaries(xarg_keys, json_values, max_size=4), server_constraint=st.booleans())
def test_fuzz_completions_vllm_xargs(folder, loop, xargs, server_constraint):
    config = server(folder, constraint=server_constraint, no_repeat=True)
    body = dumps({"model": MODEL, "prompt": prompt_text(), "max_tokens": 60, "temperature": 0, "vllm_xargs": xargs})
    loop.lists.settings = ListSettings.from_additional_config(config.additional_config)
    loop.lists.defaults = loop.lists.settings.defaults()
    status, tokens = completions(config, body, loop)
    assert status in (200, 400), (status, tokens)
    if status == 200:
        assert not loop.lists.refused[0], "the front end passed a request the engine refused"
        if loop.lists.enabled[0] and tokens[-1] == TokenLayout.EOS:
            assert_valid_list(tokens)


class HookedEngine:
    """An EngineClient whose ``generate`` runs the plugin's front-end check, then its engine hooks."""

    def __init__(self, config, loop: EngineLoop) -> None:
        self.config, self.loop, self.served = config, loop, []

    async def generate(self, prompt, sampling_params, request_id, **kwargs):
        from vllm.outputs import CompletionOutput, RequestOutput

        check_params(self.config, sampling_params)  # AsyncLLM.add_request -> process_inputs
        tokens = self.loop.run(0, request_id, prompt["prompt_token_ids"], sampling_params, sampling_params.max_tokens)
        self.served.append(tokens)
        output = CompletionOutput(0, "", tokens, None, None, finish_reason="stop")
        yield RequestOutput(request_id, None, list(prompt["prompt_token_ids"]), None, [output], finished=True)


def recommendations_app(folder, engine) -> FastAPI:
    plugin = ep.RecommendationsPlugin()
    app = FastAPI()
    plugin.attach_router(app)
    app.state.vllm_config = engine.config
    asyncio.run(plugin.init_state(engine, app.state, Namespace(served_model_name=[MODEL])))
    return app


@pytest.mark.parametrize("case", [c for c in HOSTILE_REQUESTS if c.path == RECOMMENDATIONS], ids=lambda c: c.name)
def test_hostile_recommendations_get_their_4xx(folder, loop, case):
    engine = HookedEngine(server(folder), loop)
    with TestClient(recommendations_app(folder, engine)) as client:
        reply = client.post(
            RECOMMENDATIONS,
            content=case.render(MODEL, "", ["1", "2"]),
            headers={"Content-Type": "application/json", **case.headers},
        )
    assert reply.status_code in case.statuses, reply.text
    assert reply.json()["error"]["message"] and engine.served == []
    assert case.says in reply.json()["error"]["message"]


item_ids = st.sampled_from(list(CATALOG.item_ids[:10]) + ["nope", "", "x" * 300])
bodies = st.fixed_dictionaries(
    {"history": st.lists(item_ids, max_size=6) | json_values},
    optional={
        "num_items": json_values | st.integers(-2, 40),
        "no_repeat": json_values,
        "exclude_history": json_values,
        "temperature": json_values,
        "seed": json_values | st.integers(-(2**64), 2**64),
        "model": json_values,
        "extra": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, request_id=st.none() | st.text(max_size=80))
def test_fuzz_recommendations_bodies(folder, loop, body, request_id):
    engine = HookedEngine(server(folder), loop)
    headers = {"Content-Type": "application/json"}
    if request_id is not None and request_id.isprintable() and request_id.isascii():
        headers["X-Request-Id"] = request_id
    with TestClient(recommendations_app(folder, engine)) as client:
        reply = client.post(RECOMMENDATIONS, content=dumps(body), headers=headers)
    assert reply.status_code < 500, reply.text
    if reply.status_code == 200:
        assert len(engine.served) == 1 and not loop.lists.refused[0]
        items = reply.json()["items"]
        no_repeat = ep.RecommendationRequest.model_validate(body).no_repeat  # as the route read it
        assert len({i["item_id"] for i in items}) == len(items) or not no_repeat


def test_the_model_runner_is_read_once_per_server_config(folder):
    """vLLM's ``use_v2_model_runner`` scans every installed package's entry points on each read; the front
    end's check reads it once per config, and forgets it with the config."""
    import gc

    from vllm_padrec.integration import list_settings

    class CountingConfig:
        def __init__(self) -> None:
            self.additional_config = {"padrec": {"catalog": str(folder)}}
            self.model_config = SimpleNamespace(model=str(folder))
            self.reads = 0

        @property
        def use_v2_model_runner(self) -> bool:
            self.reads += 1
            return True

    config = CountingConfig()
    for _ in range(5):
        assert list_settings.check_request(config, {"padrec_constraint": 1}).constraint
    assert config.reads == 1
    key = id(config)
    assert key in list_settings._RUNS_V2
    del config
    gc.collect()
    assert key not in list_settings._RUNS_V2
