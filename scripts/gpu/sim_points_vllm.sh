#!/usr/bin/env bash
# On the GPU host: serve the dummy Llama-3.1-8B with vLLM and measure a spread of (concurrency, ISL,
# OSL) points with `perftune bench run` (3 trials each), for calibrating and testing the simulator.
# Each point's summary (full context, per-trial results) is appended to OUT/points.jsonl as it lands,
# so a run cut short still returns every finished point.
#
#   scripts/gpu/sim_points_vllm.sh STAGE PARTS OUT
# STAGE/wheels holds the cp312 wheels of perftune's runtime dependencies the host lacks (orjson,
# httptools, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions,
# ruamel.yaml): `pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
# --platform any -d STAGE/wheels orjson httptools pydantic ruamel.yaml`.
set -uo pipefail
stage=${1:?}; parts=${2:?}; out=${3:?}
mkdir -p "$out"
model_name=llama-3.1-8b-dummy; port=8000
log() { echo "[$(date +%T)] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/ptdeps "$stage"/wheels/*.whl
bash "$stage/install-offline-bundle.sh" vllm "$parts" >/dev/null || exit 1
( source /tmp/perftune-offline/vllm/env.sh; export VLLM_SERVER_DEV_MODE=1
  exec python3 -m vllm.entrypoints.cli.main serve "$stage/model" --load-format dummy \
    --served-model-name "$model_name" --port "$port" ) > /tmp/vllm.log 2>&1 &
pid=$!
for _ in $(seq 1 400); do
  curl -sf "localhost:$port/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { tail -30 /tmp/vllm.log; exit 1; }
  sleep 1
done
log "vllm ready"
export PYTHONPATH="/tmp/ptdeps:$PWD/src"
# c isl osl, most informative first
for p in "1 128 128" "16 1024 128" "64 512 256" "8 2048 64" "32 256 256" "128 1024 64" "4 512 512" \
         "96 2048 128" "1 4096 64" "48 128 128" "128 256 256" "24 4096 128"; do
  set -- $p
  n=$(( $1 * 2 > 8 ? $1 * 2 : 8 ))
  log "c=$1 isl=$2 osl=$3 n=$n"
  curl -s -X POST "localhost:$port/reset_prefix_cache" >/dev/null
  python3 -m perftune bench run --endpoint "http://127.0.0.1:$port" --model "$model_name" --workload random \
    --isl "$2" --osl "$3" --concurrency "$1" --num-requests "$n" --trials 3 --warmup "$(( $1 < 16 ? $1 : 16 ))" \
    --hardware 1xH100-80GB-HBM3 --out "/tmp/pt-$1-$2-$3" --json > /tmp/pt.json 2> /tmp/pt.err \
    && python3 -c "import json,sys; d=json.load(open('/tmp/pt.json')); d.pop('artifacts',None); print(json.dumps(d))" >> "$out/points.jsonl" \
    || tail -3 /tmp/pt.err
done
grep -E "KV cache size|max_num_batched_tokens|Maximum concurrency" /tmp/vllm.log | head -5 > "$out/vllm-excerpt.log"
kill "$pid"
log done
