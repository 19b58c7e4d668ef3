// head_addon.h — registers the device head's N-API functions (head_addon.cc);
// a build without CUDA registers none (cuda_stub.cc), and lib/head-cuda.ts
// never selects the device head there (the CUDA backend is not usable).
#pragma once

#include <napi.h>

namespace ms {
void register_head_functions(Napi::Env env, Napi::Object exports);
}  // namespace ms
