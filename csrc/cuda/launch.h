// The CUDA kernels' host entry points, declared without CUDA syntax: the torch binding (ops.cpp)
// calls them and compiles with the host compiler, while launch.cu, the one file that instantiates
// the kernels of kernels.cuh, compiles with nvcc and without torch, beside it.
//
// Why two files: with the binding and the kernels in one nvcc file, that file took 48 s for sm_90
// (torch 2.11 headers, 2 cores, 2026-11-27), 36 s of it on torch's headers, and it was the build's
// longest step on the GPU machines' 16 cores; docs/gpu.md (eighth session) has the split's times.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "ferret/params.h"

namespace ferret {
namespace cuda {
namespace entry {

// The chunks a block splits into, one CTA each (project: partial-sum rows per block).
int64_t chunks_per_block(int64_t block_size, int dist);
// part: num_blocks * chunks_per_block * K floats (zeroed when there are active counts).
cudaError_t project(const ProjectParams& p, float* part, cudaStream_t stream);
// The candidates for project at small K (kernels.cuh: project_prefetch_kernel, project_fused_kernel),
// chosen with FERRET_CUDA_PROJECT (ops.cpp; kProjectTwoPass is `project` above, cudaErrorInvalidValue
// here); every one gives project's bits. waves: how far ahead a CTA
// prefetches, in waves of the CTAs resident at once on the current device (the occupancy of the kernel
// that runs x its SM count); tickets: num_blocks zeroed words for the fused kinds (zero again after),
// else unused.
enum ProjectKind {
  kProjectTwoPass = 0,
  kProjectPrefetch = 1,
  kProjectFused = 2,
  kProjectFusedPrefetch = 3,
  kProjectQuad = 4
};
cudaError_t project_candidate(const ProjectParams& p, float* part, unsigned* tickets, int kind, double waves,
                              cudaStream_t stream);
// The quad candidate (kernels.cuh: project_quad_kernel), rademacher with 1 <= K <= 4 only (else
// cudaErrorInvalidValue): each CTA takes `runs` (2 or 4) consecutive chunks, a span; part: num_blocks *
// quad_spans_per_block * K floats (zeroed when there are active counts). Other bits than `project`'s.
int64_t quad_spans_per_block(int64_t block_size, int runs);
cudaError_t project_quad(const ProjectParams& p, float* part, int runs, cudaStream_t stream);
cudaError_t reconstruct(const ReconstructParams& p, cudaStream_t stream);
// out: [num_rows, K] in launch-row order; part as for project, over num_rows.
cudaError_t project_multi(const MultiParams& p, float* part, float* out, cudaStream_t stream);
cudaError_t reconstruct_multi(const MultiParams& p, cudaStream_t stream);
cudaError_t philox(const int64_t* ctr, int64_t n, uint64_t seed, int64_t* out, cudaStream_t stream);

}  // namespace entry
}  // namespace cuda
}  // namespace ferret
