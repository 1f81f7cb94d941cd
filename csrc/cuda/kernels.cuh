// CUDA kernels for project / reconstruct. Torch-free: they use only the shared core
// (csrc/ferret/core.h) and the plain parameter structs, so CI compiles them with nvcc
// alone (csrc/cuda/compile_check.cu, and launch.cu, the extension's kernel object) and the binding
// (ops.cpp, through launch.h) stays thin and compiles without nvcc.
//
// Mapping: a CTA of kThreads threads owns one chunk of one block; thread t owns kElems
// consecutive elements (rademacher: one Philox output word = 32 elements; uniform/gaussian:
// 4 Philox calls = 16 elements) and keeps them in registers while the K bases sweep.
// Rademacher bases go four at a time: the 4 lanes whose runs share a Philox output each
// compute one basis' output and swap words by shuffles (rademacher_words4).
//   project:     per basis, thread partial -> warp shuffle -> per-warp slots in shared
//                memory -> fixed-order sum -> partial[chunk, k]; a second kernel adds the
//                chunks of a block in order (two passes, no atomics: deterministic). Rademacher
//                reduces a quad of bases in one shuffle tree (half_sum16 + quad_sum), the same
//                adds as one warp_sum per basis.
//   reconstruct: per basis, acc[e] += c_k * v_k[e] in fp32 registers; one store (or
//                read-add-store for the in-place form) at the end, 16-byte vectorized
//                when aligned.
#pragma once

#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "ferret/core.h"
#include "ferret/params.h"

// Every launch goes through this macro: FERRET_LAUNCH(grid, block, stream, kernel)(args...).
// nvcc expands it to the triple-chevron launch; the host emulation used by the tests
// (tests/cuda_emu) defines it first to run the same kernels on CPU threads.
#ifndef FERRET_LAUNCH
#define FERRET_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

namespace ferret {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileK = 32;  // bases reduced together through shared memory

template <int DIST>
struct Layout {
  // elements per thread
  static constexpr int kElems = DIST == kRademacher ? 32 : 16;
  static constexpr int kChunk = kElems * kThreads;
};

// Philox4x32-10 with its 10 round keys computed once per thread (they depend on the seed
// only) instead of once per call: same outputs as philox4x32_10 in core.h. Uniform and
// gaussian threads make 4 calls per basis; their sm_90 loops got 15-20% (uniform) and 5%
// (gaussian) shorter.
struct RoundKeys {
  uint32_t k0[10], k1[10];
};

__device__ __forceinline__ RoundKeys round_keys(uint64_t seed) {
  RoundKeys rk;
  uint32_t k0 = seed_lo(seed), k1 = seed_hi(seed);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    rk.k0[r] = k0;
    rk.k1[r] = k1;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return rk;
}

__device__ __forceinline__ U32x4 philox_keyed(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, const RoundKeys& rk) {
#pragma unroll
  for (int r = 0; r < 10; ++r) philox_round(&c0, &c1, &c2, &c3, rk.k0[r], rk.k1[r]);
  return U32x4{{c0, c1, c2, c3}};
}

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) {
  return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// One 16-byte vector of T widened to fp32 (exact). bf16 by integer ops: a 32-bit word holds elements
// 2i (low half) and 2i + 1 (high half), whose fp32 bits are the word shifted up 16 and the word with
// its low half cleared: one instruction each, where __bfloat162float on the halves of a word compiled
// to a PRMT and a shift for the high one (sm_90, nvcc 13: 16 instructions fewer per rademacher
// project thread).
template <typename T>
__device__ __forceinline__ void widen16(const uint4& raw, float* out) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 16 / (int)sizeof(T); ++i) out[i] = to_f32<T>(e[i]);
}
template <>
__device__ __forceinline__ void widen16<__nv_bfloat16>(const uint4& raw, float* out) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = bits_to_float(w[i] << 16);  // (core.h)
    out[2 * i + 1] = bits_to_float(w[i] & 0xffff0000u);
  }
}

// Loads n consecutive elements starting at p (the first `valid` of them real, the rest 0) as
// fp32, with 16-byte loads when the whole run is valid and aligned.
template <typename T, int N>
__device__ __forceinline__ void load_run(const T* __restrict__ p, int64_t valid, float (&out)[N]) {
  constexpr int kPer16 = 16 / sizeof(T);
  static_assert(N % kPer16 == 0, "run must be a whole number of 16-byte vectors");
  if (valid >= N && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
#pragma unroll
    for (int v = 0; v < N / kPer16; ++v) {
      widen16<T>(__ldg(reinterpret_cast<const uint4*>(p) + v), out + v * kPer16);
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = i < valid ? to_f32<T>(p[i]) : 0.0f;
  }
}

// x - y over the run, converted one 16-byte vector pair at a time (no second N-float array:
// that one pushed the 64-register project build into spills).
template <typename T, int N>
__device__ __forceinline__ void load_diff_run(const T* __restrict__ p, const T* __restrict__ q, int64_t valid,
                                              float (&out)[N]) {
  constexpr int kPer16 = 16 / sizeof(T);
  static_assert(N % kPer16 == 0, "run must be a whole number of 16-byte vectors");
  if (valid >= N && ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(q)) & 15) == 0) {
#pragma unroll
    for (int v = 0; v < N / kPer16; ++v) {
      float a[kPer16], b[kPer16];
      widen16<T>(__ldg(reinterpret_cast<const uint4*>(p) + v), a);
      widen16<T>(__ldg(reinterpret_cast<const uint4*>(q) + v), b);
#pragma unroll
      for (int i = 0; i < kPer16; ++i) out[v * kPer16 + i] = a[i] - b[i];
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = i < valid ? to_f32<T>(p[i]) - to_f32<T>(q[i]) : 0.0f;
  }
}

// project's input at flat index `start`: x, or x - y where y is given (load_run / load_diff_run).
template <typename T, int N>
__device__ __forceinline__ void load_input(const T* __restrict__ xs, const T* __restrict__ ys, int64_t start,
                                           int64_t valid, float (&out)[N]) {
  if (ys)
    load_diff_run<T, N>(xs + start, ys + start, valid, out);
  else
    load_run<T, N>(xs + start, valid, out);
}

template <typename T, int N>
__device__ __forceinline__ void store_run(T* __restrict__ p, int64_t valid, const float (&v)[N], bool accumulate,
                                          float f) {
  constexpr int kPer16 = 16 / sizeof(T);
  if (valid >= N && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
#pragma unroll
    for (int w = 0; w < N / kPer16; ++w) {
      uint4 raw;
      if (accumulate) raw = *(reinterpret_cast<const uint4*>(p) + w);
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer16; ++i) {
        const float r = f * v[w * kPer16 + i];
        e[i] = from_f32<T>(accumulate ? to_f32<T>(e[i]) + r : r);
      }
      *(reinterpret_cast<uint4*>(p) + w) = raw;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i < valid) {
        const float r = f * v[i];
        p[i] = from_f32<T>(accumulate ? to_f32<T>(p[i]) + r : r);
      }
    }
  }
}

// xor_order(v, q): v.v[m ^ q] at position m (q in 0..3), by two swap layers: pairs when q & 1, then
// halves when q & 2, four selects on one predicate each. A 4-way pick per position (what this was)
// took as many selects but needed both bits of q ^ m for every m, which ptxas built into a mask
// word before the loop and tested again every trip (the negsums' R2P overwrite the predicates):
// one thread's path through the bf16 K = 4 project 507 -> 492 instructions (sm_90, nvcc 13).
__device__ __forceinline__ U32x4 xor_order(const U32x4& v, int q) {
  const bool s1 = q & 1, s2 = q & 2;
  const uint32_t a0 = s1 ? v.v[1] : v.v[0], a1 = s1 ? v.v[0] : v.v[1];
  const uint32_t a2 = s1 ? v.v[3] : v.v[2], a3 = s1 ? v.v[2] : v.v[3];
  return U32x4{{s2 ? a2 : a0, s2 ? a3 : a1, s2 ? a0 : a2, s2 ? a1 : a3}};
}

// Rademacher sign words of bases kq .. kq + 3 for the thread's 32 elements j0 .. j0 + 31.
// One Philox output covers 128 elements, i.e. the runs of 4 consecutive lanes (a quad; lane
// q = threadIdx.x & 3 owns word q). Instead of each lane computing the whole output and
// keeping one word, lane q computes basis kq + q's output and the quad swaps words in three
// xor-shuffles, so every Philox output is computed once. All 32 lanes of the warp must call it.
__device__ __forceinline__ void rademacher_words4(int64_t j0, uint32_t kq, uint32_t g, uint32_t k0, uint32_t k1,
                                                  uint32_t (&w)[4]) {
  const int q = (int)(threadIdx.x & 3);  // == (j0 >> 5) & 3: a chunk is a whole number of quads
  const U32x4 r = philox4x32_10<true>((uint32_t)(j0 >> 7), kq + (uint32_t)q, g, kStreamBasis, k0, k1);
  const U32x4 send = xor_order(r, q);  // send.v[m]: lane q ^ m's word of our basis
  U32x4 got;                           // got.v[m]: word q of basis kq + (q ^ m), from lane q ^ m
#pragma unroll
  for (int m = 0; m < 4; ++m) got.v[m] = m == 0 ? send.v[0] : __shfl_xor_sync(0xffffffffu, send.v[m], m);
  const U32x4 b = xor_order(got, q);  // back to basis order, no dynamic indexing
#pragma unroll
  for (int j = 0; j < 4; ++j) w[j] = b.v[j];
}

// Basis k at the thread's kElems elements (element e is at in-block index j0 + e) applied
// to x: returns sum_e v[e] * x[e] (project) or adds c * v[e] into acc[e] (reconstruct).
// Rademacher takes the basis' sign word (rademacher_words4); the others regenerate it here.
//
// rademacher_negsum: the sum of the elements whose sign bit is set (the basis' -1 entries), by
// predicated adds; the basis' dot with x is then total - 2 * negsum (2 * negsum is exact: one
// rounding). Per element and basis that is a bit test into a predicate (ptxas packs 8 into one
// R2P) and an add, where flipping sign bits took a shift, a sign xor and an add: the sm_90 loop
// over 4 bases went from 570 to 362 instructions (timings: ProjectLaunch). Results moved by at
// most 1.4e-7 of the largest partial sum (K = 4; 1.9e-7 at K = 64) from the sign-flip sums.
template <int N>
__device__ __forceinline__ float rademacher_negsum(uint32_t wd, const float (&x)[N], float s = 0.0f) {
#pragma unroll
  for (int t = 0; t < 32; ++t) {
#ifdef __CUDA_ARCH__
    asm("{\n\t.reg .pred p;\n\t.reg .b32 m;\n\tand.b32 m, %1, %2;\n\tsetp.ne.b32 p, m, 0;\n\t"
        "@p add.rn.f32 %0, %0, %3;\n\t}"
        : "+f"(s)
        : "r"(wd), "r"(1u << t), "f"(x[t]));
#else
    if ((wd >> t) & 1u) s += x[t];
#endif
  }
  return s;
}

// rademacher_axpy: acc[t] += c, or - c where bit t of the basis' word is set, as two predicated adds
// on one bit test (ptxas packs the tests into R2P): a - c is a + (-c), so the sums are those of
// adding rademacher_apply's sign-flipped c (same bits), which took a shift, a sign xor and an add
// per element (sm_90 SASS, nvcc 13: the reconstruct_ loop over a quad of bases 471 -> 384).
template <int N>
__device__ __forceinline__ void rademacher_axpy(uint32_t wd, float c, float (&acc)[N]) {
#pragma unroll
  for (int t = 0; t < 32; ++t) {
#ifdef __CUDA_ARCH__
    asm("{\n\t.reg .pred p;\n\t.reg .b32 m;\n\tand.b32 m, %1, %2;\n\tsetp.ne.b32 p, m, 0;\n\t"
        "@p sub.rn.f32 %0, %0, %3;\n\t@!p add.rn.f32 %0, %0, %3;\n\t}"
        : "+f"(acc[t])
        : "r"(wd), "r"(1u << t), "f"(c));
#else
    acc[t] += rademacher_apply(c, wd, t);
#endif
  }
}

template <int DIST, int N>
__device__ __forceinline__ float basis_dot(int64_t j0, uint32_t k, uint32_t g, const RoundKeys& rk,
                                           const float (&x)[N]) {
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < N / 4; ++c) {
    const U32x4 r = philox_keyed((uint32_t)((j0 >> 2) + c), k, g, kStreamBasis, rk);
    float v[4];
    values4(DIST, r, v);
#pragma unroll
    for (int i = 0; i < 4; ++i) s += v[i] * x[c * 4 + i];
  }
  return s;
}

template <int DIST, int N>
__device__ __forceinline__ void basis_axpy(int64_t j0, uint32_t k, uint32_t g, const RoundKeys& rk, float c,
                                           float (&acc)[N]) {
#pragma unroll
  for (int cc = 0; cc < N / 4; ++cc) {
    const U32x4 r = philox_keyed((uint32_t)((j0 >> 2) + cc), k, g, kStreamBasis, rk);
    float v[4];
    values4(DIST, r, v);
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[cc * 4 + i] += c * v[i];
  }
}

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// warp_sum of four values at once, lane l getting warp_sum(d_{(l >> 3) & 3}) bit for bit, in 6 shuffles
// and 6 adds where four warp_sums take 20 and 20. After each step of warp_sum's xor tree the lanes it
// has combined hold the same value (a + b == b + a), so a lane can drop the values its partner keeps:
// at distance 16 a lane keeps bases 0, 1 (or 2, 3) and sends the other two (half_sum16, a pair a call),
// at 8 it keeps one of its two, then the tree's last three steps (quad_sum). Why: in the K = 4
// rademacher project the four warp_sums and their four shared-memory stores were about 80 of the ~640
// instructions a thread issued (sm_90 SASS, nvcc 13), and the H200's ncu run found that kernel issue
// bound (results/gpu_check/2026-11-27T2107-h200-summary.md).
__device__ __forceinline__ float half_sum16(float lo, float hi) {  // the step at 16 for bases (lo, hi)
  const bool h16 = threadIdx.x & 16;
  return (h16 ? hi : lo) + __shfl_xor_sync(0xffffffffu, h16 ? lo : hi, 16);
}

__device__ __forceinline__ float quad_sum(float a02, float a13) {  // a02 = half_sum16(d0, d2), a13 likewise
  const bool h8 = threadIdx.x & 8;
  float a = (h8 ? a13 : a02) + __shfl_xor_sync(0xffffffffu, h8 ? a02 : a13, 8);
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
  return a;
}

// A thread's run of N elements of T as raw 16-byte words, fetched ahead of use (prefetch) when
// the run is whole and 16-byte aligned; `full` false: read element-wise at unpack time.
template <typename T, int N>
struct RawRun {
  static constexpr int kVec = N * (int)sizeof(T) / 16;
  uint4 raw[kVec];
  bool full;
};

template <typename T, int N>
__device__ __forceinline__ void fetch_run(const T* __restrict__ p, int64_t valid, RawRun<T, N>& r) {
  r.full = valid >= N && (reinterpret_cast<uintptr_t>(p) & 15) == 0;
  if (r.full) {
#pragma unroll
    for (int v = 0; v < RawRun<T, N>::kVec; ++v) r.raw[v] = __ldg(reinterpret_cast<const uint4*>(p) + v);
  }
}

template <typename T, int N>
__device__ __forceinline__ void unpack_run(const T* __restrict__ p, int64_t valid, const RawRun<T, N>& r,
                                           float (&out)[N]) {
  constexpr int kPer16 = 16 / sizeof(T);
  if (r.full) {
#pragma unroll
    for (int v = 0; v < RawRun<T, N>::kVec; ++v) widen16<T>(r.raw[v], out + v * kPer16);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = i < valid ? to_f32<T>(p[i]) : 0.0f;
  }
}

// A hint that leaves every result as it was: thread 0 of a CTA asks the TMA unit to bring [p, p + bytes)
// into L2 (sm_90 cp.async.bulk.prefetch.L2: one instruction, no registers held, nothing to wait for),
// trimmed to the whole 16-byte units inside the range (the instruction's alignment rule; a range with
// none asks for nothing: its size would be negative). At most kPrefetchMaxBytes: the PTX ISA states no
// limit, but sm_90 SASS (nvcc 13) encodes the size as 16 bits of 16-byte units, so a larger size
// would wrap. Elsewhere it does nothing, except in the host emulation (tests/cuda_emu), which reads
// the first and last bytes of the range the device would be asked for, so that AddressSanitizer sees
// a prefetch reaching outside its tensor.
constexpr int64_t kPrefetchMaxBytes = (int64_t(1) << 20) - 16;

__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes) {
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + 15) & ~uintptr_t(15);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + (uintptr_t)max(bytes, (int64_t)0)) & ~uintptr_t(15);
  if (e <= a) return;
  const uint32_t n = (uint32_t)(e - a);
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(__cvta_generic_to_global(reinterpret_cast<void*>(a))),
               "r"(n)
               : "memory");
#else
  (void)n;  // no bulk prefetch before sm_90
#endif
#else
  volatile const char* q = reinterpret_cast<volatile const char*>(a);
  (void)q[0];
  (void)q[n - 1];
#endif
}

// Chunk `chunk` of project's flat input (x, and y when set) into L2 (prefetch_l2); nothing for a
// chunk past the last one or wholly past the data (the last block's tail chunks).
template <typename T, int DIST>
__device__ __forceinline__ void prefetch_chunk_l2(const ProjectParams& p, int64_t chunk, int64_t chunks_per_block,
                                                  int64_t num_chunks) {
  using L = Layout<DIST>;
  static_assert(L::kChunk * (int64_t)sizeof(T) <= kPrefetchMaxBytes, "a chunk must fit one bulk prefetch");
  if (chunk < 0 || chunk >= num_chunks) return;
  // 32-bit division (a grid has fewer than 2^31 CTAs): the 64-bit one made the kernels spill at 64 registers
  const uint32_t c = (uint32_t)chunk, cpb = (uint32_t)chunks_per_block;
  const int64_t b = c / cpb, cs = (int64_t)(c % cpb) * L::kChunk;
  const int64_t len = min((int64_t)L::kChunk, min(p.block_size, p.numel - b * p.block_size) - cs);
  if (len <= 0) return;
  const int64_t start = b * p.block_size + cs;
  prefetch_l2(static_cast<const T*>(p.x) + start, len * (int64_t)sizeof(T));
  if (p.y) prefetch_l2(static_cast<const T*>(p.y) + start, len * (int64_t)sizeof(T));
}

// One chunk's partial sums: part[cta, k] = sum over the chunk of v_k * x, for k < the block's
// active count; x holds the thread's elements (valid <= 0: past the block's end).
template <int DIST, int N>
__device__ __forceinline__ void project_chunk(const ProjectParams& p, int64_t cta, int64_t b, int64_t j0, int64_t valid,
                                              const float (&x)[N], float* part, float (&red)[kWarps][kTileK]) {
  const int K = p.num_bases;
  const int kb = p.active ? min(max(p.active[b], 0), K) : K;  // clamped: never past part's row
  const uint32_t g = p.block_offset + (uint32_t)b;
  const uint32_t k0 = seed_lo(p.seed), k1 = seed_hi(p.seed);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float total = 0.0f;  // rademacher: the thread's sum, once for all bases
  if constexpr (DIST == kRademacher) {
#pragma unroll
    for (int t = 0; t < N; ++t) total += x[t];
  }
  for (int kt = 0; kt < kb; kt += kTileK) {
    const int kn = min(kTileK, kb - kt);  // uniform across the CTA: every lane runs the shuffles
    if constexpr (DIST == kRademacher) {
      // A thread past the data holds x = 0 (every caller's load leaves them 0), so its dots are
      // total - 2 * negsum = +0 - 2 * +0 = +0, the 0 it added before without computing them: no
      // branch per basis. Bases past kn in the last quad are not computed (kn is uniform).
      (void)valid;
      for (int i = 0; i < kn; i += 4) {
        uint32_t w[4];
        rademacher_words4(j0, (uint32_t)(kt + i), g, k0, k1, w);
        float d[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) d[j] = i + j < kn ? total - 2.0f * rademacher_negsum(w[j], x) : 0.0f;
        const float a02 = half_sum16(d[0], d[2]);
        const float s = quad_sum(a02, half_sum16(d[1], d[3]));
        const int j = (lane >> 3) & 3;  // the quad's basis whose warp sum this lane holds
        if ((lane & 7) == 0 && i + j < kn) red[warp][i + j] = s;
      }
    } else {
      const RoundKeys rk = round_keys(p.seed);
      for (int i = 0; i < kn; ++i) {
        const float s = warp_sum(valid > 0 ? basis_dot<DIST>(j0, (uint32_t)(kt + i), g, rk, x) : 0.0f);
        if (lane == 0) red[warp][i] = s;
      }
    }
    __syncthreads();
    if ((int)threadIdx.x < kn) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[w][threadIdx.x];
      part[cta * K + kt + threadIdx.x] = s;
    }
    __syncthreads();
  }
}

// CTA c of a launch of `per` CTAs a block: its block (b) and its place in the block (returned). 32-bit
// division: the binding holds a launch to fewer than 2^31 CTAs (check_grid), and the 64-bit one cost a
// branch on the divisor's high word and, in the fp32 rademacher build, a register spill. Blocks of 2^m
// elements (the usual) have a power of two of chunks (and spans): a shift and a mask, where the division
// took 16 instructions (sm_90, nvcc 13); the test is uniform across the launch.
__device__ __forceinline__ uint32_t split_cta(uint32_t c, uint32_t per, int64_t& b) {
  if ((per & (per - 1)) == 0) {
    b = c >> __popc(per - 1);
    return c & (per - 1);
  }
  b = c / per;
  return c % per;
}

// Where chunk `cta` of the flat input starts, for this thread.
template <int DIST>
struct ChunkPos {
  int64_t b, j0, start, valid;
  __device__ __forceinline__ ChunkPos(const ProjectParams& p, int64_t cta, int64_t chunks_per_block) {
    using L = Layout<DIST>;
    const uint32_t r = split_cta((uint32_t)cta, (uint32_t)chunks_per_block, b);
    j0 = (int64_t)r * L::kChunk + (int64_t)threadIdx.x * L::kElems;  // in-block
    const int64_t blk_len = min(p.block_size, p.numel - b * p.block_size);
    start = b * p.block_size + j0;
    valid = blk_len - j0;
  }
};

// One chunk a CTA (chunk blockIdx.x): its partial sums into part; returns the chunk's block.
template <typename T, int DIST>
__device__ __forceinline__ int64_t project_own_chunk(const ProjectParams& p, int64_t chunks_per_block, float* part,
                                                     float (&red)[kWarps][kTileK]) {
  using L = Layout<DIST>;
  const T* xs = static_cast<const T*>(p.x);
  const T* ys = static_cast<const T*>(p.y);
  const int64_t cta = (int64_t)blockIdx.x;
  const ChunkPos<DIST> c(p, cta, chunks_per_block);
  float x[L::kElems];
  load_input<T>(xs, ys, c.start, c.valid, x);
  project_chunk<DIST>(p, cta, c.b, c.j0, c.valid, x, part, red);
  return c.b;
}

// Grid: ceil(num_chunks / CHUNKS), num_chunks = num_blocks * chunks_per_block. part: [num_chunks, K].
// A CTA handles CHUNKS consecutive chunks, fetching the next chunk's data before it works on the
// current one (memory and arithmetic overlap inside the CTA, not only across CTAs); MIN_BLOCKS is
// the occupancy target given to the register allocator. Neither changes any result: each chunk's
// partial sums are computed the same way, so every variant is bit-identical to CHUNKS = 1.
template <typename T, int DIST, int MIN_BLOCKS = 1, int CHUNKS = 1>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS)
    project_kernel(ProjectParams p, int64_t chunks_per_block, int64_t num_chunks, float* part) {
  using L = Layout<DIST>;
  __shared__ float red[kWarps][kTileK];
  if constexpr (CHUNKS == 1) {
    project_own_chunk<T, DIST>(p, chunks_per_block, part, red);
  } else {
    const T* xs = static_cast<const T*>(p.x);
    const T* ys = static_cast<const T*>(p.y);
    const int64_t first = (int64_t)blockIdx.x * CHUNKS;
    const int64_t last = min(first + (int64_t)CHUNKS, num_chunks);
    RawRun<T, L::kElems> xr, yr;
    yr.full = false;  // read only with y, where fetch_run sets it (g++ -Wmaybe-uninitialized cannot tell)
    {
      const ChunkPos<DIST> c(p, first, chunks_per_block);
      fetch_run<T, L::kElems>(xs + c.start, c.valid, xr);
      if (ys) fetch_run<T, L::kElems>(ys + c.start, c.valid, yr);
    }
    for (int64_t cta = first; cta < last; ++cta) {
      const ChunkPos<DIST> c(p, cta, chunks_per_block);
      float x[L::kElems];
      unpack_run<T, L::kElems>(xs + c.start, c.valid, xr, x);
      if (ys) {
        float y[L::kElems];
        unpack_run<T, L::kElems>(ys + c.start, c.valid, yr, y);
#pragma unroll
        for (int i = 0; i < L::kElems; ++i) x[i] -= y[i];
      }
      if (cta + 1 < last) {  // the next chunk's loads go out before this chunk's arithmetic
        const ChunkPos<DIST> nx(p, cta + 1, chunks_per_block);
        fetch_run<T, L::kElems>(xs + nx.start, nx.valid, xr);
        if (ys) fetch_run<T, L::kElems>(ys + nx.start, nx.valid, yr);
      }
      project_chunk<DIST>(p, cta, c.b, c.j0, c.valid, x, part, red);
    }
  }
}

// A candidate for K <= 4 rademacher (one quad of bases), not what ProjectLaunch runs: each thread takes
// RUNS runs of 32 elements, run r at in-block j0 + r * kChunk (the CTA covers RUNS consecutive chunks, "a
// span", one partial-sum row), and carries its sums from run to run: the lane's total and its four
// negsums add the RUNS x 32 elements in order, run 0's first, and the span's four dots go through the
// shuffle tree and shared memory once. Why: in project_kernel a thread's chunk setup, active count,
// Philox key schedule, tree, shared-memory sums and barriers are ~190 of the ~480 instructions it issues
// for 32 elements at K = 4 (sm_90 SASS, nvcc 13; benchmarks/sass_path.py), and the H200 found that kernel
// issue bound; RUNS runs share them. Holding the next run's loads in registers (project_kernel's
// CHUNKS) spilled at 64 registers; this keeps one run's 32 floats and four more accumulators. Other
// bits than project_kernel's (its per-lane sums cover 32 elements): conftest's order model with
// runs=RUNS states them. Bases past the block's active count are computed (the quad is one Philox
// output a lane) and not stored.
template <typename T, int RUNS, int MIN_BLOCKS = 1>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS)
    project_quad_kernel(ProjectParams p, int64_t spans_per_block, float* part) {
  using L = Layout<kRademacher>;
  __shared__ float red[kWarps][4];
  const T* xs = static_cast<const T*>(p.x);
  const T* ys = static_cast<const T*>(p.y);
  const int64_t span = (int64_t)blockIdx.x;
  int64_t b;
  const uint32_t r = split_cta((uint32_t)span, (uint32_t)spans_per_block, b);
  const int kb = p.active ? min(max(p.active[b], 0), p.num_bases) : p.num_bases;  // clamped: never past the row
  if (kb <= 0) return;  // uniform across the CTA; the row stays as the host left it (zeros)
  const int64_t blk_len = min(p.block_size, p.numel - b * p.block_size);
  const int64_t j00 = (int64_t)r * (RUNS * L::kChunk) + (int64_t)threadIdx.x * L::kElems;  // in-block, run 0
  const uint32_t g = p.block_offset + (uint32_t)b;
  const uint32_t k0 = seed_lo(p.seed), k1 = seed_hi(p.seed);
  float total = 0.0f, neg[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  // the runs unrolled for 16-bit x (bf16, 2 runs: 774 -> 752 instructions a thread), rolled for fp32,
  // whose unrolled builds spilled 12 bytes at 64 registers (ptxas, sm_90, nvcc 13), and before sm_90
  // for 4 runs (bf16 spilled 24 bytes for sm_80)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  [[maybe_unused]] constexpr int kUnroll = sizeof(T) == 4 || RUNS > 2 ? 1 : RUNS;
#else
  [[maybe_unused]] constexpr int kUnroll = sizeof(T) == 4 ? 1 : RUNS;  // (g++, the emulator: no pragma)
#endif
#pragma unroll kUnroll
  for (int run = 0; run < RUNS; ++run) {
    const int64_t j0 = j00 + (int64_t)run * L::kChunk;
    const int64_t start = b * p.block_size + j0, valid = blk_len - j0;
    float x[L::kElems];
    load_input<T>(xs, ys, start, valid, x);
#pragma unroll
    for (int t = 0; t < L::kElems; ++t) total += x[t];
    uint32_t w[4];
    rademacher_words4(j0, 0u, g, k0, k1, w);  // every lane: a lane past the data holds x = 0
#pragma unroll
    for (int j = 0; j < 4; ++j) neg[j] = rademacher_negsum(w[j], x, neg[j]);
  }
  float d[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) d[j] = total - 2.0f * neg[j];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float a02 = half_sum16(d[0], d[2]);
  const float s = quad_sum(a02, half_sum16(d[1], d[3]));
  const int j = (lane >> 3) & 3;  // the basis whose warp sum this lane holds
  if ((lane & 7) == 0) red[warp][j] = s;
  __syncthreads();
  if ((int)threadIdx.x < kb) {
    float t = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += red[w][threadIdx.x];
    part[span * p.num_bases + threadIdx.x] = t;
  }
}

// A candidate, not what ProjectLaunch runs: project_kernel's one chunk a CTA, whose thread 0 first
// asks for the chunk `ahead` CTAs on to be brought into L2 (prefetch_chunk_l2; `ahead` about the CTAs
// resident at once: the CTA that reads it runs about a wave later). Why: on an H100 the shipped first
// pass alone reads at 1.01x a read kernel with one 16-byte load in flight per thread (0.854 of copy)
// and a read kernel with four in flight reaches 0.99 (results/cuda_project_variants.csv, 2026-11-27):
// the first pass is short of loads in flight, and more of them in registers cost occupancy (CHUNKS
// > 1, the packed-run kernel: slower). A bulk prefetch holds no register; the CTA's own loads then hit
// L2. The sums are project_kernel's (same bits); benchmarks/cuda_project_variants.cu times it ("pf_*").
template <typename T, int DIST, int MIN_BLOCKS = 1>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS)
    project_prefetch_kernel(ProjectParams p, int64_t chunks_per_block, int64_t num_chunks, int64_t ahead, float* part) {
  __shared__ float red[kWarps][kTileK];
  if (threadIdx.x == 0) prefetch_chunk_l2<T, DIST>(p, (int64_t)blockIdx.x + ahead, chunks_per_block, num_chunks);
  project_own_chunk<T, DIST>(p, chunks_per_block, part, red);
}

// The second pass: out[b, k] = scale * the sum of block b's chunk partials part[b * cpb + c, k].
// One warp per (b, k), grid-strided: lane l adds chunks l, l + 32, ... in order, then warp_sum's
// fixed xor tree; every launch adds in the same order (deterministic). A thread per (b, k) adding
// all cpb chunks in a chain (what ran before) left most of the GPU idle at small K: on an H100 SXM
// (bf16 n = 2^28, block 2^20, 128 chunks a block) that pass and its launch took 17.5 us of the K = 4
// project's 0.2297 ms, and this one saved 14 us at K = 4, 31 us at K = 16 and 4 us at K = 64
// (results/cuda_project_variants.csv, pk_mb3_ch4 against pk_mb3_ch4_wr, 2026-11-27).
//
// block_basis_sum is that order, for one (b, k) and one full warp: every kernel that adds a block's
// partials calls it, so they all give the same bits. L2: load through L2 only (__ldcg), for a
// caller that reads partials other CTAs of the same launch wrote (project_fused_kernel); the
// second pass reads them with plain loads, as before.
template <bool L2 = false>
__device__ __forceinline__ float block_basis_sum(const float* part, int64_t chunks_per_block, int K, int64_t b, int k) {
  float s = 0.0f;
  for (int64_t c = threadIdx.x & 31; c < chunks_per_block; c += 32) {
    const float* q = part + (b * chunks_per_block + c) * K + k;
    s += L2 ? __ldcg(q) : *q;
  }
  return warp_sum(s);
}

// The second pass's body: a warp per (b, k) of rows x K, grid-strided.
__device__ __forceinline__ void reduce_rows(const float* part, int64_t chunks_per_block, int64_t rows, int K,
                                            float scale, float* out) {
  const int64_t warps = (int64_t)gridDim.x * kWarps;
  for (int64_t w = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5); w < rows * K; w += warps) {  // warp-uniform
    const float s = block_basis_sum(part, chunks_per_block, K, w / K, (int)(w % K));
    if ((threadIdx.x & 31) == 0) out[w] = s * scale;
  }
}

__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const float* part, int64_t chunks_per_block, int64_t rows, int K, float scale, float* out) {
  reduce_rows(part, chunks_per_block, rows, K, scale, out);
}

// A candidate, not what ProjectLaunch runs: both passes in one launch. After its chunk's partial
// sums a CTA takes a ticket for its block (a fence, then one atomic add); the CTA that takes the
// block's last ticket adds that block's partials with block_basis_sum, reduce_kernel's order, so
// the output has the two-pass launch's bits whichever CTA comes last, and it resets the ticket
// (tickets: num_blocks words, zero before the launch and after it). That saves the second launch
// and lets the sums of a block that finishes early overlap other blocks' loads, for a fence and an
// atomic per CTA; benchmarks/cuda_project_variants.cu times it ("fused_mb4") beside the shipped
// two passes. The shipped first pass alone took 0.2122 ms of the two passes' 0.2297 (H100, bf16
// n = 2^28, K = 4, the second pass before the warp-per-basis one).
//
// PREFETCH: thread 0 first prefetches the chunk `ahead` CTAs on, as project_prefetch_kernel (a template
// argument, so that the build without it is the one the fused_mb4 rows time).
template <typename T, int DIST, int MIN_BLOCKS = 1, bool PREFETCH = false>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS)
    project_fused_kernel(ProjectParams p, int64_t chunks_per_block, float* part, unsigned* tickets, int64_t ahead) {
  __shared__ float red[kWarps][kTileK];
  __shared__ bool last;
  if (PREFETCH && threadIdx.x == 0)
    prefetch_chunk_l2<T, DIST>(p, (int64_t)blockIdx.x + ahead, chunks_per_block, (int64_t)gridDim.x);
  const int64_t b = project_own_chunk<T, DIST>(p, chunks_per_block, part, red);
  // As cooperative groups' grid barrier: a CTA barrier orders the CTA's partial-sum stores before
  // thread 0's fence, whose release covers them (cumulative), then the ticket; the last CTA's thread 0
  // fences again (acquire) before the barrier after which the CTA reads the other CTAs' partials. One
  // fence per CTA, not one per warp. The emulator runs one CTA at a time, so it cannot show a missing
  // fence (a planted one passes its tests): only bit-identity on a GPU can.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(tickets + b, 1u) == (unsigned)(chunks_per_block - 1);
    if (last) __threadfence();
  }
  __syncthreads();
  if (!last) return;                                              // uniform across the CTA
  for (int k = threadIdx.x >> 5; k < p.num_bases; k += kWarps) {  // warp-uniform
    const float s = block_basis_sum<true>(part, chunks_per_block, p.num_bases, b, k);
    if ((threadIdx.x & 31) == 0) p.out[b * p.num_bases + k] = s * p.scale;
  }
  if (threadIdx.x == 0) tickets[b] = 0;
}

// acc[e] = sum over bases k < kb of coeffs[k] * v_k at the thread's elements (j0 .. j0 + kElems - 1
// of block g). Rademacher lanes past the end of the data must still call it (their quad's word
// exchange); kb is uniform across the CTA.
template <int DIST, int N>
__device__ __forceinline__ void reconstruct_acc(int64_t j0, int kb, uint32_t g, uint64_t seed,
                                                const float* __restrict__ coeffs, float (&acc)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] = 0.0f;
  if constexpr (DIST == kRademacher) {
    const uint32_t k0 = seed_lo(seed), k1 = seed_hi(seed);
    for (int k = 0; k < kb; k += 4) {
      uint32_t w[4];
      rademacher_words4(j0, (uint32_t)k, g, k0, k1, w);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (k + j < kb) rademacher_axpy(w[j], __ldg(coeffs + k + j), acc);
    }
  } else {
    const RoundKeys rk = round_keys(seed);
    for (int k = 0; k < kb; ++k) basis_axpy<DIST>(j0, (uint32_t)k, g, rk, __ldg(coeffs + k), acc);
  }
}

template <typename T, int DIST>
__global__ void __launch_bounds__(kThreads) reconstruct_kernel(ReconstructParams p, int64_t chunks_per_block) {
  using L = Layout<DIST>;
  const int64_t cta = (int64_t)blockIdx.x;
  const int64_t b = cta / chunks_per_block;
  const int64_t j0 = (cta % chunks_per_block) * L::kChunk + (int64_t)threadIdx.x * L::kElems;
  const int64_t blk_len = min(p.block_size, p.numel - b * p.block_size);
  const int64_t valid = blk_len - j0;
  // rademacher lanes past the end still take part in their quad's word exchange
  if (DIST != kRademacher && valid <= 0) return;
  const int K = p.num_bases;
  const int kb = p.active ? min(max(p.active[b], 0), K) : K;  // clamped: never past the coeffs row
  float acc[L::kElems];
  reconstruct_acc<DIST>(j0, kb, p.block_offset + (uint32_t)b, p.seed, p.coeffs + b * (int64_t)K, acc);
  if (valid <= 0) return;
  const float f = p.accumulate ? p.alpha * p.scale : p.scale;
  store_run<T, L::kElems>(static_cast<T*>(p.out) + b * p.block_size + j0, valid, acc, p.accumulate, f);
}

// ------------------------------------------------------------------ lists of tensors
// project_multi / reconstruct_multi_: one launch for many tensors (a model's parameters). Launch
// row r is block r - s.launch_row of segment s; every row has chunks_per_block CTAs, as in the
// one-tensor kernels, so each chunk's partial sums and each element's value are computed exactly
// as there (bit-identical to a loop of one-tensor calls). A CTA whose chunk lies wholly outside
// its tensor (the front of a block a tensor starts inside, the rest of a short last block) only
// writes zeros; per element, a thread's run is read and written inside [0, numel) only.

// The segment holding launch row r: the last one whose launch_row <= r (segs ascending, the
// table is a few KB and stays in L1 across the CTAs of an SM).
__device__ __forceinline__ int find_segment(const Segment* __restrict__ segs, int n, int64_t r) {
  int lo = 0, hi = n;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (__ldg(&segs[mid].launch_row) <= r)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// Where CTA `cta` of a list launch works: its segment, block j of it (global row `row`), the
// in-block start j0 of this thread's run and the run's valid range [lo, hi) in it (element i of
// the run is tensor element e + i).
template <int DIST>
struct MultiPos {
  const Segment* s;
  int64_t j, row, j0, e, lo, hi;
  bool empty;  // the CTA's whole chunk is outside the tensor (uniform across the CTA)
  __device__ __forceinline__ MultiPos(const MultiParams& p, int64_t cta, int64_t cpb) {
    using L = Layout<DIST>;
    const int64_t lr = cta / cpb;
    s = p.segs + find_segment(p.segs, p.num_segs, lr);
    const int64_t lead = s->lead, numel = s->numel;
    j = lr - s->launch_row;
    row = s->row + j;
    const int64_t cs = (cta % cpb) * L::kChunk;
    const int64_t blo = j == 0 ? lead : 0, bhi = min(p.block_size, lead + numel - j * p.block_size);
    empty = cs >= bhi || cs + L::kChunk <= blo;
    j0 = cs + (int64_t)threadIdx.x * L::kElems;
    e = j * p.block_size + j0 - lead;
    lo = max((int64_t)0, -e);
    hi = min(min((int64_t)L::kElems, numel - e), p.block_size - j0);  // this tensor, this block
  }
};

template <typename T, int N>
__device__ __forceinline__ void load_span(const T* __restrict__ x, const T* __restrict__ y, int64_t e, int64_t lo,
                                          int64_t hi, float (&out)[N]) {
  if (lo == 0 && hi >= N) {
    if (y)
      load_diff_run<T, N>(x + e, y + e, N, out);
    else
      load_run<T, N>(x + e, N, out);
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = i >= lo && i < hi ? to_f32<T>(x[e + i]) : 0.0f;
  if (y) {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i >= lo && i < hi) out[i] -= to_f32<T>(y[e + i]);
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_span(T* __restrict__ out, int64_t e, int64_t lo, int64_t hi, const float (&v)[N],
                                           bool accumulate, float f) {
  if (lo == 0 && hi >= N) {
    store_run<T, N>(out + e, N, v, accumulate, f);
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (i >= lo && i < hi) {
      const float r = f * v[i];
      out[e + i] = from_f32<T>(accumulate ? to_f32<T>(out[e + i]) + r : r);
    }
  }
}

// Grid: num_rows * cpb CTAs; part: [num_rows * cpb, K] (zeroed when there are active counts).
// Rademacher: at most 80 registers, 3 CTAs per SM (sm_90, nvcc 13: 94-103 registers and 2 CTAs
// per SM unbounded, against 64 for the one-tensor kernel; the segment lookup and the edge path
// cost the difference); capped at 64 it spilled. Gaussian and uniform (instruction bound, 16
// elements a thread): unbounded, 89-96 registers without spills (the cap of 80 made them spill).
template <typename T, int DIST>
__global__ void __launch_bounds__(kThreads, DIST == kRademacher ? 3 : 1)
    project_multi_kernel(MultiParams p, int64_t cpb, float* part) {
  using L = Layout<DIST>;
  __shared__ float red[kWarps][kTileK];
  const int64_t cta = (int64_t)blockIdx.x;
  const MultiPos<DIST> m(p, cta, cpb);
  const int K = p.num_bases;
  if (m.empty) {  // uniform across the CTA: no lane is left out of a shuffle or a barrier
    for (int k = threadIdx.x; k < K; k += kThreads) part[cta * K + k] = 0.0f;
    return;
  }
  float x[L::kElems];
  load_span<T, L::kElems>(static_cast<const T*>(m.s->x), static_cast<const T*>(m.s->y), m.e, m.lo, m.hi, x);
  ProjectParams lp{};  // the fields project_chunk reads, for this segment
  lp.num_bases = K;
  lp.seed = p.seed;
  lp.block_offset = m.s->block_offset;
  lp.active = p.active ? p.active + m.s->row : nullptr;
  project_chunk<DIST>(lp, cta, m.j, m.j0, m.hi > m.lo ? 1 : 0, x, part, red);
}

template <typename T, int DIST>
__global__ void __launch_bounds__(kThreads) reconstruct_multi_kernel(MultiParams p, int64_t cpb) {
  using L = Layout<DIST>;
  const MultiPos<DIST> m(p, (int64_t)blockIdx.x, cpb);
  if (m.empty) return;
  const bool mine = m.hi > m.lo;
  if (DIST != kRademacher && !mine) return;  // rademacher lanes still join their quad's exchange
  const int K = p.num_bases;
  const int kb = p.active ? min(max(p.active[m.row], 0), K) : K;
  float acc[L::kElems];
  reconstruct_acc<DIST>(m.j0, kb, m.s->block_offset + (uint32_t)m.j, p.seed, p.coeffs + m.row * K, acc);
  if (!mine) return;
  const float f = p.accumulate ? p.alpha * p.scale : p.scale;
  store_span<T, L::kElems>(static_cast<T*>(const_cast<void*>(m.s->x)), m.e, m.lo, m.hi, acc, p.accumulate, f);
}

// ------------------------------------------------------------------ host-side launchers
// The template ladder: dtype x dist -> one kernel instantiation. Returns the launch error, and
// cudaErrorInvalidValue for a dtype or dist it does not know (never a silent fall-through).
template <template <typename, int> class Launch, typename... Args>
cudaError_t dispatch(int dtype, int dist, Args&&... args) {
#define FERRET_DIST_CASES(T)                       \
  switch (dist) {                                  \
    case kRademacher:                              \
      return Launch<T, kRademacher>::run(args...); \
    case kUniform:                                 \
      return Launch<T, kUniform>::run(args...);    \
    case kGaussian:                                \
      return Launch<T, kGaussian>::run(args...);   \
    default:                                       \
      return cudaErrorInvalidValue;                \
  }
  switch (dtype) {
    case kF32:
      FERRET_DIST_CASES(float)
    case kBF16:
      FERRET_DIST_CASES(__nv_bfloat16)
    case kF16:
      FERRET_DIST_CASES(__half)
    default:
      return cudaErrorInvalidValue;
  }
#undef FERRET_DIST_CASES
}

inline int64_t chunks_per_block(int64_t block_size, int dist) {
  const int64_t c = dist == kRademacher ? Layout<kRademacher>::kChunk : Layout<kUniform>::kChunk;
  return (block_size + c - 1) / c;
}

// The second pass of project: out[b, k] = scale * the sum of block b's chunk partial sums.
inline cudaError_t launch_reduce(const float* part, int64_t cpb, int64_t rows, int K, float scale, float* out,
                                 cudaStream_t stream) {
  const int64_t ctas = (rows * K + kWarps - 1) / kWarps;
  FERRET_LAUNCH((unsigned)std::min<int64_t>(ctas, int64_t(1) << 20), kThreads, stream, reduce_kernel)(part, cpb, rows,
                                                                                                      K, scale, out);
  return cudaGetLastError();
}

template <typename T, int DIST, int MIN_BLOCKS = 1, int CHUNKS = 1>
cudaError_t launch_project_variant(const ProjectParams& p, float* part, cudaStream_t stream) {
  const int64_t cpb = chunks_per_block(p.block_size, DIST);
  const int64_t chunks = p.num_blocks * cpb;
  FERRET_LAUNCH((unsigned)((chunks + CHUNKS - 1) / CHUNKS), kThreads, stream,
                project_kernel<T, DIST, MIN_BLOCKS, CHUNKS>)(p, cpb, chunks, part);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return launch_reduce(part, cpb, p.num_blocks, p.num_bases, p.scale, p.out, stream);
}

// The variant that runs: one chunk a CTA; rademacher capped at 64 registers for 4 CTAs per SM.
// Measured with benchmarks/cuda_project_variants.cu on an H100 SXM (bf16, n = 2^28, rademacher;
// results/cuda_project_variants.csv). With the sign-flip dot: 64 registers without a cap, K = 4
// in 0.2505-0.2524 ms (0.84 of the device's read bandwidth, 0.71 of its copy bandwidth), MIN_BLOCKS
// 2-4 changed nothing; prefetching the next chunk in registers (CHUNKS = 2, 4, 8) or through
// shared memory with cp.async (a candidate kernel, removed since) was 27-41% slower at K = 4. With the
// predicated-add dot (rademacher_negsum) the uncapped build takes 70 registers (3 CTAs per SM,
// 0.2560 ms) and the cap gives 64 without spills and 0.2302 ms (0.78 of copy); CHUNKS = 4:
// 0.3095 ms. K = 64: 2.608 ms with the sign-flip dot, 1.915 ms with the predicated adds capped.
template <int DIST>
constexpr int kProjectMinBlocks = DIST == kRademacher ? 4 : 1;

template <typename T, int DIST>
struct ProjectLaunch {
  static cudaError_t run(const ProjectParams& p, float* part, cudaStream_t stream) {
    return launch_project_variant<T, DIST, kProjectMinBlocks<DIST>>(p, part, stream);
  }
};

// The fused candidate (project_fused_kernel) with ProjectLaunch's occupancy targets; ahead > 0: it
// prefetches as project_prefetch_kernel.
template <typename T, int DIST>
struct ProjectFusedLaunch {
  static cudaError_t run(const ProjectParams& p, float* part, unsigned* tickets, int64_t ahead, cudaStream_t stream) {
    const int64_t cpb = chunks_per_block(p.block_size, DIST);
    if (ahead > 0)
      FERRET_LAUNCH((unsigned)(p.num_blocks * cpb), kThreads, stream,
                    project_fused_kernel<T, DIST, kProjectMinBlocks<DIST>, true>)(p, cpb, part, tickets, ahead);
    else
      FERRET_LAUNCH((unsigned)(p.num_blocks * cpb), kThreads, stream,
                    project_fused_kernel<T, DIST, kProjectMinBlocks<DIST>>)(p, cpb, part, tickets, 0);
    return cudaGetLastError();
  }
};

// The prefetch candidate (project_prefetch_kernel) with ProjectLaunch's occupancy targets, then the
// shipped second pass.
template <typename T, int DIST>
struct ProjectPrefetchLaunch {
  static cudaError_t run(const ProjectParams& p, float* part, int64_t ahead, cudaStream_t stream) {
    const int64_t cpb = chunks_per_block(p.block_size, DIST);
    const int64_t chunks = p.num_blocks * cpb;
    FERRET_LAUNCH((unsigned)chunks, kThreads, stream, project_prefetch_kernel<T, DIST, kProjectMinBlocks<DIST>>)(
        p, cpb, chunks, ahead, part);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    return launch_reduce(part, cpb, p.num_blocks, p.num_bases, p.scale, p.out, stream);
  }
};

// The quad candidate (project_quad_kernel, K <= 4 rademacher only) with ProjectLaunch's occupancy target,
// then the shipped second pass over its spans. runs: 2 or 4; part: num_blocks * quad_spans_per_block *
// K floats (zeroed when there are active counts). Anything else: cudaErrorInvalidValue (with no block
// to project, launch_project_quad returns cudaSuccess first, as the other launchers).
inline int64_t quad_spans_per_block(int64_t block_size, int runs) {
  const int64_t c = (int64_t)runs * Layout<kRademacher>::kChunk;
  return (block_size + c - 1) / c;
}

template <typename T, int DIST>
struct ProjectQuadLaunch {
  static cudaError_t run(const ProjectParams& p, float* part, int runs, cudaStream_t stream) {
    if constexpr (DIST != kRademacher) {
      return cudaErrorInvalidValue;
    } else {
      if (p.num_bases < 1 || p.num_bases > 4 || (runs != 2 && runs != 4)) return cudaErrorInvalidValue;
      const int64_t spb = quad_spans_per_block(p.block_size, runs);
      const unsigned grid = (unsigned)(p.num_blocks * spb);
      if (runs == 2)
        FERRET_LAUNCH(grid, kThreads, stream, project_quad_kernel<T, 2, kProjectMinBlocks<DIST>>)(p, spb, part);
      else
        FERRET_LAUNCH(grid, kThreads, stream, project_quad_kernel<T, 4, kProjectMinBlocks<DIST>>)(p, spb, part);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
      return launch_reduce(part, spb, p.num_blocks, p.num_bases, p.scale, p.out, stream);
    }
  }
};

template <typename T, int DIST>
struct ReconstructLaunch {
  static cudaError_t run(const ReconstructParams& p, cudaStream_t stream) {
    const int64_t cpb = chunks_per_block(p.block_size, DIST);
    FERRET_LAUNCH((unsigned)(p.num_blocks * cpb), kThreads, stream, reconstruct_kernel<T, DIST>)(p, cpb);
    return cudaGetLastError();
  }
};

// out: [num_rows, K] in launch-row order; part: num_rows * chunks_per_block * K floats (zeroed
// when there are active counts).
template <typename T, int DIST>
struct ProjectMultiLaunch {
  static cudaError_t run(const MultiParams& p, float* part, float* out, cudaStream_t stream) {
    const int64_t cpb = chunks_per_block(p.block_size, DIST);
    FERRET_LAUNCH((unsigned)(p.num_rows * cpb), kThreads, stream, project_multi_kernel<T, DIST>)(p, cpb, part);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    return launch_reduce(part, cpb, p.num_rows, p.num_bases, p.scale, out, stream);
  }
};

template <typename T, int DIST>
struct ReconstructMultiLaunch {
  static cudaError_t run(const MultiParams& p, cudaStream_t stream) {
    const int64_t cpb = chunks_per_block(p.block_size, DIST);
    FERRET_LAUNCH((unsigned)(p.num_rows * cpb), kThreads, stream, reconstruct_multi_kernel<T, DIST>)(p, cpb);
    return cudaGetLastError();
  }
};

inline cudaError_t launch_project_multi(const MultiParams& p, float* part, float* out, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  return dispatch<ProjectMultiLaunch>(p.dtype, p.dist, p, part, out, stream);
}

inline cudaError_t launch_reconstruct_multi(const MultiParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  return dispatch<ReconstructMultiLaunch>(p.dtype, p.dist, p, stream);
}

// part must hold num_blocks * chunks_per_block(block_size, dist) * K floats (zeroed).
inline cudaError_t launch_project(const ProjectParams& p, float* part, cudaStream_t stream) {
  if (p.num_blocks == 0) return cudaSuccess;
  return dispatch<ProjectLaunch>(p.dtype, p.dist, p, part, stream);
}

// part as for launch_project; tickets: num_blocks words, zeroed (and zero again afterwards); ahead > 0:
// each CTA prefetches the chunk that many CTAs on, as launch_project_prefetch; 0 (or less): no prefetch.
inline cudaError_t launch_project_fused(const ProjectParams& p, float* part, unsigned* tickets, cudaStream_t stream,
                                        int64_t ahead = 0) {
  if (p.num_blocks == 0) return cudaSuccess;
  return dispatch<ProjectFusedLaunch>(p.dtype, p.dist, p, part, tickets, ahead, stream);
}

// part as for launch_project; ahead >= 0: each CTA prefetches the chunk that many CTAs on into L2.
inline cudaError_t launch_project_prefetch(const ProjectParams& p, float* part, int64_t ahead, cudaStream_t stream) {
  if (p.num_blocks == 0) return cudaSuccess;
  return dispatch<ProjectPrefetchLaunch>(p.dtype, p.dist, p, part, ahead, stream);
}

// part as quad_spans_per_block says; runs 2 or 4, rademacher with 1 <= K <= 4 only.
inline cudaError_t launch_project_quad(const ProjectParams& p, float* part, int runs, cudaStream_t stream) {
  if (p.num_blocks == 0) return cudaSuccess;
  return dispatch<ProjectQuadLaunch>(p.dtype, p.dist, p, part, runs, stream);
}

inline cudaError_t launch_reconstruct(const ReconstructParams& p, cudaStream_t stream) {
  if (p.num_blocks == 0) return cudaSuccess;
  return dispatch<ReconstructLaunch>(p.dtype, p.dist, p, stream);
}

__global__ void philox_kernel(const int64_t* ctr, int64_t n, uint32_t k0, uint32_t k1, int64_t* out) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const U32x4 r = philox4x32_10((uint32_t)ctr[4 * i], (uint32_t)ctr[4 * i + 1], (uint32_t)ctr[4 * i + 2],
                                (uint32_t)ctr[4 * i + 3], k0, k1);
  for (int q = 0; q < 4; ++q) out[4 * i + q] = (int64_t)r.v[q];
}

inline cudaError_t launch_philox(const int64_t* ctr, int64_t n, uint64_t seed, int64_t* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FERRET_LAUNCH((unsigned)((n + kThreads - 1) / kThreads), kThreads, stream, philox_kernel)(ctr, n, seed_lo(seed),
                                                                                            seed_hi(seed), out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ferret
