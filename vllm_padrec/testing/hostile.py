"""Requests a hostile (or careless) client sends, which a server with the plugin must answer with a 4xx
and survive: every one that once took an engine down or was silently coerced, and their neighbours.

Each is an HTTP request as it goes over the wire (a raw JSON body, so that ``1e309``, ``NaN`` and
``Infinity`` arrive as clients write them; Python's and FastAPI's JSON readers accept all three). The
CPU fuzz tests send them to the real plugin hooks, the GPU tests and ``benchmarks/hostile_inputs.py``
to a real ``vllm serve``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

COMPLETIONS = "/v1/completions"
RECOMMENDATIONS = "/v1/recommendations"


@dataclass(frozen=True)
class HostileRequest:
    name: str  # what it tries
    path: str  # COMPLETIONS or RECOMMENDATIONS
    body: str  # the raw JSON body (a template: {prompt}, {history} and {model} are filled in by `render`)
    headers: dict[str, str] = field(default_factory=dict)
    statuses: tuple[int, ...] = (400,)  # the answers that are right (4xx)
    says: str = ""  # words the error message must hold (where the check that answers matters); "": any

    def render(self, model: str, prompt: str, history: list[str]) -> str:
        return (
            self.body.replace("{model}", json.dumps(model))
            .replace("{prompt}", json.dumps(prompt))
            .replace("{history}", json.dumps(history))
        )


def _xargs(name: str, xargs: str, constraint: str = '"padrec_constraint": 1, ', says: str = "") -> HostileRequest:
    body = '{"model": {model}, "prompt": {prompt}, "max_tokens": 8, "temperature": 0, "vllm_xargs": {' + constraint
    return HostileRequest(name, COMPLETIONS, body + xargs + "}}", says=says)


def _recommend(name: str, fields: str, statuses: tuple[int, ...] = (422,), headers=None) -> HostileRequest:
    return HostileRequest(
        name, RECOMMENDATIONS, '{"history": {history}, ' + fields + "}", dict(headers or {}), statuses
    )


HOSTILE_REQUESTS: tuple[HostileRequest, ...] = (
    # the values that reached the engine and killed it (int(inf) -> OverflowError in add_request)
    _xargs("num_items 1e309 (inf)", '"padrec_num_items": 1e309'),
    _xargs("num_items Infinity", '"padrec_num_items": Infinity'),
    _xargs("num_items -Infinity", '"padrec_num_items": -Infinity'),
    _xargs("min_items 1e309 (inf)", '"padrec_min_items": 1e309'),
    _xargs("min_items Infinity", '"padrec_min_items": Infinity'),
    _xargs("num_items NaN", '"padrec_num_items": NaN'),
    # silent coercions
    _xargs("num_items 2.9", '"padrec_num_items": 2.9'),
    _xargs("num_items huge", '"padrec_num_items": 100000000000000000000000000000'),
    _xargs("num_items 0", '"padrec_num_items": 0'),
    _xargs("num_items -3", '"padrec_num_items": -3'),
    _xargs("num_items above max_list_items", '"padrec_num_items": 100000'),
    _xargs("num_items string", '"padrec_num_items": "ten"'),
    _xargs("num_items list", '"padrec_num_items": [1, 2]'),
    _xargs("min_items above num_items", '"padrec_num_items": 2, "padrec_min_items": 5'),
    _xargs("constraint maybe", '"padrec_constraint": "maybe"', constraint=""),
    _xargs("constraint NaN", '"padrec_constraint": NaN', constraint=""),
    _xargs("constraint 2", '"padrec_constraint": 2', constraint=""),
    _xargs("no_repeat maybe", '"padrec_no_repeat": "maybe"'),
    _xargs("unknown padrec key", '"padrec_num_itemz": 3'),
    _xargs("list setting without the constraint", '"padrec_constraint": 0, "padrec_no_repeat": 1', constraint=""),
    # top-K (padrec_topk): a bad value is refused with its own message before the refusal of top-K itself
    # (this build's engine does not serve it yet). Server: the defaults (max_topk 256, padrec.constraint off),
    # a catalog of at least 10 items. (JSON true is not here: vLLM's CompletionRequest reads it as 1, a valid K.)
    _xargs("topk 0", '"padrec_topk": 0', says="padrec_topk must be an integer in 1..256"),
    _xargs("topk 257 (above max_topk)", '"padrec_topk": 257', says="padrec_topk must be an integer in 1..256"),
    _xargs("topk 2.5", '"padrec_topk": 2.5', says="got 2.5"),
    _xargs("topk string", '"padrec_topk": "10"', says="got '10'"),
    _xargs("topk NaN", '"padrec_topk": NaN', says="got nan"),
    _xargs("topk Infinity", '"padrec_topk": Infinity', says="got inf"),
    _xargs("topk list", '"padrec_topk": [10]', says="got [10]"),
    _xargs("topk with num_items 3", '"padrec_topk": 10, "padrec_num_items": 3', says="padrec_num_items must be 1"),
    _xargs("topk with no_repeat", '"padrec_topk": 10, "padrec_no_repeat": 1', says="padrec_no_repeat must be false"),
    _xargs("topk without the constraint", '"padrec_topk": 10', constraint="", says="set padrec_constraint"),
    _xargs("topk 10 on a server without beam rows", '"padrec_topk": 10', says="this server does not serve top-K"),
    # vLLM's beam search drops vllm_xargs: the constraint would silently not apply
    HostileRequest(
        "constraint with use_beam_search",
        COMPLETIONS,
        '{"model": {model}, "prompt": {prompt}, '
        '"max_tokens": 4, "use_beam_search": true, "n": 2, "vllm_xargs": {"padrec_constraint": 1}}',
    ),
    # the recommendations route
    _recommend("seed 2**63", '"num_items": 3, "seed": 9223372036854775808'),
    _recommend("seed -2**63 - 1", '"num_items": 3, "seed": -9223372036854775809'),
    _recommend("temperature NaN", '"num_items": 3, "temperature": NaN'),
    _recommend("temperature Infinity", '"num_items": 3, "temperature": Infinity'),
    _recommend("num_items 1e309", '"num_items": 1e309'),
    _recommend("num_items 2.9", '"num_items": 2.9'),
    _recommend("num_items huge", '"num_items": 100000000000000000000000000000'),
    _recommend("unknown field", '"num_items": 3, "beam_width": 4'),
    HostileRequest(
        "history of 100k unknown ids",
        RECOMMENDATIONS,
        '{"history": ' + json.dumps([f"x{i}" for i in range(100_000)]) + "}",
        statuses=(422,),
    ),
    HostileRequest("history not a list", RECOMMENDATIONS, '{"history": 7}', statuses=(422,)),
    HostileRequest("body not JSON", RECOMMENDATIONS, "{not json", statuses=(400,)),
    HostileRequest(
        "body over the size cap", RECOMMENDATIONS, '{"history": ["' + "a" * (5 * 1024 * 1024) + '"]}', statuses=(413,)
    ),
)
