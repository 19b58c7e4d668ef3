// loss.cc — the fused loss on the host arrays: loss (synchronous) and
// lossAsync (libuv pool, returns a promise), on the CPU or the CUDA backend.
//
//   loss(embeddings, weights, labels, dim, opts, withGrad) → NativeLossResult (lib/native.ts)
//   weights: a Float32Array, or a Uint16Array of bf16 values (MarginHead's bf16
//   centres on the CPU; implies weightsBf16)
//
// opts (NativeLossOptions), read here:
//   margin: kind, scale, m1, m2, m3, fallback; rowMargins?   (margin_of)
//   gradFilter, weightsBf16, backend: 'cpu' | 'cuda'
//   CPU: threads, workspaceBytes, simd, matrix
//   MarginHead: classIndex?, lseIn?, targetPm1In?, validRows, stats,
//               sgd? { lr, momentum, weightDecay, momentumBuffer?,   (fused update of the weights, in place)
//                      roundSeed?, roundStep?, rowOffset? }           (bf16 weights: the stochastic rounding's key)
//   outPerSample?, outGradEmbeddings?, outGradWeights?  (the caller's output arrays)
#include <limits>

#include "../cpu/loss_cpu.h"
#include "../cpu/sgd_cpu.h"
#include "../cuda/loss_cuda.h"
#include "exports.h"
#include "napi_util.h"

namespace ms::napi {
namespace {

struct LossCall {
  LossProblem problem;
  CpuOptions cpu;
  bool use_cuda = false;
  bool with_grad = false;
  bool with_stats = false;
  CpuSgd sgd;  // sgd.w null: no fused update
  LossOutputs out;
  CallArrays arrays;
  std::vector<Output> outputs;

  void repoint(const Held& h) {
    LossProblem& p = problem;
    napi::repoint(p.x, h), napi::repoint(p.w, h), napi::repoint(p.w_bf16, h), napi::repoint(p.labels, h);
    napi::repoint(p.row_margins, h);
    napi::repoint(p.class_index, h), napi::repoint(p.lse_in, h), napi::repoint(p.target_pm1_in, h);
    napi::repoint(sgd.w, h), napi::repoint(sgd.w_bf16, h), napi::repoint(sgd.buf, h), napi::repoint(sgd.class_index, h);
    napi::repoint(out.per_sample, h), napi::repoint(out.grad_x, h), napi::repoint(out.grad_w, h);
  }

  std::string run() {
    // The update hook points at this request's own CpuSgd, so it is bound
    // only here, where the request sits while it runs (requests are moved).
    if (sgd.on()) problem.block_update = sgd_block_update(&sgd);
    const LossProblem& p = problem;
    const std::string workspace =
        "the native workspace of N=" + std::to_string(p.n) + ", C=" + std::to_string(p.c) + ", d=" + std::to_string(p.d);
    return run_caught([&] { use_cuda ? cuda_loss(p, out) : cpu_loss(p, out, cpu); }, workspace);
  }

  void set_scalars(Napi::Object& res) const { set_loss_scalars(res, out); }
};

// ---- Building the call (on the JS thread), step by step -----------------------

// X (N×d), W (C×d: fp32, or bf16 storage) and the labels: their lengths checked against each other.
void read_problem(Napi::Env env, const Napi::CallbackInfo& info, bool weights_written, LossCall& r) {
  auto x = f32_arg(env, info[0], "embeddings");
  const CentresArg centres = centres_arg(env, info[1], "weights");
  const Napi::TypedArray& w = centres.array;
  auto labels = i32_arg(env, info[2], "labels");
  const int64_t d = count_arg(env, info[3], "dim");
  if (d < 1) arg_error(env, "a positive integer", "dim", "0");
  LossProblem& p = r.problem;
  p.n = (int64_t)labels.ElementLength();
  if (p.n > 0 && d > std::numeric_limits<int64_t>::max() / p.n) arg_error(env, "a dim whose product with labels.length fits in 64 bits", "dim", std::to_string(d));
  expect_length(env, x, (size_t)(p.n * d), "embeddings (labels.length × dim)");
  if (w.ElementLength() == 0 || w.ElementLength() % (size_t)d != 0) {
    arg_error(env, "a non-empty array whose length is a multiple of dim = " + std::to_string(d), "weights",
              "an array of length " + std::to_string(w.ElementLength()));
  }
  p.x = x.Data(), p.labels = labels.Data();
  p.w = centres.f32, p.w_bf16 = centres.bf16;
  p.d = d;
  p.c = (int64_t)(w.ElementLength() / (size_t)d);
  r.arrays.read("embeddings", x);
  r.arrays.read("weights", w, weights_written);  // the fused update writes W in place
  r.arrays.read("labels", labels);
}

// MarginHead's class subset: problem class j is row classIndex[j] of W.
void read_class_index(Napi::Env env, const Napi::Object& o, LossCall& r) {
  auto ci = opt_i32(env, o, "classIndex");
  if (ci.IsEmpty()) return;
  LossProblem& p = r.problem;
  const int64_t w_rows = p.c;
  const int32_t* idx = ci.Data();
  for (size_t j = 0; j < ci.ElementLength(); ++j)
    if (idx[j] < 0 || idx[j] >= w_rows) arg_error(env, "class indices in [0, " + std::to_string(w_rows) + ")", "options.classIndex", std::to_string(idx[j]));
  p.class_index = idx;
  p.c = (int64_t)ci.ElementLength();
  r.arrays.read("classIndex", ci);
}

// Labels index rows of W (of the class subset): checked against the count
// read here (−1 ignores a row; −2, in a shard, marks another shard's class).
void check_labels(Napi::Env env, const LossProblem& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const int32_t y = p.labels[i];
    if (y < -2 || y >= p.c) arg_error(env, "labels in [-1, " + std::to_string(p.c - 1) + "]", "labels[" + std::to_string(i) + "]", std::to_string(y));
  }
}

// The fused SGD update of W (options.sgd, with the gradient only).
void read_sgd(Napi::Env env, const Napi::Object& so, const Napi::TypedArray& w, LossCall& r) {
  r.sgd.lr = (float)num(so, "lr", 0.0);
  r.sgd.momentum = (float)num(so, "momentum", 0.0);
  r.sgd.weight_decay = (float)num(so, "weightDecay", 0.0);
  // The head owns W: updated in place (read_problem registered it as written).
  r.sgd.w = const_cast<float*>(r.problem.w);
  r.sgd.w_bf16 = const_cast<uint16_t*>(r.problem.w_bf16);
  r.sgd.round_key = stochastic_round_key((uint64_t)num(so, "roundSeed", 0.0), (uint64_t)num(so, "roundStep", 0.0));
  r.sgd.row_offset = (int64_t)num(so, "rowOffset", 0.0);
  r.sgd.class_index = r.problem.class_index;
  r.sgd.d = r.problem.d;
  auto mb = opt_f32(env, so, "momentumBuffer", "options.sgd.");
  if (!mb.IsEmpty() && r.sgd.momentum != 0.0f) {
    expect_length(env, mb, w.ElementLength(), "options.sgd.momentumBuffer");
    r.sgd.buf = mb.Data();
    r.arrays.write("options.sgd.momentumBuffer", mb);
  }
}

CpuOptions read_cpu_options(const Napi::Object& o) {
  CpuOptions c;
  c.threads = (int)num(o, "threads", 0);
  c.workspace_bytes = (size_t)num(o, "workspaceBytes", (double)kDefaultWorkspaceBytes);
  c.simd = (int)num(o, "simd", -1);
  c.matrix = (int)num(o, "matrix", -1);
  return c;
}

// An output: the caller's array options[key] (options.out, lengths checked in
// lib/loss.ts and again here) so that a training loop can reuse a 2 GB
// gradWeights instead of faulting in a fresh one every call, else a new one.
float* add_output(Napi::Env env, const Napi::Object& o, const char* key, const char* result_key, size_t n, LossCall& r) {
  const std::string name = std::string("options.out.") + result_key;
  Napi::Float32Array a = key ? opt_f32(env, o, key) : Napi::Float32Array();
  if (a.IsEmpty()) {
    a = new_f32(env, n, result_key, Fill::any);  // every kernel writes its outputs in full
  } else {
    expect_length(env, a, n, name);
    r.arrays.write(name, a);
  }
  r.outputs.push_back({result_key, a});
  return a.Data();
}

void add_outputs(Napi::Env env, const Napi::Object& o, LossCall& r) {
  const size_t n = (size_t)r.problem.n;
  LossOutputs& out = r.out;
  out.per_sample = add_output(env, o, "outPerSample", "perSample", n, r);
  out.row_target_cos = add_output(env, o, nullptr, "targetCos", n, r);  // always returned
  if (r.with_stats) {
    out.row_max = add_output(env, o, nullptr, "rowMax", n, r);
    out.row_sumexp = add_output(env, o, nullptr, "rowSumExp", n, r);
    out.row_sumexp_other = add_output(env, o, nullptr, "rowSumExpOther", n, r);
    out.row_target = add_output(env, o, nullptr, "rowTarget", n, r);
  }
  if (r.with_grad) {
    out.grad_x = add_output(env, o, "outGradEmbeddings", "gradEmbeddings", n * (size_t)r.problem.d, r);
    if (!r.sgd.on()) out.grad_w = add_output(env, o, "outGradWeights", "gradWeights", (size_t)(r.problem.c * r.problem.d), r);
  }
}

LossCall make_request(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Object o = object_arg(env, info[4], "options");
  LossCall r;
  r.with_grad = info[5].ToBoolean().Value();
  const Napi::Value sgd = o.Get("sgd");
  const bool fused_update = r.with_grad && sgd.IsObject();
  read_problem(env, info, fused_update, r);
  LossProblem& p = r.problem;
  p.margin = margin_of(o);
  p.grad_filter = (float)num(o, "gradFilter", 0.0);
  p.weights_bf16 = flag(o, "weightsBf16") || p.w_bf16 != nullptr;
  p.row_margins = per_row_input(env, o, "rowMargins", p.n, r.arrays);
  read_class_index(env, o, r);
  check_labels(env, p);
  p.lse_in = per_row_input(env, o, "lseIn", p.n, r.arrays);
  p.target_pm1_in = per_row_input(env, o, "targetPm1In", p.n, r.arrays);
  p.valid_rows = (int64_t)num(o, "validRows", 0);
  r.with_stats = flag(o, "stats");
  if (fused_update) read_sgd(env, sgd.As<Napi::Object>(), info[1].As<Napi::TypedArray>(), r);
  r.cpu = read_cpu_options(o);
  r.use_cuda = o.Get("backend").ToString().Utf8Value() == "cuda";
  if (r.use_cuda && p.w_bf16) arg_error(env, "a Float32Array (bf16 storage runs on the CPU backend)", "weights", "a Uint16Array");
  add_outputs(env, o, r);
  // Under the fused update W is written too; the outputs are checked against it as an input.
  r.arrays.check_no_overlap(env);
  return r;
}

}  // namespace

Napi::Value LossSync(const Napi::CallbackInfo& info) { return call_sync(info.Env(), make_request(info)); }

Napi::Value LossAsync(const Napi::CallbackInfo& info) { return call_async(info.Env(), "margin-softmax:loss", make_request(info)); }

}  // namespace ms::napi
