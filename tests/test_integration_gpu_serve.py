"""A real ``vllm serve`` with the PAD-Rec draft and the constraint, sent every hostile request (GPU).

The tiny random target and PAD-Rec draft of ``test_integration_gpu`` (float32), the constraint on
server-wide, both plugins loaded. Well-formed requests first, then every request of
``vllm_padrec.testing.hostile`` (each must get its 4xx, with a message), then the well-formed ones
again: their answers must be the same, the server healthy, and its log free of engine deaths.
``benchmarks/hostile_inputs.py`` does the same under load, with a trained target and draft.
"""

from __future__ import annotations

import json

import pytest
from conftest import requires_gpu
from test_integration_gpu import build_random_draft, build_target, catalog

from vllm_padrec.testing.hostile import COMPLETIONS, HOSTILE_REQUESTS, RECOMMENDATIONS
from vllm_padrec.testing.server import SERVED_NAME, VllmServer, engine_deaths

pytestmark = [pytest.mark.gpu, requires_gpu]
NUM_ITEMS = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    cat = catalog()
    target, model = build_target(root / "target", cat)
    draft = build_random_draft(root / "draft", model, cat)
    padrec = {"constraint": True, "no_repeat": True, "max_list_items": 8}
    args = [
        "--speculative-model",
        str(draft),
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--gpu-memory-utilization",
        "0.15",
        "--attention-backend",
        "TRITON_ATTN",
        "--additional-config",
        json.dumps({"padrec": padrec}),
    ]
    with VllmServer(str(target), args, port=8037, log_path=root / "serve.log", startup_timeout=900) as server:
        yield server, cat


def good_requests(cat):
    tokens = cat.layout.token_strings()
    requests = []
    for n in range(4):
        history = [(7 * n + k) % len(cat) for k in range(4)]
        prompt = "".join(tokens[t] for t in cat.render_prompt(history))
        xargs = {"padrec_num_items": NUM_ITEMS, "padrec_no_repeat": 1}  # the constraint is on server-wide
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": 20, "temperature": 0, "vllm_xargs": xargs}
        requests.append((COMPLETIONS, json.dumps(body)))
        body = {"history": [cat.item_ids[i] for i in history], "num_items": NUM_ITEMS}
        requests.append((RECOMMENDATIONS, json.dumps(body)))
    return requests


def answers(server, requests):
    out = []
    for path, body in requests:
        status, reply, _ = server.post(path, body)
        assert status == 200, reply
        out.append(reply["choices"][0]["text"] if path == COMPLETIONS else [i["item_id"] for i in reply["items"]])
    return out


def test_hostile_requests_get_4xx_and_the_server_keeps_its_answers(served):
    server, cat = served
    good = good_requests(cat)
    before = answers(server, good)
    tokens = cat.layout.token_strings()
    prompt = "".join(tokens[t] for t in cat.render_prompt([0, 1, 2]))
    wrong = []
    for case in HOSTILE_REQUESTS:
        status, reply, _ = server.post(case.path, case.render(SERVED_NAME, prompt, cat.item_ids[:3]), case.headers)
        message = reply.get("error", {}).get("message") if isinstance(reply, dict) else None
        if status not in case.statuses or not message:
            wrong.append((case.name, status, reply if not isinstance(reply, str) else reply[:200]))
    assert not wrong, wrong
    assert server.healthy() and server.alive()
    assert answers(server, good) == before
    assert engine_deaths(server.log_text()) == 0


def test_two_clients_with_one_request_id_do_not_abort_each_other(served):
    """The second client hangs up; the first one's request (same X-Request-Id) must still be answered."""
    import socket
    import threading
    import time

    server, cat = served
    body = json.dumps({"history": [cat.item_ids[i] for i in (3, 4, 5)], "num_items": NUM_ITEMS})
    results = []
    thread = threading.Thread(
        target=lambda: results.append(server.post(RECOMMENDATIONS, body, {"X-Request-Id": "same"}))
    )
    thread.start()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        data = body.encode()
        sock.sendall(
            f"POST {RECOMMENDATIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: same\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        time.sleep(0.02)
    thread.join(120)
    status, reply, _ = results[0]
    assert status == 200 and len(reply["items"]) == NUM_ITEMS, reply
