#!/usr/bin/env bash
# TP 2 x PP 2 on one machine: `run` is rank 0 and spawns ranks 1-3 as `shardline worker`.
set -euo pipefail
shardline run --model smollm2-135m --tp 2 --pp 2 \
  --prompt "The capital of France is" --max-tokens 32
# The same through the generic launcher (rank 0's job after `--`):
# shardline launch --tp 2 --pp 2 -- run --model smollm2-135m --prompt "The capital of France is"
