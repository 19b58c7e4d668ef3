// async_work.h — how the addon runs work off the JS thread without ever taking
// the process down: the state it keeps per Node environment (the main thread
// and each worker_threads Worker is one), and the base of every async call.
//
// A Worker can end at any moment: worker.terminate(), process.exit() inside
// it, or its last callback returning. Node then stops running JavaScript in
// that environment but still waits for the work it queued on the libuv pool,
// and calls each completion with JS disabled. node-addon-api's AsyncWorker
// turns the failed promise settlement into a C++ exception that leaves a C
// callback, and the C++ runtime calls std::terminate for the whole process.
// AsyncCall completes instead without throwing anything: it settles its
// promise where the environment still runs JS, and otherwise only frees what
// the call held (its copies of the caller's arrays, its pins on the addon's
// memory). Nothing here is process-wide: the state of one environment is
// that environment's instance data, released with it.
#pragma once

#include <napi.h>

#include <atomic>
#include <string>

namespace ms::napi {

// Per environment: registered by the module's Init, freed when the environment is.
struct EnvState {
  // Set by the environment's cleanup hook: no completion may call into JS after it.
  std::atomic<bool> closing{false};
  // Async calls queued and not yet completed in this environment.
  std::atomic<int64_t> in_flight{0};
};

// Creates the environment's state and its cleanup hook (called once, from Init).
void init_env_state(Napi::Env env);
// The environment's state; null before Init (never in practice).
EnvState* env_state(napi_env env);

// The base of every promise-returning call: Run() on the pool (it must not
// touch JS; it returns "" or the error message, and whatever it throws
// becomes that message), then Settle() on the JS thread resolves the promise.
// An error message, or whatever Settle() throws, rejects the promise where JS
// still runs, and is dropped where it does not; the object is deleted in
// every case.
class AsyncCall : public Napi::AsyncWorker {
 public:
  Napi::Promise promise() const { return deferred_.Promise(); }
  // Queues the work; counts it in the environment's in-flight calls.
  void Start();

 protected:
  AsyncCall(Napi::Env env, const char* name);
  ~AsyncCall() override;
  // On a pool thread.
  virtual std::string Run() = 0;
  // On the JS thread, JS alive, Run() succeeded: resolve or reject deferred().
  virtual void Settle() = 0;
  // The rejection for Run()'s error message (a plain Error by default).
  virtual Napi::Value Failure(Napi::Env env, const std::string& message) { return Napi::Error::New(env, message).Value(); }
  Napi::Promise::Deferred& deferred() { return deferred_; }

 private:
  void OnExecute(Napi::Env) override;
  void Execute() override {}
  void OnWorkComplete(Napi::Env env, napi_status status) override;

  Napi::Promise::Deferred deferred_;
  EnvState* state_;
  std::string error_;
};

}  // namespace ms::napi
