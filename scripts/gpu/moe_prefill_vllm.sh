#!/usr/bin/env bash
# On the GPU host (2026-12-04, issue 21): where a lone MoE prefill's time goes on vLLM 0.26.0, and the
# simulator's fresh MoE points. DeepSeek-V2-Lite (MLA + MoE, dummy weights from `perftune model synth`)
# at c=1 takes 60-120 ms to its first token for a 1024-token prompt, while in a batch of 8192 prompt
# tokens the same 1024 tokens cost about 17 ms, and its decode steps take 3.3 ms. A step of more tokens
# than the largest captured CUDA graph (512 by default) runs without graphs; PT_PLAN=prefill (default)
# measures whether that, not the GEMMs, is the cost:
#   A. engine defaults: c=1 with prompts of 256 ... 8192 tokens (8 output tokens), then c=32 1024/128;
#   B. graphs captured up to 2048 tokens (--compilation-config max_cudagraph_capture_size=2048): the
#      same c=1 prompts around the boundary, and c=64 1024/128.
# PT_PLAN=moemid (2026-12-05, run right after the ladder on its machine, not predicted first): the MoE
# at c=8 and 16 with short outputs and prompts either side of the largest captured graph (512 tokens):
# defaults, c=8 768/32 and 384/32, c=16 640/16.
# PT_PLAN=fresh measures points no committed bundle has, after their predictions were committed
# (benchmarks/results/2026-12-04-h200-vllm-0.26.0-moe-fresh/predictions.txt):
#   A. engine defaults: c=4 1024/128, c=8 512/256, c=48 2048/128, c=128 1024/128;
#   B. graphs up to 2048 tokens: c=1 1536/8, c=16 1024/128.
# PT_PLAN=fp8 is the dense model (the dummy Llama-3.1-8B, stage/llama-8b) and FP8 weights per phase,
# predictions committed first (benchmarks/results/2026-12-04-h200-vllm-0.26.0-fp8-phase/predictions.txt):
#   A. bf16, engine defaults: c=1 with prompts of 512 ... 4096 tokens (8 out), c=64 1024/128;
#   B. FP8 weights (--quantization fp8), defaults: the same c=1 prompts, c=64 and c=128 1024/128;
#   C. FP8 weights, graphs up to 2048 tokens: c=1 1024/8 and 2048/8.
# PT_PLAN=ladder (2026-12-05) is the dense model's concurrency ladder, FP8 weights where no committed
# point has them and bf16 where the H200 has one point above c=32, predictions committed first
# (benchmarks/results/2026-12-05-h200-vllm-0.26.0-fp8-ladder/predictions.txt):
#   A. FP8 weights (--quantization fp8), defaults: c=4, 8, 16, 32, 48, 96 at 1024/128, c=16 512/256, and
#      c=1 and c=24 1024/128 again (the 2026-12-03 run measured them on another machine);
#   B. bf16, engine defaults: c=4, 48, 96, 128 at 1024/128, and c=1 1024/128 again.
# Every point is `perftune bench run`, random workload, 3 trials, cache reset per trial; 12 requests per
# trial at c=1, else max(2c, 32).
#
#   scripts/gpu/moe_prefill_vllm.sh UP OUT [WAIT_S]
#
# UP holds the chunks (uNN) of a tar with stage/ (wheels/, install-offline-bundle.sh, dsv2-lite/) and
# parts/ (vllm.pNN, vllm.sha256), all copied before this runs. The first call unpacks them and starts
# the pipeline in its own session (setsid) so that it outlives the call; every call waits (WAIT_S,
# default 540) and packs the run folder's small files into OUT/moe-PLAN.tgz. A step whose done file
# exists is skipped.
set -uo pipefail
root=${PT_RUN_ROOT:-/root/ptrun}
plan=${PT_PLAN:-prefill}
r="$root/moe-$plan"
model_dir=dsv2-lite served=dsv2-lite
case $plan in fp8|ladder) model_dir=llama-8b served=llama-8b ;; esac
mkdir -p "$r"
log() { echo "[$(date +%T)] $*" | tee -a "$r/steps.log"; }

sweep() {  # ARM POINTS [deploy args...]: one deploy, then each point C:ISL:OSL of the comma list
  local arm=$1 points=$2; shift 2
  local d="$r/$arm" model="$root/pay/stage/$model_dir"
  [ -f "$d/done" ] && return 0
  mkdir -p "$d"
  log "$arm: deploy vllm ($served dummy) $*"
  python3 -m perftune deploy --engine vllm --model "$model" --served-name "$served" --ready-timeout-s 500 \
    --detach --json --runs-dir "$d/deploy" -- --load-format dummy --max-model-len 10240 "$@" \
    > "$d/deploy.json" 2> "$d/deploy.err" || { log "$arm: deploy failed ($(tail -n 1 "$d/deploy.err"))"; return 1; }
  local ep rid lg
  ep=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$d/deploy.json")
  rid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$d/deploy.json")
  lg=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["log_path"])' "$d/deploy.json")
  local common=(--endpoint "$ep" --model "$served" --workload random --trials 3 --hardware 1xH200 --gpu h200
                --model-card "$model")
  local p c isl osl n name
  for p in ${points//,/ }; do
    IFS=: read -r c isl osl <<< "$p"
    n=$(( c == 1 ? 12 : (2 * c > 32 ? 2 * c : 32) ))
    # the 2026-12-04 prefill run named its folders c1-islN (c=1, 8 out) and cC (1024/128)
    name="c$c"; [ "$c" = 1 ] && name="c1-isl$isl"; [ "$plan" != prefill ] && name="c$c-$isl-$osl"
    log "$arm: c=$c isl=$isl osl=$osl ($n requests per trial)"
    python3 -m perftune bench run "${common[@]}" --isl "$isl" --osl "$osl" --concurrency "$c" \
      --num-requests "$n" --out "$d/$name" > "$d/$name.txt" 2>&1; log "$arm: rc=$?"
  done
  tail -c 3000000 "$lg" > "$d/vllm-server.log"
  python3 -m perftune deploy down "$rid" --runs-dir "$d/deploy" >> "$d/deploy.err" 2>&1
  touch "$d/done"
}

pipeline() {
  local pay=$1
  log "pipeline start (pid $$)"
  if [ ! -f /tmp/ptdeps/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ptdeps \
      "$pay"/stage/wheels/*.whl >> "$r/steps.log" 2>&1 && touch /tmp/ptdeps/.done || { log "deps failed"; return 1; }
  fi
  if [ ! -f /tmp/perftune-offline/vllm/env.sh ]; then
    log "install the vLLM bundle"
    bash "$pay/stage/install-offline-bundle.sh" vllm "$pay/parts" >> "$r/vllm-install.log" 2>&1 \
      || { log "vLLM install failed (vllm-install.log)"; return 1; }
  fi
  # shellcheck disable=SC1091
  source /tmp/perftune-offline/vllm/env.sh
  export PYTHONPATH="$PYTHONPATH:$root/src:/tmp/ptdeps"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$r/gpu.txt"
  local graphs='{"max_cudagraph_capture_size": 2048}'
  if [ "$plan" = fp8 ]; then
    sweep bf16 1:512:8,1:1024:8,1:2048:8,1:4096:8,64:1024:128
    sweep fp8 1:512:8,1:1024:8,1:2048:8,1:4096:8,64:1024:128,128:1024:128 --quantization fp8
    sweep fp8-graphs2048 1:1024:8,1:2048:8 --quantization fp8 --compilation-config "$graphs"
  elif [ "$plan" = ladder ]; then
    sweep fp8 1:1024:128,4:1024:128,8:1024:128,16:1024:128,24:1024:128,32:1024:128,48:1024:128,96:1024:128,16:512:256 --quantization fp8
    sweep bf16 1:1024:128,4:1024:128,48:1024:128,96:1024:128,128:1024:128
  elif [ "$plan" = moemid ]; then
    sweep defaults 8:768:32,8:384:32,16:640:16
  elif [ "$plan" = fresh ]; then
    sweep defaults 4:1024:128,8:512:256,48:2048:128,128:1024:128
    sweep graphs2048 1:1536:8,16:1024:128 --compilation-config "$graphs"
  else
    sweep defaults 1:256:8,1:512:8,1:768:8,1:1024:8,1:2048:8,1:4096:8,1:8192:8,32:1024:128
    sweep graphs2048 1:512:8,1:768:8,1:1024:8,1:2048:8,64:1024:128 --compilation-config "$graphs"
  fi
  log "pipeline end"
}

if [ "${1:-}" = "--pipeline" ]; then
  shift
  pipeline "$@"
  echo $? > "$r/pipeline.rc"
  exit 0
fi

up=${1:?chunks dir}; out=${2:?out dir}; wait_s=${3:-540}
t0=$(date +%s)
pidf="$r/pipeline.pid"
if [ -f "$r/pipeline.rc" ] && [ -z "${PT_RESTART:-}" ]; then
  log "pipeline already finished (rc $(cat "$r/pipeline.rc"))"
elif [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  log "pipeline running (pid $(cat "$pidf"))"
else
  rm -f "$r/pipeline.rc"
  if [ ! -d "$root/pay/parts" ]; then
    log "unpack $(ls "$up" | wc -l) chunks"
    mkdir -p "$root/pay" && cat "$up"/u* | tar x -C "$root/pay" || { log "unpack failed"; exit 1; }
  fi
  [ -d "$root/src" ] || cp -r "$PWD/src" "$root/src"
  mkdir -p "$root/bin" && cp "$0" "$root/bin/"
  setsid nohup bash "$root/bin/$(basename "$0")" --pipeline "$root/pay" >> "$r/pipeline.log" 2>&1 < /dev/null &
  echo $! > "$pidf"
  log "pipeline started (pid $!)"
fi
while [ $(( $(date +%s) - t0 )) -lt "$wait_s" ] && [ ! -f "$r/pipeline.rc" ]; do sleep 3; done
(cd "$root" && find "moe-$plan" -type f -size -4M -print0 | tar czf "$out/moe-$plan.tgz" --null -T - 2>/dev/null)
cp "$r/steps.log" "$out/steps.log" 2>/dev/null
log "packed; pipeline $([ -f "$r/pipeline.rc" ] && echo "rc $(cat "$r/pipeline.rc")" || echo running)"
tail -n 25 "$r/steps.log"
