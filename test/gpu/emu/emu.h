// emu.h — force-included (g++ -include) when the CUDA backend's sources are
// compiled as plain C++ by test/gpu/emu/run.sh. It turns the kernels into
// ordinary functions that run on the CPU with CUDA's execution model kept:
// every CTA runs blockDim.x real threads, __syncthreads is a barrier across
// them, __syncwarp / shuffles / votes synchronise the 32 threads of a warp,
// shared memory is one buffer per CTA (allocated with its exact size, so
// AddressSanitizer catches an out-of-bounds access), and WMMA is replaced by a
// reference implementation (mma.h beside this file) that checks the pointer
// alignment and leading-dimension rules of the real API.
//
// What this checks: index math, tile ownership, bounds, barrier placement,
// the algorithm and its numerics (TF32 and BF16 rounding are emulated).
// What it cannot: real hardware timing (races that need it), performance,
// register/shared-memory limits, and anything driver-related.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

namespace ms_emu {

// Plain data: the scheduler copies the running fiber's indices here.
struct Ctx {
  uint3 thread_idx, block_idx, block_dim, grid_dim;
};
extern Ctx tls;  // the running fiber's indices (all fibers share one OS thread)

void syncthreads();
void syncwarp();
uint64_t warp_exchange(uint64_t v, int src_lane_xor);  // value of lane ^ src_lane_xor
bool warp_all(bool p);
bool warp_any(bool p);
unsigned char* dyn_smem();
void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body);
void atomic_min_u64(unsigned long long* p, unsigned long long v);

template <class T>
inline T shfl_xor(T v, int o) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  u = warp_exchange(u, o);
  T r;
  std::memcpy(&r, &u, sizeof(T));
  return r;
}

}  // namespace ms_emu

#define threadIdx (ms_emu::tls.thread_idx)
#define blockIdx (ms_emu::tls.block_idx)
#define blockDim (ms_emu::tls.block_dim)
#define gridDim (ms_emu::tls.grid_dim)

inline void __syncthreads() { ms_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ms_emu::syncwarp(); }
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
  return ms_emu::shfl_xor(v, o);
}
inline bool __all_sync(unsigned, bool p) { return ms_emu::warp_all(p); }
inline bool __any_sync(unsigned, bool p) { return ms_emu::warp_any(p); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  ms_emu::atomic_min_u64(p, v);
  return 0;
}
template <class T>
inline T min(T a, T b) {
  return a < b ? a : b;
}
using std::isfinite;

#define MS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ms_emu::launch(dim3(grid), dim3(block), (size_t)(smem_bytes), [&]() { kernel(__VA_ARGS__); })
#define MS_DYNAMIC_SMEM(name) unsigned char* name = ms_emu::dyn_smem()
