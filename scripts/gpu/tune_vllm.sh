#!/usr/bin/env bash
# On the GPU host: a vLLM 0.26.0 campaign up to phase 1, then `perftune tune` (phase 3) on the arms of
# scripts/gpu/vllm-arms.tsv until TUNE_S seconds pass. The tuner journals every deploy
# (phase3/journal.jsonl), so a later session resumes the same run where this one stopped.
#
#   scripts/gpu/tune_vllm.sh STAGE PARTS OUT [TUNE_S]
set -uo pipefail
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; tune_s=${4:-330}
source "$(dirname "$0")/common.sh"
gpu_run_setup vllm tune-run "$stage" "$parts" "$out" "pkill -f vllm.entrypoints >/dev/null 2>&1"
log "optimize --until 1"
pt optimize llama-3.1-8b --model-path "$stage/model" --engines vllm --gpu h100 \
  --engine-arg vllm=--load-format=dummy --workloads random --ladder 16,64 --trials 3 --until 1 --yes \
  --runs-dir "$r/campaign" --lake "$r/lake.duckdb" --registry "$r/kg.yaml" --findings "$r/findings.yaml" \
  > "$r/optimize.out" 2> "$r/optimize.err"
log "optimize rc=$?"
run_id=$(ls "$r/campaign" | head -1)
mkdir -p "$r/campaign/$run_id/phase3" && cp scripts/gpu/vllm-arms.tsv "$r/campaign/$run_id/phase3/arms.tsv"
log "tune $run_id for ${tune_s}s"
timeout "$tune_s" python3 -m perftune tune --run "$run_id" --engines vllm --budget-gpu-min 60 --yes \
  --runs-dir "$r/campaign" --lake "$r/lake.duckdb" > "$r/tune.out" 2> "$r/tune.err"
log "tune rc=$?"
