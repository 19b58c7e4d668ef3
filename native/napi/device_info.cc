// device_info.cc — info(simd?) → { cpu, cuda }: what lib/'s deviceInfo() and
// backends() report. simd (optional): the SIMD width to describe (−1 the best).
//   cpu:  threads, simd (name), simdWidth, matrix (the bf16 product path
//         'auto' runs), matrixPaths (every bf16 product path this CPU can
//         run, the best instructions first, 'none' last)
//   cuda: compiled, usable, reason (when not usable); with a usable device its
//         name, computeCapability, totalMemory, freeMemory, driverVersion,
//         runtimeVersion, multiprocessors; headBytes (held by device heads).
#include "../cpu/bf16_gemm.h"
#include "../cpu/loss_cpu.h"
#include "../cpu/simd_dispatch.h"
#include "../cuda/head_cuda.h"
#include "../cuda/loss_cuda.h"
#include "exports.h"
#include "napi_util.h"

namespace ms::napi {
namespace {

Napi::Object cpu_info(Napi::Env env, int requested_simd) {
  const int level = simd_level(requested_simd);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("threads", cpu_default_threads());
  cpu.Set("simd", simd_level_name(level));
  cpu.Set("simdWidth", kernels_for(level).vw);
  cpu.Set("matrix", matrix_path_name(auto_matrix_path()));
  Napi::Array paths = Napi::Array::New(env);
  for (MatrixPath p : {MatrixPath::AmxBf16, MatrixPath::Avx512Bf16, MatrixPath::NeonBf16, MatrixPath::None})
    if (matrix_available(p)) paths.Set(paths.Length(), matrix_path_name(p));
  cpu.Set("matrixPaths", paths);
  return cpu;
}

void set_device(Napi::Object& cuda, const CudaDeviceInfo& di) {
  cuda.Set("name", di.name);
  cuda.Set("computeCapability", std::to_string(di.major) + "." + std::to_string(di.minor));
  cuda.Set("totalMemory", (double)di.total_memory);
  cuda.Set("freeMemory", (double)di.free_memory);
  cuda.Set("driverVersion", di.driver_version);
  cuda.Set("runtimeVersion", di.runtime_version);
  cuda.Set("multiprocessors", di.multiprocessors);
}

Napi::Object cuda_info(Napi::Env env) {
  std::string why;
  const bool usable = cuda_usable(&why);
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("compiled", cuda_compiled());
  cuda.Set("usable", usable);
  if (!usable) cuda.Set("reason", why);
  CudaDeviceInfo di;
  if (usable && cuda_device_info(&di)) set_device(cuda, di);
  cuda.Set("headBytes", (double)head_device_bytes_all());  // held by MarginHeads on the device
  return cuda;
}

}  // namespace

Napi::Value Info(const Napi::CallbackInfo& info) {
  const int requested = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : -1;
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("cpu", cpu_info(info.Env(), requested));
  res.Set("cuda", cuda_info(info.Env()));
  return res;
}

}  // namespace ms::napi
