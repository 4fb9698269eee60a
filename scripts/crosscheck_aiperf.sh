#!/usr/bin/env bash
# Cross-checks `shardline bench` against an independent load tool, NVIDIA's AIPerf, on the
# same server and workload: SmolLM2-135M served over OpenAI-compatible HTTP, 128 prompt tokens
# → 64 output tokens (EOS ignored; greedy, so both tools send temperature 0: AIPerf's default
# of none means 1.0 and a costlier sampling path), a closed loop of C clients. Prints both
# tools' TTFT, TPOT and output throughput. Dev only (not in CI): needs `python3 -m venv`.
#
#   scripts/crosscheck_aiperf.sh [CONCURRENCY] [REQUESTS]      # default 8 32
#
# On a small machine a load tool's own CPU use slows the server it measures (AIPerf's Python
# services took enough to cut throughput by ~40% on 2 cores), which would compare the tools'
# overheads rather than their measurements. So the server runs on CPU 0 with one thread and
# each client in turn on CPU 1 (`taskset`); AIPerf runs one worker, one record processor and
# no metrics scraping.
#
# AIPerf counts tokens with transformers, so the model's tokenizer is exported as an HF
# directory first (`shardline export-tokenizer`): no model hub is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
C="${1:-8}"
N="${2:-32}"
WORK="${CROSSCHECK_DIR:-target/crosscheck}"
PORT="${CROSSCHECK_PORT:-8031}"
mkdir -p "$WORK"

[ -n "${SHARDLINE_BIN:-}" ] || cargo build --release -p shardline
BIN="${SHARDLINE_BIN:-target/release/shardline}"
if [ ! -x "$WORK/venv/bin/aiperf" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q aiperf
fi
"$BIN" export-tokenizer --model smollm2-135m --output "$WORK/tokenizer"

taskset -c 0 "$BIN" serve --model smollm2-135m --threads 1 --grpc-addr 127.0.0.1:0 --http-addr "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q '^READY' "$WORK/serve.log" && break
  sleep 0.5
done
grep -q '^READY' "$WORK/serve.log" || { cat "$WORK/serve.log"; exit 1; }

echo "== shardline bench (openai backend) =="
taskset -c 1 "$BIN" bench --backend openai --endpoint "http://127.0.0.1:$PORT" --input-len 128 --output-len 64 \
  --concurrency "$C" --num-requests "$N" --warmup 2 --output-json "$WORK/shardline.json"

echo "== aiperf =="
rm -rf "$WORK/aiperf"
taskset -c 1 "$WORK/venv/bin/aiperf" profile --model smollm2-135m --url "http://127.0.0.1:$PORT" \
  --endpoint-type completions --streaming --tokenizer "$WORK/tokenizer" \
  --isl 128 --isl-stddev 0 --osl 64 --osl-stddev 0 --use-legacy-max-tokens \
  --extra-inputs ignore_eos:true --extra-inputs temperature:0 --concurrency "$C" --request-count "$N" \
  --warmup-request-count 2 --ui-type none --artifact-dir "$WORK/aiperf" \
  --workers-max 1 --record-processor-service-count 1 --no-server-metrics --no-gpu-telemetry \
  >"$WORK/aiperf.log" 2>&1 \
  || { tail -40 "$WORK/aiperf.log"; exit 1; }

python3 - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
ours = json.load(open(f"{work}/shardline.json"))["runs"][0]
theirs = json.load(open(f"{work}/aiperf/profile_export_aiperf.json"))  # the profiling phase
def get(name, stat):
    return theirs[name][stat]
rows = [
    ("TTFT p50 (ms)", ours["ttft_ms"]["p50"], get("time_to_first_token", "p50")),
    ("TTFT mean (ms)", ours["ttft_ms"]["mean"], get("time_to_first_token", "avg")),
    ("output tok/s", ours["output_throughput"], get("output_token_throughput", "avg")),
    ("TPOT p50 (ms) [AIPerf: inter_token_latency]", ours["tpot_ms"]["p50"], get("inter_token_latency", "p50")),
]
print(f"{'metric':45} {'shardline':>10} {'aiperf':>10} {'diff':>7}")
for name, a, b in rows:
    print(f"{name:45} {a:10.1f} {b:10.1f} {100 * (a - b) / b:+6.1f}%")
EOF
