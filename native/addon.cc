// addon.cc — the N-API layer. lib/ validates every argument in TypeScript;
// this file unpacks the already-checked arguments, runs the chosen backend
// (synchronously, or on the libuv pool for the async variants) and turns
// native failures into JS exceptions that carry a JS stack.
//
// JS signature (lib/native.ts):
//   loss(embeddings, weights, labels, dim, opts, withGrad, callback?)
// opts = { kind, scale, m1, m2, m3, fallback, rowMargins?, gradFilter,
//          weightsBf16, threads, workspaceBytes, simd, backend: 'cpu'|'cuda' }
#include <napi.h>

#include <new>
#include <string>

#include "cpu/big_alloc.h"
#include "cpu/loss_cpu.h"
#include "cuda/loss_cuda.h"

namespace {

using namespace ms;

struct Request {
  LossProblem problem;
  CpuOptions cpu;
  bool use_cuda = false;
  bool with_grad = false;
  Napi::Float32Array per_sample, grad_x, grad_w;
  LossOutputs out;
};

// A new Float32Array of n zeroed floats. Large ones are backed by huge-page
// memory (see big_alloc.h) and reported to V8 as external memory.
Napi::Float32Array new_f32(Napi::Env env, size_t n) {
  const size_t bytes = n * sizeof(float);
  if (bytes < kBigAllocThreshold) return Napi::Float32Array::New(env, n);
  float* data = static_cast<float*>(big_alloc(bytes));
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, data, bytes, [bytes](Napi::Env e, void* p) {
    big_free(p, bytes);
    Napi::MemoryManagement::AdjustExternalMemory(e, -(int64_t)bytes);
  });
  Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)bytes);
  return Napi::Float32Array::New(env, n, buf, 0);
}

double num(const Napi::Object& o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

// Builds the request and allocates the output arrays (on the JS thread).
Request make_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Request r;
  auto x = info[0].As<Napi::Float32Array>();
  auto w = info[1].As<Napi::Float32Array>();
  auto labels = info[2].As<Napi::Int32Array>();
  const int64_t d = info[3].As<Napi::Number>().Int64Value();
  auto o = info[4].As<Napi::Object>();
  r.with_grad = info[5].As<Napi::Boolean>().Value();

  LossProblem& p = r.problem;
  p.x = x.Data();
  p.w = w.Data();
  p.labels = labels.Data();
  p.d = d;
  p.n = (int64_t)labels.ElementLength();
  p.c = (int64_t)w.ElementLength() / d;
  p.margin.kind = (MarginKind)(int)num(o, "kind", 0);
  p.margin.scale = (float)num(o, "scale", 64.0);
  p.margin.m1 = (float)num(o, "m1", 0.0);
  p.margin.m2 = (float)num(o, "m2", 0.0);
  p.margin.m3 = (float)num(o, "m3", 0.0);
  p.margin.fallback = o.Get("fallback").ToBoolean().Value();
  p.grad_filter = (float)num(o, "gradFilter", 0.0);
  p.weights_bf16 = o.Get("weightsBf16").ToBoolean().Value();
  Napi::Value rm = o.Get("rowMargins");
  if (rm.IsTypedArray()) p.row_margins = rm.As<Napi::Float32Array>().Data();

  r.cpu.threads = (int)num(o, "threads", 0);
  r.cpu.workspace_bytes = (size_t)num(o, "workspaceBytes", (double)(64u << 20));
  r.cpu.simd = (int)num(o, "simd", -1);
  r.use_cuda = o.Get("backend").ToString().Utf8Value() == "cuda";

  r.per_sample = new_f32(env, (size_t)p.n);
  r.out.per_sample = r.per_sample.Data();
  if (r.with_grad) {
    r.grad_x = new_f32(env, (size_t)(p.n * d));
    r.grad_w = new_f32(env, (size_t)(p.c * d));
    r.out.grad_x = r.grad_x.Data();
    r.out.grad_w = r.grad_w.Data();
  }
  return r;
}

// Runs the backend; returns an error message, empty on success.
std::string run(Request& r) {
  try {
    if (r.use_cuda) {
      cuda_loss(r.problem, r.out);
    } else {
      cpu_loss(r.problem, r.out, r.cpu);
    }
    return "";
  } catch (const InputError& e) {
    return e.message;
  } catch (const CudaError& e) {
    return "CUDA error: " + e.message;
  } catch (const std::bad_alloc&) {
    return "Out of memory: could not allocate the native workspace for N=" + std::to_string(r.problem.n) +
           ", C=" + std::to_string(r.problem.c) + ", d=" + std::to_string(r.problem.d);
  } catch (const std::exception& e) {
    return std::string("Internal error: ") + e.what();
  }
}

Napi::Object result(Napi::Env env, Request& r) {
  Napi::Object res = Napi::Object::New(env);
  res.Set("loss", r.out.loss);
  res.Set("perSample", r.per_sample);
  res.Set("validRows", (double)r.out.valid_rows);
  res.Set("skippedBlocks", (double)r.out.skipped_blocks);
  res.Set("totalBlocks", (double)r.out.total_blocks);
  if (r.with_grad) {
    res.Set("gradEmbeddings", r.grad_x);
    res.Set("gradWeights", r.grad_w);
  }
  return res;
}

Napi::Value LossSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Request r = make_request(info);
  const std::string err = run(r);
  if (!err.empty()) throw Napi::Error::New(env, err);
  return result(env, r);
}

// The async variant: inputs and outputs are held by persistent references
// so the garbage collector keeps them alive while a pool thread works.
class LossWorker : public Napi::AsyncWorker {
 public:
  LossWorker(const Napi::CallbackInfo& info, Napi::Promise::Deferred deferred)
      : Napi::AsyncWorker(info.Env(), "margin-softmax:loss"), deferred_(deferred), req_(make_request(info)) {
    for (int k = 0; k < 3; ++k) keep_[k] = Napi::Persistent(info[k].As<Napi::Object>());
    keep_[3] = Napi::Persistent(info[4].As<Napi::Object>());
    keep_[4] = Napi::Persistent(req_.per_sample.As<Napi::Object>());
    if (req_.with_grad) {
      keep_[5] = Napi::Persistent(req_.grad_x.As<Napi::Object>());
      keep_[6] = Napi::Persistent(req_.grad_w.As<Napi::Object>());
    }
  }
  void Execute() override {
    const std::string err = run(req_);
    if (!err.empty()) SetError(err);
  }
  void OnOK() override { deferred_.Resolve(result(Env(), req_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Request req_;
  Napi::ObjectReference keep_[7];
};

Napi::Value LossAsync(const Napi::CallbackInfo& info) {
  auto deferred = Napi::Promise::Deferred::New(info.Env());
  auto* worker = new LossWorker(info, deferred);
  worker->Queue();
  return deferred.Promise();
}

// Elastic margins: m_i = m + σ·N(0,1) keyed by (seed, counter, row), drawn
// here with the shared generator so every backend sees the same values.
Napi::Value ElasticMargins(const Napi::CallbackInfo& info) {
  const double m = info[0].As<Napi::Number>().DoubleValue();
  const double sigma = info[1].As<Napi::Number>().DoubleValue();
  const uint64_t seed = (uint64_t)info[2].As<Napi::Number>().Int64Value();
  const uint64_t counter = (uint64_t)info[3].As<Napi::Number>().Int64Value();
  const size_t n = (size_t)info[4].As<Napi::Number>().Int64Value();
  auto out = Napi::Float32Array::New(info.Env(), n);
  for (size_t i = 0; i < n; ++i) out[i] = elastic_margin((float)m, (float)sigma, seed, counter, i);
  return out;
}

// Margin of one (kind, cosine) pair through the shared header: lets the
// tests check the header's formulas directly.
Napi::Value TargetLogit(const Napi::CallbackInfo& info) {
  auto o = info[0].As<Napi::Object>();
  MarginParams p;
  p.kind = (MarginKind)(int)num(o, "kind", 0);
  p.scale = (float)num(o, "scale", 64.0);
  p.m1 = (float)num(o, "m1", 0.0);
  p.m2 = (float)num(o, "m2", 0.0);
  p.m3 = (float)num(o, "m3", 0.0);
  p.fallback = o.Get("fallback").ToBoolean().Value();
  const float c = (float)info[1].As<Napi::Number>().DoubleValue();
  const float rm = (float)info[2].As<Napi::Number>().DoubleValue();
  const Logit L = target_logit(p, c, rm);
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("z", L.z);
  res.Set("dz", L.dz);
  return res;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object res = Napi::Object::New(env);
  const int requested = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : -1;
  const int width = cpu_simd_width(requested);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("threads", cpu_default_threads());
  cpu.Set("simd", cpu_simd_name(width));
  cpu.Set("simdWidth", width);
  res.Set("cpu", cpu);
  std::string why;
  const bool usable = cuda_usable(&why);
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("compiled", cuda_compiled());
  cuda.Set("usable", usable);
  if (!usable) cuda.Set("reason", why);
  CudaDeviceInfo di;
  if (usable && cuda_device_info(&di)) {
    cuda.Set("name", di.name);
    cuda.Set("computeCapability", std::to_string(di.major) + "." + std::to_string(di.minor));
    cuda.Set("totalMemory", (double)di.total_memory);
    cuda.Set("freeMemory", (double)di.free_memory);
    cuda.Set("driverVersion", di.driver_version);
    cuda.Set("runtimeVersion", di.runtime_version);
    cuda.Set("multiprocessors", di.multiprocessors);
  }
  res.Set("cuda", cuda);
  return res;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("loss", Napi::Function::New(env, LossSync));
  exports.Set("lossAsync", Napi::Function::New(env, LossAsync));
  exports.Set("elasticMargins", Napi::Function::New(env, ElasticMargins));
  exports.Set("targetLogit", Napi::Function::New(env, TargetLogit));
  exports.Set("info", Napi::Function::New(env, Info));
  return exports;
}

}  // namespace

NODE_API_MODULE(margin_softmax, Init)
