"""List generation speed in vLLM, side by side: no speculation, PAD-Rec, vLLM's EAGLE with and without the
catalog masks, PAD-Rec with drafts by batch size, and vanilla vLLM's n-gram and Medusa drafts (issue 14).

Methods (``METHODS``), each with its drafts and the plugin's settings:

    none              no draft: the baseline, exactly as users run vLLM (with the run's CUDA-graph settings,
                      ``--max-cudagraph-capture-size`` and ``--cudagraph-mode``, as every engine of the run)
    none_default_graphs
                      no draft with vLLM's default CUDA graphs whatever the run's settings: beside a ``none``
                      whose graphs hold the prompts, the baseline exactly as users run it; every Model Runner V2
                      record of the run then also has ``speedup_vs_default_graphs`` (tokens/s over its own)
    padrec            the PAD-Rec draft (``--padrec-draft``), drafts masked by the catalog and a round's decode
                      steps as one CUDA graph (the plugin's defaults)
    eagle             vLLM's EAGLE draft (``--eagle-draft``, ``EagleLlamaForCausalLM``), drafts masked too
    eagle_vanilla     the same EAGLE draft with ``mask_drafts: false``: vanilla vLLM's drafting
    eagle_one_step    an EAGLE draft trained teacher-forced one step, as the EAGLE paper trains it
                      (``--eagle-one-step-draft``: ``train-draft --method eagle --train-steps 1``), masked
    padrec_one_step   a PAD-Rec draft trained the same way (``--padrec-one-step-draft``: ``train-draft --method
                      padrec --train-steps 1``), with the plugin's defaults
    padrec_adaptive   the PAD-Rec draft with drafts by batch size: ``gamma_schedule`` picks, per batch size,
                      the fastest gamma of this run's ``padrec`` records, or none when no gamma beats ``none``
                      by ``--min-gain`` (vLLM's ``num_speculative_tokens_per_batch_size``; the plugin's
                      speculator drafts exactly that many). It runs after ``none`` and ``padrec``
    padrec_tail       the PAD-Rec draft's gamma drafts and 2 more filled from the catalog alone
                      (``padrec.forced_tail``, ``integration/forced_tail.py``): the engine verifies gamma + 2
                      drafts a step (records: ``gamma`` the draft's, ``forced_tail`` 2)
    padrec_loop       ``padrec`` (its decode loop graph on: ``padrec.decode_loop_graph``,
                      ``integration/decode_loop_graph.py``) whose passes also run their users again with the
                      graph switched on and off call by call in the same engine
                      (ABBA, through ``integration/worker_rpc.py``): ``loop_switch_speedup`` (tokens/s on over
                      off), ``loop_switch_p50_ms`` and ``loop_switch_baseline_p50_ms`` (on, off),
                      ``loop_switch_equal`` (users whose lists the two wrote alike), ``loop_replays`` (the
                      rounds the graph served in the on calls) and at batch 1 ``loop_switch_phases_ms`` (each
                      side's phases), free of the spread between two engines
    none_v1           no draft, on vLLM's Model Runner V1: the baseline of the two below
    ngram             vLLM's n-gram drafts (prompt lookup, ``--ngram-lookup``), Model Runner V1: vLLM's
                      ``ngram`` proposer, which needs numba, or its ``ngram_gpu`` where numba is missing
    medusa            Medusa heads (``--medusa-draft``, ``train-draft --method medusa``), Model Runner V1; gammas
                      above the heads' count are skipped (vLLM builds a head per draft token)

Every request of the Model Runner V2 methods asks for a constrained list of ``list_len`` distinct items
(``padrec_num_items``, ``padrec_no_repeat``), greedy. vLLM 0.26.0 has no V2 speculator for Medusa or n-gram
drafts and runs them on Model Runner V1 (``integration/SPEC_DECODE.md``), where the plugin installs no masks and
serves no constrained lists: those three methods (``VLLM_USE_V2_MODEL_RUNNER=0``) generate unconstrained greedy
lists of at most ``list_len`` items' tokens, as vanilla vLLM users would run them, and their speedup and
equality are against ``none_v1``'s lists (every record says its ``runner`` and vLLM's
``speculative_method``).

Each (method, gamma) is one engine, in a process of its own with its own ``VLLM_CACHE_ROOT``
(``max_num_seqs`` = the largest batch size; an engine with a draft captures CUDA graphs up to its largest
verification step, ``--max-cudagraph-capture-size``; with ``prompts`` every engine, ``none`` included, also
holds the users' longest prompt in a graph, so that a list's prefill replays graphs as it does in an engine of
vLLM's default ``max_num_seqs``, where with ``max_num_seqs`` 1 it runs eagerly; ``--cudagraph-mode full`` makes
those graphs whole-model ones, ``integration/prefill_graphs.py``). For each list length and
batch size B it answers ``--users`` test users (B = 1: ``--users-latency``) in calls of B requests
(``LLM.generate``), after one warm-up call; a list's latency is its call's. Records (one per method, gamma,
list length and batch size):
``target_recipe`` and ``target_epochs`` (the target checkpoint's ``padrec_recipe.json``: holds train their own
target, and a merge keeps each record's), ``tokens_per_s`` (output tokens over the pass's seconds), ``p50_ms`` /
``p99_ms``, ``acceptance_length`` and
``accepted_per_draft_step`` (vLLM's spec-decode counters over the pass), ``tokens_per_list`` and
``rounds_per_list``, ``speedup_vs_no_spec`` (tokens/s over ``none``'s at the same list length and batch
size), ``equal_to_no_spec`` (users whose list is ``none``'s token for token, of ``users_compared``),
``recall_at_10`` / ``ndcg_at_10`` (the list's items against the user's next items), and for a draft on Model
Runner V2 ``loop_graph_rounds`` (the rounds of the pass its decode loop graph served, read through
``integration/worker_rpc.py``, which every such engine gets; 0 where vLLM's own speculator drafts, as for
``eagle_vanilla``, or the graph is off). The B = 1 passes run once
more after the others (``p50_ms_repeat``: how far one engine's p50 moves between two passes), and the Markdown
fits each method's B = 1 latency to a cost per step and a cost per list. B = 1 records also split a call's time
by phase where the engine kept vLLM's per-request timestamps (``phases_ms``: medians of submit, queue, first
token, decode and finish, ``testing/request_phases.py``): what a list costs beside its rounds, measured rather
than fitted.

Engine cores run in their own process, as vLLM runs them by default (``--engine-core``; ``engine_core`` in
every record). A draft's engine shares its process with a baseline engine (its method's baseline), and at
every batch size (``--pair all``, the default; ``one``: batch size 1 only) the two answer each call of the pass
in turn, in ABBA order: ``paired_speedup`` (tokens/s over the baseline's calls of the same users) and
``paired_baseline_p50_ms`` (and ``paired_equal``, the users whose lists the two engines wrote alike). Engines
measured minutes apart see the machine drift between them (their ratio of p50s moved by tens of percent at
equal acceptance, 2026-12-02; ``none``'s tokens/s at batch 64 and 128 by -22 and +25 % between two runs whose
``padrec`` moved under 1 %, 2026-12-03); paired calls see the same drift, and the goals, the plot and
``padrec_adaptive``'s table read them where measured. The paired baseline engines are engines of one
configuration: the Markdown says how far apart they ran (``spec_decode_goals.engine_spread``, 25 % at batch 1 on
2026-12-03), and a gain over EAGLE counts only beyond it. ``--pin-cpus`` gives each engine's core process, and the
benchmark's own threads, physical cores of their own (``testing/cpu_pinning.py``; ``cpu_pinning`` in the records):
an experiment on whether the spread comes from where the engines' host work runs (it did not narrow it,
2026-12-03 19:45). Each offline pass also records the GPU's SM and memory clocks, power and temperature while it ran
(``gpu_clocks``; ``gpu_clocks_paired``: in a paired pass, the rows during the engine's own calls and during its
baseline's; ``gpu_clocks_repeat`` for the repeated one-request passes; ``testing/gpu_clocks.py``,
``--no-gpu-clocks`` leaves them out; the SM clock stayed at 1980 MHz in every pass of 2026-12-04 while engines
still spread, so the clocks do not explain it). ``--rivals eagle padrec`` compares drafts without it: engines of
those drafts start beside ``padrec``'s in its process, and after each ``padrec`` pass the same users run on
``padrec``'s engine and each rival's call by call (``rivals``: ``padrec``'s tokens/s over the rival's, both p50s,
the lists alike, the SM clock during each side's calls, and each side's acceptance over those calls from its own
tally, ``integration/acceptance_tally.py``, since a second engine has no vLLM counters; each rival first answers
every user once, untimed, as ``padrec``'s engine did in its pass, so that both hold the prompts in their prefix
caches, and each side makes at least ``RIVAL_MIN_CALLS`` calls, the users cycled); ``padrec`` as its own
rival is the control, two engines of one configuration whose ratio shows what the spread between engines is when
both see the same drift (1.4 % at batch 1 and 25.9 % at batch 64 on 2026-12-04). Issue 14's 5 % over EAGLE reads
these where a run measured them, beyond the largest control distance of the run.

With ``--modes serve`` (``--modes offline serve`` for both) every configuration is measured through ``vllm serve``
(records with ``mode`` ``serve``; the others ``offline``): one server per configuration, then vLLM's own
``vllm bench serve`` per list length and batch size, on a dataset of the users' history prompts in ShareGPT's JSON form
(``--max-concurrency`` B, the list settings in ``--extra-body``'s ``vllm_xargs``, greedy). Its
``output_throughput`` is ``tokens_per_s``, its end-to-end latency percentiles ``p50_ms`` / ``p99_ms``, its median
time to first token ``p50_ttft_ms``; acceptance comes from the server's ``/metrics`` over the pass, equality from
the generated texts, Recall/NDCG from the items they name.

    python -m benchmarks.bench_spec_decode --target runs/bench/checkpoint --dataset beauty_atspeed \\
        --padrec-draft runs/drafts/padrec/draft --eagle-draft runs/drafts/eagle/draft --out benchmarks/results

Writes ``spec_decode_<dataset>.json`` / ``.md`` / ``.png`` (speedup by batch size per method, acceptance
by draft step); results are rewritten after each configuration (a run cut short keeps what it measured). Exits 1
when a configuration failed (``errors``, with its log's tail); one not run by design (a gamma the draft cannot
serve, an adaptive table that never drafts) is named with why (``skipped``) and is no failure.
``--render JSON`` rebuilds the Markdown and the plot on any machine. Needs a GPU and vLLM (``--help`` and
``--render`` do not).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vllm_padrec.integration.gamma_schedule import MODES, OFFLINE, SERVE  # an in-process LLM; vllm serve (--modes)
from vllm_padrec.integration.prefill_graphs import (
    CUDAGRAPH_MODES,
    VLLM_CAPTURE_CAP,
    VLLM_DEFAULT_CUDAGRAPH_MODE,
    capture_grid_ceiling,
    compilation_config,
    cudagraph_mode_name,
    vllm_default_capture_size,
)
from vllm_padrec.integration.worker_rpc import WORKER_RPC
from vllm_padrec.testing import cpu_pinning
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
from vllm_padrec.testing.gpu_clocks import ClockSampler
from vllm_padrec.testing.request_phases import PHASES, median_phases_ms, request_phases
from vllm_padrec.testing.spec_decode_goals import (
    ADAPTIVE,
    engine_spread_text,
    masks_alone,
    mode_mark,
    mode_of,
    net_of_control,
    paired_mark,
    runner_of,
    spec_decode_goals,
    speedup,
)
from vllm_padrec.testing.stats import percentile

DRAFT_FREE = "none"
IN_PROCESS, OWN_PROCESS = "in_process", "own_process"  # the engine core's process (--engine-core)
PAIRED_BASELINE_MEMORY = 0.3  # the paired baseline engine's share of GPU memory, beside --gpu-memory-utilization
RIVAL_MEMORY = 0.12  # each --rivals engine's share (the bench target and its KV for 128 lists fit in a tenth)
# each side of a rival comparison makes at least this many calls, the users running again where a pass has fewer
# calls (256 users at batch 64 are 4 calls: too few for a ratio between engines that may spread by tens of percent)
RIVAL_MIN_CALLS = 16
RIVALS_HOST = "padrec"  # the method whose engine the --rivals engines stand beside
MEMORY_CAP = 0.95  # the engines of one process ask for at most this share of the GPU's memory together
# the measured engine's share when --gpu-memory-utilization is not given and the engines beside it leave more; with
# them it takes what they leave (beside a paired baseline: 0.41 with two rivals, 0.29 with three, 0.17 with four; a
# rival's 0.12 holds the bench target and KV for 128 lists, and on 2026-12-04 a control at 0.12 ran within 2.2 % of
# padrec's engine at 0.4)
DEFAULT_MEMORY = 0.5
FORCED_TAIL, FORCED_TAIL_SLOTS = "padrec_tail", 2  # PAD-Rec's gamma drafts and 2 more from the catalog alone
LOOP_GRAPH = "padrec_loop"  # PAD-Rec with a round's decode steps as one CUDA graph
# no speculation with vLLM's default CUDA graphs whatever the run's graph settings: the baseline as users run it,
# beside a run's none whose graphs hold the prompts (--max-cudagraph-capture-size prompts, --cudagraph-mode full)
DEFAULT_GRAPHS = "none_default_graphs"


V1_DRAFT_FREE = "none_v1"


@dataclass(frozen=True)
class Method:
    draft: str | None  # the draft option it reads (--<draft>-draft): padrec, eagle, eagle_one_step, medusa, ...
    padrec: dict  # the server's additional_config["padrec"] beyond the constraint
    speculative_method: str | None = "eagle"  # vLLM's speculative method; None: no speculation
    runner: str = "v2"  # vLLM's Model Runner: "v2" (the plugin's masks, constrained lists) or "v1" (vanilla vLLM)
    default_graphs: bool = False  # its engine keeps vLLM's CUDA-graph settings whatever the run's

    @property
    def forced_tail(self) -> int:
        """Drafts a step fills from the catalog alone after the draft's gamma (``padrec.forced_tail``)."""
        return self.padrec.get("forced_tail", 0)

    @property
    def drafts_on_v2(self) -> bool:
        """A draft on Model Runner V2, where the plugin's speculator (its masks, its loop graphs) may serve it."""
        return self.runner == "v2" and self.speculative_method is not None

    @property
    def baseline(self) -> str:
        """The method whose lists this one's speedup and equality are measured against: no speculation on the
        same model runner."""
        return DRAFT_FREE if self.runner == "v2" else V1_DRAFT_FREE


METHODS = {
    DRAFT_FREE: Method(None, {}, None),
    "padrec": Method("padrec", {}),
    "eagle": Method("eagle", {}),
    "eagle_vanilla": Method("eagle", {"mask_drafts": False}),
    "eagle_one_step": Method("eagle_one_step", {}),
    "padrec_one_step": Method("padrec_one_step", {}),
    ADAPTIVE: Method("padrec", {}),
    FORCED_TAIL: Method("padrec", {"forced_tail": FORCED_TAIL_SLOTS}),
    LOOP_GRAPH: Method("padrec", {"decode_loop_graph": True}),
    DEFAULT_GRAPHS: Method(None, {}, None, default_graphs=True),
    V1_DRAFT_FREE: Method(None, {}, None, "v1"),
    "ngram": Method(None, {}, "ngram", "v1"),
    "medusa": Method("medusa", {}, "medusa", "v1"),
}
DEFAULT_METHODS = [
    m
    for m, spec in METHODS.items()
    if spec.runner == "v2" and m not in ("eagle_one_step", "padrec_one_step", FORCED_TAIL, LOOP_GRAPH, DEFAULT_GRAPHS)
]


# -- configurations --------------------------------------------------------------------------------------------
def configurations(args) -> list[tuple[str, int]]:
    """(method, gamma) per engine, in ``--methods`` order with ``padrec_adaptive`` last (its table reads the
    records of ``none`` and ``padrec``): gamma 0 for ``none``, the largest gamma for the adaptive method (its
    table picks per batch size), every ``--gammas`` for the others."""
    configs = []
    for method in sorted(args.methods, key=lambda m: m == ADAPTIVE):
        if METHODS[method].speculative_method is None:
            configs.append((method, 0))
        elif method == ADAPTIVE:
            configs.append((method, max(args.gammas)))
        else:
            configs += [(method, gamma) for gamma in args.gammas]
    return configs


def medusa_heads(folder: str) -> int:
    """The number of heads of a Medusa draft folder (its config.json's ``num_heads``)."""
    return int(json.loads((Path(folder) / "config.json").read_text())["num_heads"])


def skipped_configuration(args, method: str, gamma: int) -> str | None:
    """Why a configuration cannot run, or None: Medusa drafts at most one token per trained head (vLLM sizes
    the model by ``num_speculative_tokens`` and refuses weights it lacks); an EAGLE-style draft verifies more
    tokens than its steps (a forced tail on top of them) only in multiples of them
    (``draft_check.speculative_tokens_problem``)."""
    from vllm_padrec.integration.draft_check import read_json_config, speculative_tokens_problem

    spec = METHODS[method]
    if method == "medusa" and gamma > (heads := medusa_heads(args.medusa_draft)):
        return f"gamma {gamma} needs {gamma} Medusa heads, {args.medusa_draft} has {heads}"
    if spec.draft is not None and spec.speculative_method == "eagle":
        folder = getattr(args, f"{spec.draft}_draft")
        n_predict = (read_json_config(folder) or {}).get("n_predict")
        if (problem := speculative_tokens_problem(gamma + spec.forced_tail, n_predict)) is not None:
            return f"{problem} ({folder})"
    return None


def adaptive_table(records: list[dict], args) -> list[list[int]]:
    """The adaptive method's ``num_speculative_tokens_per_batch_size`` from this run's records at the first
    list length (``gamma_schedule``)."""
    from vllm_padrec.integration.gamma_schedule import best_gammas, gamma_table, one_measurement

    at_len = one_measurement(records, args.list_lens[0])
    choice = best_gammas(at_len, "padrec", baseline=DRAFT_FREE, min_gain=args.min_gain)
    return [list(r) for r in gamma_table(choice, max(args.batch_sizes))]


def speculative_config(args, method: str, gamma: int, table: list | None) -> dict | None:
    spec = METHODS[method]
    if spec.speculative_method is None:
        return None
    # the engine verifies the draft's gamma and the forced tail's slots (integration/forced_tail.py)
    config: dict = {"method": spec.speculative_method, "num_speculative_tokens": gamma + spec.forced_tail}
    if spec.draft is not None:
        config["model"] = getattr(args, f"{spec.draft}_draft")
    if spec.speculative_method == "ngram":
        config["method"] = ngram_proposer()
        config["prompt_lookup_min"], config["prompt_lookup_max"] = args.ngram_lookup
    if table is not None:  # as users get it from `vllm-padrec gamma-schedule` (one K: no table)
        from vllm_padrec.integration.gamma_schedule import speculative_config as table_config

        return table_config(config["model"], table, config["method"])
    return config


def capture_size(args, method: str, gamma: int) -> int | None:
    """The engine's ``max_cudagraph_capture_size`` (``--max-cudagraph-capture-size``), None for vLLM's default.
    ``verify``: the largest verification step, ``max(batch sizes) * (1 + gamma)`` tokens, where it passes vLLM's
    default cap of 512 (above its largest graph vLLM runs the target eagerly: 2x slower at batch 128, gamma 5,
    2026-12-02); no speculation, and steps that fit, keep vLLM's default (``integration/prefill_graphs.py``).
    ``prompts``: every engine, ``none`` included, also holds the run's longest prompt (``args.longest_prompt``, set
    by ``run_config``) in a graph, so that a list's prefill (the target's and the draft's) replays piecewise graphs
    rather than running eagerly, as it does in an engine of vLLM's default ``max_num_seqs`` (cap 512): with
    ``max_num_seqs`` 1, vLLM's default graphs hold 2 tokens without a draft and at most 18 at gamma 8."""
    choice = args.max_cudagraph_capture_size
    spec_tokens = gamma + METHODS[method].forced_tail if METHODS[method].speculative_method else 0
    verify_tokens = max(args.batch_sizes) * (1 + spec_tokens)
    if choice == "prompts":
        default = vllm_default_capture_size(max(args.batch_sizes), spec_tokens)
        return max(default, verify_tokens, capture_grid_ceiling(args.longest_prompt))
    if choice == "vllm" or not spec_tokens:
        return None
    if choice == "verify":
        return verify_tokens if verify_tokens > VLLM_CAPTURE_CAP else None
    return int(choice)


def capture_size_arg(value: str) -> str:
    """``--max-cudagraph-capture-size``: ``verify``, ``prompts``, ``vllm`` or a positive number of tokens."""
    if value in ("verify", "prompts", "vllm") or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"expected verify, prompts, vllm or a positive number of tokens, got {value!r}")


# -- one configuration (child process) -----------------------------------------------------------------------
def spec_counters(llm) -> dict:
    """vLLM's spec-decode counters since start (``LLM.get_metrics``): rounds, drafts, accepted, per position."""
    from vllm_padrec.integration.acceptance_tally import COUNT_NAMES
    from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS

    names = dict(zip(SPEC_COUNTERS, COUNT_NAMES))  # the keys an engine's own tally reports too
    totals = dict.fromkeys(COUNT_NAMES, 0) | {"per_pos": []}
    for metric in llm.get_metrics():
        if metric.name in names:
            totals[names[metric.name]] += metric.value
        elif metric.name == SPEC_PER_POS:
            values = list(metric.values)
            totals["per_pos"] = [a + b for a, b in zip(values, totals["per_pos"] + [0] * len(values))]
    return totals


def counter_delta(before: dict, after: dict) -> dict:
    from vllm_padrec.integration.acceptance_tally import COUNT_NAMES

    per_pos = [a - (before["per_pos"][i] if i < len(before["per_pos"]) else 0) for i, a in enumerate(after["per_pos"])]
    return {key: after[key] - before[key] for key in COUNT_NAMES} | {"per_pos": per_pos}


def call_timing(call_seconds: list[float], output_lengths: list[int], batch_size: int) -> dict:
    """An offline pass's timing: calls of ``batch_size`` users each (the last: fewer), a user's latency its
    call's."""
    seconds = sum(call_seconds)
    per_user = [call_seconds[i // batch_size] for i in range(len(output_lengths))]
    return {
        "users": len(output_lengths),
        "tokens_per_list": round(sum(output_lengths) / len(output_lengths), 2),
        "tokens_per_s": round(sum(output_lengths) / seconds, 1) if seconds else None,
        "p50_ms": round(1000 * percentile(per_user, 50), 3),
        "p99_ms": round(1000 * percentile(per_user, 99), 3),
    }


def serve_timing(result: dict) -> dict:
    """A served pass's timing from ``vllm bench serve``'s result JSON (``--percentile-metrics e2el,ttft
    --metric-percentiles 50,99``); ``p50_ttft_ms``, the time to a list's first token, is absent from results
    saved before it was asked for."""
    users = result["completed"]
    return {
        "users": users,
        "tokens_per_list": round(result["total_output_tokens"] / users, 2) if users else None,
        "tokens_per_s": round(result["output_throughput"], 1),
        "p50_ms": round(result["p50_e2el_ms"], 3),
        "p99_ms": round(result["p99_e2el_ms"], 3),
        **({"p50_ttft_ms": round(result["p50_ttft_ms"], 3)} if "p50_ttft_ms" in result else {}),
    }


def pass_record(
    method: str,
    gamma: int,
    list_len: int,
    batch_size: int,
    mode: str,  # "offline" or "serve"
    timing: dict,  # call_timing's or serve_timing's
    items: list[list[int]],  # per user: the list's items
    targets: list[list[int]],  # per user: the items the user went on to interact with
    counters: dict,  # the spec-decode counters over the pass (counter_delta)
    *,
    invalid_items: int,  # items of the pass's lists that name no catalog item (``ParsedList.invalid``)
) -> dict:
    """One pass's record (the module docstring's fields; speedup and equality are set by ``attach_baseline``)."""
    from vllm_padrec.target.evaluate import recall_ndcg

    quality = recall_ndcg(items, targets, 10)
    return {
        "method": method,
        "gamma": gamma,
        "list_len": list_len,
        "batch_size": batch_size,
        "mode": mode,
        **timing,
        **acceptance_fields(counters, timing["users"]),
        "speedup_vs_no_spec": None,
        "equal_to_no_spec": None,
        "users_compared": None,
        "recall_at_10": round(quality["recall@10"], 5),
        "ndcg_at_10": round(quality["ndcg@10"], 5),
        "invalid_items": invalid_items,
        "duplicate_items": sum(len(user) - len(set(user)) for user in items),
    }


def acceptance_fields(counters: dict, lists: int) -> dict:
    """``acceptance_length``, ``accepted_per_draft_step`` and ``rounds_per_list`` from spec-decode counts over
    ``lists`` lists (``spec_counters``' keys: vLLM's counters, or an engine's own tally); None where no round ran."""
    from vllm_padrec.acceptance import mean_acceptance_length

    rounds = counters["rounds"]
    acceptance = mean_acceptance_length(counters["accepted"], rounds)
    return {
        "acceptance_length": None if acceptance is None else round(acceptance, 4),
        "accepted_per_draft_step": [round(a / rounds, 4) for a in counters["per_pos"]] if rounds else None,
        "rounds_per_list": round(rounds / lists, 2) if rounds else None,
    }


def rival_acceptance(ours: dict | None, theirs: dict | None, lists: int) -> dict:
    """A rival comparison's acceptance on each side (``acceptance_fields``' first two, the rival's prefixed
    ``rival_``), from each engine's tally over the compared calls; nothing where a side had no tally."""
    if ours is None or theirs is None:
        return {}
    keys = ("acceptance_length", "accepted_per_draft_step")
    mine, rival = acceptance_fields(ours, lists), acceptance_fields(theirs, lists)
    return {key: mine[key] for key in keys} | {f"rival_{key}": rival[key] for key in keys}


def pass_users(args, samples: list, batch: int) -> list:
    """The test users of a pass at ``batch`` requests per call (one at a time: ``--users-latency``)."""
    return samples[: args.users_latency if batch == 1 else max(args.users, batch)]


def ngram_proposer() -> str:
    """vLLM's n-gram method on this machine: ``ngram`` (its CPU proposer, compiled by numba, a dependency of vLLM
    that the H200 kit may lack) where numba imports, else ``ngram_gpu`` (``v1/worker/gpu_model_runner.py:599-610``)."""
    import importlib.util

    return "ngram" if importlib.util.find_spec("numba") is not None else "ngram_gpu"


def list_xargs(method: str, list_len: int) -> dict | None:
    """The per-request list settings of a method's passes: a constrained list of ``list_len`` distinct items on
    Model Runner V2; none on V1, which serves no constrained lists (module docstring)."""
    if METHODS[method].runner == "v1":
        return None
    return {"padrec_constraint": 1, "padrec_num_items": list_len, "padrec_no_repeat": 1}


def runner_environment(method: str) -> dict[str, str]:
    """The environment that puts a method's engine on its model runner."""
    return {"VLLM_USE_V2_MODEL_RUNNER": "0"} if METHODS[method].runner == "v1" else {}


def run_config(args) -> dict:
    """One configuration's passes in this process (``--one-mode``): offline, one in-process engine; serve, one
    ``vllm serve``. Its records, and its lists by pass (for the equality check)."""
    from vllm_padrec.catalog import ItemCatalog
    from vllm_padrec.data import load_dataset
    from vllm_padrec.integration.recommendation_service import read_max_history

    catalog = ItemCatalog.load(args.target)
    samples = load_dataset(args.dataset).eval_samples("test", read_max_history(Path(args.target)) or 20)
    table = json.loads(args.gamma_table) if args.gamma_table else None
    if args.max_cudagraph_capture_size == "prompts":  # capture_size's: the graphs hold every user's prompt
        args.longest_prompt = max((len(catalog.render_prompt(s.history)) for s in samples), default=1)
    passes = offline_passes if args.one_mode == OFFLINE else served_passes
    startup, records, lists = passes(args, catalog, samples, table)
    spec = speculative_config(args, args.one, args.one_gamma, table)
    engine = {"runner": METHODS[args.one].runner, "speculative_method": spec["method"] if spec else None}
    engine["forced_tail"] = METHODS[args.one].forced_tail
    engine["engine_core"] = args.engine_core if args.one_mode == OFFLINE else OWN_PROCESS  # vllm serve's own
    given = args.engine_args.get("compilation_config")  # the caller's wins (compilation_args)
    compiled = given if isinstance(given, dict) else engine_compilation(args, args.one, args.one_gamma) or {}
    engine["max_cudagraph_capture_size"] = compiled.get("max_cudagraph_capture_size")
    engine["cudagraph_mode"] = compiled.get("cudagraph_mode")  # None: vLLM's default (VLLM_DEFAULT_CUDAGRAPH_MODE)
    records = [r | engine for r in records]
    result = {"method": args.one, "gamma": args.one_gamma, "mode": args.one_mode, "startup_seconds": round(startup, 1)}
    return result | {"records": records, "lists": lists}


NOT_READ = "not read"  # a served pass's loop graph rounds (loop_graph_of)
SERVED_LOOP_GRAPHS = (
    " Served records say `not read`: the server answers no worker RPC, and its `serve.log` says whether the graphs "
    "were captured."
)


def loop_graph_of(record: dict) -> str:
    """A record's loop graph cell: the rounds its pass's loop graph served (``loop_graph_rounds``); for a pass
    through vllm serve, whose server answers no worker RPC, ``not read`` (its ``serve.log`` says whether the graphs
    were captured); in offline records from before that count (2026-12-03), the setting: on for ``padrec_loop``
    only, off by default then."""
    if "loop_graph_rounds" in record:
        return str(record["loop_graph_rounds"])
    if record.get("speculative_method") is None:
        return "-"
    if mode_of(record) == SERVE:
        return NOT_READ
    return "on" if record["method"] == LOOP_GRAPH else "off"


def engine_core_of(record: dict) -> str:
    """Where a record's engine core ran: ``own_process`` or ``in_process`` (records before the field, 2026-12-02,
    ran in the benchmark's process)."""
    return record.get("engine_core", IN_PROCESS)


def engine_core_environment(engine_core: str) -> dict[str, str]:
    """The environment that puts the engine core in its own process (vLLM's default) or in this one."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if engine_core == OWN_PROCESS else "0"}


PAIRINGS = ("all", "one", "none")  # --pair: the batch sizes whose passes alternate with a baseline engine


def pairs(args, method: str, batch: int) -> bool:
    """Whether ``method``'s passes of ``batch`` requests a call alternate with a baseline engine (``--pair``):
    methods with a draft, at every batch size (``all``) or one request at a time (``one``)."""
    if METHODS[method].speculative_method is None or args.pair == "none":
        return False
    return args.pair == "all" or batch == 1


def pairs_any(args, method: str) -> bool:
    """Whether ``method``'s engine needs a baseline engine beside it: a pass of the run is paired."""
    return any(pairs(args, method, batch) for batch in args.batch_sizes)


def paired_fields(
    spec_seconds: list[float],
    spec_ids: list[list[int]],
    base_seconds: list[float],
    base_ids,
    batch: int = 1,
    prefix: str = "paired",
) -> dict:
    """A paired pass's baseline p50 (calls of ``batch`` users), the speedup in tokens/s over the baseline's
    calls of the same users, and how many of the users' lists equal the baseline's token for token (fields
    ``<prefix>_baseline_p50_ms``, ``<prefix>_speedup``, ``<prefix>_equal``)."""
    spec_lengths, base_lengths = [len(t) for t in spec_ids], [len(t) for t in base_ids]
    spec_rate = sum(spec_lengths) / sum(spec_seconds)
    base_rate = sum(base_lengths) / sum(base_seconds)
    return {
        f"{prefix}_baseline_p50_ms": call_timing(base_seconds, base_lengths, batch)["p50_ms"],
        f"{prefix}_speedup": round(spec_rate / base_rate, 3),
        f"{prefix}_equal": sum(a == b for a, b in zip(spec_ids, base_ids)),
    }


NO_LOOP_GRAPHS = "the engine captured no loop graphs (padrec.decode_loop_graph is off there: its log says why)"


PINNED = ("engine", "baseline", "benchmark")  # --pin-cpus: the CPU sets, in the order the cores are handed out


def engine_cpu_sets(args, method: str) -> dict[str, list[int]] | None:
    """``--pin-cpus``: physical cores of their own for the engine's core process, its paired baseline engine's
    (where the run pairs the method) and the benchmark's threads, from the CPUs this process may use
    (``testing/cpu_pinning.py``); None without the option."""
    if not args.pin_cpus:
        return None
    names = [name for name in PINNED if name != "baseline" or pairs_any(args, method)]
    return dict(zip(names, cpu_pinning.split_cores(os.sched_getaffinity(0), len(names))))


def worker_rpc_args(method: str) -> dict:
    """A draft engine on Model Runner V2 answers worker_rpc's calls (the rounds its loop graph served, the switch,
    its acceptance tally); other engines have nothing to answer."""
    return {"worker_extension_cls": WORKER_RPC} if METHODS[method].drafts_on_v2 else {}


def second_engine(args, method: str, gamma: int, cache: str, memory: float):
    """An engine of ``method`` at ``gamma`` beside the measured one, in this process (a paired baseline, a rival
    draft): its own compile cache (``cache`` under ``--cache-root``, read by its core process), ``memory`` of the
    GPU, no stat loggers (vLLM's metrics stay the measured engine's; a draft's acceptance is its own tally,
    ``worker_rpc_args``). (engine, None), or (None, why) where it could not start."""
    from vllm import LLM

    saved = os.environ.get("VLLM_CACHE_ROOT")
    os.environ["VLLM_CACHE_ROOT"] = str(Path(args.cache_root) / cache)
    try:
        engine = LLM(
            model=args.target,
            speculative_config=speculative_config(args, method, gamma, None),
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            gpu_memory_utilization=memory,
            max_num_seqs=max(args.batch_sizes),
            disable_log_stats=True,
            additional_config={"padrec": METHODS[method].padrec},
            **compilation_args(args, method, gamma),
            **worker_rpc_args(method),
            **args.engine_args,
        )
        return engine, None
    except Exception as error:  # noqa: BLE001 - the passes run without it, the record says why
        return None, f"{type(error).__name__}: {error}"[:500]
    finally:
        if saved is None:
            del os.environ["VLLM_CACHE_ROOT"]
        else:
            os.environ["VLLM_CACHE_ROOT"] = saved


def offline_passes(args, catalog, samples: list, table: list | None) -> tuple[float, list[dict], dict]:
    os.environ.update(engine_core_environment(args.engine_core))
    os.environ.setdefault("VLLM_PLUGINS", "padrec")
    os.environ.update(runner_environment(args.one))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_padrec.catalog import TokenLayout
    from vllm_padrec.lists import parse_list

    method, gamma = args.one, args.one_gamma
    pair_error = None
    started = time.perf_counter()
    # a draft engine on Model Runner V2 answers worker_rpc's calls: each pass counts the rounds its loop graph
    # served, and padrec_loop's passes switch the graph off and on (module doc)
    rpc = worker_rpc_args(method)
    switchable = method == LOOP_GRAPH
    pins = engine_cpu_sets(args, method)
    if pins:  # the engine's core process starts on the CPUs of the thread that builds it
        cpu_pinning.pin_thread(pins["engine"])
    llm = LLM(
        model=args.target,
        speculative_config=speculative_config(args, method, gamma, table),
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=max(args.batch_sizes),
        disable_log_stats=False,
        additional_config={"padrec": METHODS[method].padrec},
        **compilation_args(args, method, gamma),
        **rpc,
        **args.engine_args,
    )
    startup = time.perf_counter() - started

    def loop_graph(enabled: bool | None = None) -> dict | None:
        """The engine's loop graphs (``worker_rpc.PadRecWorkerRpc.padrec_decode_loop_graph``), switched first."""
        return llm.collective_rpc("padrec_decode_loop_graph", args=(enabled,))[0]

    def loop_graph_replays() -> int:
        """Rounds the engine's loop graphs have served so far (0 without graphs)."""
        graphs = loop_graph() if rpc else None
        return graphs["replays"] if graphs else 0

    switch_error = None if not switchable or loop_graph() is not None else NO_LOOP_GRAPHS
    baseline_llm = None
    if pairs_any(args, method):  # after the engine above, whose stat loggers own vLLM's metrics
        if pins:
            cpu_pinning.pin_thread(pins["baseline"])
        baseline = METHODS[method].baseline
        baseline_llm, pair_error = second_engine(args, baseline, 0, f"{baseline}_g0", PAIRED_BASELINE_MEMORY)
        if pair_error is not None:  # the passes run unpaired, the record says why
            print(json.dumps({"paired_error": pair_error}), flush=True)
    rivals, rival_errors = {}, {}
    for rival in args.rivals if method == RIVALS_HOST else ():  # drafts beside this one, call by call
        engine, error = second_engine(args, rival, gamma, f"rival_{rival}_g{gamma}", RIVAL_MEMORY)
        if error is None:
            rivals[rival] = engine
        else:
            rival_errors[rival] = error
            print(json.dumps({"rival_error": {rival: error}}), flush=True)
    if pins:  # every thread of the benchmark (vLLM's front-end threads too) off the engines' cores
        cpu_pinning.pin_process(pins["benchmark"])
    pinning = {"cpu_pinning": {name: cpu_pinning.cpu_list(cpus) for name, cpus in pins.items()}} if pins else {}
    clocks = ClockSampler()  # started after the pinning: its nvidia-smi runs on the benchmark's cores
    if args.gpu_clocks:
        clocks.start()  # stopped after the passes, or at exit (ClockSampler.start)
    phases: list = []  # the one-request calls' phases on ``llm`` (request_phases), for the pass being timed
    windows: dict = {}  # engine -> its calls' (start, end) on time.monotonic, for the pass being timed

    def timed_call(engine, prompts: list, params) -> tuple[float, list]:
        """One call's seconds and outputs; the call's window goes to ``windows``, and a one-request call on ``llm``
        adds its phases to ``phases``."""
        began, began_clock = time.perf_counter(), time.monotonic()
        outputs = engine.generate(prompts, params, use_tqdm=False)
        seconds, ended_clock = time.perf_counter() - began, time.monotonic()
        windows.setdefault(engine, []).append((began_clock, ended_clock))
        if engine is llm and len(prompts) == 1:
            phases.append(request_phases(began_clock, ended_clock, getattr(outputs[0], "metrics", None)))
        return seconds, outputs

    def alternating_calls(prompts: list, params, batch: int, sides: list) -> list[tuple[list[float], list, list]]:
        """Each call of ``batch`` users on both sides, alternating which goes first (ABBA), so that the
        machine's drift falls on both. A side is ``(engine, before)``, ``before()`` run untimed ahead of each of
        its calls (or None); per side, its seconds per call, output tokens per user and the phases of its calls
        that ``timed_call`` split (one request on ``llm``)."""
        runs = [([], [], []) for _ in sides]
        for i, first in enumerate(range(0, len(prompts), batch)):
            for side in (0, 1) if i % 2 == 0 else (1, 0):
                engine, before = sides[side]
                if before is not None:
                    before()
                split = len(phases)
                seconds, outputs = timed_call(engine, prompts[first : first + batch], params)
                runs[side][0].append(seconds)
                runs[side][1].extend(list(output.outputs[0].token_ids) for output in outputs)
                runs[side][2].extend(phases[split:])
        return runs

    def timed_calls(prompts: list, params, batch: int) -> tuple[list[float], list[list[int]]]:
        """Each call's seconds and each user's output tokens: ``prompts`` in calls of ``batch``."""
        seconds, token_ids = [], []
        for start in range(0, len(prompts), batch):
            call_seconds, outputs = timed_call(llm, prompts[start : start + batch], params)
            seconds.append(call_seconds)
            token_ids += [list(o.outputs[0].token_ids) for o in outputs]
        return seconds, token_ids

    def switched_fields(prompts: list, params, batch: int) -> dict:
        """padrec_loop: the pass's users again with the loop graph on and off, call by call (``loop_switch_*``,
        ``loop_replays``: the graph's rounds in the on calls), the graph left on; or why it could not switch."""
        if switch_error is not None:
            return {"loop_switch_error": switch_error}
        replays = loop_graph_replays()
        sides = [(llm, lambda: loop_graph(True)), (llm, lambda: loop_graph(False))]
        on, off = alternating_calls(prompts, params, batch, sides)
        fields = paired_fields(*on[:2], *off[:2], batch, prefix="loop_switch")
        fields["loop_switch_p50_ms"] = call_timing(on[0], [len(t) for t in on[1]], batch)["p50_ms"]
        if (on_phases := median_phases_ms(on[2])) and (off_phases := median_phases_ms(off[2])):
            fields["loop_switch_phases_ms"] = {"on": on_phases, "off": off_phases}
        fields["loop_replays"] = loop_graph(True)["replays"] - replays
        return fields

    def acceptance_tally(engine, count: bool) -> dict | None:
        """The engine's own acceptance tally (``worker_rpc.padrec_acceptance``): started from zero (True), or
        read and stopped (False); None where its speculator has none."""
        return engine.collective_rpc("padrec_acceptance", args=(count,))[0]

    def rival_fields(rival_llm, prompts: list, params, batch: int) -> dict:
        """The pass's users again on this engine and a rival draft's, call by call (at least ``RIVAL_MIN_CALLS``
        a side, the users cycled): this method's tokens/s over the rival's, both p50s, the calls a side, the users'
        lists alike, and each side's acceptance over these calls, each engine's own tally (``acceptance_tally.py``;
        ``--rivals``)."""
        # warm-up: the rival answers every user once, untimed, as this engine did in its pass, so that both hold
        # the users' prompts in their prefix caches alike
        for first in range(0, len(prompts), batch):
            rival_llm.generate(prompts[first : first + batch], params, use_tqdm=False)
        cycles = -(-RIVAL_MIN_CALLS * batch // len(prompts))  # rounded up
        before = {engine: len(windows.get(engine, [])) for engine in (llm, rival_llm)}
        for engine in (llm, rival_llm):
            acceptance_tally(engine, True)
        ours, theirs = alternating_calls(prompts * cycles, params, batch, [(llm, None), (rival_llm, None)])
        tallies = {engine: acceptance_tally(engine, False) for engine in (llm, rival_llm)}
        fields = paired_fields(*ours[:2], *theirs[:2], batch, prefix="rival")
        first_cycle = slice(0, len(prompts))  # each user's list once
        equal = sum(a == b for a, b in zip(ours[1][first_cycle], theirs[1][first_cycle]))
        clocks.settle()
        sm = {  # the SM clock's median during each side's calls here (None without rows)
            engine: (clocks.summary_within(windows[engine][before[engine] :]) or {}).get("sm_mhz_median")
            for engine in (llm, rival_llm)
        }
        return {
            "speedup": fields["rival_speedup"],
            "p50_ms": call_timing(ours[0], [len(t) for t in ours[1]], batch)["p50_ms"],
            "rival_p50_ms": fields["rival_baseline_p50_ms"],
            "calls": len(ours[0]),
            "equal": equal,
            "sm_mhz": sm[llm],
            "rival_sm_mhz": sm[rival_llm],
        } | rival_acceptance(tallies[llm], tallies[rival_llm], len(ours[1]))

    records, lists, batch_one = [], {}, {}
    for list_len in args.list_lens:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=list_len * (catalog.num_slots + 1) + 1,
            stop_token_ids=[TokenLayout.EOS],
            extra_args=list_xargs(method, list_len),
        )
        for batch in args.batch_sizes:
            users = pass_users(args, samples, batch)
            prompts = [TokensPrompt(prompt_token_ids=catalog.render_prompt(s.history)) for s in users]
            llm.generate(prompts[:batch], params, use_tqdm=False)  # warm-up: this batch shape
            paired = pairs(args, method, batch) and baseline_llm is not None
            if paired:
                baseline_llm.generate(prompts[:batch], params, use_tqdm=False)
            before, phases[:], replays, since = spec_counters(llm), [], loop_graph_replays(), clocks.mark()
            windows.clear()
            if paired:
                sides = [(llm, None), (baseline_llm, None)]
                (seconds, token_ids, _), (base_seconds, base_ids, _) = alternating_calls(prompts, params, batch, sides)
            else:
                seconds, token_ids = timed_calls(prompts, params, batch)
            parsed = [parse_list(catalog, t) for t in token_ids]
            counters = counter_delta(before, spec_counters(llm))
            replays = loop_graph_replays() - replays
            gpu_clocks = clocks.summary(since)
            timing = call_timing(seconds, [len(t) for t in token_ids], batch)
            targets = [s.targets for s in users]
            items, invalid = [p.items for p in parsed], sum(p.invalid for p in parsed)
            records.append(
                pass_record(
                    method, gamma, list_len, batch, OFFLINE, timing, items, targets, counters, invalid_items=invalid
                )
                | pinning
                | ({"loop_graph_rounds": replays} if rpc else {})
                | ({"gpu_clocks": gpu_clocks} if gpu_clocks else {})
            )
            if gpu_clocks and paired:  # the rows that came during each engine's calls
                sides = {"engine": llm, "baseline": baseline_llm}
                records[-1]["gpu_clocks_paired"] = {
                    side: clocks.summary_within(windows.get(engine, [])) for side, engine in sides.items()
                }
            if batch == 1 and (phases_ms := median_phases_ms(phases)) is not None:
                records[-1]["phases_ms"] = phases_ms
            if paired:
                records[-1] |= paired_fields(seconds, token_ids, base_seconds, base_ids, batch)
            elif pairs(args, method, batch) and pair_error is not None:
                records[-1]["paired_error"] = pair_error
            if switchable:
                records[-1] |= switched_fields(prompts, params, batch)
            if rivals:
                records[-1]["rivals"] = {
                    rival: rival_fields(engine, prompts, params, batch) for rival, engine in rivals.items()
                }
            if rival_errors:
                records[-1]["rival_errors"] = rival_errors
            lists[f"offline_{list_len}_{batch}"] = token_ids
            if batch == 1:
                batch_one[list_len] = (records[-1], prompts, params)
            print(json.dumps(records[-1]), flush=True)
    # the one-at-a-time passes once more, after every other pass: how far a pass's p50 moves between two
    # passes of one engine (the spread that a ratio of two engines' p50s carries too)
    for record, prompts, params in batch_one.values():
        since = clocks.mark()
        seconds, token_ids = timed_calls(prompts, params, 1)
        record["p50_ms_repeat"] = call_timing(seconds, [len(t) for t in token_ids], 1)["p50_ms"]
        if gpu_clocks := clocks.summary(since):
            record["gpu_clocks_repeat"] = gpu_clocks
        print(
            json.dumps(
                {"repeat": record["list_len"], "p50_ms": record["p50_ms"], "p50_ms_repeat": record["p50_ms_repeat"]}
            ),
            flush=True,
        )
    clocks.stop()
    return startup, records, lists


def engine_compilation(args, method: str, gamma: int) -> dict | None:
    """The engine's ``compilation_config``: ``capture_size``'s graphs under ``--cudagraph-mode``; None for vLLM's
    defaults, which ``none_default_graphs`` always keeps."""
    if METHODS[method].default_graphs:
        return None
    return compilation_config(capture_size(args, method, gamma), args.cudagraph_mode)


def compilation_args(args, method: str, gamma: int) -> dict:
    """``compilation_config`` for ``vllm.LLM`` when ``engine_compilation`` sets one and ``--engine-args`` does not."""
    config = engine_compilation(args, method, gamma)
    if config is None or "compilation_config" in args.engine_args:
        return {}
    return {"compilation_config": config}


def served_passes(args, catalog, samples: list, table: list | None) -> tuple[float, list[dict], dict]:
    """The passes through ``vllm serve`` and ``vllm bench serve`` (module docstring)."""
    from vllm_padrec.testing.metrics import scrape
    from vllm_padrec.testing.server import SERVED_NAME, VllmServer

    method, gamma = args.one, args.one_gamma
    work = Path(args.work_dir) / f"serve_{method}_g{gamma}"
    work.mkdir(parents=True, exist_ok=True)
    serve_args = ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len)]
    serve_args += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    serve_args += ["--max-num-seqs", str(max(args.batch_sizes))]
    serve_args += ["--additional-config", json.dumps({"padrec": METHODS[method].padrec})]
    spec = speculative_config(args, method, gamma, table)
    if spec is not None:
        serve_args += ["--speculative-config", json.dumps(spec)]
    if (config := engine_compilation(args, method, gamma)) is not None:
        serve_args += ["--compilation-config", json.dumps(config)]
    tokens = catalog.layout.token_strings()
    records, lists = [], {}
    server = VllmServer(
        args.target, serve_args, port=args.port, log_path=work / "serve.log", env=runner_environment(method)
    )
    with server:
        for list_len in args.list_lens:
            for batch in args.batch_sizes:
                users = pass_users(args, samples, batch)
                name = f"{list_len}_{batch}"
                dataset = work / f"prompts_{name}.json"
                prompts = ["".join(tokens[t] for t in catalog.render_prompt(s.history)) for s in users]
                dataset.write_text(sharegpt_dataset(prompts))
                max_tokens = list_len * (catalog.num_slots + 1) + 1
                warm_up = {"model": SERVED_NAME, "prompt": prompts[0], "max_tokens": max_tokens, "temperature": 0}
                xargs = list_xargs(method, list_len)
                server.post_json("/v1/completions", warm_up | ({"vllm_xargs": xargs} if xargs else {}))
                before = metrics_counters(scrape(server.base))  # after the warm-up: the pass's counters alone
                command = bench_serve_command(
                    args, server.base, SERVED_NAME, dataset, max_tokens, xargs, batch, len(users)
                )
                command += ["--result-dir", str(work), "--result-filename", f"result_{name}.json"]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                result = json.loads((work / f"result_{name}.json").read_text())
                counters = counter_delta(before, metrics_counters(scrape(server.base)))
                texts = result["generated_texts"]
                parsed = [parse_text_list(catalog, text) for text in texts]
                items, invalid = [p.items for p in parsed], sum(p.invalid for p in parsed)
                targets = [s.targets for s in users]
                timing = serve_timing(result)
                record = pass_record(
                    method, gamma, list_len, batch, "serve", timing, items, targets, counters, invalid_items=invalid
                )
                records.append(record)
                lists[f"serve_{name}"] = texts
                print(json.dumps(record), flush=True)
    return server.startup_seconds or 0.0, records, lists


def sharegpt_dataset(prompts: list[str]) -> str:
    """The users' history prompts as a ``vllm bench serve`` dataset in ShareGPT's JSON form: one conversation a
    prompt, its reply left empty (``--sharegpt-output-len`` sets the length). vLLM's ``custom`` JSONL loader
    reads its file with pandas (``benchmarks/datasets/datasets.py``, ``CustomDataset.load_data``), which vLLM does
    not depend on (an install of the project's dependencies lacks it); its ShareGPT loader reads plain JSON and
    sends the prompt as it is, with no chat template."""
    conversations = [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": ""}]} for p in prompts]
    return json.dumps(conversations)


def bench_serve_command(
    args, base: str, model: str, dataset: Path, max_tokens: int, xargs: dict | None, batch: int, users: int
):
    """``vllm bench serve`` over a dataset of history prompts (``sharegpt_dataset``), ``batch`` requests in
    flight, greedy lists with the per-request settings ``xargs`` (``list_xargs``; None: plain completions), in
    order (the warm-up request is served_passes' own, before the counters are read)."""
    return [
        *("vllm", "bench", "serve", "--backend", "vllm", "--base-url", base, "--endpoint", "/v1/completions"),
        *("--model", model, "--tokenizer", args.target, "--dataset-name", "sharegpt", "--dataset-path", str(dataset)),
        *("--disable-shuffle", "--num-prompts", str(users), "--max-concurrency", str(batch)),
        *("--sharegpt-output-len", str(max_tokens), "--temperature", "0"),
        *(("--extra-body", json.dumps({"vllm_xargs": xargs})) if xargs else ()),
        *("--percentile-metrics", "e2el,ttft", "--metric-percentiles", "50,99", "--save-result", "--save-detailed"),
    ]


def metrics_counters(metrics) -> dict:
    """A server's spec-decode counters (``testing.metrics.Metrics``) in ``spec_counters``' form."""
    from vllm_padrec.integration.spec_decode_counters import SPEC_COUNTERS, SPEC_PER_POS

    counters = metrics.spec_counters()
    rounds, draft_tokens, accepted = (int(counters[name]) for name in SPEC_COUNTERS)
    return {"rounds": rounds, "draft_tokens": draft_tokens, "accepted": accepted, "per_pos": counters[SPEC_PER_POS]}


def parse_text_list(catalog, text: str):
    """The list a served list's text holds (its tokens read back by the catalog's layout), parsed."""
    from vllm_padrec.lists import parse_list

    return parse_list(catalog, catalog.layout.token_ids_of_text(text))


# -- results ----------------------------------------------------------------------------------------------------
def attach_baseline(results: list[dict]) -> None:
    """``speedup_vs_no_spec`` and ``equal_to_no_spec`` of every record, from its baseline's (``none``, or
    ``none_v1`` for the Model Runner V1 methods) in the same mode at the same list length and batch size; where
    the run has ``none_default_graphs``, the Model Runner V2 records' ``speedup_vs_default_graphs`` too, against
    no speculation as users run it (idempotent)."""
    for mode in MODES:
        for baseline in (DRAFT_FREE, V1_DRAFT_FREE):
            plain = next((r for r in results if r["method"] == baseline and r["mode"] == mode), None)
            if plain is not None:
                ours = [r for r in results if r["mode"] == mode and METHODS[r["method"]].baseline == baseline]
                attach_one_baseline(ours, plain)
        vanilla = next((r for r in results if r["method"] == DEFAULT_GRAPHS and r["mode"] == mode), None)
        if vanilla is not None:
            rates = {(r["list_len"], r["batch_size"]): r["tokens_per_s"] for r in vanilla["records"]}
            for result in results:
                if result["mode"] != mode or result is vanilla or METHODS[result["method"]].runner != "v2":
                    continue
                for r in result["records"]:
                    if (rate := rates.get((r["list_len"], r["batch_size"]))) and r["tokens_per_s"]:
                        r["speedup_vs_default_graphs"] = round(r["tokens_per_s"] / rate, 3)


def attach_one_baseline(results: list[dict], plain: dict) -> None:
    rates = {(r["list_len"], r["batch_size"]): r["tokens_per_s"] for r in plain["records"]}
    for result in results:
        for r in result["records"]:
            key = (r["list_len"], r["batch_size"])
            if rates.get(key) and r["tokens_per_s"]:
                r["speedup_vs_no_spec"] = round(r["tokens_per_s"] / rates[key], 3)
            name = f"{r['mode']}_{key[0]}_{key[1]}"
            ours, theirs = result["lists"].get(name), plain["lists"].get(name)
            if ours is not None and theirs is not None:
                compared = min(len(ours), len(theirs))
                r["users_compared"] = compared
                r["equal_to_no_spec"] = sum(a == b for a, b in zip(ours[:compared], theirs[:compared]))


# what makes two records the same measurement: a later run's record replaces an earlier one's (``--merge``)
RECORD_KEY = ("method", "mode", "dtype", "gamma", "list_len", "batch_size", "tensor_parallel_size")


def record_key(record: dict) -> tuple:
    fields = {"tensor_parallel_size": tensor_parallel_size(record)}
    return tuple(fields[field] if field in fields else record.get(field) for field in RECORD_KEY)


def target_training(target: str) -> dict:
    """The target checkpoint's training recipe and epochs (``padrec_recipe.json``), as record fields
    (``target_recipe``, ``target_epochs``); nothing where the folder has no readable recipe (a target trained
    elsewhere)."""
    from vllm_padrec.target.config import RECIPE_FILE

    try:
        recipe = json.loads((Path(target) / RECIPE_FILE).read_text())
        return {"target_recipe": str(recipe["name"]), "target_epochs": float(recipe["epochs"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def target_text(records: list[dict]) -> str:
    """The recipes and epochs of the targets the records ran on, for the Markdown's first line ("" where none
    says)."""
    epochs: dict[str, set[float]] = {}
    for r in records:
        if r.get("target_recipe"):
            epochs.setdefault(r["target_recipe"], set()).add(r["target_epochs"])
    said = "; ".join(
        f"recipe {name}, epochs {' and '.join(f'{e:g}' for e in sorted(values))}"
        for name, values in sorted(epochs.items())
    )
    return f" ({said})" if said else ""


def summarize(
    args, results: list[dict], errors: dict, table: list | None, earlier: list[dict] = (), skipped: dict | None = None
) -> dict:
    """The results file's payload: this run's records merged with ``earlier``'s, the goals' verdicts, and the
    configurations that failed (``errors``) or were not run by design, each with why (``skipped``)."""
    import torch

    run = {"dtype": args.dtype, "tensor_parallel_size": tensor_parallel_size(args.engine_args)}
    run |= target_training(args.target)  # each record keeps its own run's target through later merges
    records = [record | run for r in results for record in r["records"]]
    records = merged(list(earlier), records, record_key)  # --merge
    return {
        "target": args.target,
        "dataset": Path(args.dataset).name,
        "padrec_draft": args.padrec_draft,
        "eagle_draft": args.eagle_draft,
        "eagle_one_step_draft": args.eagle_one_step_draft,
        "padrec_one_step_draft": args.padrec_one_step_draft,
        "medusa_draft": args.medusa_draft,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "adaptive_table": table,
        "startup_seconds": {f"{r['method']}_g{r['gamma']}_{r['mode']}": r["startup_seconds"] for r in results},
        "records": records,
        "goals": spec_decode_goals(records),
        "errors": errors,
        "skipped": dict(skipped or {}),
    }


def steps_per_list(record: dict) -> float | None:
    """A list's engine steps at one request at a time: the prefill step and its speculative rounds, or for an
    engine without a draft its output tokens (one a step, the prefill's first); None where the record lacks
    them (records before 2026-12-02)."""
    if not record["gamma"]:
        return record.get("tokens_per_list") or None
    rounds = record.get("rounds_per_list")
    return rounds + 1 if rounds else None


def batch_one_costs(records: list[dict]) -> list[dict]:
    """Per method and gamma (offline, one request at a time, two or more list lengths): the least-squares line
    of p50 latency against steps per list, ``p50 = fixed_ms + steps * ms_per_step``: what a step costs and what
    a list costs on top of its steps (prefill, the step after its last round, request bookkeeping)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if mode_of(r) == OFFLINE and r["batch_size"] == 1 and steps_per_list(r) is not None:
            groups.setdefault((r["method"], r["gamma"], r.get("dtype")), []).append(r)
    costs = []
    for (method, gamma, dtype), group in groups.items():
        points = [(steps_per_list(r), r["p50_ms"]) for r in group]
        if len({x for x, _ in points}) < 2:
            continue
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
        repeats = [abs(r["p50_ms_repeat"] / r["p50_ms"] - 1) for r in group if r.get("p50_ms_repeat")]
        costs.append(
            {
                "method": method,
                "gamma": gamma,
                "dtype": dtype,
                "list_lens": sorted(r["list_len"] for r in group),
                "ms_per_step": round(slope, 3),
                "fixed_ms_per_list": round(mean_y - slope * mean_x, 2),
                "repeat_spread": round(max(repeats), 3) if repeats else None,
            }
        )
    return costs


def batch_one_costs_markdown(records: list[dict]) -> list[str]:
    costs = batch_one_costs(records)
    if not costs:
        return []
    lines = [
        "## One request at a time: cost per step and per list",
        "",
        "p50 latency against engine steps per list, a line through the list lengths: the prefill step and the "
        "rounds for a draft, the output tokens without one (a token a step). Repeat spread: the largest change of a "
        "pass's p50 when the pass runs again at the end of the same engine's passes.",
        "",
        "| method | dtype | gamma | list lengths | ms per step | fixed ms per list | repeat spread |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for c in costs:
        spread = "-" if c["repeat_spread"] is None else f"{100 * c['repeat_spread']:.1f} %"
        lines.append(
            f"| {c['method']} | {c['dtype']} | {c['gamma']} | {', '.join(map(str, c['list_lens']))} | "
            f"{c['ms_per_step']} | {c['fixed_ms_per_list']} | {spread} |"
        )
    return [*lines, ""]


def batch_one_phases_markdown(records: list[dict]) -> list[str]:
    """The one-at-a-time passes' medians by phase (``phases_ms``, ``testing/request_phases.py``)."""
    timed = [r for r in records if r.get("phases_ms")]
    if not timed:
        return []
    lines = [
        "## One request at a time: where a list's time goes",
        "",
        "Medians over a pass's calls (ms), from vLLM's timestamps of each request (`testing/request_phases.py`): "
        "submit (front end to the engine core's queue), queue, first token (the prefill step; with a draft, its "
        "prefill and first drafts too), decode (every later step or round), finish (the last output to the caller). "
        "Per step: decode over the steps after the prefill (rounds with a draft, tokens - 1 without); outside "
        "decode: the other four phases, what a list costs beside its steps.",
        "",
        "| method | dtype | gamma | list_len | p50 ms | submit | queue | first token | decode | finish "
        "| decode ms per step | outside decode |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in timed:
        phases, steps = r["phases_ms"], steps_per_list(r)
        per_step = round(phases["decode"] / (steps - 1), 3) if steps and steps > 1 else None
        outside = round(sum(phases[p] for p in PHASES if p != "decode"), 3)
        lines.append(
            f"| {r['method']}{earlier_mark(r)} | {r.get('dtype', '-')} | {r['gamma']} | {r['list_len']} | "
            f"{cell(r['p50_ms'])} | " + " | ".join(cell(phases[p]) for p in PHASES) + f" | {cell(per_step)} | "
            f"{cell(outside)} |"
        )
    return [*lines, ""]


def pinning_markdown(records: list[dict]) -> list[str]:
    """The CPU sets of the run's pinned engines (``--pin-cpus``), one line; nothing where none was pinned."""
    sets = {json.dumps(r["cpu_pinning"]): r["cpu_pinning"] for r in records if r.get("cpu_pinning")}
    if not sets:
        return []
    said = "; ".join(", ".join(f"{name} {cpus}" for name, cpus in pins.items()) for pins in sets.values())
    return [f"Engines pinned to physical cores of their own (`--pin-cpus`, CPU sets): {said}.", ""]


def graphs_markdown(records: list[dict]) -> list[str]:
    """The engines' CUDA-graph settings where a record gives one (``max_cudagraph_capture_size``,
    ``cudagraph_mode``), one line; nothing where every engine kept vLLM's defaults."""
    settings = sorted(
        {
            (r["method"], r["gamma"], r.get("max_cudagraph_capture_size"), r.get("cudagraph_mode"))
            for r in records
            if r.get("max_cudagraph_capture_size") or r.get("cudagraph_mode")
        },
        key=lambda setting: (setting[0], setting[1]),
    )
    if not settings:
        return []
    said = "; ".join(
        f"{method} g{gamma}: graphs up to {size or 'vLLM default'} tokens, {cudagraph_mode_name(mode)}"
        for method, gamma, size, mode in settings
    )
    default = f"`{VLLM_DEFAULT_CUDAGRAPH_MODE}`, up to its cap"
    return [f"CUDA graphs where not vLLM's defaults ({default}): {said}.", ""]


def default_graphs_markdown(records: list[dict]) -> list[str]:
    """The records' tokens/s over ``none_default_graphs``' (no speculation under vLLM's default CUDA graphs, the
    baseline as users run it) beside their speedup over the run's ``none``; nothing where the run has none."""
    rows = [r for r in records if r.get("speedup_vs_default_graphs") is not None]
    if not rows:
        return []
    lines = [
        "## Against no speculation under vLLM's default CUDA graphs",
        "",
        f"`{DEFAULT_GRAPHS}`: no speculation with vLLM's default graphs, whatever this run's graph settings, as users "
        "run vLLM. Speedup over `none`: over this run's no speculation, whose graphs are the run's (paired where "
        "the run alternated the calls); over default graphs: tokens/s over its own, unpaired.",
        "",
        "| method | gamma | list_len | batch_size | tokens/s | speedup over `none` | speedup over default graphs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['gamma']} | {r['list_len']} | {r['batch_size']} | {cell(r['tokens_per_s'])} | "
            f"{cell(speedup(r))}{paired_mark(r)} | {cell(r['speedup_vs_default_graphs'])} |"
        )
    return [*lines, ""]


def rivals_markdown(records: list[dict]) -> list[str]:
    """padrec's passes run again beside each ``--rivals`` engine, call by call; the engines that did not start."""
    rows = [(r, rival, m) for r in records for rival, m in (r.get("rivals") or {}).items()]
    failed = {rival: why for r in records for rival, why in (r.get("rival_errors") or {}).items()}
    if not rows and not failed:
        return []
    lines = [
        f"## {RIVALS_HOST} against other drafts, call by call",
        "",
        f"`--rivals`: each {RIVALS_HOST} pass's users ran again on {RIVALS_HOST}'s engine and on a rival draft's "
        f"engine in the same process, call by call (ABBA), so that the machine's drift falls on both. Speedup: "
        f"{RIVALS_HOST}'s tokens/s over the rival's. {RIVALS_HOST} as its own rival is the control: two engines of "
        "one configuration, whose ratio would be 1.0 without a spread between engines. Acceptance: each engine's "
        "own count over these calls (`acceptance_tally.py`; - for runs before it counted), which also counts the "
        "round a list had in flight when it stopped (vLLM's asynchronous scheduling; vLLM's counters leave it out), "
        "so it reads below vLLM's acceptance length for the same engine: compare the two sides, not the columns "
        f"above. Net of the control: the speedup over the rival divided by the same pass's control (`net_of_control`): "
        "the engines start in one order, and a control below 1.0 is that order's bias, which the raw ratio carries "
        "too. Calls a side: at least "
        f"{RIVAL_MIN_CALLS}, the users cycled (- for runs before, which made one call a side per batch of users); "
        "lists alike: each user's list once. SM MHz: the GPU's SM clock (median) during each side's calls "
        "(`gpu_clocks`).",
        "",
        "| method | rival | gamma | list_len | batch_size | users | calls a side | p50 ms | rival p50 ms | "
        "speedup over the rival | net of the control | acceptance length | rival acceptance length | lists alike | "
        "SM MHz | rival SM MHz |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, rival, m in rows:
        net = net_of_control(r, rival) if rival != RIVALS_HOST else None
        lines.append(
            f"| {r['method']}{earlier_mark(r)} | {rival} | {r['gamma']} | {r['list_len']} | {r['batch_size']} | "
            f"{r['users']} | {cell(m.get('calls'))} | {cell(m['p50_ms'])} | {cell(m['rival_p50_ms'])} | "
            f"{m['speedup']} | {cell(None if net is None else round(net, 3))} | "
            f"{cell(m.get('acceptance_length'))} | {cell(m.get('rival_acceptance_length'))} | "
            f"{m['equal']} / "
            f"{r['users']} | {cell(m.get('sm_mhz'))} | {cell(m.get('rival_sm_mhz'))} |"
        )
    lines += [f"Rival {rival} did not start: `{why[-300:]}`" for rival, why in failed.items()]
    return [*lines, ""]


def gpu_clocks_markdown(records: list[dict]) -> list[str]:
    """The GPU's state while each pass ran (``gpu_clocks``, ``testing/gpu_clocks.py``), and while the one-request
    passes ran again (``gpu_clocks_repeat``): beside each p50, to tell a slower pass from a slower GPU."""
    sampled = [r for r in records if r.get("gpu_clocks")]
    if not sampled:
        return []
    lines = [
        "## The GPU while each pass ran",
        "",
        "From one `nvidia-smi` stream (a row every 200 ms) during each pass's timed calls: the SM clock's median and "
        "lowest value, the memory clock's median, median power and highest temperature. Paired passes: the SM "
        "clock's median in the rows that came during the engine's own calls and during its paired baseline's. "
        "Repeat: the one-request pass run again after the others, its p50 and SM clock.",
        "",
        "| method | gamma | list_len | batch_size | p50 ms | SM MHz | SM MHz lowest | memory MHz | power W | "
        "temperature C | rows | SM MHz, its calls | SM MHz, baseline's calls | p50 ms, repeat | SM MHz, repeat |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sampled:
        c, again = r["gpu_clocks"], r.get("gpu_clocks_repeat") or {}
        sides = {side: (s or {}).get("sm_mhz_median") for side, s in (r.get("gpu_clocks_paired") or {}).items()}
        lines.append(
            f"| {r['method']}{earlier_mark(r)} | {r['gamma']} | {r['list_len']} | {r['batch_size']} | "
            f"{cell(r['p50_ms'])} | {cell(c['sm_mhz_median'])} | {cell(c['sm_mhz_min'])} | "
            f"{cell(c['mem_mhz_median'])} | {cell(c['power_w_median'])} | {cell(c['temp_c_max'])} | {c['samples']} | "
            f"{cell(sides.get('engine'))} | {cell(sides.get('baseline'))} | "
            f"{cell(r.get('p50_ms_repeat'))} | {cell(again.get('sm_mhz_median'))} |"
        )
    return [*lines, ""]


def loop_switch_markdown(records: list[dict]) -> list[str]:
    """padrec_loop's passes with the graph switched on and off call by call in one engine."""
    switched = [r for r in records if r.get("loop_switch_speedup") is not None]
    failed = sorted({r["loop_switch_error"] for r in records if r.get("loop_switch_error")})
    if not switched and not failed:
        return []
    lines = [
        "## The decode loop graph against vLLM's loop, in one engine",
        "",
        "`padrec_loop`'s engine answers each pass's users again with `padrec.decode_loop_graph` switched on and off "
        "call by call (ABBA): one engine, so the ratio carries none of the spread between two engines. Replays: the "
        "rounds the graph served in the on calls. Decode: the median decode phase of a one-request call "
        "(`testing/request_phases.py`), on and off.",
        "",
        "| gamma | list_len | batch_size | users | p50 ms on | p50 ms off | tokens/s on over off | equal | replays "
        "| decode ms on | decode ms off |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in switched:
        decode = {side: phases["decode"] for side, phases in r.get("loop_switch_phases_ms", {}).items()}
        lines.append(
            f"| {r['gamma']} | {r['list_len']} | {r['batch_size']} | {r['users']} | {cell(r['loop_switch_p50_ms'])} | "
            f"{cell(r['loop_switch_baseline_p50_ms'])} | {cell(r['loop_switch_speedup'])} | "
            f"{r['loop_switch_equal']} / {r['users']} | {r['loop_replays']} | {cell(decode.get('on'))} | "
            f"{cell(decode.get('off'))} |"
        )
    return [*lines, *(f"Not switched: {why}" for why in failed), ""]


def markdown(payload: dict) -> str:
    lines = [
        f"# List generation speed on {payload['dataset']}",
        "",
        f"Target `{payload['target']}`{target_text(payload['records'])}; {payload['device']}, {payload['date']}, "
        f"{payload['dtype']}. Greedy lists, "
        "constrained on vLLM's Model Runner V2 (runner v2); a list's latency is its call's (batch_size requests per "
        "call). Speedup: tokens/s over `none`'s at the same list length and batch size. Equal: lists equal to "
        "`none`'s token for token. Runner v1 (vanilla vLLM's n-gram and Medusa drafts, which vLLM 0.26.0 runs on "
        "Model Runner V1 only): unconstrained lists, speedup and equality against `none_v1`.",
        "",
        *([f"Note: {payload['note']}", ""] if payload.get("note") else []),
        *(
            [f"`padrec_adaptive`'s drafts by batch size: `{json.dumps(payload['adaptive_table'])}`", ""]
            if payload.get("adaptive_table")
            else []
        ),
        *earlier_runs_markdown(payload["records"]),
        *goals_markdown(spec_decode_goals(payload["records"]), issue=14),
        *([masks, ""] if (masks := masks_alone(payload["records"])) else []),
        *([spread, ""] if (spread := engine_spread_text(payload["records"])) else []),
        *pinning_markdown(payload["records"]),
        *graphs_markdown(payload["records"]),
        *default_graphs_markdown(payload["records"]),
        *batch_one_costs_markdown(payload["records"]),
        *batch_one_phases_markdown(payload["records"]),
        *loop_switch_markdown(payload["records"]),
        *rivals_markdown(payload["records"]),
        *gpu_clocks_markdown(payload["records"]),
        "## Records",
        "",
        "Loop graph: the rounds of the timed pass that the draft's decode loop graph served "
        "(`padrec.decode_loop_graph`, on by default since 2026-12-03; 0 where the engine has no loop graphs); records "
        "from before the count say whether the setting was on."
        + (SERVED_LOOP_GRAPHS if any(mode_of(r) == SERVE for r in payload["records"]) else ""),
        "",
        "| method | runner | engine core | mode | dtype | gamma | list_len | batch_size | users | tokens/s | speedup "
        "| paired speedup | p50 ms | p99 ms | acceptance length | equal to baseline | invalid items | loop graph "
        "| Recall@10 | NDCG@10 |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["records"]:
        equal = "-" if r["users_compared"] is None else f"{r['equal_to_no_spec']} / {r['users_compared']}"
        lines.append(
            f"| {r['method']}{earlier_mark(r)} | {runner_of(r)} | {engine_core_of(r)} | {r['mode']} | "
            f"{r.get('dtype', payload['dtype'])} | {r['gamma']} | "
            f"{r['list_len']} | {r['batch_size']} | {r['users']} | "
            f"{cell(r['tokens_per_s'])} | {cell(r['speedup_vs_no_spec'])} | {cell(r.get('paired_speedup'))} | "
            f"{cell(r['p50_ms'])} | "
            f"{cell(r['p99_ms'])} | {cell(r['acceptance_length'])} | {equal} | {cell(r.get('invalid_items'))} | "
            f"{loop_graph_of(r)} | {r['recall_at_10']} | {r['ndcg_at_10']} |"
        )
    lines.append("")
    lines += failures_markdown(payload.get("errors", {}))
    lines += [f"Configuration {name} not run: {why}" for name, why in payload.get("skipped", {}).items()]
    return "\n".join(lines) + "\n"


def plot(plt, payload: dict):
    """Speedup by batch size, one line per method and gamma (first list length); acceptance by draft step. One
    legend beside both panels (a line keeps its color in both), each earlier run's lines marked with its date."""
    records = payload["records"]
    if not records:
        return None
    list_len = min(r["list_len"] for r in records)
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 4.5))
    lines: dict[str, list[tuple[int, float]]] = {}
    steps: dict[str, list[float]] = {}
    for r in records:
        label = r["method"] if r["method"] in (DRAFT_FREE, ADAPTIVE) else f"{r['method']} (gamma {r['gamma']})"
        label += mode_mark(r) + earlier_mark(r)
        if r["list_len"] == list_len and (ratio := speedup(r)) is not None:
            lines.setdefault(label, []).append((r["batch_size"], ratio))
        if r["list_len"] == list_len and r["batch_size"] == 1 and r["accepted_per_draft_step"]:
            steps[label] = r["accepted_per_draft_step"]
    labels = list(dict.fromkeys([*lines, *steps]))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(labels) > len(palette):  # more lines than the default cycle's 10 colors: 20 distinct ones
        palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    colors = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    for label, points in lines.items():  # one color per method and gamma in both panels
        sizes, speedups = zip(*sorted(points))
        left.plot(sizes, speedups, marker="o", label=label, color=colors[label])
    left.axhline(1.0, color="gray", linewidth=0.8)
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size")
    left.set_ylabel("speedup over no speculation\n(tokens/s, paired where measured)")
    left.set_title(f"Speedup by batch size (lists of {list_len})")
    for label, rates in steps.items():
        right.plot(range(1, len(rates) + 1), rates, marker="o", label=label, color=colors[label])
    right.set_xlabel("draft step")
    right.set_ylabel("accepted drafts per round")
    right.set_title("Acceptance by draft step (batch 1)")
    handles = {h.get_label(): h for axis in (left, right) for h in axis.get_lines() if h.get_label() in colors}
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.legend([handles[label] for label in labels], labels, loc="center left", bbox_to_anchor=(0.75, 0.5), fontsize=8)
    return fig


def render(json_path: str, note: str | None = None) -> None:
    """Rewrite the Markdown and the plot from a results JSON (with ``note`` attached to it, when given)."""

    def refresh(payload: dict) -> None:
        payload["goals"] = spec_decode_goals(payload["records"])

    rerender(json_path, note, markdown, plot, refresh)


# -- driver -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--target", help="the target checkpoint folder (its catalog and recipe too)")
    add("--dataset", help="the dataset folder (its test users)")
    add("--padrec-draft", help="the PAD-Rec draft folder (methods padrec, padrec_adaptive)")
    add("--eagle-draft", help="vLLM's EAGLE draft folder (methods eagle, eagle_vanilla)")
    add("--eagle-one-step-draft", help="an EAGLE draft trained teacher-forced one step (method eagle_one_step)")
    add("--padrec-one-step-draft", help="a PAD-Rec draft trained teacher-forced one step (method padrec_one_step)")
    add("--medusa-draft", help="Medusa heads (method medusa; train-draft --method medusa)")
    add(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help=f"methods to run (default: {' '.join(DEFAULT_METHODS)}); ngram and medusa need none_v1; "
        "none_default_graphs: no speculation under vLLM's default CUDA graphs, beside a run that changes them",
    )
    add(
        "--ngram-lookup",
        nargs=2,
        type=int,
        default=[2, 5],
        metavar=("MIN", "MAX"),
        help="method ngram: vLLM's prompt_lookup_min and prompt_lookup_max (default 2 5)",
    )
    add("--gammas", nargs="+", type=int, default=[3, 5], help="draft steps of the speculative methods (default 3 5)")
    add(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=[1, 4, 16, 64, 128],
        help="requests per call (default 1 4 16 64 128)",
    )
    add("--list-lens", nargs="+", type=int, default=[10, 20], help="items per list (default 10 20)")
    add("--users", type=int, default=256, help="test users per pass at batch sizes above 1 (default 256)")
    add("--users-latency", type=int, default=50, help="test users sent one at a time (default 50)")
    add(
        "--modes",
        nargs="+",
        choices=MODES,
        default=[OFFLINE],
        help="how each configuration is measured: offline (an in-process vllm.LLM), serve (vllm serve, measured by "
        "vllm bench serve); each mode's speedups against none's in the same mode (default offline)",
    )
    add("--port", type=int, default=8051, help="with --modes serve: the servers' port (default 8051)")
    add(
        "--config-timeout",
        type=float,
        default=1200.0,
        metavar="S",
        help="stop a configuration (its engines too) that runs longer than this, and go on (default 1200; 0: never)",
    )
    add("--min-gain", type=float, default=0.02, help="padrec_adaptive: the gain over none a gamma needs (default 0.02)")
    add(
        "--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"), help="model dtype (default bfloat16)"
    )
    add("--max-model-len", type=int, default=512, help="vLLM max_model_len (default 512)")
    add(
        "--max-cudagraph-capture-size",
        type=capture_size_arg,
        default="verify",
        metavar="{verify,prompts,vllm,TOKENS}",
        help="the speculative engines' largest CUDA-graph step: verify (default) raises vLLM's cap of 512 tokens to "
        "the largest verification step, max(batch sizes) * (1 + gamma), where it is larger; vllm keeps vLLM's "
        "default; or a number of tokens. Engines without a draft keep vLLM's default, except with prompts: every "
        "engine, none included, also captures the test users' longest prompt, so that each list's prefill replays "
        "graphs as in an engine of vLLM's default max_num_seqs (recorded per record)",
    )
    add(
        "--cudagraph-mode",
        default="vllm",
        choices=list(CUDAGRAPH_MODES),
        help="every engine's CUDA-graph mode: vllm (default) keeps vLLM's FULL_AND_PIECEWISE, whose prefills replay "
        "piecewise graphs with attention run eagerly layer by layer; full sets cudagraph_mode FULL, whole-model "
        "graphs for prefills too (with --max-cudagraph-capture-size prompts, so that they hold the prompts; "
        "recorded per record)",
    )
    add(
        "--gpu-memory-utilization",
        type=float,
        help=f"vLLM's share of GPU memory for the measured engine (default {DEFAULT_MEMORY:g}, or what the engines "
        f"beside it leave of {MEMORY_CAP:g} where that is less)",
    )
    add(
        "--pin-cpus",
        action="store_true",
        help="give each offline engine's core process (the draft's, the paired baseline's) and the benchmark's own "
        "threads physical cores of their own (records: cpu_pinning); an experiment on the spread between engines "
        "of one configuration (needs --engine-core own_process, not with --modes serve)",
    )
    add(
        "--rivals",
        nargs="+",
        default=[],
        choices=[m for m, spec in METHODS.items() if spec.drafts_on_v2],
        metavar="METHOD",
        help=f"draft methods whose engines ({RIVAL_MEMORY:g} of GPU memory each, same gamma) stand beside "
        f"{RIVALS_HOST}'s in its process: after each {RIVALS_HOST} pass its users run again on both engines, call "
        "by call (ABBA), so both see the machine's drift alike (records: rivals, per rival its speedup, both p50s "
        f"and the lists alike); {RIVALS_HOST} itself as a rival is the control (two engines of one configuration). "
        "Issue 14's 5 %% over EAGLE reads them where measured",
    )
    add(
        "--gpu-clocks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the GPU's SM and memory clocks, power and temperature while each offline pass runs, from one "
        "nvidia-smi stream (records: gpu_clocks; default on; nothing where nvidia-smi is missing)",
    )
    add(
        "--engine-core",
        default=OWN_PROCESS,
        choices=(OWN_PROCESS, IN_PROCESS),
        help="offline engines' core in its own process, as vLLM runs it by default (default), or in the "
        "benchmark's process (VLLM_ENABLE_V1_MULTIPROCESSING=0)",
    )
    add(
        "--pair",
        default="all",
        choices=PAIRINGS,
        help="the batch sizes whose passes alternate, call by call, between a draft's engine and a baseline engine "
        f"(its method's baseline, {PAIRED_BASELINE_MEMORY:g} of GPU memory) in the same process: all (default), one "
        "(batch size 1) or none; paired_speedup and paired_baseline_p50_ms are robust to the machine's drift "
        "(needs --engine-core own_process)",
    )
    add(
        "--engine-args",
        type=json_object,
        default={},
        metavar="JSON",
        help="more vllm.LLM arguments for every offline engine, e.g. '{\"tensor_parallel_size\": 2}' (recorded; not "
        "with --modes serve)",
    )
    add_run_options(parser, "bench_spec_decode", "spec_decode", "<method>_g<gamma>")
    add("--one", default=None, choices=list(METHODS), help=argparse.SUPPRESS)  # child: this method
    add("--one-gamma", type=int, default=0, help=argparse.SUPPRESS)
    add("--one-mode", default=OFFLINE, choices=MODES, help=argparse.SUPPRESS)
    add("--gamma-table", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        return args
    if args.target is None or args.dataset is None:
        parser.error("--target and --dataset are required (or --render JSON)")
    drafts = {METHODS[m].draft for m in args.methods} - {None}
    for draft in sorted(drafts):
        if getattr(args, f"{draft}_draft") is None:
            needing = [m for m in args.methods if METHODS[m].draft == draft]
            parser.error(f"--{draft.replace('_', '-')}-draft is required by the methods {needing}")
    if any(g < 1 for g in args.gammas) or any(b < 1 for b in args.batch_sizes) or any(n < 1 for n in args.list_lens):
        parser.error("every gamma, batch size and list length must be >= 1")
    serving = SERVE in args.modes
    if ADAPTIVE in args.methods and OFFLINE not in args.modes:
        parser.error(f"{ADAPTIVE} reads its table from the run's offline records: --modes needs offline too")
    if serving and args.engine_args:
        parser.error("--engine-args reach the offline engines only: not with --modes serve")
    if args.rivals:
        if RIVALS_HOST not in args.methods:
            parser.error(f"--rivals stand beside {RIVALS_HOST}'s engine: run {RIVALS_HOST} too")
        if serving or args.engine_core == IN_PROCESS or args.pin_cpus:
            parser.error(
                "--rivals runs engines beside the offline one, each core in its own process, unpinned: not "
                "with --modes serve, --engine-core in_process or --pin-cpus"
            )
        for rival in args.rivals:
            if getattr(args, f"{METHODS[rival].draft}_draft") is None:
                parser.error(f"--rivals {rival} needs --{METHODS[rival].draft.replace('_', '-')}-draft")
    if args.pin_cpus and (args.engine_core == IN_PROCESS or serving):
        parser.error(
            "--pin-cpus pins offline engines whose core runs in its own process: not with --engine-core "
            "in_process or --modes serve"
        )
    if args.pin_cpus:
        try:
            cpu_pinning.split_cores(os.sched_getaffinity(0), len(PINNED))
        except ValueError as error:
            parser.error(f"--pin-cpus: {error}")
    if args.pair != "none" and args.engine_core == IN_PROCESS:
        parser.error(f"--pair {args.pair} runs two engines in one process: each needs its core in its own process")
    if len(set(args.rivals)) != len(args.rivals):
        parser.error(f"--rivals: each method once, got {' '.join(args.rivals)}")
    beside = (PAIRED_BASELINE_MEMORY if args.pair != "none" else 0) + RIVAL_MEMORY * len(args.rivals)
    if args.gpu_memory_utilization is None:
        args.gpu_memory_utilization = min(DEFAULT_MEMORY, round(MEMORY_CAP - beside, 2))
        if args.gpu_memory_utilization < RIVAL_MEMORY:
            parser.error(
                f"the engines beside the measured one (the paired baseline's {PAIRED_BASELINE_MEMORY:g} unless --pair "
                f"none, {RIVAL_MEMORY:g} a rival) leave it {args.gpu_memory_utilization:g} of GPU memory, less than "
                f"a rival's {RIVAL_MEMORY:g}: fewer --rivals"
            )
    if beside and args.gpu_memory_utilization + beside > MEMORY_CAP + 1e-9:  # shares in hundredths, summed in floats
        parser.error(
            f"--gpu-memory-utilization {args.gpu_memory_utilization:g} leaves no room for the engines beside it "
            f"(the paired baseline's {PAIRED_BASELINE_MEMORY:g} unless --pair none, {RIVAL_MEMORY:g} a rival): "
            f"at most {MEMORY_CAP - beside:.2f}"
        )
    if ADAPTIVE in args.methods and not {DRAFT_FREE, "padrec"} <= set(args.methods):
        parser.error("padrec_adaptive picks its drafts from this run's none and padrec records: run them too")
    for method in args.methods:
        if METHODS[method].runner == "v1" and V1_DRAFT_FREE not in args.methods:
            parser.error(f"{method} runs on Model Runner V1, measured against none_v1: run none_v1 too")
    if not 1 <= args.ngram_lookup[0] <= args.ngram_lookup[1]:
        parser.error("--ngram-lookup MIN MAX needs 1 <= MIN <= MAX")
    if "medusa" in args.methods and not (Path(args.medusa_draft) / "config.json").is_file():
        parser.error(f"--medusa-draft {args.medusa_draft} holds no config.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(args.render, args.note)
        return 0
    if args.one:
        Path(args.result).write_text(json.dumps(run_config(args)))
        return 0
    forwarded = sys.argv[1:] if argv is None else list(argv)
    name = args.name or f"spec_decode_{Path(args.dataset).name}"
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    results, errors, skipped, table = [], {}, {}, None  # errors: failed; skipped: not run by design
    earlier = earlier_records(Path(args.out) / f"{name}.json") if args.merge else []

    def write(final: bool) -> dict:
        attach_baseline(results)
        payload = summarize(args, results, errors, table, earlier, skipped)
        payload["command"] = command_line("benchmarks.bench_spec_decode", forwarded)
        return write_progress(args.out, name, payload, len(results), final, markdown, plot)

    for method, gamma in configurations(args):
        if (why := skipped_configuration(args, method, gamma)) is not None:
            skipped[f"{method}_g{gamma}"] = why
            continue
        argv = [*forwarded, "--one", method, "--one-gamma", str(gamma)]
        if method == ADAPTIVE:
            from vllm_padrec.integration.gamma_schedule import drafts_anywhere

            offline = [r for res in results if res["mode"] == OFFLINE for r in res["records"]]
            try:
                table = adaptive_table(offline, args)
            except ValueError as error:
                errors[f"{method}_g{gamma}"] = f"no table: {error}"
                continue
            if not drafts_anywhere(table):  # served without a draft: none's records are the policy's
                skipped[f"{method}_g{gamma}"] = f"its table {table} drafts at no batch size (none's records)"
                continue
            argv += ["--gamma-table", json.dumps(table)]
        for mode in (mode for mode in MODES if mode in args.modes):
            config = f"{method}_g{gamma}" + ("" if mode == OFFLINE else f"_{mode}")
            result, error = run_configuration(
                "benchmarks.bench_spec_decode",
                "bench_spec_decode",
                config,
                [*argv, "--one-mode", mode],
                args.work_dir,
                args.cache_root,
                timeout_s=args.config_timeout,
            )
            if error is not None:
                errors[config] = error
            if result is not None:
                results.append(result)
            write(final=False)
    payload = write(final=True)
    print(markdown(payload))
    return 1 if errors else 0  # a configuration skipped by design is no failure


if __name__ == "__main__":
    sys.exit(main())
