// The kernels of kernels.cuh behind launch.h's entry points: every dtype x dist instantiation the
// torch binding (ops.cpp) can launch, compiled by nvcc without torch's headers.
#include "cuda/launch.h"

#include "cuda/kernels.cuh"

namespace ferret {
namespace cuda {
namespace entry {

int64_t chunks_per_block(int64_t block_size, int dist) { return cuda::chunks_per_block(block_size, dist); }

cudaError_t project(const ProjectParams& p, float* part, cudaStream_t stream) {
  return launch_project(p, part, stream);
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
