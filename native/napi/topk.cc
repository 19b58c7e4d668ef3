// topk.cc — the top-k classes by cosine on the CPU (MarginHead.predict):
// topk (synchronous) and topkAsync (libuv pool, returns a promise).
//
//   topk(embeddings, weights, dim, k, threads) → { classes: Int32Array N×k, scores: Float32Array N×k }
//   weights: a Float32Array, or a Uint16Array of bf16 values (MarginHead's bf16 centres)
//
// k ≤ min(C, kMaxTopK), checked in lib/head/margin-head.ts and again here. No options object.
#include <algorithm>

#include "../cpu/topk_cpu.h"
#include "exports.h"
#include "napi_util.h"

namespace ms::napi {
namespace {

constexpr int64_t kMaxTopK = 1024;

struct TopKCall {
  const float* x = nullptr;
  const float* w = nullptr;
  const uint16_t* w_bf16 = nullptr;
  int64_t n = 0, c = 0, d = 0;
  int k = 0, threads = 0;
  int32_t* classes = nullptr;
  float* scores = nullptr;
  CallArrays arrays;
  std::vector<Output> outputs;

  void repoint(const Held& h) { napi::repoint(x, h), napi::repoint(w, h), napi::repoint(w_bf16, h); }
  std::string run() {
    return run_caught([&] { cpu_topk(x, w, w_bf16, n, c, d, k, threads, -1, classes, scores); },
                      "the top-k workspace of N=" + std::to_string(n) + ", k=" + std::to_string(k));
  }
  void set_scalars(Napi::Object&) const {}
};

TopKCall make_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TopKCall r;
  auto x = f32_arg(env, info[0], "embeddings");
  const CentresArg centres = centres_arg(env, info[1], "weights");
  const Napi::TypedArray& w = centres.array;
  r.d = count_arg(env, info[2], "dim");
  if (r.d < 1 || x.ElementLength() % (size_t)r.d || w.ElementLength() % (size_t)r.d || w.ElementLength() == 0) {
    arg_error(env, "embeddings and weights whose lengths are multiples of dim", "topk",
              "lengths " + std::to_string(x.ElementLength()) + " and " + std::to_string(w.ElementLength()));
  }
  r.n = (int64_t)(x.ElementLength() / (size_t)r.d);
  r.c = (int64_t)(w.ElementLength() / (size_t)r.d);
  const int64_t k = count_arg(env, info[3], "k");
  const int64_t k_max = std::min(r.c, kMaxTopK);
  if (k < 1 || k > k_max) arg_error(env, "an integer in [1, " + std::to_string(k_max) + "]", "k", std::to_string(k));
  r.k = (int)k;
  r.threads = info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : 0;
  r.x = x.Data();
  r.w = centres.f32, r.w_bf16 = centres.bf16;
  r.arrays.read("embeddings", x);
  r.arrays.read("weights", w);
  const size_t nk = (size_t)(r.n * r.k);
  auto classes = new_i32(env, nk, "the top-k classes");
  auto scores = new_f32(env, nk, "the top-k scores");
  r.classes = classes.Data();
  r.scores = scores.Data();
  r.outputs = {{"classes", classes}, {"scores", scores}};
  return r;
}

}  // namespace

Napi::Value TopK(const Napi::CallbackInfo& info) { return call_sync(info.Env(), make_request(info)); }

Napi::Value TopKAsync(const Napi::CallbackInfo& info) { return call_async(info.Env(), "margin-softmax:topk", make_request(info)); }

}  // namespace ms::napi
