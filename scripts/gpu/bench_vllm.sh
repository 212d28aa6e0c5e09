#!/usr/bin/env bash
# On the GPU host: install the staged vLLM bundle, serve the dummy Llama-3.1-8B, and measure it with
# `perftune bench run` and, on the same server in the same call, `vllm bench serve`.
#
#   scripts/gpu/bench_vllm.sh STAGE PARTS OUT
#
# STAGE holds wheels/ (perftune's deps missing on the host), model/ (the dummy model folder) and
# install-offline-bundle.sh; PARTS holds the vllm.pNN parts and vllm.sha256. Results go to OUT.
# STAGE/wheels holds the cp312 wheels of perftune's runtime dependencies the host lacks (orjson,
# httptools, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions,
# ruamel.yaml): `pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
# --platform any -d STAGE/wheels orjson httptools pydantic ruamel.yaml`.
set -uo pipefail
stage=${1:?stage dir}; parts=${2:?parts dir}; out=${3:?out dir}
mkdir -p "$out"
model_name=llama-3.1-8b-dummy
port=8000
log() { echo "[$(date +%T)] $*"; }

log "perftune deps"; python3 -m pip install -q --no-index --no-deps --target /tmp/ptdeps "$stage"/wheels/*.whl
log "vllm bundle"; bash "$stage/install-offline-bundle.sh" vllm "$parts" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"; cat "$out/gpu.txt"

log "start vllm"
( source /tmp/perftune-offline/vllm/env.sh
  export VLLM_SERVER_DEV_MODE=1   # exposes /reset_prefix_cache
  exec python3 -m vllm.entrypoints.cli.main serve "$stage/model" --load-format dummy \
    --served-model-name "$model_name" --port "$port" ) > "$out/vllm.log" 2>&1 &
pid=$!
ready=0
for _ in $(seq 1 400); do
  if curl -sf "localhost:$port/health" >/dev/null 2>&1; then ready=1; break; fi
  if ! kill -0 "$pid" 2>/dev/null; then log "vllm died"; tail -40 "$out/vllm.log"; exit 1; fi
  sleep 1
done
[ "$ready" = 1 ] || { log "vllm not ready in time"; tail -40 "$out/vllm.log"; kill "$pid"; exit 1; }
log "vllm ready"

# Wire transcripts for the engine-adapter contract suite.
t="$out/transcripts"; mkdir -p "$t"
curl -s "localhost:$port/v1/models" > "$t/models.json"
curl -s "localhost:$port/version" > "$t/version.json"
H='Content-Type: application/json'
curl -sN "localhost:$port/v1/completions" -H "$H" -d "{\"model\":\"$model_name\",\"prompt\":[1000,2000,3000,4000],\"max_tokens\":6,\"min_tokens\":6,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}" > "$t/completions_stream.sse"
curl -sN "localhost:$port/v1/chat/completions" -H "$H" -d "{\"model\":\"$model_name\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":6,\"min_tokens\":6,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}" > "$t/chat_stream.sse"
curl -sN "localhost:$port/v1/chat/completions" -H "$H" -d "{\"model\":\"$model_name\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":4,\"stream\":true}" > "$t/chat_stream_no_usage.sse"
curl -s -w '\nHTTP %{http_code}\n' "localhost:$port/v1/completions" -H "$H" -d '{"model":"nope","prompt":"hi","max_tokens":2}' > "$t/error_wrong_model.txt"
curl -s -w '\nHTTP %{http_code}\n' "localhost:$port/v1/completions" -H "$H" -d "{\"model\":\"$model_name\",\"prompt\":\"hi\",\"max_tokens\":999999}" > "$t/error_too_long.txt"
curl -s -X POST -w '\nHTTP %{http_code}\n' "localhost:$port/reset_prefix_cache" > "$t/reset_prefix_cache.txt"
curl -s "localhost:$port/metrics" > "$t/metrics.prom"

export PYTHONPATH="/tmp/ptdeps:$PWD/src"
declare -A N=([1]=16 [16]=128 [64]=256)
reset() { curl -s -X POST "localhost:$port/reset_prefix_cache" >/dev/null; }
pc() { curl -s "localhost:$port/metrics" | grep -E '^vllm:prefix_cache_(queries|hits)_total' | awk '{print $2}' | paste -sd' '; }
for c in 1 16 64; do
  reset
  log "perftune bench c=$c"
  python3 -m perftune bench run --endpoint "http://127.0.0.1:$port" --model "$model_name" --workload random \
    --isl 1024 --osl 128 --concurrency "$c" --num-requests "${N[$c]}" --trials 3 --hardware 1xH100 \
    --out "$out/perftune-c$c" --json > "$out/perftune-c$c.json" 2> "$out/perftune-c$c.err" || tail -5 "$out/perftune-c$c.err"
done
curl -s "localhost:$port/metrics" > "$t/metrics_after.prom"
for c in 1 16 64; do
  reset; before=$(pc)
  log "vllm bench serve c=$c"
  ( source /tmp/perftune-offline/vllm/env.sh
    python3 -m vllm.entrypoints.cli.main bench serve --backend vllm --base-url "http://127.0.0.1:$port" \
      --model "$model_name" --tokenizer "$stage/model" --dataset-name random --random-input-len 1024 \
      --random-output-len 128 --random-range-ratio 0 --num-prompts "${N[$c]}" --max-concurrency "$c" --seed "$c" \
      --request-rate inf --ignore-eos --num-warmups 4 --disable-tqdm --percentile-metrics ttft,tpot,itl,e2el \
      --save-result --result-dir "$out" --result-filename "vllm-c$c.json" ) > "$out/vllm-bench-c$c.log" 2>&1 \
    || tail -20 "$out/vllm-bench-c$c.log"
  echo "$before $(pc)" > "$out/vllm-c$c.prefix_cache"   # queries hits before, queries hits after
done
kill "$pid"; wait "$pid" 2>/dev/null
log "summary"
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("client   c  out_tok/s          TTFT_ms(mean)     TPOT_ms(mean)    TPOT_ms(median)")
for c in (1, 16, 64):
    try:
        d = json.loads((out / f"perftune-c{c}.json").read_text()); s = d["summary"]
        med = [t["tpot_ms"]["p50"] for t in d["trials"]]
        print(f"perftune {c:3d} {s['output_tok_s']['mean']:8.1f}+-{s['output_tok_s']['std']:.1f} "
              f"{s['ttft_ms']['mean']:8.2f}+-{s['ttft_ms']['std']:.2f} {s['tpot_ms']['mean']:7.3f}+-{s['tpot_ms']['std']:.3f} "
              f"{sum(med)/len(med):7.3f} valid={s['valid']} n={s['ttft_ms']['n']} "
              f"prefix_hit={[t.get('engine_prefix_cache_hit_rate') for t in d['trials']]}")
    except Exception as e: print("perftune", c, "missing", e)
    try:
        v = json.loads((out / f"vllm-c{c}.json").read_text())
        q0, h0, q1, h1 = map(float, (out / f"vllm-c{c}.prefix_cache").read_text().split())
        print(f"vllm     {c:3d} {v['output_throughput']:8.1f}          {v['mean_ttft_ms']:8.2f}          "
              f"{v['mean_tpot_ms']:7.3f}          {v['median_tpot_ms']:7.3f} prefix_hit={(h1-h0)/max(q1-q0,1):.3f}")
    except Exception as e: print("vllm", c, "missing", e)
PY
