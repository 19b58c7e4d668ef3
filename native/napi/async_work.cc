// async_work.cc — see async_work.h.
#include "async_work.h"

namespace ms::napi {

void init_env_state(Napi::Env env) {
  auto* state = new EnvState();
  // The finalizer runs when the environment is torn down, after its cleanup hooks.
  napi_status s = napi_set_instance_data(
      env, state, [](napi_env, void* data, void*) { delete static_cast<EnvState*>(data); }, nullptr);
  if (s != napi_ok) {
    delete state;
    throw Napi::Error::New(env, "Internal error: could not register the addon's per-environment state");
  }
  napi_add_env_cleanup_hook(
      env, [](void* data) { static_cast<EnvState*>(data)->closing.store(true); }, state);
}

EnvState* env_state(napi_env env) {
  void* data = nullptr;
  if (napi_get_instance_data(env, &data) != napi_ok) return nullptr;
  return static_cast<EnvState*>(data);
}

AsyncCall::AsyncCall(Napi::Env env, const char* name)
    : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), state_(env_state(env)) {}

AsyncCall::~AsyncCall() = default;

void AsyncCall::Start() {
  Queue();
  if (state_) state_->in_flight.fetch_add(1);
}

void AsyncCall::OnExecute(Napi::Env) {
  try {
    error_ = Run();
  } catch (const std::exception& e) {
    error_ = std::string("Internal error: ") + e.what();
  } catch (...) {
    error_ = "Internal error: an unknown exception in a native call";
  }
}

// Never throws: it is called from a C callback of Node's.
void AsyncCall::OnWorkComplete(Napi::Env env, napi_status status) {
  const bool alive = status != napi_cancelled && !(state_ && state_->closing.load());
  if (alive) {
    try {
      Napi::HandleScope scope(env);
      try {
        if (error_.empty())
          Settle();
        else
          deferred_.Reject(Failure(env, error_));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      }
    } catch (...) {
      // JS is disabled in this environment (it is shutting down): nobody is
      // left to receive the result. Clear what a failed call may have left pending.
      napi_value pending;
      bool is_pending = false;
      if (napi_is_exception_pending(env, &is_pending) == napi_ok && is_pending) napi_get_and_clear_last_exception(env, &pending);
    }
  }
  if (state_) state_->in_flight.fetch_sub(1);
  Destroy();  // deletes this: the held arrays and pins are released in every case
}

}  // namespace ms::napi
