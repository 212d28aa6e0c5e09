#!/usr/bin/env bash
# On the GPU host: issue 17's SLO capacity proof with vLLM 0.26.0 and the dummy-weights Llama-3.1-8B
# folder (../shared/gpu/models/llama-3.1-8b-dummy, staged as STAGE/llama-8b). One config per call (a
# call is at most 10 minutes: one engine start plus one search):
#   baseline: `perftune deploy` on engine defaults, then `perftune capacity`
#   fp8kv:    the same with --lever kv-cache-dtype=fp8
# The search: closed loop, random 1024 in / 128 out, 3 trials per point, bracket on LADDER then bisection.
#
#   scripts/gpu/capacity_vllm.sh STAGE PARTS OUT baseline|fp8kv [SLO] [LADDER] [MAX_POINTS] [BUDGET_S] \
#       [MODE] [EXTRA perftune capacity flags...]
# MODE closed (default: LADDER is concurrencies) or open (LADDER is Poisson req/s; e.g. EXTRA
# --duration-s 10 for 10 s trials).
set -uo pipefail
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; cfg=${4:?baseline or fp8kv}
slo=${5:-mlperf-interactive}; ladder=${6:-8,16,32,64,128,256}; max_points=${7:-8}; budget=${8:-330}
mode=${9:-closed}; shift 9 2>/dev/null || shift $#
extra=("$@")
source "$(dirname "$0")/common.sh"
rid=""; lg=""
gpu_run_setup vllm "capacity-$cfg-$mode" "$stage" "$parts" "$out" \
  '[ -n "$lg" ] && cp "$lg" "$r/vllm-server.log"; [ -n "$rid" ] && pt deploy down "$rid" --runs-dir "$r/deploy" >> "$r/steps.log" 2>&1'
model="$stage/llama-8b"
levers=()
[ "$cfg" = fp8kv ] && levers=(--lever kv-cache-dtype=fp8)

log "deploy vllm ($cfg) llama-3.1-8b dummy"
pt deploy --engine vllm --model "$model" --served-name llama-3.1-8b --ready-timeout-s 400 --detach --json \
  --runs-dir "$r/deploy" "${levers[@]}" -- --load-format dummy --max-model-len 4096 \
  > "$r/deploy.json" 2> "$r/deploy.err"
rc=$?; log "deploy rc=$rc"
[ $rc = 0 ] || exit 1
ep=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['endpoint'])")
rid=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['run_id'])")
lg=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['log_path'])")
log "capacity search ($mode): slo=$slo ladder=$ladder max_points=$max_points (time box ${budget}s)"
timeout "$budget" python3 -m perftune capacity --endpoint "$ep" --model llama-3.1-8b --slo "$slo" \
  --model-card "$model" --gpu h200 --hardware 1xH200 --ladder "$ladder" --max-points "$max_points" \
  --trials 3 --workload random --isl 1024 --osl 128 --server-log "$lg" --out "$r/capacity" \
  --mode "$mode" "${extra[@]}" > "$r/capacity.out" 2> "$r/capacity.err"
log "capacity rc=$?"
tail -3 "$r/capacity.out" | tee -a "$r/steps.log"
