// arrays.cc — the typed arrays lib/ asks the addon for:
//
//   gaussian(mean, sigma, seed, counter, n, start = 0) → Float32Array
//       n draws of mean + σ·N(0,1), draw i keyed by (seed, counter, start + i)
//       with the shared generator of margin_math.h. The elastic margins use it
//       (every backend sees the same values), and so does MarginHead's
//       'normal' initialisation.
//   zeros(n) → Float32Array, zeroed, huge-page backed when large (see new_f32).
//
// No options objects.
#include "exports.h"
#include "napi_util.h"

namespace ms::napi {

Napi::Value Gaussian(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double m = info[0].As<Napi::Number>().DoubleValue();
  const double sigma = info[1].As<Napi::Number>().DoubleValue();
  const uint64_t seed = (uint64_t)count_arg(env, info[2], "seed");
  const uint64_t counter = (uint64_t)count_arg(env, info[3], "counter");
  const size_t n = (size_t)count_arg(env, info[4], "n");
  const uint64_t start = info.Length() > 5 ? (uint64_t)count_arg(env, info[5], "start") : 0;
  auto out = new_f32(env, n, "gaussian draws");
  float* o = out.Data();
  for (size_t i = 0; i < n; ++i) o[i] = elastic_margin((float)m, (float)sigma, seed, counter, start + i);
  return out;
}

Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return new_f32(info.Env(), (size_t)count_arg(info.Env(), info[0], "n"), "a zeroed Float32Array");
}

}  // namespace ms::napi
