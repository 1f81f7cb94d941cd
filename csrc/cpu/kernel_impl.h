// Fused CPU kernels for project / reconstruct, written once and compiled per instruction set.
// The including file defines FERRET_ISA (a namespace name) and FERRET_TABLE (the KernelTable
// to define), and sets the target (#pragma GCC target) before including this file.
//
// Structure (per chunk of kChunk elements of one block):
//   project:     load x (- y) into fp32 once, then for each basis k regenerate its values
//                chunk-wise from Philox and reduce them against the cached chunk;
//   reconstruct: for each basis k regenerate its values and accumulate gamma_k * v_k into an
//                fp32 chunk accumulator, then write (or add into) the output once.
// Loops are straight-line, branch-free and marked `omp simd` so the compiler vectorizes
// Philox across word groups; reductions have a fixed order for a given instruction set.
#include <stdint.h>
#include <string.h>

#include "ferret/core.h"
#include "cpu/kernels.h"

#ifndef FERRET_ISA
#error "define FERRET_ISA before including kernel_impl.h"
#endif

namespace ferret {
namespace cpu {
namespace FERRET_ISA {

constexpr int kG128 = kChunk / 128;  // rademacher word groups per chunk
constexpr int kG4 = kChunk / 4;      // uniform/gaussian word groups per chunk

static inline int64_t block_len(int64_t numel, int64_t block_size, int64_t b) {
  const int64_t start = b * block_size;
  const int64_t rest = numel - start;
  return rest < block_size ? rest : block_size;
}

static inline float load_elem(const void* base, int dtype, int64_t i) {
  if (dtype == kF32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return dtype == kBF16 ? bf16_to_float(h) : half_to_float(h);
}

// xf[0, len) = x - y (or x) as fp32, zero-padded to kChunk.
static inline void load_chunk(const ProjectParams& p, int64_t start, int len, float* xf) {
  if (p.dtype == kF32) {
    const float* x = static_cast<const float*>(p.x) + start;
    if (p.y) {
      const float* y = static_cast<const float*>(p.y) + start;
#pragma omp simd
      for (int i = 0; i < len; ++i) xf[i] = x[i] - y[i];
    } else {
      memcpy(xf, x, sizeof(float) * (size_t)len);
    }
  } else {
    const uint16_t* x = static_cast<const uint16_t*>(p.x) + start;
    const uint16_t* y = p.y ? static_cast<const uint16_t*>(p.y) + start : nullptr;
    if (p.dtype == kBF16) {
      if (y) {
#pragma omp simd
        for (int i = 0; i < len; ++i) xf[i] = bf16_to_float(x[i]) - bf16_to_float(y[i]);
      } else {
#pragma omp simd
        for (int i = 0; i < len; ++i) xf[i] = bf16_to_float(x[i]);
      }
    } else {
      if (y) {
#pragma omp simd
        for (int i = 0; i < len; ++i) xf[i] = half_to_float(x[i]) - half_to_float(y[i]);
      } else {
#pragma omp simd
        for (int i = 0; i < len; ++i) xf[i] = half_to_float(x[i]);
      }
    }
  }
  for (int i = len; i < kChunk; ++i) xf[i] = 0.0f;
}

// Rademacher sign words for word groups w0 .. w0 + kG128 - 1 of basis k: bits[q][i].
static inline void rademacher_words(uint32_t w0, uint32_t k, uint32_t g, uint32_t k0, uint32_t k1,
                                    uint32_t bits[4][kG128]) {
#pragma omp simd
  for (int i = 0; i < kG128; ++i) {
    const U32x4 r = philox4x32_10(w0 + (uint32_t)i, k, g, kStreamBasis, k0, k1);
    bits[0][i] = r.v[0];
    bits[1][i] = r.v[1];
    bits[2][i] = r.v[2];
    bits[3][i] = r.v[3];
  }
}

// sum_j v_j x_j over one chunk for basis k; x as fp32 (rademacher) or as 4 planes
// xq[q][i] = x[4 i + q] (uniform / gaussian).
static inline float dot_rademacher(const float* xf, uint32_t w0, uint32_t k, uint32_t g, uint32_t k0, uint32_t k1,
                                   int ngroups) {
  uint32_t bits[4][kG128];
  rademacher_words(w0, k, g, k0, k1, bits);
  float acc[32];
  for (int t = 0; t < 32; ++t) acc[t] = 0.0f;
  for (int i = 0; i < ngroups; ++i) {
    for (int q = 0; q < 4; ++q) {
      const uint32_t wd = bits[q][i];
      const float* xp = xf + i * 128 + q * 32;
#pragma omp simd
      for (int t = 0; t < 32; ++t) acc[t] += rademacher_apply(xp[t], wd, t);
    }
  }
  float s = 0.0f;
  for (int t = 0; t < 32; ++t) s += acc[t];
  return s;
}

static inline float dot_values(int dist, const float* xq, uint32_t w0, uint32_t k, uint32_t g, uint32_t k0, uint32_t k1,
                               int ngroups) {
  const float* x0 = xq;
  const float* x1 = xq + kG4;
  const float* x2 = xq + 2 * kG4;
  const float* x3 = xq + 3 * kG4;
  float s = 0.0f;
  if (dist == kUniform) {
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < ngroups; ++i) {
      const U32x4 r = philox4x32_10(w0 + (uint32_t)i, k, g, kStreamBasis, k0, k1);
      s += uniform_value(r.v[0]) * x0[i] + uniform_value(r.v[1]) * x1[i] + uniform_value(r.v[2]) * x2[i] +
           uniform_value(r.v[3]) * x3[i];
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < ngroups; ++i) {
      const U32x4 r = philox4x32_10(w0 + (uint32_t)i, k, g, kStreamBasis, k0, k1);
      float a, b, c, d;
      gaussian_pair(r.v[0], r.v[1], &a, &b);
      gaussian_pair(r.v[2], r.v[3], &c, &d);
      s += a * x0[i] + b * x1[i] + c * x2[i] + d * x3[i];
    }
  }
  return s;
}

static void project_segment(const ProjectParams& p, int64_t b, int64_t begin, int64_t end, double* acc) {
  const int K = p.num_bases;
  const int kb = p.active ? p.active[b] : K;
  for (int k = 0; k < K; ++k) acc[k] = 0.0;
  if (kb <= 0) return;
  const uint32_t g = p.block_offset + (uint32_t)b;
  const uint32_t k0 = seed_lo(p.seed), k1 = seed_hi(p.seed);
  alignas(64) float xf[kChunk];
  alignas(64) float xq[kChunk];
  const int64_t block_start = b * p.block_size;
  for (int64_t c = begin; c < end; c += kChunk) {
    const int len = (int)((end - c) < kChunk ? (end - c) : kChunk);
    load_chunk(p, block_start + c, len, xf);
    if (p.dist == kRademacher) {
      const int ng = (len + 127) >> 7;
      const uint32_t w0 = (uint32_t)(c >> 7);
      for (int k = 0; k < kb; ++k) acc[k] += (double)dot_rademacher(xf, w0, (uint32_t)k, g, k0, k1, ng);
    } else {
      const int ng = (len + 3) >> 2;
      for (int i = 0; i < kG4; ++i) {
        xq[i] = xf[4 * i];
        xq[kG4 + i] = xf[4 * i + 1];
        xq[2 * kG4 + i] = xf[4 * i + 2];
        xq[3 * kG4 + i] = xf[4 * i + 3];
      }
      const uint32_t w0 = (uint32_t)(c >> 2);
      for (int k = 0; k < kb; ++k) acc[k] += (double)dot_values(p.dist, xq, w0, (uint32_t)k, g, k0, k1, ng);
    }
  }
}

// Writes acc[0, len) (fp32, before scaling) to the output elements starting at `start`.
static inline void store_chunk(const ReconstructParams& p, int64_t start, int len, const float* acc) {
  const float f = p.accumulate ? p.alpha * p.scale : p.scale;
  if (p.dtype == kF32) {
    float* o = static_cast<float*>(p.out) + start;
    if (p.accumulate) {
#pragma omp simd
      for (int i = 0; i < len; ++i) o[i] = o[i] + f * acc[i];
    } else {
#pragma omp simd
      for (int i = 0; i < len; ++i) o[i] = f * acc[i];
    }
    return;
  }
  uint16_t* o = static_cast<uint16_t*>(p.out) + start;
  const bool bf = p.dtype == kBF16;
  if (p.accumulate) {
    if (bf) {
#pragma omp simd
      for (int i = 0; i < len; ++i) o[i] = float_to_bf16(bf16_to_float(o[i]) + f * acc[i]);
    } else {
#pragma omp simd
      for (int i = 0; i < len; ++i) o[i] = float_to_half(half_to_float(o[i]) + f * acc[i]);
    }
  } else {
    if (bf) {
#pragma omp simd
      for (int i = 0; i < len; ++i) o[i] = float_to_bf16(f * acc[i]);
    } else {
#pragma omp simd
      for (int i = 0; i < len; ++i) o[i] = float_to_half(f * acc[i]);
    }
  }
}

static void reconstruct_chunk(const ReconstructParams& p, int64_t b, int64_t begin, int64_t end) {
  const int K = p.num_bases;
  const int kb = p.active ? p.active[b] : K;
  const uint32_t g = p.block_offset + (uint32_t)b;
  const uint32_t k0 = seed_lo(p.seed), k1 = seed_hi(p.seed);
  const float* coeffs = p.coeffs + b * (int64_t)K;
  const int len = (int)(end - begin);
  alignas(64) float acc[kChunk];
  for (int i = 0; i < kChunk; ++i) acc[i] = 0.0f;
  if (p.dist == kRademacher) {
    const int ng = (len + 127) >> 7;
    const uint32_t w0 = (uint32_t)(begin >> 7);
    uint32_t bits[4][kG128];
    for (int k = 0; k < kb; ++k) {
      const float gk = coeffs[k];
      rademacher_words(w0, (uint32_t)k, g, k0, k1, bits);
      for (int i = 0; i < ng; ++i) {
        for (int q = 0; q < 4; ++q) {
          const uint32_t wd = bits[q][i];
          float* ap = acc + i * 128 + q * 32;
#pragma omp simd
          for (int t = 0; t < 32; ++t) ap[t] += rademacher_apply(gk, wd, t);
        }
      }
    }
    store_chunk(p, b * p.block_size + begin, len, acc);
  } else {
    const int ng = (len + 3) >> 2;
    const uint32_t w0 = (uint32_t)(begin >> 2);
    float* a0 = acc;
    float* a1 = acc + kG4;
    float* a2 = acc + 2 * kG4;
    float* a3 = acc + 3 * kG4;
    for (int k = 0; k < kb; ++k) {
      const float gk = coeffs[k];
      if (p.dist == kUniform) {
#pragma omp simd
        for (int i = 0; i < ng; ++i) {
          const U32x4 r = philox4x32_10(w0 + (uint32_t)i, (uint32_t)k, g, kStreamBasis, k0, k1);
          a0[i] += gk * uniform_value(r.v[0]);
          a1[i] += gk * uniform_value(r.v[1]);
          a2[i] += gk * uniform_value(r.v[2]);
          a3[i] += gk * uniform_value(r.v[3]);
        }
      } else {
#pragma omp simd
        for (int i = 0; i < ng; ++i) {
          const U32x4 r = philox4x32_10(w0 + (uint32_t)i, (uint32_t)k, g, kStreamBasis, k0, k1);
          float v0, v1, v2, v3;
          gaussian_pair(r.v[0], r.v[1], &v0, &v1);
          gaussian_pair(r.v[2], r.v[3], &v2, &v3);
          a0[i] += gk * v0;
          a1[i] += gk * v1;
          a2[i] += gk * v2;
          a3[i] += gk * v3;
        }
      }
    }
    alignas(64) float inter[kChunk];
    for (int i = 0; i < kG4; ++i) {
      inter[4 * i] = a0[i];
      inter[4 * i + 1] = a1[i];
      inter[4 * i + 2] = a2[i];
      inter[4 * i + 3] = a3[i];
    }
    store_chunk(p, b * p.block_size + begin, len, inter);
  }
}

static void philox_many(const uint32_t* ctr, int64_t n, uint64_t seed, uint32_t* out) {
  const uint32_t k0 = seed_lo(seed), k1 = seed_hi(seed);
  for (int64_t i = 0; i < n; ++i) {
    const U32x4 r = philox4x32_10(ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3], k0, k1);
    for (int q = 0; q < 4; ++q) out[4 * i + q] = r.v[q];
  }
}

}  // namespace FERRET_ISA

extern const KernelTable FERRET_TABLE;
const KernelTable FERRET_TABLE = {
#define FERRET_STR2(x) #x
#define FERRET_STR(x) FERRET_STR2(x)
    FERRET_STR(FERRET_ISA),
    &FERRET_ISA::project_segment,
    &FERRET_ISA::reconstruct_chunk,
    &FERRET_ISA::philox_many,
};

}  // namespace cpu
}  // namespace ferret
