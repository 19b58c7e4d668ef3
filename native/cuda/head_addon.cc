// head_addon.cc — the N-API side of MarginHead on the CUDA device (see
// head_cuda.h and lib/head-cuda.ts). lib/ validates every argument; this file
// unpacks them, runs the device head and turns native failures into JS errors.
//
//   headCreate(classes, dim, bf16, withMomentum) → handle
//   headFree(handle)                              frees the device memory now
//   headSetRows(handle, which, row0, rows)        which: 0 centres, 1 momentum
//   headGetRows(handle, which, row0, out)
//   headLoss(handle, x, labels, opts, withGrad) / headLossAsync(...) → Promise
//   headTopk(handle, x, k) → { classes, scores }
//
// A handle that is only garbage-collected frees its device memory in its
// finaliser; its device bytes are reported to V8 as external memory, so that
// dropped heads are collected before the device fills up.
#include "head_addon.h"

#include <array>
#include <new>
#include <string>

#include "head_cuda.h"
#include "loss_cuda.h"

namespace ms {
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

double num(const Napi::Object& o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

template <class A, class T>
const T* opt_array(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsTypedArray() ? v.As<A>().Data() : nullptr;
}

// Runs fn, returning its error message (empty on success): the message texts
// of the loss's native layer, so lib/loss.ts's rethrow types them alike.
template <class F>
std::string guarded(F&& fn) {
  try {
    fn();
    return "";
  } catch (const InputError& e) {
    return e.message;
  } catch (const CudaError& e) {
    return "CUDA error: " + e.message;
  } catch (const std::bad_alloc&) {
    return "Out of memory: could not allocate host memory for the device head";
  } catch (const std::exception& e) {
    return std::string("Internal error: ") + e.what();
  }
}

Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t classes = info[0].As<Napi::Number>().Int64Value();
  const int d = info[1].As<Napi::Number>().Int32Value();
  const bool bf16 = info[2].ToBoolean().Value();
  const bool momentum = info[3].ToBoolean().Value();
  DeviceHead* h = nullptr;
  const std::string err = guarded([&] { h = head_create(classes, d, bf16, momentum); });
  if (!err.empty()) throw Napi::Error::New(env, err);
  auto* ref = new HeadRef{h, (int64_t)head_device_bytes(h)};
  Napi::MemoryManagement::AdjustExternalMemory(env, ref->external_bytes);
  return Napi::External<HeadRef>::New(env, ref, [](Napi::Env e, HeadRef* r) {
    release(e, r);
    delete r;
  });
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  release(info.Env(), info[0].As<Napi::External<HeadRef>>().Data());
  return info.Env().Undefined();
}

Napi::Value SetRows(const Napi::CallbackInfo& info) {
  HeadRef* ref = ref_of(info[0]);
  const int which = info[1].As<Napi::Number>().Int32Value();
  const int64_t row0 = info[2].As<Napi::Number>().Int64Value();
  auto rows = info[3].As<Napi::Float32Array>();
  const int64_t d = info[4].As<Napi::Number>().Int64Value();
  const std::string err =
      guarded([&] { head_set_rows(ref->head, which, row0, (int64_t)rows.ElementLength() / d, rows.Data()); });
  if (!err.empty()) throw Napi::Error::New(info.Env(), err);
  return info.Env().Undefined();
}

Napi::Value GetRows(const Napi::CallbackInfo& info) {
  HeadRef* ref = ref_of(info[0]);
  const int which = info[1].As<Napi::Number>().Int32Value();
  const int64_t row0 = info[2].As<Napi::Number>().Int64Value();
  auto out = info[3].As<Napi::Float32Array>();
  const int64_t d = info[4].As<Napi::Number>().Int64Value();
  const std::string err =
      guarded([&] { head_get_rows(ref->head, which, row0, (int64_t)out.ElementLength() / d, out.Data()); });
  if (!err.empty()) throw Napi::Error::New(info.Env(), err);
  return info.Env().Undefined();
}

// One step/evaluation request, built on the JS thread.
struct HeadRequest {
  DeviceHead* head = nullptr;
  LossProblem problem;
  LossOutputs out;
  HeadSgd sgd;
  bool with_sgd = false, with_grad = false, with_stats = false;
  // per_sample, target_cos, grad_x, row_max, row_sumexp, row_sumexp_other, row_target
  static constexpr size_t kOutputs = 7;
  std::array<Napi::Float32Array, kOutputs> arrays;
};

HeadRequest make_head_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HeadRequest r;
  r.head = ref_of(info[0])->head;
  auto x = info[1].As<Napi::Float32Array>();
  auto labels = info[2].As<Napi::Int32Array>();
  auto o = info[3].As<Napi::Object>();
  r.with_grad = info[4].ToBoolean().Value();
  LossProblem& p = r.problem;
  p.x = x.Data();
  p.labels = labels.Data();
  p.n = (int64_t)labels.ElementLength();
  p.d = (int64_t)x.ElementLength() / (p.n > 0 ? p.n : 1);
  p.margin.kind = (MarginKind)(int)num(o, "kind", 0);
  p.margin.scale = (float)num(o, "scale", 64.0);
  p.margin.m1 = (float)num(o, "m1", 0.0);
  p.margin.m2 = (float)num(o, "m2", 0.0);
  p.margin.m3 = (float)num(o, "m3", 0.0);
  p.margin.fallback = o.Get("fallback").ToBoolean().Value();
  p.grad_filter = (float)num(o, "gradFilter", 0.0);
  p.row_margins = opt_array<Napi::Float32Array, float>(o, "rowMargins");
  p.class_index = opt_array<Napi::Int32Array, int32_t>(o, "classIndex");
  if (p.class_index) p.c = (int64_t)o.Get("classIndex").As<Napi::Int32Array>().ElementLength();
  p.lse_in = opt_array<Napi::Float32Array, float>(o, "lseIn");
  p.target_pm1_in = opt_array<Napi::Float32Array, float>(o, "targetPm1In");
  p.valid_rows = (int64_t)num(o, "validRows", 0);
  r.with_stats = o.Get("stats").ToBoolean().Value();
  Napi::Value sgd = o.Get("sgd");
  if (r.with_grad && sgd.IsObject()) {
    auto so = sgd.As<Napi::Object>();
    r.sgd.lr = (float)num(so, "lr", 0.0);
    r.sgd.momentum = (float)num(so, "momentum", 0.0);
    r.sgd.weight_decay = (float)num(so, "weightDecay", 0.0);
    r.with_sgd = true;
  }
  const size_t n = (size_t)p.n;
  auto make = [&](size_t k, size_t len, float** slot) {
    r.arrays[k] = Napi::Float32Array::New(env, len);
    *slot = r.arrays[k].Data();
  };
  make(0, n, &r.out.per_sample);
  make(1, n, &r.out.row_target_cos);
  if (r.with_grad) make(2, n * (size_t)p.d, &r.out.grad_x);
  if (r.with_stats) {
    make(3, n, &r.out.row_max);
    make(4, n, &r.out.row_sumexp);
    make(5, n, &r.out.row_sumexp_other);
    make(6, n, &r.out.row_target);
  }
  return r;
}

std::string run(HeadRequest& r) {
  return guarded([&] { head_loss(r.head, r.problem, r.out, r.with_sgd ? &r.sgd : nullptr); });
}

Napi::Object result(Napi::Env env, const HeadRequest& r) {
  Napi::Object res = Napi::Object::New(env);
  res.Set("loss", r.out.loss);
  res.Set("perSample", r.arrays[0]);
  res.Set("targetCos", r.arrays[1]);
  res.Set("validRows", (double)r.out.valid_rows);
  res.Set("skippedBlocks", (double)r.out.skipped_blocks);
  res.Set("totalBlocks", (double)r.out.total_blocks);
  if (r.with_grad) res.Set("gradEmbeddings", r.arrays[2]);
  if (r.with_stats) {
    res.Set("rowMax", r.arrays[3]);
    res.Set("rowSumExp", r.arrays[4]);
    res.Set("rowSumExpOther", r.arrays[5]);
    res.Set("rowTarget", r.arrays[6]);
  }
  return res;
}

Napi::Value Loss(const Napi::CallbackInfo& info) {
  HeadRequest r = make_head_request(info);
  const std::string err = run(r);
  if (!err.empty()) throw Napi::Error::New(info.Env(), err);
  return result(info.Env(), r);
}

// The async variant: the handle, the inputs and the outputs are held by
// persistent references while a pool thread works (lib/head.ts refuses other
// calls on the head until the promise settles).
class HeadLossWorker : public Napi::AsyncWorker {
 public:
  HeadLossWorker(const Napi::CallbackInfo& info, Napi::Promise::Deferred deferred)
      : Napi::AsyncWorker(info.Env(), "margin-softmax:head"), deferred_(deferred), req_(make_head_request(info)) {
    for (size_t k = 0; k < 4; ++k) inputs_[k] = Napi::Persistent(info[k].As<Napi::Object>());
    for (size_t k = 0; k < HeadRequest::kOutputs; ++k)
      if (!req_.arrays[k].IsEmpty()) outputs_[k] = Napi::Persistent(req_.arrays[k].As<Napi::Object>());
  }
  void Execute() override {
    const std::string err = run(req_);
    if (!err.empty()) SetError(err);
  }
  void OnOK() override {
    for (size_t k = 0; k < HeadRequest::kOutputs; ++k)
      req_.arrays[k] = outputs_[k].IsEmpty() ? Napi::Float32Array() : outputs_[k].Value().As<Napi::Float32Array>();
    deferred_.Resolve(result(Env(), req_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  HeadRequest req_;
  Napi::ObjectReference inputs_[4];
  Napi::ObjectReference outputs_[HeadRequest::kOutputs];
};

Napi::Value LossAsync(const Napi::CallbackInfo& info) {
  auto deferred = Napi::Promise::Deferred::New(info.Env());
  auto* worker = new HeadLossWorker(info, deferred);
  worker->Queue();
  return deferred.Promise();
}

Napi::Value TopK(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HeadRef* ref = ref_of(info[0]);
  auto x = info[1].As<Napi::Float32Array>();
  const int k = info[2].As<Napi::Number>().Int32Value();
  const int64_t d = info[3].As<Napi::Number>().Int64Value();
  const int64_t n = (int64_t)x.ElementLength() / d;
  auto classes = Napi::Int32Array::New(env, (size_t)(n * k));
  auto scores = Napi::Float32Array::New(env, (size_t)(n * k));
  const std::string err = guarded([&] { head_topk(ref->head, x.Data(), n, k, classes.Data(), scores.Data()); });
  if (!err.empty()) throw Napi::Error::New(env, err);
  Napi::Object res = Napi::Object::New(env);
  res.Set("classes", classes);
  res.Set("scores", scores);
  return res;
}

Napi::Value Bytes(const Napi::CallbackInfo& info) {
  HeadRef* ref = info[0].As<Napi::External<HeadRef>>().Data();
  return Napi::Number::New(info.Env(), (double)head_device_bytes(ref->head));
}

}  // namespace

void register_head_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("headCreate", Napi::Function::New(env, Create));
  exports.Set("headFree", Napi::Function::New(env, Free));
  exports.Set("headSetRows", Napi::Function::New(env, SetRows));
  exports.Set("headGetRows", Napi::Function::New(env, GetRows));
  exports.Set("headLoss", Napi::Function::New(env, Loss));
  exports.Set("headLossAsync", Napi::Function::New(env, LossAsync));
  exports.Set("headTopk", Napi::Function::New(env, TopK));
  exports.Set("headBytes", Napi::Function::New(env, Bytes));
}

}  // namespace ms
