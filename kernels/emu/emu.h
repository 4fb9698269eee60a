// A CPU emulator for the CUDA subset kernels/*.cu uses, so the real kernel sources run on a
// machine without a GPU and are checked against their CPU references
// (crates/kernels/tests/emu.rs). g++ compiles the .cu files unchanged: this header defines the
// CUDA keywords, built-in variables and intrinsics they use, and include/ stands in for the
// CUDA headers they include.
//
// Model: every CUDA thread of a block is a fiber (its own stack, a hand-written x86-64 context
// switch) on the calling OS thread. A fiber runs until it waits at a barrier: __syncthreads is a
// barrier of the block, a warp shuffle an exchange through a per-warp buffer between two barriers
// of the warp. Blocks run one after another, so shared memory is a function-local static (per
// OS thread, so tests may emulate launches in parallel). Within a block the fibers are resumed
// in a fixed pseudo-random order that differs from block to block: a read of another thread's
// write without a barrier between them sees the old value in some blocks whichever of the two
// threads comes first. A barrier that not every thread of the block (or warp) reaches is
// reported as a deadlock instead of hanging.
//
// What it cannot show: real warp scheduling (independent thread scheduling, divergence), the
// GPU memory model (caches, visibility without fences), hardware numerics (nvcc contracts
// a·b + c into FMAs, CUDA's expf/logf differ from glibc's in the last bits) and anything about
// performance. See kernels/README.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
// Set by the scheduler before it resumes a fiber; per OS thread, like the shared memory.
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace emu {

// Runs `body` as every thread of every block of `grid`. Returns nullptr, or a message saying
// what went wrong (a block size the emulator refuses, a deadlock), prefixed with `kernel`; the
// message lives until the calling thread's next launch.
const char* run(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body);

// __syncthreads.
void sync_block();

// The calling thread puts `v` in, every lane of its warp gets lane `src`'s value back.
uint64_t exchange(uint64_t v, unsigned src);

template <class T> T shfl(T v, unsigned src) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = exchange(bits, src & 31);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// A kernel launch: `kernel(args...)` as every thread of the grid.
template <class F, class... A> const char* launch(const char* name, dim3 grid, dim3 block, F kernel, A... args) {
  return run(name, grid, block, [&] { kernel(args...); });
}

}  // namespace emu

inline void __syncthreads() { emu::sync_block(); }
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu::shfl(v, (unsigned)src); }
template <class T> T __shfl_xor_sync(unsigned, T v, int mask) { return emu::shfl(v, (threadIdx.x & 31) ^ mask); }

// Compiled with -ffp-contract=off, so a plain product or sum is never fused either.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
using std::isnan;
// CUDA's min/max for one integer type (the kernels never mix types).
template <class T> T min(T a, T b) { return b < a ? b : a; }
template <class T> T max(T a, T b) { return a < b ? b : a; }
