"""The project's GPU work on the H200 device machine, as jobs in daemons, in few device calls (README "GPU machine").

A device machine is bare, is given back 30 s after a call returns, and runs a call for at most
10 minutes, so long work runs in daemons (``setsid``) that outlive the calls, and each call either
queues jobs or waits for them. Calls, from the repository root, back to back (kind ``nvidia-h200``,
or ``nvidia-h200-x2`` for two GPUs):

    1  carry [.vllmkit/part1, .gpudata, .baseline]
       bash .vllmkit/part1/stash.sh && python3 benchmarks/gpu_session.py start
    2  carry [.vllmkit/part2]
       bash .vllmkit/part2/stash.sh && python3 benchmarks/gpu_session.py status
    3  carry [.vllmkit/part3]
       bash .vllmkit/part3/install.sh && . /tmp/vllmkit/env.sh && python3 benchmarks/gpu_session.py checks
    4.. . /tmp/vllmkit/env.sh && python3 benchmarks/gpu_session.py wait 540

For the bench target's results, call 1 runs ``start bench_target bench_eval bench_drafts acceptance
--target bench`` (``--drafts padrec`` trains only the head the vLLM jobs need), and call 3 ``checks JOB...``.
Issue 12's top-K results for both datasets, on ``nvidia-h200-x2``: call 1 ``start bench_target
bench_target_games --target bench``, call 3 ``checks bench_topk bench_topk_games``. On one H200, one
dataset a hold (games_atspeed: about 27 minutes, training 8.5, the benchmark 17): call 1 ``start
bench_target_games --target bench``, call 3 ``checks bench_topk_games``, then ``wait 570`` calls. Make
each call as soon as the one before returns: the machine goes back 30 s after a call, and with it the
trained target and the run in progress. Issue 13's must-show, one dataset a hold (beauty_atspeed, 2026-12-02: 29
minutes; the target 4 at ``--bench-epochs 1``, its three AtSpeed heads 3 side by side at ``--draft-steps 600``,
bench_topk_atspeed 21): call 1 ``start bench_target atspeed_drafts --target bench --bench-epochs 1 --draft-steps
600`` (games_atspeed: ``--dataset games_atspeed --bench-epochs 0.55``, where issue 12's run of the recipe had its
best validation loss, an epoch there being 2.4 of beauty's), call 3 ``checks bench_topk_atspeed
topk_drafted_tests bench_atspeed`` (vLLM jobs wait for the trainings; the must-show first, then the tests, then
bench_atspeed's acceptance of each head, if the hold lasts), then ``wait 570`` calls. Issue 14's list speed, some
methods a hold, each hold with ``none`` (each method and gamma is an engine of 50-75 s start-up, and a draft's
batch-1 passes pair with a baseline engine, about a minute more; 2026-12-02, before the pairing,
28 minutes: the target 4 at ``--bench-epochs 1``, the heads 4, seven engines 14): call 1 ``start bench_target
bench_drafts --target bench --bench-epochs 1 --drafts padrec_eagle --draft-steps 600 --spec-methods none padrec
eagle eagle_vanilla`` (the methods are given here: bench_drafts trains the Medusa heads only for ``medusa``),
call 3 ``checks bench_spec_decode``; later holds ``--spec-methods none eagle_one_step padrec padrec_adaptive``
(call 1 also queuing ``acceptance --accept-skip-forced --accept-users 100``: the forced-steps lever on the bench
heads, plain torch, about 3 minutes; call 3 ``checks bench_spec_decode engine_step --engine-concurrency 1
--engine-users 50 --engine-configs baseline spec --engine-profile baseline spec``: one request's steps,
profiled), ``none none_v1 ngram medusa``, and ``--spec-dtype float32`` for the equality goal. The second hold
(2026-12-02) lost its machine after ``none`` and ``eagle_one_step``; the third (2026-12-03, 22 minutes: target 4,
head 3, engines 15) ran ``--spec-methods none padrec padrec_tail padrec_adaptive`` (the adaptive engine failed
capture on a vLLM bug worked around since); the fourth (2026-12-03) lost its machine between two calls after the
training, and its last 10 minutes ran ``start train --target small`` and ``checks spec_decode_smoke`` (the batch-1
phase split of ``spec_decode_smoke.md``: a round, 1.94 plain steps, is what to cut); the fifth (2026-12-03: target
4, head 3, engine_step 5, then none and padrec gamma 5 before the machine was lost during padrec_adaptive) profiled
the round: call 1 ``start bench_target bench_drafts --target bench --bench-epochs 1 --drafts padrec --draft-steps 600
--spec-methods none padrec padrec_adaptive --spec-gammas 5 --engine-concurrency 1 --engine-users 50
--engine-max-num-seqs 16 --engine-gamma 5 --engine-configs baseline spec spec_table --engine-profile baseline spec
spec_table``, call 3 ``checks engine_step bench_spec_decode`` (``engine_step_batch1.md``; its traces come back in
traces.tgz). The hold of 2026-12-03 18:00 measured the adaptive goal with every batch size paired: call 1 ``start
bench_target bench_drafts --target bench --bench-epochs 1 --drafts padrec --draft-steps 600 --spec-methods none
padrec padrec_loop padrec_adaptive --spec-gammas 5 --spec-batch-sizes 1 4 16 64 128 --spec-list-lens 10``, call 3
``checks bench_spec_decode``; the next hold's commands are in ``vllm_padrec/integration/SPEC_DECODE.md``, section 14.
PAD-Rec's signals against EAGLE paired by seed (issue 14's 5 %, plain torch, no vLLM): call 1 ``start bench_target
signal_ablation --target bench --bench-epochs 1 --draft-steps 600`` (three seeds of eagle, eagle_one_step, padrec
and padrec_one_step at gamma 5: twelve heads of the bench recipe, trained one after another;
``--ablation-variants`` fewer for a shorter hold), then ``wait 570`` calls; ``--ablation-gammas 5 8`` adds the depth
the issue asks about. Deeper drafts in vLLM (issue 14's gamma 6-8 with a head trained for that depth): call 1
``start bench_target bench_drafts --target bench --bench-epochs 1 --drafts padrec --draft-gamma 8 --draft-steps 600
--spec-methods none padrec --spec-gammas 8 5 --spec-batch-sizes 1 --spec-list-lens 10``, call 3 ``checks
bench_spec_decode``; heads of another depth than the committed heads' 5 write results of their own
(``spec_decode_<dataset>_depth8``, ``draft_padrec_depth8_*``).
Adding ``--spec-capture prompts`` gives every engine, ``none`` included, graphs that hold the prompts (with batch
size 1 alone, vLLM's default graphs leave every prefill eager: SPEC_DECODE.md section 19), results in
``..._prompt_graphs``; ``--cudagraph-mode full`` makes every engine's graphs whole-model ones, prefills included
(vLLM's default replays a prefill piecewise, its attention eager layer by layer: section 20), results in
``..._full_prompt_graphs``; ``none_default_graphs`` among ``--spec-methods`` keeps vLLM's default graphs beside
them (no speculation as users run it). The seventeenth hold (2026-12-06 18:23, H100, 3.12x paired: section 21) ran
``--spec-methods none none_default_graphs padrec --spec-capture prompts --cudagraph-mode full`` with the first-token
profile's ``--engine-*`` options, call 3 ``checks bench_spec_decode engine_step`` (target 3 minutes, head 3.5,
benchmark 6, profile 3); a later ``run bench_spec_decode`` of the same settings merged into the same results file,
so each run's records were committed as a file of their own (``_repeat``, ``_float32``): ``--spec-tag repeat`` now
writes such a rerun's file directly.

On a card under 100 GiB (an H100) ``bench_target`` trains in passes of half a batch (``--micro-batch-size 64``:
the same steps; 128 examples a pass ran out of an H100's memory on 2026-12-05, SPEC_DECODE.md section 15).

Phases, one per call (``python3 benchmarks/gpu_session.py PHASE --help`` lists a phase's options; the
options a call is given hold for the later calls too):

    start [JOB...]   install the project (no dependencies), copy .gpudata and .baseline to /tmp/padrec,
                     queue the jobs (default: train); only jobs that need no vLLM
    checks [JOB...]  reinstall the project over the vLLM kit, queue the jobs (default: the redesign's
                     closing check, engine_step_baseline kernel_tests gpu_tests lossless engine_step)
    run JOB...       run the jobs now, in this call, whatever the jobs they need did (a rerun after a fix)
    status           each queued job's state and its log's last lines
    wait [S]         block up to S seconds (default 540) for the queued jobs, then write status.json,
                     results.tgz and logs.tgz (traces.tgz: profiles) to $OUT, as it does each time a job
                     ends and every minute meanwhile (a call cut off returns what had finished and the
                     logs of a minute before); exit 1 if a job failed
    suite [PART...]  one dataset's results on its bench target (issue 15), where vLLM is installed: queue the
                     jobs of the parts (``lists``: bench_target bench_drafts bench_spec_decode; ``topk``:
                     bench_target atspeed_drafts bench_topk bench_topk_atspeed; default both) that this
                     session has not queued or finished (a failed one again), heads ``--drafts padrec_eagle`` and
                     issue 14's methods unless given; ``--wait-seconds S`` then waits as ``wait`` does. On a
                     machine of your own with vLLM: ``suite --dataset games_atspeed --bench-epochs 0.55
                     --wait-seconds 10000`` (about 95 minutes on one H200: the target 4, heads 8, fifteen list
                     engines about 45, top-K 40). Here,
                     after the kit's part 3, one part a hold: ``suite lists --dataset D --wait-seconds 480``,
                     then ``wait`` calls

Jobs, the jobs each needs, and its GPU lane (``target``/``draft``: the job that trains the session's
``--target``, small: train; bench: bench_target, and bench_drafts for the draft):

    train                 small target on beauty_atspeed (the tiny recipe widened, one epoch),   -       lane 0
                          then its PAD-Rec draft (--no-small-draft: the target only)
    bench_target          the bench recipe's target (Qwen2.5-1.5B shape), resumable              -       lane 0
    bench_eval            its test metrics (constrained beam and greedy lists)                   bench_target
    bench_drafts          its draft heads (--drafts: padrec, padrec_eagle, padrec_medusa,        bench_target
                          one_step, all)
    acceptance            benchmarks/bench_acceptance.py on the bench heads                      bench_drafts
    signal_ablation       benchmarks/bench_signal_ablation.py: PAD-Rec's signals (and its        bench_target
                          per-channel gate) against EAGLE, heads paired by training seed
    atspeed_drafts        issue 13's heads on the target's top-K beams: distill, atspeed_s,      bench_target
                          atspeed_r, the same budget each
    bench_atspeed         benchmarks/bench_atspeed.py on them (strict top-K, plain torch)        atspeed_drafts
    bench_topk_atspeed    issue 13's must-show in vLLM: bench_topk's engine, vLLM's beam search,  atspeed_drafts
                          strict and relaxed once per head (N = 40, gamma 3), K 1-20, bfloat16;
                          first, float32 equality of AtSpeed-S strict rounds with the reference
    kernel_tests          GPU tests of the kernels and catalog masks (--kernel-tests)            -       lane 0
    gpu_tests             vLLM GPU tests (--gpu-tests)                                           -       lane 0
    engine_step_baseline  benchmarks/engine_step.py of .baseline (the code before the redesign)  draft   lane 1
    engine_step           benchmarks/engine_step.py of the current code                         draft   lane 1
    lossless              benchmarks/vllm_lossless.py, one run per --lossless-modes              draft   lane 1
    hostile               benchmarks/hostile_inputs.py                                           draft   lane 1
    bench_target_games    the bench target on games_atspeed, beside bench_target                 -       lane 1
    bench_spec_decode     issue 14's list speed (bench_spec_decode: none, padrec, eagle,        draft   lane 0
                          eagle_vanilla, padrec_adaptive, and on V1 none_v1, ngram, medusa;
                          --drafts padrec_eagle trains the heads)
    bench_spec_decode_exact  issue 14's float32 equality beside a bfloat16 hold (none, padrec,  draft   lane 0
                          eagle; gamma 5, lists of 10, batch 1 and 64), merged into its file
    spec_decode_smoke     bench_spec_decode in little on the session's target and head          draft   lane 0
    engine_core_none      bench_spec_decode's none, the engine core in and out of process, and   target  lane 0
                          without async scheduling (lists of 10, batch 1, 64, 128)
    bench_topk            issue 12's top-K benchmark (bench_topk: four modes, K 1-100, bfloat16  target  lane 0
                          speed, float32 equality on 500 users, profiles at K = 20)
    bench_topk_games      the same on games_atspeed's bench target, without profiles             bench_target_games
                                                                                                         lane 1
    topk_tests            the top-K GPU tests (test_integration_gpu_topk.py, the KV copy kernel  -       lane 0
                          and the pinned host copies natively)
    topk_smoke            topk_tests' quick part (no served engine), before benchmarks           -       lane 1
    topk_drafted_tests    issue 13's GPU tests (test_integration_gpu_topk.py -k drafted): rounds  -       lane 1
                          in vLLM, early finishes, vllm serve with a draft, graph replays
    bench_topk_drafted    bench_topk's strict and relaxed modes (N = 20, gamma 3) beside the     draft   lane 0
                          engine and the reference, K 1-20, bfloat16 speed, float32 equality
    topk_drafted_checks   the strict mode at K = 1 then 5, float32, 64 users per call: as it is,     draft   lane 0
                          with every round's rows checked (PADREC_TOPK_CHECKS=1), without prefix
                          caching, async scheduling or CUDA graphs (the float32 inequality's cause)
    topk_bringup          bench_topk's four modes, float32, a few Ks and users (a quick check  target  lane 0
                          on the small target)
    examples              vllm serve with the draft: examples/openai_client.py, POST             draft   lane 1
                          /v1/recommendations and bad input, then examples/offline_vllm.py and
                          examples/topk_offline.py
    serve                 benchmarks/serve_completions.py (no draft, no constraint)              target  lane 1
    bench_vllm_mask       benchmarks/bench_vllm_mask.py (the catalog masks at vLLM's shapes)     -       lane 1
    bench_trie            benchmarks/bench_trie.py                                               -       lane 1
    bench_catalog_scale   benchmarks/bench_catalog_scale.py (1M and 10M items: memory, masks)    -       lane 1
    tp2                   benchmarks/bench_tp2.py (one GPU against two; kind nvidia-h200-x2)     bench_drafts  both
    bench_padrec_kernel   benchmarks/bench_padrec_kernel.py                                      -       lane 1
    bench_kv_block_copy   benchmarks/bench_kv_block_copy.py (top-K KV copies: kernel, reference) -       lane 1

Order: a job starts once the jobs it needs succeeded (it fails, without running, when one failed) and
every job queued before it on its GPU has ended: on two GPUs lane 0 is GPU 0 and lane 1 is GPU 1
(``CUDA_VISIBLE_DEVICES``); on one GPU the jobs run one at a time in queue order, so anything timed
runs alone, except that jobs that time nothing (the trainings, topk_tests and topk_smoke, whose engines
take 15% of the GPU's memory) run beside each other: a timed job still waits for them, and they for it.
engine_step_baseline installs .baseline and reinstalls the current code when it ends, so
it waits for every job queued before it and every job queued after it waits for it; a job refuses to
run while another version of the project is installed. Each job has its own ``VLLM_CACHE_ROOT``
(each lossless mode too). ``.gpudata`` holds the shared datasets (``../shared/data`` does not travel;
git-ignored; 16 MB for the three): ``mkdir -p .gpudata && cp -r ../shared/data/{beauty_atspeed,games_atspeed,
instruments_lcrec} .gpudata/``; ``--dataset`` (default beauty_atspeed) picks the one every job of the session
trains on and measures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/padrec")  # everything the session writes on the device machine
POLL_SECONDS = 5.0
COLLECT_SECONDS = 60.0  # wait's collections into $OUT while jobs run (phase_wait)
MAX_LOG_BYTES = 2 << 20  # the last 2 MiB of each log travel back (the device returns files up to 16 MiB)
SMALL_TARGET = {  # the tiny recipe widened so that vLLM's attention kernels serve it (head_dim 64)
    "hidden_size": 512,
    "num_layers": 4,
    "num_heads": 8,
    "num_kv_heads": 2,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "max_history": 20,
    "list_items": 10,
    "batch_size": 128,
    "epochs": 1.0,
    "lr": 1e-3,
    "bucket_batches": 64,
}
ALL_DRAFTS = (  # the bench heads, trained in these groups side by side (the target's states collected once per group)
    ("padrec", "eagle"),
    ("medusa", "padrec_no_slot"),
    ("padrec_no_step", "padrec_no_gates"),
)
# lossless mode -> (name of the result files, `vllm serve` arguments, extra environment)
LOSSLESS_MODES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "fp32": ("vllm_lossless", ["--dtype", "float32"], {}),
    "fp32_triton": (
        "vllm_lossless_triton",
        ["--dtype", "float32", "--additional-config", '{"padrec": {"triton_masks": true}}'],
        {},
    ),
    "bf16": ("vllm_lossless_bf16", [], {}),
    # vLLM's batch-invariant kernels: each row's numerics do not depend on the batch
    "fp32_invariant": ("vllm_lossless_invariant", ["--dtype", "float32"], {"VLLM_BATCH_INVARIANT": "1"}),
    "bf16_invariant": ("vllm_lossless_bf16_invariant", [], {"VLLM_BATCH_INVARIANT": "1"}),
}
SERVE_ARGS = ["--gpu-memory-utilization", "0.3", "--max-model-len", "512"]
CURRENT, BASELINE = "current", "baseline"  # the installed version of the project a job runs on
INSTALLING = "installing"  # while pip installs one; jobs wait


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- settings: the command-line options of the session ----------------------------------------------------------
# bench_spec_decode's METHODS (this script imports nothing of the package: it runs before the package is installed)
SPEC_METHODS = (  # bench_spec_decode's methods: on Model Runner V2, then vanilla vLLM's on V1
    *("none", "padrec", "eagle", "eagle_vanilla", "eagle_one_step", "padrec_one_step"),
    *("padrec_adaptive", "padrec_tail", "padrec_loop"),
    "none_default_graphs",
    *("none_v1", "ngram", "medusa"),
)
SPEC_MODES = ("offline", "serve")  # bench_spec_decode.MODES (a test keeps them equal): in process, vllm serve
SPEC_RIVALS = ("padrec", "eagle", "eagle_one_step", "eagle_vanilla")  # drafts that may stand beside padrec's engine
# the bench heads each --drafts trains (bench_drafts; padrec_eagle's Medusa heads where a method asks for them), the
# head each bench_spec_decode method drafts with (its ``Method.draft``, which this script cannot import), and the
# methods that need no head (a test keeps the three in step with bench_spec_decode's METHODS)
DRAFTS_HEADS = {
    "padrec": ("padrec",),
    "padrec_eagle": ("padrec", "eagle", "eagle_one_step", "padrec_one_step", "medusa"),
    "padrec_medusa": ("padrec", "medusa"),
    "one_step": ("padrec_one_step", "eagle_one_step"),
    "all": ("padrec", "eagle", "medusa"),
}
SPEC_METHOD_HEAD = {
    **{m: "padrec" for m in ("padrec", "padrec_adaptive", "padrec_tail", "padrec_loop")},
    **{m: "eagle" for m in ("eagle", "eagle_vanilla")},
    **{m: m for m in ("eagle_one_step", "padrec_one_step", "medusa")},
}
DRAFT_FREE_METHODS = ("none", "none_default_graphs", "none_v1", "ngram")  # ngram drafts from the prompt itself
SMALL_TARGET_SUFFIX = "_small"  # in the small target's results names (results_page leaves those runs out)
COMMITTED_DRAFT_GAMMA = 5  # the depth the committed bench heads train for (spec_decode_<dataset>'s records)
# the heads of atspeed_drafts, one budget each: vllm_padrec.draft.config.OBJECTIVES
ATSPEED_OBJECTIVES = ("distill", "atspeed_s", "atspeed_r")
ATSPEED_RUNS = ("equality", "speed")  # bench_topk_atspeed's two runs: float32 equality, then bfloat16 speed


@dataclass(frozen=True)
class Settings:
    target: str = "small"  # the checkpoint the vLLM jobs use: small (job train) or bench
    dataset: str = "beauty_atspeed"  # the dataset folder (in .gpudata) every job trains on and measures
    small_draft: bool = True  # job train also trains the small target's PAD-Rec head (jobs needing no draft: off)
    bench_epochs: float | None = None  # None: the bench recipe's own
    drafts: str = "all"  # bench heads: padrec (what the vLLM jobs need) or all
    draft_steps: int = 1200
    draft_gamma: int = COMMITTED_DRAFT_GAMMA  # draft steps the bench heads train for (spec gammas go no deeper)
    signal_lr_scale: float = 10.0  # the second PAD-Rec bench head's signal learning-rate factor
    accept_users: int = 150
    accept_gammas: tuple[int, ...] = (3, 4, 5)
    accept_name: str = "beauty"
    accept_skip_forced: bool = False  # acceptance also decodes with the forced draft steps left out
    accept_forced_tail: int = 0  # acceptance also decodes with this many draft slots filled from the catalog
    # signal_ablation's heads: EAGLE and PAD-Rec, each trained both ways (unrolled, and teacher-forced one step)
    ablation_variants: tuple[str, ...] = ("eagle", "eagle_one_step", "padrec", "padrec_one_step")
    ablation_seeds: tuple[int, ...] = (0, 1, 2)  # signal_ablation's training seeds
    ablation_gammas: tuple[int, ...] = (5,)  # signal_ablation's draft depths
    lossless_users: int = 500
    lossless_modes: tuple[str, ...] = ("fp32",)
    engine_users: int = 512
    engine_concurrency: int = 64  # engine_step's requests per engine step (1: one request's cost, profiled)
    engine_configs: tuple[str, ...] = ("baseline", "spec")  # no draft and the PAD-Rec draft, both constrained
    engine_profile: tuple[str, ...] = ()
    engine_capture_size: int | None = None  # engine_step's --max-cudagraph-capture-size (None: vLLM's default)
    engine_max_num_seqs: int | None = None  # engine_step's --max-num-seqs (None: its concurrency)
    engine_gamma: int | None = None  # engine_step's --gamma (None: vLLM's default for the draft)
    engine_first_token: bool = False  # engine_step's --profile-first-token: profiled calls of one token too
    spec_methods: tuple[str, ...] = SPEC_METHODS  # bench_spec_decode's methods (a hold may run some of them)
    spec_dtype: str = "bfloat16"  # bench_spec_decode's dtype (float32: the equality goal)
    spec_gammas: tuple[int, ...] = (3, 5)  # bench_spec_decode's gammas (at most draft_gamma)
    spec_batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 128)  # bench_spec_decode's requests a call
    spec_list_lens: tuple[int, ...] = (10, 20)  # bench_spec_decode's items per list
    spec_pin_cpus: bool = False  # bench_spec_decode's --pin-cpus: each engine core on CPUs of its own
    spec_rivals: tuple[str, ...] = ()  # bench_spec_decode's --rivals: drafts beside padrec's engine, call by call
    spec_capture: str = "verify"  # bench_spec_decode's --max-cudagraph-capture-size (prompts: prefills in graphs)
    cudagraph_mode: str = "vllm"  # bench_spec_decode's and engine_step's --cudagraph-mode (full: whole-model graphs)
    spec_tag: str = ""  # appended to bench_spec_decode's results name: a rerun of the same settings (repeat)
    spec_modes: tuple[str, ...] = SPEC_MODES[:1]  # bench_spec_decode's --modes: offline, serve (vllm serve)
    atspeed_runs: tuple[str, ...] = ATSPEED_RUNS  # bench_topk_atspeed's runs (a later hold may redo one)
    atspeed_heads: tuple[str, ...] = ("atspeed_s", "atspeed_r", "distill")  # its speed run's heads, in order
    gpu_tests: tuple[str, ...] = ("test_integration_gpu.py", "test_integration_gpu_serve.py")
    kernel_tests: tuple[str, ...] = ("test_padrec_kernel.py", "test_integration_mask.py", "test_catalog_mask_kernel.py")

    @classmethod
    def from_mapping(cls, values: dict) -> Settings:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})

    def checkpoint(self) -> Path:
        return WORK / "small" / "checkpoint" if self.target == "small" else bench_dir(self.dataset) / "checkpoint"

    def draft(self) -> Path:
        return (WORK / "drafts" if self.target == "small" else bench_heads()) / "padrec" / "draft"

    def problem(self) -> str | None:
        """What makes these settings unusable, in one line; None when nothing does."""
        if max(self.spec_gammas) > self.draft_gamma:
            deepest = max(self.spec_gammas)
            return f"--spec-gammas {deepest} is deeper than the heads train for (--draft-gamma {self.draft_gamma})"
        if self.spec_rivals and "padrec" not in self.spec_methods:
            return "--spec-rivals stand beside padrec's engine: --spec-methods must hold padrec"
        if len(set(self.spec_rivals)) != len(self.spec_rivals):
            return f"--spec-rivals: each method once, got {' '.join(self.spec_rivals)}"
        if set(self.spec_rivals) - {"padrec"} and self.drafts == "padrec":
            return "--spec-rivals other than padrec need their heads: --drafts padrec_eagle"
        if self.spec_tag and not (self.spec_tag.isascii() and self.spec_tag.replace("_", "").isalnum()):
            return f"--spec-tag: letters, digits and _ only (a part of a file name), got {self.spec_tag!r}"
        return None

    def suffix(self) -> str:
        """Result names carry the small target's name; the bench target's keep the committed names."""
        return SMALL_TARGET_SUFFIX if self.target == "small" else ""

    def depth_suffix(self) -> str:
        """Heads trained for another depth than the committed heads' (``--draft-gamma``) write results of their own
        (``_depth8``), so that their records never replace the committed heads' in a ``--merge``."""
        return "" if self.draft_gamma == COMMITTED_DRAFT_GAMMA else f"_depth{self.draft_gamma}"

    def spec_results_name(self) -> str:
        """bench_spec_decode's results name: ``spec_decode_<dataset>``, the suffixes above, and ``_<tag>`` with
        ``--spec-tag`` (a rerun of the same settings writes a file of its own instead of merging into the first)."""
        tag = f"_{self.spec_tag}" if self.spec_tag else ""
        return f"spec_decode_{self.dataset}{self.suffix()}{self.depth_suffix()}{self.capture_suffix()}{tag}"

    def capture_suffix(self) -> str:
        """Engines whose graphs hold the prompts (``--spec-capture prompts``) write results of their own
        (``_prompt_graphs``): their ``none`` is not the committed runs' ``none``, whose prefills ran eagerly at
        batch 1. Whole-model graphs (``--cudagraph-mode full``) add ``_full`` (``_full_graphs`` alone)."""
        full = self.cudagraph_mode == "full"
        graphs = "_prompt_graphs" if self.spec_capture == "prompts" else "_graphs" if full else ""
        return ("_full" if full else "") + graphs

    def engine_results_name(self) -> str:
        """engine_step's results name: ``engine_step``, the settings' suffix, ``_first_token`` with
        ``--engine-first-token`` and ``_full_graphs`` with ``--cudagraph-mode full``, so that a profile of other
        settings never overwrites the committed ``engine_step``."""
        first_token = "_first_token" if self.engine_first_token and self.engine_profile else ""
        return f"engine_step{self.suffix()}{first_token}{'_full_graphs' if self.cudagraph_mode == 'full' else ''}"


def add_settings(parser: argparse.ArgumentParser) -> None:
    """The options of Settings; an option not given is absent from the namespace (the saved value holds)."""
    d = Settings()
    add = parser.add_argument_group("session settings").add_argument
    kw = {"default": argparse.SUPPRESS}
    add("--target", choices=("small", "bench"), help=f"checkpoint of the vLLM jobs (default {d.target})", **kw)
    add("--dataset", help=f"dataset folder in .gpudata that every job uses (default {d.dataset})", **kw)
    add(
        "--small-draft",
        action=argparse.BooleanOptionalAction,
        help="job train also trains the small target's PAD-Rec head (default on; off when no queued job needs a draft)",
        **kw,
    )
    add("--bench-epochs", type=float, help="epochs of the bench target (default: the recipe's)", **kw)
    add(
        "--drafts",
        choices=tuple(DRAFTS_HEADS),
        help=f"bench heads to train: padrec; padrec_eagle (PAD-Rec and EAGLE, unrolled and one step, and Medusa where "
        f"--spec-methods has it); padrec_medusa; one_step (PAD-Rec and EAGLE trained one step: the cheap heads, "
        f"600 steps at gamma 8 in 33 and 23 s on the H200 against 148 and 56 s unrolled); all (the ablation heads, "
        f"no one-step heads) (default {d.drafts})",
        **kw,
    )
    add("--draft-steps", type=int, help=f"training steps per bench head (default {d.draft_steps})", **kw)
    add("--signal-lr-scale", type=float, help=f"second PAD-Rec head's signal lr factor ({d.signal_lr_scale})", **kw)
    add("--accept-users", type=int, help=f"users of the acceptance benchmark (default {d.accept_users})", **kw)
    add("--accept-gammas", type=int, nargs="+", help="draft tokens per round (default 3 4 5)", **kw)
    add("--accept-name", help=f"acceptance_<name> results; lossless reads them ({d.accept_name})", **kw)
    add(
        "--accept-skip-forced",
        action=argparse.BooleanOptionalAction,
        help="acceptance also decodes each head with the forced draft steps left out (issue 14's catalog lever; "
        "default off)",
        **kw,
    )
    add(
        "--accept-forced-tail",
        type=int,
        metavar="E",
        help="acceptance also decodes each head with E draft slots after its gamma filled from the catalog alone "
        "(issue 14's other catalog lever; default 0: not measured)",
        **kw,
    )
    add(
        "--ablation-variants",
        nargs="+",
        help=f"signal_ablation's heads, eagle among them; <variant>_one_step: trained teacher-forced one step "
        f"(default {' '.join(d.ablation_variants)})",
        **kw,
    )
    add("--ablation-seeds", type=int, nargs="+", help="signal_ablation's training seeds (default 0 1 2)", **kw)
    add("--ablation-gammas", type=int, nargs="+", help="signal_ablation's draft depths (default 5)", **kw)
    add("--lossless-users", type=int, help=f"users of the lossless check (default {d.lossless_users})", **kw)
    add("--lossless-modes", nargs="+", choices=list(LOSSLESS_MODES), help="lossless runs (default fp32)", **kw)
    add("--engine-users", type=int, help=f"timed requests of engine_step (default {d.engine_users})", **kw)
    add(
        "--engine-concurrency",
        type=int,
        help=f"engine_step's requests per engine step (default {d.engine_concurrency}; 1 profiles one request)",
        **kw,
    )
    add("--engine-configs", nargs="+", help=f"engine_step configurations (default: {' '.join(d.engine_configs)})", **kw)
    add("--engine-profile", nargs="*", help="engine_step configurations to profile (default none)", **kw)
    add(
        "--engine-capture-size",
        type=int,
        help="engine_step's --max-cudagraph-capture-size (default: vLLM's; the current code's engine_step only)",
        **kw,
    )
    add(
        "--engine-max-num-seqs",
        type=int,
        help="engine_step's max_num_seqs (default: its concurrency; above it, calls of --engine-concurrency users)",
        **kw,
    )
    add("--engine-gamma", type=int, help="engine_step's drafts a round (default: vLLM's; spec_table needs it)", **kw)
    add(
        "--engine-first-token",
        action=argparse.BooleanOptionalAction,
        help="engine_step's --profile-first-token: the profiled configurations also run calls that end at their "
        "first token, each step a prefill (default off; the current code's engine_step only)",
        **kw,
    )
    add("--spec-methods", nargs="+", choices=SPEC_METHODS, help="bench_spec_decode's methods (default all)", **kw)
    add("--spec-dtype", choices=("bfloat16", "float32"), help=f"bench_spec_decode's dtype ({d.spec_dtype})", **kw)
    add(
        "--spec-capture",
        choices=("verify", "prompts"),
        help=f"bench_spec_decode's --max-cudagraph-capture-size ({d.spec_capture}; prompts: every engine, none "
        "included, holds the users' prompts in graphs, and results go to spec_decode_<dataset>..._prompt_graphs)",
        **kw,
    )
    add(
        "--cudagraph-mode",
        choices=("vllm", "full"),
        help=f"bench_spec_decode's and engine_step's --cudagraph-mode ({d.cudagraph_mode}; full: whole-model graphs "
        "for prefills too, results in ..._full_prompt_graphs / engine_step..._full_graphs; the current code only)",
        **kw,
    )
    add(
        "--spec-gammas",
        type=int,
        nargs="+",
        help="bench_spec_decode's gammas, at most --draft-gamma (default 3 5)",
        **kw,
    )
    add(
        "--spec-batch-sizes",
        type=int,
        nargs="+",
        help=f"bench_spec_decode's requests a call (default {' '.join(map(str, d.spec_batch_sizes))})",
        **kw,
    )
    add(
        "--spec-list-lens",
        type=int,
        nargs="+",
        help=f"bench_spec_decode's items per list (default {' '.join(map(str, d.spec_list_lens))})",
        **kw,
    )
    add(
        "--spec-tag",
        help="appended to bench_spec_decode's results name (spec_decode_<dataset>..._<tag>): a rerun of the same "
        "settings, such as a repeat or a float32 run, writes a file of its own rather than merging into the first "
        "run's; letters, digits and _ (default none; --spec-tag '' clears it for later calls)",
        **kw,
    )
    add(
        "--spec-pin-cpus",
        action=argparse.BooleanOptionalAction,
        help="bench_spec_decode pins each engine core, and its own threads, to physical cores of their own "
        "(--pin-cpus: an experiment on the spread between engines; default off)",
        **kw,
    )
    add(
        "--spec-rivals",
        nargs="*",
        choices=SPEC_RIVALS,
        help="bench_spec_decode's --rivals, each once: drafts whose engines stand beside padrec's and answer its "
        "users call by call; padrec itself is the control (default none; padrec's engine then takes the GPU memory "
        "they leave, bench_spec_decode's --gpu-memory-utilization default)",
        **kw,
    )
    add(
        "--spec-modes",
        nargs="+",
        choices=SPEC_MODES,
        help="bench_spec_decode's --modes: offline (in-process engines), serve (vllm serve, measured by vllm bench "
        "serve), or both (default offline)",
        **kw,
    )
    add("--draft-gamma", type=int, help=f"draft steps the bench heads train for (default {d.draft_gamma})", **kw)
    add(
        "--atspeed-runs",
        nargs="+",
        choices=ATSPEED_RUNS,
        help="bench_topk_atspeed's runs: float32 equality, bfloat16 speed (default both)",
        **kw,
    )
    add(
        "--atspeed-heads",
        nargs="+",
        choices=ATSPEED_OBJECTIVES,
        help=f"heads of bench_topk_atspeed's speed run, in order (default {' '.join(d.atspeed_heads)})",
        **kw,
    )
    add("--gpu-tests", nargs="+", help=f"test files of gpu_tests (default: {' '.join(d.gpu_tests)})", **kw)
    add("--kernel-tests", nargs="+", help=f"test files of kernel_tests (default: {' '.join(d.kernel_tests)})", **kw)


# -- jobs ---------------------------------------------------------------------------------------------------------
TARGET, DRAFT = "<target>", "<draft>"  # in needs: the job that trains the session's target / its PAD-Rec draft


@dataclass(frozen=True)
class Job:
    name: str
    body: Callable[[JobContext], int]  # the job's work; its exit status
    needs: tuple[str, ...] = ()
    lane: int = 0  # GPU lane: with two GPUs, lane 0 runs on GPU 0 and lane 1 on GPU 1
    vllm: bool = False  # needs the vLLM kit (queued by ``checks``, not ``start``)
    installed: str | None = CURRENT  # the project version it runs on; None: it installs what it needs itself
    exclusive: bool = False  # runs alone: after every job queued before it, before every job queued after it
    # times nothing (training, tests): runs beside another untimed job on the same GPU (a vLLM job beside vLLM jobs
    # only, a training job beside training jobs only); a timed job still runs alone
    untimed: bool = False
    every_gpu: bool = False  # sees every GPU of the machine (tensor parallelism), not its lane's alone


@dataclass(frozen=True)
class JobContext:
    job: str
    settings: Settings
    env: dict[str, str]  # the environment of the job's commands

    @property
    def log_path(self) -> Path:
        return WORK / "logs" / f"{self.job}.log"

    def run(self, command: list[str], env: dict[str, str] | None = None) -> int:
        """Run ``command`` with its output appended to the job's log; its exit status, never hidden by a pipe."""
        log(f"+ {' '.join(command)}")
        with open(self.log_path, "a") as out:
            process = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, env=env or self.env, cwd=WORK / "run"
            )
        return exit_status(process.returncode)

    def run_parallel(self, commands: list[list[str]]) -> int:
        """Run ``commands`` side by side, each with its own log beside the job's; the worst exit status."""
        processes = []
        for i, command in enumerate(commands):
            log(f"+ {' '.join(command)}  (log: {self.job}.{i}.log)")
            out = open(WORK / "logs" / f"{self.job}.{i}.log", "w")
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=WORK / "run")
            processes.append((process, out))
        codes = []
        for process, out in processes:
            codes.append(exit_status(process.wait()))
            out.close()
        return max(codes, default=0)

    def python(self, module: str, *args: str, env: dict[str, str] | None = None) -> int:
        return self.run([sys.executable, "-m", module, *args], env=env)


def exit_status(returncode: int) -> int:
    """The shell's exit status: 128 + N for a process killed by signal N (Popen's -N); the worst is the largest."""
    return 128 - returncode if returncode < 0 else returncode


def dataset_path(settings: Settings) -> str:
    return str(WORK / "data" / settings.dataset)


def bench_dir(dataset: str) -> Path:
    """The bench target's folder for ``dataset``: /tmp/padrec/bench for the default dataset (the committed
    layout), bench_<dataset> for another, so that two datasets' targets can train side by side."""
    return WORK / ("bench" if dataset == Settings.dataset else f"bench_{dataset}")


def bench_heads(one_step: bool = False) -> Path:
    """bench_drafts' heads, a folder per head (``padrec/draft``): trained unrolled over the draft steps, or
    teacher-forced one step (``--drafts one_step``, padrec_eagle's second pair)."""
    return WORK / ("bench_drafts_one_step" if one_step else "bench_drafts")


def signal_lr_heads() -> Path:
    """The PAD-Rec head that ``--drafts all`` trains beside the others with its signal parameters learning
    ``--signal-lr-scale`` times faster (``padrec/draft``)."""
    return WORK / "bench_drafts_signal_lr10"


def with_dataset(ctx: JobContext, dataset: str) -> JobContext:
    """The job's context on the bench target of another dataset (the second-dataset jobs on lane 1)."""
    return dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dataset=dataset, target="bench"))


def job_train(ctx: JobContext) -> int:
    import torch

    from vllm_padrec.data import load_dataset
    from vllm_padrec.target.config import get_recipe
    from vllm_padrec.target.train import train_target

    dataset = load_dataset(dataset_path(ctx.settings))
    recipe = get_recipe("tiny", **SMALL_TARGET)
    while not (result := train_target(recipe, dataset, WORK / "small", device="cuda")).finished:
        log(f"target: step {result.step} of {result.total_steps}")
    log(f"target done: {result}")
    if not ctx.settings.small_draft:
        log("no PAD-Rec head (--no-small-draft)")
        return 0
    torch.cuda.empty_cache()
    draft = ["--method", "padrec", "--gamma", "5", "--max-steps", "600", "--batch-size", "64", "--until-done"]
    target = [
        "--target",
        str(WORK / "small/checkpoint"),
        "--dataset",
        dataset_path(ctx.settings),
        "--out",
        str(WORK / "drafts"),
    ]
    return ctx.python("vllm_padrec.cli", "train-draft", *target, *draft)


def job_bench_target(ctx: JobContext) -> int:
    epochs = [] if ctx.settings.bench_epochs is None else ["--epochs", str(ctx.settings.bench_epochs)]
    memory = gpu_memory_gib()
    halves = ["--micro-batch-size", str(BENCH_MICRO_BATCH)] if memory is not None and memory < BENCH_BATCH_GIB else []
    args = [
        "--recipe",
        "bench",
        *epochs,
        *halves,
        "--until-done",
        "--dataset",
        dataset_path(ctx.settings),
        "--out",
        str(bench_dir(ctx.settings.dataset)),
    ]
    code = ctx.python("vllm_padrec.cli", "train-target", *args)
    for name in ("loss", "val"):
        if (bench_dir(ctx.settings.dataset) / f"{name}.json").exists():
            tag = "" if ctx.settings.dataset == Settings.dataset else f"_{ctx.settings.dataset}"  # committed names
            shutil.copy(
                bench_dir(ctx.settings.dataset) / f"{name}.json", WORK / "results" / f"bench_target_{name}{tag}.json"
            )
    return code


def job_bench_eval(ctx: JobContext) -> int:
    from vllm_padrec.testing.results import target_quality_stem

    out = str(WORK / "results" / f"{target_quality_stem(ctx.settings.dataset)}.json")  # target_beauty.json
    args = [
        "--checkpoint",
        str(bench_dir(ctx.settings.dataset) / "checkpoint"),
        "--dataset",
        dataset_path(ctx.settings),
        "--batch-size",
        "256",
    ]
    return ctx.python("vllm_padrec.cli", "evaluate", *args, "--out", out)


def job_bench_drafts(ctx: JobContext) -> int:
    s = ctx.settings

    def train_drafts(out: Path, scale: float, *methods: str) -> list[str]:  # the same budget for every head
        return [
            *(sys.executable, "-m", "vllm_padrec.cli", "train-draft"),
            *("--target", str(bench_dir(s.dataset) / "checkpoint")),
            *("--dataset", dataset_path(ctx.settings), "--out", str(out), "--gamma", str(s.draft_gamma)),
            *("--max-steps", str(s.draft_steps)),
            *("--batch-size", "64", "--max-stored-gib", "24", "--signal-lr-scale", str(scale), "--until-done"),
            *("--method", *methods),
        ]

    drafts, one_step_drafts = bench_heads(), bench_heads(one_step=True)
    one_step = train_drafts(one_step_drafts, 1, "padrec", "eagle") + ["--train-steps", "1"]  # teacher-forced
    if s.drafts == "padrec":
        commands = [train_drafts(drafts, 1, "padrec")]
    elif s.drafts == "padrec_medusa":  # PAD-Rec and vanilla vLLM's Medusa (Model Runner V1), one collection
        commands = [train_drafts(drafts, 1, "padrec", "medusa")]
    elif s.drafts == "one_step":
        commands = [one_step]
    elif s.drafts == "padrec_eagle":  # the heads bench_spec_decode compares, EAGLE and PAD-Rec trained both ways
        medusa = ("medusa",) if "medusa" in s.spec_methods else ()  # a head per draft step: draft_gamma heads
        commands = [train_drafts(drafts, 1, "padrec", "eagle", *medusa), one_step]
    else:  # plus a PAD-Rec head whose signal parameters learn faster (they start switched off)
        commands = [train_drafts(drafts, 1, *group) for group in ALL_DRAFTS]
        commands.append(train_drafts(signal_lr_heads(), s.signal_lr_scale, "padrec"))
    code = ctx.run_parallel(commands)
    for result in drafts.glob("*/*.json"):
        shutil.copy(result, WORK / "results" / f"draft_{result.parent.name}{s.depth_suffix()}_{result.name}")
    for result in one_step_drafts.glob("*/*.json"):  # draft_padrec_one_step_depth8_result.json
        name = f"draft_{result.parent.name}_one_step{s.depth_suffix()}_{result.name}"
        shutil.copy(result, WORK / "results" / name)
    for result in signal_lr_heads().glob("padrec/*.json"):
        shutil.copy(result, WORK / "results" / f"draft_padrec_signal_lr10_{result.name}")
    return code


def job_acceptance(ctx: JobContext) -> int:
    s = ctx.settings
    heads = [str(path) for path in sorted(bench_heads().glob("*/draft"))]
    if (signal_head := signal_lr_heads() / "padrec" / "draft").exists():
        heads.append(f"padrec_signal_lr10={signal_head}")
    return ctx.python(
        "benchmarks.bench_acceptance",
        *("--target", str(bench_dir(s.dataset) / "checkpoint"), "--dataset", dataset_path(s), "--drafts", *heads),
        *("--users", str(s.accept_users), "--gammas", *map(str, s.accept_gammas), "--batch-size", "128"),
        *("--out", str(WORK / "results"), "--name", s.accept_name),
        *(["--skip-forced-drafts"] if s.accept_skip_forced else []),
        *(["--forced-tail", str(s.accept_forced_tail)] if s.accept_forced_tail else []),
    )


def job_signal_ablation(ctx: JobContext) -> int:
    """PAD-Rec's signals against EAGLE on the bench target, paired by training seed (the bench heads' recipe and
    budget, ``--draft-steps``; plain torch, acceptance only)."""
    s = ctx.settings
    return ctx.python(
        "benchmarks.bench_signal_ablation",
        *("--target", str(bench_dir(s.dataset) / "checkpoint"), "--dataset", dataset_path(s), "--preset", "bench"),
        *("--variants", *s.ablation_variants, "--seeds", *map(str, s.ablation_seeds)),
        *("--gammas", *map(str, s.ablation_gammas), "--draft-steps", str(s.draft_steps)),
        *("--users", str(s.accept_users), "--batch-size", "128", "--work", str(WORK / "signal_ablation")),
        *("--out", str(WORK / "results"), "--name", s.dataset),
    )


def job_atspeed_drafts(ctx: JobContext) -> int:
    """Issue 13's heads: PAD-Rec on the bench target's own top-K beams (K = 20, 2,000 training users), one per
    objective, the same budget each (steps, batch of 3 users' beams, data order), trained side by side."""
    s = ctx.settings
    commands = [
        [
            *(sys.executable, "-m", "vllm_padrec.cli", "train-draft", "--method", "padrec"),
            *("--target", str(bench_dir(s.dataset) / "checkpoint"), "--dataset", dataset_path(s)),
            *("--out", str(WORK / "atspeed_drafts" / objective), "--objective", objective),
            *("--topk", "20", "--topk-users", "2000", "--gamma", "3", "--max-steps", str(s.draft_steps)),
            *("--batch-size", "64", "--max-stored-gib", "24", "--until-done"),
        ]
        for objective in ATSPEED_OBJECTIVES
    ]
    code = ctx.run_parallel(commands)
    for objective in ATSPEED_OBJECTIVES:
        for result in (WORK / "atspeed_drafts" / objective / "padrec").glob("*.json"):
            shutil.copy(result, WORK / "results" / f"atspeed_draft_{objective}_{result.name}")
    return code


def job_bench_atspeed(ctx: JobContext) -> int:
    """benchmarks/bench_atspeed.py on those heads: strict and relaxed top-K's target passes per request, K 1-20,
    N = 40, in float32: strict answers must equal the beam search's (in bfloat16 the H200 run of 2026-12-02 had 3
    to 87 of 100 users differ at K = 1 to 20, the two scoring the same sequences in batches of other shapes)."""
    s = ctx.settings
    drafts = [f"{o}={WORK / 'atspeed_drafts' / o / 'padrec'}" for o in ATSPEED_OBJECTIVES]
    return ctx.python(
        "benchmarks.bench_atspeed",
        *("--target", str(bench_dir(s.dataset) / "checkpoint"), "--dataset", dataset_path(s), "--drafts", *drafts),
        *("--ks", "1", "5", "10", "20", "--draft-beams", "40", "--gamma", "3", "--users", "100"),
        *("--dtype", "float32", "--out", str(WORK / "results"), "--name", s.dataset),
    )


def job_bench_topk_atspeed(ctx: JobContext) -> int:
    """Issue 13's must-show in vLLM on the bench target and its three AtSpeed heads (``atspeed_drafts``), in two
    bench_topk runs merged into the committed ``topk_<dataset>`` (``--merge``: the other records stay, marked
    with their run's date; results written after each configuration, so a hold cut short keeps what it
    measured; run with --target bench):

    - equality first, the shorter run (float32, 500 users at 64 concurrent): the reference and strict rounds of
      the AtSpeed-S head (exactness does not depend on the head; the undrafted engine's equality on this
      target is issue 12's record, kept by the merge);
    - then speed, side by side in one run (bfloat16; 128 users at 64 concurrent, 30 one at a time): the
      undrafted engine, vLLM's beam search, and strict and relaxed rounds per head (N = 40, gamma 3; one engine
      a head), the heads in ``--atspeed-heads``' order (default the order the goals need them: AtSpeed-S,
      AtSpeed-R, distillation, the last only compares acceptance, which the training records too), with one
      profiled call of one request per mode at K = 20.

    ``--atspeed-runs`` picks the runs (a hold that redoes the speed run after one cut short: ``speed``; two holds
    of the bench recipe gave the same best step, loss and metrics: benchmarks/results/README.md). K 1/5/10/20. Six
    vLLM engine start-ups in all (60-95 s each). On beauty_atspeed (2026-12-02), with bench_target
    (``--bench-epochs 1``: 4 minutes) and atspeed_drafts (``--draft-steps 600``: 3 minutes), the hold ran 29
    minutes and this job 21 (equality 7.5, speed 13.5); on games_atspeed (``--bench-epochs 0.55``: 6.4 minutes)
    the hold ended 8 minutes into the speed run; a hold cut short loses the last head first."""
    s = ctx.settings
    drafts = {o: f"{o}={WORK / 'atspeed_drafts' / o / 'padrec' / 'draft'}" for o in ATSPEED_OBJECTIVES}
    merge_base(f"topk_{s.dataset}", s)
    common = ("--merge", "--draft-beams", "40", "--gamma", "3", "--ks", "1", "5", "10", "20", "--concurrency", "64")
    codes = [0]
    if "equality" in s.atspeed_runs:
        codes.append(
            run_bench_topk(
                ctx,
                "topk",
                *common,
                *("--modes", "reference", "strict", "--drafts", drafts["atspeed_s"]),
                *("--dtypes", "float32", "--users", "128", "--users-equal", "500"),
                log_tag="equality",
            )
        )
    if "speed" in s.atspeed_runs:
        codes.append(
            run_bench_topk(
                ctx,
                "topk",
                *common,
                *("--modes", "engine", "vllm_beam_search", "strict", "relaxed"),
                *("--drafts", *[drafts[o] for o in s.atspeed_heads]),
                *("--dtypes", "bfloat16", "--users", "128", "--users-latency", "30"),
                *("--profile", "--profile-k", "20", "--profile-one-request"),
                log_tag="speed",
            )
        )
    return max(codes)


def pytest_command(files: tuple[str, ...], select: str | None = None) -> list[str]:
    # -o pythonpath=: pytest.ini puts the repository first on sys.path, which would shadow the installed
    # package (whose vllm_padrec.kernels setup.py maps in from kernels/)
    tests = [str(REPO / "tests" / name) for name in files]
    return [
        sys.executable,
        "-m",
        "pytest",
        "-v",
        "-rs",
        "--tb=short",
        "-o",
        "pythonpath=",
        "-p",
        "no:cacheprovider",
        *(["-k", select] if select else []),
        *tests,
    ]


def job_kernel_tests(ctx: JobContext) -> int:
    return ctx.run(pytest_command(ctx.settings.kernel_tests))


def job_gpu_tests(ctx: JobContext) -> int:
    return ctx.run(pytest_command(ctx.settings.gpu_tests))


def model_args(s: Settings) -> list[str]:
    return ["--target", str(s.checkpoint()), "--draft", str(s.draft()), "--dataset", dataset_path(s)]


def engine_step(ctx: JobContext, name: str, env: dict[str, str], current: bool = True) -> int:
    """benchmarks/engine_step.py with the session's settings; options the code before the redesign lacks only for
    the ``current`` code."""
    s = ctx.settings
    traces = WORK / "traces" / name  # each profiled configuration's Chrome trace (``collect``: traces.tgz)
    if s.engine_profile:
        traces.mkdir(parents=True, exist_ok=True)
    code = ctx.python(
        "benchmarks.engine_step",
        *model_args(s),
        *("--users", str(s.engine_users), "--concurrency", str(s.engine_concurrency), "--configs", *s.engine_configs),
        *("--profile", *s.engine_profile, "--name", name, "--out", str(WORK / "results")),
        *(["--max-cudagraph-capture-size", str(s.engine_capture_size)] if s.engine_capture_size else []),
        *(["--max-num-seqs", str(s.engine_max_num_seqs)] if s.engine_max_num_seqs else []),
        *(["--gamma", str(s.engine_gamma)] if s.engine_gamma else []),
        *(["--trace-dir", str(traces)] if s.engine_profile else []),
        *(["--profile-first-token"] if current and s.engine_first_token and s.engine_profile else []),
        *(["--cudagraph-mode", s.cudagraph_mode] if current and s.cudagraph_mode != "vllm" else []),
        env=env,
    )
    for config_log in Path("/tmp").glob("engine_step_*.log"):  # engine_step's per-configuration logs
        shutil.move(config_log, WORK / "logs" / f"{ctx.job}.{config_log.name}")
    return code


def job_engine_step_baseline(ctx: JobContext) -> int:
    """engine_step.py of the code before the redesign, on that code; the current code reinstalled after."""
    if not (WORK / "baseline" / "setup.py").exists():
        log("no .baseline (carry it in the call that starts or checks)")
        return 2
    env = {**ctx.env, "PYTHONPATH": python_path(BASELINE, ctx.env)}
    try:
        install(WORK / "baseline", BASELINE)
        return engine_step(ctx, "engine_step_baseline" + ctx.settings.suffix(), env, current=False)
    finally:
        install(REPO, CURRENT)


def job_engine_step(ctx: JobContext) -> int:
    return engine_step(ctx, ctx.settings.engine_results_name(), ctx.env)


def job_lossless(ctx: JobContext) -> int:
    s = ctx.settings
    # the reference decoder's acceptance for the same head and users (bench_acceptance.py, on the bench heads)
    reference = WORK / "results" / f"acceptance_{s.accept_name}.json"
    with_reference = s.target == "bench" and reference.exists()
    codes = []
    for mode in s.lossless_modes:
        name, serve_args, extra_env = LOSSLESS_MODES[mode]
        name += s.suffix()
        log(f"lossless {mode}: the same users with and without --speculative-model ({name})")
        env = {**ctx.env, **extra_env, "VLLM_CACHE_ROOT": str(WORK / "cache" / f"lossless_{mode}")}
        (WORK / "logs" / name).mkdir(exist_ok=True)
        codes.append(
            ctx.python(
                "benchmarks.vllm_lossless",
                *model_args(s),
                *("--users", str(s.lossless_users), "--concurrency", "64", "--out", str(WORK / "results")),
                *(["--reference-acceptance", str(reference)] if with_reference else []),
                *("--log-dir", str(WORK / "logs" / name), "--name", name, "--", *SERVE_ARGS, *serve_args),
                env=env,
            )
        )
    return max(codes, default=0)


SECOND_DATASET = "games_atspeed"  # the second dataset of the top-K must-show (issue 12), on lane 1


def run_benchmark(
    ctx: JobContext, module: str, *options: str, env: dict[str, str] | None = None, log_tag: str = ""
) -> int:
    """A benchmark that runs one configuration at a time (bench_topk, bench_spec_decode) on the session's target
    and dataset, each configuration with its own VLLM_CACHE_ROOT; the configurations' logs and profiles go to
    the job's logs (named ``<job>.<log_tag>.<file>`` with a tag: a job that runs the benchmark more than once).
    ``env``: variables added to the job's environment."""
    s = ctx.settings
    work = WORK / ctx.job  # the configurations' result files
    code = ctx.python(
        module,
        *("--target", str(s.checkpoint()), "--dataset", dataset_path(s), "--out", str(WORK / "results")),
        *("--cache-root", str(WORK / "cache" / ctx.job), "--work-dir", str(work), *options),
        env={**ctx.env, **env} if env else None,
    )
    for config_log, name in config_logs(work, f"{ctx.job}.{log_tag}" if log_tag else ctx.job):
        shutil.move(config_log, WORK / "logs" / name)
    return code


def run_bench_topk(
    ctx: JobContext, name: str, *options: str, env: dict[str, str] | None = None, log_tag: str = ""
) -> int:
    """benchmarks/bench_topk.py (``run_benchmark``), its results named for the session's dataset."""
    s = ctx.settings
    return run_benchmark(
        ctx, "benchmarks.bench_topk", "--name", f"{name}_{s.dataset}{s.suffix()}", *options, env=env, log_tag=log_tag
    )


# in a bench_topk or bench_spec_decode job's work folder; serve_*/serve.log: the server of a pass through vllm
# serve (bench_spec_decode --modes serve), whose start and errors the configuration's own log does not hold
CONFIG_LOGS = ("bench_topk_*.log", "bench_topk_*_profile_*.txt", "bench_spec_decode_*.log", "serve_*/serve.log")


def config_logs(work: Path, job: str) -> list[tuple[Path, str]]:
    """Each configuration's log and profile in a benchmark job's work folder, with its name among the logs
    (``<job>.<path in the folder, its / as .>``): moved there when the job ends, and packed from here while it
    runs."""
    found = (path for pattern in CONFIG_LOGS for path in sorted(work.glob(pattern)))
    return [(path, f"{job}.{path.relative_to(work).as_posix().replace('/', '.')}") for path in found]


def merge_base(name: str, settings: Settings) -> None:
    """Put the committed results file ``name`` (.json) where a ``--merge`` run of the bench target reads and
    rewrites it, so that the run adds its records to the committed ones (the small target's results stay apart);
    where a job of this session already wrote it, its records are kept and the next run adds to them."""
    committed = REPO / "benchmarks" / "results" / f"{name}.json"
    merged_here = WORK / "results" / committed.name  # a job before this one in the session already merged there
    if committed.exists() and not settings.suffix() and not merged_here.exists():
        (WORK / "results").mkdir(parents=True, exist_ok=True)
        shutil.copy(committed, WORK / "results" / committed.name)


def job_bench_spec_decode(ctx: JobContext) -> int:
    """Issue 14's list-speed benchmark on the bench target and its PAD-Rec, EAGLE and Medusa heads (the same
    budget): ``--spec-methods`` (default all: none, padrec, eagle (unrolled and teacher-forced one step),
    eagle_vanilla, padrec_adaptive, and vanilla vLLM's none_v1, ngram and medusa on Model Runner V1; the Medusa
    head is trained by ``bench_drafts --drafts padrec_eagle`` when medusa is asked for) in ``--spec-dtype``
    (default bfloat16; float32 for the equality goal); gamma 3 and 5; batch sizes 1-128; lists of 10 and 20
    items; merged into the committed ``spec_decode_<dataset>`` (``--merge``), so
    that holds can share the methods (every hold runs ``none``, the goals' baseline, and each goal reads one
    run's records)."""
    s = ctx.settings
    heads, one_step = bench_heads(), bench_heads(one_step=True)
    name = s.spec_results_name()  # the small target's and other depths' records never merge into the committed
    merge_base(name, s)
    return run_benchmark(
        ctx,
        "benchmarks.bench_spec_decode",
        *("--name", name, "--padrec-draft", str(s.draft()), "--eagle-draft", str(heads / "eagle" / "draft")),
        *("--eagle-one-step-draft", str(one_step / "eagle" / "draft")),
        *("--padrec-one-step-draft", str(one_step / "padrec" / "draft")),
        *("--medusa-draft", str(heads / "medusa" / "draft")),
        *("--max-cudagraph-capture-size", s.spec_capture, "--cudagraph-mode", s.cudagraph_mode),
        *("--methods", *s.spec_methods, "--dtype", s.spec_dtype, "--merge"),
        *("--gammas", *map(str, s.spec_gammas), "--batch-sizes", *map(str, s.spec_batch_sizes)),
        *("--list-lens", *map(str, s.spec_list_lens)),
        *(("--pin-cpus",) if s.spec_pin_cpus else ()),
        *("--modes", *s.spec_modes),
        # beside the rivals' engines, padrec's takes the memory they leave (bench_spec_decode's default)
        *(("--rivals", *s.spec_rivals) if s.spec_rivals else ()),
    )


# issue 14's equality check, in float32 beside a hold's bfloat16 speed run: the methods the plugin serves whose heads
# the session trains (eagle with --drafts padrec_eagle or all), one request at a time and 64 a call (the bfloat16
# lists of 2026-12-04 matched none's for 232 / 256 users at 64: batch shapes or the drafts?), unpaired
EXACT_METHODS, EXACT_USERS, EXACT_BATCHED_USERS = ("none", "padrec", "eagle"), 100, 256


def job_bench_spec_decode_exact(ctx: JobContext) -> int:
    """bench_spec_decode in float32 (the equality goal): ``EXACT_METHODS`` at gamma 5, lists of 10, ``EXACT_USERS``
    users one at a time and ``EXACT_BATCHED_USERS`` at 64 a call, merged into the same results file as the session's
    bfloat16 run (``bench_spec_decode``, queued before it), whose speed goals never read these records
    (``spec_decode_goals.timed``)."""
    s = ctx.settings
    name = s.spec_results_name()
    merge_base(name, s)
    methods = EXACT_METHODS if s.drafts != "padrec" else EXACT_METHODS[:2]
    heads = bench_heads()
    return run_benchmark(
        ctx,
        "benchmarks.bench_spec_decode",
        *("--name", name, "--padrec-draft", str(s.draft()), "--eagle-draft", str(heads / "eagle" / "draft")),
        *("--methods", *methods, "--dtype", "float32", "--merge", "--pair", "none"),
        *("--gammas", "5", "--batch-sizes", "1", "64", "--list-lens", "10"),
        *("--users-latency", str(EXACT_USERS), "--users", str(EXACT_BATCHED_USERS)),
    )


# no speculation under the engine settings a benchmark can pick: the engine core in its own process (vLLM's
# default) or in the benchmark's, and vLLM's asynchronous scheduling (on by default) switched off
ENGINE_CORE_VARIANTS = {
    "own": (),
    "in": ("--engine-core", "in_process"),
    "own_sync": ("--engine-args", json.dumps({"async_scheduling": False})),
}


def job_engine_core_none(ctx: JobContext) -> int:
    """bench_spec_decode's ``none`` once per ENGINE_CORE_VARIANTS entry on the session's target (lists of 10,
    batch 1, 64 and 128): how much of no speculation's speed is the engine's settings, and, across holds, the
    machine's (``spec_decode_none_core_<variant>``)."""
    codes = [
        run_benchmark(
            ctx,
            "benchmarks.bench_spec_decode",
            *("--name", f"spec_decode_none_core_{variant}", "--methods", "none", "--pair", "none"),
            *("--batch-sizes", "1", "64", "128", "--list-lens", "10", "--users", "256", "--users-latency", "30"),
            *options,
            log_tag=variant,
        )
        for variant, options in ENGINE_CORE_VARIANTS.items()
    ]
    return max(codes)


def job_spec_decode_smoke(ctx: JobContext) -> int:
    """bench_spec_decode in little (none, padrec, padrec_adaptive; gamma 3; batch 1 and 16; lists of 10 items;
    a few users) on the session's target and PAD-Rec head: that the benchmark runs in vLLM, the adaptive
    table included, before a hold spends its time on the bench target."""
    return run_benchmark(
        ctx,
        "benchmarks.bench_spec_decode",
        *("--padrec-draft", str(ctx.settings.draft()), "--name", "spec_decode_smoke"),
        *("--methods", "none", "padrec", "padrec_adaptive", "--gammas", "3", "--batch-sizes", "1", "16"),
        *("--list-lens", "10", "--users", "32", "--users-latency", "8"),
    )


def job_bench_topk(ctx: JobContext) -> int:
    """Issue 12's top-K benchmark on the session dataset's bench target: every mode; bfloat16 for speed (256 users
    at 64 concurrent, 50 one at a time), float32 for the equality check (reference and engine, 500 users); K
    1-100; profiles at K = 20. The results are written after each configuration (a hold cut short keeps what
    it measured)."""
    return run_bench_topk(
        ctx,
        "topk",
        *TOPK_MEASUREMENTS,
        *("--profile", "--profile-k", "20"),
        # K = 20 once more as vLLM runs by default, the engine core in its own process (the speed goals read it)
        *("--own-process-modes", "engine", "greedy_floor", "vllm_beam_search", "--own-process-ks", "20"),
    )


# what bench_topk measures on every dataset; the engine first: a hold cut short keeps what the issue is about;
# vLLM's beam search, the slowest, last
TOPK_MEASUREMENTS = (
    *("--modes", "engine", "greedy_floor", "reference", "vllm_beam_search"),
    *("--dtypes", "bfloat16", "float32", "--exact-modes", "reference", "engine"),
    *("--users", "256", "--users-latency", "50", "--users-equal", "500", "--concurrency", "64"),
)


def job_bench_topk_games(ctx: JobContext) -> int:
    """bench_topk on games_atspeed's bench target, sized for one H200 hold beside its 8.5-minute training
    (about 17 minutes): the same measurements, no profiles (bench_topk's on beauty_atspeed show where the
    time goes) and the own-process rerun for the engine and vLLM's beam search only."""
    return run_bench_topk(
        with_dataset(ctx, SECOND_DATASET),
        "topk",
        *TOPK_MEASUREMENTS,
        *("--own-process-modes", "engine", "vllm_beam_search", "--own-process-ks", "20"),
    )


# the top-K path's GPU tests: the engine in vLLM, the KV copy kernel and the pinned host copies natively
TOPK_TEST_FILES = ("test_integration_gpu_topk.py", "test_kv_block_copy_kernel.py", "test_device_lists.py")
# their quick part: everything but the served engine, the lists beside top-K and K = 256
TOPK_SMOKE = "ranks_items_as_the_reference or forwards or kv_block_copy or device_lists or equals_the_reference"


def job_topk_tests(ctx: JobContext) -> int:
    """The top-K GPU tests (tests/test_integration_gpu_topk.py switches top-K on in its engines' processes)."""
    return ctx.run(pytest_command(TOPK_TEST_FILES))


def job_topk_smoke(ctx: JobContext) -> int:
    """The quick part of topk_tests (no served engine), before a long hold's benchmarks."""
    return ctx.run(pytest_command(TOPK_TEST_FILES, select=TOPK_SMOKE))


def job_topk_drafted_tests(ctx: JobContext) -> int:
    """Issue 13's GPU tests: drafted strict rounds in vLLM rank items as the reference (a random head), also after
    rounds that complete items early (K = 1 then 5 on the same users); ``vllm serve`` with a draft answers both
    rules and refuses an unknown one; the round functions replayed from CUDA graphs equal eager runs."""
    return ctx.run(pytest_command(TOPK_TEST_FILES[:1], select="drafted"))


def job_bench_topk_drafted(ctx: JobContext) -> int:
    """Issue 13's bring-up in vLLM on the session's target and its PAD-Rec head: bench_topk's strict and relaxed
    modes (N = 20 draft beams, gamma 3: strict can accept a step only when N >= K, so every K here; the first run's
    N = 4 never accepted at K >= 5) beside the undrafted engine and the reference; K 1-20; bfloat16 for speed,
    float32 for equality."""
    return run_bench_topk(
        ctx,
        "topk_drafted",
        *("--modes", "engine", "strict", "relaxed", "reference", "--draft", str(ctx.settings.draft())),
        *("--draft-beams", "20", "--gamma", "3"),
        *("--dtypes", "bfloat16", "float32", "--exact-modes", "reference", "engine", "strict"),
        *("--ks", "1", "5", "10", "20", "--users", "128", "--users-latency", "30", "--users-equal", "500"),
        *("--concurrency", "64", "--warmup-calls", "10", "--profile", "--profile-k", "20"),
    )


# topk_drafted_checks' variants: (name, extra environment, --engine-args); each runs K = 1 then K = 5 as the first
# bench_topk_drafted run did (its K = 5 float32 pass: 457 / 500 users equal to the reference, before the
# early-finish fix of admission.private_blocks_per_beam); the variants that would tell other causes apart (no
# prefix caching, no async scheduling, eager) are in git history
DRAFTED_CHECK_VARIANTS = (
    ("plain", {}, "{}"),
    ("checks", {"PADREC_TOPK_CHECKS": "1"}, "{}"),
)


def job_topk_drafted_checks(ctx: JobContext) -> int:
    """Issue 13's float32 inequality looked into: the strict mode (N = 4, gamma 3) at K = 1 then 5 beside the
    reference, 64 users per call, as it is, with every round's rows checked against V2's state first
    (PADREC_TOPK_CHECKS=1, ``vllm_padrec/topk/round_checks.py``: host syncs, violations in the log), without
    prefix caching, without async scheduling, and without CUDA graphs. Which variants reach every user equal
    tells the cause apart."""
    common = ("--modes", "strict", "reference", "--draft", str(ctx.settings.draft()), "--draft-beams", "4")
    common += ("--gamma", "3", "--dtypes", "float32", "--exact-modes", "reference", "strict", "--ks", "1", "5")
    common += ("--users", "192", "--users-latency", "1", "--users-equal", "192", "--concurrency", "64")
    code = 0
    for name, env, engine_args in DRAFTED_CHECK_VARIANTS:
        code = max(
            code,
            run_bench_topk(
                ctx,
                f"topk_drafted_checks_{name}",
                *common,
                *("--warmup-calls", "2", "--engine-args", engine_args),
                env=env,
                log_tag=name,
            ),
        )
    return code


def job_topk_bringup(ctx: JobContext) -> int:
    """The top-K path inside vLLM beside the reference and vLLM's beam search (issue 12) on the small target:
    bench_topk, float32, a few users and Ks, with a profile of each mode at K = 20."""
    return run_bench_topk(
        ctx,
        "topk_bringup",
        *("--modes", "reference", "vllm_beam_search", "engine", "greedy_floor", "--dtypes", "float32"),
        *("--ks", "1", "5", "20"),
        *("--users", "64", "--users-latency", "8", "--users-equal", "64", "--concurrency", "16", "--profile"),
    )


def job_hostile(ctx: JobContext) -> int:
    return ctx.python("benchmarks.hostile_inputs", *model_args(ctx.settings), "--out", str(WORK / "results"))


def job_serve(ctx: JobContext) -> int:
    checkpoint = str(ctx.settings.checkpoint())
    return ctx.python(
        "benchmarks.serve_completions",
        *(
            "--checkpoint",
            checkpoint,
            "--dataset",
            dataset_path(ctx.settings),
            "--users",
            "300",
            "--out",
            str(WORK / "results"),
        ),
        *("--", *SERVE_ARGS),
    )


def job_examples(ctx: JobContext) -> int:
    """The README's examples against a served target with its draft, and bad input that must get 4xx answers."""
    from vllm_padrec.data import load_dataset
    from vllm_padrec.testing.server import VllmServer

    s = ctx.settings
    dataset = load_dataset(dataset_path(ctx.settings))
    history = [dataset.catalog.item_ids[i] for i in dataset.eval_samples("test")[0].history[-8:]]
    results = WORK / "results"
    speculative = ["--speculative-model", str(s.draft()), *SERVE_ARGS]
    with VllmServer(
        str(s.checkpoint()), speculative, port=8000, env=ctx.env, log_path=ctx.log_path.with_suffix(".serve.log")
    ) as server:
        base_url = "--base-url", f"{server.base}/v1"
        client = [sys.executable, str(REPO / "examples/openai_client.py"), "--checkpoint", str(s.checkpoint())]
        code = ctx.run([*client, *base_url, "--history", *history])
        answers = {
            "recommendations": server.post("/v1/recommendations", json.dumps({"history": history, "num_items": 5}))
        }
        bad = {
            "unknown item": {"history": ["nope"], "num_items": 5},
            "empty history": {"history": [], "num_items": 5},
            "too many items": {"history": history[:1], "num_items": 100000},
        }
        answers.update({name: server.post("/v1/recommendations", json.dumps(body)) for name, body in bad.items()})
        answers["healthy after"] = server.healthy()
    (results / f"examples{s.suffix()}.json").write_text(json.dumps(answers, indent=1, default=str))
    bad_answered = all(400 <= answers[name][0] < 500 for name in bad) and answers["recommendations"][0] == 200
    offline = [sys.executable, str(REPO / "examples/offline_vllm.py"), "--target", str(s.checkpoint())]
    code = max(
        code, ctx.run([*offline, "--draft", str(s.draft()), "--dataset", dataset_path(ctx.settings), "--users", "3"])
    )
    topk = [sys.executable, str(REPO / "examples/topk_offline.py"), "--target", str(s.checkpoint())]
    code = max(code, ctx.run([*topk, "--dataset", dataset_path(ctx.settings), "--k", "5", "--users", "3"]))
    return max(code, 0 if bad_answered and answers["healthy after"] else 1)


def job_bench_vllm_mask(ctx: JobContext) -> int:
    out = ("--out", str(WORK / "results"))
    return ctx.python(
        "benchmarks.bench_vllm_mask", "--dataset", dataset_path(ctx.settings), *out, "--iters", "100", "--repeats", "3"
    )


def job_bench_trie(ctx: JobContext) -> int:
    return ctx.python("benchmarks.bench_trie", "--out", str(WORK / "results"))


def job_tp2(ctx: JobContext) -> int:
    """Issue 15's tensor parallelism: benchmarks/bench_tp2.py on the bench target and its PAD-Rec head, one GPU
    against two (a machine of kind nvidia-h200-x2; the job sees both GPUs and runs alone)."""
    s = ctx.settings
    return ctx.python(
        "benchmarks.bench_tp2",
        *("--target", str(bench_dir(s.dataset) / "checkpoint"), "--dataset", dataset_path(s)),
        *("--padrec-draft", str(bench_heads() / "padrec" / "draft")),
        *("--work-dir", str(WORK / "tp2"), "--out", str(WORK / "results")),
    )


def job_bench_catalog_scale(ctx: JobContext) -> int:
    """Issue 15's memory and scale: benchmarks/bench_catalog_scale.py, catalogs of 1M and 10M items (about two
    minutes of catalog building on the host, then the masks)."""
    return ctx.python("benchmarks.bench_catalog_scale", "--out", str(WORK / "results"))


def job_bench_kv_block_copy(ctx: JobContext) -> int:
    return ctx.python("benchmarks.bench_kv_block_copy", "--out", str(WORK / "results"))


def job_bench_padrec_kernel(ctx: JobContext) -> int:
    return ctx.python("benchmarks.bench_padrec_kernel", "--out", str(WORK / "results"))


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("train", job_train, untimed=True),
        Job("bench_target", job_bench_target, untimed=True),
        Job("bench_eval", job_bench_eval, needs=("bench_target",)),
        Job("bench_drafts", job_bench_drafts, needs=("bench_target",), untimed=True),
        Job("acceptance", job_acceptance, needs=("bench_drafts",)),
        Job("signal_ablation", job_signal_ablation, needs=("bench_target",), untimed=True),
        Job("atspeed_drafts", job_atspeed_drafts, needs=("bench_target",), untimed=True),
        Job("bench_atspeed", job_bench_atspeed, needs=("atspeed_drafts",)),
        Job("bench_topk_atspeed", job_bench_topk_atspeed, needs=("atspeed_drafts",), vllm=True),
        Job("kernel_tests", job_kernel_tests, vllm=True),
        Job("gpu_tests", job_gpu_tests, vllm=True),
        Job(
            "engine_step_baseline",
            job_engine_step_baseline,
            needs=(DRAFT,),
            lane=1,
            vllm=True,
            installed=None,
            exclusive=True,
        ),
        Job("engine_step", job_engine_step, needs=(DRAFT,), lane=1, vllm=True),
        Job("lossless", job_lossless, needs=(DRAFT,), lane=1, vllm=True),
        Job("hostile", job_hostile, needs=(DRAFT,), lane=1, vllm=True),
        Job(
            "bench_target_games",
            lambda ctx: job_bench_target(with_dataset(ctx, SECOND_DATASET)),
            lane=1,
            untimed=True,
        ),
        Job("bench_topk", job_bench_topk, needs=(TARGET,), vllm=True),
        Job("bench_spec_decode", job_bench_spec_decode, needs=(DRAFT,), vllm=True),
        Job("bench_spec_decode_exact", job_bench_spec_decode_exact, needs=(DRAFT,), vllm=True),
        Job("spec_decode_smoke", job_spec_decode_smoke, needs=(DRAFT,), vllm=True),
        Job("engine_core_none", job_engine_core_none, needs=(TARGET,), vllm=True),
        Job(
            "bench_topk_games",
            job_bench_topk_games,
            needs=("bench_target_games",),
            lane=1,
            vllm=True,
        ),
        Job("topk_tests", job_topk_tests, vllm=True, untimed=True),
        Job("topk_smoke", job_topk_smoke, lane=1, vllm=True, untimed=True),
        Job("topk_bringup", job_topk_bringup, needs=(TARGET,), vllm=True),
        Job("topk_drafted_tests", job_topk_drafted_tests, lane=1, vllm=True, untimed=True),
        Job("bench_topk_drafted", job_bench_topk_drafted, needs=(DRAFT,), vllm=True),
        Job("topk_drafted_checks", job_topk_drafted_checks, needs=(DRAFT,), vllm=True),
        Job("examples", job_examples, needs=(DRAFT,), lane=1, vllm=True),
        Job("serve", job_serve, needs=(TARGET,), lane=1, vllm=True),
        Job("bench_vllm_mask", job_bench_vllm_mask, lane=1, vllm=True),
        Job("bench_trie", job_bench_trie, lane=1),
        Job("bench_catalog_scale", job_bench_catalog_scale, lane=1),
        Job("tp2", job_tp2, needs=("bench_drafts",), vllm=True, exclusive=True, every_gpu=True),
        Job("bench_padrec_kernel", job_bench_padrec_kernel, lane=1),
        Job("bench_kv_block_copy", job_bench_kv_block_copy, lane=1),
    )
}
CLOSING_CHECK = ("engine_step_baseline", "kernel_tests", "gpu_tests", "lossless", "engine_step")
# one dataset's results (issue 15), by part: the jobs ``suite`` queues, on the bench target of --dataset
SUITE_PARTS = {
    "lists": ("bench_target", "bench_drafts", "bench_spec_decode"),  # spec_decode_<dataset>
    "topk": ("bench_target", "atspeed_drafts", "bench_topk", "bench_topk_atspeed"),  # topk_<dataset>
}
# a suite's defaults: the heads the benchmarks read, issue 14's methods (not the experiments padrec_tail, _loop)
SUITE_SETTINGS = {
    "target": "bench",
    "drafts": "padrec_eagle",
    "spec_methods": tuple(m for m in SPEC_METHODS if m not in ("padrec_tail", "padrec_loop")),
}


def needs_of(job: str, settings: Settings) -> list[str]:
    """The jobs ``job`` needs, with the session's target and draft jobs in place of TARGET and DRAFT."""
    bench = settings.target == "bench"
    alias = {TARGET: "bench_target" if bench else "train", DRAFT: "bench_drafts" if bench else "train"}
    return [alias.get(need, need) for need in JOBS[job].needs]


# -- state: one JSON file per queued job, and the queue ------------------------------------------------------------
def state(job: str) -> dict:
    """{"state": queued|running|ok|failed, ...}; a queued or running job whose daemon is gone has failed."""
    path = WORK / "status" / f"{job}.json"
    if not path.exists():
        return {"state": "not started"}
    record = json.loads(path.read_text())
    if record["state"] in ("queued", "running") and not alive(record.get("pid")):
        return {**record, "state": "failed", "reason": "its daemon is gone"}
    return record


def write_whole(path: Path, text: str) -> None:
    """Write ``path`` so that a reader in another thread or process sees the old text or the new, never a mix:
    a reader that read the first bytes of the old queue and the rest of a longer new one failed CI's run."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def set_state(job: str, **fields) -> None:
    path = WORK / "status" / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(fields))


def update_state(job: str, **fields) -> None:
    set_state(job, **{**state(job), **fields})


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def queue() -> list[str]:
    """The queued jobs, in the order they were queued (a job queued again moves to the end)."""
    path = WORK / "queue.json"
    return json.loads(path.read_text()) if path.exists() else []


def enqueue(jobs: list[str]) -> None:
    names = [j for j in queue() if j not in jobs] + jobs
    write_whole(WORK / "queue.json", json.dumps(names))


def saved_settings() -> dict:
    path = WORK / "settings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def in_dependency_order(jobs: list[str], settings: Settings) -> list[str]:
    """``jobs`` with each after the named jobs it needs (otherwise in the order given)."""
    ordered: list[str] = []

    def visit(job: str) -> None:
        if job not in ordered:
            for need in needs_of(job, settings):
                if need in jobs:
                    visit(need)
            ordered.append(job)

    for job in jobs:
        visit(job)
    return ordered


def depends_on(job: str, other: str, settings: Settings) -> bool:
    """True when ``job`` needs ``other``, directly or through the jobs it needs."""
    needs = needs_of(job, settings)
    return other in needs or any(depends_on(need, other, settings) for need in needs)


# The bench recipe's batches of 128 examples peak at 68 GiB on an H200 (bench_target_recipe.md) and ran out
# of an H100's 79 GiB (2026-12-05): on a card of less memory the target trains in passes of half a batch
# (the same optimiser steps; ``TargetRecipe.micro_batch_size``).
BENCH_BATCH_GIB = 100
BENCH_MICRO_BATCH = 64


def nvidia_smi(*args: str) -> str | None:
    """What ``nvidia-smi ARGS`` prints, None where it cannot run."""
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def gpu_memory_gib() -> float | None:
    """The first GPU's memory in GiB, None without nvidia-smi."""
    mib = (nvidia_smi("--query-gpu=memory.total", "--format=csv,noheader,nounits") or "").split()
    return float(mib[0]) / 1024 if mib else None


def gpu_count() -> int:
    listing = nvidia_smi("-L") or ""
    return max(1, sum(line.startswith("GPU ") for line in listing.splitlines()))


def runs_after(job: str, settings: Settings, gpus: int) -> list[str]:
    """The jobs queued before ``job`` that must end before it starts: those on its GPU, and every one
    around an exclusive job (a job never waits for one that needs it)."""
    names = queue()
    earlier = names[: names.index(job)] if job in names else names
    lane = JOBS[job].lane

    def shares(other: str) -> bool:
        same_gpu = gpus < 2 or JOBS[other].lane == lane
        # untimed jobs share a GPU, but never a training job and one that starts vLLM engines: vLLM refuses to start
        # where less memory is free than its share (the bench target's training left 15.8 of 140 GiB)
        beside = JOBS[job].untimed and JOBS[other].untimed and JOBS[job].vllm == JOBS[other].vllm
        return (same_gpu and not beside) or JOBS[job].exclusive or JOBS[other].exclusive

    return [other for other in earlier if shares(other) and not depends_on(other, job, settings)]


def blocked_by(job: str, settings: Settings, gpus: int) -> tuple[str, str | None]:
    """("wait", None), ("run", None) or ("fail", reason) for a queued job."""
    needs = [n for n in needs_of(job, settings) if state(n)["state"] != "not started"]  # never queued: skipped
    failed = [n for n in needs if state(n)["state"] == "failed"]
    if failed:
        return "fail", f"a job it needs failed: {failed}"
    pending = [n for n in needs if state(n)["state"] != "ok"]
    pending += [INSTALLING] if JOBS[job].installed and installed() == INSTALLING else []
    pending += [o for o in runs_after(job, settings, gpus) if state(o)["state"] in ("queued", "running")]
    return ("wait", None) if pending else ("run", None)


def visible_devices(job: str, gpus: int) -> str | None:
    """The GPU ``job`` sees (CUDA_VISIBLE_DEVICES): its lane's on a machine of two or more, every one for a job
    that spans them (``every_gpu``) and on a machine of one (None: left as it is)."""
    return None if gpus < 2 or JOBS[job].every_gpu else str(JOBS[job].lane)


def job_environment(job: str, settings: Settings, gpus: int) -> dict[str, str]:
    code = JOBS[job].installed or CURRENT
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PADREC_DATA_DIR": str(WORK / "data"),
        "VLLM_CACHE_ROOT": str(WORK / "cache" / job),
        "PYTHONPATH": python_path(code, os.environ),
    }
    if (devices := visible_devices(job, gpus)) is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return env


def python_path(code: str, env: dict[str, str]) -> str:
    """Only ``benchmarks`` of the repository (``code``: current) or of .baseline is importable from them, so that
    the repository's vllm_padrec/ (without kernels/, which setup.py maps in) never shadows the installed one."""
    folder = WORK / "path" / code
    folder.mkdir(parents=True, exist_ok=True)
    source = REPO / "benchmarks" if code == CURRENT else WORK / "baseline" / "benchmarks"
    link = folder / "benchmarks"
    if not link.is_symlink() or link.resolve() != source.resolve():
        # two lanes may start at once: link under a name of this process's own, then rename over the old
        # link in one step (os.replace), so that neither sees a missing link nor fails on an existing one
        fresh = folder / f".benchmarks.{os.getpid()}.{threading.get_ident()}"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(source)
        os.replace(fresh, link)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not p.startswith(str(WORK / "path"))]
    return os.pathsep.join([str(folder), *rest])


def installed() -> str | None:
    path = WORK / "installed"
    return path.read_text().strip() if path.exists() else None


def install(source: Path, code: str) -> None:
    """pip-install the project from ``source`` (no dependencies) and record which version is installed."""
    set_installed(INSTALLING)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # an editable install fails there
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall"]
    log(f"installing the {code} code from {source}")
    try:
        subprocess.run([*pip, str(source)], check=True, env=env, cwd=WORK)
    except subprocess.CalledProcessError:
        set_installed(f"none (pip failed to install the {code} code)")  # the jobs that wait for it fail
        raise
    set_installed(code)


def set_installed(code: str) -> None:
    write_whole(WORK / "installed", code)


def execute(job: str, settings: Settings, gpus: int) -> int:
    """Run the job's body in this process; its exit status (an exception counts as 1)."""
    need = JOBS[job].installed
    if need is not None and installed() not in (need, None):
        log(f"{job}: the {installed()} code is installed, it runs on the {need} code")
        return 1
    context = JobContext(job, settings, job_environment(job, settings, gpus))
    for folder in ("logs", "results", "run"):
        (WORK / folder).mkdir(parents=True, exist_ok=True)
    try:
        return JOBS[job].body(context)
    except Exception as error:  # the daemon reports, never hangs its waiters
        log(f"{job} raised {type(error).__name__}: {error}")
        return 1


def run_job(job: str) -> None:
    """A daemon's work: wait until ``job`` may start, run it, record how it ended."""
    update_state(job, pid=os.getpid())  # from now on, a daemon gone without a word fails the job
    settings = Settings.from_mapping(state(job).get("settings", {}))
    gpus = gpu_count()
    while (verdict := blocked_by(job, settings, gpus))[0] == "wait":
        time.sleep(POLL_SECONDS)
    if verdict[0] == "fail":
        log(f"{job}: {verdict[1]}")
        update_state(job, state="failed", reason=verdict[1])
        return
    started = time.time()
    gpu = f"GPU {JOBS[job].lane}" if gpus >= 2 else "the GPU"
    log(f"{job}: running on {gpu}")
    update_state(job, state="running", started=started)
    code = execute(job, settings, gpus)
    update_state(job, state="ok" if code == 0 else "failed", returncode=code, seconds=round(time.time() - started))
    log(f"{job}: exit {code}")


def spawn(job: str) -> None:
    """Start ``job``'s daemon: a process in its own session, which outlives the call."""
    path = WORK / "logs" / f"{job}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    with open(path, "a") as out:  # appending, as the commands the job runs do
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_job", job],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=WORK,
        )


def queue_jobs(jobs: list[str], settings: Settings) -> None:
    ordered = in_dependency_order(jobs, settings)
    for job in ordered:  # every state reads "queued", with its settings, before any daemon looks
        set_state(job, state="queued", settings=dataclasses.asdict(settings))
    enqueue(ordered)
    for job in ordered:
        spawn(job)


# -- phases (one per device call) ---------------------------------------------------------------------------------
def check_names(jobs: list[str], vllm_allowed: bool) -> str | None:
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        return f"unknown jobs {unknown}; jobs: {list(JOBS)}"
    if not vllm_allowed and (needing := [j for j in jobs if JOBS[j].vllm]):
        return f"{needing} need vLLM: queue them with `checks`, after the kit's install"
    return None


class SettingsError(ValueError):
    """Session settings that cannot work together (``Settings.problem``)."""


def prepare(settings_given: dict) -> Settings:
    """The call's settings (saved ones, overridden by the call's options, saved for the later calls)."""
    for folder in ("status", "logs", "results", "run", "data"):
        (WORK / folder).mkdir(parents=True, exist_ok=True)
    values = {**saved_settings(), **settings_given}
    if problem := Settings.from_mapping(values).problem():
        raise SettingsError(problem)  # before they are saved: a later call starts from the good ones
    write_whole(WORK / "settings.json", json.dumps(values))
    if (REPO / ".gpudata").is_dir():
        shutil.copytree(REPO / ".gpudata", WORK / "data", dirs_exist_ok=True)
    if (REPO / ".baseline").is_dir() and installed() != BASELINE:
        shutil.copytree(REPO / ".baseline", WORK / "baseline", dirs_exist_ok=True)
    return Settings.from_mapping(values)


def phase_start(jobs: list[str], settings_given: dict) -> int:
    jobs = jobs or ["train"]
    if problem := check_names(jobs, vllm_allowed=False):
        print(problem, file=sys.stderr)
        return 2
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], check=False)
    settings = prepare(settings_given)
    install(REPO, CURRENT)
    queue_jobs(jobs, settings)
    return phase_status()


def phase_checks(jobs: list[str], settings_given: dict) -> int:
    jobs = jobs or list(CLOSING_CHECK)
    if problem := check_names(jobs, vllm_allowed=True):
        print(problem, file=sys.stderr)
        return 2
    if installed() == BASELINE:
        print("engine_step_baseline has .baseline installed: queue the jobs once it ended", file=sys.stderr)
        return 1
    settings = prepare(settings_given)
    if problem := missing_draft(jobs, settings):
        print(problem, file=sys.stderr)
        return 2
    install(REPO, CURRENT)  # over the vLLM kit, so that vLLM finds the entry points
    queue_jobs(jobs, settings)
    return phase_status()


def suite_jobs(parts: list[str]) -> list[str]:
    """The jobs of ``parts`` (``SUITE_PARTS``), each once, in order."""
    return list(dict.fromkeys(job for part in parts for job in SUITE_PARTS[part]))


def phase_suite(parts: list[str], settings_given: dict, wait_seconds: float) -> int:
    """One dataset's results on a machine with vLLM: ``checks`` of the jobs of ``parts`` (default all) that this
    session has not queued, run or finished (a later call reuses the target and heads it trained; a failed job is
    queued again), under ``SUITE_SETTINGS`` unless given, then wait up to ``wait_seconds`` (0: return)."""
    parts = parts or list(SUITE_PARTS)
    if unknown := [part for part in parts if part not in SUITE_PARTS]:
        print(f"unknown parts {unknown}; parts: {list(SUITE_PARTS)}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("vllm") is None:
        print(
            "suite runs vLLM benchmarks and vLLM is not installed here (on the device: the kit's part 3)",
            file=sys.stderr,
        )
        return 2
    if settings_given.get("target", "bench") != "bench":
        print("suite measures the bench target: drop --target", file=sys.stderr)
        return 2
    jobs = [job for job in suite_jobs(parts) if state(job)["state"] in ("not started", "failed")]
    if not jobs:  # every job of the parts queued or finished already
        phase_status()
    elif (code := phase_checks(jobs, {**SUITE_SETTINGS, **settings_given})) != 0:
        return code
    return phase_wait(wait_seconds) if wait_seconds > 0 else 0


def missing_draft(jobs: list[str], settings: Settings) -> str | None:
    """Why ``jobs`` cannot run in this session, in one line: some need the small target's draft, which it does not
    train, or bench_spec_decode's methods draft with bench heads that its ``--drafts`` does not train (found at
    queueing rather than minutes later, when the benchmark reaches the method's engine)."""
    if "bench_spec_decode" in jobs and (lacking := methods_without_heads(settings)):
        return (
            f"bench_spec_decode's --spec-methods {' '.join(lacking)} draft with heads that --drafts "
            f"{settings.drafts} does not train; drafts that train them: {' '.join(drafts_training(lacking))}"
        )
    if settings.target != "small" or settings.small_draft:
        return None
    needing = [job for job in jobs if DRAFT in JOBS[job].needs]
    if not needing:
        return None
    return f"{' '.join(needing)} need the PAD-Rec draft, and this session trains none (--no-small-draft)"


def methods_without_heads(settings: Settings) -> list[str]:
    """bench_spec_decode's methods whose head the session does not train: on the bench target the heads of its
    ``--drafts`` (``DRAFTS_HEADS``), on the small target its PAD-Rec head alone."""
    trained = DRAFTS_HEADS[settings.drafts] if settings.target == "bench" else ("padrec",)
    return [m for m in settings.spec_methods if m in SPEC_METHOD_HEAD and SPEC_METHOD_HEAD[m] not in trained]


def drafts_training(methods: list[str]) -> list[str]:
    """The ``--drafts`` values whose heads serve every one of ``methods``."""
    heads = {SPEC_METHOD_HEAD[m] for m in methods}
    return [drafts for drafts, trained in DRAFTS_HEADS.items() if heads <= set(trained)]


def phase_run(jobs: list[str], settings_given: dict) -> int:
    """Run ``jobs`` now, in this call, whatever the state of the jobs they need (a rerun after a fix)."""
    if problem := check_names(jobs, vllm_allowed=True):
        print(problem, file=sys.stderr)
        return 2
    settings = prepare(settings_given)
    if problem := missing_draft(jobs, settings):
        print(problem, file=sys.stderr)
        return 2
    enqueue(jobs)
    worst = 0
    for job in jobs:
        started = time.time()
        set_state(job, state="running", settings=dataclasses.asdict(settings), pid=os.getpid(), started=started)
        code = execute(job, settings, gpu_count())
        update_state(job, state="ok" if code == 0 else "failed", returncode=code, seconds=round(time.time() - started))
        log(f"{job}: exit {code}")
        print_tail(WORK / "logs" / f"{job}.log", 20)
        worst = max(worst, code)
    return worst


def print_tail(path: Path, lines: int) -> None:
    if path.exists():
        text = path.read_text(errors="replace").splitlines()
        print(
            f"--- {path.name} (last {min(lines, len(text))} of {len(text)} lines)", *text[-lines:], sep="\n", flush=True
        )


def phase_status() -> int:
    for job in queue():
        log(f"{job}: { ({k: v for k, v in state(job).items() if k != 'settings'}) }")
    for job in queue():
        print_tail(WORK / "logs" / f"{job}.log", 6)
    return 0


def phase_wait(seconds: float) -> int:
    """Block up to ``seconds`` for the queued jobs, collecting into $OUT whenever a job has ended since the last
    collection, every ``COLLECT_SECONDS`` (the running jobs' logs, where benchmarks print each pass's record) and
    at the end: a call cut off (its time limit, or the session's device time running out) still returns what had
    finished, where one collection at the end returned nothing (SPEC_DECODE.md section 20)."""
    out = Path(os.environ.get("OUT", WORK / "out"))
    deadline = time.time() + seconds
    ended, collected = set(), time.time()  # jobs that ended before this call are collected at its first poll
    while time.time() < deadline and any(state(j)["state"] in ("queued", "running") for j in queue()):
        time.sleep(POLL_SECONDS)
        if (now := ended_jobs()) != ended or time.time() - collected >= COLLECT_SECONDS:
            ended, collected = now, time.time()
            collect(out)
    phase_status()
    collect(out)
    failed = [j for j in queue() if state(j)["state"] == "failed"]
    pending = [j for j in queue() if state(j)["state"] in ("queued", "running")]
    log(f"failed: {failed or 'none'}; still running: {pending or 'none'}")
    return 1 if failed else 0


def ended_jobs() -> set[str]:
    """The queued jobs that have ended (ok or failed)."""
    return {job for job in queue() if state(job)["state"] in ("ok", "failed")}


@contextlib.contextmanager
def replaced(path: Path):
    """Write to ``path`` whole or not at all: yield a temporary name beside it, moved over ``path`` once written, so
    that a call cut off while collecting leaves the previous file."""
    part = path.with_name(f".{path.name}.part")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def collect(out: Path) -> None:
    """status.json, results.tgz (the results folder), logs.tgz (each log's last MAX_LOG_BYTES, running
    benchmark jobs' configuration and server logs included) and, when a job wrote profiler traces, traces.tgz (apart: a
    trace too big to come back leaves the results whole) into ``out``, each file replaced whole: the device machine
    sends back at most 8 files, none over 16 MiB."""
    out.mkdir(parents=True, exist_ok=True)
    with replaced(out / "status.json") as part:
        part.write_text(json.dumps({job: state(job) for job in queue()}, indent=1))
    with replaced(out / "results.tgz") as part, tarfile.open(part, "w:gz") as archive:
        if (WORK / "results").is_dir():
            archive.add(WORK / "results", arcname="results")
    if (WORK / "traces").is_dir() and any(path.is_file() for path in (WORK / "traces").rglob("*")):
        with replaced(out / "traces.tgz") as part, tarfile.open(part, "w:gz") as archive:
            archive.add(WORK / "traces", arcname="traces")
    logs_dir = WORK / "logs"
    logged = sorted(logs_dir.rglob("*")) if logs_dir.is_dir() else []
    logs = [(path, str(path.relative_to(logs_dir))) for path in logged]
    # a running benchmark job's configuration logs, profiles and server logs: a hold cut short keeps them too
    logs += [entry for job in queue() for entry in config_logs(WORK / job, job)]
    with replaced(out / "logs.tgz") as part, tarfile.open(part, "w:gz") as archive:
        for path, name in logs:
            if path.is_file():
                with open(path, "rb") as handle:
                    handle.seek(max(0, path.stat().st_size - MAX_LOG_BYTES))
                    tail = handle.read()
                info = tarfile.TarInfo(f"logs/{name}")
                info.size, info.mtime = len(tail), int(path.stat().st_mtime)
                archive.addfile(info, io.BytesIO(tail))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = top.add_subparsers(dest="phase", required=True, metavar="PHASE")
    job_help = f"jobs: {', '.join(JOBS)}"
    for name, about, default in (
        ("start", "install the project, copy the data, queue jobs that need no vLLM", "train"),
        ("checks", "reinstall over the vLLM kit and queue jobs", " ".join(CLOSING_CHECK)),
        ("run", "run jobs now, in this call, whatever the jobs they need did", None),
    ):
        phase = phases.add_parser(name, help=about, description=about)
        phase.add_argument(
            "jobs", nargs="+" if default is None else "*", metavar="JOB", help=f"{job_help} (default: {default})"
        )
        add_settings(phase)
    about = "one dataset's list and top-K results on the bench target (issue 15), on a machine with vLLM"
    suite = phases.add_parser("suite", help=about, description=about)
    suite.add_argument("parts", nargs="*", metavar="PART", help=f"of {', '.join(SUITE_PARTS)} (default all)")
    suite.add_argument(
        "--wait-seconds", type=float, default=0, help="then wait this long for the jobs, as `wait` (default 0: return)"
    )
    add_settings(suite)
    phases.add_parser("status", help="each queued job's state and its log's last lines")
    wait = phases.add_parser("wait", help="block for the queued jobs, then copy results and logs to $OUT")
    wait.add_argument("seconds", nargs="?", type=float, default=540, help="at most this long (default 540)")
    phases.add_parser("_job").add_argument("job")  # a daemon (internal)
    return top


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: 2 for a usage error, 0 for --help
        return int(exit_.code or 0)
    given = {
        k: v for k, v in vars(args).items() if k not in ("phase", "jobs", "seconds", "job", "parts", "wait_seconds")
    }
    if args.phase == "_job":
        if (devices := visible_devices(args.job, gpu_count())) is not None:  # for the work it does in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        run_job(args.job)
        return 0
    if args.phase == "status":
        return phase_status()
    if args.phase == "wait":
        return phase_wait(args.seconds)
    phase = {
        "start": phase_start,
        "checks": phase_checks,
        "run": phase_run,
        "suite": lambda _, given: phase_suite(args.parts, given, args.wait_seconds),
    }[args.phase]
    try:
        return phase(getattr(args, "jobs", None), given)
    except SettingsError as error:  # one line, and nothing queued or saved
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
