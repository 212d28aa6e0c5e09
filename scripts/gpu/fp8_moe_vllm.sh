#!/usr/bin/env bash
# On the GPU host (2026-12-03, issues 18 and 21), resumable across back-to-back device calls on one warm
# machine:
#   1. the dummy Llama-3.1-8B, bf16 vs FP8 weights (vLLM's --quantization fp8), through `perftune tune`
#      (scripts/gpu/tune_vllm.sh with scripts/gpu/vllm-arms-fp8.tsv: the interleaved full treatment, 3
#      trials per arm, a fresh deploy and a cache reset per trial) on random 1024/128 at c=1 and c=24;
#   2. once the tune has written TUNE.md: the synthesized DeepSeek-V2-Lite (MLA + MoE, dummy weights),
#      one deploy and `perftune bench run` at c=1, 16, 64, 3 trials each (scripts/gpu/first_contact_vllm.sh
#      ladder). On 2026-12-03 this step ran `optimize` phases 0-1 instead, whose phase 1 measures the
#      baseline concurrency only: it gave c=16 alone.
# Each step packs its run folder into OUT/NAME.tgz at the end of every call.
#
#   scripts/gpu/fp8_moe_vllm.sh STAGE PARTS OUT [CALL_S]
set -uo pipefail
t0=$(date +%s)
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; call_s=${4:-580}
here=$(dirname "$0")
if ! ls /root/ptrun/fp8-ab/campaign/*/phase3/TUNE.md >/dev/null 2>&1; then
  ARMS="$here/vllm-arms-fp8.tsv" LADDER=1,24 WORKLOADS=random GPU=h200 NAME=fp8-ab MODEL=llama-8b \
    DEPLOY_S=${DEPLOY_S:-100} bash "$here/tune_vllm.sh" "$stage" "$parts" "$out" "$call_s" 30
fi
left=$(( call_s - ($(date +%s) - t0) ))
if ls /root/ptrun/fp8-ab/campaign/*/phase3/TUNE.md >/dev/null 2>&1 && [ ! -f /root/ptrun/moe-ladder/done ] \
   && [ "$left" -gt 330 ]; then
  LADDER=1,16,64 NAME=moe-ladder timeout $(( left - 10 )) bash "$here/first_contact_vllm.sh" \
    "$stage" "$parts" "$out" ladder && touch /root/ptrun/moe-ladder/done
  pkill -f vllm.entrypoints >/dev/null 2>&1
fi
for n in fp8-ab moe-ladder; do  # a call that did not run a step still returns its latest state
  [ -d "/root/ptrun/$n" ] && [ ! -f "$out/$n.tgz" ] && tar czf "$out/$n.tgz" -C /root/ptrun "$n"
done
exit 0
