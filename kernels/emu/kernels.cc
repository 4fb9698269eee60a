// The real kernels/*.cu, compiled by g++ for the CPU emulator (emu.h), behind one C entry point
// per kernel: `sl_emu_<kernel>(dtype, launch, the kernel's own arguments)`, where dtype is the
// Rust `KernelDType::INDEX` and launch the grid and block the Rust launcher would use. Each
// returns nullptr or what went wrong. Bindings: crates/kernels-emu.
#include "emu.h"

#include "../copy_f32x4.cu"
#include "../logits_topk.cu"
#include "../paged_attention.cu"
#include "../rms_norm.cu"
#include "../rope_kv_write.cu"
#include "../silu_mul.cu"

using sl::u32;
using sl::u64;

extern "C" {

struct sl_emu_launch {
  u32 grid_x, grid_y, threads;
};

}  // extern "C"

namespace {

template <class F, class... A> const char* launch(const char* name, sl_emu_launch l, F kernel, A... args) {
  return emu::launch(name, {l.grid_x, l.grid_y, 1}, {l.threads, 1, 1}, kernel, args...);
}

}  // namespace

// Instantiates X(T, suffix) for `dtype`, in the order of SL_FOR_EACH_DTYPE and of Rust's
// KernelDType::INDEX (f32, bf16, f16).
#define SL_EMU_DISPATCH(X)             \
  switch (dtype) {                     \
    case 0:                            \
      return X(float, f32);            \
    case 1:                            \
      return X(__nv_bfloat16, bf16);   \
    case 2:                            \
      return X(__half, f16);           \
    default:                           \
      return "unknown dtype index";    \
  }

extern "C" {

const char* sl_emu_rms_norm(u32 dtype, sl_emu_launch l, const void* x, const void* w, void* out, u32 cols, float eps) {
#define X(T, S) launch("rms_norm_" #S, l, rms_norm_##S, (const T*)x, (const T*)w, (T*)out, cols, eps)
  SL_EMU_DISPATCH(X)
#undef X
}

const char* sl_emu_add_rms_norm(u32 dtype, sl_emu_launch l, void* residual, const void* delta, const void* w,
                                void* out, u32 cols, float eps) {
#define X(T, S) \
  launch("add_rms_norm_" #S, l, add_rms_norm_##S, (T*)residual, (const T*)delta, (const T*)w, (T*)out, cols, eps)
  SL_EMU_DISPATCH(X)
#undef X
}

const char* sl_emu_silu_mul(u32 dtype, sl_emu_launch l, const void* gate_up, void* out, u64 n, u32 inter) {
#define X(T, S) launch("silu_mul_" #S, l, silu_mul_##S, (const T*)gate_up, (T*)out, n, inter)
  SL_EMU_DISPATCH(X)
#undef X
}

const char* sl_emu_rope_kv_write(u32 dtype, sl_emu_launch l, const void* qkv, const float* cos_sin,
                                 const u32* positions, const u32* slots, void* q_out, void* k_cache, void* v_cache,
                                 u32 qh, u32 kvh, u32 hd, u32 max_pos, u64 num_slots) {
#define X(T, S)                                                                                                   \
  launch("rope_kv_write_" #S, l, rope_kv_write_##S, (const T*)qkv, cos_sin, positions, slots, (T*)q_out,       \
         (T*)k_cache, (T*)v_cache, qh, kvh, hd, max_pos, num_slots)
  SL_EMU_DISPATCH(X)
#undef X
}

const char* sl_emu_paged_attention(u32 dtype, sl_emu_launch l, const void* q, const void* k_cache,
                                   const void* v_cache, const u32* block_tables, const u32* row_seq,
                                   const u32* positions, const u32* kv_head_of_q, void* out, float* partials,
                                   u32 num_q_heads, u32 num_kv_heads, u32 head_dim, u32 block_size, u32 max_blocks,
                                   u32 num_seqs, u64 num_slots, float scale, u32 num_splits, u32 keys_per_split) {
#define X(T, S)                                                                                                   \
  launch("paged_attention_" #S, l, paged_attention_##S, (const T*)q, (const T*)k_cache, (const T*)v_cache,     \
         block_tables, row_seq, positions, kv_head_of_q, (T*)out, partials, num_q_heads, num_kv_heads, head_dim, \
         block_size, max_blocks, num_seqs, num_slots, scale, num_splits, keys_per_split)
  SL_EMU_DISPATCH(X)
#undef X
}

const char* sl_emu_attention_merge(u32 dtype, sl_emu_launch l, const float* partials, void* out, u32 head_dim,
                                   u32 num_splits) {
#define X(T, S) launch("attention_merge_" #S, l, attention_merge_##S, partials, (T*)out, head_dim, num_splits)
  SL_EMU_DISPATCH(X)
#undef X
}

const char* sl_emu_logits_topk(sl_emu_launch l, const float* logits, const float* inv_temperature,
                               float* top_values, u32* top_ids, float* stats, u32 vocab, u32 k) {
  return launch("logits_topk", l, logits_topk, logits, inv_temperature, top_values, top_ids, stats, vocab, k);
}

const char* sl_emu_copy_f32x4(sl_emu_launch l, const float4* src, float4* dst, u64 n) {
  return launch("copy_f32x4", l, copy_f32x4, src, dst, n);
}

}  // extern "C"

// The emulator's own checks: a barrier one thread skips must come back as a deadlock, not hang;
// a read of a neighbour's write without a barrier between them must see the old value in some
// blocks, whichever side the neighbour is on (the resume order differs from block to block).
namespace self_test {

__global__ void skip_barrier() {
  if (threadIdx.x == 5) return;
  __syncthreads();
}

__global__ void unsynced(u32 tag, u32* stale) {
  __shared__ u32 s[1024];
  const u32 n = blockDim.x, mine = tag + blockIdx.x;
  s[threadIdx.x] = mine;
  stale[0] += threadIdx.x + 1 < n && s[threadIdx.x + 1] != mine;
  stale[1] += threadIdx.x > 0 && s[threadIdx.x - 1] != mine;
}

}  // namespace self_test

extern "C" {

const char* sl_emu_self_test_deadlock() {
  return emu::launch("skip_barrier", {3, 1, 1}, {64, 1, 1}, self_test::skip_barrier);
}

// stale[0]: reads of the next thread's slot that missed its write; stale[1]: of the previous.
const char* sl_emu_self_test_unsynced(u32 tag, u32* stale) {
  return emu::launch("unsynced", {8, 1, 1}, {64, 1, 1}, self_test::unsynced, tag, stale);
}

// The storage conversions of include/ on their own, for tests against Rust's `half`.
unsigned short sl_emu_f32_to_bf16(float v) { return __float2bfloat16_rn(v).x; }
float sl_emu_bf16_to_f32(unsigned short b) { return __bfloat162float({b}); }
unsigned short sl_emu_f32_to_f16(float v) { return __float2half_rn(v).x; }
float sl_emu_f16_to_f32(unsigned short b) { return __half2float({b}); }

}  // extern "C"
