#!/usr/bin/env bash
# On the GPU host: vLLM 0.26.0 driven by perftune itself. (1) `perftune deploy` + `perftune bench run`
# at c=1/16/64, 3 trials, prefix cache reset before every trial; (2) one `perftune optimize` campaign
# (phases 0, 1, 8 reduced to random+prefix at c=16/64, 8.4, 8.5). Everything lands in OUT/gpu-run.tgz.
#
#   scripts/gpu/campaign_vllm.sh STAGE PARTS OUT
#
# STAGE: wheels/ (perftune's deps the host lacks, cp312: orjson httptools pydantic pydantic-core
# annotated-types typing-inspection typing-extensions ruamel.yaml duckdb), model/ (the dummy
# Llama-3.1-8B folder), install-offline-bundle.sh. PARTS: vllm.pNN + vllm.sha256.
set -uo pipefail
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}
source "$(dirname "$0")/common.sh"
gpu_run_setup vllm gpu-run "$stage" "$parts" "$out"

log "deploy vllm"
pt deploy --engine vllm --model "$stage/model" --served-name llama-3.1-8b-dummy --ready-timeout-s 400 \
  --detach --json --runs-dir "$r/deploy" -- --load-format dummy > "$r/deploy.json" 2> "$r/deploy.err"
rc=$?; log "deploy rc=$rc"
if [ $rc = 0 ]; then
  ep=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['endpoint'])")
  rid=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['run_id'])")
  for c in 1 16 64; do
    n=$(( c * 4 < 16 ? 16 : c * 4 ))
    log "bench c=$c n=$n"
    pt bench run --endpoint "$ep" --model llama-3.1-8b-dummy --workload random --isl 1024 --osl 128 \
      --concurrency "$c" --num-requests "$n" --trials 3 --warmup 2 --hardware 1xH100-80GB-HBM3 \
      --out "$r/bench-c$c" > "$r/bench-c$c.txt" 2>&1
  done
  curl -s "$ep/metrics" > "$r/metrics_end.prom"
  pt deploy down "$rid" --runs-dir "$r/deploy" >> "$r/steps.log" 2>&1
fi

log "optimize"
pt optimize llama-3.1-8b --model-path "$stage/model" --engines vllm --gpu h100 \
  --engine-arg vllm=--load-format=dummy --workloads random,prefix --ladder 16,64 --trials 3 --yes \
  --runs-dir "$r/campaign" --lake "$r/lake.duckdb" --registry "$r/kg.yaml" --findings "$r/findings.yaml" \
  > "$r/optimize.out" 2> "$r/optimize.err"
log "optimize rc=$?"
pt lake show champions --lake "$r/lake.duckdb" --json > "$r/lake_champions.json" 2>&1
