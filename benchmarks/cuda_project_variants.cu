// Torch-free microbenchmark of the CUDA project kernel's variants (csrc/cuda/kernels.cuh):
// occupancy target MIN_BLOCKS x chunks per CTA CHUNKS ("mb*_ch*"), two candidates for the
// second pass (fused into the first, project_fused_kernel: "fused_*"; the two passes with a
// programmatic dependent launch: "pdl_*"), a prefetch into L2 of the chunk a wave of CTAs on
// (project_prefetch_kernel: "pf_<waves>", and the fused kernel with it: "fused_pf"), the shipped
// first pass alone ("pass1_*") and with the
// second pass that ran before 2026-11-27 ("chain_*"), and at K <= 4 the quad candidate
// (project_quad_kernel, "quad<runs>": other bits, checked within float32 rounding, "close"), side by
// side in one process, beside the device's copy and read bandwidth; checks that every other variant's
// output is bit-identical to the reference (mb1_ch1). Used to choose ProjectLaunch from measurements. Gone after an
// H100 measured them slower (rows kept in results/cuda_project_variants.csv): a cp.async pipeline
// ("pipe_*", 32-40% slower at K = 4) and a packed-run kernel ("pk_*": 16-bit x kept as loaded
// with the next chunk prefetched, 17-27% slower at K = 4 and 16).
//
//   nvcc -O3 -arch=sm_90 --expt-relaxed-constexpr -Icsrc benchmarks/cuda_project_variants.cu -o build/pv
//   build/pv [log2n=28] [csv path | -] [profile]   (scripts/gpu_check.py builds and runs it on a GPU;
//                                                   profile: the kernels once each, for ncu)
//
// Rows: variant, dtype, dist, K (4, 16, 64), median ms of 20 (CUDA events, project + its reduce
// pass), GB/s of input read, fraction of the copy and of the read bandwidth, registers, CTAs per
// SM, identical ("-": not compared).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/kernels.cuh"

using namespace ferret;
using namespace ferret::cuda;

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

__global__ void fill_kernel(__nv_bfloat16* x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32) * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2bfloat16_rn(((float)(h & 0xFFFFFF) / 16777216.0f - 0.5f) * 4.0f);
  }
}

// Read floor: every element read once (16-byte loads), one float per thread written.
__global__ void read_kernel(const uint4* x, int64_t nvec, float* sink) {
  float s = 0.0f;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec; i += (int64_t)gridDim.x * blockDim.x) {
    const uint4 v = __ldg(x + i);
    s += __uint_as_float(v.x) + __uint_as_float(v.y) + __uint_as_float(v.z) + __uint_as_float(v.w);
  }
  if (s == 12345.0f) sink[threadIdx.x] = s;
}

// Read floor with 4 independent 16-byte loads in flight per thread (the one above has one):
// how much of the gap to `read` is the kernel's memory-level parallelism.
__global__ void read4_kernel(const uint4* x, int64_t nvec, float* sink) {
  float s = 0.0f;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = i + u * stride < nvec ? __ldg(x + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; ++u)
      s += __uint_as_float(v[u].x) + __uint_as_float(v[u].y) + __uint_as_float(v[u].z) + __uint_as_float(v[u].w);
  }
  if (s == 12345.0f) sink[threadIdx.x] = s;
}

// The second pass that ran before 2026-11-27, kept to time beside the shipped one: a thread per
// (block, basis) adds the block's chunks in a chain (grid: blocks x ceil(K / 256)).
__global__ void reduce_chain_kernel(const float* part, int64_t cpb, int K, float scale, float* out) {
  const int64_t b = blockIdx.x;
  for (int64_t k = (int64_t)blockIdx.y * kThreads + threadIdx.x; k < K; k += (int64_t)gridDim.y * kThreads) {
    float s = 0.0f;
    for (int64_t c = 0; c < cpb; ++c) s += part[(b * cpb + c) * K + k];
    out[b * K + k] = s * scale;
  }
}

// Candidate "pdl_mb4": the shipped two passes with Hopper's programmatic dependent launch: the
// first pass lets the second launch at once (griddepcontrol.launch_dependents), whose CTAs wait in
// griddepcontrol.wait until the whole first pass has finished and its writes are visible. That
// hides the launch gap between the passes; the sums and their order are reduce_kernel's.
__global__ void __launch_bounds__(kThreads, 4) project_pdl_kernel(ProjectParams p, int64_t cpb, float* part) {
  __shared__ float red[kWarps][kTileK];
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  project_own_chunk<__nv_bfloat16, kRademacher>(p, cpb, part, red);
}

__global__ void __launch_bounds__(kThreads)
    reduce_pdl_kernel(const float* part, int64_t cpb, int64_t rows, int K, float scale, float* out) {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  reduce_rows(part, cpb, rows, K, scale, out);
}

template <typename F>
float median_ms(F&& f, cudaStream_t stream = 0, int reps = 20) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  f();
  f();
  CK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a, stream));
    f();
    CK(cudaEventRecord(b, stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Result {
  std::string name;
  int K;
  float ms;
  int regs, ctas;
  bool same;
  bool compared = true;
  bool close = false;  // other bits by design: `same` says within float32 rounding, not bit for bit
};

// Before the launch whose output is compared: the output and the partial sums filled with NaNs, so a
// launch that leaves an entry of either unwritten cannot pass on a previous row's values.
void fill_nans(const ProjectParams& p, float* part) {
  const int64_t cpb = chunks_per_block(p.block_size, kRademacher);
  CK(cudaMemset(p.out, 0xff, (size_t)p.num_blocks * p.num_bases * 4));
  CK(cudaMemset(part, 0xff, (size_t)p.num_blocks * cpb * p.num_bases * 4));
}

// The CTAs of `kernel` (kThreads each) resident on one SM at once.
template <typename Kernel>
int ctas_per_sm(Kernel kernel) {
  int ctas = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kernel, kThreads, 0));
  return ctas;
}

// A row: `kernel`'s registers and occupancy, and whether p.out equals the reference (is_ref: it is
// the reference, copied to out_ref). close (a candidate with other bits, the quad kernel): whether every
// entry is finite and within 1e-4 x the largest |reference| entry of it instead (float32 rounding of
// sums of 2^20 terms is ~1e-6 of their l1 norm; a wrong basis, element or block is off by about the
// whole entry).
template <typename Kernel>
Result finish(const char* name, const ProjectParams& p, float ms, Kernel kernel, float* out_ref, bool is_ref,
              bool close = false) {
  cudaFuncAttributes attr;
  CK(cudaFuncGetAttributes(&attr, kernel));
  const int regs = attr.numRegs, ctas = ctas_per_sm(kernel);
  const size_t nout = (size_t)p.num_blocks * p.num_bases;
  std::vector<float> got(nout), ref(nout);
  CK(cudaMemcpy(got.data(), p.out, nout * 4, cudaMemcpyDeviceToHost));
  if (is_ref) CK(cudaMemcpy(out_ref, p.out, nout * 4, cudaMemcpyDeviceToDevice));
  CK(cudaMemcpy(ref.data(), out_ref, nout * 4, cudaMemcpyDeviceToHost));
  bool same = std::memcmp(got.data(), ref.data(), nout * 4) == 0;
  if (close) {
    float top = 0.0f;
    for (float v : ref) top = std::max(top, std::fabs(v));
    same = true;
    for (size_t i = 0; i < nout; ++i) same = same && std::isfinite(got[i]) && std::fabs(got[i] - ref[i]) <= 1e-4f * top;
  }
  Result r{name, p.num_bases, ms, regs, ctas, same};
  r.close = close;
  return r;
}

// The shipped configuration's first pass alone (chain false: no second pass, what the second
// pass and the gap between the two launches cost; its output is not written) or with the chain
// second pass that ran before (another summation order). Neither is compared.
Result run_first_pass(const char* name, ProjectParams p, float* part, bool chain) {
  using T = __nv_bfloat16;
  const int64_t cpb = chunks_per_block(p.block_size, kRademacher);
  const int64_t chunks = p.num_blocks * cpb;
  const float ms = median_ms([&] {
    project_kernel<T, kRademacher, 4, 1><<<(unsigned)chunks, kThreads>>>(p, cpb, chunks, part);
    if (chain) {
      const dim3 grid((unsigned)p.num_blocks, (unsigned)((p.num_bases + kThreads - 1) / kThreads));
      reduce_chain_kernel<<<grid, kThreads>>>(part, cpb, p.num_bases, p.scale, p.out);
    }
    CK(cudaGetLastError());
  });
  cudaFuncAttributes attr;
  CK(cudaFuncGetAttributes(&attr, project_kernel<T, kRademacher, 4, 1>));
  return {name, p.num_bases, ms, attr.numRegs, 4, true, false};
}

template <int DIST, int MB, int CH>
Result run_variant(const char* name, ProjectParams p, float* part, float* out_ref, bool is_ref) {
  using T = __nv_bfloat16;
  const auto launch = [&] { CK((launch_project_variant<T, DIST, MB, CH>(p, part, 0))); };
  const float ms = median_ms(launch);
  fill_nans(p, part);
  launch();
  return finish(name, p, ms, project_kernel<T, DIST, MB, CH>, out_ref, is_ref);
}

// The candidates: project_fused_kernel (kernels.cuh) and the programmatic dependent launch above;
// compared bit for bit with the reference like every variant.
// ahead > 0: each CTA prefetches the chunk that many CTAs on (as project_prefetch_kernel).
Result run_fused(const char* name, ProjectParams p, float* part, unsigned* tickets, float* out_ref, int64_t ahead = 0) {
  CK(cudaMemset(tickets, 0, p.num_blocks * sizeof(unsigned)));
  const float ms = median_ms([&] { CK(launch_project_fused(p, part, tickets, 0, ahead)); });
  // tickets left set would let the timed launches skip their sums: all must be back at 0, and a
  // launch into an output of NaNs must write every entry
  std::vector<unsigned> left(p.num_blocks);
  CK(cudaMemcpy(left.data(), tickets, p.num_blocks * sizeof(unsigned), cudaMemcpyDeviceToHost));
  for (unsigned v : left)
    if (v != 0) {
      std::fprintf(stderr, "%s: a ticket is %u after the timed launches, not 0\n", name, v);
      std::exit(2);
    }
  fill_nans(p, part);
  CK(launch_project_fused(p, part, tickets, 0, ahead));
  const auto kernel = ahead > 0 ? project_fused_kernel<__nv_bfloat16, kRademacher, kProjectMinBlocks<kRademacher>, true>
                                : project_fused_kernel<__nv_bfloat16, kRademacher, kProjectMinBlocks<kRademacher>>;
  return finish(name, p, ms, kernel, out_ref, false);
}

// The quad candidate (project_quad_kernel, K <= 4 only): `runs` runs of 32 elements a lane, one tree a span.
template <int RUNS>
Result run_quad(const char* name, ProjectParams p, float* part, float* out_ref) {
  const auto kernel = project_quad_kernel<__nv_bfloat16, RUNS, kProjectMinBlocks<kRademacher>>;
  const auto launch = [&] { CK(launch_project_quad(p, part, RUNS, 0)); };
  const float ms = median_ms(launch);
  fill_nans(p, part);
  launch();
  return finish(name, p, ms, kernel, out_ref, false, true);
}

// The CTAs of `kernel` resident on the whole device at once (a wave).
template <typename Kernel>
int resident_ctas(Kernel kernel, int sms) {
  return ctas_per_sm(kernel) * sms;
}

// The prefetch candidate: each CTA first prefetches the chunk `waves` x the resident CTAs on into L2.
Result run_prefetch(const char* name, ProjectParams p, float* part, float* out_ref, double waves, int sms) {
  const auto kernel = project_prefetch_kernel<__nv_bfloat16, kRademacher, kProjectMinBlocks<kRademacher>>;
  const int64_t ahead = (int64_t)(waves * resident_ctas(kernel, sms));
  const auto launch = [&] { CK(launch_project_prefetch(p, part, ahead, 0)); };
  const float ms = median_ms(launch);
  fill_nans(p, part);
  launch();
  return finish(name, p, ms, kernel, out_ref, false);
}

Result run_pdl(const char* name, ProjectParams p, float* part, float* out_ref) {
  const int64_t cpb = chunks_per_block(p.block_size, kRademacher);
  const int64_t warps = p.num_blocks * p.num_bases;
  cudaLaunchAttribute attr_pdl[1];
  attr_pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr_pdl[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)std::min<int64_t>((warps + kWarps - 1) / kWarps, int64_t(1) << 20));
  cfg.blockDim = dim3(kThreads);
  cudaStream_t stream;  // a created stream: programmatic launch is not for the legacy default one
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cfg.stream = stream;
  cfg.attrs = attr_pdl;
  cfg.numAttrs = 1;
  const auto launch = [&] {
    project_pdl_kernel<<<(unsigned)(p.num_blocks * cpb), kThreads, 0, stream>>>(p, cpb, part);
    CK(cudaGetLastError());
    CK(cudaLaunchKernelEx(&cfg, reduce_pdl_kernel, (const float*)part, cpb, p.num_blocks, (int)p.num_bases, p.scale,
                          p.out));
  };
  const float ms = median_ms(launch, stream);
  CK(cudaStreamSynchronize(stream));
  fill_nans(p, part);
  launch();
  CK(cudaStreamSynchronize(stream));
  CK(cudaStreamDestroy(stream));
  return finish(name, p, ms, project_pdl_kernel, out_ref, false);
}

// The project every row runs: bf16 x of n elements in blocks of bs, rademacher, K bases, no y, no
// active counts, into out.
ProjectParams bench_params(const __nv_bfloat16* x, int64_t n, int64_t bs, int K, float* out) {
  ProjectParams p{};
  p.x = x;
  p.y = nullptr;
  p.dtype = kBF16;
  p.dist = kRademacher;
  p.numel = n;
  p.block_size = bs;
  p.num_blocks = (n + bs - 1) / bs;
  p.block_offset = 3;
  p.num_bases = K;
  p.seed = 0x123456789abcdefULL;
  p.scale = 1.0f;
  p.active = nullptr;
  p.out = out;
  return p;
}

// `profile`: each kernel of interest launched once at K = 4 (the read floors, the shipped first pass
// and second pass, the prefetch candidate one and two waves ahead, the fused candidate), nothing timed
// or compared: for a profiler run (scripts/gpu_check.py runs it under ncu where ncu can read counters).
int profile(const __nv_bfloat16* x, int64_t n, int64_t bs, int sms) {
  const int K = 4;
  const int64_t nb = (n + bs - 1) / bs, cpb = chunks_per_block(bs, kRademacher);
  float *part, *out, *sink;
  unsigned* tickets;
  CK(cudaMalloc(&part, nb * cpb * K * 4));
  CK(cudaMalloc(&out, nb * K * 4));
  CK(cudaMalloc(&sink, 4096));
  CK(cudaMalloc(&tickets, nb * sizeof(unsigned)));
  CK(cudaMemset(tickets, 0, nb * sizeof(unsigned)));
  const ProjectParams p = bench_params(x, n, bs, K, out);
  read_kernel<<<8 * sms, 512>>>(reinterpret_cast<const uint4*>(x), n * 2 / 16, sink);
  read4_kernel<<<8 * sms, 512>>>(reinterpret_cast<const uint4*>(x), n * 2 / 16, sink);
  CK(launch_project(p, part, 0));  // ProjectLaunch: project_kernel, then reduce_kernel
  const auto pf = project_prefetch_kernel<__nv_bfloat16, kRademacher, kProjectMinBlocks<kRademacher>>;
  CK(launch_project_prefetch(p, part, resident_ctas(pf, sms), 0));
  CK(launch_project_prefetch(p, part, 2 * resident_ctas(pf, sms), 0));
  CK(launch_project_fused(p, part, tickets, 0));
  CK(launch_project_quad(p, part, 2, 0));
  CK(launch_project_quad(p, part, 4, 0));
  CK(cudaDeviceSynchronize());
  std::printf(
      "profiled: read, read4, project_kernel + reduce_kernel, project_prefetch_kernel (1 and 2 waves), "
      "project_fused_kernel, project_quad_kernel (2 and 4 runs) + reduce_kernel; K = %d, bf16 n = %lld\n",
      K, (long long)n);
  return 0;
}

int main(int argc, char** argv) {
  char* end = nullptr;
  const long arg = argc > 1 ? std::strtol(argv[1], &end, 10) : 28;
  // The sizes it is meant for: one block (2^20 elements) up to 2^32 (8 GiB of bf16 input; the
  // partial sums of K = 64 then take 128 MiB). The grids' unsigned casts would hold far beyond.
  if ((argc > 1 && (end == argv[1] || *end != '\0')) || arg < 20 || arg > 32) {
    std::fprintf(stderr, "log2n must be an integer 20 .. 32 (blocks of 2^20 elements), got '%s'\n", argv[1]);
    return 1;
  }
  const int log2n = (int)arg;
  const char* csv = argc > 2 && std::strcmp(argv[2], "-") != 0 ? argv[2] : nullptr;
  const int64_t n = int64_t(1) << log2n, bs = int64_t(1) << 20;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  __nv_bfloat16* x;
  CK(cudaMalloc(&x, n * 2));
  fill_kernel<<<4 * prop.multiProcessorCount, 256>>>(x, n);
  CK(cudaGetLastError());
  if (argc > 3 && std::strcmp(argv[3], "profile") == 0) return profile(x, n, bs, prop.multiProcessorCount);
  // copy and read bandwidth of this device (copy: bytes read + written)
  const int64_t cbytes = int64_t(1) << 30;
  void *ca, *cb;
  CK(cudaMalloc(&ca, cbytes));
  CK(cudaMalloc(&cb, cbytes));
  CK(cudaMemset(ca, 1, cbytes));
  const float copy_ms = median_ms([&] { CK(cudaMemcpyAsync(cb, ca, cbytes, cudaMemcpyDeviceToDevice)); });
  const double copy_gbs = 2.0 * cbytes / (copy_ms * 1e-3) / 1e9;
  CK(cudaFree(ca));
  CK(cudaFree(cb));
  float* sink;
  CK(cudaMalloc(&sink, 4096));
  const float read_ms = median_ms(
      [&] { read_kernel<<<8 * prop.multiProcessorCount, 512>>>(reinterpret_cast<const uint4*>(x), n * 2 / 16, sink); });
  const double read_gbs = n * 2.0 / (read_ms * 1e-3) / 1e9;
  const float read4_ms = median_ms([&] {
    read4_kernel<<<8 * prop.multiProcessorCount, 512>>>(reinterpret_cast<const uint4*>(x), n * 2 / 16, sink);
  });
  const double read4_gbs = n * 2.0 / (read4_ms * 1e-3) / 1e9;
  std::printf(
      "# %s, %d SMs | copy %.0f GB/s | read %.0f GB/s (bf16 n = 2^%d: %.3f ms) | read, 4 loads in flight: %.0f GB/s\n",
      prop.name, prop.multiProcessorCount, copy_gbs, read_gbs, log2n, read_ms, read4_gbs);

  std::vector<Result> rows;
  const int Ks[] = {4, 16, 64};
  for (int K : Ks) {
    const int64_t nb = (n + bs - 1) / bs;
    const int64_t cpb = chunks_per_block(bs, kRademacher);
    float *part, *out, *ref;
    unsigned* tickets;
    CK(cudaMalloc(&tickets, nb * sizeof(unsigned)));
    CK(cudaMalloc(&part, nb * cpb * K * 4));
    CK(cudaMalloc(&out, nb * K * 4));
    CK(cudaMalloc(&ref, nb * K * 4));
    const ProjectParams p = bench_params(x, n, bs, K, out);
    rows.push_back(run_variant<kRademacher, 1, 1>("mb1_ch1", p, part, ref, true));
    rows.push_back(run_variant<kRademacher, 2, 1>("mb2_ch1", p, part, ref, false));
    rows.push_back(run_variant<kRademacher, 3, 1>("mb3_ch1", p, part, ref, false));
    rows.push_back(run_variant<kRademacher, 4, 1>("mb4_ch1", p, part, ref, false));
    rows.push_back(run_variant<kRademacher, 4, 4>("mb4_ch4", p, part, ref, false));
    rows.push_back(run_fused("fused_mb4", p, part, tickets, ref));
    rows.push_back(run_pdl("pdl_mb4", p, part, ref));
    const int sms = prop.multiProcessorCount;
    rows.push_back(run_prefetch("pf_0.5", p, part, ref, 0.5, sms));
    rows.push_back(run_prefetch("pf_1", p, part, ref, 1.0, sms));
    rows.push_back(run_prefetch("pf_2", p, part, ref, 2.0, sms));
    rows.push_back(run_prefetch("pf_4", p, part, ref, 4.0, sms));
    rows.push_back(run_fused(
        "fused_pf", p, part, tickets, ref,
        resident_ctas(project_fused_kernel<__nv_bfloat16, kRademacher, kProjectMinBlocks<kRademacher>, true>, sms)));
    rows.push_back(run_first_pass("pass1_mb4", p, part, false));
    rows.push_back(run_first_pass("chain_mb4", p, part, true));
    if (K <= 4) {
      rows.push_back(run_quad<2>("quad2", p, part, ref));
      rows.push_back(run_quad<4>("quad4", p, part, ref));
    }
    CK(cudaFree(tickets));
    CK(cudaFree(part));
    CK(cudaFree(out));
    CK(cudaFree(ref));
  }
  FILE* f = csv ? std::fopen(csv, "w") : nullptr;
  if (f)
    std::fprintf(f,
                 "gpu,sms,variant,dtype,dist,n,K,time_ms,GB_per_s,frac_of_copy,frac_of_read,regs,ctas_per_sm,identical,"
                 "copy_GBps,read_GBps,read4_GBps\n");
  std::printf("%-8s %3s %8s %8s %8s %8s %5s %5s %s\n", "variant", "K", "ms", "GB/s", "of copy", "of read", "regs",
              "ctas", "identical");
  for (const Result& r : rows) {
    const double gbs = n * 2.0 / (r.ms * 1e-3) / 1e9;
    std::printf("%-8s %3d %8.4f %8.0f %8.3f %8.3f %5d %5d %s\n", r.name.c_str(), r.K, r.ms, gbs, gbs / copy_gbs,
                gbs / read_gbs, r.regs, r.ctas,
                !r.compared ? "-"
                : r.close   ? (r.same ? "close" : "NO")
                : r.same    ? "yes"
                            : "NO");
    if (f)
      std::fprintf(f, "%s,%d,%s,bfloat16,rademacher,%lld,%d,%.5f,%.1f,%.4f,%.4f,%d,%d,%s,%.1f,%.1f,%.1f\n", prop.name,
                   prop.multiProcessorCount, r.name.c_str(), (long long)n, r.K, r.ms, gbs, gbs / copy_gbs,
                   gbs / read_gbs, r.regs, r.ctas,
                   !r.compared ? "-"
                   : r.close   ? (r.same ? "close" : "no")
                   : r.same    ? "yes"
                               : "no",
                   copy_gbs, read_gbs, read4_gbs);
  }
  if (f) std::fclose(f);
  bool all = true;
  for (const Result& r : rows) all = all && r.same;
  return all ? 0 : 2;
}
