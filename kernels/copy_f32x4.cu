// A plain device-to-device copy with 16-byte loads and stores, grid-stride: what the memory
// system delivers to a streaming kernel, to compare every memory-bound kernel against.
// Timed by crates/kernels/src/gpu/bandwidth.rs (read + write bytes, best of several runs).
#include "common.cuh"

extern "C" __global__ void copy_f32x4(const float4* __restrict__ src, float4* __restrict__ dst, sl::u64 n) {
  for (sl::u64 i = (sl::u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (sl::u64)gridDim.x * blockDim.x) {
    dst[i] = src[i];
  }
}
