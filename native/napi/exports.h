// exports.h — every function the addon exports, as addon.cc registers it;
// each is defined in the file of its operation (the comment names it).
#pragma once

#include <napi.h>

namespace ms::napi {

using Export = Napi::Value(const Napi::CallbackInfo&);

// loss.cc
Export LossSync, LossAsync;
// topk.cc
Export TopK, TopKAsync;
// arrays.cc
Export Gaussian, GaussianBf16, Zeros, ZerosBf16, ToBf16, FromBf16;
// device_info.cc
Export Info;
// hooks.cc: the internal natives ("_" names)
Export Defaults, TargetLogit, ProductsSeconds, PeakGflops, LiveNativeBytes, RecycledNativeBytes, ReleaseRecycled;
// margin_kinds.cc: margin_math.h's table of kinds (internal: the table test)
Export MarginKinds;
// collectives.cc: the collectives (the N-API binding of comm/comm.h)
Export CommInfo, CommInit, CommSetTimeout, CommAllGather, CommAllReduce, CommBroadcast, CommBarrier, CommShutdown;
// device_head.cc: MarginHead on the CUDA device (built with CUDA only)
Export HeadCreate, HeadFree, HeadSetRows, HeadGetRows, HeadLoss, HeadLossAsync, HeadTopK, HeadTopKAsync, HeadBytes;

}  // namespace ms::napi
