#!/usr/bin/env bash
# Installs a CUDA 13.0 toolchain from PyPI wheels (no GPU or system CUDA needed) so the `cuda`
# feature can be built and linked anywhere, and prints the environment to use it:
#   eval "$(scripts/cuda-toolchain.sh [DEST])"     # DEST default: $SHARDLINE_CI_CACHE/cuda-toolchain
# Why wheels: CI and dev machines have no CUDA install; the wheels give nvcc + cicc + headers
# (to compile candle's kernels) and the shared libraries the binary links against (cudart,
# cublas, curand, nvrtc, nccl). No wheel ships libcuda (it comes with the GPU driver):
# scripts/cuda-link.sh builds a stub of it for linking only.
# CUDA 13.0 is pinned: GPU machines run driver 580 (CUDA 13.0), which rejects newer PTX.
# Idempotent: a second run with the same DEST installs nothing and prints the same lines.
set -euo pipefail
cache="${SHARDLINE_CI_CACHE:-$HOME/.cache/shardline-ci}"
dest="${1:-$cache/cuda-toolchain}"
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
  nvidia-nccl-cu13==2.28.9
)
# The stamp records the pinned set: change a pin and the next run reinstalls.
stamp="$dest/.installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${wheels[*]}" ]; then
  rm -rf "$dest"
  mkdir -p "$dest"
  # --no-deps: every wheel is pinned above; pip must not pull a newer CUDA behind our back.
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dest" "${wheels[@]}" >&2
  echo "${wheels[*]}" >"$stamp"
fi
dest="$(cd "$dest" && pwd)"
cu="$dest/nvidia/cu13"
# cicc lives in the nvvm wheel; nvcc looks for it under $CUDA_HOME/nvvm/bin.
if [ ! -e "$cu/nvvm/bin/cicc" ]; then
  mkdir -p "$cu/nvvm/bin"
  ln -sf "$(find "$dest" -name cicc -type f | head -1)" "$cu/nvvm/bin/cicc"
fi
# The linker wants unversioned names (-lcublas -> libcublas.so); the wheels ship only
# libX.so.N. One folder of libX.so -> libX.so.N symlinks, also where the libcuda stub goes.
link="$dest/link"
mkdir -p "$link"
for so in "$cu"/lib/lib*.so.* "$dest"/nvidia/nccl/lib/lib*.so.*; do
  base="$(basename "$so")"
  [ "$(readlink "$link/${base%%.so.*}.so" || true)" = "$so" ] || ln -sfn "$so" "$link/${base%%.so.*}.so"
done
# The runtime folders: the wheels' libraries, plus (machines without a driver) the stub.
runtime="$cu/lib:$dest/nvidia/nccl/lib"
echo "export PATH=\"$cu/bin:\$PATH\" CUDA_HOME=\"$cu\" CUDA_PATH=\"$cu\" NVCC=\"$cu/bin/nvcc\" CUDA_COMPUTE_CAP=90"
echo "export LIBRARY_PATH=\"$link\${LIBRARY_PATH:+:\$LIBRARY_PATH}\" SHARDLINE_CUDA_LINK_DIR=\"$link\""
echo "# Run the cuda binary here, without a GPU driver (libcuda stub; --device cpu only):"
echo "#   LD_LIBRARY_PATH=\"$runtime:$link\" shardline ..."
echo "export SHARDLINE_CUDA_LD_LIBRARY_PATH=\"$runtime\" SHARDLINE_CUDA_LD_LIBRARY_PATH_STUB=\"$runtime:$link\""
