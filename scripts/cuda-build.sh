#!/usr/bin/env bash
# Builds and links the `shardline` binary with `--features cuda` for sm_90 (H100/H200) on any
# x86-64 Linux machine, GPU or not, then smoke-tests it without a GPU. Why: GPU machines have no
# Rust and no network, so the binary is built here and carried there; CI builds it on every run
# so the CUDA path keeps linking, not only type-checking.
#   scripts/cuda-build.sh            # prints the binary's path last
# Everything slow is cached under $SHARDLINE_CI_CACHE (default ~/.cache/shardline-ci), outside
# the clone: the CUDA 13.0 wheels (cuda-toolchain/) and the cargo target dir (cuda-target/), so
# the ~20 min of candle's nvcc kernels are paid once per machine, not once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SHARDLINE_CI_CACHE:-$HOME/.cache/shardline-ci}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

# The binary always builds in the cache's own target dir, even where CARGO_TARGET_DIR is set for
# the CPU build: the two differ in features and linker and would rebuild each other's artifacts.
eval "$(env -u CARGO_TARGET_DIR scripts/cuda-env.sh)"

# Profile cuda-dist: release without fat LTO (see Cargo.toml).
start=$(date +%s)
cargo build --profile cuda-dist -p shardline --features cuda >&2
echo "cuda build: $(($(date +%s) - start)) s" >&2
bin="$CARGO_TARGET_DIR/cuda-dist/shardline"

echo "NEEDED of $bin:" >&2
readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p' >&2
echo "size: $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1))" >&2

# --- smoke test without a GPU: the stub stands in for the driver's libcuda ---
model="$cache/tiny-model"
# The smoke test's toy model: a config for dummy weights and a tokenizer (scripts/dummy-model.py).
[ -f "$model/tokenizer.json" ] || python3 scripts/dummy-model.py "$model" tiny
run() {
  LD_LIBRARY_PATH="$SHARDLINE_CUDA_LD_LIBRARY_PATH_STUB" "$bin" run --model "$model" --load-format dummy \
    --prompt "hello" --max-tokens 3 --ignore-eos --output json "$@"
}
out="$(run --device cpu)" || { echo "cuda build: --device cpu failed: $out" >&2; exit 1; }
echo "--device cpu: $out" >&2
if err="$(run --device cuda 2>&1)"; then
  echo "cuda build: --device cuda succeeded on the libcuda stub?!" >&2
  exit 1
fi
echo "--device cuda (no GPU, expected to fail): $err" >&2
grep -q "no CUDA driver/GPU found" <<<"$err" || { echo "cuda build: that is not the plain-words error" >&2; exit 1; }

echo "$bin"
