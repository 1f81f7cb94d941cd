// CPU kernels of ferret::project / reconstruct / reconstruct_ / philox (schemas in
// ops_schema.cpp), registered for the CPU dispatch key. Validation in binding_common.h; runs the fused kernels with
// at::parallel_for. Work is cut into tasks that depend only on the problem's shape, never on the thread count, and
// partial sums are reduced in a fixed order, so results are bit-identical for any number of threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "binding_common.h"
#include "cpu/kernels.h"

namespace ferret {
namespace cpu {
namespace {

constexpr int64_t kMaxSegments = 16;  // per block, for project

const KernelTable* best_table() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2"))
    return &kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) return &kAvx2;
#endif
  return &kGeneric;
}

const KernelTable* table_by_name(const std::string& name) {
  if (name == "generic") return &kGeneric;
#if defined(__x86_64__) || defined(_M_X64)
  const KernelTable* best = best_table();
  if (name == "avx2" && best != &kGeneric) return &kAvx2;
  if (name == "avx512" && best == &kAvx512) return &kAvx512;
#endif
  return nullptr;
}

const KernelTable* initial_table() {
  const char* env = std::getenv("FERRET_CPU_ISA");
  if (env && *env && std::string(env) != "auto") {
    const KernelTable* t = table_by_name(env);
    TORCH_CHECK(t, "ferret: FERRET_CPU_ISA=", env, " is not supported on this processor (best: ", best_table()->name,
                ")");
    return t;
  }
  return best_table();
}

const KernelTable*& active_table() {
  static const KernelTable* t = initial_table();
  return t;
}

// x[0] on a block boundary (binding_common.h's project_from handles element offsets)
at::Tensor project_aligned(const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed, int64_t num_bases,
                           int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                           const c10::optional<at::Tensor>& active) {
  ProjectArgs a = make_project(x, y, seed, num_bases, block_size, block_offset, dist, scale, active);
  check_active_range(a.active, num_bases);
  const ProjectParams& p = a.p;
  const KernelTable* kt = active_table();
  if (p.num_blocks == 0) return a.out;
  // Segments: a block is split into at most kMaxSegments runs of whole chunks.
  const int64_t chunks_full = ceil_div(p.block_size, kChunk);
  const int64_t seg_chunks = ceil_div(chunks_full, kMaxSegments);
  const int64_t seg_len = seg_chunks * kChunk;
  const int64_t segs = ceil_div(p.block_size, seg_len);  // per block (the last block may use fewer)
  at::Tensor partial = at::zeros({p.num_blocks, segs, num_bases}, x.options().dtype(at::kDouble));
  double* part = partial.data_ptr<double>();
  at::parallel_for(0, p.num_blocks * segs, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t b = t / segs, s = t % segs;
      const int64_t len = std::min(p.block_size, p.numel - b * p.block_size);
      const int64_t begin = s * seg_len;
      if (begin >= len) continue;
      const int64_t end = std::min(len, begin + seg_len);
      kt->project_segment(p, b, begin, end, part + t * num_bases);
    }
  });
  float* out = p.out;
  at::parallel_for(0, p.num_blocks, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      for (int64_t k = 0; k < num_bases; ++k) {
        double s = 0.0;
        for (int64_t j = 0; j < segs; ++j) s += part[(b * segs + j) * num_bases + k];
        out[b * num_bases + k] = (float)(s * (double)p.scale);
      }
    }
  });
  return a.out;
}

void run_reconstruct(const ReconstructParams& p) {
  const KernelTable* kt = active_table();
  const int64_t per_block = ceil_div(p.block_size, kChunk);
  if (p.num_blocks == 0) return;
  at::parallel_for(0, p.num_blocks * per_block, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t b = t / per_block, c = t % per_block;
      const int64_t len = std::min(p.block_size, p.numel - b * p.block_size);
      const int64_t begin = c * kChunk;
      if (begin >= len) continue;
      kt->reconstruct_chunk(p, b, begin, std::min(len, begin + kChunk));
    }
  });
}

// out (+)= reconstruction, out[0] on a block boundary
void reconstruct_into(at::Tensor& out, const at::Tensor& coeffs, int64_t seed, int64_t block_size, int64_t block_offset,
                      c10::string_view dist, double scale, double alpha, bool accumulate,
                      const c10::optional<at::Tensor>& active) {
  ReconstructArgs a =
      make_reconstruct(out, coeffs, seed, block_size, block_offset, dist, scale, alpha, accumulate, active);
  check_active_range(a.active, coeffs.size(1));
  run_reconstruct(a.p);
}

at::Tensor project(const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed, int64_t num_bases,
                   int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                   const c10::optional<at::Tensor>& active, int64_t start) {
  return project_from(&project_aligned, x, y, seed, num_bases, block_size, block_offset, dist, scale, active, start,
                      true);
}

at::Tensor reconstruct(const at::Tensor& coeffs, int64_t seed, int64_t numel, int64_t block_size, int64_t block_offset,
                       c10::string_view dist, double scale, c10::optional<at::ScalarType> dtype,
                       const c10::optional<at::Tensor>& active, int64_t start) {
  check_reconstruct_call(coeffs, numel, block_size, block_offset, start, dtype);
  at::Tensor out = at::empty({numel}, coeffs.options().dtype(dtype.value_or(at::kFloat)));
  reconstruct_from(&reconstruct_into, out, coeffs, seed, block_size, block_offset, dist, scale, 1.0, false, active,
                   start, true);
  return out;
}

void reconstruct_(at::Tensor& out, const at::Tensor& coeffs, int64_t seed, int64_t block_size, int64_t block_offset,
                  c10::string_view dist, double scale, double alpha, const c10::optional<at::Tensor>& active,
                  int64_t start) {
  reconstruct_from(&reconstruct_into, out, coeffs, seed, block_size, block_offset, dist, scale, alpha, true, active,
                   start, true);
}

// Lists of tensors: a loop of the kernels above (each already uses every core).
at::Tensor project_multi(at::TensorList xs, at::TensorList ys, int64_t seed, int64_t num_bases, int64_t block_size,
                         at::IntArrayRef block_offsets, c10::string_view dist, double scale,
                         const c10::optional<at::Tensor>& active, at::IntArrayRef starts) {
  return project_multi_loop(&project, xs, ys, seed, num_bases, block_size, block_offsets, dist, scale, active, starts);
}

void reconstruct_multi_(at::TensorList outs, const at::Tensor& coeffs, int64_t seed, int64_t block_size,
                        at::IntArrayRef block_offsets, c10::string_view dist, double scale, double alpha,
                        const c10::optional<at::Tensor>& active, at::IntArrayRef starts) {
  reconstruct_multi_loop(&reconstruct_, outs, coeffs, seed, block_size, block_offsets, dist, scale, alpha, active,
                         starts);
}

at::Tensor philox(const at::Tensor& counter, int64_t seed) {
  check_counter(counter);
  at::Tensor c = counter.to(at::kLong).contiguous();
  const int64_t n = c.size(0);
  std::vector<uint32_t> ctr(4 * n), res(4 * n);
  const int64_t* cp = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < 4 * n; ++i) {
    TORCH_CHECK_VALUE(cp[i] >= 0 && cp[i] <= 0xffffffffLL, "ferret: counter words must be in [0, 2^32)");
    ctr[i] = (uint32_t)cp[i];
  }
  active_table()->philox(ctr.data(), n, (uint64_t)seed, res.data());
  at::Tensor out = at::empty({n, 4}, c.options());
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < 4 * n; ++i) op[i] = (int64_t)res[i];
  return out;
}

// Selects the instruction set ("auto", "generic", "avx2", "avx512"); returns the one in use.
// An empty name only reports. Used by tests and benchmarks to compare the builds.
std::string cpu_isa(c10::string_view name) {
  const std::string n(name);
  if (n == "auto") {
    active_table() = best_table();
  } else if (!n.empty()) {
    const KernelTable* t = table_by_name(n);
    TORCH_CHECK_VALUE(t, "ferret: CPU instruction set '", n,
                      "' is unknown or not supported here (best: ", best_table()->name, ")");
    active_table() = t;
  }
  return active_table()->name;
}

}  // namespace
}  // namespace cpu
}  // namespace ferret

TORCH_LIBRARY_IMPL(ferret, CPU, m) {
  m.impl("project", &ferret::cpu::project);
  m.impl("reconstruct", &ferret::cpu::reconstruct);
  m.impl("reconstruct_", &ferret::cpu::reconstruct_);
  m.impl("project_multi", &ferret::cpu::project_multi);
  m.impl("reconstruct_multi_", &ferret::cpu::reconstruct_multi_);
  m.impl("philox", &ferret::cpu::philox);
}

TORCH_LIBRARY_IMPL(ferret, CompositeExplicitAutograd, m) { m.impl("_cpu_isa", &ferret::cpu::cpu_isa); }
