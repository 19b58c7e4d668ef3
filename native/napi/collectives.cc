// collectives.cc — the _comm* natives: typed arrays in, the engine's collectives
// (comm/comm.h) run synchronously or on a libuv pool thread. lib/sharded/comm.ts
// validates lengths, types and ranks; here arrays are only unwrapped. No
// options objects; errors are CommErrors (code ERR_MARGIN_SOFTMAX_COMM).
//
//   _commInfo() → { compiled, engine?, library?, initialized?, reason? }
//   _commInit(timeoutSeconds) → { rank, size }
//   _commSetTimeout(seconds)
//   _commAllGather(send, recv, async) / _commAllReduce(buf, async) /
//   _commBroadcast(buf, root, async) / _commBarrier(async) → undefined, or a promise when async
//   _commShutdown(code)
#include <napi.h>

#include <functional>
#include <vector>

#include "../comm/comm.h"
#include "async_work.h"
#include "exports.h"

namespace ms::napi {
namespace {

using namespace ms::comm;

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
// persistent references until it completes (async_work.h).
class CommWorker : public AsyncCall {
 public:
  CommWorker(Napi::Env env, std::function<void()> job, const std::vector<Napi::Value>& keep)
      : AsyncCall(env, "margin-softmax:comm"), job_(std::move(job)) {
    for (const auto& v : keep) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }

 private:
  std::string Run() override {
    try {
      job_();
    } catch (const CommError& e) {
      failed_ = true;
      error_ = e;
    }
    return "";
  }
  void Settle() override {
    if (failed_) {
      deferred().Reject(to_js(Env(), error_).Value());
    } else {
      deferred().Resolve(Env().Undefined());
    }
  }

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
  w->Start();
  return p;
}

}  // namespace

Napi::Value CommInfo(const Napi::CallbackInfo& info) {
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

Napi::Value CommInit(const Napi::CallbackInfo& info) {
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

Napi::Value CommSetTimeout(const Napi::CallbackInfo& info) {
  const double s = info[0].As<Napi::Number>().DoubleValue();
  return dispatch(info.Env(), false, [s] { set_timeout(s); }, {});
}

Napi::Value CommAllGather(const Napi::CallbackInfo& info) {
  const View send = view_of(info[0]);
  const View recv = view_of(info[1]);
  const bool async = info[2].ToBoolean();
  return dispatch(info.Env(), async, [send, recv] { all_gather(send.data, recv.data, send.count, send.type); },
                  {info[0], info[1]});
}

Napi::Value CommAllReduce(const Napi::CallbackInfo& info) {
  const View buf = view_of(info[0]);
  const bool async = info[1].ToBoolean();
  return dispatch(info.Env(), async, [buf] { all_reduce_sum(buf.data, buf.count, buf.type); }, {info[0]});
}

Napi::Value CommBroadcast(const Napi::CallbackInfo& info) {
  const View buf = view_of(info[0]);
  const int root = info[1].As<Napi::Number>().Int32Value();
  const bool async = info[2].ToBoolean();
  return dispatch(info.Env(), async, [buf, root] { broadcast(buf.data, buf.count, buf.type, root); }, {info[0]});
}

Napi::Value CommBarrier(const Napi::CallbackInfo& info) {
  return dispatch(info.Env(), info[0].ToBoolean(), [] { barrier(); }, {});
}

Napi::Value CommShutdown(const Napi::CallbackInfo& info) {
  shutdown(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

}  // namespace ms::napi
