#!/usr/bin/env bash
# On the GPU host: issue 23's client comparison on one vLLM server, interleaved, at high concurrency.
#   A: perftune bench run, default token accounting (auto: final usage, one token per chunk checked)
#   B: perftune bench run --token-accounting per-chunk (continuous_usage_stats on every chunk)
#   V: vLLM's own client, `vllm bench serve`
# Every run: random 1024 in / 128 out (fixed), the prefix cache reset first, one trial, no warmup of
# its own (one shared warmup after the start). The order of the three arms rotates every round.
# Per run it records the server's CPU seconds (API server process and engine core, from /proc), the
# engine's /metrics before and after, and nvidia-smi's clocks, power and throttle reasons at 5 Hz.
#
# A device call is at most 10 minutes, and vLLM starts in 2-3 of them, so the server outlives a call
# (setsid) while calls come back to back:
#   scripts/gpu/client_compare_vllm.sh STAGE PARTS OUT start [C ROUNDS NREQ]   # install, serve, record
#   scripts/gpu/client_compare_vllm.sh STAGE PARTS OUT run C ROUNDS NREQ        # later calls
# STAGE: wheels/ (perftune's deps the host lacks), llama-8b/ (the dummy model folder),
# install-offline-bundle.sh; PARTS: vllm.pNN + vllm.sha256. OUT gets results-cC.jsonl, the run
# folders packed, and (start) the wire transcripts. scripts/gpu/client_compare_report.py summarizes.
set -uo pipefail
stage=${1:?stage}; parts=${2:?parts}; out=${3:?out}; mode=${4:?start or run}
c=${5:-}; rounds=${6:-5}; nreq=${7:-}
root=/root/cc; mkdir -p "$root" "$out"
port=8000; name=llama-3.1-8b; U="http://127.0.0.1:$port"
log() { echo "[$(date +%T)] $*" | tee -a "$root/steps.log"; }
export PYTHONUNBUFFERED=1

if [ "$mode" = start ]; then
  log "deps + vllm bundle"
  python3 -m pip install -q --no-index --no-deps --target /tmp/ptdeps "$stage"/wheels/*.whl
  bash "$stage/install-offline-bundle.sh" vllm "$parts" >> "$root/steps.log" 2>&1 || { log "install failed"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv > "$root/gpu.txt"
  log "start vllm (setsid: it outlives this call)"
  ( source /tmp/perftune-offline/vllm/env.sh
    export VLLM_SERVER_DEV_MODE=1   # /reset_prefix_cache
    exec setsid python3 -m vllm.entrypoints.cli.main serve "$stage/llama-8b" --load-format dummy \
      --served-model-name "$name" --port "$port" --max-model-len 4096 ) > "$root/vllm.log" 2>&1 &
  echo $! > "$root/vllm.pid"
  pid=$(cat "$root/vllm.pid")
  for _ in $(seq 1 400); do
    curl -sf "$U/health" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { log "vllm died"; tail -40 "$root/vllm.log"; cp "$root/vllm.log" "$out/"; exit 1; }
    sleep 1
  done
  curl -sf "$U/health" >/dev/null || { log "vllm not ready"; cp "$root/vllm.log" "$out/"; exit 1; }
  pgrep -o -f "vllm.entrypoints.cli.main serve" > "$root/vllm.pid"   # the API server process
  log "vllm ready (API server pid $(cat "$root/vllm.pid"))"
  # Wire transcripts without per-chunk usage (the accounting tests): a token-id completion of 128 random
  # tokens (byte tokens with incomplete UTF-8 show as empty-text chunks) and a chat stream.
  t="$root/transcripts"; mkdir -p "$t"; H='Content-Type: application/json'
  ids=$(python3 -c 'print(",".join(str(1000 + 37 * i) for i in range(64)))')
  curl -sN "$U/v1/completions" -H "$H" -d "{\"model\":\"$name\",\"prompt\":[$ids],\"max_tokens\":128,\"min_tokens\":128,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" > "$t/completions_final_usage.sse"
  curl -sN "$U/v1/completions" -H "$H" -d "{\"model\":\"$name\",\"prompt\":[$ids],\"max_tokens\":128,\"min_tokens\":128,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}" > "$t/completions_per_chunk_usage.sse"
  curl -sN "$U/v1/chat/completions" -H "$H" -d "{\"model\":\"$name\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":64,\"min_tokens\":64,\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" > "$t/chat_final_usage.sse"
  cp -r "$t" "$out/"
  log "shared warmup"
  PYTHONPATH="$PWD/src:/tmp/ptdeps" python3 -m perftune bench run --endpoint "$U" --model "$name" \
    --workload random --isl 1024 --osl 128 --concurrency 256 --num-requests 512 --trials 1 \
    --out "$root/warmup" --json > /dev/null 2> "$root/warmup.err" || tail -5 "$root/warmup.err"
  [ -n "$c" ] || exit 0
fi

source /tmp/perftune-offline/vllm/env.sh
export PYTHONPATH="$PYTHONPATH:$PWD/src:/tmp/ptdeps"
pid=$(cat "$root/vllm.pid")
kill -0 "$pid" 2>/dev/null || { log "vllm is not running"; exit 1; }
: "${c:?concurrency}"; : "${nreq:?requests per run}"

cpu() {  # CPU seconds of the API server (pid) and of its children (the engine core), from /proc
  python3 - "$pid" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
def cpu(p):
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick
    except OSError:
        return 0.0
root = int(sys.argv[1])
parent = {}
for e in os.listdir("/proc"):
    if e.isdigit():
        try:
            parent[int(e)] = int(open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
kids, todo = [], [root]
while todo:
    p = todo.pop()
    for k, pp in parent.items():
        if pp == p:
            kids.append(k); todo.append(k)
print(f"{cpu(root):.3f} {sum(cpu(k) for k in kids):.3f}")
PY
}

one() {  # one run of arm $1 in round $2 at position $3
  local arm=$1 r=$2 pos=$3 d="$root/c$c/$1-r$2"
  mkdir -p "$d"
  curl -s -X POST "$U/reset_prefix_cache" > /dev/null
  curl -s "$U/metrics" > "$d/metrics_before.prom"
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
    --format=csv,noheader,nounits -lms 200 > "$d/smi.csv" 2>/dev/null &
  local smi=$!
  local c0; c0=$(cpu); local t0; t0=$(date +%s.%N)
  case $arm in
    A|B)
      local acct=auto; [ "$arm" = B ] && acct=per-chunk
      python3 -m perftune bench run --endpoint "$U" --model "$name" --workload random --isl 1024 --osl 128 \
        --concurrency "$c" --num-requests "$nreq" --trials 1 --warmup 0 --reset-cache none \
        --token-accounting "$acct" --hardware 1xH200 --out "$d/bench" --json > "$d/out.json" 2> "$d/err.txt" ;;
    V)
      python3 -m vllm.entrypoints.cli.main bench serve --backend vllm --base-url "$U" --model "$name" \
        --tokenizer "$stage/llama-8b" --dataset-name random --random-input-len 1024 --random-output-len 128 \
        --random-range-ratio 0 --num-prompts "$nreq" --max-concurrency "$c" --request-rate inf --ignore-eos \
        --num-warmups 0 --seed $((1000 * c + r)) --disable-tqdm --percentile-metrics ttft,tpot,itl,e2el \
        --save-result --result-dir "$d" --result-filename vllm.json > "$d/out.log" 2>&1 ;;
  esac
  local rc=$?
  local t1; t1=$(date +%s.%N); local c1; c1=$(cpu)
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  curl -s "$U/metrics" > "$d/metrics_after.prom"
  python3 - "$arm" "$c" "$r" "$pos" "$rc" "$d" "$t0" "$t1" "$c0" "$c1" >> "$out/results-c$c.jsonl" <<'PY'
import json, statistics, sys, pathlib
arm, c, r, pos, rc, d, t0, t1 = sys.argv[1:9]
c0, c1 = [list(map(float, x.split())) for x in sys.argv[9:11]]
d = pathlib.Path(d)
row = {"arm": arm, "concurrency": int(c), "round": int(r), "position": int(pos), "rc": int(rc),
       "wall_s": float(t1) - float(t0), "api_server_cpu_s": c1[0] - c0[0], "engine_core_cpu_s": c1[1] - c0[1]}
try:
    if arm in "AB":
        s = json.loads((d / "bench" / "summary.json").read_text())
        t = s["trials"][0]
        row.update(output_tok_s=t["output_tok_s"], tpot_median_ms=t["tpot_ms"]["p50"], ttft_mean_ms=t["ttft_ms"]["mean"],
                   itl_mean_ms=t["itl_ms"]["mean"], requests_ok=t["counts"]["ok"], token_sources=t["counts"]["token_sources"],
                   accounting=s["summary"].get("accounting"), flags=s["summary"]["flags"], first_wave_s=t.get("first_wave_s"),
                   gpu=t.get("gpu"), engine=t.get("engine"))
    else:
        v = json.loads((d / "vllm.json").read_text())
        row.update(output_tok_s=v["output_throughput"], tpot_median_ms=v["median_tpot_ms"], ttft_mean_ms=v["mean_ttft_ms"],
                   itl_mean_ms=v.get("mean_itl_ms"), requests_ok=v["completed"], duration_s=v["duration"])
except Exception as e:  # a failed run is a row too
    row["error"] = f"{type(e).__name__}: {e}"
sm = [l.split(", ") for l in (d / "smi.csv").read_text().splitlines() if l.count(",") >= 6]
if sm:
    clk = [float(x[1]) for x in sm if x[1].strip().replace(".", "").isdigit()]
    pw = [float(x[3]) for x in sm if x[3].strip().replace(".", "").isdigit()]
    row["smi"] = {"samples": len(sm), "sm_clock_median": statistics.median(clk) if clk else None,
                  "sm_clock_min": min(clk, default=None), "power_mean_w": statistics.fmean(pw) if pw else None,
                  "reasons": sorted({x[6].strip() for x in sm})}
def tot(p):
    out = {}
    for l in p.read_text().splitlines():
        if l and not l.startswith("#"):
            k, _, v = l.rpartition(" ")
            k = k.split("{")[0]
            try: out[k] = out.get(k, 0.0) + float(v)
            except ValueError: pass
    return out
b, a = tot(d / "metrics_before.prom"), tot(d / "metrics_after.prom")
delta = lambda k: a.get(k, 0.0) - b.get(k, 0.0)
n = delta("vllm:inter_token_latency_seconds_count")
row["engine_metrics"] = {
    "itl_mean_ms": delta("vllm:inter_token_latency_seconds_sum") / n * 1e3 if n else None,
    "generation_tokens": delta("vllm:generation_tokens_total"),
    "steps": delta("vllm:iteration_tokens_total_count"),
    "tpot_req_mean_ms": (delta("vllm:request_time_per_output_token_seconds_sum") / delta("vllm:request_time_per_output_token_seconds_count") * 1e3)
        if delta("vllm:request_time_per_output_token_seconds_count") else None,
    "api_process_cpu_s": delta("process_cpu_seconds_total"),
}
print(json.dumps(row))
PY
  log "c=$c round $r pos $pos arm $arm rc=$rc $(tail -1 "$out/results-c$c.jsonl" | cut -c1-200)"
}

arms=(A B V)
for r in $(seq 1 "$rounds"); do
  for k in 0 1 2; do
    i=$(( (k + r) % 3 ))
    one "${arms[$i]}" "$r" "$k"
  done
done
tar cJf "$out/runs-c$c.tar.xz" --exclude='records*' -C "$root" "c$c" steps.log 2>/dev/null
cp "$root/steps.log" "$out/steps.log"
log "done c=$c"
