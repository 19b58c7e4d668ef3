// cuda_stub.cc — the CUDA entry points for a build without nvcc: the addon
// links and loads, and reports why the cuda backend is unavailable. Such a
// build registers no device-head functions (addon.cc, MS_WITH_CUDA).
#include "head_cuda.h"
#include "loss_cuda.h"

namespace ms {

bool cuda_compiled() { return false; }

bool cuda_usable(std::string* why) {
  if (why) *why = "margin-softmax was built without CUDA (nvcc was not found at build time)";
  return false;
}

bool cuda_device_info(CudaDeviceInfo*) { return false; }

void cuda_loss(const LossProblem&, LossOutputs&) {
  throw CudaError{"margin-softmax was built without CUDA (nvcc was not found at build time)"};
}

// No device head holds device memory.
size_t head_device_bytes_all() { return 0; }

}  // namespace ms
