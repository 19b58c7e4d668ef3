// arrays.cc — the typed arrays lib/ asks the addon for:
//
//   gaussian(mean, sigma, seed, counter, n, start = 0) → Float32Array
//       n draws of mean + σ·N(0,1), draw i keyed by (seed, counter, start + i)
//       with the shared generator of margin_math.h. The elastic margins use it
//       (every backend sees the same values), and so does MarginHead's
//       'normal' initialisation.
//   zeros(n) → Float32Array, zeroed, huge-page backed when large (see new_f32).
//   _gaussianBf16(dst: Uint16Array, mean, sigma, seed, counter, start) → dst[i] = bf16 of the
//       draw gaussian(…, start) gives for i (round to nearest even), in place: no fp32 copy.
//   _zerosBf16(n) → Uint16Array, the same for bf16 values (MarginHead's bf16 centres).
//   _toBf16(src: Float32Array, dst: Uint16Array, start) → dst[start + i] = bf16(src[i]),
//       round to nearest even (src finite: lib/ checks it).
//   _fromBf16(src: Uint16Array, start, n) → Float32Array of src[start, start + n) widened (exact).
//
// No options objects.
#include "../cpu/bf16_gemm.h"  // to_bf16, widen_bf16_array
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

Napi::Value GaussianBf16(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto dst = u16_arg(env, info[0], "dst");
  const double m = info[1].As<Napi::Number>().DoubleValue();
  const double sigma = info[2].As<Napi::Number>().DoubleValue();
  const uint64_t seed = (uint64_t)count_arg(env, info[3], "seed");
  const uint64_t counter = (uint64_t)count_arg(env, info[4], "counter");
  const uint64_t start = (uint64_t)count_arg(env, info[5], "start");
  uint16_t* o = dst.Data();
  for (size_t i = 0; i < dst.ElementLength(); ++i) o[i] = to_bf16(elastic_margin((float)m, (float)sigma, seed, counter, start + i));
  return env.Undefined();
}

Napi::Value ZerosBf16(const Napi::CallbackInfo& info) {
  return new_u16(info.Env(), (size_t)count_arg(info.Env(), info[0], "n"), "a zeroed Uint16Array");
}

// [start, start + n) of a typed array of `length` elements, checked.
static void check_range(Napi::Env env, size_t start, size_t n, size_t length, const char* what) {
  if (start > length || n > length - start) {
    arg_error(env, "a range within its " + std::to_string(length) + " elements", what,
              "[" + std::to_string(start) + ", " + std::to_string(start + n) + ")");
  }
}

Napi::Value ToBf16(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto src = f32_arg(env, info[0], "src");
  auto dst = u16_arg(env, info[1], "dst");
  const size_t start = (size_t)count_arg(env, info[2], "start");
  check_range(env, start, src.ElementLength(), dst.ElementLength(), "dst");
  narrow_bf16_array(src.Data(), dst.Data() + start, (int64_t)src.ElementLength());
  return env.Undefined();
}

Napi::Value FromBf16(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto src = u16_arg(env, info[0], "src");
  const size_t start = (size_t)count_arg(env, info[1], "start");
  const size_t n = (size_t)count_arg(env, info[2], "n");
  check_range(env, start, n, src.ElementLength(), "src");
  auto out = new_f32(env, n, "widened bf16 values");
  widen_bf16_array(src.Data() + start, out.Data(), (int64_t)n);
  return out;
}

}  // namespace ms::napi
