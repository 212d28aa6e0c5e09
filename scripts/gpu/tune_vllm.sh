#!/usr/bin/env bash
# On the GPU host: phase 3 (`perftune tune`) of a vLLM 0.26.0 campaign, time-boxed to one device call
# and resumable across back-to-back calls on the same warm machine. The first call installs vLLM and
# runs `perftune optimize --until 1`; every call then runs `perftune tune` on the arms of
# scripts/gpu/vllm-arms.tsv with --stop-after-s so that no deploy starts unless it can finish before
# the call's limit. Every finished deploy is journaled (phase3/journal.jsonl): the next call replays
# it and goes on. The run folder is packed into OUT/tune-run.tgz at the end of every call; on a fresh
# machine, STAGE/run/tune-run.tgz (a run folder brought back from an earlier machine) is unpacked first,
# so the tune resumes from its journal there too.
#
#   scripts/gpu/tune_vllm.sh STAGE PARTS OUT [CALL_S] [BUDGET_GPU_MIN]
#
# Environment (defaults: the 2026-11-23 H100 tune): ARMS (arms file), LADDER, WORKLOADS, GPU, NAME (the
# run folder), MODEL (a model folder under STAGE). The 2026-12-03 H200 bf16-vs-FP8 A/B (issue 18):
#   ARMS=scripts/gpu/vllm-arms-fp8.tsv LADDER=1,24 WORKLOADS=random GPU=h200 NAME=fp8-ab MODEL=llama-8b
set -uo pipefail
t0=$(date +%s)
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; call_s=${4:-580}; budget=${5:-40}
deploy_s=${DEPLOY_S:-115}  # the longest deploy + both workloads' ladder seen, with margin
arms=${ARMS:-scripts/gpu/vllm-arms.tsv}; ladder=${LADDER:-16,64}; workloads=${WORKLOADS:-random,prefix}
gpu=${GPU:-h100}; name=${NAME:-tune-run}; src=${MODEL:-model}
if [ -f "$stage/run/$name.tgz" ] && [ ! -d "/root/ptrun/$name" ]; then
  mkdir -p /root/ptrun && tar xzf "$stage/run/$name.tgz" -C /root/ptrun
fi
source "$(dirname "$0")/common.sh"
gpu_run_setup vllm "$name" "$stage" "$parts" "$out" "pkill -f vllm.entrypoints >/dev/null 2>&1"
model="$(dirname "$r")/$src"  # outside the repo copy: later calls need not carry it
[ -d "$model" ] || cp -r "$stage/$src" "$model"
if ! ls "$r/campaign"/*/campaign.json >/dev/null 2>&1; then
  log "optimize --until 1"
  pt optimize llama-3.1-8b --model-path "$model" --engines vllm --gpu "$gpu" \
    --engine-arg vllm=--load-format=dummy --workloads "$workloads" --ladder "$ladder" --trials 3 --until 1 \
    --yes --runs-dir "$r/campaign" --lake "$r/lake.duckdb" --registry "$r/kg.yaml" \
    --findings "$r/findings.yaml" > "$r/optimize.out" 2> "$r/optimize.err"
  log "optimize rc=$?"
fi
run_id=$(ls "$r/campaign" | head -1)
mkdir -p "$r/campaign/$run_id/phase3"
[ -f "$r/campaign/$run_id/phase3/arms.tsv" ] || cp "$arms" "$r/campaign/$run_id/phase3/arms.tsv"
left=$(( call_s - ($(date +%s) - t0) - 15 ))
stop=$(( left - deploy_s ))
if [ "$stop" -le 0 ]; then log "no time left for a deploy in this call"; exit 0; fi
log "tune $run_id: no new deploy after ${stop}s, hard limit ${left}s, budget ${budget} GPU-min"
timeout "$left" python3 -m perftune tune --run "$run_id" --engines vllm --workloads "$workloads" \
  --budget-gpu-min "$budget" --stop-after-s "$stop" --yes --runs-dir "$r/campaign" --lake "$r/lake.duckdb" \
  >> "$r/tune.out" 2>> "$r/tune.err"
log "tune rc=$? ($(wc -l < "$r/campaign/$run_id/phase3/journal.jsonl" 2>/dev/null || echo 0) deploys journaled)"
