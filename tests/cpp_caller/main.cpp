// A caller without Python: loads the ferret_kernels library with dlopen (no interpreter, no
// ferret_kernels/ops.py) and calls the ops through the dispatcher by name, as any C++ /
// libtorch program would. Prints the results as hex float bits for tests/test_op_surface.py
// to compare, bit for bit, with what ferret_kernels gives in Python on the same input.
//
//   main <path to _C.so>
//
// With a CUDA device (a CUDA build of torch and of the extension) it also prints the CUDA
// kernels' results, which the test compares with Python's `cuda` backend on the same input.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <vector>
#include <cstring>
#include <optional>

static void print_bits(const char* tag, const at::Tensor& t) {
  at::Tensor c = t.contiguous().to(at::kFloat);
  const float* p = c.data_ptr<float>();
  std::printf("%s %lld", tag, (long long)c.numel());
  for (int64_t i = 0; i < c.numel(); ++i) {
    uint32_t u;
    std::memcpy(&u, p + i, 4);
    std::printf(" %08x", u);
  }
  std::printf("\n");
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  // RTLD_LAZY: the library's only Python symbol (PyModule_Create2, in PyInit__C) is never called
  if (!dlopen(argv[1], RTLD_LAZY | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  auto& d = c10::Dispatcher::singleton();
  auto project = d.findSchemaOrThrow("ferret::project", "")
                     .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t, int64_t,
                                       int64_t, c10::string_view, double, const std::optional<at::Tensor>&, int64_t)>();
  auto reconstruct =
      d.findSchemaOrThrow("ferret::reconstruct", "")
          .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, c10::string_view, double,
                            std::optional<at::ScalarType>, const std::optional<at::Tensor>&, int64_t)>();
  auto reconstruct_ = d.findSchemaOrThrow("ferret::reconstruct_", "")
                          .typed<void(at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, c10::string_view,
                                      double, double, const std::optional<at::Tensor>&, int64_t)>();
  auto project_multi =
      d.findSchemaOrThrow("ferret::project_multi", "")
          .typed<at::Tensor(at::TensorList, at::TensorList, int64_t, int64_t, int64_t, at::IntArrayRef,
                            c10::string_view, double, const std::optional<at::Tensor>&, at::IntArrayRef)>();
  auto reconstruct_multi_ =
      d.findSchemaOrThrow("ferret::reconstruct_multi_", "")
          .typed<void(at::TensorList, const at::Tensor&, int64_t, int64_t, at::IntArrayRef, c10::string_view, double,
                      double, const std::optional<at::Tensor>&, at::IntArrayRef)>();
  const int64_t n = 5000, bs = 1024;
  at::Tensor x = at::arange(n, at::kFloat).mul(0.37).sin();
  at::Tensor y = at::arange(n, at::kFloat).mul(0.11).cos().to(at::kBFloat16);
  at::Tensor g = project.call(x, std::nullopt, 7, 8, bs, 3, "rademacher", 0.5, std::nullopt, 0);
  print_bits("project", g);
  at::Tensor gd = project.call(x.to(at::kBFloat16), y, -5, 6, bs, 0, "gaussian", 1.0, std::nullopt, 0);
  print_bits("project_diff", gd);
  print_bits("reconstruct", reconstruct.call(g, 7, n, bs, 3, "uniform", 2.0, std::nullopt, std::nullopt, 0));
  // an element offset: elements 1500.. of the same stream (rows from block 1 on)
  print_bits("reconstruct_start", reconstruct.call(g.narrow(0, 1, g.size(0) - 1), 7, n - 1500, bs, 3, "uniform", 2.0,
                                                   std::nullopt, std::nullopt, 1500));
  at::Tensor out = at::arange(n, at::kFloat).mul(0.01);
  reconstruct_.call(out, g, 7, bs, 3, "rademacher", 0.5, -1.0, std::nullopt, 0);
  print_bits("reconstruct_", out);
  // a list of tensors: x, then the first 1500 elements of y, which start at element 700 of block 9
  const std::vector<at::Tensor> xs{x, y.narrow(0, 0, 1500)};
  const std::vector<int64_t> offs{3, 9}, starts{0, 700};
  at::Tensor gm = project_multi.call(xs, {}, 7, 8, bs, offs, "uniform", 0.5, std::nullopt, starts);
  print_bits("project_multi", gm);
  std::vector<at::Tensor> outs{x.clone(), y.narrow(0, 0, 1500).clone()};
  reconstruct_multi_.call(outs, gm, 7, bs, offs, "rademacher", 1.0, -0.5, std::nullopt, starts);
  print_bits("reconstruct_multi_0", outs[0]);
  print_bits("reconstruct_multi_1", outs[1].to(at::kFloat));
  if (at::hasCUDA()) {  // the CUDA kernels, through the same dispatcher entries
    at::Tensor xc = x.to(at::kCUDA);
    const std::vector<at::Tensor> xsc{xc, xs[1].to(at::kCUDA)};
    print_bits("project_multi_cuda",
               project_multi.call(xsc, {}, 7, 8, bs, offs, "uniform", 0.5, std::nullopt, starts).cpu());
    at::Tensor gc = project.call(xc, std::nullopt, 7, 8, bs, 3, "rademacher", 0.5, std::nullopt, 0);
    print_bits("project_cuda", gc.cpu());
    print_bits("reconstruct_cuda",
               reconstruct.call(gc, 7, n, bs, 3, "uniform", 2.0, std::nullopt, std::nullopt, 0).cpu());
  }
  try {
    project.call(x, std::nullopt, 7, 0, bs, 0, "rademacher", 1.0, std::nullopt, 0);
    std::printf("error none\n");
  } catch (const c10::ValueError& e) {
    std::printf("error ValueError %s\n", e.what_without_backtrace());
  }
  return 0;
}
