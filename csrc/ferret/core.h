// ferret_kernels: header-only randomness core, shared by host (C++) and device (CUDA) code.
//
// This file is the executable form of docs/rng.md (shared-randomness contract, version 1).
// It must stay free of torch and of the C++ standard library: it is compiled into
// several translation units with different instruction-set flags (csrc/cpu/kernel_*.cpp),
// so every function has internal linkage (static) and nothing can be folded across them.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FERRET_HD static __host__ __device__ __forceinline__
#else
#define FERRET_HD static inline __attribute__((always_inline))
#endif

namespace ferret {

// Version of the shared-randomness contract implemented here (docs/rng.md).
constexpr int kRngVersion = 1;

// Stream tags (fourth counter word). Only kStreamBasis is used by version 1.
constexpr uint32_t kStreamBasis = 0;

enum Dist : int { kRademacher = 0, kUniform = 1, kGaussian = 2 };

// ---------------------------------------------------------------- Philox4x32-10
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct U32x4 {
  uint32_t v[4];
};

// kUmulhi (device code and the CUDA emulator; the same values): the high word by __umulhi and the low one by a 32-bit
// multiply, where the default takes both from one 64-bit product. ptxas schedules the two forms
// differently (sm_90 SASS, nvcc 13, benchmarks/sass_cost.py): in the rademacher kernels' loop over
// quads of bases the 64-bit product left an add of a zero register after every multiply (project
// 309 -> 290 instructions with kUmulhi, reconstruct_ 493 -> 478), while in the uniform and gaussian
// loops kUmulhi made them longer (project 266 -> 280, reconstruct_ 242 -> 265).
template <bool kUmulhi = false>
FERRET_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__) || defined(FERRET_CUDA_EMU)  // (the CUDA emulator, tests/cuda_emu, runs it too)
  if (kUmulhi) {
    *hi = __umulhi(a, b);
    *lo = a * b;
    return;
  }
#endif
  const uint64_t p = (uint64_t)a * (uint64_t)b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

// One Philox4x32 round with round key (k0, k1).
template <bool kUmulhi = false>
FERRET_HD void philox_round(uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32<kUmulhi>(kPhiloxM0, *c0, &hi0, &lo0);
  mulhilo32<kUmulhi>(kPhiloxM1, *c2, &hi1, &lo1);
  *c0 = hi1 ^ *c1 ^ k0;
  *c1 = lo1;
  *c2 = hi0 ^ *c3 ^ k1;
  *c3 = lo0;
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's philox4x32_R(10, ...)).
template <bool kUmulhi = false>
FERRET_HD U32x4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    philox_round<kUmulhi>(&c0, &c1, &c2, &c3, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  U32x4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// Key for a 64-bit seed: (low word, high word).
FERRET_HD uint32_t seed_lo(uint64_t seed) { return (uint32_t)seed; }
FERRET_HD uint32_t seed_hi(uint64_t seed) { return (uint32_t)(seed >> 32); }

// ---------------------------------------------------------------- counter layout
// Counter (c0, c1, c2, c3) = (word group w within the block, basis k, global block g, stream).
// Element j of a block (0-based inside the block) lives in word group
//   rademacher: w = j >> 7, output word (j >> 5) & 3, bit j & 31   (128 elements per call)
//   uniform / gaussian: w = j >> 2, output word j & 3              (4 elements per call)
FERRET_HD int log2_elems_per_call(int dist) { return dist == kRademacher ? 7 : 2; }

// ---------------------------------------------------------------- bit casts
FERRET_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
FERRET_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// ---------------------------------------------------------------- basis values
// rademacher: bit 0 -> +1, bit 1 -> -1. Applying it to a value is a sign flip.
FERRET_HD uint32_t rademacher_sign(uint32_t word, int bit) { return (word << (31 - bit)) & 0x80000000u; }
FERRET_HD float rademacher_apply(float x, uint32_t word, int bit) {
  return bits_to_float(float_to_bits(x) ^ rademacher_sign(word, bit));
}

// uniform on (-sqrt3, sqrt3): sqrt(3) * (2u - 1) with u = ((x >> 8) + 0.5) * 2^-24.
// 2u - 1 = s * 2^-24 with s = 2 * (x >> 8) + 1 - 2^24, an odd integer with |s| < 2^24, so
// float(s) is exact and the value is one correctly rounded product: bit-identical everywhere.
constexpr float kUniformScale = 1.0323827311385400e-07f;  // float(sqrt(3) * 2^-24)
FERRET_HD float uniform_value(uint32_t x) {
  const int32_t s = (int32_t)((x >> 8) << 1) + 1 - (1 << 24);
  return (float)s * kUniformScale;
}

// u in (0, 1) as used by the gaussian: ((x >> 8) + 0.5) * 2^-24, rounded to float.
FERRET_HD float open_unit(uint32_t x) { return ((float)(x >> 8) + 0.5f) * 5.9604644775390625e-08f; }

// Natural log for a positive normal float (cephes logf; max rel. error ~1e-7). Branch-free,
// so it vectorizes; the contract only asks for agreement within docs/rng.md's tolerance.
FERRET_HD float fast_logf(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t e = (int32_t)((bits >> 23) & 0xffu) - 126;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const int32_t small = m < 0.70710678118654752440f ? 1 : 0;
  e -= small;
  m = m * (float)(1 + small) - 1.0f;  // exact: doubling is exact
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  const float fe = (float)e;
  y += fe * -2.12194440e-4f;
  y += -0.5f * z;
  return m + y + fe * 0.693359375f;
}

// sin and cos of 2*pi*u for u in [0, 1): exact range reduction on u, then cephes
// minimax polynomials on [-pi/4, pi/4].
FERRET_HD void sincos_2pi(float u, float* s_out, float* c_out) {
  const float qf = (float)(int32_t)(u * 4.0f + 0.5f);  // nearest quarter turn, 0..4
  const int32_t q = (int32_t)qf & 3;
  const float r = u - qf * 0.25f;  // exact, |r| <= 1/8
  const float t = r * 6.28318530717958647692f;
  const float t2 = t * t;
  float s = -1.9515295891E-4f;
  s = s * t2 + 8.3321608736E-3f;
  s = s * t2 - 1.6666654611E-1f;
  s = s * t2 * t + t;
  float c = 2.443315711809948E-5f;
  c = c * t2 - 1.388731625493765E-3f;
  c = c * t2 + 4.166664568298827E-2f;
  c = c * t2 * t2 - 0.5f * t2 + 1.0f;
  // Quadrant fix-up with integer masks (no branches, so loops over it vectorize):
  // q=0: (s, c); q=1: (c, -s); q=2: (-s, -c); q=3: (-c, s).
  const uint32_t swap = 0u - (uint32_t)(q & 1);
  const uint32_t sb = float_to_bits(s), cb = float_to_bits(c);
  const uint32_t ss = (cb & swap) | (sb & ~swap);
  const uint32_t cc = (sb & swap) | (cb & ~swap);
  *s_out = bits_to_float(ss ^ ((uint32_t)(q >> 1) << 31));
  *c_out = bits_to_float(cc ^ ((uint32_t)(((q + 1) >> 1) & 1) << 31));
}

// gaussian (Box-Muller) on one output-word pair (a, b): even element r*cos(t), odd r*sin(t),
// r = sqrt(-2 ln u_a), t = 2 pi u_b.
FERRET_HD void gaussian_pair(uint32_t a, uint32_t b, float* even, float* odd) {
  const float r2 = -2.0f * fast_logf(open_unit(a));
#if defined(__CUDACC__) || defined(__HIPCC__)
  const float r = sqrtf(r2);
#else
  const float r = __builtin_sqrtf(r2);
#endif
  float s, c;
  sincos_2pi(open_unit(b), &s, &c);
  *even = r * c;
  *odd = r * s;
}

// The four basis values one Philox call yields for uniform / gaussian.
FERRET_HD void values4(int dist, const U32x4& r, float* v) {
  if (dist == kUniform) {
    v[0] = uniform_value(r.v[0]);
    v[1] = uniform_value(r.v[1]);
    v[2] = uniform_value(r.v[2]);
    v[3] = uniform_value(r.v[3]);
  } else {
    gaussian_pair(r.v[0], r.v[1], &v[0], &v[1]);
    gaussian_pair(r.v[2], r.v[3], &v[2], &v[3]);
  }
}

// Value of basis k of global block g at element j (inside the block): the slow, scalar
// definition. Kernels compute the same thing many elements per Philox call.
FERRET_HD float basis_value(uint64_t seed, uint32_t g, uint32_t k, uint64_t j, int dist) {
  const int sh = log2_elems_per_call(dist);
  const U32x4 r = philox4x32_10((uint32_t)(j >> sh), k, g, kStreamBasis, seed_lo(seed), seed_hi(seed));
  if (dist == kRademacher) {
    return (r.v[(j >> 5) & 3] >> (j & 31)) & 1u ? -1.0f : 1.0f;
  }
  float v[4];
  values4(dist, r, v);
  return v[j & 3];
}

// ---------------------------------------------------------------- 16-bit floats
// Round-to-nearest-even conversions that match torch's (and IEEE's) behaviour, in plain
// integer/float arithmetic so they vectorize (after Maratyszcza's FP16 library).
FERRET_HD float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }
FERRET_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)(nan ? ((u >> 16) | 0x40u) : r);
}
FERRET_HD float half_to_float(uint16_t h) {
  const uint32_t w = (uint32_t)h << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 1.925929944387236e-34f;  // 2^-112
  const float denormalized = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t res = sign | (two_w < (1u << 27) ? float_to_bits(denormalized) : float_to_bits(normalized));
  return bits_to_float(res);
}
FERRET_HD uint16_t float_to_half(float f) {
  const float abs_f = bits_to_float(float_to_bits(f) & 0x7fffffffu);
  float base = (abs_f * 5.192296858534828e+33f) * 7.703719777548943e-34f;  // * 2^112 * 2^-110
  const uint32_t w = float_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_to_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

}  // namespace ferret
