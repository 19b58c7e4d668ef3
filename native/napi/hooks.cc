// hooks.cc — the addon's internal natives (their names start with "_"; not
// part of the package's API): the defaults lib/ reads, and the hooks the
// tests and benchmarks call.
//
//   _defaults() → { scale, workspaceBytes }: the native defaults (loss_problem.h,
//       cpu/loss_cpu.h), read once by lib/loss.ts so that each is written once.
//   _targetLogit(margin, cos, rowMargin) → { z, dz }: the target logit of one
//       cosine through margin_math.h, so the tests check the header's formulas
//       directly. margin: kind, scale, m1, m2, m3, fallback (margin_of).
//   _productsSeconds(x, w, dim, threads, simd, backward, matrix?) → seconds: the
//       GEMM ceiling (cpu/gemm_ceiling.cc), timed natively; matrix (MATRIX_CODES,
//       −1 auto) for the products of weightsDtype 'bfloat16', absent for fp32.
//       For the benchmarks.
//   _peakGflops(kind, threads, simd, seconds?) → GFLOP/s: register-only
//       peak loops (cpu/peak_cpu.cc), kind 0 fp32, 1 avx512-bf16, 2 amx-bf16;
//       0 where the CPU lacks it. For the benchmarks.
//   _liveNativeBytes() → bytes held by big_alloc now (output arrays made by
//       new_f32 not yet collected, and workspaces of calls in flight). The
//       leak test checks that steps return it to where it was.
//   _recycledNativeBytes() → bytes of freed large blocks kept for reuse
//       (big_alloc.h).
//   _releaseRecycled() → unmaps them; returns the bytes given back
//       (lib's releaseCachedMemory()).
#include <algorithm>

#include "../cpu/gemm_ceiling.h"
#include "../cpu/loss_cpu.h"
#include "../cpu/peak_cpu.h"
#include "exports.h"
#include "napi_util.h"

namespace ms::napi {

Napi::Value Defaults(const Napi::CallbackInfo& info) {
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("scale", (double)kDefaultScale);
  res.Set("workspaceBytes", (double)kDefaultWorkspaceBytes);
  return res;
}

Napi::Value TargetLogit(const Napi::CallbackInfo& info) {
  const MarginParams p = margin_of(object_arg(info.Env(), info[0], "the margin"));
  const float c = (float)info[1].As<Napi::Number>().DoubleValue();
  const float rm = (float)info[2].As<Napi::Number>().DoubleValue();
  const Logit L = target_logit(p, c, rm);
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("z", L.z);
  res.Set("dz", L.dz);
  return res;
}

Napi::Value ProductsSeconds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = f32_arg(env, info[0], "x");
  auto w = f32_arg(env, info[1], "w");
  const int64_t d = std::max<int64_t>(1, count_arg(env, info[2], "dim"));
  const int threads = info[3].As<Napi::Number>().Int32Value();
  const int simd = info[4].As<Napi::Number>().Int32Value();
  const bool backward = info[5].As<Napi::Boolean>().Value();
  const int matrix = info.Length() > 6 && info[6].IsNumber() ? info[6].As<Napi::Number>().Int32Value() : -2;
  return Napi::Number::New(env, products_seconds(x.Data(), w.Data(), (int64_t)x.ElementLength() / d,
                                                 (int64_t)w.ElementLength() / d, d, threads, simd, backward, matrix));
}

Napi::Value PeakGflops(const Napi::CallbackInfo& info) {
  const int kind = info[0].As<Napi::Number>().Int32Value();
  const int threads = info[1].As<Napi::Number>().Int32Value();
  const int simd = info[2].As<Napi::Number>().Int32Value();
  const PeakKind k = (PeakKind)std::clamp(kind, 0, 2);
  const bool timed = info.Length() > 3 && info[3].IsNumber();
  return Napi::Number::New(info.Env(), timed ? peak_gflops(k, threads, simd, info[3].As<Napi::Number>().DoubleValue())
                                             : peak_gflops(k, threads, simd));
}

Napi::Value LiveNativeBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)big_live_bytes().load());
}

Napi::Value RecycledNativeBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)recycled_bytes());
}

Napi::Value ReleaseRecycled(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)release_recycled());
}

}  // namespace ms::napi
