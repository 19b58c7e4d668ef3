// addon.cc — the addon's module: registers every export and nothing else.
// Each operation converts its arguments and dispatches in its own file of
// native/napi/ (exports.h names the file of each function); lib/native.ts
// types them. Names starting with "_" are internal (tests, benchmarks, lib/).
// Every export runs inside guarded() (napi/napi_util.h): a C++ exception
// becomes a JS error instead of terminating the process. Init runs once per
// environment (the main thread, each Worker) and gives it its own state
// (napi/async_work.h); nothing N-API holds is shared between environments.
#include <napi.h>

#include "napi/async_work.h"
#include "napi/exports.h"
#include "napi/napi_util.h"

namespace {

using namespace ms::napi;

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  init_env_state(env);
  exports.Set("loss", Napi::Function::New(env, guarded<LossSync>));
  exports.Set("lossAsync", Napi::Function::New(env, guarded<LossAsync>));
  exports.Set("gaussian", Napi::Function::New(env, guarded<Gaussian>));
  exports.Set("zeros", Napi::Function::New(env, guarded<Zeros>));
  exports.Set("_gaussianBf16", Napi::Function::New(env, guarded<GaussianBf16>));
  exports.Set("_zerosBf16", Napi::Function::New(env, guarded<ZerosBf16>));
  exports.Set("_toBf16", Napi::Function::New(env, guarded<ToBf16>));
  exports.Set("_fromBf16", Napi::Function::New(env, guarded<FromBf16>));
  exports.Set("_targetLogit", Napi::Function::New(env, guarded<TargetLogit>));
  exports.Set("info", Napi::Function::New(env, guarded<Info>));
  exports.Set("topk", Napi::Function::New(env, guarded<TopK>));
  exports.Set("topkAsync", Napi::Function::New(env, guarded<TopKAsync>));
  exports.Set("_liveNativeBytes", Napi::Function::New(env, guarded<LiveNativeBytes>));
  exports.Set("_recycledNativeBytes", Napi::Function::New(env, guarded<RecycledNativeBytes>));
  exports.Set("_releaseRecycled", Napi::Function::New(env, guarded<ReleaseRecycled>));
  exports.Set("_productsSeconds", Napi::Function::New(env, guarded<ProductsSeconds>));
  exports.Set("_peakGflops", Napi::Function::New(env, guarded<PeakGflops>));
  exports.Set("_defaults", Napi::Function::New(env, guarded<Defaults>));
  exports.Set("_marginKinds", Napi::Function::New(env, guarded<MarginKinds>));
  exports.Set("_commInfo", Napi::Function::New(env, guarded<CommInfo>));
  exports.Set("_commInit", Napi::Function::New(env, guarded<CommInit>));
  exports.Set("_commSetTimeout", Napi::Function::New(env, guarded<CommSetTimeout>));
  exports.Set("_commAllGather", Napi::Function::New(env, guarded<CommAllGather>));
  exports.Set("_commAllReduce", Napi::Function::New(env, guarded<CommAllReduce>));
  exports.Set("_commBroadcast", Napi::Function::New(env, guarded<CommBroadcast>));
  exports.Set("_commBarrier", Napi::Function::New(env, guarded<CommBarrier>));
  exports.Set("_commShutdown", Napi::Function::New(env, guarded<CommShutdown>));
#if MS_WITH_CUDA
  // MarginHead on the device; an addon without CUDA has none (lib/head/device-centres.ts checks for headCreate).
  exports.Set("headCreate", Napi::Function::New(env, guarded<HeadCreate>));
  exports.Set("headFree", Napi::Function::New(env, guarded<HeadFree>));
  exports.Set("headSetRows", Napi::Function::New(env, guarded<HeadSetRows>));
  exports.Set("headGetRows", Napi::Function::New(env, guarded<HeadGetRows>));
  exports.Set("headLoss", Napi::Function::New(env, guarded<HeadLoss>));
  exports.Set("headLossAsync", Napi::Function::New(env, guarded<HeadLossAsync>));
  exports.Set("headTopk", Napi::Function::New(env, guarded<HeadTopK>));
  exports.Set("headTopkAsync", Napi::Function::New(env, guarded<HeadTopKAsync>));
  exports.Set("headBytes", Napi::Function::New(env, guarded<HeadBytes>));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(margin_softmax, Init)
