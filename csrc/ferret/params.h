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

// One tensor of a list launch (project_multi / reconstruct_multi_): the kernels find a CTA's
// tensor by binary search over launch_row, so a launch covers any number of tensors.
struct Segment {
  const void* x;          // project: x; reconstruct: out (contiguous, the launch's dtype)
  const void* y;          // project: optional y (nullptr)
  int64_t numel;          // elements of the tensor
  int64_t lead;           // in-block position of its element 0 (start % block_size)
  int64_t row;            // its first block's row in the output / coeffs / active
  int64_t launch_row;     // its first block's row among this launch's rows (ascending)
  uint32_t block_offset;  // global index of its first block
};

struct MultiParams {
  const Segment* segs;  // device memory, launch_row ascending, segs[0].launch_row == 0
  int32_t num_segs;
  int64_t num_rows;  // blocks of this launch (the sum over its tensors)
  int dtype;
  int dist;
  int64_t block_size;
  int32_t num_bases;
  uint64_t seed;
  float scale;
  float alpha;
  bool accumulate;
  const int32_t* active;  // optional [all rows]
  const float* coeffs;    // reconstruct: [all rows, K]
};

}  // namespace ferret
