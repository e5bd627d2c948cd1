"""Top-K recommendation: latency, throughput, quality and exactness of three ways to get a user's K best items.

Modes (each a configuration per ``--dtypes`` entry, each run in a fresh process with its own
``VLLM_CACHE_ROOT`` under ``--cache-root``, except that ``greedy_floor`` runs in the ``engine`` mode's process
and engine where both run in a dtype: one engine start-up less, 80-90 s on the bench target):

    reference          ``decoding.beam_search_items`` on the Hugging Face model (plain torch, constrained):
                       the answer the others are compared with
    vllm_beam_search   vanilla vLLM's ``LLM.beam_search`` (front-end beam search, one request per beam per
                       token, unconstrained: it takes no logits processors); a beam that is not a catalog
                       item counts as an invalid item. ``max_logprobs`` is raised to 2 * max K (it asks for
                       2K log-probabilities per beam and step)
    engine             ``topk.offline.recommend_topk`` (the beam search inside the engine)
    greedy_floor       not a top-K: one greedy item (L tokens, unconstrained, ``LLM.generate``) per user in
                       the engine mode's vLLM engine (its own, when that mode does not run), whatever K.
                       Any beam search in the engine runs at least these L steps, so its latency is the
                       floor the others are measured against; its quality columns are those of its one item
    strict             the engine's beam search in drafted rounds (issue 13): the ``--draft`` head drafts
                       ``--gamma`` tokens per beam row (``--draft-beams`` N, ``padrec.topk_draft_beams``), the
                       strict rule verifies them, so its answers are the engine's; with ``--draft`` only (the
                       default modes add it when a draft is given). Its records carry ``draft_beams``,
                       ``gamma`` and ``objective`` (``--objective``, the head's training objective)
    relaxed            the same rounds verified by AtSpeed's relaxed sampling (not lossless); needs
                       ``--draft-beams`` > 1 (the draft's own beam search keeps the log-probs it reads); in
                       the strict mode's engine when both run (the rule is a request setting)

For each K of ``--ks`` and each configuration, two passes over the test users (the last H items of
the recipe as history, no exclusions), after a warm-up (``--warmup-calls`` one-user calls before a mode's
first pass, then one call of each batch shape before each K's):

- latency: ``--users-latency`` users one request at a time (batch_size 1): p50 / p99 of the request
  latency, users per second (not in float32: those configurations are the equality check's, and time
  only the throughput pass);
- throughput: ``--users`` users (float32: ``max(--users, --users-equal)``, the equality check's) in batches
  of ``--concurrency`` (batch_size =
  concurrency): every batch of users is one call, which returns when all its users are answered, so a
  user's latency is its batch's; users per second over the whole pass. Where a K's warm-up call of
  ``--concurrency`` users took longer than ``--slow-call-seconds`` (vLLM's beam search from K = 50 on the
  bench target: 18 and 56 s a call), the pass times one call of ``--concurrency`` users instead, except in
  float32. vllm_beam_search puts a batch's
  prompts in one ``LLM.beam_search`` call: ``LLM`` is not thread-safe, and one call is how vLLM runs
  several beam searches at once offline (each of its steps sends every live beam of every prompt to
  the engine together). The engine gets the batch's requests queued together (``LLM.enqueue``).

Each record: Recall@K and NDCG@K on the pass's users (``target.evaluate.recall_ndcg``; an invalid item
is a miss), ``invalid_items`` (returned items that are not catalog items), ``duplicate_items``,
``short_lists`` (fewer than K items), and, for float32 throughput records of the modes other than
reference, ``equal_to_reference``: of the first ``--users-equal`` users, how many got the reference's
float32 items in the reference's order (``users_compared`` says of how many), with how far its scores
are from the reference's (``max_score_difference``, ``differing_same_scores``, ``first_difference_ranks``).
Float32 configurations run Triton's float32 dots in IEEE precision (``--triton-f32``, ``TRITON_F32_DEFAULT``):
vLLM's float32 attention is a Triton kernel whose dots are TF32 by Triton's default. On the first GPU run,
in TF32, the engine's scores were up to 0.004 from the reference's and 9 of 64 users at K = 20 had items
in another order from their first difference on; in IEEE precision all 64 were equal (2026-12-01).
``--own-process-modes`` runs those vLLM modes once more, at ``--own-process-ks``, with the engine core in a
process of its own as vLLM runs by default (``engine_core`` says where each record's ran; the rest run it in
the benchmark's process, where the engine steps, KV blocks and profiles are read). The goals' speed verdicts
read the own-process records where every compared mode has one (``testing/topk_goals.py``).
Each record of the vLLM modes says how many engine steps a call took (``engine_steps_per_call``) and how
many of them ran the model (``forwards_per_call``: with async scheduling the last output comes one step
later, in a step without a forward; at one request at a time also ``target_forwards_per_request``). A drafted
round that is accepted ends its request a step early, but the step after it still runs a forward, so drafting's
acceptance shows in the engine steps, not in the forwards (``testing/atspeed_goals.py``). Each engine record
says the KV blocks a request held (``kv_blocks_per_request``; of them the prompt's, stored
once whatever K: ``prompt_blocks_per_request``). ``--profile`` writes Python's and the torch profiler's
view of one call.

    python -m benchmarks.bench_topk --target /tmp/padrec/bench/checkpoint \\
        --dataset /tmp/padrec/data/beauty_atspeed --out benchmarks/results

Writes ``topk_<dataset>.json`` / ``.md`` / ``.png`` (p50 latency by K per mode) in ``--out``; exits 1
when a configuration failed. ``--render JSON`` rebuilds the Markdown and the plot on any machine.
Needs a GPU and vLLM (``--help`` and ``--render`` do not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.draft.config import OBJECTIVES
from vllm_padrec.target.evaluate import recall_ndcg
from vllm_padrec.testing.atspeed_goals import atspeed_goals, draft_text
from vllm_padrec.testing.bench_driver import (
    add_run_options,
    cell,
    command_line,
    earlier_mark,
    earlier_records,
    earlier_runs_markdown,
    failures_markdown,
    json_object,
    merged,
    rerender,
    run_configuration,
    tensor_parallel_size,
    write_progress,
)
from vllm_padrec.testing.goals import goals_markdown
from vllm_padrec.testing.python_profile import OUR_CODE, busiest, hotspot_table, python_profile
from vllm_padrec.testing.stats import percentile
from vllm_padrec.testing.timing import EngineSteps, in_process_engine_core, in_process_model_runner
from vllm_padrec.testing.topk_goals import IN_PROCESS, OWN_PROCESS, placement, topk_goals

UNDRAFTED_MODES = ("reference", "vllm_beam_search", "engine", "greedy_floor")
# issue 13: the engine's beam search in drafted rounds of a --draft head, verified by the strict or the relaxed rule
DRAFTED_MODES = ("strict", "relaxed")
MODES = UNDRAFTED_MODES + DRAFTED_MODES
DEFAULT_KS = (1, 5, 10, 20, 50, 100)
EXACT_DTYPE = "float32"  # equal_to_reference is checked in this dtype only
# Triton's float32 tl.dot multiplies in TF32 unless TRITON_F32_DEFAULT says otherwise (triton/language/core.py,
# `dot`), and vLLM's float32 attention is a Triton kernel (TRITON_ATTN): the suspected cause of engine scores
# that differed from the reference's in the third decimal. The float32 configurations run with --triton-f32
# (default ieee).
TRITON_F32_ENV = "TRITON_F32_DEFAULT"
# (histories, K) -> per user its K (item, score) pairs, best first; item None: not a catalog item; score None:
# not reported (a score is the sum of the item's full-vocabulary log-probabilities)
Ranked = list[tuple[int | None, float | None]]
# a differing user whose scores, rank by rank, are within this of the reference's (relative to the score, at
# least 1) got the same scores with near-tied items in another order, rather than other scores
SCORE_TOLERANCE = 1e-4


# -- answers: items, their quality, their equality --------------------------------------------------------------
def item_of_tokens(catalog: ItemCatalog, tokens: Sequence[int]) -> int | None:
    """The catalog item whose L code tokens ``tokens`` starts with; None when it is not one (a short beam,
    a token of the wrong slot or not a code, or codes that name no item)."""
    L = catalog.num_slots
    return catalog.items_of_tokens([list(tokens[:L])])[0] if len(tokens) >= L else None


def beam_search_items_of(catalog: ItemCatalog, output, prompt_length: int) -> list[int | None]:
    """The items of one ``vllm``'s ``BeamSearchOutput``, best first: each sequence's tokens after the
    prompt (its ``tokens`` hold the prompt too), None for a beam that is not a catalog item."""
    return [item_of_tokens(catalog, sequence.tokens[prompt_length:]) for sequence in output.sequences]


def list_quality(lists: Sequence[Sequence[int | None]], k: int) -> dict[str, int]:
    """Invalid items (None), repeated valid items within a user's list, and lists of fewer than K items."""
    invalid = sum(item is None for items in lists for item in items)
    duplicates = sum(len(valid) - len(set(valid)) for valid in ([i for i in items if i is not None] for items in lists))
    short = sum(len(items) < k for items in lists)
    return {"invalid_items": invalid, "duplicate_items": duplicates, "short_lists": short}


def count_equal(lists: Sequence[Sequence[int | None]], reference: Sequence[Sequence[int | None]]) -> int:
    """Users (by position) whose items and their order are the reference's."""
    return sum(list(a) == list(b) for a, b in zip(lists, reference))


def score_agreement(ranked: Sequence[Ranked], reference: Sequence[Ranked]) -> dict:
    """How far the scores of ``ranked`` are from the reference's, rank by rank, over the users (by position):
    ``max_score_difference`` (None when a side reports no scores), and of the users whose items differ,
    ``differing_same_scores``: those whose scores all lie within ``SCORE_TOLERANCE`` of the reference's (tied
    or near-tied items in another order: the float32 arithmetic of another batch shape, not another search)
    and ``first_difference_ranks``: where each differing user's items first differ (0 = the best item)."""
    largest, same_scores, first_ranks = 0.0, 0, []
    for ours, theirs in zip(ranked, reference):
        pairs = list(zip([s for _, s in ours], [s for _, s in theirs]))
        if len(ours) != len(theirs) or any(a is None or b is None for a, b in pairs):
            return {"max_score_difference": None, "differing_same_scores": None, "first_difference_ranks": None}
        differences = [abs(a - b) for a, b in pairs]
        largest = max([largest, *differences])
        items, wanted = [i for i, _ in ours], [i for i, _ in theirs]
        if items != wanted:
            first_ranks.append(next(r for r, (a, b) in enumerate(zip(items, wanted)) if a != b))
            same_scores += all(d <= SCORE_TOLERANCE * max(1.0, abs(b)) for d, (_, b) in zip(differences, pairs))
    return {
        "max_score_difference": float(f"{largest:.3g}"),
        "differing_same_scores": same_scores,
        "first_difference_ranks": first_ranks,
    }


def pass_record(
    mode: str,
    dtype: str,
    k: int,
    batch_size: int,
    call_seconds: Sequence[float],  # wall time of each call; a call answers batch_size users (the last: fewer)
    lists: Sequence[Sequence[int | None]],  # per user of the pass: its K items, best first
    targets: Sequence[Sequence[int]],  # per user: the items the user went on to interact with
) -> dict:
    """One pass's record: latency percentiles (a user's latency is its call's), users per second,
    Recall@K / NDCG@K (an invalid item is a miss) and the lists' quality."""
    scored = recall_ndcg([[-1 if i is None else i for i in items] for items in lists], targets, k)
    p50, p99 = (percentile(list(call_seconds), q, method="nearest") for q in (50, 99))
    total = sum(call_seconds)
    return {
        "mode": mode,
        "dtype": dtype,
        "k": k,
        "batch_size": batch_size,
        "users": len(lists),
        "p50_ms": None if p50 is None else round(1000 * p50, 3),
        "p99_ms": None if p99 is None else round(1000 * p99, 3),
        "users_per_s": round(len(lists) / total, 2) if total else None,
        "recall_at_k": round(scored[f"recall@{k}"], 5),
        "ndcg_at_k": round(scored[f"ndcg@{k}"], 5),
        **list_quality(lists, k),
        "equal_to_reference": None,  # set by attach_equality (float32 throughput records)
        "users_compared": None,
        "max_score_difference": None,  # these three: score_agreement, set by attach_equality too
        "differing_same_scores": None,
        "first_difference_ranks": None,
        "engine_steps_per_call": None,  # set by run_config: engine steps per call (vLLM modes)
        "forwards_per_call": None,  # set by run_config: of them, the steps that ran the model (vLLM modes)
        "kv_blocks_per_request": None,  # set by run_config (engine mode): R's blocks + its beams' private blocks
        "prompt_blocks_per_request": None,  # of them, the prompt's (stored once, whatever K)
    }


def attach_equality(results: Sequence[dict], concurrency: int) -> None:
    """Set ``equal_to_reference`` / ``users_compared`` and the ``score_agreement`` fields on the float32
    throughput records of the top-K modes other than reference (not greedy_floor, which answers one item),
    from the configurations' ``equal_lists`` ({K: the (item, score) lists of the first --users-equal users})."""
    reference = next((r for r in results if r["mode"] == "reference" and r["dtype"] == EXACT_DTYPE), None)
    if reference is None:
        return
    for result in results:
        if result["mode"] in ("reference", "greedy_floor") or result["dtype"] != EXACT_DTYPE:
            continue
        for record in result["records"]:
            wanted = reference["equal_lists"].get(str(record["k"]))
            lists = result["equal_lists"].get(str(record["k"]))
            if record["batch_size"] != concurrency or wanted is None or lists is None:
                continue
            n = min(len(wanted), len(lists))
            items = [[item for item, _ in ranked] for ranked in lists[:n]]
            record["equal_to_reference"] = count_equal(items, [[item for item, _ in r] for r in wanted[:n]])
            record["users_compared"] = n
            record |= score_agreement(lists[:n], wanted[:n])


# -- one configuration (child process) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranker:
    """One mode's ranking, ``rank(histories, K)`` -> per user its K (item, score) pairs, best first; and, for the
    vLLM modes, its engine's step counter and, for the engine, the admission ledger (KV blocks per request)."""

    rank: Callable[[list[list[int]], int], list[Ranked]]
    steps: EngineSteps | None = None
    beam_rows: object | None = None  # topk.admission.BeamRows of the in-process engine's scheduler
    llm: object | None = None  # the mode's vllm.LLM, which a mode sharing its engine reuses (SHARES_ENGINE)


def reference_ranker(args, catalog: ItemCatalog, max_history: int, llm=None) -> Ranker:
    import torch

    from vllm_padrec.constraint import ListConstraint
    from vllm_padrec.decoding import beam_search_items
    from vllm_padrec.target.model import load_checkpoint

    model = load_checkpoint(args.target, device="cuda", dtype=getattr(torch, args.one_dtype)).model
    constraint = ListConstraint(catalog, num_items=1, device="cuda")  # built once, outside the timed calls

    def rank(histories, k):
        ranked = beam_search_items(
            model, catalog, histories, k, constraint, batch_size=len(histories), max_history=max_history
        )
        torch.cuda.synchronize()
        return [[(item, float(score)) for item, score in items] for items in ranked]

    return Ranker(rank)


def vllm_ranker(args, catalog: ItemCatalog, max_history: int, llm=None) -> Ranker:
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

    llm = LLM(**engine_arguments(args), max_logprobs=2 * max(args.ks))

    def rank(histories, k):
        prompts = [catalog.render_prompt(h, max_history) for h in histories]
        params = BeamSearchParams(beam_width=k, max_tokens=catalog.num_slots)
        outputs = llm.beam_search([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        return [
            list(zip(beam_search_items_of(catalog, out, len(p)), (s.cum_logprob for s in out.sequences), strict=True))
            for out, p in zip(outputs, prompts)
        ]

    return Ranker(rank, engine_steps(llm))


def engine_steps(llm) -> EngineSteps | None:
    """The engine step counter of an in-process engine; None for one in its own process (the front end's
    ``step`` calls there are output reads, not engine steps)."""
    return EngineSteps(llm) if in_process_model_runner(llm) is not None else None


def engine_ranker(args, catalog: ItemCatalog, max_history: int, llm=None, verification: str | None = None) -> Ranker:
    """The beam search inside the engine; with a ``verification`` rule, in drafted rounds of ``--draft``."""
    from vllm import LLM

    from vllm_padrec.topk.offline import recommend_topk, topk_engine_args

    if llm is None:
        drafted = {} if verification is None else draft_arguments(args)
        sized = topk_engine_args(max(args.ks), args.concurrency, args.max_num_seqs, **drafted)
        given = engine_arguments(args)
        # a CUDA-graph limit raised for drafted rounds, under whatever --engine-args sets (which wins)
        compilation = {**sized.get("compilation_config", {}), **given.get("compilation_config", {})}
        llm = LLM(**{**given, **sized, **({"compilation_config": compilation} if compilation else {})})

    def rank(histories, k):
        ranked = recommend_topk(llm, catalog, histories, k, max_history=max_history, verification=verification)
        return [[(item, float(score)) for item, score in items] for items in ranked]

    core = in_process_engine_core(llm)
    beam_rows = core.scheduler.padrec_beam_rows if core is not None else None
    return Ranker(rank, engine_steps(llm), beam_rows, llm)


def strict_ranker(args, catalog: ItemCatalog, max_history: int, llm=None) -> Ranker:
    return engine_ranker(args, catalog, max_history, llm, verification="strict")


def relaxed_ranker(args, catalog: ItemCatalog, max_history: int, llm=None) -> Ranker:
    """Relaxed rounds in ``llm`` (the strict mode's, when both run in one process: the rule is a request
    setting, the server the same) or an engine of its own."""
    return engine_ranker(args, catalog, max_history, llm, verification="relaxed")


def draft_arguments(args) -> dict:
    """``topk_engine_args``' drafted-round arguments from the options."""
    return {"draft": args.draft, "draft_beams": args.draft_beams, "gamma": args.gamma}


def drafting_fields(args, mode: str, batch_size: int, forwards: float | None) -> dict:
    """A record's drafting columns: N, gamma and the head's objective for a drafted mode (None otherwise), and
    the target forwards one request took (one request at a time only)."""
    drafted = mode in DRAFTED_MODES
    return {
        "draft_beams": args.draft_beams if drafted else None,
        "gamma": args.gamma if drafted else None,
        "objective": args.objective if drafted else None,
        "target_forwards_per_request": forwards if batch_size == 1 else None,
    }


def greedy_floor_ranker(args, catalog: ItemCatalog, max_history: int, llm=None) -> Ranker:
    """One greedy item per user, in ``llm`` (the engine mode's, when both run in one process) or its own."""
    from vllm import LLM, SamplingParams

    llm = llm if llm is not None else LLM(**engine_arguments(args))
    params = SamplingParams(temperature=0.0, max_tokens=catalog.num_slots, ignore_eos=True, logprobs=0)

    def rank(histories, k):
        prompts = [{"prompt_token_ids": catalog.render_prompt(h, max_history)} for h in histories]
        outputs = llm.generate(prompts, [params] * len(prompts), use_tqdm=False)
        return [
            [(item_of_tokens(catalog, out.outputs[0].token_ids), float(out.outputs[0].cumulative_logprob or 0.0))]
            for out in outputs
        ]

    return Ranker(rank, engine_steps(llm), llm=llm)


def kv_blocks(admissions) -> dict:
    """The KV blocks of the top-K requests admitted during a pass (``BeamRows.admitted``), per request."""
    if not admissions:
        return {"kv_blocks_per_request": None, "prompt_blocks_per_request": None}
    n = len(admissions)
    return {
        "kv_blocks_per_request": round(sum(a.blocks for a in admissions) / n, 2),
        "prompt_blocks_per_request": round(sum(a.prompt_blocks for a in admissions) / n, 2),
    }


def dot_precision(dtype: str, args) -> dict[str, str]:
    """The environment that sets Triton's float32 dot precision for a float32 configuration (TRITON_F32_ENV)."""
    return {TRITON_F32_ENV: args.triton_f32} if dtype == EXACT_DTYPE else {}


def engine_arguments(args) -> dict:
    return {
        "model": args.target,
        "dtype": args.one_dtype,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs,
        **args.engine_args,
    }


# a mode that runs in the engine of another mode when both run in one dtype: one engine start-up (torch.compile
# and CUDA graph capture, 80-90 s on the bench target) less; the floor measured in the very engine it bounds, and
# relaxed rounds (a request setting) in the strict mode's server, once per head
SHARES_ENGINE = {"greedy_floor": "engine", "relaxed": "strict"}

RANKERS: dict[str, Callable] = {
    "reference": reference_ranker,
    "vllm_beam_search": vllm_ranker,
    "engine": engine_ranker,
    "greedy_floor": greedy_floor_ranker,
    "strict": strict_ranker,
    "relaxed": relaxed_ranker,
}


def timed_calls(ranker: Ranker, histories: list[list[int]], k: int, batch_size: int):
    """``histories`` in calls of ``batch_size``: (each call's wall seconds, every user's (item, score) pairs,
    the engine steps per call and the model forwards per call: None for a mode without an engine, or
    without an in-process engine core for the forwards)."""
    counter = ranker.steps
    steps, forwards = (counter.count, counter.forwards) if counter else (0, None)
    seconds, lists = [], []
    for start in range(0, len(histories), batch_size):
        started = time.perf_counter()
        lists += ranker.rank(histories[start : start + batch_size], k)
        seconds.append(time.perf_counter() - started)
    steps = counter.count - steps if counter else 0
    forwards = counter.forwards - forwards if counter and forwards is not None else None
    per_call = len(seconds)
    return (
        seconds,
        lists,
        round(steps / per_call, 2) if steps else None,
        round(forwards / per_call, 2) if forwards is not None else None,
    )


def profiled_passes(args, latency_users: list, throughput_users: list) -> list[tuple[int, list]]:
    """(batch size, users) of the profiled calls: one request, and ``--concurrency`` users unless
    ``--profile-one-request``."""
    passes = [(1, latency_users)]
    return passes if args.profile_one_request else [*passes, (args.concurrency, throughput_users)]


def profile_call(
    rank: Callable[[list[list[int]], int], list[Ranked]], histories: list[list[int]], k: int, path: Path
) -> None:
    """Two calls, one under Python's profiler (every Python function: the engine runs in this process) and one
    under the torch profiler (tensor operations and GPU kernels); the busiest of each as text at ``path``.

    A call of the same users goes first, unprofiled: a call's finished requests (and an engine top-K request's
    beams) leave the runner in the next call's first step, so the profiled call would otherwise remove the pass
    before it (6,464 rows after 64 users at K = 100: 26 of the 76 ms of a one-user call on the H200)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    rank(histories, k)
    started = time.perf_counter()
    _, functions = python_profile(rank, histories, k)
    torch.cuda.synchronize()
    python_seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        rank(histories, k)
        torch.cuda.synchronize()
    averages = prof.key_averages()
    tables = [averages.table(sort_by=key, row_limit=30) for key in ("self_cpu_time_total", "self_cuda_time_total")]
    header = (
        f"{len(histories)} users, K = {k}; the call under Python's profiler took {1000 * python_seconds:.1f} ms\n\n"
    )
    python_tables = (
        "Most time of their own:\n\n"
        + hotspot_table(busiest(functions, "self_ms"))
        + "\nvLLM's and the project's functions with the most time including callees:\n\n"
        + hotspot_table(busiest(functions, "total_ms", limit=60, within=OUR_CODE))
    )
    path.write_text(header + python_tables + "\n\n" + "\n\n".join(tables))


def run_config(args) -> list[dict]:
    """One configuration, in this process: each mode of ``--one`` in turn (a mode that shares the engine of the
    one before it, SHARES_ENGINE, reuses its ``LLM``), each with its passes over every K; a result per mode."""
    # the engine core in this process (steps, KV blocks and profiles are read from it), or in its own
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if args.one_engine_core == OWN_PROCESS else "0"
    os.environ.setdefault("VLLM_PLUGINS", "padrec")
    from vllm_padrec.data import load_dataset
    from vllm_padrec.integration.recommendation_service import read_max_history

    catalog = ItemCatalog.load(args.target)
    max_history = read_max_history(Path(args.target)) or 20
    samples = load_dataset(args.dataset).eval_samples("test", max_history)
    results, llm = [], None
    for mode in args.one:
        started = time.perf_counter()
        ranker = RANKERS[mode](args, catalog, max_history, llm if SHARES_ENGINE.get(mode) in args.one else None)
        llm = ranker.llm
        results.append(measure(args, mode, ranker, samples, round(time.perf_counter() - started, 1)))
    return results


def measure(args, mode: str, ranker: Ranker, samples, startup: float) -> dict:
    """Every K's passes of one mode (module docstring), then its profiles: the mode's result."""
    dtype, rank = args.one_dtype, ranker.rank
    latency_users = samples[: args.users_latency]
    # float32 passes are the equality check's: at least --users-equal users; the others --users
    throughput_users = samples[: max(args.users, args.users_equal) if dtype == EXACT_DTYPE else args.users]
    # the float32 configurations are the equality check's: their one-at-a-time pass would time nothing the goals read
    passes = [(args.concurrency, throughput_users)]
    if dtype != EXACT_DTYPE:
        passes.insert(0, (1, latency_users))
    records, equal_lists = [], {}
    # a mode's first timed pass ran slow on the H200 (the engine at K = 1: p50 37 ms, 23-26 ms at K = 5-20; the
    # greedy floor 18.5 ms at K = 1, 14-16 ms from K = 10 on): warm every mode up with calls of its own first
    for _ in range(args.warmup_calls):
        rank([latency_users[0].history], args.ks[0])
    for k in args.ks:
        started = time.perf_counter()
        rank([s.history for s in throughput_users[: args.concurrency]], k)  # warm-up: both batch shapes
        warm_call_seconds = time.perf_counter() - started
        rank([latency_users[0].history], k)
        for batch, users in passes:
            if batch == args.concurrency and dtype != EXACT_DTYPE and warm_call_seconds > args.slow_call_seconds:
                users = users[: args.concurrency]  # one call (module docstring, --slow-call-seconds)
            if ranker.beam_rows is not None:
                ranker.beam_rows.admitted.clear()
            seconds, ranked, steps, forwards = timed_calls(ranker, [s.history for s in users], k, batch)
            lists = [[item for item, _ in r] for r in ranked]
            records.append(pass_record(mode, dtype, k, batch, seconds, lists, [s.targets for s in users]))
            records[-1]["engine_steps_per_call"] = steps
            records[-1]["forwards_per_call"] = forwards
            records[-1]["engine_core"] = None if mode == "reference" else args.one_engine_core  # the reference: none
            records[-1] |= drafting_fields(args, mode, batch, forwards)
            if ranker.beam_rows is not None:
                records[-1] |= kv_blocks(ranker.beam_rows.admitted)
            print(json.dumps(records[-1]), flush=True)
            if batch == args.concurrency and dtype == EXACT_DTYPE:
                equal_lists[str(k)] = ranked[: args.users_equal]
    if args.profile and args.one_engine_core == IN_PROCESS:  # Python's profiler sees an in-process engine only
        k = args.profile_k or max(args.ks)
        for batch, users in profiled_passes(args, latency_users, throughput_users):
            name = f"bench_topk_{mode}_{dtype}_profile_k{k}_b{batch}.txt"
            profile_call(rank, [s.history for s in users[:batch]], k, Path(args.work_dir) / name)
    result = {"mode": mode, "dtype": dtype, "engine_core": args.one_engine_core, "startup_seconds": startup}
    return result | {"records": records, "equal_lists": equal_lists}


# -- results ----------------------------------------------------------------------------------------------------
def mode_label(record: dict) -> str:
    """A record's or result's mode, with "own process" where its engine core ran in a process of its own."""
    return record["mode"] + (" (own process)" if record.get("engine_core") == OWN_PROCESS else "")


def markdown(payload: dict) -> str:
    lines = [
        f"# Top-K recommendation on {payload['dataset']}",
        "",
        f"Target `{payload['target']}`; {payload['device']}, {payload['date']}. batch_size 1: one request at a "
        f"time; batch_size {payload['concurrency']}: that many users per call (a user's latency is its call's). "
        f"Equal to reference: users whose items and order are the float32 reference's; of the others, those "
        f"whose scores match the reference's rank by rank (within {SCORE_TOLERANCE:g} relative) have tied or "
        "near-tied items in another order. Score diff: the largest difference from the reference's score at "
        "the same rank.",
        "",
        *([f"Note: {payload['note']}", ""] if payload.get("note") else []),
        *earlier_runs_markdown(payload["records"]),
        *goals_markdown(topk_goals(payload["records"], payload["concurrency"])),
        *drafted_goals_markdown(payload["records"]),
        "## Records",
        "",
        "| mode | dtype | K | batch_size | users | p50 ms | p99 ms | users/s | Recall@K | NDCG@K | invalid items "
        "| equal to reference | score diff | steps per call (forwards) | KV blocks per request (prompt) | drafts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in payload["records"]:
        equal = "-" if r["users_compared"] is None else f"{r['equal_to_reference']} / {r['users_compared']}"
        blocks = cell(r.get("kv_blocks_per_request"))
        if r.get("prompt_blocks_per_request") is not None:
            blocks += f" ({r['prompt_blocks_per_request']})"
        steps = cell(r.get("engine_steps_per_call"))
        if r.get("forwards_per_call") is not None:
            steps += f" ({r['forwards_per_call']})"
        differing = (r["users_compared"] or 0) - (r["equal_to_reference"] or 0)
        if differing and r.get("differing_same_scores") is not None:
            equal += f" ({r['differing_same_scores']} of {differing} others: same scores)"
        lines.append(
            f"| {mode_label(r)}{earlier_mark(r)} | {r['dtype']} | {r['k']} | {r['batch_size']} | {r['users']} | "
            f"{cell(r['p50_ms'])} | "
            f"{cell(r['p99_ms'])} | {cell(r['users_per_s'])} | {r['recall_at_k']} | {r['ndcg_at_k']} | "
            f"{r['invalid_items']} | {equal} | {cell(r.get('max_score_difference'))} | "
            f"{steps} | {blocks} | {drafts_cell(r)} |"
        )
    lines.append("")
    lines += failures_markdown(payload.get("errors", {}))
    return "\n".join(lines) + "\n"


def run_goals(records: list[dict], concurrency: int) -> list[dict]:
    """The payload's ``goals``: issue 12's, then issue 13's where the records hold drafted modes."""
    return topk_goals(records, concurrency) + atspeed_goals(records)


def drafted_goals_markdown(records: list[dict]) -> list[str]:
    """Issue 13's goals, where the run has drafted records."""
    goals = atspeed_goals(records)
    return goals_markdown(goals, issue=13) if goals else []


def drafts_cell(record: dict) -> str:
    """A drafted record's N, gamma and objective; ``-`` for the undrafted modes."""
    return "-" if record.get("draft_beams") is None else draft_text(record)


def plot(plt, payload: dict):
    """p50 latency at one request at a time by K, one line per mode, head, dtype and run (None: nothing
    measured)."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in payload["records"]:
        if r["batch_size"] == 1 and r["p50_ms"] is not None:
            head = "" if r.get("draft_beams") is None else f", {draft_text(r)}"
            label = f"{mode_label(r)}{earlier_mark(r)} ({r['dtype']}{head})"
            lines.setdefault(label, []).append((r["k"], r["p50_ms"]))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: three heads x two rules and the rest
    for i, (label, points) in enumerate(lines.items()):
        ks, ms = zip(*sorted(points))
        earlier, drafted = "(run of" in label, "N = " in label
        style = {"linestyle": "--" if earlier else "-", "marker": "s" if drafted else "o"}
        ax.plot(ks, ms, label=label, color=colors[i % len(colors)], **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("p50 latency, ms (one request at a time)")
    ax.set_title(f"Top-K latency by K ({payload['dataset']})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def render(json_path: str, note: str | None = None) -> None:
    """Rewrite the Markdown and the plot from a results JSON (with ``note`` attached to it, when given)."""

    def refresh(payload: dict) -> None:
        payload["goals"] = run_goals(payload["records"], payload["concurrency"])

    rerender(json_path, note, markdown, plot, refresh)


# -- driver -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--target", help="the target checkpoint folder (its catalog and recipe too)")
    add("--dataset", help="the dataset folder (its test users)")
    add(
        "--modes",
        nargs="+",
        default=None,
        choices=MODES,
        help=f"modes to run (default: {' '.join(UNDRAFTED_MODES)}; with --draft also strict, and relaxed where "
        "--draft-beams > 1)",
    )
    add("--ks", nargs="+", type=int, default=list(DEFAULT_KS), help="the K of each run (default 1 5 10 20 50 100)")
    add(
        "--dtypes",
        nargs="+",
        default=["bfloat16", EXACT_DTYPE],
        choices=("bfloat16", "float16", EXACT_DTYPE),
        help="dtypes, a configuration each per mode (default bfloat16 float32)",
    )
    add("--users", type=int, default=512, help="test users of the throughput pass (default 512)")
    add("--users-latency", type=int, default=200, help="test users sent one at a time (default 200)")
    add("--users-equal", type=int, default=500, help="float32 users compared with the reference (default 500)")
    add("--concurrency", type=int, default=64, help="users per call in the throughput pass (default 64)")
    add(
        "--warmup-calls",
        type=int,
        default=30,
        help="one-user calls at the first K before any timed pass of a mode (default 30)",
    )
    add(
        "--slow-call-seconds",
        type=float,
        default=10.0,
        help="a K whose warm-up call of --concurrency users took longer than this many seconds times one such call "
        "instead of --users users (not in float32: the equality check's users); default 10",
    )
    add("--max-num-seqs", type=int, default=1024, help="vLLM max_num_seqs (default 1024: K beams per user)")
    add("--max-model-len", type=int, default=512, help="vLLM max_model_len (default 512)")
    add("--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share of GPU memory (default 0.5)")
    add(
        "--engine-args",
        type=json_object,
        default={},
        metavar="JSON",
        help="more vllm.LLM arguments for every vLLM mode, e.g. '{\"enable_prefix_caching\": false}' (a diagnosis: "
        "what changes with a feature off)",
    )
    add_run_options(parser, "bench_topk", "topk", "<mode>_<dtype>")
    add(
        "--triton-f32",
        default="ieee",
        choices=("ieee", "tf32x3", "tf32"),
        help="float32 configurations: Triton's float32 dot precision (TRITON_F32_DEFAULT; vLLM's float32 attention "
        "is a Triton kernel, TF32 by Triton's default); default ieee, the reference's precision",
    )
    add(
        "--profile",
        action="store_true",
        help="also profile one call at the largest K per batch size (Python's profiler, then the torch profiler; "
        "the busiest functions and operations as bench_topk_<mode>_<dtype>_profile_k<K>_b<batch>.txt in "
        "--work-dir)",
    )
    add(
        "--profile-k",
        type=int,
        default=None,
        help="with --profile: the K of the profiled calls (default: the largest of --ks)",
    )
    add(
        "--profile-one-request",
        action="store_true",
        help="with --profile: profile the call of one request only (a call of --concurrency users under the "
        "profilers takes seconds)",
    )
    add(
        "--own-process-modes",
        nargs="+",
        default=[],
        choices=[m for m in MODES if m != "reference"],
        help="vLLM modes to run once more with the engine core in its own process, as vLLM runs by default (the "
        "engine steps, KV blocks and profiles are read only from an in-process engine); records say engine_core",
    )
    add(
        "--own-process-ks",
        nargs="+",
        type=int,
        default=[20],
        help="with --own-process-modes: the K of those runs (default 20)",
    )
    add(
        "--exact-modes",
        nargs="+",
        default=None,
        choices=MODES,
        help=f"modes that also run in {EXACT_DTYPE} when --dtypes has it (default: every mode); e.g. reference engine, "
        "the equality check, while the speed comparison runs in the other dtypes",
    )
    add("--draft", default=None, help="draft head folder (EAGLE-family, e.g. PAD-Rec) of the drafted modes")
    add(
        "--drafts",
        nargs="+",
        default=None,
        metavar="OBJECTIVE=FOLDER",
        help="instead of --draft: several heads, each named by its training objective (distill, atspeed_s, "
        "atspeed_r); every drafted mode runs once per head, side by side",
    )
    add("--draft-beams", type=int, default=1, help="drafted modes: N, the draft's beams in a round (default 1)")
    add("--gamma", type=int, default=3, help="drafted modes: draft tokens per row in a round (default 3)")
    add(
        "--objective",
        default="distill",
        choices=OBJECTIVES,
        help="drafted modes: the objective --draft was trained with, for the records (default distill)",
    )
    add("--one", nargs="+", default=None, choices=MODES, help=argparse.SUPPRESS)  # child: run these modes
    add("--one-dtype", default=None, help=argparse.SUPPRESS)
    add("--one-engine-core", default=IN_PROCESS, choices=(IN_PROCESS, OWN_PROCESS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.render and (args.target is None or args.dataset is None):
        parser.error("--target and --dataset are required (or --render JSON)")
    if any(k < 1 for k in args.ks):
        parser.error(f"every K must be >= 1, got {args.ks}")
    args.drafts = parse_drafts(parser, args)
    if args.modes is None:
        drafted_modes = DRAFTED_MODES if args.draft_beams > 1 else DRAFTED_MODES[:1]  # relaxed: N > 1
        args.modes = list(UNDRAFTED_MODES + (drafted_modes if args.draft else ()))
    drafted = sorted(set(args.modes + (args.one or [])) & set(DRAFTED_MODES))
    if drafted and not args.draft:
        parser.error(f"modes {drafted} need --draft (a draft head folder)")
    if args.draft_beams < 1 or args.gamma < 1:
        parser.error(f"--draft-beams and --gamma must be >= 1, got {args.draft_beams} and {args.gamma}")
    if "relaxed" in drafted and args.draft_beams < 2:
        parser.error("mode relaxed needs --draft-beams >= 2 (the draft's own beam search keeps its log-probs)")
    return args


def parse_drafts(parser: argparse.ArgumentParser, args) -> list[tuple[str, str]]:
    """The heads of the drafted modes as (objective, folder): ``--drafts``'s, or ``--draft`` with ``--objective``.
    With ``--drafts`` alone, ``--draft``/``--objective`` become its first head (what a child process reads)."""
    if not args.drafts:
        return [(args.objective, args.draft)] if args.draft else []
    heads = []
    for text in args.drafts:
        objective, equals, folder = text.partition("=")
        if not equals or not folder or objective not in OBJECTIVES:
            parser.error(f"--drafts takes OBJECTIVE=FOLDER, OBJECTIVE one of {list(OBJECTIVES)}, got {text!r}")
        heads.append((objective, folder))
    if len({o for o, _ in heads}) < len(heads):
        parser.error(f"--drafts names an objective twice: {args.drafts}")
    if args.draft is None:
        args.objective, args.draft = heads[0]
    return heads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(args.render, args.note)
        return 0
    if args.one:
        Path(args.result).write_text(json.dumps(run_config(args)))  # a list: one result per mode
        return 0
    forwarded = sys.argv[1:] if argv is None else list(argv)
    results, errors = [], {}
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    name = args.name or f"topk_{Path(args.dataset).name}"
    earlier = earlier_records(Path(args.out) / f"{name}.json") if args.merge else []

    def write(final: bool) -> dict:
        """The results so far (after each configuration, so that a run cut short keeps what it measured)."""
        attach_equality(results, args.concurrency)  # idempotent: recomputed from the configurations so far
        payload = summarize(args, results, errors, earlier)
        payload["command"] = command_line("benchmarks.bench_topk", forwarded)
        return write_progress(args.out, name, payload, len(results), final, markdown, plot)

    for modes, dtype, core in configurations(args) + own_process_configurations(args):
        drafted = any(m in DRAFTED_MODES for m in modes)  # a drafted mode runs once per draft
        for objective, draft in args.drafts if drafted else [(None, None)]:
            config = f"{'_'.join(modes)}_{dtype}" + ("" if core == IN_PROCESS else f"_{core}")
            argv = [*forwarded, "--one", *modes, "--one-dtype", dtype, "--one-engine-core", core]
            if core == OWN_PROCESS:
                argv += ["--ks", *map(str, args.own_process_ks)]  # the last --ks given wins
            if objective is not None and len(args.drafts) > 1:
                config += f"_{objective}"
                argv += ["--draft", draft, "--objective", objective]  # the last given wins
            env = dot_precision(dtype, args)
            result, error = run_configuration(
                "benchmarks.bench_topk", "bench_topk", config, argv, args.work_dir, args.cache_root, env
            )
            if error is not None:
                errors[config] = error
            if result is not None:
                results.extend(result)
            write(final=False)
    payload = write(final=True)
    print(markdown(payload))
    return 1 if errors else 0


def configurations(args) -> list[tuple[tuple[str, ...], str, str]]:
    """The processes to run, in ``--modes`` order: (modes, dtype, IN_PROCESS), each mode in the dtypes it runs
    in (float32 only for ``--exact-modes``), a mode of SHARES_ENGINE in the process of the mode whose engine it
    shares when that one runs in the same dtype."""

    def runs(mode: str, dtype: str) -> bool:
        return dtype != EXACT_DTYPE or args.exact_modes is None or mode in args.exact_modes

    groups: dict[tuple[str, str], list[str]] = {}
    for mode in args.modes:
        for dtype in args.dtypes:
            if not runs(mode, dtype):
                continue
            host = SHARES_ENGINE.get(mode)
            if host in args.modes and runs(host, dtype):
                groups.setdefault((host, dtype), []).append(mode)
            else:
                groups.setdefault((mode, dtype), []).insert(0, mode)
    return [(tuple(modes), dtype, IN_PROCESS) for (_, dtype), modes in groups.items()]


def own_process_configurations(args) -> list[tuple[tuple[str, ...], str, str]]:
    """``--own-process-modes`` with their engine core in its own process (OWN_PROCESS), in the first speed dtype
    (not float32), a mode of SHARES_ENGINE with its host as in ``configurations``: the speed passes as vLLM runs
    by default, at ``--own-process-ks``."""
    speed = [d for d in args.dtypes if d != EXACT_DTYPE][:1]
    if not args.own_process_modes or not speed:
        return []
    own = argparse.Namespace(**{**vars(args), "modes": args.own_process_modes, "dtypes": speed})
    return [(modes, dtype, OWN_PROCESS) for modes, dtype, _ in configurations(own)]


# what makes two records the same measurement: a later run's record replaces an earlier one's (``--merge``)
RECORD_KEY = (
    "mode",
    "dtype",
    "k",
    "batch_size",
    "engine_core",
    "draft_beams",
    "gamma",
    "objective",
    "tensor_parallel_size",
)


def record_key(record: dict) -> tuple:
    """The record's RECORD_KEY fields; its engine core's placement as the goals read it (records from before
    the ``engine_core`` and ``tensor_parallel_size`` fields ran in process, on one GPU)."""
    fields = {"engine_core": placement(record), "tensor_parallel_size": tensor_parallel_size(record)}
    return tuple(fields[field] if field in fields else record.get(field) for field in RECORD_KEY)


def summarize(args, results: list[dict], errors: dict, earlier: list[dict] = ()) -> dict:
    import torch

    parallel = {"tensor_parallel_size": tensor_parallel_size(args.engine_args)}
    records = [record | parallel for r in results for record in r["records"]]
    records = merged(earlier, records, record_key)  # --merge
    return {
        "target": args.target,
        "dataset": Path(args.dataset).name,
        "ks": args.ks,
        "dtypes": args.dtypes,
        "exact_modes": args.exact_modes,
        "concurrency": args.concurrency,
        "users": args.users,
        "users_latency": args.users_latency,
        "users_equal": args.users_equal,
        "triton_f32": args.triton_f32,
        "engine_args": args.engine_args,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "startup_seconds": {f"{mode_label(r)}_{r['dtype']}": r["startup_seconds"] for r in results},
        "records": records,
        "goals": run_goals(records, args.concurrency),
        "errors": errors,
    }


if __name__ == "__main__":
    sys.exit(main())
