// The op schemas: torch.ops.ferret.{project, reconstruct, reconstruct_, project_multi,
// reconstruct_multi_, philox}; the _multi ops take a list of tensors (a model) in one call. Defined here,
// in C++, so the ops exist for any caller that loads this library, with or without Python; the
// CPU and CUDA kernels are registered on them per dispatch key (cpu/ops.cpp, cuda/ops.cpp), and
// ferret_kernels/ops.py adds the fake kernels, autograd and a fallback for other devices.
// Semantics: docs/ops.md; randomness: docs/rng.md. Keep in sync with SCHEMAS in ops.py, which
// defines the same schemas when this library is not built (a test compares the two).
#include <torch/library.h>

TORCH_LIBRARY(ferret, m) {
  m.set_python_module("ferret_kernels.ops");
  m.def(
      "project(Tensor x, Tensor? y, int seed, int num_bases, int block_size, int block_offset=0, "
      "str dist=\"rademacher\", float scale=1.0, Tensor? active=None, int start=0) -> Tensor");
  m.def(
      "reconstruct(Tensor coeffs, int seed, int numel, int block_size, int block_offset=0, "
      "str dist=\"rademacher\", float scale=1.0, ScalarType? dtype=None, Tensor? active=None, int start=0) -> Tensor");
  m.def(
      "reconstruct_(Tensor(a!) out, Tensor coeffs, int seed, int block_size, int block_offset=0, "
      "str dist=\"rademacher\", float scale=1.0, float alpha=1.0, Tensor? active=None, int start=0) -> ()");
  m.def(
      "project_multi(Tensor[] xs, Tensor[] ys, int seed, int num_bases, int block_size, int[] block_offsets, "
      "str dist=\"rademacher\", float scale=1.0, Tensor? active=None, int[] starts=[]) -> Tensor");
  m.def(
      "reconstruct_multi_(Tensor(a!)[] outs, Tensor coeffs, int seed, int block_size, int[] block_offsets, "
      "str dist=\"rademacher\", float scale=1.0, float alpha=1.0, Tensor? active=None, int[] starts=[]) -> ()");
  m.def("philox(Tensor counter, int seed) -> Tensor");
  m.def("_cpu_isa(str name=\"\") -> str");
}
