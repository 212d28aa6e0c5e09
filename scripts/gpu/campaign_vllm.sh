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
r="$out/gpu-run"; mkdir -p "$r"
log() { echo "[$(date +%T)] $*" | tee -a "$r/steps.log"; }
finish() { tar czf "$out/gpu-run.tgz" -C "$out" gpu-run; log "packed"; }
trap finish EXIT

log "deps"; python3 -m pip install -q --no-index --no-deps --target /tmp/ptdeps "$stage"/wheels/*.whl
log "vllm bundle"; bash "$stage/install-offline-bundle.sh" vllm "$parts" >> "$r/steps.log" 2>&1 || exit 1
source /tmp/perftune-offline/vllm/env.sh
# vLLM's bundled packages first: perftune's extra wheels only fill what is missing (same process
# environment reaches the vLLM server perftune launches).
export PYTHONPATH="$PYTHONPATH:$PWD/src:/tmp/ptdeps"
pt() { python3 -m perftune "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$r/gpu.txt"

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
