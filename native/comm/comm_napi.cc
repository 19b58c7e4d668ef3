// comm_napi.cc — the _comm* natives: typed arrays in, the engine's
// collectives (comm.h) run synchronously or on a libuv pool thread. lib/comm.ts
// validates lengths, types and ranks; here arrays are only unwrapped.
#include <napi.h>

#include <functional>
#include <vector>

#include "comm.h"

namespace ms::comm {
namespace {

struct View {
  void* data;
  size_t count;
  DType type;
};

View view_of(const Napi::Value& v) {
  const auto a = v.As<Napi::TypedArray>();
  DType t;
  switch (a.TypedArrayType()) {
    case napi_float32_array: t = DType::F32; break;
    case napi_float64_array: t = DType::F64; break;
    case napi_int32_array: t = DType::I32; break;
    default: throw Napi::TypeError::New(v.Env(), "Expected a Float32Array, Float64Array or Int32Array");
  }
  char* base = static_cast<char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  return {base, a.ElementLength(), t};
}

Napi::Error to_js(Napi::Env env, const CommError& e) {
  Napi::Error err = Napi::Error::New(env, e.message);
  err.Set("code", "ERR_MARGIN_SOFTMAX_COMM");
  err.Set("kind", e.kind);
  return err;
}

// A collective on the libuv pool; the arrays it reads and writes are held by
// persistent references until it settles.
class CommWorker : public Napi::AsyncWorker {
 public:
  CommWorker(Napi::Env env, std::function<void()> job, const std::vector<Napi::Value>& keep)
      : Napi::AsyncWorker(env, "margin-softmax:comm"), deferred_(Napi::Promise::Deferred::New(env)), job_(std::move(job)) {
    for (const auto& v : keep) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      job_();
    } catch (const CommError& e) {
      failed_ = true;
      error_ = e;
    }
  }
  void OnOK() override {
    if (failed_) {
      deferred_.Reject(to_js(Env(), error_).Value());
    } else {
      deferred_.Resolve(Env().Undefined());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> job_;
  std::vector<Napi::ObjectReference> keep_;
  bool failed_ = false;
  CommError error_;
};

// Runs `job` now (returns undefined) or on the pool (returns a promise).
Napi::Value dispatch(Napi::Env env, bool async, std::function<void()> job, const std::vector<Napi::Value>& keep) {
  if (!async) {
    try {
      job();
    } catch (const CommError& e) {
      throw to_js(env, e);
    }
    return env.Undefined();
  }
  auto* w = new CommWorker(env, std::move(job), keep);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  const EngineInfo e = engine_info();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("compiled", e.compiled);
  if (e.compiled) {
    o.Set("engine", e.engine);
    o.Set("library", e.library);
    o.Set("initialized", e.initialized);
  } else {
    o.Set("reason", e.reason);
  }
  return o;
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  int rank = 0, size = 1;
  try {
    init(info[0].As<Napi::Number>().DoubleValue(), &rank, &size);
  } catch (const CommError& e) {
    throw to_js(info.Env(), e);
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("rank", rank);
  o.Set("size", size);
  return o;
}

Napi::Value SetTimeout(const Napi::CallbackInfo& info) {
  const double s = info[0].As<Napi::Number>().DoubleValue();
  return dispatch(info.Env(), false, [s] { set_timeout(s); }, {});
}

Napi::Value AllGather(const Napi::CallbackInfo& info) {
  const View send = view_of(info[0]);
  const View recv = view_of(info[1]);
  const bool async = info[2].ToBoolean();
  return dispatch(info.Env(), async, [send, recv] { all_gather(send.data, recv.data, send.count, send.type); },
                  {info[0], info[1]});
}

Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  const View buf = view_of(info[0]);
  const bool async = info[1].ToBoolean();
  return dispatch(info.Env(), async, [buf] { all_reduce_sum(buf.data, buf.count, buf.type); }, {info[0]});
}

Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  const View buf = view_of(info[0]);
  const int root = info[1].As<Napi::Number>().Int32Value();
  const bool async = info[2].ToBoolean();
  return dispatch(info.Env(), async, [buf, root] { broadcast(buf.data, buf.count, buf.type, root); }, {info[0]});
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  return dispatch(info.Env(), info[0].ToBoolean(), [] { barrier(); }, {});
}

Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  shutdown(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

}  // namespace

void register_natives(Napi::Env env, Napi::Object exports) {
  exports.Set("_commInfo", Napi::Function::New(env, Info));
  exports.Set("_commInit", Napi::Function::New(env, Init));
  exports.Set("_commSetTimeout", Napi::Function::New(env, SetTimeout));
  exports.Set("_commAllGather", Napi::Function::New(env, AllGather));
  exports.Set("_commAllReduce", Napi::Function::New(env, AllReduce));
  exports.Set("_commBroadcast", Napi::Function::New(env, Broadcast));
  exports.Set("_commBarrier", Napi::Function::New(env, Barrier));
  exports.Set("_commShutdown", Napi::Function::New(env, Shutdown));
}

}  // namespace ms::comm
