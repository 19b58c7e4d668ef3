// emu_runtime.cc — the CPU side of the CUDA emulation (see emu.h): kernel
// launches as real threads, the barriers and warp exchanges, and the subset
// of the CUDA runtime API that the backend calls, implemented on host memory.
#include <cuda_runtime.h>

#include <atomic>
#include <ucontext.h>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#include <vector>

#include "emu.h"

namespace ms_emu {

// ---- Cooperative threads ----------------------------------------------------
// Every CUDA thread of a CTA is a fiber (ucontext) on the calling OS thread. A
// fiber runs until it waits at a barrier (or returns); the scheduler resumes
// fibers round-robin. A barrier releases when every live member has arrived;
// a pass over the fibers in which none can run means a barrier that some
// threads never reach (divergent __syncthreads): reported and aborted.

Ctx tls = {};

namespace {
constexpr size_t kStack = 128 * 1024;

struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t gen = 0;
  void drop() {  // a member returned
    --expected;
    if (arrived > 0 && arrived == expected) {
      arrived = 0;
      ++gen;
    }
  }
};

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  bool done = false;
  Barrier* waiting = nullptr;
  uint64_t wait_gen = 0;
  Ctx c;
};

struct Cta {
  std::vector<Fiber> fibers;
  Barrier all;
  std::vector<Barrier> warp;
  std::vector<uint64_t> xbuf;
  unsigned char* smem = nullptr;  // 256-byte aligned, like a CTA's shared window
  const std::function<void()>* body = nullptr;
  int cur = -1;
  ucontext_t sched;
  void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
};

Cta* g_cta = nullptr;
std::vector<char*> g_stacks;

#if defined(__SANITIZE_ADDRESS__)
void start_switch(void** save, const void* bottom, size_t size) { __sanitizer_start_switch_fiber(save, bottom, size); }
void finish_switch(void* save, const void** bottom, size_t* size) { __sanitizer_finish_switch_fiber(save, bottom, size); }
#else
void start_switch(void**, const void*, size_t) {}
void finish_switch(void*, const void**, size_t*) {}
#endif

// Fiber → scheduler.
void yield_to_scheduler() {
  Cta& c = *g_cta;
  Fiber& f = c.fibers[(size_t)c.cur];
  void* save = nullptr;
  start_switch(&save, c.sched_stack_bottom, c.sched_stack_size);
  swapcontext(&f.ctx, &c.sched);
  finish_switch(save, nullptr, nullptr);
  tls = c.fibers[(size_t)c.cur].c;
}

void wait(Barrier& b) {
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.gen;
    return;  // the last one to arrive carries on
  }
  Fiber& f = g_cta->fibers[(size_t)g_cta->cur];
  f.waiting = &b;
  f.wait_gen = b.gen;
  yield_to_scheduler();
}

void fiber_main(int id) {
  finish_switch(nullptr, (const void**)&g_cta->sched_stack_bottom, &g_cta->sched_stack_size);
  Cta& c = *g_cta;
  tls = c.fibers[(size_t)id].c;
  (*c.body)();
  c.warp[(size_t)(id / 32)].drop();
  c.all.drop();
  c.fibers[(size_t)id].done = true;
  // Back to the scheduler for good (the fiber's fake stack can go).
  start_switch(nullptr, c.sched_stack_bottom, c.sched_stack_size);
  setcontext(&c.sched);
}

std::mutex g_atomic_mu;
}  // namespace

int lane_id() { return (int)(tls.thread_idx.x % 32); }
void syncthreads() { wait(g_cta->all); }
void syncwarp() { wait(g_cta->warp[(size_t)(tls.thread_idx.x / 32)]); }

uint64_t warp_exchange(uint64_t v, int o) {
  const int lane = lane_id(), w = (int)(tls.thread_idx.x / 32);
  uint64_t* buf = g_cta->xbuf.data() + 32 * w;
  buf[lane] = v;
  syncwarp();
  const uint64_t r = buf[lane ^ o];
  syncwarp();
  return r;
}
bool warp_all(bool p) {
  const int lane = lane_id(), w = (int)(tls.thread_idx.x / 32);
  uint64_t* buf = g_cta->xbuf.data() + 32 * w;
  buf[lane] = p ? 1 : 0;
  syncwarp();
  bool r = true;
  for (int l = 0; l < 32; ++l) r = r && buf[l] != 0;
  syncwarp();
  return r;
}
bool warp_any(bool p) {
  const int lane = lane_id(), w = (int)(tls.thread_idx.x / 32);
  uint64_t* buf = g_cta->xbuf.data() + 32 * w;
  buf[lane] = p ? 1 : 0;
  syncwarp();
  bool r = false;
  for (int l = 0; l < 32; ++l) r = r || buf[l] != 0;
  syncwarp();
  return r;
}
unsigned char* dyn_smem() { return g_cta->smem; }
void atomic_min_u64(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> lock(g_atomic_mu);
  if (v < *p) *p = v;
}

std::atomic<long long> g_launches{0}, g_ctas{0};

std::mutex g_launch_mu;  // one emulated kernel at a time (calls may come from several threads)

void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  std::lock_guard<std::mutex> launch_lock(g_launch_mu);
  if (block.y != 1 || block.z != 1) std::abort();
  const int n = (int)block.x;
  if (n <= 0 || n > 1024 || n % 32 != 0) std::abort();
  if (smem_bytes > 99 * 1024) {
    std::fprintf(stderr, "emulated launch asks for %zu bytes of shared memory (> 99 KiB)\n", smem_bytes);
    std::abort();
  }
  while ((int)g_stacks.size() < n) g_stacks.push_back(static_cast<char*>(std::malloc(kStack)));
  ++g_launches;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        ++g_ctas;
        Cta cta;
        cta.body = &body;
        cta.all.expected = n;
        cta.warp.resize((size_t)(n / 32));
        for (auto& w : cta.warp) w.expected = 32;
        cta.xbuf.assign((size_t)n, 0);
        // Exact size when a multiple of 256 (AddressSanitizer sees an overrun;
        // the kernels' sizes are multiples of 128) and a junk fill (reads of
        // never-written shared memory give garbage, not zeros).
        std::unique_ptr<unsigned char, void (*)(void*)> smem(
            static_cast<unsigned char*>(std::aligned_alloc(256, (smem_bytes + 255) / 256 * 256 + 256)), std::free);
        std::memset(smem.get(), 0xA5, smem_bytes);
        cta.smem = smem.get();
        cta.fibers.resize((size_t)n);
        g_cta = &cta;
        for (int t = 0; t < n; ++t) {
          Fiber& f = cta.fibers[(size_t)t];
          f.c.thread_idx = make_uint3((unsigned)t, 0, 0);
          f.c.block_idx = make_uint3(bx, by, bz);
          f.c.block_dim = make_uint3(block.x, block.y, block.z);
          f.c.grid_dim = make_uint3(grid.x, grid.y, grid.z);
          f.stack = g_stacks[(size_t)t];
#if defined(__SANITIZE_ADDRESS__)
          // A finished fiber leaves its last frames' redzones poisoned.
          ASAN_UNPOISON_MEMORY_REGION(f.stack, kStack);
#endif
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack;
          f.ctx.uc_stack.ss_size = kStack;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, (void (*)())fiber_main, 1, t);
        }
        // Resume order: thread order, or a fresh random permutation per pass
        // when EMU_SEED is set (a missing barrier then shows up as a wrong
        // result more often than with a fixed order).
        static const char* seed_env = std::getenv("EMU_SEED");
        static uint64_t rs = seed_env ? 0x9e3779b97f4a7c15ull * (uint64_t)(std::atoll(seed_env) + 1) : 0;
        std::vector<int> order((size_t)n);
        for (int t = 0; t < n; ++t) order[(size_t)t] = t;
        int live = n;
        while (live > 0) {
          bool progress = false;
          if (rs) {
            for (int t = n - 1; t > 0; --t) {
              rs ^= rs << 13;
              rs ^= rs >> 7;
              rs ^= rs << 17;
              std::swap(order[(size_t)t], order[(size_t)(rs % (uint64_t)(t + 1))]);
            }
          }
          for (int q = 0; q < n; ++q) {
            const int t = order[(size_t)q];
            Fiber& f = cta.fibers[(size_t)t];
            if (f.done) continue;
            if (f.waiting && f.waiting->gen == f.wait_gen) continue;  // still blocked
            f.waiting = nullptr;
            cta.cur = t;
            void* save = nullptr;
            start_switch(&save, f.stack, kStack);
            swapcontext(&cta.sched, &f.ctx);
            finish_switch(save, nullptr, nullptr);
            progress = true;
            if (f.done) --live;
          }
          if (!progress) {
            std::fprintf(stderr, "emulated CTA (%u,%u,%u) deadlocked: a barrier is not reached by every thread\n", bx,
                         by, bz);
            std::abort();
          }
        }
        g_cta = nullptr;
      }
}

}  // namespace ms_emu

// ---- The CUDA runtime API, on host memory -----------------------------------------
namespace {
int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}
}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (bytes > (size_t)env_int("EMU_MAX_ALLOC_MB", 4096) << 20) {
    *p = nullptr;
    return cudaErrorMemoryAllocation;
  }
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0x5A, bytes);  // junk: results must not depend on fresh memory being zero
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  static int dummy;
  *s = reinterpret_cast<cudaStream_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess ? "cudaSuccess" : e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation" : "cudaErrorEmulated";
}
const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "emulated error";
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = env_int("EMU_SMS", 132); break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    default: *v = 0;
  }
  return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void*) {
  std::memset(a, 0, sizeof(*a));
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int value) {
  return value <= 99 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof(*p));
  std::strcpy(p->name, "CPU emulation");
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = (size_t)80 << 30;
  p->multiProcessorCount = env_int("EMU_SMS", 132);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
  *f = *t = (size_t)80 << 30;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}

}  // extern "C"
