"""Is speculative decoding lossless on a real `vllm serve`? Same lists with and without the draft.

Starts `vllm serve TARGET` twice with this plugin (``VLLM_PLUGINS=padrec,padrec_recommendations``):
without speculation, then with ``--speculative-model DRAFT``. Each server gets every test user's
history (the last H items of the recipe) as prompt token ids on ``/v1/completions``, all at once
through ``--concurrency`` client threads, greedy and catalog-constrained through ``vllm_xargs``
(``padrec_constraint=1, padrec_num_items=N, padrec_no_repeat=1``). Then:

- the two servers' completions are compared token for token (``mismatched_users``), and at each
  mismatch's first different token the gap between the two likeliest tokens' log-probabilities is
  read from both runs (every request asks for ``logprobs=2``): a near-tie there is numerics, a clear
  winner that flipped would be a bug; a second pass
  on the baseline server (``--control``) measures how often greedy lists differ between two runs
  without any draft (batch-shape numerics): mismatches at or below that floor are not the draft's;
- invalid items (not in the catalog) and duplicates within a list are counted;
- ``/metrics`` is scraped before and after the timed pass: mean acceptance length =
  1 + accepted / drafts over the pass (``vllm:spec_decode_num_*_total`` deltas), per-position
  acceptance, and the most requests the server ran at once (``vllm:num_requests_running``, polled;
  None when no scrape began and came back within the pass);
- with ``--reference-acceptance`` (a ``bench_acceptance`` JSON of the same head and users), the
  reference decoder's acceptance in vLLM's definition beside vLLM's;
- output tokens/s and p50/p99 request latency of each pass;
- a sample of users also goes through ``POST /v1/recommendations`` (the endpoint plugin) and, when
  the ``openai`` package is importable, through the OpenAI Python client; both must give the same
  items / tokens as the threaded ``/v1/completions`` pass.

    python -m benchmarks.vllm_lossless --target /tmp/padrec/bench/checkpoint \\
        --draft /tmp/padrec/drafts/padrec/draft --dataset /tmp/padrec/data/beauty_atspeed \\
        --users 500 --concurrency 64 --out benchmarks/results -- --gpu-memory-utilization 0.3 --max-model-len 512

Greedy lists are only reproducible when the numerics are: in bfloat16, two passes of the same server
already differ for about 10% of users (near-tied logits under different batch shapes), so the
lossless claim is checked with ``-- --dtype float32`` (the control floor drops to about zero) and the
speed is measured in bfloat16 (``--name vllm_lossless_bf16``).

``--render JSON [--reference-acceptance A] [--note TEXT]`` rebuilds the Markdown on any machine.
Writes ``<name>.json`` and ``<name>.md`` (``--name``, default ``vllm_lossless``); exits 1 when lists differ beyond the
control
floor or an invalid / duplicate item appears. Needs a GPU (does not run on the CPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vllm_padrec.acceptance import mean_acceptance_length
from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.data import load_dataset
from vllm_padrec.decoding.speculative import SpeculationStats
from vllm_padrec.draft.checkpoint import read_config
from vllm_padrec.integration.endpoint import ROUTE
from vllm_padrec.integration.recommendation_service import read_max_history
from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS
from vllm_padrec.lists import parse_list
from vllm_padrec.testing.compare import first_difference, margin_at, top_margins
from vllm_padrec.testing.drafts import draft_folder, draft_steps
from vllm_padrec.testing.metrics import ITERATIONS, GaugePoller, scrape
from vllm_padrec.testing.results import write_results
from vllm_padrec.testing.server import SERVED_NAME, VllmServer
from vllm_padrec.testing.stats import percentile

TOP_LOGPROBS = 2  # every completion returns its two likeliest tokens per position (tie diagnostics)


# -- requests ---------------------------------------------------------------------------------------
def completion_payload(prompt: list[int], max_tokens: int, xargs: dict, **extra) -> dict:
    return {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stop_token_ids": [TokenLayout.EOS],
        "return_token_ids": True,
        "skip_special_tokens": False,
        "vllm_xargs": xargs,
        **extra,
    }


def timed_pass(
    server: VllmServer, prompts: list[list[int]], max_tokens: int, xargs: dict, concurrency: int, **extra
) -> dict:
    """Every prompt through /v1/completions at once (``concurrency`` threads); tokens and timings.
    ``extra``: more request fields (the unconstrained pass sends ``ignore_eos``)."""

    def ask(prompt):
        started = time.perf_counter()
        reply = server.post_json("/v1/completions", completion_payload(prompt, max_tokens, xargs, **extra), timeout=600)
        choice = reply["choices"][0]
        return {
            "token_ids": [int(t) for t in choice.get("token_ids") or []],
            "margins": top_margins(choice),
            "finish_reason": choice.get("finish_reason"),
            "completion_tokens": reply["usage"]["completion_tokens"],
            "latency": time.perf_counter() - started,
        }

    metrics_before = scrape(server.base)
    before = metrics_before.spec_counters()
    with GaugePoller(server.base) as poller:  # vllm:num_requests_running
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(ask, prompts))
        ended = time.perf_counter()
    seconds = ended - started
    max_running, running_readings = poller.max_within(started, ended)
    metrics_after = scrape(server.base)
    after = metrics_after.spec_counters()
    steps = metrics_after.total(ITERATIONS) - metrics_before.total(ITERATIONS)
    latencies = [a["latency"] for a in answers]
    tokens = sum(a["completion_tokens"] for a in answers)
    drafts = after[SPEC_COUNTERS[0]] - before[SPEC_COUNTERS[0]]
    draft_tokens = after[SPEC_COUNTERS[1]] - before[SPEC_COUNTERS[1]]
    accepted = after[SPEC_COUNTERS[2]] - before[SPEC_COUNTERS[2]]
    acceptance = mean_acceptance_length(accepted, drafts)
    per_pos = [a - b for a, b in zip(after[SPEC_PER_POS], before[SPEC_PER_POS] or [0] * len(after[SPEC_PER_POS]))]
    return {
        "answers": answers,
        "seconds": round(seconds, 3),
        "output_tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
        "requests_per_second": round(len(answers) / seconds, 2),
        "latency_p50_ms": latency_ms(latencies, 50),
        "latency_p99_ms": latency_ms(latencies, 99),
        "max_running_requests": max_running,  # None: no /metrics scrape both began and ended during the pass
        "running_readings": running_readings,
        "engine_steps": int(steps),
        # wall time of the pass per engine step (includes the ramp-up and tail with fewer requests)
        "mean_step_ms": round(1000 * seconds / steps, 3) if steps else None,
        "spec_decode": {
            "num_drafts": int(drafts),
            "num_draft_tokens": int(draft_tokens),
            "num_accepted_tokens": int(accepted),
            "acceptance_length": None if acceptance is None else round(acceptance, 4),
            "draft_acceptance_rate": round(accepted / draft_tokens, 4) if draft_tokens else None,
            "per_position_acceptance": [round(a / drafts, 4) for a in per_pos] if drafts else None,
        },
    }


def latency_ms(seconds: list[float], q: float) -> float | None:
    """The ``q``-th percentile of request latencies in ms: the latency of the nearest rank (no
    interpolation between two requests)."""
    value = percentile(seconds, q, method="nearest")
    return None if value is None else round(1000 * value, 1)


def list_quality(catalog: ItemCatalog, answers: list[dict], list_items: int) -> dict:
    invalid = duplicates = short = 0
    for answer in answers:
        parsed = parse_list(catalog, answer["token_ids"])
        items = parsed.items
        invalid += parsed.invalid
        duplicates += len(items) - len(set(items))
        short += len(items) != list_items
    return {"invalid_items": invalid, "duplicate_items": duplicates, "lists_not_of_n_items": short}


def compare(reference: list[dict], other: list[dict], users: list[str], catalog: ItemCatalog) -> dict:
    """Users whose token lists differ; for each, the top-2 log-probability gap at the first differing
    token in both runs (``top_margins``): a near-tie there means batch-shape numerics, not the draft."""
    mismatched, examples, gaps = 0, [], []
    for user, a, b in zip(users, reference, other):
        if a["token_ids"] == b["token_ids"]:
            continue
        mismatched += 1
        first = first_difference(a["token_ids"], b["token_ids"])
        gap = {
            "user": user,
            "first_different_token": first,
            "reference_margin": margin_at(a.get("margins"), first),
            "other_margin": margin_at(b.get("margins"), first),
        }
        gaps.append(gap)
        if len(examples) < 5:
            examples.append(
                {
                    **gap,
                    "reference_items": [catalog.item_ids[i] for i in parse_list(catalog, a["token_ids"]).items],
                    "other_items": [catalog.item_ids[i] for i in parse_list(catalog, b["token_ids"]).items],
                }
            )
    known = [
        max(g["reference_margin"], g["other_margin"])
        for g in gaps
        if g["reference_margin"] is not None and g["other_margin"] is not None
    ]
    return {
        "mismatched_users": mismatched,
        "examples": examples,
        "first_difference_margins": gaps,
        "max_margin_at_first_difference": max(known) if known else None,
    }


def endpoint_sample(server: VllmServer, catalog: ItemCatalog, samples, answers: list[dict], list_items: int) -> dict:
    """``POST /v1/recommendations`` for a few users: same items as the threaded completions pass?"""
    agree, checked, replies, errors = 0, 0, [], []
    for sample, answer in zip(samples, answers):
        payload = {"history": [catalog.item_ids[i] for i in sample.history], "num_items": list_items, "no_repeat": True}
        try:
            reply = server.post_json(ROUTE, payload)
        except urllib.error.HTTPError as error:
            errors.append(f"{error.code}: {error.read()[:300]!r}")
            continue
        checked += 1
        expected = [catalog.item_ids[i] for i in parse_list(catalog, answer["token_ids"]).items]
        got = [item["item_id"] for item in reply["items"]]
        agree += got == expected
        if len(replies) < 2:
            replies.append(reply)
    # an unknown item id must come back as a JSON 422 from the live server
    try:
        server.post_json(ROUTE, {"history": ["__no_such_item__"], "num_items": list_items})
        bad_request = "accepted (expected 422)"
    except urllib.error.HTTPError as error:
        bad_request = f"{error.code} {json.loads(error.read()).get('error', {}).get('message', '')[:200]}"
    return {
        "users": checked,
        "same_items_as_completions": agree,
        "errors": errors[:5],
        "unknown_item_reply": bad_request,
        "examples": replies,
    }


def openai_sample(base: str, prompts, answers: list[dict], max_tokens: int, xargs: dict) -> dict | None:
    """The same requests through the OpenAI Python client; None when ``openai`` is not installed."""
    try:
        import openai
    except ImportError:
        return None
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="EMPTY")
    agree = 0
    for prompt, answer in zip(prompts, answers):
        reply = client.completions.create(
            model=SERVED_NAME,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            extra_body={
                "vllm_xargs": xargs,
                "stop_token_ids": [TokenLayout.EOS],
                "return_token_ids": True,
                "skip_special_tokens": False,
            },
        )
        choice = reply.choices[0]
        token_ids = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids") or []
        agree += [int(t) for t in token_ids] == answer["token_ids"]
    return {"users": len(prompts), "same_tokens_as_threaded_pass": agree, "openai_version": openai.__version__}


# -- main ---------------------------------------------------------------------------------------------
def serve_and_measure(args, name: str, extra: list[str], port: int, catalog, samples, prompts, max_tokens, xargs):
    log = Path(args.log_dir) / f"vllm_lossless_{name}.log"
    server = VllmServer(
        args.target, [*extra, *args.vllm_args], port=port, log_path=log, startup_timeout=args.startup_timeout
    )
    with server:
        fields = {"logprobs": TOP_LOGPROBS}  # the top-2 gaps (tie diagnostics), if this server returns them
        try:
            server.post_json(
                "/v1/completions", completion_payload(prompts[0], max_tokens, xargs, **fields), timeout=600
            )
        except urllib.error.HTTPError as error:
            print(f"{name}: logprobs refused ({error.code} {error.read()[:200]!r}); no tie diagnostics", flush=True)
            fields = {}
        # warm-up at full concurrency: the batch shapes of the timed pass JIT-compile here (one cold
        # kernel stalled a first float32 pass for ~9 s, benchmarks/results/vllm_lossless.json's note)
        warm_prompts = prompts[: min(args.concurrency, len(prompts))]
        timed_pass(server, warm_prompts, max_tokens, xargs, args.concurrency, **fields)
        run = timed_pass(server, prompts, max_tokens, xargs, args.concurrency, **fields)
        if name == "baseline" and args.control:
            run["control"] = timed_pass(server, prompts, max_tokens, xargs, args.concurrency, **fields)
        if name == "baseline" and args.unconstrained_pass:
            # the same requests without the catalog masks, the same length (ignore_eos): step time without them
            # (and the same logprobs fields: returning them costs the server time of its own)
            run["unconstrained"] = timed_pass(
                server, prompts, max_tokens, {}, args.concurrency, ignore_eos=True, **fields
            )
        k = min(args.sample, len(samples))
        head = run["answers"][:k]
        run["recommendations_endpoint"] = endpoint_sample(server, catalog, samples[:k], head, args.list_items)
        run["openai_client"] = openai_sample(server.base, prompts[:k], head, max_tokens, xargs)
        run["server_startup_seconds"] = round(server.startup_seconds, 1)
        run["server_log"] = str(log)
        return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="target checkpoint folder (with padrec_catalog.json); required")
    parser.add_argument("--draft", help="draft head folder, served with --speculative-model; required")
    parser.add_argument("--dataset", help="dataset folder or name; required")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rebuild the Markdown beside a result JSON (first "
        "attaching --reference-acceptance and --note when given); no GPU",
    )
    parser.add_argument("--note", default=None, help="with --render: a note printed above the tables")
    parser.add_argument("--users", type=int, default=500, help="test users (the first of the test split)")
    parser.add_argument("--concurrency", type=int, default=64, help="client threads: requests in flight")
    parser.add_argument("--list-items", type=int, default=10, help="N: items per list (padrec_num_items)")
    parser.add_argument("--num-speculative-tokens", type=int, default=None, help="K (default: the draft's n_predict)")
    parser.add_argument("--sample", type=int, default=16, help="users also sent to /v1/recommendations and openai")
    parser.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip the second baseline pass (run-to-run mismatch floor)",
    )
    parser.add_argument(
        "--no-unconstrained-pass",
        dest="unconstrained_pass",
        action="store_false",
        help="skip the baseline pass without the constraint (the constraint's cost per step)",
    )
    parser.add_argument(
        "--reference-acceptance",
        default=None,
        help="acceptance JSON of benchmarks.bench_acceptance for the same draft and users: "
        "the reference decoder's acceptance beside vLLM's",
    )
    parser.add_argument("--port", type=int, default=8021)
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--log-dir", default="/tmp")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="vllm_lossless", help="stem of the JSON / Markdown files written")
    parser.add_argument("vllm_args", nargs="*", help="extra `vllm serve` arguments for both servers (after --)")
    args = parser.parse_args(argv)
    if args.render:
        render(args.render, args.reference_acceptance, args.note)
        return 0
    missing = [f"--{name}" for name in ("target", "draft", "dataset") if getattr(args, name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --render JSON)")

    catalog = ItemCatalog.load(args.target)
    data = load_dataset(args.dataset)
    max_history = read_max_history(Path(args.target)) or 20
    samples = data.eval_samples("test", max_history)[: args.users]
    if not samples:
        raise SystemExit(f"no test users in {args.dataset}")
    prompts = [catalog.render_prompt(sample.history) for sample in samples]
    users = [sample.user for sample in samples]
    max_tokens = args.list_items * (catalog.num_slots + 1) + 1  # as the /v1/recommendations route asks
    xargs = {"padrec_constraint": 1, "padrec_num_items": args.list_items, "padrec_no_repeat": 1}
    out = Path(args.out)

    num_drafts = args.num_speculative_tokens or draft_steps(read_config(draft_folder(args.draft)))  # K
    speculative_flags = ["--speculative-model", args.draft]
    if args.num_speculative_tokens is not None:
        speculative_flags += ["--num-speculative-tokens", str(args.num_speculative_tokens)]
    common = (catalog, samples, prompts, max_tokens, xargs)
    runs = {"baseline": serve_and_measure(args, "baseline", [], args.port, *common)}
    try:
        runs["speculative"] = serve_and_measure(args, "speculative", speculative_flags, args.port + 1, *common)
    except Exception as error:  # keep the baseline numbers: write them with the reason
        base = runs["baseline"]
        record = {
            "users": len(samples),
            "error": f"speculative server: {type(error).__name__}: {error}",
            "speculative_flags": speculative_flags,
            "vllm_args": args.vllm_args,
            "baseline": {k: v for k, v in base.items() if k not in ("answers", "control")},
        }
        write_results(out, args.name, record)
        print(json.dumps(record, indent=2))
        return 1
    base, spec = runs["baseline"], runs["speculative"]
    lossless = compare(base["answers"], spec["answers"], users, catalog)
    control = compare(base["answers"], base["control"]["answers"], users, catalog) if "control" in base else None
    quality = {name: list_quality(catalog, run["answers"], args.list_items) for name, run in runs.items()}
    summary_keys = (
        "seconds",
        "output_tokens",
        "tokens_per_second",
        "requests_per_second",
        "latency_p50_ms",
        "latency_p99_ms",
        "max_running_requests",
        "running_readings",
        "engine_steps",
        "mean_step_ms",
        "spec_decode",
        "server_startup_seconds",
        "server_log",
        "recommendations_endpoint",
        "openai_client",
    )
    record = {
        "target": args.target,
        "draft": args.draft,
        "dataset": data.name,
        "users": len(samples),
        "list_items": args.list_items,
        "max_history": max_history,
        "max_tokens": max_tokens,
        "vllm_xargs": xargs,
        "concurrency": args.concurrency,
        # the most requests either server ran at once (vllm:num_requests_running, polled every 0.25 s)
        "concurrent_requests": max((r["max_running_requests"] or 0 for r in (base, spec)), default=0),
        "mismatched_users": lossless["mismatched_users"],
        "control_mismatched_users": control["mismatched_users"] if control else None,
        # top-2 log-probability gap at each mismatch's first different token (both runs; the larger)
        "max_margin_at_first_difference": lossless["max_margin_at_first_difference"],
        "control_max_margin_at_first_difference": control["max_margin_at_first_difference"] if control else None,
        "first_difference_margins": lossless["first_difference_margins"][:50],
        "invalid_items": sum(q["invalid_items"] for q in quality.values()),
        "duplicate_items": sum(q["duplicate_items"] for q in quality.values()),
        "acceptance_length": spec["spec_decode"]["acceptance_length"],
        "per_position_acceptance": spec["spec_decode"]["per_position_acceptance"],
        # against the faster baseline pass (the control pass, when run, is a second timing of the same server)
        "speedup_tokens_per_second": round(spec["tokens_per_second"] / baseline_tokens_per_second(base), 3),
        "quality": quality,
        "mismatch_examples": lossless["examples"],
        "control_mismatch_examples": control["examples"] if control else None,
        "runs": {name: {k: run[k] for k in summary_keys if k in run} for name, run in runs.items()},
        "vllm_args": args.vllm_args,
        "speculative_flags": speculative_flags,
        "num_speculative_tokens": num_drafts,
    }
    if control:
        record["runs"]["baseline_control"] = {k: base["control"][k] for k in summary_keys if k in base["control"]}
    if "unconstrained" in base:
        free = base["unconstrained"]
        record["runs"]["baseline_unconstrained"] = {k: free[k] for k in summary_keys if k in free}
        fastest = min(baseline_passes(base), key=lambda p: p["mean_step_ms"] or float("inf"))
        record["constraint_cost"] = constraint_cost(fastest, free)
    if args.reference_acceptance:
        record["reference_acceptance"] = reference_acceptance(
            args.reference_acceptance, args.draft, num_drafts, len(samples), args.list_items
        )
    write_results(out, args.name, record, markdown(record))
    bulky = ("runs", "mismatch_examples", "control_mismatch_examples")
    print(json.dumps({k: v for k, v in record.items() if k not in bulky}, indent=2))
    floor = record["control_mismatched_users"] or 0
    ok = record["mismatched_users"] <= floor and record["invalid_items"] == 0 and record["duplicate_items"] == 0
    return 0 if ok else 1


def render(json_path: str, reference: str | None = None, note: str | None = None) -> None:
    """Rewrite ``<name>.md`` from ``<name>.json``; attach the reference decoder's acceptance (an
    acceptance JSON for the same head and users) and a note to the JSON first, when given."""
    path = Path(json_path)
    record = json.loads(path.read_text())
    if reference:
        spec = record["runs"]["speculative"]["spec_decode"]
        num_drafts = record.get("num_speculative_tokens") or spec["num_draft_tokens"] // spec["num_drafts"]
        record["reference_acceptance"] = reference_acceptance(
            reference, record["draft"], num_drafts, record["users"], record["list_items"]
        )
    if note:
        record["note"] = note
    write_results(path.parent, path.stem, record if reference or note else None, markdown(record))


def reference_acceptance(path: str, draft: str, gamma: int, users: int, list_items: int) -> dict:
    """The plain-torch reference decoder's acceptance for the same head, γ, users and list length
    (a ``bench_acceptance`` JSON), in its own definition and in vLLM's: 1 + accepted / rounds, and
    accepted at step k / rounds. vLLM also proposes γ drafts in a list's last round (the reference
    stops at ``</s>``) and counts drafts the target agrees with after ``</s>`` as accepted."""
    data = json.loads(Path(path).read_text())
    settings = data["settings"]
    wanted = dict(users=users, split="test", num_items=list_items)
    differ = {k: (settings.get(k), v) for k, v in wanted.items() if settings.get(k) != v}
    if differ:
        return {"json": path, "error": f"not the same requests (reference, vLLM): {differ}"}
    served = {os.path.realpath(draft), os.path.realpath(os.path.join(draft, "draft"))}  # as draft_folder reads it
    for r in data["records"]:
        if r["gamma"] == gamma and os.path.realpath(r["draft"]) in served:
            stats = SpeculationStats.from_dict(r["stats"])
            return {
                "json": path,
                "method": r["method"],
                "gamma": gamma,
                "users": r["users"],
                "mismatches": r["mismatches"],
                "tokens_per_round": round(r["acceptance_length"], 4),
                "vllm_acceptance_length": round(stats.vllm_acceptance_length, 4),
                "vllm_per_position_acceptance": [round(a, 4) for a in stats.vllm_acceptance_by_position],
            }
    return {"json": path, "error": f"no record for draft {draft} at γ = {gamma}"}


def baseline_passes(base: dict) -> list[dict]:
    """The baseline server's timed constrained passes: the first and, when run, the control."""
    return [base] + ([base["control"]] if "control" in base else [])


def baseline_tokens_per_second(base: dict) -> float:
    """The faster of the baseline server's passes: speedups are not flattered by a pass that paid a
    one-time cost."""
    return max(p["tokens_per_second"] for p in baseline_passes(base))


def constraint_cost(constrained: dict, free: dict) -> dict:
    """Engine step time with and without the catalog masks (no speculation, same requests and concurrency)."""
    on, off = constrained.get("mean_step_ms"), free.get("mean_step_ms")
    return {
        "constrained_step_ms": on,
        "unconstrained_step_ms": off,
        "difference_ms": round(on - off, 3) if on is not None and off is not None else None,
        "relative": round(on / off - 1, 4) if on and off else None,
        "note": "baseline server (no draft), the same concurrency, its faster constrained pass; "
        "the unconstrained pass sends ignore_eos so lists have the same length",
    }


def reference_rows(reference: dict | None) -> list[str]:
    """Markdown rows: the reference decoder's acceptance beside vLLM's (``reference_acceptance``)."""
    if not reference:
        return []
    if "error" in reference:
        return [f"| reference decoder's acceptance | {reference['error']} |"]
    return [
        f"| reference decoder, same head and users: 1 + accepted / rounds (its tokens per round) | "
        f"{reference['vllm_acceptance_length']} ({reference['tokens_per_round']}; {reference['mismatches']} "
        f"lists differ from its plain greedy) |",
        f"| reference decoder: per-position acceptance | {reference['vllm_per_position_acceptance']} |",
    ]


def markdown(r: dict) -> str:
    rows = []
    for name, run in r["runs"].items():
        spec = run.get("spec_decode") or {}
        acc = spec.get("acceptance_length")
        rows.append(
            f"| {name} | {run['tokens_per_second']} | {run['requests_per_second']} | {run['latency_p50_ms']} | "
            f"{run['latency_p99_ms']} | {run['max_running_requests']} | {run.get('mean_step_ms')} | "
            f"{acc if acc is not None else '-'} |"
        )
    endpoint = r["runs"]["speculative"].get("recommendations_endpoint") or {}
    oa = r["runs"]["speculative"].get("openai_client")
    openai_cell = f"{oa['same_tokens_as_threaded_pass']} of {oa['users']}" if oa else "openai not installed"
    lines = [
        "# Speculative decoding on `vllm serve`: lossless check",
        "",
        *([f"Note: {r['note']}", ""] if r.get("note") else []),
        f"Target `{r['target']}`, draft `{r['draft']}`, dataset {r['dataset']}: {r['users']} test users, "
        f"lists of {r['list_items']} items (greedy, catalog-constrained via `vllm_xargs` {r['vllm_xargs']}), "
        f"{r['concurrency']} client threads; `vllm serve` flags {r['vllm_args']}.",
        "",
        "| check | value |",
        "|---|---|",
        f"| users whose list differs with the draft (token for token) | {r['mismatched_users']} |",
        f"| control: users whose list differs between two baseline passes | {r['control_mismatched_users']} |",
        f"| largest top-2 log-prob gap at a first difference, draft / control | "
        f"{r.get('max_margin_at_first_difference')} / {r.get('control_max_margin_at_first_difference')} |",
        f"| invalid items (both servers) | {r['invalid_items']} |",
        f"| duplicate items within a list (both servers) | {r['duplicate_items']} |",
        f"| most requests running at once (server gauge) | {r['concurrent_requests']} |",
        f"| mean acceptance length (1 + accepted / drafts) | {r['acceptance_length']} |",
        f"| per-position acceptance | {r['per_position_acceptance']} |",
        *reference_rows(r.get("reference_acceptance")),
        f"| output tokens/s, speculative / baseline (the faster baseline pass) | {r['speedup_tokens_per_second']} |",
        f"| engine step ms, baseline constrained / unconstrained | "
        f"{(r.get('constraint_cost') or {}).get('constrained_step_ms')} / "
        f"{(r.get('constraint_cost') or {}).get('unconstrained_step_ms')} |",
        f"| `/v1/recommendations`: same items as `/v1/completions` | {endpoint.get('same_items_as_completions')} of "
        f"{endpoint.get('users')} |",
        f"| `/v1/recommendations` with an unknown item id | {endpoint.get('unknown_item_reply')} |",
        f"| OpenAI client: same tokens | {openai_cell} |",
        "",
        "| pass | output tokens/s | requests/s | p50 latency ms | p99 latency ms | max running | step ms "
        "| acceptance length |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    for title, examples in (
        ("with the draft", r["mismatch_examples"]),
        ("between the two baseline passes", r["control_mismatch_examples"]),
    ):
        if examples:
            lines += [
                f"Lists that differ {title} (first examples):",
                "",
                "| user | first different token | baseline items | other items |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {e['user']} | {e['first_different_token']} | {' '.join(e['reference_items'])} | "
                f"{' '.join(e['other_items'])} |"
                for e in examples
            ]
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
