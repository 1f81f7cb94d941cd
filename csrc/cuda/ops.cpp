// CUDA kernels of ferret::project / reconstruct / reconstruct_ / philox (schemas in
// ops_schema.cpp), registered for the CUDA dispatch key. Thin: argument checks and params from binding_common.h, a
// device guard, the current stream, and a launch check after every launch. The kernels live in the torch-free
// kernels.cuh, compiled by nvcc in launch.cu; this file calls them through launch.h and compiles with the host
// compiler (launch.h says why).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "binding_common.h"
#include "cuda/launch.h"

namespace ferret {
namespace cuda {
namespace {

// CTAs of one launch: the x dimension of a CUDA grid stops at 2^31 - 1.
void check_grid(int64_t ctas, int64_t blocks, int64_t chunks, const char* what = "chunks") {
  TORCH_CHECK_VALUE(ctas <= (int64_t(1) << 31) - 1, "ferret: the CUDA launch needs ", num(ctas), " CTAs (", num(blocks),
                    " blocks x ", num(chunks), " ", what,
                    "), over the GPU's limit of 2^31 - 1; use a larger block_size");
}

void check_launch(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "ferret: CUDA launch of ", what, " failed: ", cudaGetErrorString(e));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// FERRET_CUDA_PROJECT: which kernels the one-tensor project runs, read at every call. Unset or
// "two_pass": the shipped first pass and second pass; the candidates (launch.h, all with the same
// bits), for timing them through the op on a GPU and shipping the fastest from that measurement:
// "prefetch[:waves]" (each CTA first asks L2 for the chunk `waves` x the resident CTAs on; waves
// defaults to 1), "fused" (one launch, the last CTA of a block adds its partials),
// "fused_prefetch[:waves]"; and "quad[:runs]" (runs 2, the default, or 4: project_quad_kernel, whose
// lanes each add `runs` runs of 32 elements before one shuffle tree, for rademacher with K <= 4; other
// bits than the shipped kernel's; other distributions and K > 4 run the shipped kernels). A bad value
// is an error naming it, not a silent fallback.
struct ProjectChoice {
  int kind = entry::kProjectTwoPass;
  double waves = 1.0;
  int runs = 2;
};

ProjectChoice project_choice() {
  ProjectChoice c;
  const char* env = std::getenv("FERRET_CUDA_PROJECT");
  if (!env || !*env) return c;
  const std::string v(env);
  const size_t colon = v.find(':');
  const std::string name = v.substr(0, colon);
  bool ok = true;
  if (name == "two_pass") {
    c.kind = entry::kProjectTwoPass;
  } else if (name == "fused") {
    c.kind = entry::kProjectFused;
  } else if (name == "prefetch") {
    c.kind = entry::kProjectPrefetch;
  } else if (name == "fused_prefetch") {
    c.kind = entry::kProjectFusedPrefetch;
  } else if (name == "quad") {
    c.kind = entry::kProjectQuad;
  } else {
    ok = false;
  }
  const bool takes_waves = c.kind == entry::kProjectPrefetch || c.kind == entry::kProjectFusedPrefetch;
  if (ok && colon != std::string::npos) {
    const std::string w = v.substr(colon + 1);
    if (c.kind == entry::kProjectQuad) {
      ok = w == "2" || w == "4";
      c.runs = ok ? w[0] - '0' : 0;
    } else {
      char* end = nullptr;
      c.waves = std::strtod(w.c_str(), &end);
      ok = takes_waves && !w.empty() && end == w.c_str() + w.size() && c.waves > 0.0 && c.waves <= 64.0;
    }
  }
  TORCH_CHECK_VALUE(ok, "ferret: FERRET_CUDA_PROJECT='", v,
                    "' is not one of two_pass, fused, prefetch[:waves], fused_prefetch[:waves], quad[:runs] (waves: a "
                    "number in (0, 64], default 1; runs: 2 or 4, default 2)");
  return c;
}

// x[0] on a block boundary (binding_common.h's project_from handles element offsets)
at::Tensor project_aligned(const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed, int64_t num_bases,
                           int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                           const c10::optional<at::Tensor>& active) {
  const ProjectChoice c = project_choice();  // before anything is allocated
  ProjectArgs a = make_project(x, y, seed, num_bases, block_size, block_offset, dist, scale, active);
  // active counts are not range-checked here (a device-to-host copy per call, and no CUDA graph
  // capture): the kernels clamp them to [0, num_bases]
  // the quad candidate where it applies (rademacher, K <= 4), else the shipped kernels
  const bool quad = c.kind == entry::kProjectQuad && a.p.dist == kRademacher && num_bases >= 1 && num_bases <= 4;
  const int64_t cpb =
      quad ? entry::quad_spans_per_block(block_size, c.runs) : entry::chunks_per_block(block_size, a.p.dist);
  check_grid(a.p.num_blocks * cpb, a.p.num_blocks, cpb, quad ? "spans" : "chunks");
  // partial sums past a block's active count are not written: zeros then; else every entry is
  at::Tensor part = a.active.defined() ? at::zeros({a.p.num_blocks * cpb, num_bases}, x.options().dtype(at::kFloat))
                                       : at::empty({a.p.num_blocks * cpb, num_bases}, x.options().dtype(at::kFloat));
  if (quad) {
    check_launch(entry::project_quad(a.p, part.data_ptr<float>(), c.runs, at::cuda::getCurrentCUDAStream()), "project");
  } else if (c.kind == entry::kProjectTwoPass || c.kind == entry::kProjectQuad) {
    check_launch(entry::project(a.p, part.data_ptr<float>(), at::cuda::getCurrentCUDAStream()), "project");
  } else {
    // the fused kinds' tickets: a zeroed word per block (a memset), zero again when the launch ends
    const bool fused = c.kind == entry::kProjectFused || c.kind == entry::kProjectFusedPrefetch;
    at::Tensor tickets = fused ? at::zeros({a.p.num_blocks}, x.options().dtype(at::kInt)) : at::Tensor();
    check_launch(entry::project_candidate(a.p, part.data_ptr<float>(),
                                          fused ? reinterpret_cast<unsigned*>(tickets.data_ptr<int>()) : nullptr,
                                          c.kind, c.waves, at::cuda::getCurrentCUDAStream()),
                 "project");
  }
  return a.out;
}

// out (+)= reconstruction, out[0] on a block boundary
void reconstruct_into(at::Tensor& out, const at::Tensor& coeffs, int64_t seed, int64_t block_size, int64_t block_offset,
                      c10::string_view dist, double scale, double alpha, bool accumulate,
                      const c10::optional<at::Tensor>& active) {
  ReconstructArgs a =
      make_reconstruct(out, coeffs, seed, block_size, block_offset, dist, scale, alpha, accumulate, active);
  const int64_t cpb = entry::chunks_per_block(a.p.block_size, a.p.dist);
  check_grid(a.p.num_blocks * cpb, a.p.num_blocks, cpb);
  check_launch(entry::reconstruct(a.p, at::cuda::getCurrentCUDAStream()), "reconstruct");
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
  check_reconstruct_call(coeffs, numel, block_size, block_offset, start, dtype);
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

// ---------------------------------------------------------------------------- lists of tensors
// One launch per dtype present (one for a model in one dtype) instead of one or two per tensor.
// The segment table (40 bytes a tensor) goes to the device with one copy from pinned memory.

struct Group {
  int dtype;
  std::vector<Segment> segs;    // launch_row ascending
  std::vector<int64_t> blocks;  // per segment
  int64_t rows = 0;             // blocks of the group
};

struct Launches {
  std::vector<at::Tensor> keep;  // contiguous inputs, alive until the launches are queued
  std::vector<Group> groups;
};

// The list's tensors with blocks, by dtype (list order within a group).
Launches group_segments(at::TensorList ts, at::TensorList ys, const MultiPlan& plan) {
  Launches L;
  for (size_t i = 0; i < ts.size(); ++i) {
    const MultiItem& it = plan.items[i];
    if (!it.num_blocks) continue;
    const int dt = parse_dtype(ts[i].scalar_type(), "x");
    auto g = std::find_if(L.groups.begin(), L.groups.end(), [&](const Group& e) { return e.dtype == dt; });
    if (g == L.groups.end()) g = L.groups.insert(L.groups.end(), Group{dt, {}, {}, 0});
    L.keep.push_back(ts[i].contiguous());
    Segment s{};
    s.x = L.keep.back().data_ptr();
    if (!ys.empty()) {
      L.keep.push_back(ys[i].contiguous());
      s.y = L.keep.back().data_ptr();
    }
    s.numel = it.numel;
    s.lead = it.lead;
    s.row = it.row;
    s.launch_row = g->rows;
    s.block_offset = (uint32_t)it.first_block;
    g->segs.push_back(s);
    g->blocks.push_back(it.num_blocks);
    g->rows += it.num_blocks;
  }
  return L;
}

// The group's launch parameters, its segment table copied to the device (`table` keeps it alive).
MultiParams multi_params(const Group& g, at::Tensor& table, const MultiPlan& plan, int64_t seed, int64_t num_bases,
                         int64_t block_size, c10::string_view dist, const at::Device& device) {
  const int64_t bytes = (int64_t)(g.segs.size() * sizeof(Segment));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), g.segs.data(), bytes);
  table = host.to(device, /*non_blocking=*/true);
  MultiParams m{};
  m.segs = reinterpret_cast<const Segment*>(table.data_ptr());
  m.num_segs = (int32_t)g.segs.size();
  m.num_rows = g.rows;
  m.dtype = g.dtype;
  m.dist = parse_dist(dist);
  m.block_size = block_size;
  m.num_bases = (int32_t)num_bases;
  m.seed = (uint64_t)seed;
  m.active = plan.active.defined() ? plan.active.data_ptr<int32_t>() : nullptr;
  return m;
}

at::Tensor project_multi(at::TensorList xs, at::TensorList ys, int64_t seed, int64_t num_bases, int64_t block_size,
                         at::IntArrayRef block_offsets, c10::string_view dist, double scale,
                         const c10::optional<at::Tensor>& active, at::IntArrayRef starts) {
  TORCH_CHECK_VALUE(!xs.empty(), "ferret: xs must hold at least one tensor");
  const c10::cuda::CUDAGuard guard(xs[0].device());
  const MultiPlan plan =
      plan_multi("xs", xs, ys, num_bases, block_size, block_offsets, starts, dist, active, xs[0].device());
  const Launches L = group_segments(xs, ys, plan);
  const int64_t cpb = entry::chunks_per_block(block_size, parse_dist(dist));
  for (const Group& g : L.groups) check_grid(g.rows * cpb, g.rows, cpb);
  at::Tensor out = at::empty({plan.rows, num_bases}, xs[0].options().dtype(at::kFloat));
  for (const Group& g : L.groups) {
    at::Tensor table;
    MultiParams m = multi_params(g, table, plan, seed, num_bases, block_size, dist, xs[0].device());
    m.scale = (float)scale;
    // partial sums past a block's active count are not written: zeros then; else every entry is
    at::Tensor part = plan.active.defined() ? at::zeros({g.rows * cpb, num_bases}, out.options())
                                            : at::empty({g.rows * cpb, num_bases}, out.options());
    const bool direct = L.groups.size() == 1;  // one dtype: launch rows are the output's rows
    at::Tensor dst = direct ? out : at::empty({g.rows, num_bases}, out.options());
    check_launch(
        entry::project_multi(m, part.data_ptr<float>(), dst.data_ptr<float>(), at::cuda::getCurrentCUDAStream()),
        "project_multi");
    if (!direct) {
      for (size_t k = 0; k < g.segs.size(); ++k)
        out.narrow(0, g.segs[k].row, g.blocks[k]).copy_(dst.narrow(0, g.segs[k].launch_row, g.blocks[k]));
    }
  }
  return out;
}

void reconstruct_multi_(at::TensorList outs, const at::Tensor& coeffs, int64_t seed, int64_t block_size,
                        at::IntArrayRef block_offsets, c10::string_view dist, double scale, double alpha,
                        const c10::optional<at::Tensor>& active, at::IntArrayRef starts) {
  TORCH_CHECK_VALUE(!outs.empty(), "ferret: outs must hold at least one tensor");
  TORCH_CHECK_VALUE(coeffs.dim() == 2, "ferret: coeffs must be 2-D [num_blocks, num_bases], got shape ",
                    shape(coeffs.sizes()));
  const c10::cuda::CUDAGuard guard(outs[0].device());
  const MultiPlan plan =
      plan_multi("outs", outs, {}, coeffs.size(1), block_size, block_offsets, starts, dist, active, outs[0].device());
  check_multi_coeffs(coeffs, plan, outs[0].device());
  check_outs(outs, coeffs, active);  // contiguous: the segments point into the caller's tensors
  const Launches L = group_segments(outs, {}, plan);
  const int64_t cpb = entry::chunks_per_block(block_size, parse_dist(dist));
  for (const Group& g : L.groups) check_grid(g.rows * cpb, g.rows, cpb);
  const at::Tensor c = coeffs.to(at::kFloat).contiguous();
  for (const Group& g : L.groups) {
    at::Tensor table;
    MultiParams m = multi_params(g, table, plan, seed, coeffs.size(1), block_size, dist, outs[0].device());
    m.coeffs = c.data_ptr<float>();
    m.scale = (float)scale;
    m.alpha = (float)alpha;
    m.accumulate = true;
    check_launch(entry::reconstruct_multi(m, at::cuda::getCurrentCUDAStream()), "reconstruct_multi_");
  }
}

at::Tensor philox(const at::Tensor& counter, int64_t seed) {
  check_counter(counter);
  const c10::cuda::CUDAGuard guard(counter.device());
  at::Tensor c = counter.to(at::kLong).contiguous();
  at::Tensor out = at::empty_like(c);
  check_launch(entry::philox(c.data_ptr<int64_t>(), c.size(0), (uint64_t)seed, out.data_ptr<int64_t>(),
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
  m.impl("project_multi", &ferret::cuda::project_multi);
  m.impl("reconstruct_multi_", &ferret::cuda::reconstruct_multi_);
  m.impl("philox", &ferret::cuda::philox);
}
