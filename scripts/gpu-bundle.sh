#!/usr/bin/env bash
# Builds, on any x86-64 Linux machine (no GPU needed), the folder a GPU machine needs to check
# Shardline's CUDA path without cargo or network: the CUDA `shardline` binary and the kernels'
# GPU test binary (xz-compressed: the binary alone is ~68 MiB, the carry limit 64 MiB), the
# check script, a dummy-model writer (tiny, SmolLM2- and Llama-3-8B-shaped configs with
# tokenizers covering their vocabularies) and the HF transformers baseline.
#   scripts/gpu-bundle.sh [DIR]        # default target/gpu-bundle; prints DIR and its size
# Then on the GPU machine: `bash DIR/gpu-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/gpu-bundle}"
limit=$((64 * 1024 * 1024))

eval "$(scripts/cuda-env.sh)"
bin="$(scripts/cuda-build.sh | tail -1)"
# The kernels' GPU tests, built with the binary's profile; cargo names the test executable.
tests="$(cargo test -p shardline-kernels --features cuda --profile cuda-dist --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')"
[ -x "$tests" ] || { echo "gpu-bundle: the kernels' GPU test binary was not built" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/scripts"
xz -6 -T0 -c "$bin" >"$out/bin/shardline.xz"
xz -6 -T0 -c "$tests" >"$out/bin/kernels-gpu-tests.xz"
cp scripts/gpu-check.sh "$out/"
cp scripts/dummy-model.py scripts/hf_gpu_baseline.py "$out/scripts/"
{
  echo "shardline $(git describe --always --dirty 2>/dev/null || echo unknown), built $(date -u +%FT%TZ)"
  echo "binary: $(stat -c %s "$bin") bytes; NEEDED: $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
} >"$out/MANIFEST"

size="$(du -sb "$out" | cut -f1)"
echo "gpu bundle: $out, $size bytes ($((size / 1024 / 1024)) MiB of the 64 MiB limit)" >&2
[ "$size" -le "$limit" ] || { echo "gpu-bundle: over the 64 MiB limit" >&2; exit 1; }
echo "$out"
