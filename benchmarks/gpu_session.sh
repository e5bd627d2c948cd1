#!/usr/bin/env bash
# One script for the H200 device machine: builds, checks and times everything in few calls.
#
# The machine is bare and is given back 30 s after a call, so the phases are made back to back, each
# as one `run` call from the repository root (see README "GPU machine"):
#
#   call 1  carry [.vllmkit/part1, .gpudata]  bash .vllmkit/part1/stash.sh && bash benchmarks/gpu_session.sh start
#   call 2  carry [.vllmkit/part2]            bash .vllmkit/part2/stash.sh && bash benchmarks/gpu_session.sh kernels
#   call 3  carry [.vllmkit/part3]            bash .vllmkit/part3/install.sh && bash benchmarks/gpu_session.sh vllm
#   call 4                                    bash benchmarks/gpu_session.sh serve
#   call 5                                    bash benchmarks/gpu_session.sh accept
#   call 6                                    bash benchmarks/gpu_session.sh lossless
#
# start:    installs the project (no deps), copies the dataset to /tmp, starts the `pipeline` daemon
#           (it outlives the calls): bench target training (resumable), then its evaluation beside
#           the training of the draft heads (PAD-Rec, EAGLE, Medusa, ablations); trie GPU tests.
# kernels:  trie benchmark (the kernel benchmark: benchmarks/bench_padrec_kernel.py).
# vllm:     vLLM integration tests on the GPU with tiny random checkpoints.
# serve:    `vllm serve` of the bench target with the plugin installed, /v1/completions for test
#           users; the target's Recall/NDCG.
# accept:   acceptance lengths of every draft head with the reference speculative decoder.
# lossless: `vllm serve` with and without the PAD-Rec draft, 500 users, 64 concurrent, constrained.
# Results land in $OUT (copied back) and are committed under benchmarks/results/.
set -uo pipefail
PHASE=${1:?phase}
W=/tmp/padrec
REPO=$(pwd)
mkdir -p "$W/run" "$W/path" "${OUT:=/tmp/padrec/out}"
[ -f /tmp/vllmkit/env.sh ] && . /tmp/vllmkit/env.sh
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
  python3 -m vllm_padrec.cli evaluate --checkpoint $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
      --batch-size 256 --out $W/results/target_beauty.json > $W/eval.log 2>&1 &
  train_drafts() {  # same budget (steps, batch, data) for every method
    python3 -m vllm_padrec.cli train-draft --target $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
        --out $W/drafts --gamma 5 --max-steps ${DRAFT_STEPS:-1200} --batch-size 64 --max-stored-gib 24 \
        --until-done --method "$@"
  }
  train_drafts padrec eagle > $W/drafts1.log 2>&1 &
  train_drafts medusa padrec_no_slot > $W/drafts2.log 2>&1 &
  train_drafts padrec_no_step padrec_no_gates > $W/drafts3.log 2>&1 &
  wait
  touch $W/pipeline.done
  ;;
start)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  mkdir -p $W/data && cp -r $REPO/.gpudata/* $W/data/
  install_project
  log "starting the pipeline daemon: bench target -> evaluation + draft heads"
  cp "$REPO/benchmarks/gpu_session.sh" $W/gpu_session.sh
  setsid nohup bash $W/gpu_session.sh pipeline > $W/pipeline.log 2>&1 < /dev/null &
  sleep 60; tail -c 600 $W/train.log
  log "GPU tests (trie, constraint, catalog)"
  python3 -m pytest -q -p no:cacheprovider $REPO/tests/test_trie.py $REPO/tests/test_constraint.py 2>&1 | tail -5
  ;;
kernels)
  log "trie benchmark"; python3 -m benchmarks.bench_trie --out "$OUT" 2>&1 | tail -25
  tail -c 300 $W/train.log
  ;;
vllm)
  python3 -c 'import vllm; print("vllm", vllm.__version__)'
  install_project
  log "vLLM integration tests on the GPU (tiny random target + PAD-Rec draft)"
  python3 -m pytest -q -p no:cacheprovider $REPO/tests/test_integration_gpu.py 2>&1 | tail -15
  tail -c 300 $W/train.log
  ;;
serve)
  log "waiting for the bench target"; wait_for $W/bench/checkpoint/config.json 560 || { tail -c 1500 $W/train.log; exit 1; }
  cp $W/bench/loss.json "$OUT/bench_target_loss.json" 2>/dev/null
  log "vllm serve + /v1/completions"
  python3 -m benchmarks.serve_completions --checkpoint $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
      --users 300 --out "$OUT" -- --gpu-memory-utilization 0.3 --max-model-len 512 2>&1 | tail -30
  tail -n 20 /tmp/padrec_serve.log | cut -c1-300
  wait_for $W/results/target_beauty.json 120 && cp $W/results/target_beauty.json "$OUT/"
  tail -c 1000 $W/eval.log; tail -c 300 $W/drafts*.log
  ;;
accept)
  log "waiting for the draft heads"; wait_for $W/pipeline.done 560 || { tail -c 800 $W/drafts*.log; exit 1; }
  grep -h '"accepted_length"' -B12 -A3 $W/drafts*.log | grep -v 'it/s' | head -120
  python3 -m benchmarks.bench_acceptance --target $W/bench/checkpoint --dataset $W/data/beauty_atspeed \
      --drafts $W/drafts/*/draft --users ${ACCEPT_USERS:-200} --gammas 3 4 5 --out "$OUT" --name beauty 2>&1 | tail -30
  for m in padrec eagle medusa; do cp $W/drafts/$m/loss_log.json "$OUT/draft_loss_$m.json"; done
  ;;
lossless)
  log "vllm serve with and without --speculative-model: greedy lists, token for token"
  python3 -m benchmarks.vllm_lossless --target $W/bench/checkpoint --draft $W/drafts/padrec/draft \
      --dataset $W/data/beauty_atspeed --users ${LOSSLESS_USERS:-500} --concurrency 64 --out "$OUT" \
      -- --gpu-memory-utilization 0.3 --max-model-len 512 2>&1 | tail -30
  ;;
*) echo "unknown phase $PHASE"; exit 2 ;;
esac
