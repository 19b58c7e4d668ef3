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

#include <array>
#include <new>
#include <string>

#include "cpu/big_alloc.h"
#include "cpu/gemm_ceiling.h"
#include "cpu/loss_cpu.h"
#include "cpu/topk_cpu.h"
#include "cuda/loss_cuda.h"
#include "comm/comm.h"

namespace {

using namespace ms;

// SGD with momentum and weight decay applied to the class centres inside the
// backward pass (PyTorch's torch.optim.SGD, dampening 0, no Nesterov):
//   g ← g + λ·w;  b ← μ·b + g;  w ← w − lr·b      (b starts at 0)
struct Sgd {
  float lr = 0, momentum = 0, weight_decay = 0;
  float* w = nullptr;    // the centres, updated in place
  float* buf = nullptr;  // momentum buffer (C_total×d), null when μ = 0
  const int32_t* class_index = nullptr;
  int64_t d = 0;
  void apply(int64_t j0, int64_t bc, const float* g) const {
    for (int64_t j = 0; j < bc; ++j) {
      const int64_t r = class_index ? class_index[j0 + j] : j0 + j;
      float* wr = w + r * d;
      float* br = buf ? buf + r * d : nullptr;
      const float* gr = g ? g + j * d : nullptr;
      for (int64_t q = 0; q < d; ++q) {
        float gq = (gr ? gr[q] : 0.0f) + weight_decay * wr[q];
        if (br) {
          br[q] = momentum * br[q] + gq;
          gq = br[q];
        }
        wr[q] -= lr * gq;
      }
    }
  }
};

struct Request {
  LossProblem problem;
  CpuOptions cpu;
  bool use_cuda = false;
  bool with_grad = false;
  bool with_stats = false;
  Sgd sgd;
  Napi::Float32Array per_sample, grad_x, grad_w, row_max, row_sumexp, row_sumexp_other, row_target,
      target_cos;
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
  // MarginHead extras: class subset, merged LSE, global V, partial stats, fused SGD.
  Napi::Value ci = o.Get("classIndex");
  if (ci.IsTypedArray()) {
    p.class_index = ci.As<Napi::Int32Array>().Data();
    p.c = (int64_t)ci.As<Napi::Int32Array>().ElementLength();
  }
  Napi::Value li = o.Get("lseIn");
  if (li.IsTypedArray()) p.lse_in = li.As<Napi::Float32Array>().Data();
  Napi::Value tp = o.Get("targetPm1In");
  if (tp.IsTypedArray()) p.target_pm1_in = tp.As<Napi::Float32Array>().Data();
  p.valid_rows = (int64_t)num(o, "validRows", 0);
  r.with_stats = o.Get("stats").ToBoolean().Value();
  Napi::Value sgd = o.Get("sgd");
  const bool fused_update = r.with_grad && sgd.IsObject();
  if (fused_update) {
    auto so = sgd.As<Napi::Object>();
    r.sgd.lr = (float)num(so, "lr", 0.0);
    r.sgd.momentum = (float)num(so, "momentum", 0.0);
    r.sgd.weight_decay = (float)num(so, "weightDecay", 0.0);
    r.sgd.w = w.Data();  // the head owns W: updated in place
    Napi::Value mb = so.Get("momentumBuffer");
    if (mb.IsTypedArray() && r.sgd.momentum != 0.0f) r.sgd.buf = mb.As<Napi::Float32Array>().Data();
    r.sgd.class_index = p.class_index;
    r.sgd.d = d;
  }

  r.cpu.threads = (int)num(o, "threads", 0);
  r.cpu.workspace_bytes = (size_t)num(o, "workspaceBytes", (double)(64u << 20));
  r.cpu.simd = (int)num(o, "simd", -1);
  r.use_cuda = o.Get("backend").ToString().Utf8Value() == "cuda";

  // Outputs: new arrays, or the caller's (options.out, checked in lib/loss.ts)
  // so a training loop can reuse a 2 GB gradWeights instead of faulting in a
  // fresh one every call.
  auto out_or_new = [&](const char* key, size_t n) {
    Napi::Value v = o.Get(key);
    return v.IsTypedArray() ? v.As<Napi::Float32Array>() : new_f32(env, n);
  };
  r.per_sample = out_or_new("outPerSample", (size_t)p.n);
  r.out.per_sample = r.per_sample.Data();
  r.target_cos = new_f32(env, (size_t)p.n);  // N floats: always returned
  r.out.row_target_cos = r.target_cos.Data();
  if (r.with_stats) {
    r.row_max = new_f32(env, (size_t)p.n);
    r.row_sumexp = new_f32(env, (size_t)p.n);
    r.row_sumexp_other = new_f32(env, (size_t)p.n);
    r.row_target = new_f32(env, (size_t)p.n);
    r.out.row_max = r.row_max.Data();
    r.out.row_sumexp = r.row_sumexp.Data();
    r.out.row_sumexp_other = r.row_sumexp_other.Data();
    r.out.row_target = r.row_target.Data();
  }
  if (r.with_grad) {
    r.grad_x = out_or_new("outGradEmbeddings", (size_t)(p.n * d));
    r.out.grad_x = r.grad_x.Data();
    if (!fused_update) {
      r.grad_w = out_or_new("outGradWeights", (size_t)(p.c * d));
      r.out.grad_w = r.grad_w.Data();
    }
  }
  return r;
}

// The update hook points at the request's own Sgd, so it is bound only once
// the request sits where it will run (requests are moved on construction).
void bind_update(Request& r) {
  if (r.sgd.w == nullptr) return;
  Sgd* sgd = &r.sgd;
  r.problem.block_update = [sgd](int64_t j0, int64_t bc, const float* g) { sgd->apply(j0, bc, g); };
}

// Runs the backend; returns an error message, empty on success.
std::string run(Request& r) {
  bind_update(r);
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
  res.Set("targetCos", r.target_cos);
  res.Set("validRows", (double)r.out.valid_rows);
  res.Set("skippedBlocks", (double)r.out.skipped_blocks);
  res.Set("totalBlocks", (double)r.out.total_blocks);
  if (r.with_grad) {
    res.Set("gradEmbeddings", r.grad_x);
    if (!r.grad_w.IsEmpty()) res.Set("gradWeights", r.grad_w);
  }
  if (r.with_stats) {
    res.Set("rowMax", r.row_max);
    res.Set("rowSumExp", r.row_sumexp);
    res.Set("rowSumExpOther", r.row_sumexp_other);
    res.Set("rowTarget", r.row_target);
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
    for (int k = 0; k < 3; ++k) inputs_[k] = Napi::Persistent(info[k].As<Napi::Object>());
    inputs_[3] = Napi::Persistent(info[4].As<Napi::Object>());  // holds rowMargins, classIndex, buffers
    const auto arrays = output_arrays();
    for (size_t k = 0; k < arrays.size(); ++k)
      if (!arrays[k]->IsEmpty()) outputs_[k] = Napi::Persistent(arrays[k]->As<Napi::Object>());
  }
  void Execute() override {
    const std::string err = run(req_);
    if (!err.empty()) SetError(err);
  }
  void OnOK() override {
    // The handles stored at construction belonged to a closed scope: take
    // fresh ones from the persistent references.
    const auto arrays = output_arrays();
    for (size_t k = 0; k < arrays.size(); ++k)
      *arrays[k] = outputs_[k].IsEmpty() ? Napi::Float32Array() : outputs_[k].Value().As<Napi::Float32Array>();
    deferred_.Resolve(result(Env(), req_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  // Every output array of the request (an empty one when not produced).
  static constexpr size_t kOutputs = 8;
  std::array<Napi::Float32Array*, kOutputs> output_arrays() {
    return {&req_.per_sample, &req_.grad_x,  &req_.grad_w,     &req_.row_max,
            &req_.row_sumexp, &req_.row_sumexp_other, &req_.row_target, &req_.target_cos};
  }

  Napi::Promise::Deferred deferred_;
  Request req_;
  Napi::ObjectReference inputs_[4];
  Napi::ObjectReference outputs_[kOutputs];
};

Napi::Value LossAsync(const Napi::CallbackInfo& info) {
  auto deferred = Napi::Promise::Deferred::New(info.Env());
  auto* worker = new LossWorker(info, deferred);
  worker->Queue();
  return deferred.Promise();
}

// gaussian(mean, sigma, seed, counter, n, start = 0): n draws of mean + σ·N(0,1),
// draw i keyed by (seed, counter, start + i) with the shared generator of margin_math.h.
// The elastic margins use it (every backend sees the same values), and so
// does MarginHead's 'normal' initialisation.
Napi::Value Gaussian(const Napi::CallbackInfo& info) {
  const double m = info[0].As<Napi::Number>().DoubleValue();
  const double sigma = info[1].As<Napi::Number>().DoubleValue();
  const uint64_t seed = (uint64_t)info[2].As<Napi::Number>().Int64Value();
  const uint64_t counter = (uint64_t)info[3].As<Napi::Number>().Int64Value();
  const size_t n = (size_t)info[4].As<Napi::Number>().Int64Value();
  const uint64_t start = info.Length() > 5 ? (uint64_t)info[5].As<Napi::Number>().Int64Value() : 0;
  auto out = new_f32(info.Env(), n);
  float* o = out.Data();
  for (size_t i = 0; i < n; ++i) o[i] = elastic_margin((float)m, (float)sigma, seed, counter, start + i);
  return out;
}

// zeros(n): a zeroed Float32Array, huge-page backed when large (see new_f32).
Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return new_f32(info.Env(), (size_t)info[0].As<Napi::Number>().Int64Value());
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

// productsSeconds(x, w, dim, threads, simd, backward): the GEMM ceiling
// (gemm_ceiling.cc), timed natively. For the benchmarks.
Napi::Value ProductsSeconds(const Napi::CallbackInfo& info) {
  auto x = info[0].As<Napi::Float32Array>();
  auto w = info[1].As<Napi::Float32Array>();
  const int64_t d = info[2].As<Napi::Number>().Int64Value();
  const int threads = info[3].As<Napi::Number>().Int32Value();
  const int simd = info[4].As<Napi::Number>().Int32Value();
  const bool backward = info[5].As<Napi::Boolean>().Value();
  try {
    return Napi::Number::New(info.Env(), products_seconds(x.Data(), w.Data(), (int64_t)x.ElementLength() / d,
                                                          (int64_t)w.ElementLength() / d, d, threads, simd, backward));
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "Out of memory in productsSeconds");
  }
}

// topk(x, w, dim, k, threads) → { classes: Int32Array N×k, scores: Float32Array N×k }
Napi::Value TopK(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = info[0].As<Napi::Float32Array>();
  auto w = info[1].As<Napi::Float32Array>();
  const int64_t d = info[2].As<Napi::Number>().Int64Value();
  const int k = info[3].As<Napi::Number>().Int32Value();
  const int threads = info[4].As<Napi::Number>().Int32Value();
  const int64_t n = (int64_t)x.ElementLength() / d, c = (int64_t)w.ElementLength() / d;
  auto classes = Napi::Int32Array::New(env, (size_t)(n * k));
  auto scores = Napi::Float32Array::New(env, (size_t)(n * k));
  try {
    cpu_topk(x.Data(), w.Data(), n, c, d, k, threads, -1, classes.Data(), scores.Data());
  } catch (const InputError& e) {
    throw Napi::Error::New(env, e.message);
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(env, "Out of memory in topk");
  }
  Napi::Object res = Napi::Object::New(env);
  res.Set("classes", classes);
  res.Set("scores", scores);
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
  exports.Set("gaussian", Napi::Function::New(env, Gaussian));
  exports.Set("zeros", Napi::Function::New(env, Zeros));
  exports.Set("targetLogit", Napi::Function::New(env, TargetLogit));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("topk", Napi::Function::New(env, TopK));
  exports.Set("productsSeconds", Napi::Function::New(env, ProductsSeconds));
  ms::comm::register_natives(env, exports);  // _comm*: collectives (native/comm)
  return exports;
}

}  // namespace

NODE_API_MODULE(margin_softmax, Init)
