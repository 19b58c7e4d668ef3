// napi_util.h — what every binding of native/napi shares: the error wording,
// the exception guard of every export, the checked reading of arguments and
// options (typed arrays, counts, the margin), the typed arrays the addon
// allocates, and how a call holds the caller's arrays and runs synchronously
// or on the libuv pool (Held, CallArrays, call_sync, call_async).
//
// lib/ validates every argument in TypeScript. What the memory safety of a
// call rests on is checked here, natively, again: every array's type, element
// count and attachment is read from V8 (a typed array's JS `length` property
// can be shadowed, so lengths computed in JavaScript are never trusted for
// pointer arithmetic), output arrays may not overlap any other array of the
// call, and every export turns an allocation failure into a JS error naming
// the bytes asked for (an uncaught std::bad_alloc would abort the process).
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "../cpu/big_alloc.h"
#include "../cuda/loss_cuda.h"
#include "../loss_problem.h"
#include "async_work.h"

namespace ms::napi {

// ---- Errors -------------------------------------------------------------------

// "Expected … for … but received …": lib/ turns these into ArgumentError.
[[noreturn]] void arg_error(Napi::Env env, const std::string& expected, const std::string& what, const std::string& got);
std::string oom_message(size_t bytes, const std::string& what);

// Runs fn (on the JS thread or a pool thread) and returns "" or the message
// of what it threw, in the wording lib/ types: "Expected …" (InputError) is an
// ArgumentError, the rest a NativeError. `what` names what a failed
// allocation was for. A JS exception (only on the JS thread) passes through.
template <class F>
std::string run_caught(F&& fn, const std::string& what) {
  try {
    fn();
    return "";
  } catch (const Napi::Error&) {
    throw;
  } catch (const InputError& e) {
    return e.message;
  } catch (const CudaError& e) {
    return "CUDA error: " + e.message;
  } catch (const AllocFailure& e) {
    return oom_message(e.bytes, what);
  } catch (const std::bad_alloc&) {
    return "Out of memory: could not allocate " + what;
  } catch (const std::exception& e) {
    return std::string("Internal error: ") + e.what();
  }
}

// Every export runs inside this: a C++ exception that is not already a JS
// error (an allocation failure anywhere, a thread that cannot be started)
// becomes one instead of terminating the process.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  Napi::Value result;
  const std::string err = run_caught([&] { result = F(info); }, "a native buffer");
  if (!err.empty()) throw Napi::Error::New(info.Env(), err);
  return result;
}

// ---- Arguments and options ------------------------------------------------------

// The typed array in `v`, checked natively: its element type and that its
// buffer is attached (a transferred ArrayBuffer leaves its views detached).
Napi::Float32Array f32_arg(Napi::Env env, const Napi::Value& v, const std::string& what);
Napi::Int32Array i32_arg(Napi::Env env, const Napi::Value& v, const std::string& what);
// bf16 values (the upper halves of fp32 values) travel as a Uint16Array.
Napi::Uint16Array u16_arg(Napi::Env env, const Napi::Value& v, const std::string& what);
// Class centres as the CPU backend takes them (loss, topk): a Float32Array, or
// a Uint16Array of bf16 values (MarginHead's bf16 centres). Exactly one of
// f32 / bf16 is set; `array` is the one given.
struct CentresArg {
  Napi::TypedArray array;
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
};
CentresArg centres_arg(Napi::Env env, const Napi::Value& v, const std::string& what);
// Element count as V8 stores it (napi_get_typedarray_info), never the JS property.
void expect_length(Napi::Env env, const Napi::TypedArray& a, size_t n, const std::string& what);
// A non-negative integer argument that fits in int64 (the JS side passes safe integers).
int64_t count_arg(Napi::Env env, const Napi::Value& v, const std::string& what);
// An options object (`what` names it in the error).
Napi::Object object_arg(Napi::Env env, const Napi::Value& v, const std::string& what);

// o[key] where it is a number, else dflt.
double num(const Napi::Object& o, const char* key, double dflt);
bool flag(const Napi::Object& o, const char* key);
// An optional typed array option o[key]: empty when absent, checked when
// present (`prefix` + key names it in the error).
Napi::Float32Array opt_f32(Napi::Env env, const Napi::Object& o, const char* key, const std::string& prefix = "options.");
Napi::Int32Array opt_i32(Napi::Env env, const Napi::Object& o, const char* key, const std::string& prefix = "options.");

// The margin of a loss call: options kind, scale, m1, m2, m3, fallback.
MarginParams margin_of(const Napi::Object& o);
// The numbers of a loss result (loss, validRows, skippedBlocks, totalBlocks),
// for the loss on host arrays and the device head's step alike.
void set_loss_scalars(Napi::Object& res, const LossOutputs& out);

// ---- Typed arrays the addon allocates --------------------------------------------

// A new zeroed Float32Array / Int32Array of n elements. Large ones are backed
// by huge-page memory (big_alloc.h), possibly recycled, and reported to V8 as
// external memory; a failed allocation is a JS error naming the bytes (V8's
// own ArrayBuffer allocation would abort the process instead, so only small
// arrays take it). Fill::any: a large array may hold a recycled block's old
// values, for outputs a kernel writes in full.
Napi::Float32Array new_f32(Napi::Env env, size_t n, const std::string& what, Fill fill = Fill::zero);
Napi::Int32Array new_i32(Napi::Env env, size_t n, const std::string& what);
Napi::Uint16Array new_u16(Napi::Env env, size_t n, const std::string& what);

// Memory new_f32/new_i32 allocated, reference-counted: the ArrayBuffer's
// finalizer drops one reference and an async call that uses the memory holds
// another (see Held), so the memory outlives both.
struct Block;
// The block holding [lo, hi) with one more reference taken, or null when the
// memory is not the addon's (V8 allocated it).
Block* block_acquire(uintptr_t lo, uintptr_t hi);
void block_release(Block* b);

// ---- Holding the caller's arrays -------------------------------------------------

// Async calls keep alive the memory they read and write. A persistent
// reference keeps a typed array object alive, but not its memory:
// transferring its ArrayBuffer (postMessage, structuredClone with transfer)
// detaches the array and hands the memory to a new ArrayBuffer that the GC
// may free while a pool thread still uses it, and N-API can neither pin an
// ArrayBuffer nor forbid its transfer. So an async call holds each array
// in one of two ways:
//  - memory the addon allocated (new_f32: the head's centres and momentum,
//    large outputs of earlier calls) is pinned by a reference on its Block,
//    without a copy, whatever happens to the ArrayBuffer;
//  - memory V8 allocated is copied into a private buffer for the duration of
//    the call (an input), and an output is written there and copied back when
//    the call settles, unless the caller's array was detached meanwhile (the
//    promise is then rejected: the results have nowhere to go).
// Inputs already detached when the call starts are rejected by f32_arg/i32_arg.
class Held {
 public:
  Held(const Napi::TypedArray& a, bool output);
  ~Held();
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;
  // Where the backend reads or writes this array during the call.
  uint8_t* original() const { return orig_; }
  uint8_t* working() const { return copy_ ? copy_ : orig_; }
  // On the JS thread when the call settles: false when the results of an
  // output cannot be delivered (its array was detached).
  bool deliver();

 private:
  Napi::ObjectReference ref_;
  bool output_;
  uint8_t* orig_ = nullptr;
  size_t bytes_ = 0;
  Block* block_ = nullptr;
  uint8_t* copy_ = nullptr;
};

// Replaces, in a pointer a request holds, an array's address by its working copy.
template <class T>
void repoint(T*& field, const Held& h) {
  if (field != nullptr && reinterpret_cast<const uint8_t*>(field) == h.original()) field = reinterpret_cast<T*>(h.working());
}

// The caller's arrays one call reads and writes. Output arrays may not share
// memory with any other array of the call: the kernels read the inputs while
// writing the outputs (an out.perSample over the labels would overwrite
// them), and two outputs over the same bytes give garbage.
class CallArrays {
 public:
  // An array the call reads; `written` = also written in place (the head's
  // centres under the fused update), which the outputs are still checked against.
  void read(const std::string& name, const Napi::TypedArray& a, bool written = false);
  // An array the call writes (options.out, the momentum buffer).
  void write(const std::string& name, const Napi::TypedArray& a);
  // An object the async call keeps alive by reference only (the device head's handle).
  void keep(const Napi::Object& o) { kept_.push_back(o); }
  void check_no_overlap(Napi::Env env) const;
  // For an async call: Held copies of every array, and references to the kept objects.
  std::vector<std::unique_ptr<Held>> hold() const;
  std::vector<Napi::ObjectReference> keep_alive() const;

 private:
  struct Span {
    std::string name;
    uintptr_t lo, hi;
  };
  static Span span_of(const std::string& name, const Napi::TypedArray& a);
  std::vector<Span> inputs_, outputs_;
  std::vector<std::pair<Napi::TypedArray, bool>> arrays_;  // true: written
  std::vector<Napi::Object> kept_;
};

// An optional input of one value per row, o[key] (rowMargins, lseIn,
// targetPm1In): checked to hold n entries and read by the call; null when absent.
const float* per_row_input(Napi::Env env, const Napi::Object& o, const char* key, int64_t n, CallArrays& arrays);

// ---- Running a call ---------------------------------------------------------------

// One call of an operation, built on the JS thread. A request type R has
//   CallArrays arrays;                      the caller's arrays it reads and writes
//   std::vector<Output> outputs;            the result's arrays, by key
//   void repoint(const Held&);              moves its pointers onto a held copy
//   std::string run();                      runs the backend ("" or the error message)
//   void set_scalars(Napi::Object&) const;  the result's numbers (after run)
struct Output {
  const char* key;
  Napi::TypedArray array;
};

template <class R>
Napi::Object result_of(Napi::Env env, const R& r) {
  Napi::Object res = Napi::Object::New(env);
  r.set_scalars(res);
  for (const Output& o : r.outputs) res.Set(o.key, o.array);
  return res;
}

// Runs the request now, on the JS thread.
template <class R>
Napi::Value call_sync(Napi::Env env, R r) {
  const std::string err = r.run();
  if (!err.empty()) throw Napi::Error::New(env, err);
  return result_of(env, r);
}

// Runs the request on the libuv pool, its arrays held (see Held) until the
// call completes, whether or not its environment still runs JS (async_work.h).
template <class R>
class CallWorker : public AsyncCall {
 public:
  CallWorker(Napi::Env env, const char* name, R req) : AsyncCall(env, name), req_(std::move(req)) {
    held_ = req_.arrays.hold();
    kept_ = req_.arrays.keep_alive();
    req_.arrays = CallArrays();
    for (const auto& h : held_) req_.repoint(*h);
    for (const Output& o : req_.outputs) output_refs_.push_back(Napi::Persistent(static_cast<Napi::Object>(o.array)));
  }

 private:
  std::string Run() override { return req_.run(); }
  void Settle() override {
    for (const auto& h : held_) {
      if (!h->deliver()) {
        deferred().Reject(Napi::Error::New(Env(), "Expected the arrays written by the call (options.out, the head's centres) to stay "
                                                  "attached until it settles but one was transferred (detached); its results are lost").Value());
        return;
      }
    }
    // The handles stored at construction belonged to a closed scope: take
    // fresh ones from the persistent references.
    for (size_t k = 0; k < req_.outputs.size(); ++k) req_.outputs[k].array = output_refs_[k].Value().template As<Napi::TypedArray>();
    deferred().Resolve(result_of(Env(), req_));
  }

  R req_;
  std::vector<std::unique_ptr<Held>> held_;
  std::vector<Napi::ObjectReference> kept_;
  std::vector<Napi::ObjectReference> output_refs_;
};

template <class R>
Napi::Value call_async(Napi::Env env, const char* name, R r) {
  auto* worker = new CallWorker<R>(env, name, std::move(r));
  Napi::Promise promise = worker->promise();
  worker->Start();
  return promise;
}

}  // namespace ms::napi
