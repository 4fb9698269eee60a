#!/usr/bin/env bash
# Soak test of rank recovery (a dev script, not CI): a 2x2 SmolLM2 group serves a bounded load on
# loopback while a worker rank is killed every ~20 s; prints the bench report (every request
# must succeed), the recovery metrics, and the KV usage once the load is done (must be 0).
#
#   scripts/recovery-soak.sh [REQUESTS] [CONCURRENCY] [KILL_EVERY_S]
# SHARDLINE selects the binary (default: target/release/shardline, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200} concurrency=${2:-16} every=${3:-20}
bin=${SHARDLINE:-target/release/shardline}
[[ -x $bin ]] || cargo build --release -p shardline
work=$(mktemp -d)
server=""
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --tp 2 --pp 2 --max-restarts 100 --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  >"$work/out" 2>"$work/log" &
server=$!
for _ in $(seq 600); do grep -q '^READY' "$work/out" && break; sleep 0.1; done
ready=$(grep '^READY' "$work/out") || { cat "$work/log"; exit 1; }
grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$ready")
http=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$ready")
echo "serving on grpc=$grpc http=$http (pid $server)"

"$bin" bench --backend grpc --endpoint "http://$grpc" --concurrency "$concurrency" \
  --num-requests "$requests" --input-len 32 --output-len 96 --output-json "$work/bench.json" &
bench=$!
kills=0
while kill -0 "$bench" 2>/dev/null; do
  for _ in $(seq "$every"); do kill -0 "$bench" 2>/dev/null && sleep 1; done
  kill -0 "$bench" 2>/dev/null || break
  # Worker ranks are the server's children; kill one at random.
  mapfile -t workers < <(pgrep -P "$server")
  ((${#workers[@]})) || continue
  victim=${workers[RANDOM % ${#workers[@]}]}
  kill -9 "$victim" && kills=$((kills + 1)) && echo "killed worker pid $victim ($kills)"
done
wait "$bench"
echo "--- $kills kills; recovery log:"
grep -E 'formed again|recovery' "$work/log" | sed -E 's/.*(WARN|recovery:)/\1/' | cut -c1-160
echo "--- metrics:"
curl -s "http://$http/metrics" | grep -E '^shardline:(recoveries_total|rank_restarts_total|recovered_requests_total|recovery_seconds|kv_cache_usage_perc|request_success_total)'
echo "--- processes left besides the server and its ranks: none expected after this script exits"
