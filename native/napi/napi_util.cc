// napi_util.cc — see napi_util.h.
#include "napi_util.h"

#include <cstring>
#include <map>
#include <mutex>

namespace ms::napi {

// ---- Errors -------------------------------------------------------------------

void arg_error(Napi::Env env, const std::string& expected, const std::string& what, const std::string& got) {
  throw Napi::Error::New(env, "Expected " + expected + " for " + what + " but received " + got);
}

std::string oom_message(size_t bytes, const std::string& what) {
  return "Out of memory: could not allocate " + std::to_string(bytes) + " bytes for " + what;
}

// ---- Arguments and options ------------------------------------------------------

namespace {

template <class A>
A typed_arg(Napi::Env env, const Napi::Value& v, napi_typedarray_type type, const char* type_name, const std::string& what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) arg_error(env, type_name, what, "another value");
  A a = v.As<A>();
  if (a.ArrayBuffer().IsDetached()) arg_error(env, std::string(type_name) + " with an attached buffer", what, "a detached ArrayBuffer");
  return a;
}

bool absent(const Napi::Value& v) { return v.IsUndefined() || v.IsNull(); }

}  // namespace

Napi::Float32Array f32_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  return typed_arg<Napi::Float32Array>(env, v, napi_float32_array, "Float32Array", what);
}

Napi::Int32Array i32_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  return typed_arg<Napi::Int32Array>(env, v, napi_int32_array, "Int32Array", what);
}

Napi::Uint16Array u16_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  return typed_arg<Napi::Uint16Array>(env, v, napi_uint16_array, "Uint16Array", what);
}

CentresArg centres_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  CentresArg c;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array) {
    auto a = u16_arg(env, v, what);
    c.array = a;
    c.bf16 = a.Data();
  } else {
    auto a = f32_arg(env, v, what);
    c.array = a;
    c.f32 = a.Data();
  }
  return c;
}

void expect_length(Napi::Env env, const Napi::TypedArray& a, size_t n, const std::string& what) {
  if (a.ElementLength() != n) {
    arg_error(env, "an array of length " + std::to_string(n), what, "an array of length " + std::to_string(a.ElementLength()));
  }
}

int64_t count_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) arg_error(env, "a non-negative safe integer", what, "another value");
  return (int64_t)d;
}

Napi::Object object_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsObject()) arg_error(env, "an options object", what, "another value");
  return v.As<Napi::Object>();
}

double num(const Napi::Object& o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

bool flag(const Napi::Object& o, const char* key) { return o.Get(key).ToBoolean().Value(); }

Napi::Float32Array opt_f32(Napi::Env env, const Napi::Object& o, const char* key, const std::string& prefix) {
  Napi::Value v = o.Get(key);
  return absent(v) ? Napi::Float32Array() : f32_arg(env, v, prefix + key);
}

Napi::Int32Array opt_i32(Napi::Env env, const Napi::Object& o, const char* key, const std::string& prefix) {
  Napi::Value v = o.Get(key);
  return absent(v) ? Napi::Int32Array() : i32_arg(env, v, prefix + key);
}

MarginParams margin_of(const Napi::Object& o) {
  MarginParams m;
  m.kind = (MarginKind)(int)num(o, "kind", 0);
  m.scale = (float)num(o, "scale", kDefaultScale);
  m.m1 = (float)num(o, "m1", 0.0);
  m.m2 = (float)num(o, "m2", 0.0);
  m.m3 = (float)num(o, "m3", 0.0);
  m.fallback = flag(o, "fallback");
  return m;
}

void set_loss_scalars(Napi::Object& res, const LossOutputs& out) {
  res.Set("loss", out.loss);
  res.Set("validRows", (double)out.valid_rows);
  res.Set("skippedBlocks", (double)out.skipped_blocks);
  res.Set("totalBlocks", (double)out.total_blocks);
}

// ---- Typed arrays the addon allocates --------------------------------------------

struct Block {
  void* data;
  size_t bytes;
  int refs;  // guarded by g_blocks_mutex
};

namespace {

// Never destroyed: a pool thread may release a block while the process exits
// (process.exit() with an async call in flight), after static destructors ran.
std::mutex& g_blocks_mutex = *new std::mutex();
std::map<uintptr_t, Block*>& g_blocks = *new std::map<uintptr_t, Block*>();  // by start address

// V8's limit on a typed array's length on 64-bit platforms (v8::TypedArray::kMaxLength).
constexpr size_t kMaxTypedLength = size_t(1) << 32;

Block* new_block(Napi::Env env, size_t bytes, const std::string& what, Fill fill) {
  Block* block = nullptr;
  try {
    block = new Block{big_alloc(bytes, fill), bytes, 1};
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(env, oom_message(bytes, what));
  }
  std::lock_guard<std::mutex> lock(g_blocks_mutex);
  g_blocks[reinterpret_cast<uintptr_t>(block->data)] = block;
  return block;
}

template <class A, class T>
A new_typed(Napi::Env env, size_t n, const std::string& what, Fill fill) {
  if (n > kMaxTypedLength) {
    throw Napi::Error::New(env, oom_message(n * sizeof(T), what) + " (" + std::to_string(n) + " elements; a typed array holds at most " +
                                    std::to_string(kMaxTypedLength) + ")");
  }
  const size_t bytes = n * sizeof(T);
  if (bytes < kBigAllocThreshold) return A::New(env, n);
  Block* block = new_block(env, bytes, what, fill);
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, block->data, bytes, [block, bytes](Napi::Env e, void*) {
    block_release(block);
    Napi::MemoryManagement::AdjustExternalMemory(e, -(int64_t)bytes);
  });
  Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)bytes);
  return A::New(env, n, buf, 0);
}

}  // namespace

Napi::Float32Array new_f32(Napi::Env env, size_t n, const std::string& what, Fill fill) {
  return new_typed<Napi::Float32Array, float>(env, n, what, fill);
}

Napi::Int32Array new_i32(Napi::Env env, size_t n, const std::string& what) {
  return new_typed<Napi::Int32Array, int32_t>(env, n, what, Fill::zero);
}

Napi::Uint16Array new_u16(Napi::Env env, size_t n, const std::string& what) {
  return new_typed<Napi::Uint16Array, uint16_t>(env, n, what, Fill::zero);
}

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

Block* block_acquire(uintptr_t lo, uintptr_t hi) {
  std::lock_guard<std::mutex> lock(g_blocks_mutex);
  auto it = g_blocks.upper_bound(lo);
  if (it == g_blocks.begin()) return nullptr;
  Block* b = std::prev(it)->second;
  if (hi > reinterpret_cast<uintptr_t>(b->data) + b->bytes) return nullptr;
  ++b->refs;
  return b;
}

// ---- Holding the caller's arrays -------------------------------------------------

Held::Held(const Napi::TypedArray& a, bool output) : ref_(Napi::Persistent(static_cast<Napi::Object>(a))), output_(output) {
  orig_ = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  bytes_ = a.ByteLength();
  const uintptr_t lo = reinterpret_cast<uintptr_t>(orig_);
  block_ = block_acquire(lo, lo + bytes_);
  if (block_ == nullptr && bytes_ > 0) {
    copy_ = static_cast<uint8_t*>(big_alloc(bytes_, Fill::any));  // AllocFailure → NativeError via guarded()
    // Outputs too: the fused SGD updates W and the momentum in place.
    std::memcpy(copy_, orig_, bytes_);
  }
}

Held::~Held() {
  if (block_) block_release(block_);
  if (copy_) big_free(copy_, bytes_);
}

bool Held::deliver() {
  if (!output_ || !copy_) return true;
  Napi::TypedArray a = ref_.Value().As<Napi::TypedArray>();
  if (a.ArrayBuffer().IsDetached()) return false;
  std::memcpy(orig_, copy_, bytes_);
  return true;
}

CallArrays::Span CallArrays::span_of(const std::string& name, const Napi::TypedArray& a) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
  return {name, lo, lo + a.ByteLength()};
}

void CallArrays::read(const std::string& name, const Napi::TypedArray& a, bool written) {
  inputs_.push_back(span_of(name, a));
  arrays_.push_back({a, written});
}

void CallArrays::write(const std::string& name, const Napi::TypedArray& a) {
  outputs_.push_back(span_of(name, a));
  arrays_.push_back({a, true});
}

void CallArrays::check_no_overlap(Napi::Env env) const {
  auto overlaps = [](const Span& a, const Span& b) { return a.lo < b.hi && b.lo < a.hi; };
  auto refuse = [&](const Span& out, const Span& other) {
    arg_error(env, "an array that does not overlap " + other.name, out.name, "one that shares memory with it");
  };
  for (size_t i = 0; i < outputs_.size(); ++i) {
    for (const Span& in : inputs_)
      if (overlaps(outputs_[i], in)) refuse(outputs_[i], in);
    for (size_t j = 0; j < i; ++j)
      if (overlaps(outputs_[i], outputs_[j])) refuse(outputs_[i], outputs_[j]);
  }
}

std::vector<std::unique_ptr<Held>> CallArrays::hold() const {
  std::vector<std::unique_ptr<Held>> held;
  for (const auto& [a, written] : arrays_) held.push_back(std::make_unique<Held>(a, written));
  return held;
}

std::vector<Napi::ObjectReference> CallArrays::keep_alive() const {
  std::vector<Napi::ObjectReference> refs;
  for (const Napi::Object& o : kept_) refs.push_back(Napi::Persistent(o));
  return refs;
}

const float* per_row_input(Napi::Env env, const Napi::Object& o, const char* key, int64_t n, CallArrays& arrays) {
  auto a = opt_f32(env, o, key);
  if (a.IsEmpty()) return nullptr;
  expect_length(env, a, (size_t)n, std::string("options.") + key);
  arrays.read(key, a);
  return a.Data();
}

}  // namespace ms::napi
