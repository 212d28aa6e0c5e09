#!/usr/bin/env bash
# Record an engine's wire transcripts for the adapter contract suite (tests/contract).
# usage: capture_transcripts.sh PORT SERVED_MODEL OUT_DIR [RESET_PATH]
# The same requests for every engine: token-id completion stream (6 tokens, continuous usage), chat
# stream with and without usage, two error bodies, a cache reset and /metrics before and after.
set -uo pipefail
port=$1; model_name=$2; t=$3; reset_path=${4:-/reset_prefix_cache}
mkdir -p "$t"
H='Content-Type: application/json'
U="http://127.0.0.1:$port"
curl -s "$U/v1/models" > "$t/models.json"
curl -s "$U/version" > "$t/version.json"
curl -s "$U/metrics" > "$t/metrics.prom"
curl -sN "$U/v1/completions" -H "$H" -d "{\"model\":\"$model_name\",\"prompt\":[1000,2000,3000,4000],\"max_tokens\":6,\"min_tokens\":6,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}" > "$t/completions_stream.sse"
curl -sN "$U/v1/chat/completions" -H "$H" -d "{\"model\":\"$model_name\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":6,\"min_tokens\":6,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}" > "$t/chat_stream.sse"
curl -sN "$U/v1/chat/completions" -H "$H" -d "{\"model\":\"$model_name\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":4,\"stream\":true}" > "$t/chat_stream_no_usage.sse"
curl -s -w '\nHTTP %{http_code}\n' "$U/v1/completions" -H "$H" -d '{"model":"nope","prompt":"hi","max_tokens":2}' > "$t/error_wrong_model.txt"
curl -s -w '\nHTTP %{http_code}\n' "$U/v1/completions" -H "$H" -d "{\"model\":\"$model_name\",\"prompt\":\"hi\",\"max_tokens\":999999}" > "$t/error_too_long.txt"
# A prefix-sharing pair after a reset, so metrics_after.prom shows hits where the engine caches.
curl -s -X POST -w '\nHTTP %{http_code}\n' "$U$reset_path" > "$t/reset_prefix_cache.txt"
ids=$(python3 -c 'print(",".join(str(1000 + i) for i in range(256)))')
for _ in 1 2; do
  curl -s "$U/v1/completions" -H "$H" -d "{\"model\":\"$model_name\",\"prompt\":[$ids],\"max_tokens\":2}" > /dev/null
done
curl -s "$U/metrics" > "$t/metrics_after.prom"
