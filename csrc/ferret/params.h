// Parameter structs for the fused kernels: plain data, shared by the CPU and CUDA backends.
#pragma once
#include <stdint.h>

namespace ferret {

// Element type of a tensor the kernels read or write.
enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

struct ProjectParams {
  const void* x;  // numel elements of `dtype`, contiguous
  const void* y;  // optional (nullptr): project x - y; same dtype and numel as x
  int dtype;
  int dist;
  int64_t numel;
  int64_t block_size;
  int64_t num_blocks;
  uint32_t block_offset;  // global index of block 0
  int32_t num_bases;      // K
  uint64_t seed;
  float scale;
  const int32_t* active;  // optional [num_blocks]: bases k >= active[b] are skipped (give 0)
  float* out;             // [num_blocks, K]
};

struct ReconstructParams {
  const float* coeffs;  // [num_blocks, K], float32
  void* out;            // numel elements of `dtype`, contiguous
  int dtype;
  int dist;
  int64_t numel;
  int64_t block_size;
  int64_t num_blocks;
  uint32_t block_offset;
  int32_t num_bases;
  uint64_t seed;
  float scale;
  float alpha;      // accumulate: out = out + alpha * scale * V c
  bool accumulate;  // false: out = scale * V c
  const int32_t* active;
};

}  // namespace ferret
