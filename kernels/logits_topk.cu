// Device-side candidate selection for sampling: per row of logits, the k best entries and the
// normalizers, so a few hundred bytes per row come back to the host instead of the vocabulary.
// Reference: crates/kernels/src/reference.rs `logits_topk`.
//
// Order: value descending, lower id first on ties, NaN ranked as −inf (never ahead of a real
// value). Stats per row: max logit, logsumexp of the logits, logsumexp of logits·inv_temperature.
//
// Algorithm, chosen to be obviously correct: one block of 1024 threads per row; two passes for
// the stats (maxima, then sums of exp), then k rounds of block-wide arg-max, round r taking the
// best entry ranked after round r−1's pick. Cost: (k + 2) reads of the row (the first from
// HBM, the rest mostly from L2: a 152k vocabulary is 600 KB) and k + 4 block reductions, about
// k · vocab / (1024 threads) compares per thread. Faster: one pass in which each thread keeps
// its own top-k in registers and the block merges those (or a radix select on the float bits,
// as PyTorch's topk does), and several blocks per row for small batches.
#include "common.cuh"

namespace sl {
namespace topk {

constexpr int THREADS = 1024;
constexpr u32 NONE = 0xffffffffu;  // id of "nothing chosen"; the host keeps vocab < u32::MAX

__device__ __forceinline__ float key(float v) { return isnan(v) ? -CUDART_INF_F : v; }

// Whether (av, ai) ranks ahead of (bv, bi).
__device__ __forceinline__ bool ahead(float av, u32 ai, float bv, u32 bi) { return av > bv || (av == bv && ai < bi); }

// logits: f32 [rows, vocab]; inv_temperature: [rows]; top_values, top_ids: [rows, k];
// stats: [rows, 3]. Block = row.
__device__ __forceinline__ void logits_topk(const float* logits, const float* inv_temperature, float* top_values,
                                            u32* top_ids, float* stats, u32 vocab, u32 k) {
  __shared__ float scratch[32];
  __shared__ float best_v[32];
  __shared__ u32 best_i[32];
  __shared__ float pick_v;
  __shared__ u32 pick_i;
  const u64 row = blockIdx.x;
  const float* x = logits + row * vocab;
  const float inv_t = inv_temperature[row];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  float max1 = -CUDART_INF_F, max_t = -CUDART_INF_F;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
    max1 = fmaxf(max1, key(x[i]));
    max_t = fmaxf(max_t, key(x[i] * inv_t));
  }
  max1 = block_max(max1, scratch);
  max_t = block_max(max_t, scratch);
  // A row of nothing but −inf/NaN has no normalizer: skip the sums (−inf − (−inf) is NaN).
  float sum1 = 0.0f, sum_t = 0.0f;
  for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (max1 != -CUDART_INF_F) sum1 += expf(key(x[i]) - max1);
    if (max_t != -CUDART_INF_F) sum_t += expf(key(x[i] * inv_t) - max_t);
  }
  sum1 = block_sum(sum1, scratch);
  sum_t = block_sum(sum_t, scratch);
  if (threadIdx.x == 0) {
    stats[row * 3] = max1;
    stats[row * 3 + 1] = max1 == -CUDART_INF_F ? max1 : max1 + logf(sum1);
    stats[row * 3 + 2] = max_t == -CUDART_INF_F ? max_t : max_t + logf(sum_t);
  }

  float prev_v = CUDART_INF_F;
  u32 prev_i = NONE;
  for (u32 r = 0; r < k; ++r) {
    float bv = -CUDART_INF_F;
    u32 bi = NONE;  // ranks behind every real entry, −inf ones included
    for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = key(x[i]);
      if ((r == 0 || ahead(prev_v, prev_i, v, i)) && ahead(v, i, bv, bi)) bv = v, bi = i;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
      const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
      if (ahead(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (lane == 0) best_v[warp] = bv, best_i[warp] = bi;
    __syncthreads();
    if (warp == 0) {
      bv = lane < warps ? best_v[lane] : -CUDART_INF_F;
      bi = lane < warps ? best_i[lane] : NONE;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
        const u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
        if (ahead(ov, oi, bv, bi)) bv = ov, bi = oi;
      }
      if (lane == 0) {
        top_values[row * k + r] = bv;
        top_ids[row * k + r] = bi;
        pick_v = bv, pick_i = bi;
      }
    }
    // Every thread reads the pick before warp 0 can overwrite best_v/pick in the next round.
    __syncthreads();
    prev_v = pick_v, prev_i = pick_i;
  }
}

}  // namespace topk
}  // namespace sl

extern "C" __global__ void __launch_bounds__(sl::topk::THREADS)
    logits_topk(const float* logits, const float* inv_temperature, float* top_values, sl::u32* top_ids, float* stats,
                sl::u32 vocab, sl::u32 k) {
  sl::topk::logits_topk(logits, inv_temperature, top_values, top_ids, stats, vocab, k);
}
