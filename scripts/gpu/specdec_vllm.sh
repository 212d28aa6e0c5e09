#!/usr/bin/env bash
# On the GPU host: phase 7 (speculative decoding) on vLLM 0.26.0, measured in the engine.
#  1. SmolLM2-135M-Instruct (real weights: the Q4_1 GGUF exported to a bf16 Hugging Face folder):
#     `perftune specdec RUN --methods ngram --k 1,2,3,4,5 --workloads code,chat,random --concurrency 1,32`
#     (K screened, then the best K vs no speculation in interleaved 3-trial deploys; acceptance from
#     vLLM's spec_decode counters per trial; the gate; the crossover concurrency).
#  2. The /metrics transcript of vLLM with ngram on, before and after a few requests, recorded for the
#     contract suite (tests/contract/transcripts/vllm-0.26.0-spec/).
#  3. The dummy-weights Llama-3.1-8B with ngram on random tokens: acceptance ~0, the gate must say
#     do-not-ship.
#  4. When STAGE/spec/ holds the speculators wheels (speculators, hs-connectors, datasets <= 5.1,
#     loguru, pydantic-settings): phase 6 trains an EAGLE-3 head for SmolLM2 (PT_SAMPLES prompts,
#     default 2000, 3 epochs), then phase 7 measures eagle3 K=3 against ngram K=3 as the standing
#     config (PT_AGAINST, default ngram:3: both speculate, same node, interleaved deploys, each arm's
#     acceptance read per trial) on the same workloads.
#
#   scripts/gpu/specdec_vllm.sh STAGE PARTS OUT [WAIT_S]
#   env: PT_K (1,2,3,4,5), PT_CONC (1,32), PT_WORKLOADS (code,chat,random); PT_RESTART=1 starts a
#        finished pipeline again; PT_STEPS (transcript,smol,llama,train) picks the steps (a session
#        that measured SmolLM2's ngram A/B already: PT_STEPS=llama,train)
#
# STAGE holds wheels/ (perftune's deps), duck/ (duckdb), evw/ (gguf: the GGUF reader for the export),
# install-offline-bundle.sh, smol.gguf and llama-8b/ (the dummy-weights folder); PARTS holds vllm.pNN +
# vllm.sha256. Like quant_vllm.sh, the first call starts the pipeline in its own session (setsid) so it
# outlives the call; later calls copy more parts or wait (WAIT_S, default 540), then pack the run
# folder's small files (no weights, checkpoints, hidden states) into OUT/specdec-run.tgz. Each step is skipped when its output exists.
set -uo pipefail
root=${PT_RUN_ROOT:-/root/ptrun}
r="$root/specdec-run"
models="$root/models"
mkdir -p "$r" "$models"
log() { echo "[$(date +%T)] $*" | tee -a "$r/steps.log"; }

campaign() {  # NAME MODEL_PATH [OPTIMIZE ARGS...] -> run id in $r/NAME.run_id
  local name=$1 path=$2 common=(--runs-dir "$r/$1" --lake "$r/lake.duckdb")
  shift 2
  if ! ls "$r/$name"/*/campaign.json >/dev/null 2>&1; then
    log "$name: optimize --until 0"
    python3 -m perftune optimize "$name" --model-path "$path" --engines vllm --gpu h200 \
      --workloads random --until 0 --yes "${common[@]}" --registry "$r/kg.yaml" \
      --findings "$r/findings.yaml" "$@" > "$r/$name.optimize.out" 2>&1
    log "$name: optimize rc=$?"
  fi
  ls "$r/$name" | head -1 > "$r/$name.run_id"
}

specdec() {  # NAME ARGS...
  local name=$1; shift
  [ -f "$r/$name.specdec.done" ] && return 0
  log "$name: specdec $*"
  python3 -m perftune specdec "$(cat "$r/$name.run_id")" "$@" --runs-dir "$r/$name" \
    --lake "$r/lake.duckdb" >> "$r/$name.specdec.out" 2>&1
  local rc=$?
  log "$name: specdec rc=$rc"
  [ $rc -eq 0 ] && touch "$r/$name.specdec.done"
}

transcript() {  # vLLM with ngram K=4: /metrics before and after 8 chat requests
  local t="$r/transcripts/vllm-0.26.0-spec"
  [ -f "$t/metrics_after.prom" ] && return 0
  mkdir -p "$t"
  log "transcript: deploy vllm with ngram K=4"
  python3 -m perftune deploy --engine vllm "$models/smollm2-135m-instruct-bf16" --port 8123 \
    --lever spec-method=ngram --lever spec-k=4 --detach --json --runs-dir "$r/deploys" > "$t/deploy.json" \
    2> "$t/deploy.err" || { log "deploy failed ($(tail -n 1 "$t/deploy.err"))"; return 1; }
  local rid; rid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$t/deploy.json")
  curl -s localhost:8123/metrics > "$t/metrics.prom"
  for i in 1 2 3 4 5 6 7 8; do
    # one line of JSON: a raw newline inside a JSON string is refused (400) and drafts nothing
    curl -s localhost:8123/v1/chat/completions -H 'content-type: application/json' -d '{"model": "smollm2-135m-instruct-bf16", "max_tokens": 128, "messages": [{"role": "user", "content": "Repeat this list exactly, twice: alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"}]}' \
      -o "$t/chat_$i.json" -w '%{http_code}\n' >> "$t/status.txt"
  done
  curl -s localhost:8123/metrics > "$t/metrics_after.prom"
  python3 -m perftune deploy down "$rid" --runs-dir "$r/deploys" >> "$t/deploy.err" 2>&1
  log "transcript recorded ($(grep -c spec_decode "$t/metrics_after.prom") spec_decode lines)"
}

pipeline() {
  local stage=$1 parts=$2 src="$root/src" bin="$root/bin"
  local hf="$models/smollm2-135m-instruct-bf16"
  log "pipeline start (pid $$)"
  if [ ! -f /tmp/ptdeps/.done ]; then
    # duck/ is absent where wheels/ carries duckdb; --upgrade over a /tmp/ptdeps another driver filled
    local whl; shopt -s nullglob; whl=("$stage"/wheels/*.whl "$stage"/duck/*.whl "$stage"/evw/*.whl); shopt -u nullglob
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ptdeps \
      "${whl[@]}" >> "$r/steps.log" 2>&1 \
      && touch /tmp/ptdeps/.done || { log "deps failed"; return 1; }
  fi
  if [ ! -f "$hf/.done" ]; then
    log "export GGUF -> bf16 HF folder"
    PYTHONPATH="$src:/tmp/ptdeps" python3 "$bin/gguf_to_hf.py" "$stage/smol.gguf" "$hf" \
      > "$r/export.log" 2>&1 && touch "$hf/.done" || { log "export failed (export.log)"; return 1; }
  fi
  if [ ! -f /tmp/perftune-offline/vllm/env.sh ]; then
    log "waiting for the vLLM parts"
    local t=0
    until bash "$stage/install-offline-bundle.sh" vllm "$parts" >> "$r/vllm-install.log" 2>&1; do
      sleep 5; t=$((t + 5))
      [ $t -gt 3600 ] && { log "vLLM parts never completed"; return 1; }
    done
    log "vLLM installed"
  fi
  # shellcheck disable=SC1091
  source /tmp/perftune-offline/vllm/env.sh
  export PYTHONPATH="$PYTHONPATH:$src:/tmp/ptdeps"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$r/gpu.txt"
  python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" > "$r/versions.txt" 2>&1
  local steps=",${PT_STEPS:-transcript,smol,llama,train},"
  [[ $steps == *,transcript,* ]] && transcript
  campaign smollm2-135m-instruct "$hf"
  [[ $steps == *,smol,* ]] && specdec smollm2-135m-instruct --methods ngram --k "${PT_K:-1,2,3,4,5}" \
    --workloads "${PT_WORKLOADS:-code,chat,random}" --concurrency "${PT_CONC:-1,32}"
  if [[ $steps == *,llama,* ]]; then
    campaign llama-3.1-8b "$stage/llama-8b" --engine-arg vllm=--load-format=dummy
    specdec llama-3.1-8b --methods ngram --k 4 --workloads random --concurrency 1
  fi
  if [[ $steps == *,train,* ]] && ls "$stage"/spec/*.whl >/dev/null 2>&1; then
    [ -f /tmp/specdeps/.done ] || { python3 -m pip install -q --no-index --no-deps --target /tmp/specdeps \
      "$stage"/spec/*.whl >> "$r/steps.log" 2>&1 && touch /tmp/specdeps/.done; }
    local rid; rid=$(cat "$r/smollm2-135m-instruct.run_id")
    local tr=(--runs-dir "$r/smollm2-135m-instruct" --lake "$r/lake.duckdb")
    log "phase 6: specdec train $rid"
    PYTHONPATH="$PYTHONPATH:/tmp/specdeps" python3 -m perftune specdec train "$rid" --method eagle3 \
      --ack-compute --samples "${PT_SAMPLES:-2000}" --epochs 3 "${tr[@]}" >> "$r/train.out" 2>&1
    local trc=$?
    # a refusal (red gate, missing data) submits no job: nothing to wait for
    [ $trc -eq 0 ] || { log "phase 6 refused rc=$trc ($(tail -n 2 "$r/train.out" | head -n 1))"; return 1; }
    until [ -f "$r/smollm2-135m-instruct/$rid/phase6/eagle3/result.json" ]; do sleep 10; done
    python3 -m perftune specdec train "$rid" --method eagle3 --ack-compute "${tr[@]}" >> "$r/train.out" 2>&1
    log "phase 6 rc=$? ($(tail -n 3 "$r/train.out" | head -n 1))"
    rm -f "$r/smollm2-135m-instruct.specdec.done"
    specdec smollm2-135m-instruct --methods eagle3 --k 3 --against "${PT_AGAINST:-ngram:3}" \
      --workloads "${PT_WORKLOADS:-code,chat,random}" --concurrency "${PT_CONC:-1,32}"
  fi
  log "pipeline end"
}

if [ "${1:-}" = "--pipeline" ]; then
  shift
  pipeline "$@"
  echo $? > "$r/pipeline.rc"
  exit 0
fi

stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; wait_s=${4:-540}
t0=$(date +%s)
pidf="$r/pipeline.pid"
if [ -f "$r/pipeline.rc" ] && [ -z "${PT_RESTART:-}" ]; then
  log "pipeline already finished (rc $(cat "$r/pipeline.rc"))"
elif [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  log "pipeline running (pid $(cat "$pidf"))"
else
  rm -f "$r/pipeline.rc"
  [ -d "$root/src" ] || cp -r "$PWD/src" "$root/src"
  mkdir -p "$root/bin" && cp "$0" "$(dirname "$0")/gguf_to_hf.py" "$root/bin/"
  setsid nohup bash "$root/bin/$(basename "$0")" --pipeline "$stage" "$parts" >> "$r/pipeline.log" 2>&1 < /dev/null &
  echo $! > "$pidf"
  log "pipeline started (pid $!)"
fi
while [ $(( $(date +%s) - t0 )) -lt "$wait_s" ] && [ ! -f "$r/pipeline.rc" ]; do sleep 3; done
# only the small evidence: no weights, checkpoints, captured hidden states or lake (a 16 MiB return limit)
(cd "$root" && find specdec-run -type f -size -3M ! -path '*/checkpoints/*' ! -path '*hidden*' \
  ! -name '*.safetensors' ! -name '*.bin' ! -name '*.gguf' ! -name '*.pt' ! -name 'lake.duckdb*' -print0 \
  | tar czf "$out/specdec-run.tgz" --null -T - 2>/dev/null)
cp "$r/steps.log" "$out/steps.log" 2>/dev/null
log "packed; pipeline $([ -f "$r/pipeline.rc" ] && echo "rc $(cat "$r/pipeline.rc")" || echo running)"
tail -n 25 "$r/steps.log"
