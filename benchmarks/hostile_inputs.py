"""Hostile clients beside well-formed ones on a real ``vllm serve`` with the PAD-Rec draft and the constraint.

    python -m benchmarks.hostile_inputs --target T --draft D --dataset beauty_atspeed --out benchmarks/results

1. starts ``vllm serve T --speculative-model D`` with the catalog constraint on server-wide and both of
   the plugin's entry points (``/v1/completions`` with ``vllm_xargs``, ``/v1/recommendations``);
2. idle pass: every well-formed request alone, one after another (the reference answers);
3. mixed pass: the well-formed requests again, shuffled among every hostile request of
   ``vllm_padrec.testing.hostile`` (each several times) and clients that reuse another client's
   ``X-Request-Id`` and then disconnect, ``--concurrency`` in flight;
4. after pass: the well-formed requests again, at the same concurrency;
5. the server must still be healthy, its log must show no engine death, and every well-formed answer
   must equal the idle one (greedy, float32 by default, vLLM's batch-invariant kernels:
   ``VLLM_BATCH_INVARIANT=1``, so that batch composition should not change a greedy choice). Completions
   ask for the top-2 log-probabilities, so that an answer that differs is reported with the gap between
   its two likeliest tokens where it first differs (a near-tie is numerics; a large gap, a bug).

Writes ``hostile_inputs.json`` / ``.md`` / ``.png`` (latency of the well-formed requests per pass).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.testing.compare import first_difference, margin_at, top_margins
from vllm_padrec.testing.hostile import COMPLETIONS, HOSTILE_REQUESTS, RECOMMENDATIONS
from vllm_padrec.testing.results import write_results
from vllm_padrec.testing.server import ENGINE_DEAD_ANSWER, SERVED_NAME, VllmServer, engine_deaths
from vllm_padrec.testing.stats import percentile


@dataclass(frozen=True)
class Request:
    kind: str  # "good", "hostile" or "disconnect"
    name: str
    path: str
    body: str
    headers: tuple[tuple[str, str], ...] = ()
    statuses: tuple[int, ...] = (200,)


def good_requests(catalog: ItemCatalog, histories: list[list[int]], list_items: int) -> list[Request]:
    """Half ``/v1/completions`` with vllm_xargs, half ``/v1/recommendations``; every other recommendation
    shares its X-Request-Id with a client that disconnects (``disconnecting``)."""
    tokens = catalog.layout.token_strings()
    xargs = {"padrec_constraint": 1, "padrec_num_items": list_items, "padrec_no_repeat": 1}
    requests = []
    for n, history in enumerate(histories):
        if n % 2 == 0:
            prompt = "".join(tokens[t] for t in catalog.render_prompt(history))
            body = {
                "model": SERVED_NAME,
                "prompt": prompt,
                "max_tokens": list_items * (catalog.num_slots + 1) + 1,
                "temperature": 0,
                "vllm_xargs": xargs,
                "logprobs": 2,
                "return_token_ids": True,
            }
            requests.append(Request("good", f"completions {n}", COMPLETIONS, json.dumps(body)))
        else:
            body = {"history": [catalog.item_ids[i] for i in history], "num_items": list_items}
            headers = (("X-Request-Id", f"shared-{n}"),) if n % 4 == 1 else ()
            requests.append(Request("good", f"recommendations {n}", RECOMMENDATIONS, json.dumps(body), headers))
    return requests


def disconnecting(good: list[Request]) -> list[Request]:
    """A client that sends a good request's X-Request-Id with its own request, then hangs up."""
    return [
        Request("disconnect", f"disconnects, {r.name}'s X-Request-Id", r.path, r.body, r.headers, ())
        for r in good
        if r.headers
    ]


def hostile_requests(catalog: ItemCatalog, histories: list[list[int]], repeats: int) -> list[Request]:
    tokens = catalog.layout.token_strings()
    out = []
    for r in range(repeats):
        for case in HOSTILE_REQUESTS:
            history = histories[r % len(histories)]
            prompt = "".join(tokens[t] for t in catalog.render_prompt(history))
            body = case.render(SERVED_NAME, prompt, [catalog.item_ids[i] for i in history])
            name = f"{case.path} {case.name}"  # the same name can be tried on both routes
            out.append(Request("hostile", name, case.path, body, tuple(case.headers.items()), case.statuses))
    return out


def answer_of(request: Request, body) -> object:
    """What must not change between passes: the completion's token ids, or the recommended item ids."""
    if not isinstance(body, dict):
        return None
    if request.path == COMPLETIONS:
        return [choice.get("token_ids") or choice.get("text") for choice in body.get("choices", [])]
    return [item["item_id"] for item in body.get("items", [])]


def margins_of(request: Request, body) -> list | None:
    if request.path != COMPLETIONS or not isinstance(body, dict) or not body.get("choices"):
        return None
    return top_margins(body["choices"][0])


def hang_up(server: VllmServer, request: Request, after_s: float = 0.05) -> dict:
    """Send the request, then close the connection before the answer comes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        headers = "".join(f"{k}: {v}\r\n" for k, v in request.headers)
        data = request.body.encode()
        sock.sendall(
            f"POST {request.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{headers}Connection: close\r\n\r\n".encode()
            + data
        )
        time.sleep(after_s)
    return {"kind": request.kind, "name": request.name, "status": None, "ms": after_s * 1000}


def send(server: VllmServer, request: Request) -> dict:
    if request.kind == "disconnect":
        return hang_up(server, request)
    status, body, seconds = server.post(request.path, request.body, dict(request.headers))
    dead = isinstance(body, (dict, str)) and ENGINE_DEAD_ANSWER in json.dumps(body)
    return {
        "kind": request.kind,
        "name": request.name,
        "status": status,
        "ms": seconds * 1000,
        "answer": answer_of(request, body) if status == 200 else None,
        "engine_dead_answer": dead,
        "margins": margins_of(request, body) if status == 200 else None,
        "expected": list(request.statuses),
        "error": body.get("error", {}).get("message", "")[:200] if isinstance(body, dict) and status != 200 else None,
    }


def run_pass(server: VllmServer, requests: list[Request], concurrency: int) -> list[dict]:
    if concurrency <= 1:
        return [send(server, r) for r in requests]
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda r: send(server, r), requests))


def list_quality(catalog: ItemCatalog, list_items: int, rows: list[dict]) -> dict:
    """Well-formed answers checked against the catalog: lists of ``list_items`` distinct catalog items?"""
    from vllm_padrec.lists import parse_list

    invalid = repeated = short = 0
    for row in rows:
        answer = row.get("answer")
        if row["kind"] != "good" or row["status"] != 200 or not answer:
            continue
        if isinstance(answer[0], list):  # a completion's token ids
            parsed = parse_list(catalog, answer[0])
            items, bad = parsed.items, parsed.invalid
        else:  # recommended item ids
            items, bad = answer, 0
        invalid += bad
        repeated += len(items) - len(set(items))
        short += len(items) < list_items
    return {"invalid_items": invalid, "repeated_items": repeated, "short_lists": short}


def summarize(
    good: list[Request],
    idle: list[dict],
    mixed: list[dict],
    after: list[dict],
    deaths: int,
    healthy: bool,
    setup: dict,
    quality: dict | None = None,
) -> dict:
    reference = {r["name"]: r["answer"] for r in idle}
    idle_rows = {r["name"]: r for r in idle}
    mixed_good = [r for r in mixed if r["kind"] == "good"]
    hostile = [r for r in mixed if r["kind"] == "hostile"]
    sent = [r for p in (idle, mixed, after) for r in p if r["status"] is not None]
    cases: dict[str, dict] = {}
    for r in hostile:
        case = cases.setdefault(r["name"], {"sent": 0, "statuses": {}, "expected": r["expected"], "error": r["error"]})
        case["sent"] += 1
        case["statuses"][str(r["status"])] = case["statuses"].get(str(r["status"]), 0) + 1
    wrong = [r["name"] for r in hostile if r["status"] not in r["expected"]]
    good_ms = [r["ms"] for r in mixed_good]
    return {
        "requests": len(idle) + len(mixed) + len(after),
        "hostile_requests": len(hostile),
        "disconnecting_requests": sum(r["kind"] == "disconnect" for r in mixed),
        "well_formed_requests": len(good),
        "engine_deaths": deaths,
        "engine_dead_answers": sum(r["engine_dead_answer"] for r in sent),
        "server_errors_5xx": sum(r["status"] >= 500 for r in sent),
        "server_healthy_after": healthy,
        "good_answers_ok": sum(r["status"] == 200 for r in idle + mixed_good + after),
        "good_answers_equal": all(
            r["status"] == 200 and r["answer"] == reference.get(r["name"]) for r in mixed_good + after
        )
        and all(r["status"] == 200 for r in idle),
        "good_answers_differing": [
            differing(idle_rows.get(r["name"]), r, label)
            for label, rows in (("mixed", mixed_good), ("after", after))
            for r in rows
            if r["answer"] != reference.get(r["name"])
        ],
        "hostile_wrong_status": wrong,
        **(quality or {}),
        "p50_ms": percentile(good_ms, 50),
        "p99_ms": percentile(good_ms, 99),
        "idle_p50_ms": percentile([r["ms"] for r in idle], 50),
        "after_p99_ms": percentile([r["ms"] for r in after], 99),
        "hostile_cases": cases,
        "setup": setup,
    }


def differing(idle: dict | None, other: dict, label: str) -> dict:
    """Where a well-formed answer first differs from the idle one, and the top-2 gaps there (completions)."""
    record = {"name": other["name"], "pass": label, "status": other["status"]}
    a, b = (idle or {}).get("answer"), other.get("answer")
    if a and b and isinstance(a[0], list) and isinstance(b[0], list):
        index = first_difference(a[0], b[0])
        record.update(
            first_different_token=index,
            idle_margin=margin_at(idle.get("margins"), index),
            other_margin=margin_at(other.get("margins"), index),
        )
    return record


def markdown(r: dict) -> str:
    rows = "\n".join(
        f"| {name} | {c['sent']} | {', '.join(f'{k}: {v}' for k, v in c['statuses'].items())} | "
        f"{'/'.join(map(str, c['expected']))} | {(c['error'] or '').replace('|', '/')[:110]} |"
        for name, c in r["hostile_cases"].items()
    )
    s = r["setup"]
    return f"""# Hostile inputs against `vllm serve` with the PAD-Rec draft and the constraint

`python -m benchmarks.hostile_inputs` ({s["date"]}, {s["device"]}): `vllm serve TARGET --speculative-model
DRAFT`, catalog constraint on server-wide, {s["dtype"]}, `VLLM_BATCH_INVARIANT=1`; {r["well_formed_requests"]}
well-formed requests (half `/v1/completions` with `vllm_xargs`, half `/v1/recommendations`, {s["list_items"]}
items each) alone, then mixed with {r["hostile_requests"]} hostile requests and {r["disconnecting_requests"]} clients that
reuse another client's `X-Request-Id` and hang up, {s["concurrency"]} in flight, then the well-formed ones again.

| requests | hostile | engine deaths | 5xx answers | server healthy after | well-formed answers equal to the idle server's | p50 / p99 of well-formed requests, mixed |
|---|---|---|---|---|---|---|
| {r["requests"]} | {r["hostile_requests"]} | {r["engine_deaths"]} | {r["server_errors_5xx"]} | {r["server_healthy_after"]} | {r["good_answers_equal"]} ({r["good_answers_ok"]} answered 200) | {r["p50_ms"]:.1f} / {r["p99_ms"]:.1f} ms |

Hostile requests that got another status than expected: {r["hostile_wrong_status"] or "none"}.
Well-formed answers checked against the catalog: {r.get("invalid_items")} invalid items, {r.get("repeated_items")}
repeated items, {r.get("short_lists")} lists shorter than asked.
Well-formed answers that differ from the idle server's: {len(r["good_answers_differing"])}
{"".join(f"- {d}" + chr(10) for d in r["good_answers_differing"])}
| hostile request | sent | statuses | expected | first error message (truncated) |
|---|---|---|---|---|
{rows}
"""  # noqa: E501


def plot(plt, idle: list[dict], mixed: list[dict], after: list[dict]):
    """Latency of the well-formed requests per pass (cumulative distribution)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, rows in (("idle, one at a time", idle), ("mixed with hostile", mixed), ("after", after)):
        ms = np.sort([r["ms"] for r in rows if r["kind"] == "good"])
        if len(ms):
            ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency of a well-formed request (ms)")
    ax.set_ylabel("fraction of requests")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="target checkpoint folder (with padrec_catalog.json)")
    parser.add_argument("--draft", required=True, help="PAD-Rec draft folder")
    parser.add_argument("--dataset", required=True, help="dataset whose test users give the well-formed requests")
    parser.add_argument("--good", type=int, default=800, help="well-formed requests per pass")
    parser.add_argument("--hostile-repeats", type=int, default=7, help="times each hostile request is sent")
    parser.add_argument("--list-items", type=int, default=10, help="items per recommended list")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight in the mixed pass")
    parser.add_argument("--dtype", default="float32", help="vllm serve --dtype")
    parser.add_argument("--port", type=int, default=8031, help="vllm serve --port")
    parser.add_argument("--seed", type=int, default=0, help="order of the mixed pass")
    parser.add_argument("--out", default="benchmarks/results", help="folder of hostile_inputs.{json,md,png}")
    parser.add_argument("vllm_args", nargs="*", help="extra `vllm serve` arguments (after --)")
    args = parser.parse_args(argv)

    from vllm_padrec.data import load_dataset

    catalog = ItemCatalog.load(args.target)
    data = load_dataset(args.dataset)
    histories = [s.history[-20:] for s in data.eval_samples("test")[: args.good]]
    good = good_requests(catalog, histories, args.list_items)
    hostile = hostile_requests(catalog, histories, args.hostile_repeats)
    mixed = good + hostile + disconnecting(good)
    random.Random(args.seed).shuffle(mixed)
    config = {"constraint": True, "no_repeat": True, "max_list_items": max(32, args.list_items)}
    serve_args = [
        "--speculative-model",
        args.draft,
        "--dtype",
        args.dtype,
        "--max-num-seqs",
        str(args.concurrency),
        "--additional-config",
        json.dumps({"padrec": config}),
        *args.vllm_args,
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = VllmServer(
        args.target,
        serve_args,
        port=args.port,
        env={"VLLM_BATCH_INVARIANT": "1"},
        log_path=out / "hostile_inputs_server.log",
    )
    with server:
        print(f"server up in {server.startup_seconds:.0f} s; idle pass ({len(good)} requests) ...", flush=True)
        idle = run_pass(server, good, 1)
        print(f"mixed pass ({len(mixed)} requests, {args.concurrency} in flight) ...", flush=True)
        mixed_rows = run_pass(server, mixed, args.concurrency)
        print("after pass ...", flush=True)
        after = run_pass(server, good, args.concurrency)
        healthy = server.healthy() and server.alive()
        deaths = engine_deaths(server.log_text())
    import torch

    setup = {
        "target": args.target,
        "draft": args.draft,
        "dataset": data.name,
        "list_items": args.list_items,
        "concurrency": args.concurrency,
        "dtype": args.dtype,
        "serve_args": serve_args,
        "startup_s": server.startup_seconds,
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    quality = list_quality(catalog, args.list_items, idle + mixed_rows + after)
    result = summarize(good, idle, mixed_rows, after, deaths, healthy, setup, quality)
    write_results(out, "hostile_inputs", result, markdown(result), lambda plt: plot(plt, idle, mixed_rows, after))
    print(json.dumps({k: v for k, v in result.items() if k not in ("hostile_cases", "setup")}, indent=2))
    ok = (
        result["engine_deaths"] == 0
        and result["server_errors_5xx"] == 0
        and result["good_answers_equal"]
        and healthy
        and not result["hostile_wrong_status"]
        and not any(quality.values())
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
