#!/usr/bin/env bash
# On the GPU host: issue 22 on vLLM 0.26.0 with the dummy Llama-3.1-8B, driven by perftune itself.
#   start: install, check the H200 ceilings (NVML + a measured copy with GPM), then launch (setsid,
#          it outlives the call) one campaign: phases 0, 1, 2 (L1 py-spy, L2 torch profiler, L3 GPM,
#          L4 ncu), 2.5 (the ledger), 8 (random at c=1 and 64, 3 trials, GPM in every trial), 8.4, 8.5.
#   poll [S]: wait up to S seconds (default 500) for the campaign, then pack what exists into OUT.
# A device call is at most 10 minutes; calls must come back to back (the machine is released 30 s
# after a call ends).
#   scripts/gpu/profile_vllm.sh STAGE PARTS OUT start
#   scripts/gpu/profile_vllm.sh STAGE PARTS OUT poll 540
# STAGE: wheels/ (perftune's deps incl. py-spy and duckdb), llama-8b/, install-offline-bundle.sh;
# PARTS: vllm.pNN + vllm.sha256.
set -uo pipefail
stage=${1:?stage}; parts=${2:?parts}; out=${3:?out}; mode=${4:?start or poll}; wait_s=${5:-500}
root=/root/pf; mkdir -p "$root" "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$root/steps.log"; }
export PYTHONUNBUFFERED=1 VLLM_RPC_TIMEOUT=1800000
setup_env() {
  # shellcheck disable=SC1091
  source /tmp/perftune-offline/vllm/env.sh
  export PYTHONPATH="$PYTHONPATH:$PWD/src:/tmp/ptdeps" PATH="/tmp/ptdeps/bin:$PATH"
}
pack() {
  tar cJf "$out/profile-run.tar.xz" -C "$root" --exclude='*.ncu-rep' --exclude='lake.duckdb*' . 2>/dev/null
  find "$root" -name '*.ncu-rep' -size -20M -exec cp {} "$out/" \; 2>/dev/null
  cp "$root/steps.log" "$out/" 2>/dev/null
  log "packed $(du -sh "$out" | cut -f1)"
}

if [ "$mode" = start ]; then
  log "deps + vllm bundle"
  python3 -m pip install -q --no-index --no-deps --target /tmp/ptdeps "$stage"/wheels/*.whl 2>&1 | tail -2
  bash "$stage/install-offline-bundle.sh" vllm "$parts" >> "$root/steps.log" 2>&1 || { log "install failed"; exit 1; }
  setup_env
  { which ncu py-spy; ls -d /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null;
    cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null; grep CapEff /proc/self/status; } > "$root/tools.txt" 2>&1
  log "tools: $(tr '\n' ' ' < "$root/tools.txt")"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv > "$root/gpu.txt"
  log "ceiling check"
  python3 scripts/gpu/h200_ceiling_check.py h200 > "$root/ceiling_check.json" 2> "$root/ceiling_check.err"
  log "ceiling check rc=$? $(python3 -c "import json;d=json.load(open('$root/ceiling_check.json'));print(round(d['copy']['tb_s'],2),'TB/s copy,',d['gpm_during_copy']['dram_bw_util_pct'],'% GPM')" 2>&1)"
  log "optimize (background)"
  ( exec setsid python3 -m perftune optimize llama-3.1-8b --model-path "$stage/llama-8b" --engines vllm \
      --gpu h200 --engine-arg vllm=--load-format=dummy --engine-arg vllm=--max-model-len=8192 \
      --workloads random --ladder 1,64 --trials 3 --no-capacity --yes \
      --runs-dir "$root/campaign" --lake "$root/lake.duckdb" --registry "$root/kg.yaml" \
      --findings "$root/findings.yaml" ) > "$root/optimize.out" 2> "$root/optimize.err" &
  echo $! > "$root/optimize.pid"
  mode=poll; wait_s=${5:-240}
fi

if [ "$mode" = poll ]; then
  pid=$(cat "$root/optimize.pid")
  end=$(( $(date +%s) + wait_s ))
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
  if kill -0 "$pid" 2>/dev/null; then log "still running: $(tail -c 300 "$root/optimize.err" | tr '\n' ' ')"
  else log "optimize finished"; fi
  setup_env
  kill -0 "$pid" 2>/dev/null || python3 -m perftune lake show champions --lake "$root/lake.duckdb" --json \
    > "$root/lake_champions.json" 2>&1 || true
  pack
fi
