// nvcc-only translation unit: instantiates every kernel of kernels.cuh (all dtypes x dists)
// without torch, so CI can compile the device code for sm_80 / sm_90 with warnings as errors.
#include "cuda/kernels.cuh"

namespace ferret {
namespace cuda {

cudaError_t compile_check_all(const ProjectParams& p, const ReconstructParams& r, const MultiParams& m, float* part,
                              unsigned* tickets, const int64_t* ctr, int64_t* out, cudaStream_t s) {
  cudaError_t e = cudaSuccess;
  for (int dtype = kF32; dtype <= kF16; ++dtype) {
    for (int dist = kRademacher; dist <= kGaussian; ++dist) {
      ProjectParams pp = p;
      pp.dtype = dtype;
      pp.dist = dist;
      ReconstructParams rr = r;
      rr.dtype = dtype;
      rr.dist = dist;
      e = launch_project(pp, part, s);
      if (e != cudaSuccess) return e;
      // the candidates benchmarks/cuda_project_variants.cu times (fused: with and without its prefetch)
      e = launch_project_prefetch(pp, part, 1, s);
      if (e != cudaSuccess) return e;
      e = launch_project_fused(pp, part, tickets, s, 0);
      if (e != cudaSuccess) return e;
      e = launch_project_fused(pp, part, tickets, s, 1);
      if (e != cudaSuccess) return e;
      if (dist == kRademacher) {  // the quad candidate: K <= 4 rademacher only
        e = launch_project_quad(pp, part, 2, s);
        if (e != cudaSuccess) return e;
        e = launch_project_quad(pp, part, 4, s);
        if (e != cudaSuccess) return e;
      }
      e = launch_reconstruct(rr, s);
      if (e != cudaSuccess) return e;
      MultiParams mm = m;
      mm.dtype = dtype;
      mm.dist = dist;
      e = launch_project_multi(mm, part, part, s);
      if (e != cudaSuccess) return e;
      e = launch_reconstruct_multi(mm, s);
      if (e != cudaSuccess) return e;
    }
  }
  return launch_philox(ctr, 1, 0, out, s);
}

}  // namespace cuda
}  // namespace ferret
