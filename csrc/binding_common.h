// Torch-side helpers shared by the CPU and CUDA bindings: argument checks and the
// translation of op arguments into the plain parameter structs of csrc/ferret/params.h.
// The native kernels validate here, once: ValueError / TypeError (TORCH_CHECK_VALUE / _TYPE)
// naming the argument, before any output is allocated or any data touched.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "ferret/core.h"
#include "ferret/params.h"

namespace ferret {

// Numbers, shapes, dtypes and devices in error messages are turned into strings here, never by
// streaming them into TORCH_CHECK's ostream. Why: on the GPU image (torch 2.11, g++ 13), the
// extension as built there carried its own copy of std::ostream::_M_insert<long>, and the first
// TORCH_CHECK message with an int64 in it segfaulted inside it (cuda-gdb backtrace, 2026-11-26);
// messages made only of strings worked. std::to_string does not touch the locale machinery.
inline std::string num(int64_t v) { return std::to_string(v); }
inline std::string shape(at::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
// dtypes as Python prints them (torch.float32), so the C++ and Python messages read the same
inline std::string name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "torch.float32";
    case at::kDouble:
      return "torch.float64";
    case at::kHalf:
      return "torch.float16";
    case at::kBFloat16:
      return "torch.bfloat16";
    case at::kInt:
      return "torch.int32";
    case at::kLong:
      return "torch.int64";
    case at::kShort:
      return "torch.int16";
    case at::kChar:
      return "torch.int8";
    case at::kByte:
      return "torch.uint8";
    case at::kBool:
      return "torch.bool";
    default:
      return std::string("torch.") + c10::toString(t);
  }
}
inline std::string name(const at::Device& d) { return d.str(); }

inline int parse_dist(c10::string_view dist) {
  if (dist == "rademacher") return kRademacher;
  if (dist == "uniform") return kUniform;
  if (dist == "gaussian") return kGaussian;
  TORCH_CHECK_VALUE(false, "ferret: unknown dist '", std::string(dist),
                    "'; expected one of rademacher, uniform, gaussian");
}

inline int parse_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat:
      return kF32;
    case at::kBFloat16:
      return kBF16;
    case at::kHalf:
      return kF16;
    default:
      TORCH_CHECK_TYPE(false, "ferret: ", what, " must be float32, bfloat16 or float16, got ", name(t));
  }
}

// a >= 0, b > 0, without the overflow of (a + b - 1) / b for a near 2^63 (a hostile numel)
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// The blocks that numel elements from element `start` of the stream touch (element offsets: below).
inline int64_t blocks_from(int64_t start, int64_t numel, int64_t block_size) {
  // (start % block_size + numel) could overflow for numel near 2^63: its quotient and rest apart
  return numel / block_size + ceil_div(start % block_size + numel % block_size, block_size);
}

// The same rules, in the same words, as the Python validators of ferret_kernels/ops.py (used by
// the fake kernels and the Triton / reference paths): ValueError / TypeError naming the argument.
inline void check_plan(int64_t numel, int64_t num_bases, int64_t block_size, int64_t block_offset) {
  TORCH_CHECK_VALUE(num_bases > 0, "ferret: num_bases must be a positive int, got ", num(num_bases));
  TORCH_CHECK_VALUE(num_bases < (int64_t(1) << 31), "ferret: num_bases must be < 2^31, got ", num(num_bases));
  TORCH_CHECK_VALUE(block_size > 0, "ferret: block_size must be a positive int, got ", num(block_size));
  TORCH_CHECK_VALUE(block_size <= (int64_t(1) << 33), "ferret: block_size must be <= 2^33, got ", num(block_size));
  TORCH_CHECK_VALUE(block_offset >= 0, "ferret: block_offset must be >= 0, got ", num(block_offset));
  TORCH_CHECK_VALUE(numel >= 0, "ferret: numel must be >= 0, got ", num(numel));
  const int64_t nb = ceil_div(numel, block_size);
  // written as a difference: block_offset + nb overflows int64 for offsets near 2^63
  TORCH_CHECK_VALUE(nb <= (int64_t(1) << 32) && block_offset <= (int64_t(1) << 32) - nb,
                    "ferret: global block indices must stay below 2^32 (block_offset + num_blocks: ", num(block_offset),
                    " + ", num(nb), ")");
}

// Active counts as a contiguous int32 tensor on `device`, or an undefined tensor. Their range is
// checked by the CPU binding only (check_active_range): on a GPU that would copy them to the host
// on every call; the GPU kernels clamp them to [0, num_bases] instead.
inline at::Tensor checked_active(const c10::optional<at::Tensor>& active, int64_t num_blocks, const at::Device& device,
                                 int64_t num_bases) {
  if (!active.has_value()) return at::Tensor();
  const at::Tensor& a = *active;
  TORCH_CHECK_TYPE(a.scalar_type() == at::kInt || a.scalar_type() == at::kLong,
                   "ferret: active must be an int32/int64 tensor, got ", name(a.scalar_type()));
  TORCH_CHECK_VALUE(a.device() == device, "ferret: active must be on ", name(device), ", got ", name(a.device()));
  TORCH_CHECK_VALUE(a.dim() == 1 && a.size(0) == num_blocks, "ferret: active must have shape [", num(num_blocks),
                    "] (one count per block), got ", shape(a.sizes()));
  // int64 counts are clamped to [-1, K + 1] before they become int32: a count of 2^32 + 2 must
  // not wrap to 2 (the CPU range check then refuses it; the GPU kernels clamp it to K)
  if (a.scalar_type() == at::kLong) return a.clamp(-1, num_bases + 1).to(at::kInt).contiguous();
  return a.contiguous();
}

// y of project(x, y): x's dtype, device and element count.
inline void check_y(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK_TYPE(y.scalar_type() == x.scalar_type(), "ferret: y must have x's dtype ", name(x.scalar_type()),
                   ", got ", name(y.scalar_type()));
  TORCH_CHECK_VALUE(y.device() == x.device(), "ferret: y must be on x's device ", name(x.device()), ", got ",
                    name(y.device()));
  TORCH_CHECK_VALUE(y.numel() == x.numel(), "ferret: y must have as many elements as x (", num(x.numel()), "), got ",
                    num(y.numel()));
}

struct ProjectArgs {
  at::Tensor x, y, active, out;
  ProjectParams p;
};

inline ProjectArgs make_project(const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed,
                                int64_t num_bases, int64_t block_size, int64_t block_offset, c10::string_view dist,
                                double scale, const c10::optional<at::Tensor>& active) {
  ProjectArgs a;
  const int dt = parse_dtype(x.scalar_type(), "x");
  if (y.has_value()) check_y(x, *y);
  check_plan(x.numel(), num_bases, block_size, block_offset);
  const int dist_id = parse_dist(dist);
  const int64_t nb = ceil_div(x.numel(), block_size);
  a.active = checked_active(active, nb, x.device(), num_bases);
  a.x = x.contiguous();
  if (y.has_value()) a.y = y->contiguous();
  // every entry is written by the second pass of both backends (rows past a block's active count
  // as zeros): no fill, which on a GPU was one more launch per call
  a.out = at::empty({nb, num_bases}, x.options().dtype(at::kFloat));
  ProjectParams& p = a.p;
  p.x = a.x.data_ptr();
  p.y = a.y.defined() ? a.y.data_ptr() : nullptr;
  p.dtype = dt;
  p.dist = dist_id;
  p.numel = x.numel();
  p.block_size = block_size;
  p.num_blocks = nb;
  p.block_offset = (uint32_t)block_offset;
  p.num_bases = (int32_t)num_bases;
  p.seed = (uint64_t)seed;
  p.scale = (float)scale;
  p.active = a.active.defined() ? a.active.data_ptr<int32_t>() : nullptr;
  p.out = a.out.data_ptr<float>();
  return a;
}

struct ReconstructArgs {
  at::Tensor coeffs, active;
  ReconstructParams p;
};

// Checks of reconstruct's own arguments, before its output is allocated.
inline void check_reconstruct_args(const at::Tensor& coeffs, int64_t numel, c10::optional<at::ScalarType> dtype) {
  TORCH_CHECK_TYPE(
      coeffs.scalar_type() == at::kFloat || coeffs.scalar_type() == at::kBFloat16 || coeffs.scalar_type() == at::kHalf,
      "ferret: coeffs must be float32, bfloat16 or float16, got ", name(coeffs.scalar_type()));
  TORCH_CHECK_VALUE(coeffs.dim() == 2, "ferret: coeffs must be 2-D [num_blocks, num_bases], got shape ",
                    shape(coeffs.sizes()));
  TORCH_CHECK_VALUE(numel >= 0, "ferret: numel must be >= 0, got ", num(numel));
  if (dtype.has_value()) parse_dtype(*dtype, "dtype");
}

// coeffs has a row per block the numel elements from element `start` touch; returns that count.
inline int64_t check_coeff_rows(const at::Tensor& coeffs, int64_t numel, int64_t block_size, int64_t start) {
  const int64_t nb = blocks_from(start, numel, block_size);
  const std::string where = start % block_size ? " from element " + num(start) : "";
  TORCH_CHECK_VALUE(coeffs.size(0) == nb, "ferret: coeffs must have ", num(nb), " rows (blocks of ", num(block_size),
                    " in ", num(numel), " elements", where, "), got shape ", shape(coeffs.sizes()));
  return nb;
}

// torch's rule for in-place ops: an inference tensor (made under torch.inference_mode()) is
// updated only inside inference mode. A kernel writing through data_ptr() bypasses the check
// torch's own ops make, so it is made here, before anything is written.
inline void check_not_inference(const at::Tensor& out, const std::string& what) {
  TORCH_CHECK_VALUE(!out.is_inference() || c10::InferenceMode::is_enabled(), "ferret: ", what,
                    " is an inference tensor (made under torch.inference_mode()): update it inside "
                    "torch.inference_mode(), or clone it first");
}

// The bytes [first, last + 1) that t's elements occupy (first == last + 1 == 0 for no elements).
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return {0, 0};
  int64_t hi = 0;  // the last element's offset (strides are never negative in torch)
  for (int64_t d = 0; d < t.dim(); ++d) hi += (t.size(d) - 1) * t.stride(d);
  const uintptr_t first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + (uintptr_t)((hi + 1) * (int64_t)t.element_size())};
}

// An in-place update's inputs must not share memory with what it writes: the kernels read
// coefficients and counts while other threads / CTAs write the output, so a coeffs that is a view
// of out gave results that depended on the thread count.
inline void check_apart(const at::Tensor& out, const std::string& out_name, const at::Tensor& in,
                        const std::string& in_name) {
  const auto a = byte_span(out), b = byte_span(in);
  TORCH_CHECK_VALUE(a.first == a.second || b.first == b.second || a.second <= b.first || b.second <= a.first,
                    "ferret: ", in_name, " and ", out_name, " overlap in memory (", out_name, " is written while ",
                    in_name, " is read): clone ", in_name, " first");
}

// reconstruct_'s out: there is no autograd for the in-place op, so a tensor that requires grad is
// updated only under no_grad (as reconstruct_multi_'s outs, check_outs); and out shares no memory
// with coeffs or active.
inline void check_inplace(const at::Tensor& out, const at::Tensor& coeffs, const c10::optional<at::Tensor>& active) {
  TORCH_CHECK_VALUE(!(out.requires_grad() && at::GradMode::is_enabled()),
                    "ferret: out requires grad: update it under torch.no_grad() (reconstruct_ has no autograd)");
  check_apart(out, "out", coeffs, "coeffs");
  if (active.has_value()) check_apart(out, "out", *active, "active");
}

// `out` must already be allocated (numel elements); checked here: contiguous, float32/bf16/fp16.
inline ReconstructArgs make_reconstruct(const at::Tensor& out, const at::Tensor& coeffs, int64_t seed,
                                        int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                                        double alpha, bool accumulate, const c10::optional<at::Tensor>& active) {
  ReconstructArgs a;
  const int dt = parse_dtype(out.scalar_type(), "out");
  TORCH_CHECK_VALUE(coeffs.device() == out.device(), "ferret: coeffs must be on out's device ", name(out.device()),
                    ", got ", name(coeffs.device()));
  TORCH_CHECK_VALUE(out.is_contiguous(), "ferret: reconstruct_ needs a contiguous out tensor");
  check_not_inference(out, "out");
  check_reconstruct_args(coeffs, out.numel(), c10::nullopt);
  const int64_t num_bases = coeffs.size(1);
  check_plan(out.numel(), num_bases, block_size, block_offset);
  const int dist_id = parse_dist(dist);
  const int64_t nb = check_coeff_rows(coeffs, out.numel(), block_size, 0);
  a.active = checked_active(active, nb, out.device(), num_bases);
  a.coeffs = coeffs.to(at::kFloat).contiguous();
  ReconstructParams& p = a.p;
  p.coeffs = a.coeffs.data_ptr<float>();
  p.out = out.data_ptr();
  p.dtype = dt;
  p.dist = dist_id;
  p.numel = out.numel();
  p.block_size = block_size;
  p.num_blocks = nb;
  p.block_offset = (uint32_t)block_offset;
  p.num_bases = (int32_t)num_bases;
  p.seed = (uint64_t)seed;
  p.scale = (float)scale;
  p.alpha = (float)alpha;
  p.accumulate = accumulate;
  p.active = a.active.defined() ? a.active.data_ptr<int32_t>() : nullptr;
  return a;
}

inline void check_counter(const at::Tensor& counter) {
  TORCH_CHECK_TYPE(at::isIntegralType(counter.scalar_type(), /*includeBool=*/false),
                   "ferret: counter must be an integer tensor, got ", name(counter.scalar_type()));
  TORCH_CHECK_VALUE(counter.dim() == 2 && counter.size(1) == 4, "ferret: counter must have shape [N, 4], got ",
                    shape(counter.sizes()));
}

// CPU tensors only (no device-to-host copy).
inline void check_active_range(const at::Tensor& active_cpu, int64_t num_bases) {
  if (!active_cpu.defined() || active_cpu.numel() == 0) return;
  const int64_t lo = active_cpu.min().item<int64_t>(), hi = active_cpu.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi <= num_bases, "ferret: active counts must be in [0, num_bases=", num(num_bases),
                    "], got [", num(lo), ", ", num(hi), "]");
}

// ---------------------------------------------------------------------------- element offsets
// `start`: x[0] is element `start` of the global element stream, so element j is in global
// block block_offset + (start + j) / block_size at position (start + j) % block_size (sharded
// tensors, blocks that cross tensor edges). The kernels work on runs that start on a block
// boundary; a call with start % block_size != 0 is split: the head (the rest of the block
// `start` falls in) runs on a one-block temporary whose first start % block_size elements are
// zeros (project: they add exact zeros) or scratch (reconstruct: discarded), the body runs in
// place from the next block boundary. Results: reconstruct bit-identical to the unsharded
// call's slice; project's rows are the partial sums of the elements given.

// Checks a whole call with an element offset (what make_project / make_reconstruct check for
// an aligned one), so that its pieces cannot fail halfway.
inline void check_start_call(int64_t numel, int64_t num_bases, int64_t block_size, int64_t block_offset,
                             int64_t start) {
  TORCH_CHECK_VALUE(start >= 0, "ferret: start must be >= 0, got ", num(start));
  check_plan(numel, num_bases, block_size, block_offset);
  // block_offset <= 2^32 here (check_plan) and skip is bounded first, so nothing overflows int64
  const int64_t skip = start / block_size, nb = blocks_from(start, numel, block_size);
  const int64_t first = block_offset + std::min(skip, int64_t(1) << 33);
  TORCH_CHECK_VALUE(skip <= (int64_t(1) << 32) && nb <= (int64_t(1) << 32) && first <= (int64_t(1) << 32) - nb,
                    "ferret: global block indices must stay below 2^32 (block_offset + num_blocks: ", num(first), " + ",
                    num(nb), ")");
}

using ProjectFn = at::Tensor (*)(const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, int64_t, int64_t,
                                 int64_t, c10::string_view, double, const c10::optional<at::Tensor>&);
// out[0, numel) (+)= reconstruction of coeffs from a block boundary (the backend's kernel)
using ReconstructIntoFn = void (*)(at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, c10::string_view, double,
                                   double, bool, const c10::optional<at::Tensor>&);

// Before block_offset + start / block_size is formed (int64: it overflows for values near 2^63).
inline void check_first_block(int64_t block_offset, int64_t start, int64_t block_size) {
  TORCH_CHECK_VALUE(block_offset >= 0, "ferret: block_offset must be >= 0, got ", num(block_offset));
  TORCH_CHECK_VALUE(block_offset <= (int64_t(1) << 32) && start / block_size <= (int64_t(1) << 32),
                    "ferret: global block indices must stay below 2^32 (block_offset ", num(block_offset),
                    ", start / block_size ", num(start / block_size), ")");
}

inline c10::optional<at::Tensor> rows(const c10::optional<at::Tensor>& t, int64_t first, int64_t count) {
  if (!t.has_value()) return c10::nullopt;
  return t->narrow(0, first, count);
}

inline at::Tensor project_from(ProjectFn aligned, const at::Tensor& x, const c10::optional<at::Tensor>& y, int64_t seed,
                               int64_t num_bases, int64_t block_size, int64_t block_offset, c10::string_view dist,
                               double scale, const c10::optional<at::Tensor>& active, int64_t start,
                               bool check_counts) {
  TORCH_CHECK_VALUE(start >= 0, "ferret: start must be >= 0, got ", num(start));
  TORCH_CHECK_VALUE(block_size > 0, "ferret: block_size must be a positive int, got ", num(block_size));
  check_first_block(block_offset, start, block_size);
  if (start % block_size == 0)
    return aligned(x, y, seed, num_bases, block_size, block_offset + start / block_size, dist, scale, active);
  // the whole call first (dtype, y, plan, dist, active), then the two pieces
  parse_dtype(x.scalar_type(), "x");
  if (y.has_value()) check_y(x, *y);
  const int64_t n = x.numel(), p0 = start % block_size, g0 = block_offset + start / block_size;
  check_start_call(n, num_bases, block_size, block_offset, start);
  parse_dist(dist);
  const int64_t nb = blocks_from(start, n, block_size);
  at::Tensor act = checked_active(active, nb, x.device(), num_bases);
  if (check_counts) check_active_range(act, num_bases);
  const c10::optional<at::Tensor> act_opt = act.defined() ? c10::optional<at::Tensor>(act) : c10::nullopt;
  const int64_t h = std::min(n, block_size - p0);
  const at::Tensor xf = x.reshape(-1);
  at::Tensor xb = at::zeros({p0 + h}, x.options());
  xb.narrow(0, p0, h).copy_(xf.narrow(0, 0, h));
  c10::optional<at::Tensor> yb;
  if (y.has_value()) {
    yb = at::zeros({p0 + h}, x.options());
    yb->narrow(0, p0, h).copy_(y->reshape(-1).narrow(0, 0, h));
  }
  at::Tensor head = aligned(xb, yb, seed, num_bases, block_size, g0, dist, scale, rows(act_opt, 0, 1));
  if (n == h) return head;
  c10::optional<at::Tensor> yrest;
  if (y.has_value()) yrest = y->reshape(-1).narrow(0, h, n - h);
  at::Tensor body = aligned(xf.narrow(0, h, n - h), yrest, seed, num_bases, block_size, g0 + 1, dist, scale,
                            rows(act_opt, 1, nb - 1));
  return at::cat({head, body});
}

// reconstruct (out of place): the whole call, before its output of numel elements is allocated (a
// hostile numel failed in the allocator, 2^40, or overflowed its size, 2^63 - 1, before the plan was
// checked).
inline void check_reconstruct_call(const at::Tensor& coeffs, int64_t numel, int64_t block_size, int64_t block_offset,
                                   int64_t start, c10::optional<at::ScalarType> dtype) {
  check_reconstruct_args(coeffs, numel, dtype);
  check_start_call(numel, coeffs.size(1), block_size, block_offset, start);
  check_coeff_rows(coeffs, numel, block_size, start);
}

inline void reconstruct_from(ReconstructIntoFn aligned, at::Tensor& out, const at::Tensor& coeffs, int64_t seed,
                             int64_t block_size, int64_t block_offset, c10::string_view dist, double scale,
                             double alpha, bool accumulate, const c10::optional<at::Tensor>& active, int64_t start,
                             bool check_counts) {
  if (accumulate && coeffs.device() == out.device()) check_inplace(out, coeffs, active);  // (devices: below)
  TORCH_CHECK_VALUE(start >= 0, "ferret: start must be >= 0, got ", num(start));
  TORCH_CHECK_VALUE(block_size > 0, "ferret: block_size must be a positive int, got ", num(block_size));
  check_first_block(block_offset, start, block_size);
  if (start % block_size == 0)
    return aligned(out, coeffs, seed, block_size, block_offset + start / block_size, dist, scale, alpha, accumulate,
                   active);
  parse_dtype(out.scalar_type(), "out");
  TORCH_CHECK_VALUE(coeffs.device() == out.device(), "ferret: coeffs must be on out's device ", name(out.device()),
                    ", got ", name(coeffs.device()));
  TORCH_CHECK_VALUE(out.is_contiguous(), "ferret: reconstruct_ needs a contiguous out tensor");
  check_not_inference(out, "out");
  check_reconstruct_args(coeffs, out.numel(), c10::nullopt);
  const int64_t n = out.numel(), num_bases = coeffs.size(1), p0 = start % block_size;
  const int64_t g0 = block_offset + start / block_size;
  check_start_call(n, num_bases, block_size, block_offset, start);
  parse_dist(dist);
  const int64_t nb = check_coeff_rows(coeffs, n, block_size, start);
  at::Tensor act = checked_active(active, nb, out.device(), num_bases);
  if (check_counts) check_active_range(act, num_bases);
  const c10::optional<at::Tensor> act_opt = act.defined() ? c10::optional<at::Tensor>(act) : c10::nullopt;
  const int64_t h = std::min(n, block_size - p0);
  at::Tensor flat = out.view({-1});  // contiguous (checked above): a view of any shape's elements
  at::Tensor tmp = at::zeros({p0 + h}, out.options());
  if (accumulate) tmp.narrow(0, p0, h).copy_(flat.narrow(0, 0, h));
  aligned(tmp, coeffs.narrow(0, 0, 1), seed, block_size, g0, dist, scale, alpha, accumulate, rows(act_opt, 0, 1));
  flat.narrow(0, 0, h).copy_(tmp.narrow(0, p0, h));
  if (n == h) return;
  at::Tensor body = flat.narrow(0, h, n - h);
  aligned(body, coeffs.narrow(0, 1, nb - 1), seed, block_size, g0 + 1, dist, scale, alpha, accumulate,
          rows(act_opt, 1, nb - 1));
}

// ---------------------------------------------------------------------------- lists of tensors
// project_multi / reconstruct_multi_: tensor i of the list has its own block_offsets[i] and element
// offset starts[i] (empty: all 0) and owns rows [row_i, row_i + nb_i) of the result / coeffs /
// active, in list order, nb_i = blocks_from(starts[i], numel_i, block_size). The whole list is
// checked before anything is allocated or written; a message names the tensor (xs[3]: ...).

struct MultiItem {
  int64_t numel, lead, first_block, num_blocks, row;
};

struct MultiPlan {
  std::vector<MultiItem> items;
  int64_t rows = 0;
  at::Tensor active;  // int32 [rows] on the device, or undefined
};

inline std::string strip_prefix(const std::string& m) {
  const std::string p = "ferret: ";
  return m.compare(0, p.size(), p) == 0 ? m.substr(p.size()) : m;
}

// Runs f (checks of one tensor) and names the tensor in what it throws.
template <typename F>
void for_tensor(const std::string& who, F&& f) {
  try {
    f();
  } catch (const c10::TypeError& e) {
    TORCH_CHECK_TYPE(false, "ferret: ", who, ": ", strip_prefix(e.msg()));
  } catch (const c10::ValueError& e) {
    TORCH_CHECK_VALUE(false, "ferret: ", who, ": ", strip_prefix(e.msg()));
  }
}

inline MultiPlan plan_multi(const char* what, at::TensorList ts, at::TensorList ys, int64_t num_bases,
                            int64_t block_size, at::IntArrayRef block_offsets, at::IntArrayRef starts,
                            c10::string_view dist, const c10::optional<at::Tensor>& active, const at::Device& device) {
  const int64_t n = (int64_t)ts.size();
  TORCH_CHECK_VALUE(n > 0, "ferret: ", what, " must hold at least one tensor");
  TORCH_CHECK_VALUE((int64_t)block_offsets.size() == n, "ferret: block_offsets must have one entry per tensor (",
                    num(n), "), got ", num((int64_t)block_offsets.size()));
  TORCH_CHECK_VALUE(starts.empty() || (int64_t)starts.size() == n,
                    "ferret: starts must be empty or have one entry per tensor (", num(n), "), got ",
                    num((int64_t)starts.size()));
  TORCH_CHECK_VALUE(ys.empty() || (int64_t)ys.size() == n, "ferret: ys must be empty or have one tensor per x (",
                    num(n), "), got ", num((int64_t)ys.size()));
  parse_dist(dist);
  MultiPlan plan;
  plan.items.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const std::string who = std::string(what) + "[" + num(i) + "]";
    const at::Tensor& t = ts[i];
    for_tensor(who, [&] {
      parse_dtype(t.scalar_type(), "the tensor");
      TORCH_CHECK_VALUE(t.device() == device, "ferret: must be on ", name(device), ", got ", name(t.device()));
      if (!ys.empty()) check_y(t, ys[i]);
      const int64_t start = starts.empty() ? 0 : starts[i];
      check_start_call(t.numel(), num_bases, block_size, block_offsets[i], start);
      const int64_t nb = blocks_from(start, t.numel(), block_size);
      plan.items.push_back({t.numel(), start % block_size, block_offsets[i] + start / block_size, nb, plan.rows});
      plan.rows += nb;
    });
  }
  plan.active = checked_active(active, plan.rows, device, num_bases);
  return plan;
}

// outs of reconstruct_multi_: contiguous, none requiring grad in grad mode, no two sharing an element
// (the launch writes each element once, a loop of reconstruct_ would apply a shared one twice), none
// sharing memory with coeffs or active (check_apart).
inline void check_outs(at::TensorList outs, const at::Tensor& coeffs, const c10::optional<at::Tensor>& active) {
  std::vector<std::pair<std::pair<uintptr_t, uintptr_t>, int64_t>> spans;  // (byte_span, list index)
  for (size_t i = 0; i < outs.size(); ++i) {
    const std::string name = "outs[" + std::to_string(i) + "]";
    TORCH_CHECK_VALUE(outs[i].is_contiguous(), "ferret: ", name, ": reconstruct_multi_ needs contiguous tensors");
    check_not_inference(outs[i], name);
    // no autograd: a tensor that requires grad is updated only under no_grad (checked here, before
    // any tensor is written, instead of the first in-place write failing halfway)
    TORCH_CHECK_VALUE(!(outs[i].requires_grad() && at::GradMode::is_enabled()), "ferret: ", name,
                      " requires grad: update it under torch.no_grad() (reconstruct_multi_ has no autograd)");
    check_apart(outs[i], name, coeffs, "coeffs");
    if (active.has_value()) check_apart(outs[i], name, *active, "active");
    if (outs[i].numel()) spans.emplace_back(byte_span(outs[i]), (int64_t)i);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k) {
    const int64_t a = std::min(spans[k - 1].second, spans[k].second),
                  b = std::max(spans[k - 1].second, spans[k].second);
    TORCH_CHECK_VALUE(spans[k].first.first >= spans[k - 1].first.second, "ferret: outs[", num(a), "] and outs[", num(b),
                      "] overlap in memory (each element is updated once)");
  }
}

inline void check_multi_coeffs(const at::Tensor& coeffs, const MultiPlan& plan, const at::Device& device) {
  TORCH_CHECK_TYPE(
      coeffs.scalar_type() == at::kFloat || coeffs.scalar_type() == at::kBFloat16 || coeffs.scalar_type() == at::kHalf,
      "ferret: coeffs must be float32, bfloat16 or float16, got ", name(coeffs.scalar_type()));
  TORCH_CHECK_VALUE(coeffs.device() == device, "ferret: coeffs must be on the tensors' device ", name(device), ", got ",
                    name(coeffs.device()));
  TORCH_CHECK_VALUE(coeffs.dim() == 2 && coeffs.size(0) == plan.rows, "ferret: coeffs must have ", num(plan.rows),
                    " rows (the blocks of the ", num((int64_t)plan.items.size()), " tensors), got shape ",
                    shape(coeffs.sizes()));
}

// The list ops as a loop of the backend's one-tensor ops (the CPU kernels: they already spread
// each tensor over all cores; a launch per tensor costs nothing there).
using ProjectOp = at::Tensor (*)(const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, int64_t, int64_t,
                                 int64_t, c10::string_view, double, const c10::optional<at::Tensor>&, int64_t);
using ReconstructOp_ = void (*)(at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, c10::string_view, double,
                                double, const c10::optional<at::Tensor>&, int64_t);

inline c10::optional<at::Tensor> plan_rows(const MultiPlan& plan, size_t i) {
  if (!plan.active.defined()) return c10::nullopt;
  return plan.active.narrow(0, plan.items[i].row, plan.items[i].num_blocks);
}

inline at::Tensor project_multi_loop(ProjectOp one, at::TensorList xs, at::TensorList ys, int64_t seed,
                                     int64_t num_bases, int64_t block_size, at::IntArrayRef block_offsets,
                                     c10::string_view dist, double scale, const c10::optional<at::Tensor>& active,
                                     at::IntArrayRef starts) {
  TORCH_CHECK_VALUE(!xs.empty(), "ferret: xs must hold at least one tensor");
  const MultiPlan plan =
      plan_multi("xs", xs, ys, num_bases, block_size, block_offsets, starts, dist, active, xs[0].device());
  if (xs[0].device().is_cpu()) check_active_range(plan.active, num_bases);  // before any tensor's call
  at::Tensor out = at::empty({plan.rows, num_bases}, xs[0].options().dtype(at::kFloat));
  for (size_t i = 0; i < xs.size(); ++i) {
    const MultiItem& it = plan.items[i];
    if (!it.num_blocks) continue;
    const c10::optional<at::Tensor> y = ys.empty() ? c10::nullopt : c10::optional<at::Tensor>(ys[i]);
    out.narrow(0, it.row, it.num_blocks)
        .copy_(one(xs[i], y, seed, num_bases, block_size, block_offsets[i], dist, scale, plan_rows(plan, i),
                   starts.empty() ? 0 : starts[i]));
  }
  return out;
}

inline void reconstruct_multi_loop(ReconstructOp_ one, at::TensorList outs, const at::Tensor& coeffs, int64_t seed,
                                   int64_t block_size, at::IntArrayRef block_offsets, c10::string_view dist,
                                   double scale, double alpha, const c10::optional<at::Tensor>& active,
                                   at::IntArrayRef starts) {
  TORCH_CHECK_VALUE(!outs.empty(), "ferret: outs must hold at least one tensor");
  TORCH_CHECK_VALUE(coeffs.dim() == 2, "ferret: coeffs must be 2-D [num_blocks, num_bases], got shape ",
                    shape(coeffs.sizes()));
  const MultiPlan plan =
      plan_multi("outs", outs, {}, coeffs.size(1), block_size, block_offsets, starts, dist, active, outs[0].device());
  check_multi_coeffs(coeffs, plan, outs[0].device());
  check_outs(outs, coeffs, active);
  if (outs[0].device().is_cpu()) check_active_range(plan.active, coeffs.size(1));  // nothing written yet
  for (size_t i = 0; i < outs.size(); ++i) {
    const MultiItem& it = plan.items[i];
    if (!it.num_blocks) continue;
    at::Tensor o = outs[i];
    one(o, coeffs.narrow(0, it.row, it.num_blocks), seed, block_size, block_offsets[i], dist, scale, alpha,
        plan_rows(plan, i), starts.empty() ? 0 : starts[i]);
  }
}

}  // namespace ferret
