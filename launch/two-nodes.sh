#!/usr/bin/env bash
# TP 2 x PP 2 over two nodes: node 0 hosts ranks 0-1 (stage 0), node 1 ranks 2-3 (stage 1).
# Set MASTER_ADDR to node 0's address (127.0.0.1 runs both "nodes" on this machine), and the
# same SHARDLINE_GROUP_SECRET on both nodes (`openssl rand -hex 32`): every rank proves it when
# connecting (a file works too: SHARDLINE_GROUP_SECRET_FILE or --secret-file).
set -euo pipefail
: "${SHARDLINE_GROUP_SECRET:?set the same SHARDLINE_GROUP_SECRET on both nodes, e.g. \$(openssl rand -hex 32)}"
export SHARDLINE_GROUP_SECRET
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
NODE_RANK="${NODE_RANK:-0}"
if [ "$NODE_RANK" = 0 ]; then
  shardline run --model smollm2-135m --tp 2 --pp 2 --nnodes 2 --node-rank 0 \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --prompt "The capital of France is"
else
  shardline launch --tp 2 --pp 2 --nnodes 2 --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
fi
