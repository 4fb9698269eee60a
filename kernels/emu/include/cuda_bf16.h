// Stand-in for CUDA's cuda_bf16.h in the CPU emulator (../emu.h): the storage type and the
// conversions kernels/*.cu use, bit for bit as CUDA defines them.
#pragma once
#include "../emu.h"

struct __nv_bfloat16 {
  unsigned short x;
};

// A bf16 is the top half of an f32.
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((uint32_t)h.x << 16); }

// Round to nearest, ties to even; a NaN stays a (quiet) NaN, as `half::bf16::from_f32`.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  if (std::isnan(f)) return {(unsigned short)((b >> 16) | 0x40)};
  b += 0x7fff + ((b >> 16) & 1);
  return {(unsigned short)(b >> 16)};
}
