#!/usr/bin/env bash
# Four ranks under Open MPI on one host: rank 0 drives, ranks 1-3 serve their shards.
set -euo pipefail
export MASTER_ADDR=127.0.0.1 MASTER_PORT=29500
# Every rank proves this secret when it connects.
export SHARDLINE_GROUP_SECRET="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
mpirun -n 4 -x MASTER_ADDR -x MASTER_PORT -x SHARDLINE_GROUP_SECRET \
  shardline run --model smollm2-135m --tp 2 --pp 2 --prompt "The capital of France is"
