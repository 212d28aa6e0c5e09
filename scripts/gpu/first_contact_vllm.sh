#!/usr/bin/env bash
# On the GPU host: issue 14's first-contact proof with vLLM 0.26.0 and a MoE folder from
# `perftune model synth deepseek-v2-lite` (dummy weights, a synthesized tokenizer whose vocab is padded
# with reserved special tokens), used as written, no hand edit.
#   cold:     `perftune deploy` + `perftune bench run` c=16, 3 trials with NO warmup (a deliberately cold
#             first trial, the engine log scanned for compilation), then the same with the default
#             warmup-until-stable, for contrast.
#   optimize: `perftune optimize` phases 0-1 on the same folder (smoke gate judged on generated tokens).
#
#   ladder:   one `perftune deploy`, then `perftune bench run` at every concurrency of LADDER (default
#             1,16,64), 3 trials each, cache reset per trial (issue 21's MoE points; phase 1 of
#             optimize measures the baseline concurrency only, so it cannot give a ladder).
#
#   scripts/gpu/first_contact_vllm.sh STAGE PARTS OUT cold|optimize|ladder
# LADDER and NAME (the run folder) from the environment.
set -uo pipefail
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; step=${4:?cold or optimize}
ladder=${LADDER:-1,16,64}
source "$(dirname "$0")/common.sh"
gpu_run_setup vllm "${NAME:-first-contact-$step}" "$stage" "$parts" "$out"
model="$stage/dsv2-lite"
common=(--model "dsv2-lite" --workload random --isl 1024 --osl 128 --concurrency 16 --num-requests 64
        --trials 3 --hardware 1xH200 --gpu h200 --model-card "$model")

if [ "$step" = ladder ]; then
  log "deploy vllm (dsv2-lite dummy)"
  pt deploy --engine vllm --model "$model" --served-name dsv2-lite --ready-timeout-s 500 --detach --json \
    --runs-dir "$r/deploy" -- --load-format dummy --max-model-len 4096 > "$r/deploy.json" 2> "$r/deploy.err" \
    || { log "deploy failed"; exit 1; }
  ep=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['endpoint'])")
  rid=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['run_id'])")
  for c in ${ladder//,/ }; do
    log "bench c=$c"
    pt bench run --endpoint "$ep" --model dsv2-lite --workload random --isl 1024 --osl 128 --concurrency "$c" \
      --num-requests $(( c * 2 > 32 ? c * 2 : 32 )) --trials 3 --hardware 1xH200 --gpu h200 \
      --model-card "$model" --out "$r/bench-c$c" > "$r/bench-c$c.txt" 2>&1; log "c=$c rc=$?"
  done
  pt deploy down "$rid" --runs-dir "$r/deploy" >> "$r/steps.log" 2>&1
elif [ "$step" = cold ]; then
  log "deploy vllm (dsv2-lite dummy)"
  pt deploy --engine vllm --model "$model" --served-name dsv2-lite --ready-timeout-s 500 --detach --json \
    --runs-dir "$r/deploy" -- --load-format dummy --max-model-len 4096 > "$r/deploy.json" 2> "$r/deploy.err"
  rc=$?; log "deploy rc=$rc"
  if [ $rc = 0 ]; then
    ep=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['endpoint'])")
    rid=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['run_id'])")
    lg=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['log_path'])")
    log "bench cold (no warmup)"
    pt bench run --endpoint "$ep" "${common[@]}" --warmup 0 --warmup-fixed --server-log "$lg" \
      --out "$r/bench-cold" > "$r/bench-cold.txt" 2>&1; log "cold rc=$?"
    log "bench warm (warmup until stable)"
    pt bench run --endpoint "$ep" "${common[@]}" --server-log "$lg" \
      --out "$r/bench-warm" > "$r/bench-warm.txt" 2>&1; log "warm rc=$?"
    cp "$lg" "$r/vllm-server.log"
    pt deploy down "$rid" --runs-dir "$r/deploy" >> "$r/steps.log" 2>&1
  fi
else
  log "optimize phases 0-1"
  pt optimize "$model" --engines vllm --gpu h200 --engine-arg vllm=--load-format=dummy \
    --engine-arg vllm=--max-model-len=4096 --workloads random --ladder 16 --trials 3 --until 1 --yes \
    --runs-dir "$r/campaign" --lake "$r/lake.duckdb" --registry "$r/kg.yaml" --findings "$r/findings.yaml" \
    > "$r/optimize.out" 2> "$r/optimize.err"
  log "optimize rc=$?"
fi
