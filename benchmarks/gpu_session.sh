#!/usr/bin/env bash
# One script for the H200 device machine: builds, checks and times everything in few calls.
#
# The machine is bare and is given back 30 s after a call, so the phases are made back to back, each
# as one `run` call from the repository root (see README "GPU machine"):
#
#   call 1  carry [.vllmkit/part1, .gpudata]  bash .vllmkit/part1/stash.sh && bash benchmarks/gpu_session.sh start
#   call 2  carry [.vllmkit/part2]            bash .vllmkit/part2/stash.sh && bash benchmarks/gpu_session.sh gpu_tests
#   call 3  carry [.vllmkit/part3]            bash .vllmkit/part3/install.sh && bash benchmarks/gpu_session.sh vllm
#   call 4                                    bash benchmarks/gpu_session.sh vllm_tests
#   call 5                                    bash benchmarks/gpu_session.sh results
#   call 6                                    bash benchmarks/gpu_session.sh lossless [fp32 bf16 fp32_invariant bf16_invariant fp32_triton]
#   call 7                                    bash benchmarks/gpu_session.sh kernels
#   call 8                                    bash benchmarks/gpu_session.sh engine [CONFIG...]
#   (optional)                                bash benchmarks/gpu_session.sh examples
#   (optional)                                bash benchmarks/gpu_session.sh serve
#
# start:    installs the project (no deps), copies the dataset to /tmp, starts the `pipeline` daemon
#           (it outlives the calls): bench target training (resumable), then its evaluation beside
#           the training of the draft heads (PAD-Rec, EAGLE, Medusa, ablations; the target's hidden
#           states are collected once per process), then the acceptance benchmark of every head.
# gpu_tests: the fused kernels' and the catalog masks' tests on the GPU (eager, compiled, Triton).
# kernels:  cost of the plugin's catalog masks at vLLM's shapes (bench_vllm_mask), on an idle GPU;
#           trie and kernel benchmarks: benchmarks/bench_trie.py, benchmarks/bench_padrec_kernel.py.
# vllm:     installs the project over the vLLM kit, waits for the target's training (its allocator
#           holds most of the GPU).
# vllm_tests: vLLM integration tests on the GPU with tiny random checkpoints.
# examples: `vllm serve TARGET --speculative-model DRAFT`, then examples/openai_client.py and a plain
#           HTTP POST /v1/recommendations against it; then examples/offline_vllm.py (LLM(...)).
# results:  waits for the pipeline, copies its results (target metrics, draft losses, acceptance) to $OUT.
# lossless: `vllm serve` with and without the PAD-Rec draft, 500 users, 64 concurrent, constrained,
#           plus an unconstrained pass (the constraint's cost per step); in float32 (the lossless
#           check: bfloat16 greedy lists differ run to run) and in bfloat16 (speed); after
#           `results`, so that nothing else shares the GPU while it times.
# engine:   where an engine step's time goes (benchmarks/engine_step.py): offline LLM with and without
#           the draft and the masks, profiled; configurations can be split over calls (results merge).
# serve:    `vllm serve` of the bench target without the constraint, /v1/completions for 300 users.
# Results land in $OUT (copied back) and are committed under benchmarks/results/.
#
# Environment: BENCH_EPOCHS (target epochs), DRAFT_STEPS (1200), DRAFTS (all; "padrec": only the PAD-Rec
# head, for the vLLM checks), SIGNAL_LR_SCALE (10: the learning-rate factor of the second PAD-Rec run's
# signal parameters), ACCEPT_USERS (150; 0: no acceptance benchmark), ACCEPT_GAMMAS ("3 4 5"), ACCEPT_NAME
# (beauty; the lossless run reads the reference acceptance from it: for the vLLM checks run
# DRAFTS=padrec ACCEPT_USERS=500 ACCEPT_GAMMAS=5 ACCEPT_NAME=beauty_vllm_users), LOSSLESS_USERS (500), ENGINE_USERS (512),
# PROFILE (the engine configurations profiled: "baseline spec"; empty: none), ENGINE_NAME (engine_step: the stem
# of the engine benchmark's files).
# The tests run with `-o pythonpath=`: pytest.ini puts the repository first on sys.path (for a plain
# `pytest` on a checkout with an editable install), which here would shadow the installed package,
# whose vllm_padrec.kernels setup.py maps in from kernels/.
# Lessons: anything timed must run alone; the vLLM tests slow the draft trainers to ~3 it/s per head;
# bfloat16 greedy lists are not reproducible run to run (the lossless check runs in float32).
set -uo pipefail
PHASE=${1:?phase}
W=/tmp/padrec
REPO=$(pwd)
mkdir -p "$W/run" "$W/path" "${OUT:=/tmp/padrec/out}"
[ -f /tmp/vllmkit/env.sh ] && . /tmp/vllmkit/env.sh
# the settings `start` was given hold for the later calls too (a call's own environment wins)
[ -f $W/session.env ] && . $W/session.env
# The repo's own vllm_padrec/ (without kernels/, which setup.py maps in) must not shadow the installed
# package: run from $W/run, with only benchmarks/ importable from the repo.
[ -d "$REPO/benchmarks" ] && ln -sfn "$REPO/benchmarks" "$W/path/benchmarks"
export PYTHONUNBUFFERED=1 PADREC_DATA_DIR=$W/data PYTHONPATH=$W/path${PYTHONPATH:+:$PYTHONPATH}
cd "$W/run"
log() { echo "[$(date +%T)] $*"; }

install_project() {
  (cd "$REPO" && env -u PYTHONPATH python3 -m pip install -q --no-deps --no-build-isolation --force-reinstall . 2>&1 | tail -2)
  cd "$W/run"
}

wait_for() {  # wait_for FILE SECONDS
  local t=0
  while [ ! -e "$1" ] && [ $t -lt "$2" ]; do sleep 10; t=$((t + 10)); done
  [ -e "$1" ]
}

case $PHASE in
pipeline)  # runs as a daemon (started by `start`); outlives the calls, logs to $W/*.log
  mkdir -p $W/results
  python3 -m vllm_padrec.cli train-target --recipe bench ${BENCH_EPOCHS:+--epochs $BENCH_EPOCHS} --until-done \
      --dataset $W/data/beauty_atspeed --out $W/bench > $W/train.log 2>&1 || exit 1
  touch $W/target.done
  python3 -m vllm_padrec.cli evaluate --checkpoint $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
      --batch-size 256 --out $W/results/target_beauty.json > $W/eval.log 2>&1 &
  train_drafts() {  # OUT SCALE METHOD...: same budget (steps, batch, data, learning rate) for every method
    local out=$1 scale=$2; shift 2
    python3 -m vllm_padrec.cli train-draft --target $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
        --out $out --gamma 5 --max-steps ${DRAFT_STEPS:-1200} --batch-size 64 --max-stored-gib 24 \
        --signal-lr-scale $scale --until-done --method "$@"
  }
  if [ "${DRAFTS:-all}" = padrec ]; then  # the vLLM checks only need the PAD-Rec head
    train_drafts $W/drafts 1 padrec > $W/drafts1.log 2>&1
  else
    train_drafts $W/drafts 1 padrec eagle > $W/drafts1.log 2>&1 &
    train_drafts $W/drafts 1 medusa padrec_no_slot > $W/drafts2.log 2>&1 &
    train_drafts $W/drafts 1 padrec_no_step padrec_no_gates > $W/drafts3.log 2>&1 &
    # PAD-Rec whose signal parameters learn 10x faster (they start switched off)
    train_drafts $W/drafts_signal_lr10 ${SIGNAL_LR_SCALE:-10} padrec > $W/drafts4.log 2>&1 &
    wait
  fi
  touch $W/drafts.done
  [ "${ACCEPT_USERS:-150}" = 0 ] && { touch $W/pipeline.done; exit 0; }  # no acceptance benchmark this time
  heads=$(ls -d $W/drafts/*/draft)
  [ -d $W/drafts_signal_lr10/padrec/draft ] && heads="$heads padrec_signal_lr10=$W/drafts_signal_lr10/padrec/draft"
  python3 -m benchmarks.bench_acceptance --target $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
      --drafts $heads --users ${ACCEPT_USERS:-150} --gammas ${ACCEPT_GAMMAS:-3 4 5} --batch-size 128 \
      --out $W/results --name ${ACCEPT_NAME:-beauty} > $W/accept.log 2>&1
  touch $W/pipeline.done
  ;;
start)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  mkdir -p $W/data && cp -r $REPO/.gpudata/* $W/data/
  for name in BENCH_EPOCHS DRAFT_STEPS DRAFTS SIGNAL_LR_SCALE ACCEPT_USERS ACCEPT_GAMMAS ACCEPT_NAME; do
    [ -n "${!name+x}" ] && echo ": \"\${$name:=${!name}}\""
  done > $W/session.env
  install_project
  log "starting the pipeline daemon: bench target -> evaluation + draft heads -> acceptance"
  cp "$REPO/benchmarks/gpu_session.sh" $W/gpu_session.sh
  setsid nohup bash $W/gpu_session.sh pipeline > $W/pipeline.log 2>&1 < /dev/null &
  sleep 45; tail -c 600 $W/train.log
  ;;
kernels)
  log "catalog masks at vLLM's shapes (eager, compiled, Triton, CUDA graph)"
  python3 -m benchmarks.bench_vllm_mask --dataset $W/data/beauty_atspeed --out "$OUT" --iters 100 --repeats 3 2>&1 | tail -25
  ;;
gpu_tests)
  log "GPU tests: fused kernel, catalog masks (eager and compiled)"
  python3 -m pytest -q -p no:cacheprovider -o pythonpath= $REPO/tests/test_padrec_kernel.py $REPO/tests/test_integration_mask.py $REPO/tests/test_catalog_mask_kernel.py 2>&1 | grep -E "^E |^FAILED|passed|failed|rror" | cut -c1-300 | tail -20
  tail -c 300 $W/train.log
  ;;
vllm)
  python3 -c 'import vllm; print("vllm", vllm.__version__)'
  install_project
  log "waiting for the bench target's training to release the GPU"
  wait_for $W/target.done 480 || { tail -c 600 $W/train.log; exit 1; }  # (call again if it is still training)
  ;;
vllm_tests)
  log "vLLM integration tests on the GPU (tiny random target + PAD-Rec draft)"
  # failures keep their assertion lines (a bare tail once cut a failure's reason off)
  python3 -m pytest -q -p no:cacheprovider -o pythonpath= -rf --tb=short $REPO/tests/test_integration_gpu.py 2>&1 \
      | grep -E "^E |^FAILED|passed|failed|Error" | cut -c1-400 | tail -40
  tail -c 400 $W/drafts1.log
  ;;
examples)
  log "waiting for the draft heads"; wait_for $W/drafts.done 400 || { tail -c 800 $W/drafts*.log; exit 1; }
  grep -h '"accepted_length"' -B12 -A3 $W/drafts*.log | grep -v 'it/s' | head -120
  export VLLM_PLUGINS=padrec,padrec_recommendations
  log "vllm serve TARGET --speculative-model DRAFT"
  vllm serve $W/bench/checkpoint --speculative-model $W/drafts/padrec/draft --port 8000 \
      --gpu-memory-utilization 0.3 --max-model-len 512 > $W/examples_serve.log 2>&1 &
  SERVER=$!
  for i in $(seq 1 60); do curl -sf localhost:8000/health > /dev/null && break; sleep 5; done
  HISTORY=$(python3 -c "
from vllm_padrec.data import load_dataset
d = load_dataset('$W/data/beauty_atspeed'); s = d.eval_samples('test')[0]
print(' '.join(d.catalog.item_ids[i] for i in s.history[-8:]))")
  log "examples/openai_client.py --history $HISTORY"
  python3 $REPO/examples/openai_client.py --checkpoint $W/bench/checkpoint --history $HISTORY \
      | tee "$OUT/example_openai_client.txt"
  log "POST /v1/recommendations"
  BODY=$(python3 -c "import json,sys; print(json.dumps({'history': sys.argv[1:], 'num_items': 5}))" $HISTORY)
  curl -s localhost:8000/v1/recommendations -H 'Content-Type: application/json' -d "$BODY" \
      | tee "$OUT/example_recommendations.json" | head -c 1500; echo
  log "bad input: unknown item, empty history, too many items"
  for body in '{"history": ["nope"], "num_items": 5}' '{"history": [], "num_items": 5}' \
      "{\"history\": [\"${HISTORY%% *}\"], \"num_items\": 100000}"; do
    curl -s -w ' HTTP %{http_code}\n' localhost:8000/v1/recommendations -H 'Content-Type: application/json' -d "$body" \
        | tee -a "$OUT/example_bad_input.txt"
  done
  curl -sf localhost:8000/health && echo " server still healthy" | tee -a "$OUT/example_bad_input.txt"
  kill $SERVER; wait $SERVER 2>/dev/null
  log "examples/offline_vllm.py (LLM(...) with the draft)"
  python3 $REPO/examples/offline_vllm.py --target $W/bench/checkpoint --draft $W/drafts/padrec/draft \
      --dataset $W/data/beauty_atspeed --users 3 2>&1 | grep -v -E 'INFO|WARNING|it/s' | tail -40 \
      | tee "$OUT/example_offline_vllm.txt"
  ;;
engine)  # engine CONFIG...: benchmarks/engine_step.py for these configurations (default: all), merged
  wait_for $W/drafts.done 400 || { tail -c 800 $W/drafts*.log; exit 1; }
  [ -e $W/pipeline.done ] || log "the pipeline still runs: timings are shared"
  shift; configs=${*:-baseline_free baseline spec_free spec spec_no_draft_mask spec_draft_eager}
  python3 -m benchmarks.engine_step --target $W/bench/checkpoint --draft $W/drafts/padrec/draft \
      --dataset $W/data/beauty_atspeed --users ${ENGINE_USERS:-512} --concurrency 64 --configs $configs \
      --profile ${PROFILE-baseline spec} --name ${ENGINE_NAME:-engine_step} --merge --out "$OUT" 2>&1 | grep -v "^\[engine_step\] .* \.\.\.$" | tail -60
  ;;
lossless)  # lossless [fp32|bf16]: both by default
  [ -e $W/pipeline.done ] || { log "the pipeline still runs (call 'results' first): timings would be shared"; tail -c 300 $W/accept.log; }
  lossless_run() {  # NAME VLLM_ARGS...: the same 500 users with and without the PAD-Rec draft
    local name=$1; shift
    local reference=$W/results/acceptance_${ACCEPT_NAME:-beauty}.json
    python3 -m benchmarks.vllm_lossless --target $W/bench/checkpoint --draft $W/drafts/padrec/draft \
        --dataset $W/data/beauty_atspeed --users ${LOSSLESS_USERS:-500} --concurrency 64 --out "$OUT" \
        $([ -e $reference ] && echo --reference-acceptance $reference) \
        --name $name -- --gpu-memory-utilization 0.3 --max-model-len 512 "$@" 2>&1 | tail -12
  }
  shift
  for mode in ${*:-fp32 bf16}; do
    case $mode in
    fp32) log "vllm serve with and without --speculative-model, float32: greedy lists, token for token"
          lossless_run vllm_lossless --dtype float32 ;;  # (with the reference decoder's acceptance, if run)
    fp32_triton) log "float32 with the fused Triton mask kernel (triton_masks)"
          lossless_run vllm_lossless_triton --dtype float32 --additional-config '{"padrec": {"triton_masks": true}}' ;;
    bf16) log "the same in bfloat16: speed (greedy lists are not reproducible run to run in bfloat16)"
          lossless_run vllm_lossless_bf16 ;;
    # vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1): each row's numerics do not depend on the batch
    fp32_invariant) log "float32, batch-invariant kernels"
          VLLM_BATCH_INVARIANT=1 lossless_run vllm_lossless_invariant --dtype float32 ;;
    bf16_invariant) log "bfloat16, batch-invariant kernels"
          VLLM_BATCH_INVARIANT=1 lossless_run vllm_lossless_bf16_invariant ;;
    *) echo "unknown lossless mode $mode"; exit 2 ;;
    esac
  done
  grep -h "masks\? ready in\|masks\? failed" /tmp/vllm_lossless_*.log | head -6
  ;;
results)
  wait_for $W/pipeline.done 500 || { tail -c 800 $W/accept.log; exit 1; }
  tail -n 30 $W/accept.log
  cp $W/results/* "$OUT/" 2>/dev/null
  cp $W/bench/loss.json "$OUT/bench_target_loss.json" 2>/dev/null
  cp $W/bench/val.json "$OUT/bench_target_val.json" 2>/dev/null
  # at most 8 files come back per call: the draft logs and results travel as one archive
  (cd $W && tar czf "$OUT/drafts.tgz" drafts/*/loss_log.json drafts/*/result.json \
      $(ls drafts_signal_lr10/padrec/loss_log.json drafts_signal_lr10/padrec/result.json 2>/dev/null))
  ls -la "$OUT"
  ;;
serve)
  log "waiting for the bench target"; wait_for $W/bench/checkpoint/config.json 560 || { tail -c 1500 $W/train.log; exit 1; }
  log "vllm serve + /v1/completions"
  python3 -m benchmarks.serve_completions --checkpoint $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
      --users 300 --out "$OUT" -- --gpu-memory-utilization 0.3 --max-model-len 512 2>&1 | tail -30
  tail -n 20 /tmp/padrec_serve.log | cut -c1-300
  ;;
*) echo "unknown phase $PHASE"; exit 2 ;;
esac
