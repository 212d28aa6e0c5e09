#!/usr/bin/env bash
# On the GPU host (2026-12-03, issues 21 and 19), resumable across back-to-back device calls on one warm
# machine, each step only once:
#   1. issue 21's MoE points: the synthesized DeepSeek-V2-Lite (MLA + MoE, dummy weights), one deploy and
#      `perftune bench run` at c=1, 16, 64, 3 trials each, cache reset per trial
#      (scripts/gpu/first_contact_vllm.sh ladder), in the foreground of the call that runs it: nothing
#      else uses the GPU while it measures;
#   2. then issue 19's phase 6 and 7 (scripts/gpu/specdec_vllm.sh, PT_STEPS=train: SmolLM2-135M-Instruct
#      exported from the GGUF, an EAGLE-3 head trained by speculators, then eagle3 K=3 against ngram K=3
#      as the standing config in interleaved 3-trial deploys), started in its own session so it outlives the call;
#      later calls wait for it and pack its folder.
#
#   scripts/gpu/moe_eagle_vllm.sh STAGE PARTS OUT [CALL_S]
# PT_NO_MOE=1 skips step 1 (a fresh machine after the ladder came back).
# STAGE as specdec_vllm.sh's (wheels/ with duckdb, evw/ with gguf, spec/, smol.gguf) plus dsv2-lite/.
set -uo pipefail
t0=$(date +%s)
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}; call_s=${4:-580}
here=$(dirname "$0")
if [ -z "${PT_NO_MOE:-}" ] && [ ! -f /root/ptrun/moe-ladder3/done ]; then
  LADDER=1,16,64 NAME=moe-ladder3 timeout $(( call_s - 30 )) bash "$here/first_contact_vllm.sh" \
    "$stage" "$parts" "$out" ladder && touch /root/ptrun/moe-ladder3/done
  pkill -f vllm.entrypoints >/dev/null 2>&1
  sleep 3
fi
left=$(( call_s - ($(date +%s) - t0) ))
if { [ -n "${PT_NO_MOE:-}" ] || [ -f /root/ptrun/moe-ladder3/done ]; } && [ "$left" -gt 20 ]; then
  PT_STEPS=train PT_WORKLOADS=${PT_WORKLOADS:-code,chat} PT_SAMPLES=${PT_SAMPLES:-1500} \
    bash "$here/specdec_vllm.sh" "$stage" "$parts" "$out" $(( left - 15 ))
fi
[ -d /root/ptrun/moe-ladder3 ] && [ ! -f "$out/moe-ladder3.tgz" ] && tar czf "$out/moe-ladder3.tgz" -C /root/ptrun moe-ladder3
exit 0
