// Host emulation of the slice of the CUDA execution model that csrc/cuda/kernels.cuh uses,
// so the CUDA kernels themselves (not a port) run on a machine without a GPU.
//
// A launch runs its CTAs one after another, in index order or, with CUDA_EMU_ORDER=reverse or
// shuffle[:seed], in another (a GPU promises no order: a result that depends on it shows); each
// CTA's threads are real OS threads, so the kernel's own synchronisation is what orders them:
//   __syncthreads      a CTA-wide barrier; a thread that returns leaves it (as on sm_70+)
//   __shfl_xor_sync    a warp-wide exchange through per-warp slots and a warp barrier;
//                      full masks only, and reading a lane that has exited is an error
//   __shared__         function-static storage (one CTA runs at a time)
//   atomicAdd          on unsigned global words, under one lock; __threadfence a lock round trip
// Barriers must be uniform, as the CUDA programming guide requires: a thread that returns while
// others wait at a barrier, a CTA whose threads made different numbers of __syncthreads calls,
// or a barrier not reached within a timeout is reported and the process exits (code 86). Built with AddressSanitizer,
// an out-of-bounds global access is caught exactly; built with ThreadSanitizer, a missing barrier around shared memory
// is reported as a data race.
#pragma once

#include <stdint.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
typedef struct CUstream_st* cudaStream_t;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
// core.h's device-only forms that have a host equivalent here (its kUmulhi multiply) run in the emulator
#define FERRET_CUDA_EMU 1

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

namespace ferret_emu {

[[noreturn]] inline void fail(const char* fmt, ...) {
  std::fprintf(stderr, "cuda_emu: block (%u,%u,%u) thread %u: ", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  std::_Exit(86);
}

inline double timeout_s() {
  const char* t = std::getenv("CUDA_EMU_TIMEOUT_S");
  return t ? std::atof(t) : 20.0;
}

// A barrier for `expected` threads; leave() removes a thread from it (an exited thread).
class Barrier {
 public:
  void reset(int expected) {
    std::lock_guard<std::mutex> l(m_);
    expected_ = expected;
    arrived_ = 0;
  }
  template <typename F>
  void arrive_and_wait(const char* what, F&& on_release) {
    std::unique_lock<std::mutex> l(m_);
    const uint64_t gen = gen_;
    if (++arrived_ == expected_) {
      on_release();
      release();
      return;
    }
    const auto limit = std::chrono::duration<double>(timeout_s());
    if (!cv_.wait_for(l, limit, [&] { return gen_ != gen; }))
      fail("deadlock: %d of %d threads reached %s, the others never did", arrived_, expected_, what);
  }
  void arrive_and_wait(const char* what) {
    arrive_and_wait(what, [] {});
  }
  // A thread that returns leaves the barrier; leaving while others wait in it is divergence.
  void leave(const char* what) {
    std::lock_guard<std::mutex> l(m_);
    if (arrived_ > 0) fail("divergence: the thread returned while %d threads wait at %s", arrived_, what);
    --expected_;
  }

 private:
  void release() {
    arrived_ = 0;
    ++gen_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int expected_ = 0, arrived_ = 0;
  uint64_t gen_ = 0;
};

struct Cta {
  int threads = 0;
  Barrier sync, done;
  std::vector<Barrier> warp;
  struct Slot {
    uint64_t value;
    unsigned call;  // which shuffle of the writing thread filled it
  };
  std::vector<Slot> slots;      // [warps][2][32]: double-buffered shuffle slots
  std::vector<unsigned> syncs;  // __syncthreads calls per thread in this CTA
  explicit Cta(int n) : threads(n), warp((n + 31) / 32), slots(((n + 31) / 32) * 64), syncs(n) {}
  int warp_size(int w) const { return min(32, threads - 32 * w); }
  void reset() {
    sync.reset(threads);
    for (int w = 0; w < (int)warp.size(); ++w) warp[w].reset(warp_size(w));
    for (auto& s : slots) s.call = ~0u;
    for (auto& n : syncs) n = 0;
  }
};

inline thread_local Cta* cta = nullptr;
inline thread_local unsigned shfl_calls = 0;
inline thread_local cudaError_t last_error = cudaSuccess;

// The order CTAs run in: (x, y) index pairs, from CUDA_EMU_ORDER (unset or "forward": index
// order; "reverse"; "shuffle" or "shuffle:<seed>": a seeded permutation).
inline std::vector<std::pair<unsigned, unsigned>> cta_order(dim3 grid) {
  std::vector<std::pair<unsigned, unsigned>> order;
  order.reserve((size_t)grid.x * grid.y);
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) order.emplace_back(bx, by);
  const char* env = std::getenv("CUDA_EMU_ORDER");
  const std::string how = env ? env : "forward";
  if (how == "reverse") {
    std::reverse(order.begin(), order.end());
  } else if (how.rfind("shuffle", 0) == 0) {
    const size_t colon = how.find(':');
    uint64_t seed = 1;
    if (colon != std::string::npos) {
      char* end = nullptr;
      seed = std::strtoull(how.c_str() + colon + 1, &end, 10);
      if (end == how.c_str() + colon + 1 || *end != '\0')
        fail("CUDA_EMU_ORDER=%s: the seed is not a number", how.c_str());
    }
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
  } else if (how != "forward") {
    fail("CUDA_EMU_ORDER=%s: expected forward, reverse or shuffle[:seed]", how.c_str());
  }
  return order;
}

template <typename Body>
void run_grid(dim3 grid, dim3 block, Body&& body) {
  const long nthreads = (long)block.x * block.y * block.z;
  if (block.y != 1 || block.z != 1 || grid.z != 1) {
    last_error = cudaErrorInvalidValue;  // the kernels use 1-D CTAs and 2-D grids only
    return;
  }
  if (nthreads < 1 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.y > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  Cta c((int)nthreads);
  c.reset();
  c.done.reset((int)nthreads);
  const auto order = cta_order(grid);
  std::vector<std::thread> pool;
  for (int t = 0; t < nthreads; ++t) {
    pool.emplace_back([&, t] {
      cta = &c;
      threadIdx = {(unsigned)t, 0, 0};
      blockDim = block;
      gridDim = grid;
      for (const auto& [bx, by] : order) {
        blockIdx = {bx, by, 0};
        shfl_calls = 0;
        body();
        c.sync.leave("__syncthreads");
        c.warp[t / 32].leave("__shfl_xor_sync");
        c.done.arrive_and_wait("the end of the CTA", [&] {
          for (int i = 1; i < c.threads; ++i)
            if (c.syncs[i] != c.syncs[0])
              fail("divergence: thread %d called __syncthreads %u times, thread 0 %u times", i, c.syncs[i], c.syncs[0]);
          c.reset();
        });
      }
    });
  }
  for (auto& th : pool) th.join();
}

template <typename... P>
struct Launch {
  dim3 grid, block;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    const std::tuple<P...> args(std::forward<A>(a)...);  // by value, as a CUDA launch copies them
    run_grid(grid, block, [&] { std::apply(kernel, args); });
  }
};

template <typename... P>
Launch<P...> launch(dim3 grid, dim3 block, void (*kernel)(P...)) {
  return {grid, block, kernel};
}

}  // namespace ferret_emu

#define FERRET_LAUNCH(grid, block, stream, ...) \
  ((void)(stream), ::ferret_emu::launch(dim3(grid), dim3(block), __VA_ARGS__))

inline void __syncthreads() {
  ++ferret_emu::cta->syncs[threadIdx.x];
  ferret_emu::cta->sync.arrive_and_wait("__syncthreads");
}

inline unsigned atomicAdd(unsigned* p, unsigned v) {
  static std::mutex m;
  std::lock_guard<std::mutex> l(m);
  const unsigned old = *p;
  *p = old + v;
  return old;
}
// a lock taken and released: acquire and release ordering that ThreadSanitizer also understands
// (it does not support std::atomic_thread_fence)
inline void __threadfence() {
  static std::mutex m;
  std::lock_guard<std::mutex> l(m);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "emulated shuffles move at most 8 bytes");
  using namespace ferret_emu;
  if (mask != 0xffffffffu) fail("__shfl_xor_sync: only full-warp masks are emulated (got %#x)", mask);
  const int t = (int)threadIdx.x, w = t / 32, lane = t % 32;
  const int src = lane ^ (lane_mask & 31);
  const unsigned call = shfl_calls++;
  // A slot of buffer (call & 1) is rewritten only at shuffle call + 2, which no lane reaches
  // before every lane has passed the barrier of call + 1, i.e. after this read.
  Cta::Slot* slots = &cta->slots[(size_t)w * 64 + (call & 1) * 32];
  memcpy(&slots[lane].value, &v, sizeof(T));
  slots[lane].call = call;
  cta->warp[w].arrive_and_wait("__shfl_xor_sync");
  if (src >= cta->warp_size(w)) return v;
  if (slots[src].call != call) fail("__shfl_xor_sync reads lane %d, which has exited or diverged", src);
  T r;
  memcpy(&r, &slots[src].value, sizeof(T));
  return r;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ferret_emu::last_error;
  ferret_emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unknown error";
}

// ------------------------------------------------ the 16-bit float types, independently of core.h
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = (uint32_t)h.bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1);                                              // round to nearest, ties to even
  return {(uint16_t)(u >> 16)};
}
inline float __half2float(__half h) {
  _Float16 v;
  memcpy(&v, &h.bits, 2);
  return (float)v;
}
inline __half __float2half_rn(float f) {
  const _Float16 v = (_Float16)f;  // IEEE conversion: round to nearest even
  __half h;
  memcpy(&h.bits, &v, 2);
  return h;
}
