// CUDA kernels of ferret::project / reconstruct / reconstruct_ / philox (schemas in
// ops_schema.cpp), registered for the CUDA dispatch key. Thin: argument checks and params from binding_common.h, a
// device guard, the current stream, and a launch check after every launch; the kernels live in the torch-free
// kernels.cuh.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "binding_common.h"
#include "cuda/kernels.cuh"

namespace ferret {
namespace cuda {
namespace {

// CTAs of one launch: the x dimension of a CUDA grid stops at 2^31 - 1.
void check_grid(int64_t ctas, int64_t blocks, int64_t chunks) {
  TORCH_CHECK_VALUE(ctas <= (int64_t(1) << 31) - 1, "ferret: the CUDA launch needs ", num(ctas), " CTAs (", num(blocks),
                    " blocks x ", num(chunks), " chunks), over the GPU's limit of 2^31 - 1; use a larger block_size");
}

void check_launch(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "ferret: CUDA launch of ", what, " failed: ", cudaGetErrorString(e));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// x[0] on a block boundary (binding_common.h's project_from handles element offsets)
at::Tensor project_aligned(const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed, int64_t num_bases,
                           int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                           const c10::optional<at::Tensor>& active) {
  ProjectArgs a = make_project(x, y, seed, num_bases, block_size, block_offset, dist, scale, active);
  // active counts are not range-checked here (a device-to-host copy per call, and no CUDA graph
  // capture): the kernels clamp them to [0, num_bases]
  const int64_t cpb = chunks_per_block(block_size, a.p.dist);
  check_grid(a.p.num_blocks * cpb, a.p.num_blocks, cpb);
  // partial sums past a block's active count are not written: zeros then; else every entry is
  at::Tensor part = a.active.defined() ? at::zeros({a.p.num_blocks * cpb, num_bases}, x.options().dtype(at::kFloat))
                                       : at::empty({a.p.num_blocks * cpb, num_bases}, x.options().dtype(at::kFloat));
  check_launch(launch_project(a.p, part.data_ptr<float>(), at::cuda::getCurrentCUDAStream()), "project");
  return a.out;
}

// out (+)= reconstruction, out[0] on a block boundary
void reconstruct_into(at::Tensor& out, const at::Tensor& coeffs, int64_t seed, int64_t block_size, int64_t block_offset,
                      c10::string_view dist, double scale, double alpha, bool accumulate,
                      const c10::optional<at::Tensor>& active) {
  ReconstructArgs a =
      make_reconstruct(out, coeffs, seed, block_size, block_offset, dist, scale, alpha, accumulate, active);
  const int64_t cpb = chunks_per_block(a.p.block_size, a.p.dist);
  check_grid(a.p.num_blocks * cpb, a.p.num_blocks, cpb);
  check_launch(launch_reconstruct(a.p, at::cuda::getCurrentCUDAStream()), "reconstruct");
}

// Active counts are not range-checked on the GPU (no device-to-host copy): the kernels clamp.
at::Tensor project(const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed, int64_t num_bases,
                   int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                   const c10::optional<at::Tensor>& active, int64_t start) {
  const c10::cuda::CUDAGuard guard(x.device());
  return project_from(&project_aligned, x, y, seed, num_bases, block_size, block_offset, dist, scale, active, start,
                      false);
}

at::Tensor reconstruct(const at::Tensor& coeffs, int64_t seed, int64_t numel, int64_t block_size, int64_t block_offset,
                       c10::string_view dist, double scale, c10::optional<at::ScalarType> dtype,
                       const c10::optional<at::Tensor>& active, int64_t start) {
  check_reconstruct_args(coeffs, numel, dtype);
  const c10::cuda::CUDAGuard guard(coeffs.device());
  at::Tensor out = at::empty({numel}, coeffs.options().dtype(dtype.value_or(at::kFloat)));
  reconstruct_from(&reconstruct_into, out, coeffs, seed, block_size, block_offset, dist, scale, 1.0, false, active,
                   start, false);
  return out;
}

void reconstruct_(at::Tensor& out, const at::Tensor& coeffs, int64_t seed, int64_t block_size, int64_t block_offset,
                  c10::string_view dist, double scale, double alpha, const c10::optional<at::Tensor>& active,
                  int64_t start) {
  const c10::cuda::CUDAGuard guard(out.device());
  reconstruct_from(&reconstruct_into, out, coeffs, seed, block_size, block_offset, dist, scale, alpha, true, active,
                   start, false);
}

at::Tensor philox(const at::Tensor& counter, int64_t seed) {
  check_counter(counter);
  const c10::cuda::CUDAGuard guard(counter.device());
  at::Tensor c = counter.to(at::kLong).contiguous();
  at::Tensor out = at::empty_like(c);
  check_launch(launch_philox(c.data_ptr<int64_t>(), c.size(0), (uint64_t)seed, out.data_ptr<int64_t>(),
                             at::cuda::getCurrentCUDAStream()),
               "philox");
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace ferret

TORCH_LIBRARY_IMPL(ferret, CUDA, m) {
  m.impl("project", &ferret::cuda::project);
  m.impl("reconstruct", &ferret::cuda::reconstruct);
  m.impl("reconstruct_", &ferret::cuda::reconstruct_);
  m.impl("philox", &ferret::cuda::philox);
}
