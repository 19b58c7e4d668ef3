// loss_cuda.h — the CUDA backend's entry points. Compiled to real kernels
// where CMake finds nvcc (MS_WITH_CUDA), to "unavailable" stubs elsewhere
// (cuda_stub.cc), so the addon always links and always loads.
#pragma once

#include <cstdint>
#include <string>

#include "../loss_problem.h"

namespace ms {

struct CudaDeviceInfo {
  std::string name;
  int major = 0, minor = 0;          // compute capability
  size_t total_memory = 0, free_memory = 0;
  int driver_version = 0, runtime_version = 0;
  int multiprocessors = 0;
};

// Errors from the CUDA runtime carry the CUDA error name ("cudaErrorMemoryAllocation: ...").
struct CudaError {
  std::string message;
};

// True where the addon was built with CUDA and a device is usable now;
// otherwise false with the reason in *why ("built without CUDA", "no device", the CUDA error).
bool cuda_usable(std::string* why);
bool cuda_device_info(CudaDeviceInfo* info);
bool cuda_compiled();

// Same contract as cpu_loss: inputs are host pointers; outputs are host pointers.
// Throws CudaError on a CUDA failure and InputError on bad values; device memory
// is released on every path.
void cuda_loss(const LossProblem& p, LossOutputs& out);

}  // namespace ms
