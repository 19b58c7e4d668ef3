// device_head.cc — the N-API side of MarginHead on the CUDA device (see
// cuda/head_cuda.h and lib/head/device-centres.ts); compiled only where the CUDA backend
// is (addon.cc registers these functions under MS_WITH_CUDA).
//
//   headCreate(classes, dim, bf16, withMomentum) → handle
//   headFree(handle)                              frees the device memory now
//   headSetRows(handle, which, row0, rows, dim)   which: 0 centres, 1 momentum
//   headGetRows(handle, which, row0, out, dim)
//   headLoss(handle, x, labels, opts, withGrad) / headLossAsync(...) → the loss result, or its promise
//   headTopk(handle, x, k, dim) / headTopkAsync(...) → { classes, scores }, or its promise
//   headBytes(handle) → device bytes the head holds
//
// opts of headLoss, read here: kind, scale, m1, m2, m3, fallback (margin_of),
// gradFilter, rowMargins?, classIndex?, lseIn?, targetPm1In?, validRows,
// stats, sgd? { lr, momentum, weightDecay }.
//
// A handle that is only garbage-collected frees its device memory in its
// finaliser; its device bytes are reported to V8 as external memory, so that
// dropped heads are collected before the device fills up.
#include "../cuda/head_cuda.h"
#include "exports.h"
#include "napi_util.h"

namespace ms::napi {
namespace {

struct HeadRef {
  DeviceHead* head = nullptr;
  int64_t external_bytes = 0;
};

void release(Napi::Env env, HeadRef* ref) {
  if (!ref->head) return;
  head_destroy(ref->head);
  ref->head = nullptr;
  Napi::MemoryManagement::AdjustExternalMemory(env, -ref->external_bytes);
  ref->external_bytes = 0;
}

HeadRef* ref_of(const Napi::Value& v) {
  HeadRef* ref = v.As<Napi::External<HeadRef>>().Data();
  if (!ref->head) throw Napi::Error::New(v.Env(), "MarginHead: the device head has been freed");
  return ref;
}

// What a failed host allocation of the device head's calls was for.
const char* const kHostMemory = "host memory for the device head";

// Runs fn on the JS thread; its failure (in the loss's wording) becomes a JS error.
template <class F>
void run_or_throw(Napi::Env env, F&& fn) {
  const std::string err = run_caught(fn, kHostMemory);
  if (!err.empty()) throw Napi::Error::New(env, err);
}

// One step or evaluation against the resident centres, built on the JS thread.
struct HeadCall {
  DeviceHead* head = nullptr;
  LossProblem problem;
  LossOutputs out;
  HeadSgd sgd;
  bool with_sgd = false, with_grad = false, with_stats = false;
  CallArrays arrays;
  std::vector<Output> outputs;

  void repoint(const Held& h) {
    LossProblem& p = problem;
    napi::repoint(p.x, h), napi::repoint(p.labels, h), napi::repoint(p.row_margins, h);
    napi::repoint(p.class_index, h), napi::repoint(p.lse_in, h), napi::repoint(p.target_pm1_in, h);
  }
  std::string run() {
    return run_caught([&] { head_loss(head, problem, out, with_sgd ? &sgd : nullptr); }, kHostMemory);
  }
  void set_scalars(Napi::Object& res) const { set_loss_scalars(res, out); }
};

void read_options(Napi::Env env, const Napi::Object& o, HeadCall& r) {
  LossProblem& p = r.problem;
  p.margin = margin_of(o);
  p.grad_filter = (float)num(o, "gradFilter", 0.0);
  p.row_margins = per_row_input(env, o, "rowMargins", p.n, r.arrays);
  auto ci = opt_i32(env, o, "classIndex");
  if (!ci.IsEmpty()) {  // the sampled master rows
    p.class_index = ci.Data();
    p.c = (int64_t)ci.ElementLength();
    r.arrays.read("classIndex", ci);
  }
  p.lse_in = per_row_input(env, o, "lseIn", p.n, r.arrays);
  p.target_pm1_in = per_row_input(env, o, "targetPm1In", p.n, r.arrays);
  p.valid_rows = (int64_t)num(o, "validRows", 0);
  r.with_stats = flag(o, "stats");
  Napi::Value sgd = o.Get("sgd");
  if (r.with_grad && sgd.IsObject()) {
    auto so = sgd.As<Napi::Object>();
    r.sgd.lr = (float)num(so, "lr", 0.0);
    r.sgd.momentum = (float)num(so, "momentum", 0.0);
    r.sgd.weight_decay = (float)num(so, "weightDecay", 0.0);
    r.sgd.round_key = stochastic_round_key((uint64_t)num(so, "roundSeed", 0.0), (uint64_t)num(so, "roundStep", 0.0));
    r.sgd.row_offset = (int64_t)num(so, "rowOffset", 0.0);
    r.with_sgd = true;
  }
}

float* add_output(Napi::Env env, const char* key, size_t n, HeadCall& r) {
  auto a = new_f32(env, n, key);
  r.outputs.push_back({key, a});
  return a.Data();
}

void add_outputs(Napi::Env env, HeadCall& r) {
  const size_t n = (size_t)r.problem.n;
  LossOutputs& out = r.out;
  out.per_sample = add_output(env, "perSample", n, r);
  out.row_target_cos = add_output(env, "targetCos", n, r);
  if (r.with_grad) out.grad_x = add_output(env, "gradEmbeddings", n * (size_t)r.problem.d, r);
  if (r.with_stats) {
    out.row_max = add_output(env, "rowMax", n, r);
    out.row_sumexp = add_output(env, "rowSumExp", n, r);
    out.row_sumexp_other = add_output(env, "rowSumExpOther", n, r);
    out.row_target = add_output(env, "rowTarget", n, r);
  }
}

HeadCall make_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HeadCall r;
  r.head = ref_of(info[0])->head;
  r.arrays.keep(info[0].As<Napi::Object>());  // the handle outlives an async call
  auto x = f32_arg(env, info[1], "embeddings");
  auto labels = i32_arg(env, info[2], "labels");
  r.with_grad = info[4].ToBoolean().Value();
  LossProblem& p = r.problem;
  p.x = x.Data();
  p.labels = labels.Data();
  p.n = (int64_t)labels.ElementLength();
  p.d = (int64_t)x.ElementLength() / (p.n > 0 ? p.n : 1);
  r.arrays.read("embeddings", x);
  r.arrays.read("labels", labels);
  read_options(env, object_arg(env, info[3], "options"), r);
  add_outputs(env, r);
  return r;
}

}  // namespace

Napi::Value HeadCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t classes = info[0].As<Napi::Number>().Int64Value();
  const int d = info[1].As<Napi::Number>().Int32Value();
  const bool bf16 = info[2].ToBoolean().Value();
  const bool momentum = info[3].ToBoolean().Value();
  DeviceHead* h = nullptr;
  run_or_throw(env, [&] { h = head_create(classes, d, bf16, momentum); });
  auto* ref = new HeadRef{h, (int64_t)head_device_bytes(h)};
  Napi::MemoryManagement::AdjustExternalMemory(env, ref->external_bytes);
  return Napi::External<HeadRef>::New(env, ref, [](Napi::Env e, HeadRef* r) {
    release(e, r);
    delete r;
  });
}

Napi::Value HeadFree(const Napi::CallbackInfo& info) {
  release(info.Env(), info[0].As<Napi::External<HeadRef>>().Data());
  return info.Env().Undefined();
}

namespace {

// headSetRows / headGetRows(handle, which, row0, rows, dim): rows
// [row0, row0 + rows.length / dim) of the centres (which = 0) or the momentum
// (which = 1), from or into `rows` (copy is head_set_rows or head_get_rows).
template <class Copy>
Napi::Value copy_rows(const Napi::CallbackInfo& info, Copy copy) {
  HeadRef* ref = ref_of(info[0]);
  const int which = info[1].As<Napi::Number>().Int32Value();
  const int64_t row0 = info[2].As<Napi::Number>().Int64Value();
  auto rows = f32_arg(info.Env(), info[3], "rows");
  const int64_t d = info[4].As<Napi::Number>().Int64Value();
  run_or_throw(info.Env(), [&] { copy(ref->head, which, row0, (int64_t)rows.ElementLength() / d, rows.Data()); });
  return info.Env().Undefined();
}

}  // namespace

Napi::Value HeadSetRows(const Napi::CallbackInfo& info) { return copy_rows(info, head_set_rows); }

Napi::Value HeadGetRows(const Napi::CallbackInfo& info) { return copy_rows(info, head_get_rows); }

Napi::Value HeadLoss(const Napi::CallbackInfo& info) { return call_sync(info.Env(), make_request(info)); }

// lib/head/margin-head.ts refuses other calls on the head until the promise settles.
Napi::Value HeadLossAsync(const Napi::CallbackInfo& info) {
  return call_async(info.Env(), "margin-softmax:head", make_request(info));
}

namespace {

// One top-k over the resident centres, built on the JS thread.
struct HeadTopKCall {
  DeviceHead* head = nullptr;
  const float* x = nullptr;
  int64_t n = 0;
  int k = 0;
  int32_t* classes = nullptr;
  float* scores = nullptr;
  CallArrays arrays;
  std::vector<Output> outputs;

  void repoint(const Held& h) { napi::repoint(x, h); }
  std::string run() {
    return run_caught([&] { head_topk(head, x, n, k, classes, scores); }, kHostMemory);
  }
  void set_scalars(Napi::Object&) const {}
};

HeadTopKCall make_topk_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HeadTopKCall r;
  r.head = ref_of(info[0])->head;
  r.arrays.keep(info[0].As<Napi::Object>());  // the handle outlives an async call
  auto x = f32_arg(env, info[1], "embeddings");
  r.k = info[2].As<Napi::Number>().Int32Value();
  const int64_t d = info[3].As<Napi::Number>().Int64Value();
  r.x = x.Data();
  r.n = (int64_t)x.ElementLength() / d;
  r.arrays.read("embeddings", x);
  auto classes = new_i32(env, (size_t)(r.n * r.k), "the top-k classes");
  auto scores = new_f32(env, (size_t)(r.n * r.k), "the top-k scores");
  r.classes = classes.Data();
  r.scores = scores.Data();
  r.outputs = {{"classes", classes}, {"scores", scores}};
  return r;
}

}  // namespace

Napi::Value HeadTopK(const Napi::CallbackInfo& info) { return call_sync(info.Env(), make_topk_request(info)); }

// lib/head/margin-head.ts refuses other calls on the head until the promise settles.
Napi::Value HeadTopKAsync(const Napi::CallbackInfo& info) {
  return call_async(info.Env(), "margin-softmax:head-topk", make_topk_request(info));
}

Napi::Value HeadBytes(const Napi::CallbackInfo& info) {
  HeadRef* ref = info[0].As<Napi::External<HeadRef>>().Data();
  return Napi::Number::New(info.Env(), (double)head_device_bytes(ref->head));
}

}  // namespace ms::napi
