// Fused RoPE + KV-cache write: reads one token's fused q|k|v projection once, writes rotated q
// for attention, and stores rotated k and plain v in the token's KV-cache slot.
// Reference: crates/kernels/src/reference.rs `rope_kv_write`.
//
// HF rotate_half: for i < hd/2, a = x[i], b = x[i + hd/2]; out[i] = a·c − b·s and
// out[i + hd/2] = b·c + a·s, in f32, rounded once to T. __fmul_rn/__fadd_rn keep nvcc from
// contracting these into FMAs, so results equal the reference's bit for bit.
//
// One block per token row; threads stride over (head, i) rotation pairs of the q and k heads,
// then over the v elements. The Rust API is safe, so positions and slots (device data the host
// never sees) are bounds-checked here: a row whose position is past the cos/sin table is left
// untouched, and a row whose slot is past the cache (u32::MAX marks padding) stores no K/V.
#include "common.cuh"

namespace sl {
namespace rope {

// qkv: [rows, (qh + 2·kvh)·hd]; cos_sin: f32 [max_pos, hd]; positions, slots: [rows];
// q_out: [rows, qh·hd]; k_cache, v_cache: [num_slots, kvh·hd].
template <typename T>
__device__ __forceinline__ void rope_kv_write(const T* qkv, const float* cos_sin, const u32* positions,
                                              const u32* slots, T* q_out, T* k_cache, T* v_cache, u32 qh, u32 kvh,
                                              u32 hd, u32 max_pos, u64 num_slots) {
  const u64 row = blockIdx.x;
  const u32 pos = positions[row];
  if (pos >= max_pos) return;
  const u64 slot = slots[row];
  const bool store = slot < num_slots;
  const u32 half = hd / 2;
  const u64 kv_width = (u64)kvh * hd;
  const T* x = qkv + row * (u64)(qh + 2 * kvh) * hd;
  const float* cs = cos_sin + (u64)pos * hd;

  for (u32 j = threadIdx.x; j < (qh + kvh) * half; j += blockDim.x) {
    const u32 head = j / half, i = j % half;
    const T* xh = x + (u64)head * hd;
    const float a = to_f32(xh[i]), b = to_f32(xh[i + half]);
    const float c = cs[i], s = cs[half + i];
    const T lo = from_f32<T>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    const T hi = from_f32<T>(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
    T* dst;
    if (head < qh) {
      dst = q_out + row * (u64)qh * hd + (u64)head * hd;
    } else if (store) {
      dst = k_cache + slot * kv_width + (u64)(head - qh) * hd;
    } else {
      continue;
    }
    dst[i] = lo;
    dst[i + half] = hi;
  }
  if (!store) return;
  const T* v = x + (u64)(qh + kvh) * hd;
  T* v_dst = v_cache + slot * kv_width;
  for (u32 j = threadIdx.x; j < kv_width; j += blockDim.x) v_dst[j] = v[j];
}

}  // namespace rope
}  // namespace sl

#define SL_ROPE_KV_WRITE(T, S)                                                                                 \
  extern "C" __global__ void rope_kv_write_##S(const T* qkv, const float* cos_sin, const sl::u32* positions,   \
                                               const sl::u32* slots, T* q_out, T* k_cache, T* v_cache,         \
                                               sl::u32 qh, sl::u32 kvh, sl::u32 hd, sl::u32 max_pos,           \
                                               sl::u64 num_slots) {                                            \
    sl::rope::rope_kv_write<T>(qkv, cos_sin, positions, slots, q_out, k_cache, v_cache, qh, kvh, hd, max_pos, \
                               num_slots);                                                                     \
  }
SL_FOR_EACH_DTYPE(SL_ROPE_KV_WRITE)
