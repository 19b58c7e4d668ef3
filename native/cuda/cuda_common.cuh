// cuda_common.cuh — host-side plumbing shared by the CUDA backend's files:
// error checking (every CUDA call and every launch goes through MS_CUDA_CHECK,
// which throws CudaError carrying the CUDA error *name*, e.g.
// "cudaErrorMemoryAllocation: out of memory (cudaMalloc 2147483648 bytes for W)"),
// RAII owners for device memory and streams (device memory is released on
// every path, exceptions included), and the allocation counter behind the
// benchmark's "peak device memory".
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "loss_cuda.h"

namespace ms {
namespace cu {

// Builds the CudaError message "<cudaErrorName>: <description> (<what>)".
std::string cuda_error_text(cudaError_t e, const std::string& what);
[[noreturn]] void throw_cuda(cudaError_t e, const std::string& what);

#define MS_CUDA_CHECK(expr)                                        \
  do {                                                             \
    const cudaError_t ms_err_ = (expr);                            \
    if (ms_err_ != cudaSuccess) ::ms::cu::throw_cuda(ms_err_, #expr); \
  } while (0)

// After a kernel launch: configuration errors surface here, execution errors
// at the next synchronising call (which is checked too).
#define MS_CUDA_LAUNCHED(name) ::ms::cu::check_launch(name)
void check_launch(const char* kernel_name);

// Bytes currently held by DeviceBuffers, and the most ever held at once since
// the last reset (process-wide; the benchmark's peak device memory).
size_t device_bytes_live();
size_t device_bytes_peak();
void device_bytes_reset_peak();
void note_alloc(size_t bytes);
void note_free(size_t bytes);

// Owns `count` elements of device memory (uninitialised). Move-only.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t count, const char* what) { allocate(count, what); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }

  void allocate(size_t count, const char* what) {
    release();
    const size_t bytes = (count == 0 ? 1 : count) * sizeof(T);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the (non-sticky) allocation error
      throw_cuda(e, "cudaMalloc " + std::to_string(bytes) + " bytes for " + what);
    }
    p_ = static_cast<T*>(p);
    n_ = count;
    note_alloc(bytes_());
  }
  void release() noexcept {
    if (p_) {
      cudaFree(p_);  // errors ignored: this runs during unwinding too
      note_free(bytes_());
    }
    p_ = nullptr;
    n_ = 0;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  size_t bytes_() const { return (n_ == 0 ? 1 : n_) * sizeof(T); }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Owns a non-blocking stream. The destructor waits for the stream's work
// before destroying it, so declare it *after* the buffers its kernels use:
// destruction runs in reverse order, so the wait happens before any cudaFree.
class Stream {
 public:
  Stream() { MS_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_) {
      cudaStreamSynchronize(s_);
      cudaStreamDestroy(s_);
    }
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const { MS_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace cu
}  // namespace ms
