// The CPU kernels' interface. One implementation (kernel_impl.h) is compiled once per
// instruction set (kernel_avx512.cpp, kernel_avx2.cpp, kernel_generic.cpp); ops.cpp picks a
// table at run time from what the processor supports. Safe to include in any of those
// translation units: no torch, no standard library.
#pragma once
#include <stdint.h>

#include "ferret/params.h"

namespace ferret {
namespace cpu {

// Elements per chunk: a chunk of x (or of the output) stays in L1 while all K bases sweep it.
constexpr int kChunk = 2048;

struct KernelTable {
  const char* name;
  // Sums sum_j v_{g,k}[j] * x[j] for k < K over the chunks [begin, end) of block b (offsets
  // inside the block, begin a multiple of kChunk) into acc[K] (double, fixed order).
  void (*project_segment)(const ProjectParams& p, int64_t b, int64_t begin, int64_t end, double* acc);
  // Writes (or accumulates) the reconstruction of elements [begin, end) of block b.
  void (*reconstruct_chunk)(const ReconstructParams& p, int64_t b, int64_t begin, int64_t end);
  // Raw Philox4x32-10 outputs for n counters (c[4*i..4*i+3]) under one key: the test hook.
  void (*philox)(const uint32_t* ctr, int64_t n, uint64_t seed, uint32_t* out);
};

extern const KernelTable kGeneric;
#if defined(__x86_64__) || defined(_M_X64)
extern const KernelTable kAvx2;
extern const KernelTable kAvx512;
#endif

}  // namespace cpu
}  // namespace ferret
