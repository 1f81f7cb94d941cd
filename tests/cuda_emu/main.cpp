// Command-line driver that runs the CUDA kernels of csrc/cuda/kernels.cuh under the host
// emulation (include/cuda_emu.h). tests/test_cuda_emulation.py writes the inputs as raw
// files, runs one op, and checks the output against the reference and the CPU kernel.
//
//   cuda_emu project     dir=D dtype=f32|bf16|f16 dist=0|1|2 numel= block_size= block_offset= K= seed=
//                        scale= [misalign=elements] [fused=1: project_fused_kernel]
//                        [prefetch=N: each CTA prefetches the chunk N CTAs on (project_prefetch_kernel,
//                        or the fused kernel's prefetch with fused=1)] [chunks=4: project_kernel with
//                        CHUNKS = 4, each CTA four chunks, the next one's loads ahead (a benchmark variant)]
//                        [quad=2|4: project_quad_kernel, the K <= 4 rademacher candidate, with that many runs]
//                        reads x.bin [y.bin] [active.bin], writes out.bin
//   cuda_emu reconstruct ... alpha= accumulate=0|1           reads coeffs.bin [out.bin] [active.bin]
//   cuda_emu project_multi dir=D dtype= dist= block_size= K= seed= scale= segs=n:lead:first_block:row,...
//                        reads x<i>.bin [y<i>.bin] per segment [active.bin], writes out.bin (launch-row order)
//   cuda_emu reconstruct_multi ... alpha=   reads out<i>.bin coeffs.bin [active.bin], writes out<i>.bin
//   cuda_emu philox      dir=D n= seed=                      reads ctr.bin (int64 [n, 4]), writes out.bin
//   cuda_emu selftest    what=deadlock|oob                   kernels the emulator must reject
//
// Buffers are heap allocations of exactly the tensor's size (shifted by `misalign` elements,
// to take the kernels off their 16-byte vector path), so AddressSanitizer sees any access
// past either end. A launch error exits 2, an emulator finding 86, a sanitizer finding 1.
#include <stdint.h>
#include <stdio.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/kernels.cuh"

namespace {

using Args = std::map<std::string, std::string>;

const std::string& need(const Args& a, const char* k) {
  auto it = a.find(k);
  if (it == a.end()) throw std::runtime_error(std::string("missing argument ") + k);
  return it->second;
}
int64_t num(const Args& a, const char* k) { return std::stoll(need(a, k)); }
uint64_t unum(const Args& a, const char* k) { return std::stoull(need(a, k)); }
double real(const Args& a, const char* k) { return std::stod(need(a, k)); }
int64_t opt(const Args& a, const char* k, int64_t d) { return a.count(k) ? num(a, k) : d; }

// An exact-size heap buffer (plus `shift` leading bytes that the data starts after).
struct Buffer {
  std::unique_ptr<char[]> mem;
  char* data = nullptr;
  size_t bytes = 0;
  Buffer(size_t n, size_t shift) : mem(new char[n + shift]), data(mem.get() + shift), bytes(n) {}
};

std::string path(const Args& a, const char* name) { return need(a, "dir") + "/" + name; }
bool exists(const std::string& p) {
  FILE* f = fopen(p.c_str(), "rb");
  if (f) fclose(f);
  return f != nullptr;
}

std::unique_ptr<Buffer> load(const std::string& p, size_t bytes, size_t shift) {
  auto b = std::make_unique<Buffer>(bytes, shift);
  FILE* f = fopen(p.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + p);
  const size_t got = fread(b->data, 1, bytes, f);
  const bool extra = fgetc(f) != EOF;
  fclose(f);
  if (got != bytes || extra) throw std::runtime_error(p + " does not hold " + std::to_string(bytes) + " bytes");
  return b;
}

void save(const std::string& p, const void* data, size_t bytes) {
  FILE* f = fopen(p.c_str(), "wb");
  if (!f || fwrite(data, 1, bytes, f) != bytes) throw std::runtime_error("cannot write " + p);
  fclose(f);
}

int dtype_of(const std::string& s, size_t* size) {
  if (s == "f32") return *size = 4, ferret::kF32;
  if (s == "bf16") return *size = 2, ferret::kBF16;
  if (s == "f16") return *size = 2, ferret::kF16;
  throw std::runtime_error("unknown dtype " + s);
}

int check(cudaError_t e) {
  if (e == cudaSuccess) return 0;
  fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(e));
  return 2;
}

// The fields ProjectParams and ReconstructParams share; returns the element size in bytes.
template <typename Params>
size_t shared_params(const Args& a, Params& p) {
  size_t es;
  p.dtype = dtype_of(need(a, "dtype"), &es);
  p.dist = (int)num(a, "dist");
  p.numel = num(a, "numel");
  p.block_size = num(a, "block_size");
  p.num_blocks = (p.numel + p.block_size - 1) / p.block_size;
  p.block_offset = (uint32_t)num(a, "block_offset");
  p.num_bases = (int32_t)num(a, "K");
  p.seed = unum(a, "seed");
  p.scale = (float)real(a, "scale");
  return es;
}

// project_kernel with four chunks a CTA (benchmarks/cuda_project_variants.cu times it), then the second pass
template <typename T, int DIST>
struct ProjectChunks4 {
  static cudaError_t run(const ferret::ProjectParams& p, float* part, cudaStream_t s) {
    return ferret::cuda::launch_project_variant<T, DIST, 1, 4>(p, part, s);
  }
};

int project(const Args& a) {
  ferret::ProjectParams p{};
  const size_t es = shared_params(a, p);
  const size_t shift = (size_t)opt(a, "misalign", 0) * es;
  auto x = load(path(a, "x.bin"), p.numel * es, shift);
  p.x = x->data;
  std::unique_ptr<Buffer> y, active;
  if (exists(path(a, "y.bin"))) p.y = (y = load(path(a, "y.bin"), p.numel * es, shift))->data;
  if (exists(path(a, "active.bin")))
    p.active = reinterpret_cast<const int32_t*>((active = load(path(a, "active.bin"), p.num_blocks * 4, 0))->data);
  const int runs = (int)opt(a, "quad", 0);
  const int64_t cpb = runs ? ferret::cuda::quad_spans_per_block(p.block_size, runs)
                           : ferret::cuda::chunks_per_block(p.block_size, p.dist);
  Buffer part(p.num_blocks * cpb * p.num_bases * 4, 0), out(p.num_blocks * p.num_bases * 4, 0);
  memset(part.data, 0, part.bytes);
  memset(out.data, 0xff, out.bytes);  // NaN: an entry the kernels never write shows
  p.out = reinterpret_cast<float*>(out.data);
  float* pp = reinterpret_cast<float*>(part.data);
  const int64_t ahead = opt(a, "prefetch", -1);
  if (opt(a, "fused", 0)) {  // the one-launch candidate; its tickets must come back zeroed
    std::vector<unsigned> tickets(p.num_blocks, 0u);
    if (int rc = check(ferret::cuda::launch_project_fused(p, pp, tickets.data(), nullptr, ahead < 0 ? 0 : ahead)))
      return rc;
    for (int64_t b = 0; b < p.num_blocks; ++b)
      if (tickets[b] != 0) {
        fprintf(stderr, "block %lld's ticket is %u after the launch, not 0\n", (long long)b, tickets[b]);
        return 86;
      }
  } else if (runs) {
    if (int rc = check(ferret::cuda::launch_project_quad(p, pp, runs, nullptr))) return rc;
  } else if (ahead >= 0) {
    if (int rc = check(ferret::cuda::launch_project_prefetch(p, pp, ahead, nullptr))) return rc;
  } else if (opt(a, "chunks", 1) == 4) {
    if (int rc = check(ferret::cuda::dispatch<ProjectChunks4>(p.dtype, p.dist, p, pp, (cudaStream_t) nullptr)))
      return rc;
  } else if (int rc = check(ferret::cuda::launch_project(p, pp, nullptr))) {
    return rc;
  }
  save(path(a, "out.bin"), out.data, out.bytes);
  return 0;
}

int reconstruct(const Args& a) {
  ferret::ReconstructParams p{};
  const size_t es = shared_params(a, p);
  p.alpha = (float)real(a, "alpha");
  p.accumulate = num(a, "accumulate") != 0;
  const size_t shift = (size_t)opt(a, "misalign", 0) * es;
  auto coeffs = load(path(a, "coeffs.bin"), p.num_blocks * p.num_bases * 4, 0);
  p.coeffs = reinterpret_cast<const float*>(coeffs->data);
  std::unique_ptr<Buffer> out, active;
  if (p.accumulate) {
    out = load(path(a, "out.bin"), p.numel * es, shift);
  } else {
    out = std::make_unique<Buffer>(p.numel * es, shift);
    memset(out->data, 0xff, out->bytes);  // NaN: an element the kernel never writes shows
  }
  p.out = out->data;
  if (exists(path(a, "active.bin")))
    p.active = reinterpret_cast<const int32_t*>((active = load(path(a, "active.bin"), p.num_blocks * 4, 0))->data);
  if (int rc = check(ferret::cuda::launch_reconstruct(p, nullptr))) return rc;
  save(path(a, "out.bin"), out->data, out->bytes);
  return 0;
}

// The segments of a list launch: "numel:lead:first_block:row,..." in launch order (launch_row
// is the running sum of blocks; row, the segment's first row of coeffs / active, may differ, as
// in a launch that covers one dtype of a mixed list). Each tensor is its own exact-size buffer.
struct MultiSetup {
  ferret::MultiParams p{};
  std::vector<ferret::Segment> segs;
  std::vector<std::unique_ptr<Buffer>> bufs;
  std::vector<int64_t> blocks;
  int64_t all_rows = 0;  // rows of coeffs / active
  size_t es = 0;
};

void multi_setup(const Args& a, MultiSetup& m, const char* xname, bool with_y) {
  m.p.dtype = dtype_of(need(a, "dtype"), &m.es);
  m.p.dist = (int)num(a, "dist");
  m.p.block_size = num(a, "block_size");
  m.p.num_bases = (int32_t)num(a, "K");
  m.p.seed = unum(a, "seed");
  m.p.scale = (float)real(a, "scale");
  const std::string spec = need(a, "segs");
  size_t pos = 0;
  int64_t launch_row = 0;
  while (pos < spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string::npos) end = spec.size();
    int64_t f[4];
    size_t q = pos;
    for (int i = 0; i < 4; ++i) {
      size_t c = spec.find(i < 3 ? ':' : ',', q);
      if (c == std::string::npos || c > end) c = end;
      f[i] = std::stoll(spec.substr(q, c - q));
      q = c + 1;
    }
    ferret::Segment s{};
    s.numel = f[0];
    s.lead = f[1];
    s.block_offset = (uint32_t)f[2];
    s.row = f[3];
    s.launch_row = launch_row;
    const int64_t nb = (s.lead + s.numel + m.p.block_size - 1) / m.p.block_size;
    const std::string i = std::to_string(m.segs.size());
    m.bufs.push_back(load(path(a, (xname + i + ".bin").c_str()), s.numel * m.es, 0));
    s.x = m.bufs.back()->data;
    if (with_y && exists(path(a, ("y" + i + ".bin").c_str()))) {
      m.bufs.push_back(load(path(a, ("y" + i + ".bin").c_str()), s.numel * m.es, 0));
      s.y = m.bufs.back()->data;
    }
    m.segs.push_back(s);
    m.blocks.push_back(nb);
    launch_row += nb;
    m.all_rows = std::max(m.all_rows, s.row + nb);
    pos = end + 1;
  }
  m.p.segs = m.segs.data();
  m.p.num_segs = (int32_t)m.segs.size();
  m.p.num_rows = launch_row;
  if (exists(path(a, "active.bin"))) {
    m.bufs.push_back(load(path(a, "active.bin"), m.all_rows * 4, 0));
    m.p.active = reinterpret_cast<const int32_t*>(m.bufs.back()->data);
  }
}

int project_multi(const Args& a) {
  MultiSetup m;
  multi_setup(a, m, "x", true);
  const int64_t cpb = ferret::cuda::chunks_per_block(m.p.block_size, m.p.dist);
  Buffer part(m.p.num_rows * cpb * m.p.num_bases * 4, 0), out(m.p.num_rows * m.p.num_bases * 4, 0);
  memset(part.data, m.p.active ? 0 : 0xff, part.bytes);  // NaN partials: one the kernel skips shows
  memset(out.data, 0xff, out.bytes);
  if (int rc = check(ferret::cuda::launch_project_multi(m.p, reinterpret_cast<float*>(part.data),
                                                        reinterpret_cast<float*>(out.data), nullptr)))
    return rc;
  save(path(a, "out.bin"), out.data, out.bytes);
  return 0;
}

int reconstruct_multi(const Args& a) {
  MultiSetup m;
  multi_setup(a, m, "out", false);
  m.p.alpha = (float)real(a, "alpha");
  m.p.accumulate = true;
  auto coeffs = load(path(a, "coeffs.bin"), m.all_rows * m.p.num_bases * 4, 0);
  m.p.coeffs = reinterpret_cast<const float*>(coeffs->data);
  if (int rc = check(ferret::cuda::launch_reconstruct_multi(m.p, nullptr))) return rc;
  for (size_t i = 0; i < m.segs.size(); ++i)
    save(path(a, ("out" + std::to_string(i) + ".bin").c_str()), m.segs[i].x, m.segs[i].numel * m.es);
  return 0;
}

int philox(const Args& a) {
  const int64_t n = num(a, "n");
  auto ctr = load(path(a, "ctr.bin"), n * 32, 0);
  Buffer out(n * 32, 0);
  if (int rc = check(ferret::cuda::launch_philox(reinterpret_cast<const int64_t*>(ctr->data), n, unum(a, "seed"),
                                                 reinterpret_cast<int64_t*>(out.data), nullptr)))
    return rc;
  save(path(a, "out.bin"), out.data, out.bytes);
  return 0;
}

// Kernels with the bugs the emulator exists to catch.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) __syncthreads();  // warps 1.. never arrive
  out[threadIdx.x] = 1.0f;
}
__global__ void out_of_bounds_kernel(const float* in, float* out, int n) {
  const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  out[i % n] = in[i];  // reads past `in` when the grid covers more than n elements
}

int selftest(const Args& a) {
  const std::string what = need(a, "what");
  std::unique_ptr<float[]> in(new float[200]()), out(new float[256]());
  if (what == "deadlock") {
    FERRET_LAUNCH(1, 256, nullptr, divergent_barrier_kernel)(out.get());
  } else if (what == "oob") {
    FERRET_LAUNCH(1, 256, nullptr, out_of_bounds_kernel)(in.get(), out.get(), 200);
  } else {
    throw std::runtime_error("unknown selftest " + what);
  }
  return check(cudaGetLastError());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: cuda_emu project|reconstruct|philox|selftest key=value ...\n");
    return 64;
  }
  Args a;
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    const size_t eq = s.find('=');
    if (eq == std::string::npos) {
      fprintf(stderr, "argument %s is not key=value\n", argv[i]);
      return 64;
    }
    a[s.substr(0, eq)] = s.substr(eq + 1);
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "project") return project(a);
    if (cmd == "reconstruct") return reconstruct(a);
    if (cmd == "project_multi") return project_multi(a);
    if (cmd == "reconstruct_multi") return reconstruct_multi(a);
    if (cmd == "philox") return philox(a);
    if (cmd == "selftest") return selftest(a);
    fprintf(stderr, "unknown command %s\n", cmd.c_str());
  } catch (const std::exception& e) {
    fprintf(stderr, "cuda_emu %s: %s\n", cmd.c_str(), e.what());
  }
  return 64;
}
