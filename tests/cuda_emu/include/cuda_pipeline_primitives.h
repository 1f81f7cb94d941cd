// Host emulation of the cp.async primitives (cuda_pipeline_primitives.h) that csrc/cuda/kernels.cuh
// uses: the copy happens at once, so commit and wait have nothing to do. The emulation checks
// what the kernels do with the data (which slot, which thread), not the asynchrony.
#pragma once

#include <stddef.h>
#include <string.h>

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align, size_t zfill = 0) {
  memcpy(dst_shared, src_global, size_and_align - zfill);
  if (zfill) memset(static_cast<char*>(dst_shared) + size_and_align - zfill, 0, zfill);
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(size_t) {}
