// The kernels of kernels.cuh behind launch.h's entry points: every dtype x dist instantiation the
// torch binding (ops.cpp) can launch, compiled by nvcc without torch's headers.
#include "cuda/launch.h"

#include "cuda/kernels.cuh"

#include <algorithm>

namespace ferret {
namespace cuda {
namespace entry {

int64_t chunks_per_block(int64_t block_size, int dist) { return cuda::chunks_per_block(block_size, dist); }

cudaError_t project(const ProjectParams& p, float* part, cudaStream_t stream) {
  return launch_project(p, part, stream);
}

namespace {

// CTAs of the candidate kernel that runs (dtype x dist) resident at once on the current device.
template <typename T, int DIST>
struct ResidentCtas {
  static cudaError_t run(bool fused, int64_t* ctas) {
    int dev = 0, sms = 0, per_sm = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return e;
    e = fused ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                    &per_sm, project_fused_kernel<T, DIST, kProjectMinBlocks<DIST>, true>, kThreads, 0)
              : cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                    &per_sm, project_prefetch_kernel<T, DIST, kProjectMinBlocks<DIST>>, kThreads, 0);
    *ctas = (int64_t)per_sm * sms;
    return e;
  }
};

}  // namespace

cudaError_t project_candidate(const ProjectParams& p, float* part, unsigned* tickets, int kind, double waves,
                              cudaStream_t stream) {
  if (kind == kProjectFused) return launch_project_fused(p, part, tickets, stream, 0);
  if (kind != kProjectPrefetch && kind != kProjectFusedPrefetch) return cudaErrorInvalidValue;
  if (p.num_blocks == 0) return cudaSuccess;
  int64_t ctas = 0;
  cudaError_t e = dispatch<ResidentCtas>(p.dtype, p.dist, kind == kProjectFusedPrefetch, &ctas);
  if (e != cudaSuccess) return e;
  const int64_t ahead = std::max<int64_t>(1, (int64_t)(waves * (double)ctas));
  return kind == kProjectFusedPrefetch ? launch_project_fused(p, part, tickets, stream, ahead)
                                       : launch_project_prefetch(p, part, ahead, stream);
}

int64_t quad_spans_per_block(int64_t block_size, int runs) { return cuda::quad_spans_per_block(block_size, runs); }

cudaError_t project_quad(const ProjectParams& p, float* part, int runs, cudaStream_t stream) {
  return launch_project_quad(p, part, runs, stream);
}

cudaError_t reconstruct(const ReconstructParams& p, cudaStream_t stream) { return launch_reconstruct(p, stream); }

cudaError_t project_multi(const MultiParams& p, float* part, float* out, cudaStream_t stream) {
  return launch_project_multi(p, part, out, stream);
}

cudaError_t reconstruct_multi(const MultiParams& p, cudaStream_t stream) { return launch_reconstruct_multi(p, stream); }

cudaError_t philox(const int64_t* ctr, int64_t n, uint64_t seed, int64_t* out, cudaStream_t stream) {
  return launch_philox(ctr, n, seed, out, stream);
}

}  // namespace entry
}  // namespace cuda
}  // namespace ferret
