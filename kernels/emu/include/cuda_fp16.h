// Stand-in for CUDA's cuda_fp16.h in the CPU emulator (../emu.h): the storage type and the
// conversions kernels/*.cu use, in integer arithmetic (no _Float16, which g++ only has on x86
// from version 12).
#pragma once
#include "../emu.h"

struct __half {
  unsigned short x;
};

// Exact: every f16 is an f32.
inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t)(h.x & 0x8000) << 16, exp = (h.x >> 10) & 0x1f, man = h.x & 0x3ff;
  if (exp == 0) {  // zero or subnormal: man · 2^-24
    const float v = (float)man * 0x1p-24f;
    return sign ? -v : v;
  }
  return __uint_as_float(sign | (exp == 0x1f ? 0x7f800000 | man << 13 : (exp + 112) << 23 | man << 13));
}

// Round to nearest, ties to even, subnormals kept, overflow to inf; a NaN stays a (quiet) NaN.
inline __half __float2half_rn(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  const uint32_t sign = (b >> 16) & 0x8000, man = b & 0x7fffff;
  const int exp = (int)((b >> 23) & 0xff) - 127 + 15;  // the f16 exponent field, if it fits
  if (exp == 0xff - 127 + 15) return {(unsigned short)(sign | 0x7c00 | (man ? 0x200 | man >> 13 : 0))};
  if (exp >= 0x1f) return {(unsigned short)(sign | 0x7c00)};
  // Keep `shift` fewer bits of the 24-bit significand; a carry out of the mantissa bumps the
  // exponent (up to inf, or from the largest subnormal to the smallest normal) by itself.
  const uint32_t sig = man | 0x800000;
  const int shift = exp > 0 ? 13 : 14 - exp;
  if (shift > 24) return {(unsigned short)sign};  // below half the smallest subnormal
  uint32_t h = (exp > 0 ? (uint32_t)exp << 10 | man >> 13 : sig >> shift);
  const uint32_t rest = (exp > 0 ? man : sig) & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1))) ++h;
  return {(unsigned short)(sign | h)};
}

inline __half __ushort_as_half(unsigned short b) { return {b}; }
