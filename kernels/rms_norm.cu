// RMSNorm and the fused residual add + RMSNorm that starts every decoder sub-layer.
// Reference: crates/kernels/src/reference.rs `rms_norm`, `add_rms_norm`.
//
// One block per row; threads stride over the columns (coalesced), the sum of squares is a
// block reduction in f32, and each thread re-reads only the elements it read (or wrote) itself,
// so the second pass needs no barrier. Rounding follows HF LlamaRMSNorm: y = x·rsqrt(mean(x²) +
// eps) in f32, rounded to T, then out = round_T(y·w). 1/sqrtf, not rsqrtf: without fast math
// both are IEEE-exact, so the GPU's inv equals the reference's for the same sum.
#include "common.cuh"

namespace sl {
namespace norm {

template <typename T>
__device__ __forceinline__ void normalize(const T* x, const T* w, T* out, u32 cols, float ss, float eps) {
  const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
  for (u32 i = threadIdx.x; i < cols; i += blockDim.x) {
    out[i] = from_f32<T>(round_to<T>(to_f32(x[i]) * inv) * to_f32(w[i]));
  }
}

// x, out: [rows, cols]; w: [cols]. Block = row.
template <typename T>
__device__ __forceinline__ void rms_norm(const T* x, const T* w, T* out, u32 cols, float eps) {
  __shared__ float scratch[32];
  const u64 row = blockIdx.x;
  x += row * cols;
  out += row * cols;
  float ss = 0.0f;
  for (u32 i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = to_f32(x[i]);
    ss = fmaf(v, v, ss);
  }
  normalize(x, w, out, cols, block_sum(ss, scratch), eps);
}

// residual += delta (rounded to T, in place), then out = rms_norm(residual).
template <typename T>
__device__ __forceinline__ void add_rms_norm(T* residual, const T* delta, const T* w, T* out, u32 cols, float eps) {
  __shared__ float scratch[32];
  const u64 row = blockIdx.x;
  residual += row * cols;
  delta += row * cols;
  out += row * cols;
  float ss = 0.0f;
  for (u32 i = threadIdx.x; i < cols; i += blockDim.x) {
    const T r = from_f32<T>(to_f32(residual[i]) + to_f32(delta[i]));
    residual[i] = r;
    const float v = to_f32(r);
    ss = fmaf(v, v, ss);
  }
  // The same thread reads back the residual elements it wrote: no barrier needed beyond the
  // reduction's.
  normalize<T>(residual, w, out, cols, block_sum(ss, scratch), eps);
}

}  // namespace norm
}  // namespace sl

#define SL_RMS_NORM(T, S)                                                                                           \
  extern "C" __global__ void __launch_bounds__(1024)                                                                \
      rms_norm_##S(const T* x, const T* w, T* out, sl::u32 cols, float eps) {                                      \
    sl::norm::rms_norm<T>(x, w, out, cols, eps);                                                                    \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(1024)                                                                \
      add_rms_norm_##S(T* residual, const T* delta, const T* w, T* out, sl::u32 cols, float eps) {                 \
    sl::norm::add_rms_norm<T>(residual, delta, w, out, cols, eps);                                                  \
  }
SL_FOR_EACH_DTYPE(SL_RMS_NORM)
