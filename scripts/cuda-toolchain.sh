#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler toolchain from PyPI wheels (no GPU or system CUDA needed) so the
# `cuda` feature can be built/checked anywhere, and prints the environment to use it:
#   eval "$(scripts/cuda-toolchain.sh target/cuda-toolchain)"
# CUDA 13.0 is pinned: GPU machines run driver 580 (CUDA 13.0), which rejects newer PTX.
set -euo pipefail
dest="${1:-target/cuda-toolchain}"
if [ ! -x "$dest/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$dest" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 >&2
fi
cu="$(cd "$dest/nvidia/cu13" && pwd)"
# cicc lives in the nvvm wheel; nvcc looks for it under $CUDA_HOME/nvvm/bin.
[ -e "$cu/nvvm/bin/cicc" ] || { mkdir -p "$cu/nvvm/bin" && ln -sf "$(find "$dest" -name cicc -type f | head -1)" "$cu/nvvm/bin/cicc"; }
echo "export PATH=\"$cu/bin:\$PATH\" CUDA_HOME=\"$cu\" CUDA_PATH=\"$cu\" NVCC=\"$cu/bin/nvcc\" CUDA_COMPUTE_CAP=90"
