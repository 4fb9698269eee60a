// SwiGLU's elementwise half: out = silu(gate) · up over rows of [gate | up].
// Reference: crates/kernels/src/reference.rs `silu_mul`.
//
// Rounding as HF computes `act_fn(gate) * up` in T: silu in f32, rounded to T, times up, rounded
// to T. A grid-stride loop over the output, one element per thread per step: the kernel is
// memory-bound and any launch size covers any shape.
#include "common.cuh"

namespace sl {
namespace act {

// gate_up: [rows, 2·inter]; out: [rows, inter]; n = rows·inter.
template <typename T>
__device__ __forceinline__ void silu_mul(const T* gate_up, T* out, u64 n, u32 inter) {
  for (u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (u64)gridDim.x * blockDim.x) {
    const u64 row = idx / inter, i = idx % inter;
    const T* g_up = gate_up + row * 2 * inter;
    const float g = to_f32(g_up[i]);
    const float act = round_to<T>(g / (1.0f + expf(-g)));
    out[idx] = from_f32<T>(act * to_f32(g_up[inter + i]));
  }
}

}  // namespace act
}  // namespace sl

#define SL_SILU_MUL(T, S)                                                                      \
  extern "C" __global__ void silu_mul_##S(const T* gate_up, T* out, sl::u64 n, sl::u32 inter) { \
    sl::act::silu_mul<T>(gate_up, out, n, inter);                                               \
  }
SL_FOR_EACH_DTYPE(SL_SILU_MUL)
