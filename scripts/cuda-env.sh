#!/usr/bin/env bash
# Prints the environment for building `--features cuda` code on any x86-64 Linux machine, GPU or
# not, as `export` lines to eval:
#   eval "$(scripts/cuda-env.sh)"
# - the CUDA 13.0 toolchain from PyPI wheels (scripts/cuda-toolchain.sh: nvcc, headers, libraries);
# - cargo's linker for the host target: scripts/cuda-link.sh, which links against a libcuda stub
#   where no GPU driver is installed;
# - CARGO_TARGET_DIR: kept when already set, else $SHARDLINE_CI_CACHE/cuda-target, outside the
#   clone, so candle's ~20 min of nvcc kernels are paid once per machine.
# Why a script of its own: scripts/cuda-build.sh (the binary), kernel tests and GPU bundles all
# need the same environment, and a second copy would drift.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SHARDLINE_CI_CACHE:-$HOME/.cache/shardline-ci}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

scripts/cuda-toolchain.sh "$cache/cuda-toolchain"

# cargo's fingerprints include the linker's path: a copy at a fixed place outside the clone
# keeps a cached target dir valid for every clone.
mkdir -p "$cache/bin"
cmp -s scripts/cuda-link.sh "$cache/bin/cuda-link" || install -m 755 scripts/cuda-link.sh "$cache/bin/cuda-link"
host="$(rustc -vV | sed -n 's/^host: //p')"
host_var="$(echo "$host" | tr 'a-z-' 'A-Z_')"
echo "export CARGO_TARGET_${host_var}_LINKER=\"$cache/bin/cuda-link\""
echo "export CARGO_TARGET_DIR=\"${CARGO_TARGET_DIR:-$cache/cuda-target}\""
