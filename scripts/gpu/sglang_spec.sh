#!/usr/bin/env bash
# On the GPU host: SGLang 0.5.16 speculating (n-gram), measured through perftune.
#  1. transcript: `perftune deploy --engine sglang MODEL --lever spec-method=ngram --lever spec-k=3`
#     (SmolLM2-135M-Instruct, real weights: the Q4_1 GGUF exported to a bf16 Hugging Face folder);
#     /metrics before and after 8 chat requests, recorded for the contract suite
#     (tests/contract/transcripts/sglang-0.5.16-spec/), then `perftune bench run` on the code workload
#     at c=1 (3 trials) against the same server: each trial's summary carries the acceptance perftune
#     read from SGLang's counters.
#  2. phase 7 on SGLang: `perftune specdec RUN --methods ngram --k 3 --workloads code,chat
#     --concurrency 1` (ngram K=3 vs no speculation, interleaved deploys, 3 trials per arm).
#
#   scripts/gpu/sglang_spec.sh UP OUT [WAIT_S]
#
# UP holds the chunks of scripts/gpu/stage_sglang_payload.sh (uNN), all copied before this runs. The
# first call unpacks them and starts the pipeline in its own session (setsid) so that it outlives the
# call; every call waits (WAIT_S, default 540) and packs the run folder's small files into
# OUT/sglang-spec.tgz. Each step is skipped when its output exists; PT_STEPS (transcript,specdec)
# picks the steps.
set -uo pipefail
root=${PT_RUN_ROOT:-/root/ptrun}
r="$root/sglang-spec"
models="$root/models"
mkdir -p "$r" "$models"
log() { echo "[$(date +%T)] $*" | tee -a "$r/steps.log"; }
served=smollm2-135m-instruct-bf16

transcript() {  # SGLang with ngram K=3: /metrics before and after 8 chat requests, then 3 bench trials
  local t="$r/transcripts/sglang-0.5.16-spec" hf=$1 k=${2:-3}
  [ -f "$t/metrics_after.prom" ] && return 0
  mkdir -p "$t"
  log "transcript: deploy sglang with ngram K=$k"
  python3 -m perftune deploy --engine sglang "$hf" --port 8124 --ready-timeout-s 900 \
    --lever spec-method=ngram --lever spec-k="$k" --detach --json --runs-dir "$r/deploys" > "$t/deploy.json" \
    2> "$t/deploy.err" || { log "deploy failed ($(tail -n 1 "$t/deploy.err"))"; return 1; }
  local rid; rid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$t/deploy.json")
  curl -s localhost:8124/metrics > "$t/metrics.prom"
  curl -s localhost:8124/get_server_info > "$t/server_info.json"
  for i in 1 2 3 4 5 6 7 8; do
    # one line of JSON: a raw newline inside a JSON string is refused
    curl -s localhost:8124/v1/chat/completions -H 'content-type: application/json' -d '{"model": "'$served'", "max_tokens": 128, "messages": [{"role": "user", "content": "Repeat this list exactly, twice: alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"}]}' \
      -o "$t/chat_$i.json" -w '%{http_code}\n' >> "$t/status.txt"
  done
  sleep 2
  curl -s localhost:8124/metrics > "$t/metrics_after.prom"
  log "transcript recorded ($(grep -c '^sglang:spec' "$t/metrics_after.prom") sglang:spec lines)"
  log "bench: code c=1, 3 trials, speculating"
  python3 -m perftune bench run --endpoint http://127.0.0.1:8124 --model "$served" --workload code --osl 128 \
    --concurrency 1 --num-requests 16 --trials 3 --warmup 2 --hardware "1x NVIDIA H200" --engine sglang \
    --out "$r/bench-spec-code-c1" > "$r/bench-spec-code-c1.txt" 2>&1
  log "bench rc=$?"
  python3 -m perftune deploy down "$rid" --runs-dir "$r/deploys" >> "$t/deploy.err" 2>&1
}

pipeline() {
  local pay=$1 src="$root/src" bin="$root/bin"
  local stage="$pay/stage" hf="$models/$served"
  log "pipeline start (pid $$)"
  if [ ! -f /tmp/ptdeps/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ptdeps \
      "$stage"/wheels/*.whl "$stage"/evw/*.whl >> "$r/steps.log" 2>&1 \
      && touch /tmp/ptdeps/.done || { log "deps failed"; return 1; }
  fi
  if [ ! -f "$hf/.done" ]; then
    log "export GGUF -> bf16 HF folder"
    PYTHONPATH="$src:/tmp/ptdeps" python3 "$bin/gguf_to_hf.py" "$stage/smol.gguf" "$hf" \
      > "$r/export.log" 2>&1 && touch "$hf/.done" || { log "export failed (export.log)"; return 1; }
  fi
  if [ ! -f /tmp/perftune-offline/sglang/env.sh ]; then
    log "install the SGLang bundle"
    bash "$stage/install-offline-bundle.sh" sglang "$pay/parts" >> "$r/sglang-install.log" 2>&1 \
      || { log "SGLang install failed (sglang-install.log)"; return 1; }
  fi
  # shellcheck disable=SC1091
  source /tmp/perftune-offline/sglang/env.sh
  export PYTHONPATH="$PYTHONPATH:$src:/tmp/ptdeps"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$r/gpu.txt"
  python3 -c "import sglang, torch, transformers; print('sglang', sglang.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" > "$r/versions.txt" 2>&1
  command -v c++ ninja >> "$r/versions.txt" 2>&1
  local steps=",${PT_STEPS:-transcript,specdec},"
  if [[ $steps == *,transcript,* ]]; then
    # SGLang's own default for n-gram is 12 draft tokens (K=11): the fallback if K=3 does not start
    transcript "$hf" 3 || { mv "$r/transcripts" "$r/transcripts-k3-failed"; transcript "$hf" 11; }
  fi
  if [[ $steps == *,specdec,* ]] && [ ! -f "$r/specdec.done" ]; then
    local runs="$r/campaign" common=(--runs-dir "$r/campaign" --lake "$r/lake.duckdb")
    if ! ls "$runs"/*/campaign.json >/dev/null 2>&1; then
      log "campaign: optimize --until 0"
      python3 -m perftune optimize smollm2-135m-instruct --model-path "$hf" --engines sglang --gpu h200 \
        --workloads code --until 0 --yes "${common[@]}" --registry "$r/kg.yaml" \
        --findings "$r/findings.yaml" > "$r/optimize.out" 2>&1
      log "optimize rc=$?"
    fi
    log "specdec: ngram K=3 vs no speculation"
    python3 -m perftune specdec "$(ls "$runs" | head -1)" --methods ngram --k 3 --workloads code,chat \
      --concurrency 1 "${common[@]}" >> "$r/specdec.out" 2>&1
    local rc=$?
    log "specdec rc=$rc"
    [ $rc -eq 0 ] && touch "$r/specdec.done"
  fi
  log "pipeline end"
}

if [ "${1:-}" = "--pipeline" ]; then
  shift
  pipeline "$@"
  echo $? > "$r/pipeline.rc"
  exit 0
fi

up=${1:?chunks dir}; out=${2:?out dir}; wait_s=${3:-540}
t0=$(date +%s)
pidf="$r/pipeline.pid"
if [ -f "$r/pipeline.rc" ] && [ -z "${PT_RESTART:-}" ]; then
  log "pipeline already finished (rc $(cat "$r/pipeline.rc"))"
elif [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  log "pipeline running (pid $(cat "$pidf"))"
else
  rm -f "$r/pipeline.rc"
  if [ ! -d "$root/pay/parts" ]; then
    log "unpack $(ls "$up" | wc -l) chunks"
    mkdir -p "$root/pay" && cat "$up"/u* | tar x -C "$root/pay" || { log "unpack failed"; exit 1; }
  fi
  [ -d "$root/src" ] || cp -r "$PWD/src" "$root/src"
  mkdir -p "$root/bin" && cp "$0" "$(dirname "$0")/gguf_to_hf.py" "$root/bin/"
  setsid nohup bash "$root/bin/$(basename "$0")" --pipeline "$root/pay" >> "$r/pipeline.log" 2>&1 < /dev/null &
  echo $! > "$pidf"
  log "pipeline started (pid $!)"
fi
while [ $(( $(date +%s) - t0 )) -lt "$wait_s" ] && [ ! -f "$r/pipeline.rc" ]; do sleep 3; done
# only the small evidence: no weights or lake; server logs cut to their tails
(cd "$root" && find sglang-spec -type f -size -3M ! -name '*.safetensors' ! -name '*.bin' ! -name '*.gguf' \
  ! -name 'lake.duckdb*' -print0 | tar czf "$out/sglang-spec.tgz" --null -T - 2>/dev/null)
for f in $(find "$r" -name '*.log' -size +3M 2>/dev/null); do tail -c 2000000 "$f" > "$out/$(basename "$f").tail"; done
cp "$r/steps.log" "$out/steps.log" 2>/dev/null
log "packed; pipeline $([ -f "$r/pipeline.rc" ] && echo "rc $(cat "$r/pipeline.rc")" || echo running)"
tail -n 25 "$r/steps.log"
