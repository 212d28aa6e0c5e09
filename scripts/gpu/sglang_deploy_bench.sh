#!/usr/bin/env bash
# On the GPU host: SGLang 0.5.16 through perftune: `perftune deploy --engine sglang`, wire transcripts
# for the contract suite, then `perftune bench run` at c=1/16/64 with 3 trials and a radix-cache flush
# before each trial. Everything lands in OUT/sglang-run.tgz.
#
#   scripts/gpu/sglang_deploy_bench.sh STAGE PARTS OUT
set -uo pipefail
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}
source "$(dirname "$0")/common.sh"
gpu_run_setup sglang sglang-run "$stage" "$parts" "$out"
python3 -c "import sglang, transformers; print('sglang', sglang.__version__, 'transformers', transformers.__version__)" >> "$r/steps.log" 2>&1

log "deploy sglang"
pt deploy --engine sglang --model "$stage/model" --served-name llama-3.1-8b-dummy --ready-timeout-s 420 \
  --detach --json --runs-dir "$r/deploy" -- --load-format dummy > "$r/deploy.json" 2> "$r/deploy.err"
rc=$?; log "deploy rc=$rc"
if [ $rc != 0 ]; then
  tail -60 "$r"/deploy/*/*.log > "$r/server-tail.log" 2>/dev/null
  exit 1
fi
ep=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['endpoint'])")
rid=$(python3 -c "import json; print(json.load(open('$r/deploy.json'))['run_id'])")
port=${ep##*:}
log "transcripts"; bash scripts/capture_transcripts.sh "$port" llama-3.1-8b-dummy "$r/transcripts" /flush_cache
curl -s "$ep/get_server_info" > "$r/transcripts/server_info.json"
for c in 1 16 64; do
  n=$(( c * 4 < 16 ? 16 : c * 4 ))
  log "bench c=$c n=$n"
  pt bench run --endpoint "$ep" --model llama-3.1-8b-dummy --workload random --isl 1024 --osl 128 \
    --concurrency "$c" --num-requests "$n" --trials 3 --warmup 2 --hardware 1xH100-80GB-HBM3 --engine sglang \
    --out "$r/bench-c$c" > "$r/bench-c$c.txt" 2>&1
done
log "bench prefix c=16"
pt bench run --endpoint "$ep" --model llama-3.1-8b-dummy --workload prefix --isl 1024 --osl 128 \
  --concurrency 16 --num-requests 64 --trials 3 --warmup 2 --hardware 1xH100-80GB-HBM3 --engine sglang \
  --out "$r/bench-prefix-c16" > "$r/bench-prefix-c16.txt" 2>&1
curl -s "$ep/metrics" > "$r/metrics_end.prom"
pt deploy down "$rid" --runs-dir "$r/deploy" >> "$r/steps.log" 2>&1
