// Paged attention over a block-table KV cache for a whole ragged step in one launch: decode
// rows and chunked-prefill rows alike (row r sees keys 0..=positions[r] of its sequence), any
// q-head → KV-head map (GQA, uneven tensor-parallel shards), optional split-K (FlashDecoding).
// Reference: crates/kernels/src/reference.rs `attention_partials`, `attention_merge`.
//
// Grid (rows · q_heads, num_splits); block = 4 warps. A block handles one (row, head, split):
// the split's keys go in groups of 32, warp w taking groups w, w + 4, … (a KEY_TILE of 128 keys
// per step of the block). Within a group lane j owns key j: it computes the whole dot product
// q·k_j (q in shared memory, read as a broadcast; k_j with 16-byte loads), so a score costs no
// shuffles. The warp then updates its online softmax (Milakov & Gimelshein 2018) once per group:
// new max, one rescale of the accumulator, p_j = exp(s_j − m). For P·V, lane l owns dimensions
// l, l + 32, … (head_dim / 32 ≤ 8 registers) and walks the group's 32 keys, each V row read
// coalesced. The 4 warps' states merge through shared memory with the same formula
// attention_merge uses for splits; with one split the block writes the normalized output, else
// its unnormalized partial (m, l, acc) to the workspace for attention_merge.
//
// All in f32; masks are never materialized (a row only visits its visible keys). The Rust API is
// safe, so every index read from device memory (row_seq, kv_head_of_q, block-table entries) is
// bounds-checked: a row with a bad sequence or head gets zeros, a key in a block past the cache
// is skipped.
//
// Where it stands: a decode kernel. Prefill rows reuse nothing across rows of a sequence (each
// (row, head) block re-reads the keys, mostly from L2); a FlashAttention-style kernel tiling
// query rows and the q heads of a KV group would cut that traffic by the tile size.
#include "common.cuh"

namespace sl {
namespace attn {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int KEY_TILE = THREADS;  // keys per block step; crates/kernels/src/split.rs KEY_TILE
constexpr u32 MAX_HEAD_DIM = 256;  // shape.rs MAX_HEAD_DIM
constexpr int MAX_DIMS_PER_LANE = MAX_HEAD_DIM / 32;
constexpr u32 MAX_SPLITS = 128;  // split.rs MAX_SPLITS
constexpr u32 HEADER = 2;        // m, l before each partial's accumulator (split.rs PARTIAL_HEADER)

// 8 consecutive elements as f32. p must be 16-byte aligned: the host checks the cache's base,
// and every row and 8-element chunk offset is a multiple of 16 bytes (head_dim % 32 == 0).
// The 16-bit types come in one 16-byte load and are unpacked from its words with shifts (the
// low half is the lower address), not by casting the register to __nv_bfloat162*, which would
// read one type through a pointer to another.
__device__ __forceinline__ void load8(const float* p, float* o) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* o) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    // A bf16 is the top half of the f32 with the same value.
    o[2 * k] = __uint_as_float(w[k] << 16);
    o[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8(const __half* p, float* o) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    o[2 * k] = __half2float(__ushort_as_half((unsigned short)(w[k] & 0xffffu)));
    o[2 * k + 1] = __half2float(__ushort_as_half((unsigned short)(w[k] >> 16)));
  }
}

// Weight of a partial with max m in a merge whose overall max is big_m: an empty partial
// (m = −inf) weighs 0, where exp(−inf − (−inf)) would be NaN.
__device__ __forceinline__ float merge_weight(float m, float big_m) { return m == -CUDART_INF_F ? 0.0f : expf(m - big_m); }

struct Args {
  u32 num_q_heads, num_kv_heads, head_dim, block_size, max_blocks, num_seqs;
  u64 num_slots;
  float scale;
  u32 num_splits, keys_per_split;
};

template <typename T>
__device__ __forceinline__ void paged_attention(const T* q, const T* k_cache, const T* v_cache, const u32* block_tables,
                                                const u32* row_seq, const u32* positions, const u32* kv_head_of_q,
                                                T* out, float* partials, const Args a) {
  __shared__ __align__(16) float q_s[MAX_HEAD_DIM];
  __shared__ float m_s[WARPS], l_s[WARPS];
  __shared__ float acc_s[WARPS][MAX_HEAD_DIM];

  const u32 row = blockIdx.x / a.num_q_heads, h = blockIdx.x % a.num_q_heads, split = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const u32 hd = a.head_dim;
  const int dims_per_lane = (int)(hd / 32);
  const u64 kv_width = (u64)a.num_kv_heads * hd;
  const u64 q_off = ((u64)row * a.num_q_heads + h) * hd;
  for (u32 d = threadIdx.x; d < hd; d += THREADS) q_s[d] = to_f32(q[q_off + d]);

  // This split's keys [k0, k1) of the row's visible ones (split.rs split_range): the last split
  // takes everything past num_splits · keys_per_split. The host checked that the table's
  // capacity and the splits' end fit in u32.
  const u32 seq = row_seq[row], kvh = kv_head_of_q[h];
  const bool valid = seq < a.num_seqs && kvh < a.num_kv_heads;
  const u32 capacity = a.max_blocks * a.block_size;
  const u32 visible = valid ? (u32)min((u64)positions[row] + 1, (u64)capacity) : 0;
  const u32 k0 = min(split * a.keys_per_split, visible);
  const u32 k1 = split + 1 == a.num_splits ? visible : min(k0 + a.keys_per_split, visible);
  const u32* table = block_tables + (u64)(valid ? seq : 0) * a.max_blocks;
  const T* k_head = k_cache + (u64)(valid ? kvh : 0) * hd;
  const T* v_head = v_cache + (u64)(valid ? kvh : 0) * hd;
  __syncthreads();  // q_s

  // This warp's online softmax over its groups: running max m, l = Σ exp(s − m), acc = Σ exp(s − m)·v.
  float m = -CUDART_INF_F, l = 0.0f;
  float acc[MAX_DIMS_PER_LANE];
#pragma unroll
  for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) acc[i] = 0.0f;

  for (u64 g = (u64)k0 + warp * 32; g < k1; g += KEY_TILE) {
    u64 slot = 0;
    bool ok = false;
    if (g + lane < k1) {
      const u32 key = (u32)(g + lane);
      slot = (u64)table[key / a.block_size] * a.block_size + key % a.block_size;
      ok = slot < a.num_slots;
    }
    float s = -CUDART_INF_F;
    if (ok) {
      const T* k = k_head + slot * kv_width;
      float dot = 0.0f;
      for (u32 c = 0; c < hd; c += 8) {
        float kf[8];
        load8(k + c, kf);
        const float4 qa = *reinterpret_cast<const float4*>(&q_s[c]);
        const float4 qb = *reinterpret_cast<const float4*>(&q_s[c + 4]);
        dot = fmaf(qa.x, kf[0], dot);
        dot = fmaf(qa.y, kf[1], dot);
        dot = fmaf(qa.z, kf[2], dot);
        dot = fmaf(qa.w, kf[3], dot);
        dot = fmaf(qb.x, kf[4], dot);
        dot = fmaf(qb.y, kf[5], dot);
        dot = fmaf(qb.z, kf[6], dot);
        dot = fmaf(qb.w, kf[7], dot);
      }
      s = dot * a.scale;
    }
    // Warp-uniform from here: every lane holds the same m_new, l, and loop bounds.
    const float m_new = fmaxf(m, warp_max(s));
    if (m_new == -CUDART_INF_F) continue;  // no readable key yet
    const float corr = expf(m - m_new);    // 0 on the first group (m = −inf)
    const float p = ok ? expf(s - m_new) : 0.0f;
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) acc[i] *= corr;
    const u32 n = (u32)min((u64)32, k1 - g);
    for (u32 j = 0; j < n; ++j) {
      const float pj = __shfl_sync(FULL_MASK, p, j);
      const u64 sj = __shfl_sync(FULL_MASK, slot, j);
      if (!__shfl_sync(FULL_MASK, (int)ok, j)) continue;
      const T* v = v_head + sj * kv_width;
#pragma unroll
      for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {
        if (i < dims_per_lane) acc[i] = fmaf(pj, to_f32(v[lane + 32 * i]), acc[i]);
      }
    }
    m = m_new;
  }

  // Merge the warps: M = max m_w, weights exp(m_w − M), L = Σ w·l_w, A = Σ w·acc_w.
  if (lane == 0) m_s[warp] = m, l_s[warp] = l;
#pragma unroll
  for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {
    if (i < dims_per_lane) acc_s[warp][lane + 32 * i] = acc[i];
  }
  __syncthreads();
  float big_m = -CUDART_INF_F;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) big_m = fmaxf(big_m, m_s[w]);
  float weight[WARPS], big_l = 0.0f;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) {
    weight[w] = merge_weight(m_s[w], big_m);
    big_l += weight[w] * l_s[w];
  }
  if (a.num_splits == 1) {
    for (u32 d = threadIdx.x; d < hd; d += THREADS) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) sum += weight[w] * acc_s[w][d];
      out[q_off + d] = from_f32<T>(big_l > 0.0f ? sum / big_l : 0.0f);
    }
  } else {
    float* part = partials + (((u64)row * a.num_q_heads + h) * a.num_splits + split) * (HEADER + hd);
    if (threadIdx.x == 0) part[0] = big_m, part[1] = big_l;
    for (u32 d = threadIdx.x; d < hd; d += THREADS) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) sum += weight[w] * acc_s[w][d];
      part[HEADER + d] = sum;
    }
  }
}

// partials: [rows · q_heads, num_splits, 2 + hd] → out [rows · q_heads, hd]. Block = one
// (row, head), one thread per dimension (hd ≤ 256 threads).
template <typename T>
__device__ __forceinline__ void attention_merge(const float* partials, T* out, u32 hd, u32 num_splits) {
  __shared__ float weight[MAX_SPLITS];
  const u64 item = blockIdx.x, stride = HEADER + hd;
  const float* part = partials + item * num_splits * stride;
  float big_m = -CUDART_INF_F;
  for (u32 s = 0; s < num_splits; ++s) big_m = fmaxf(big_m, part[s * stride]);
  for (u32 s = threadIdx.x; s < num_splits; s += blockDim.x) weight[s] = merge_weight(part[s * stride], big_m);
  __syncthreads();
  float big_l = 0.0f;
  for (u32 s = 0; s < num_splits; ++s) big_l += weight[s] * part[s * stride + 1];
  for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
    float sum = 0.0f;
    for (u32 s = 0; s < num_splits; ++s) sum += weight[s] * part[s * stride + HEADER + d];
    out[item * hd + d] = from_f32<T>(big_l > 0.0f ? sum / big_l : 0.0f);
  }
}

}  // namespace attn
}  // namespace sl

#define SL_PAGED_ATTENTION(T, S)                                                                                    \
  extern "C" __global__ void __launch_bounds__(sl::attn::THREADS) paged_attention_##S(                              \
      const T* q, const T* k_cache, const T* v_cache, const sl::u32* block_tables, const sl::u32* row_seq,          \
      const sl::u32* positions, const sl::u32* kv_head_of_q, T* out, float* partials, sl::u32 num_q_heads,          \
      sl::u32 num_kv_heads, sl::u32 head_dim, sl::u32 block_size, sl::u32 max_blocks, sl::u32 num_seqs,             \
      sl::u64 num_slots, float scale, sl::u32 num_splits, sl::u32 keys_per_split) {                                 \
    const sl::attn::Args a = {num_q_heads, num_kv_heads, head_dim,  block_size, max_blocks,                         \
                              num_seqs,    num_slots,    scale,     num_splits, keys_per_split};                    \
    sl::attn::paged_attention<T>(q, k_cache, v_cache, block_tables, row_seq, positions, kv_head_of_q, out, partials, \
                                 a);                                                                                \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(sl::attn::MAX_HEAD_DIM) attention_merge_##S(                         \
      const float* partials, T* out, sl::u32 head_dim, sl::u32 num_splits) {                                        \
    sl::attn::attention_merge<T>(partials, out, head_dim, num_splits);                                              \
  }
SL_FOR_EACH_DTYPE(SL_PAGED_ATTENTION)
