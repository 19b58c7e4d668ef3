// addon.cc — the N-API layer. lib/ validates every argument in TypeScript;
// this file unpacks the arguments, runs the chosen backend (synchronously, or
// on the libuv pool for the async variants) and turns native failures into JS
// exceptions that carry a JS stack.
//
// What the memory safety of a call rests on is checked here, natively, again:
// every array's type, element count and attachment is read from V8 (a typed
// array's JS `length` property can be shadowed, so lengths computed in
// JavaScript are never trusted for pointer arithmetic), output arrays may not
// overlap any other array of the call, and every exported function turns an
// allocation failure into a JS error naming the bytes asked for (an uncaught
// std::bad_alloc would abort the process).
//
// JS signature (lib/native.ts):
//   loss(embeddings, weights, labels, dim, opts, withGrad, callback?)
// opts = { kind, scale, m1, m2, m3, fallback, rowMargins?, gradFilter,
//          weightsBf16, threads, workspaceBytes, simd, backend: 'cpu'|'cuda' }
#include <napi.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "cpu/big_alloc.h"
#include "cpu/bf16_gemm.h"
#include "cpu/gemm_ceiling.h"
#include "cpu/loss_cpu.h"
#include "cpu/peak_cpu.h"
#include "cpu/topk_cpu.h"
#include "cuda/head_addon.h"
#include "cuda/head_cuda.h"
#include "cuda/loss_cuda.h"
#include "comm/comm.h"
#include "margin_kinds_napi.h"

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
  // Every caller's array the call reads or writes (true: writes), for the async worker to hold (see Held).
  std::vector<std::pair<Napi::TypedArray, bool>> arrays;
};

// ---- Errors -----------------------------------------------------------------

// "Expected … for … but received …": lib/loss.ts turns these into ArgumentError.
[[noreturn]] void arg_error(Napi::Env env, const std::string& expected, const std::string& what, const std::string& got) {
  throw Napi::Error::New(env, "Expected " + expected + " for " + what + " but received " + got);
}

std::string oom_message(size_t bytes, const std::string& what) {
  return "Out of memory: could not allocate " + std::to_string(bytes) + " bytes for " + what;
}

// ---- Arrays ------------------------------------------------------------------

// The typed array in `v`, checked natively: its element type and that its
// buffer is attached (a transferred ArrayBuffer leaves its views detached).
template <class A>
A typed_arg(Napi::Env env, const Napi::Value& v, napi_typedarray_type type, const char* type_name, const std::string& what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) arg_error(env, type_name, what, "another value");
  A a = v.As<A>();
  if (a.ArrayBuffer().IsDetached()) arg_error(env, std::string(type_name) + " with an attached buffer", what, "a detached ArrayBuffer");
  return a;
}
Napi::Float32Array f32_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  return typed_arg<Napi::Float32Array>(env, v, napi_float32_array, "Float32Array", what);
}
Napi::Int32Array i32_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  return typed_arg<Napi::Int32Array>(env, v, napi_int32_array, "Int32Array", what);
}
// Element count as V8 stores it (napi_get_typedarray_info), never the JS property.
void expect_length(Napi::Env env, const Napi::TypedArray& a, size_t n, const std::string& what) {
  if (a.ElementLength() != n) {
    arg_error(env, "an array of length " + std::to_string(n), what, "an array of length " + std::to_string(a.ElementLength()));
  }
}

// A non-negative integer argument that fits in int64 (the JS side passes safe integers).
int64_t count_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) arg_error(env, "a non-negative safe integer", what, "another value");
  return (int64_t)d;
}

// V8's limit on a typed array's length on 64-bit platforms (v8::TypedArray::kMaxLength).
constexpr size_t kMaxTypedLength = size_t(1) << 32;

// Memory the addon allocated for typed arrays (new_typed), reference-counted:
// the ArrayBuffer's finalizer drops one reference and an async call that uses
// the memory holds another, so the memory outlives both (see Held below).
struct Block {
  void* data;
  size_t bytes;
  int refs;  // guarded by g_blocks_mutex
};
std::mutex g_blocks_mutex;
std::map<uintptr_t, Block*> g_blocks;  // by start address

void block_release(Block* b) {
  bool last;
  {
    std::lock_guard<std::mutex> lock(g_blocks_mutex);
    last = --b->refs == 0;
    if (last) g_blocks.erase(reinterpret_cast<uintptr_t>(b->data));
  }
  if (last) {
    big_free(b->data, b->bytes);
    delete b;
  }
}

// The block holding [lo, hi) with one more reference taken, or null when the
// memory is not the addon's (V8 allocated it).
Block* block_acquire(uintptr_t lo, uintptr_t hi) {
  std::lock_guard<std::mutex> lock(g_blocks_mutex);
  auto it = g_blocks.upper_bound(lo);
  if (it == g_blocks.begin()) return nullptr;
  Block* b = std::prev(it)->second;
  if (hi > reinterpret_cast<uintptr_t>(b->data) + b->bytes) return nullptr;
  ++b->refs;
  return b;
}

// A new typed array of n zeroed elements. Large ones are backed by huge-page
// memory (see big_alloc.h) and reported to V8 as external memory; a failed
// allocation is a JS error naming the bytes (V8's own ArrayBuffer allocation
// would abort the process instead, so only small arrays take that path).
template <class A, class T>
A new_typed(Napi::Env env, size_t n, const std::string& what) {
  const size_t max_len = kMaxTypedLength;
  if (n > max_len) {
    throw Napi::Error::New(env, oom_message(n * sizeof(T), what) + " (" + std::to_string(n) + " elements; a typed array holds at most " +
                                    std::to_string(max_len) + ")");
  }
  const size_t bytes = n * sizeof(T);
  if (bytes < kBigAllocThreshold) return A::New(env, n);
  Block* block = nullptr;
  try {
    block = new Block{big_alloc(bytes), bytes, 1};
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(env, oom_message(bytes, what));
  }
  {
    std::lock_guard<std::mutex> lock(g_blocks_mutex);
    g_blocks[reinterpret_cast<uintptr_t>(block->data)] = block;
  }
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, block->data, bytes, [block, bytes](Napi::Env e, void*) {
    block_release(block);
    Napi::MemoryManagement::AdjustExternalMemory(e, -(int64_t)bytes);
  });
  Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)bytes);
  return A::New(env, n, buf, 0);
}
Napi::Float32Array new_f32(Napi::Env env, size_t n, const std::string& what) {
  return new_typed<Napi::Float32Array, float>(env, n, what);
}

// Output arrays may not share memory with any other array of the call: the
// kernels read the inputs while writing the outputs (an out.perSample over the
// labels would overwrite them), and two outputs over the same bytes give garbage.
struct Span {
  const char* name;
  uintptr_t lo, hi;
};
Span span_of(const char* name, const Napi::TypedArray& a) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
  return {name, lo, lo + a.ByteLength()};
}
void check_no_overlap(Napi::Env env, const std::vector<Span>& inputs, const std::vector<Span>& outputs) {
  auto overlaps = [](const Span& a, const Span& b) { return a.lo < b.hi && b.lo < a.hi; };
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (const Span& in : inputs)
      if (overlaps(outputs[i], in)) arg_error(env, std::string("an array that does not overlap ") + in.name, outputs[i].name, "one that shares memory with it");
    for (size_t j = 0; j < i; ++j)
      if (overlaps(outputs[i], outputs[j]))
        arg_error(env, std::string("an array that does not overlap ") + outputs[j].name, outputs[i].name, "one that shares memory with it");
  }
}

double num(const Napi::Object& o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

// An optional typed array option: empty when absent, checked when present.
template <class A>
A opt_array(Napi::Env env, const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return A();
  const std::string what = std::string("options.") + key;
  if constexpr (std::is_same_v<A, Napi::Float32Array>) return f32_arg(env, v, what);
  else return i32_arg(env, v, what);
}

// Builds the request and allocates the output arrays (on the JS thread).
Request make_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Request r;
  auto x = f32_arg(env, info[0], "embeddings");
  auto w = f32_arg(env, info[1], "weights");
  auto labels = i32_arg(env, info[2], "labels");
  const int64_t d = count_arg(env, info[3], "dim");
  if (d < 1) arg_error(env, "a positive integer", "dim", "0");
  if (!info[4].IsObject()) arg_error(env, "an options object", "options", "another value");
  auto o = info[4].As<Napi::Object>();
  r.with_grad = info[5].ToBoolean().Value();

  LossProblem& p = r.problem;
  p.n = (int64_t)labels.ElementLength();
  const int64_t w_rows = (int64_t)(w.ElementLength() / (size_t)d);
  if (p.n > 0 && d > std::numeric_limits<int64_t>::max() / p.n) arg_error(env, "a dim whose product with labels.length fits in 64 bits", "dim", std::to_string(d));
  expect_length(env, x, (size_t)(p.n * d), "embeddings (labels.length × dim)");
  if (w.ElementLength() == 0 || w.ElementLength() % (size_t)d != 0) {
    arg_error(env, "a non-empty array whose length is a multiple of dim = " + std::to_string(d), "weights",
              "an array of length " + std::to_string(w.ElementLength()));
  }
  p.x = x.Data();
  p.w = w.Data();
  p.labels = labels.Data();
  p.d = d;
  p.c = w_rows;
  p.margin.kind = (MarginKind)(int)num(o, "kind", 0);
  p.margin.scale = (float)num(o, "scale", 64.0);
  p.margin.m1 = (float)num(o, "m1", 0.0);
  p.margin.m2 = (float)num(o, "m2", 0.0);
  p.margin.m3 = (float)num(o, "m3", 0.0);
  p.margin.fallback = o.Get("fallback").ToBoolean().Value();
  p.grad_filter = (float)num(o, "gradFilter", 0.0);
  p.weights_bf16 = o.Get("weightsBf16").ToBoolean().Value();
  std::vector<Span> inputs{span_of("embeddings", x), span_of("weights", w), span_of("labels", labels)};
  r.arrays = {{x, false}, {w, false}, {labels, false}};
  auto per_row = [&](const char* key) {
    auto a = opt_array<Napi::Float32Array>(env, o, key);
    if (a.IsEmpty()) return (const float*)nullptr;
    expect_length(env, a, (size_t)p.n, std::string("options.") + key);
    inputs.push_back(span_of(key, a));
    r.arrays.push_back({a, false});
    return (const float*)a.Data();
  };
  p.row_margins = per_row("rowMargins");
  // MarginHead extras: class subset, merged LSE, global V, partial stats, fused SGD.
  auto ci = opt_array<Napi::Int32Array>(env, o, "classIndex");
  if (!ci.IsEmpty()) {
    const int32_t* idx = ci.Data();
    for (size_t j = 0; j < ci.ElementLength(); ++j)
      if (idx[j] < 0 || idx[j] >= w_rows) arg_error(env, "class indices in [0, " + std::to_string(w_rows) + ")", "options.classIndex", std::to_string(idx[j]));
    p.class_index = idx;
    p.c = (int64_t)ci.ElementLength();
    inputs.push_back(span_of("classIndex", ci));
    r.arrays.push_back({ci, false});
  }
  // Labels index rows of W (of the class subset): checked against the count
  // read here (−1 ignores a row; −2, in a shard, marks another shard's class).
  for (int64_t i = 0; i < p.n; ++i) {
    const int32_t y = p.labels[i];
    if (y < -2 || y >= p.c) arg_error(env, "labels in [-1, " + std::to_string(p.c - 1) + "]", "labels[" + std::to_string(i) + "]", std::to_string(y));
  }
  p.lse_in = per_row("lseIn");
  p.target_pm1_in = per_row("targetPm1In");
  p.valid_rows = (int64_t)num(o, "validRows", 0);
  r.with_stats = o.Get("stats").ToBoolean().Value();
  Napi::Value sgd = o.Get("sgd");
  const bool fused_update = r.with_grad && sgd.IsObject();
  std::vector<Span> outputs;
  if (fused_update) {
    auto so = sgd.As<Napi::Object>();
    r.sgd.lr = (float)num(so, "lr", 0.0);
    r.sgd.momentum = (float)num(so, "momentum", 0.0);
    r.sgd.weight_decay = (float)num(so, "weightDecay", 0.0);
    r.sgd.w = w.Data();  // the head owns W: updated in place
    r.arrays[1].second = true;
    auto mb = opt_array<Napi::Float32Array>(env, so, "momentumBuffer");
    if (!mb.IsEmpty() && r.sgd.momentum != 0.0f) {
      expect_length(env, mb, w.ElementLength(), "options.sgd.momentumBuffer");
      r.sgd.buf = mb.Data();
      outputs.push_back(span_of("options.sgd.momentumBuffer", mb));
      r.arrays.push_back({mb, true});
    }
    r.sgd.class_index = p.class_index;
    r.sgd.d = d;
  }

  r.cpu.threads = (int)num(o, "threads", 0);
  r.cpu.workspace_bytes = (size_t)num(o, "workspaceBytes", (double)(64u << 20));
  r.cpu.simd = (int)num(o, "simd", -1);
  r.cpu.matrix = (int)num(o, "matrix", -1);
  r.use_cuda = o.Get("backend").ToString().Utf8Value() == "cuda";

  // Outputs: new arrays, or the caller's (options.out, checked in lib/loss.ts)
  // so a training loop can reuse a 2 GB gradWeights instead of faulting in a
  // fresh one every call.
  auto out_or_new = [&](const char* key, const char* name, size_t n) {
    auto a = opt_array<Napi::Float32Array>(env, o, key);
    if (a.IsEmpty()) return new_f32(env, n, std::string(name).substr(std::strlen("options.out.")));
    expect_length(env, a, n, name);
    outputs.push_back(span_of(name, a));
    r.arrays.push_back({a, true});
    return a;
  };
  r.per_sample = out_or_new("outPerSample", "options.out.perSample", (size_t)p.n);
  r.out.per_sample = r.per_sample.Data();
  r.target_cos = new_f32(env, (size_t)p.n, "targetCos");  // N floats: always returned
  r.out.row_target_cos = r.target_cos.Data();
  if (r.with_stats) {
    r.row_max = new_f32(env, (size_t)p.n, "rowMax");
    r.row_sumexp = new_f32(env, (size_t)p.n, "rowSumExp");
    r.row_sumexp_other = new_f32(env, (size_t)p.n, "rowSumExpOther");
    r.row_target = new_f32(env, (size_t)p.n, "rowTarget");
    r.out.row_max = r.row_max.Data();
    r.out.row_sumexp = r.row_sumexp.Data();
    r.out.row_sumexp_other = r.row_sumexp_other.Data();
    r.out.row_target = r.row_target.Data();
  }
  if (r.with_grad) {
    r.grad_x = out_or_new("outGradEmbeddings", "options.out.gradEmbeddings", (size_t)(p.n * d));
    r.out.grad_x = r.grad_x.Data();
    if (!fused_update) {
      r.grad_w = out_or_new("outGradWeights", "options.out.gradWeights", (size_t)(p.c * d));
      r.out.grad_w = r.grad_w.Data();
    }
  }
  // The fused update writes W in place: W is an output then, and the other
  // outputs may not overlap it (it stays in `inputs`, which they are checked against).
  check_no_overlap(env, inputs, outputs);
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
  } catch (const AllocFailure& e) {
    return oom_message(e.bytes, "the native workspace of N=" + std::to_string(r.problem.n) + ", C=" + std::to_string(r.problem.c) +
                                    ", d=" + std::to_string(r.problem.d));
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

// Async calls keep alive the memory they read and write. A persistent
// reference keeps a typed array object alive, but not its memory:
// transferring its ArrayBuffer (postMessage, structuredClone with transfer)
// detaches the array and hands the memory to a new ArrayBuffer that the GC
// may free while a pool thread still uses it, and N-API can neither pin an
// ArrayBuffer nor forbid its transfer. So an async call holds each array
// in one of two ways:
//  - memory the addon allocated (new_typed: the head's centres and momentum,
//    large outputs of earlier calls) is pinned by a reference on its Block,
//    without a copy, whatever happens to the ArrayBuffer;
//  - memory V8 allocated is copied into a private buffer for the duration of
//    the call (an input), and an output is written there and copied back when
//    the call settles, unless the caller's array was detached meanwhile (the
//    promise is then rejected: the results have nowhere to go).
// Inputs already detached when the call starts are rejected in make_request.
class Held {
 public:
  Held(const Napi::TypedArray& a, bool output) : ref_(Napi::Persistent(static_cast<Napi::Object>(a))), output_(output) {
    const Span sp = span_of("", a);
    orig_ = reinterpret_cast<uint8_t*>(sp.lo);
    bytes_ = sp.hi - sp.lo;
    block_ = block_acquire(sp.lo, sp.hi);
    if (block_ == nullptr && bytes_ > 0) {
      copy_ = static_cast<uint8_t*>(big_alloc(bytes_));  // AllocFailure → NativeError via guarded()
      // Outputs too: the fused SGD updates W and the momentum in place.
      std::memcpy(copy_, orig_, bytes_);
    }
  }
  ~Held() {
    if (block_) block_release(block_);
    if (copy_) big_free(copy_, bytes_);
  }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;
  // Where the backend reads or writes this array during the call.
  uint8_t* original() const { return orig_; }
  uint8_t* working() const { return copy_ ? copy_ : orig_; }
  // On the JS thread when the call settles: false when the results of an
  // output cannot be delivered (its array was detached).
  bool deliver() {
    if (!output_ || !copy_) return true;
    Napi::TypedArray a = ref_.Value().As<Napi::TypedArray>();
    if (a.ArrayBuffer().IsDetached()) return false;
    std::memcpy(orig_, copy_, bytes_);
    return true;
  }

 private:
  Napi::ObjectReference ref_;
  bool output_;
  uint8_t* orig_ = nullptr;
  size_t bytes_ = 0;
  Block* block_ = nullptr;
  uint8_t* copy_ = nullptr;
};

// Replaces, in every pointer the request holds, an array's address by its working copy.
template <class T>
void repoint(T*& field, const Held& h) {
  if (field != nullptr && reinterpret_cast<const uint8_t*>(field) == h.original()) field = reinterpret_cast<T*>(h.working());
}

class LossWorker : public Napi::AsyncWorker {
 public:
  LossWorker(Napi::Env env, Request req, Napi::Promise::Deferred deferred)
      : Napi::AsyncWorker(env, "margin-softmax:loss"), deferred_(deferred), req_(std::move(req)) {
    for (const auto& [a, writes] : req_.arrays) held_.push_back(std::make_unique<Held>(a, writes));
    req_.arrays.clear();
    LossProblem& p = req_.problem;
    for (const auto& h : held_) {
      repoint(p.x, *h), repoint(p.w, *h), repoint(p.labels, *h), repoint(p.row_margins, *h), repoint(p.class_index, *h);
      repoint(p.lse_in, *h), repoint(p.target_pm1_in, *h), repoint(req_.sgd.w, *h), repoint(req_.sgd.buf, *h);
      repoint(req_.sgd.class_index, *h), repoint(req_.out.per_sample, *h), repoint(req_.out.grad_x, *h), repoint(req_.out.grad_w, *h);
    }
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
    for (const auto& h : held_) {
      if (!h->deliver()) {
        deferred_.Reject(Napi::Error::New(Env(), "Expected the arrays written by the call (options.out, the head's centres) to stay "
                                                 "attached until it settles but one was transferred (detached); its results are lost").Value());
        return;
      }
    }
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
  std::vector<std::unique_ptr<Held>> held_;
  Napi::ObjectReference outputs_[kOutputs];
};

Napi::Value LossAsync(const Napi::CallbackInfo& info) {
  auto deferred = Napi::Promise::Deferred::New(info.Env());
  auto* worker = new LossWorker(info.Env(), make_request(info), deferred);
  worker->Queue();
  return deferred.Promise();
}

// gaussian(mean, sigma, seed, counter, n, start = 0): n draws of mean + σ·N(0,1),
// draw i keyed by (seed, counter, start + i) with the shared generator of margin_math.h.
// The elastic margins use it (every backend sees the same values), and so
// does MarginHead's 'normal' initialisation.
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

// zeros(n): a zeroed Float32Array, huge-page backed when large (see new_f32).
Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return new_f32(info.Env(), (size_t)count_arg(info.Env(), info[0], "n"), "a zeroed Float32Array");
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
  Napi::Env env = info.Env();
  auto x = f32_arg(env, info[0], "x");
  auto w = f32_arg(env, info[1], "w");
  const int64_t d = std::max<int64_t>(1, count_arg(env, info[2], "dim"));
  const int threads = info[3].As<Napi::Number>().Int32Value();
  const int simd = info[4].As<Napi::Number>().Int32Value();
  const bool backward = info[5].As<Napi::Boolean>().Value();
  return Napi::Number::New(env, products_seconds(x.Data(), w.Data(), (int64_t)x.ElementLength() / d,
                                                 (int64_t)w.ElementLength() / d, d, threads, simd, backward));
}

// _peakGflops(kind, threads, simd, seconds?): register-only peak loops (peak_cpu.cc),
// kind 0 fp32, 1 avx512-bf16, 2 amx-bf16; 0 where the CPU lacks it. For the benchmarks.
Napi::Value PeakGflops(const Napi::CallbackInfo& info) {
  const int kind = info[0].As<Napi::Number>().Int32Value();
  const int threads = info[1].As<Napi::Number>().Int32Value();
  const int simd = info[2].As<Napi::Number>().Int32Value();
  const double seconds = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0.2;
  return Napi::Number::New(info.Env(), peak_gflops((PeakKind)std::clamp(kind, 0, 2), threads, simd, seconds));
}

// topk(x, w, dim, k, threads) → { classes: Int32Array N×k, scores: Float32Array N×k }
// k ≤ min(C, kMaxTopK), checked in lib/head.ts and again here.
constexpr int64_t kMaxTopK = 1024;

struct TopKRequest {
  const float* x = nullptr;
  const float* w = nullptr;
  int64_t n = 0, c = 0, d = 0;
  int k = 0, threads = 0;
  Napi::Int32Array classes;
  Napi::Float32Array scores;
  std::vector<std::pair<Napi::TypedArray, bool>> arrays;  // x, w: held by the async worker
};

TopKRequest make_topk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TopKRequest r;
  auto x = f32_arg(env, info[0], "embeddings");
  auto w = f32_arg(env, info[1], "weights");
  r.d = count_arg(env, info[2], "dim");
  if (r.d < 1 || x.ElementLength() % (size_t)r.d || w.ElementLength() % (size_t)r.d || w.ElementLength() == 0) {
    arg_error(env, "embeddings and weights whose lengths are multiples of dim", "topk", "lengths " + std::to_string(x.ElementLength()) + " and " + std::to_string(w.ElementLength()));
  }
  r.n = (int64_t)(x.ElementLength() / (size_t)r.d);
  r.c = (int64_t)(w.ElementLength() / (size_t)r.d);
  const int64_t k = count_arg(env, info[3], "k");
  if (k < 1 || k > std::min(r.c, kMaxTopK)) arg_error(env, "an integer in [1, " + std::to_string(std::min(r.c, kMaxTopK)) + "]", "k", std::to_string(k));
  r.k = (int)k;
  r.threads = info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : 0;
  r.x = x.Data();
  r.w = w.Data();
  const size_t nk = (size_t)(r.n * r.k);
  r.classes = new_typed<Napi::Int32Array, int32_t>(env, nk, "the top-k classes");
  r.scores = new_f32(env, nk, "the top-k scores");
  r.arrays = {{x, false}, {w, false}};
  return r;
}

std::string run_topk(TopKRequest& r) {
  try {
    cpu_topk(r.x, r.w, r.n, r.c, r.d, r.k, r.threads, -1, r.classes.Data(), r.scores.Data());
    return "";
  } catch (const InputError& e) {
    return e.message;
  } catch (const AllocFailure& e) {
    return oom_message(e.bytes, "the top-k workspace");
  } catch (const std::bad_alloc&) {
    return "Out of memory: could not allocate the top-k workspace for N=" + std::to_string(r.n) + ", k=" + std::to_string(r.k);
  } catch (const std::exception& e) {
    return std::string("Internal error: ") + e.what();
  }
}

Napi::Object topk_result(Napi::Env env, const Napi::Int32Array& classes, const Napi::Float32Array& scores) {
  Napi::Object res = Napi::Object::New(env);
  res.Set("classes", classes);
  res.Set("scores", scores);
  return res;
}

Napi::Value TopK(const Napi::CallbackInfo& info) {
  TopKRequest r = make_topk(info);
  const std::string err = run_topk(r);
  if (!err.empty()) throw Napi::Error::New(info.Env(), err);
  return topk_result(info.Env(), r.classes, r.scores);
}

// topkAsync: TopK on the libuv pool (MarginHead.predictAsync); x and w held as in LossWorker.
class TopKWorker : public Napi::AsyncWorker {
 public:
  TopKWorker(Napi::Env env, TopKRequest req, Napi::Promise::Deferred deferred)
      : Napi::AsyncWorker(env, "margin-softmax:topk"), deferred_(deferred), req_(std::move(req)) {
    for (const auto& [a, writes] : req_.arrays) held_.push_back(std::make_unique<Held>(a, writes));
    req_.arrays.clear();
    for (const auto& h : held_) repoint(req_.x, *h), repoint(req_.w, *h);
    classes_ = Napi::Persistent(static_cast<Napi::Object>(req_.classes));
    scores_ = Napi::Persistent(static_cast<Napi::Object>(req_.scores));
  }
  void Execute() override {
    const std::string err = run_topk(req_);
    if (!err.empty()) SetError(err);
  }
  void OnOK() override {
    deferred_.Resolve(topk_result(Env(), classes_.Value().As<Napi::Int32Array>(), scores_.Value().As<Napi::Float32Array>()));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  TopKRequest req_;
  std::vector<std::unique_ptr<Held>> held_;
  Napi::ObjectReference classes_, scores_;
};

Napi::Value TopKAsync(const Napi::CallbackInfo& info) {
  auto deferred = Napi::Promise::Deferred::New(info.Env());
  auto* worker = new TopKWorker(info.Env(), make_topk(info), deferred);
  worker->Queue();
  return deferred.Promise();
}

// liveNativeBytes(): bytes held by big_alloc now (output arrays made by new_f32
// not yet collected, and workspaces of calls in flight). The leak test checks
// that steps return it to where it was.
Napi::Value LiveNativeBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)big_live_bytes().load());
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
  cpu.Set("matrix", matrix_path_name(best_matrix_path()));
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
  cuda.Set("headBytes", (double)head_device_bytes_all());  // held by MarginHeads on the device
  res.Set("cuda", cuda);
  return res;
}

// Every export runs inside this: a C++ exception that is not already a JS
// error (an allocation failure anywhere, a thread that cannot be started)
// becomes one instead of terminating the process.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const AllocFailure& e) {
    throw Napi::Error::New(info.Env(), oom_message(e.bytes, "a native buffer"));
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "Out of memory: a native allocation failed");
  } catch (const InputError& e) {
    throw Napi::Error::New(info.Env(), e.message);
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string("Internal error: ") + e.what());
  }
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("loss", Napi::Function::New(env, guarded<LossSync>));
  exports.Set("lossAsync", Napi::Function::New(env, guarded<LossAsync>));
  exports.Set("gaussian", Napi::Function::New(env, guarded<Gaussian>));
  exports.Set("zeros", Napi::Function::New(env, guarded<Zeros>));
  exports.Set("targetLogit", Napi::Function::New(env, guarded<TargetLogit>));
  exports.Set("info", Napi::Function::New(env, guarded<Info>));
  exports.Set("topk", Napi::Function::New(env, guarded<TopK>));
  exports.Set("topkAsync", Napi::Function::New(env, guarded<TopKAsync>));
  exports.Set("liveNativeBytes", Napi::Function::New(env, guarded<LiveNativeBytes>));
  exports.Set("productsSeconds", Napi::Function::New(env, guarded<ProductsSeconds>));
  exports.Set("_peakGflops", Napi::Function::New(env, guarded<PeakGflops>));
  register_head_functions(env, exports);  // MarginHead on the device (none without CUDA)
  ms::comm::register_natives(env, exports);  // _comm*: collectives (native/comm)
  ms::register_margin_kinds(env, exports);  // _marginKinds: margin_math.h's table of kinds
  return exports;
}

}  // namespace

NODE_API_MODULE(margin_softmax, Init)
