// cuda_selftest.cu — ms_cuda_selftest: the CUDA backend against the CPU
// backend, in C++ (no Node.js needed on the GPU machine). Not part of the
// addon: a program of its own, linked with the CUDA and CPU backends.
//
// Build and run:
//   cmake-js compile && cmake --build build --target ms_cuda_selftest && build/ms_cuda_selftest
//   scripts/check_gpu.sh (step selftest) builds it with nvcc alone;
//   test/gpu/emu/run.sh builds it against the CPU emulation of the kernels (no GPU).
//
//   ms_cuda_selftest            all cases (a minute or so on an H100, most of it the CPU oracle)
//   ms_cuda_selftest --small    three tiny cases (for compute-sanitizer memcheck / racecheck)
//   ms_cuda_selftest --emu      the moderate shapes used by the CPU emulation (test/gpu/emu/run.sh)
//   ms_cuda_selftest --json F   also write the per-case results to F
//
// Each case prints one line: name, shape, the measured errors and the
// tolerance; the exit status is the number of failed cases (capped at 100).
//
// Tolerances (see test/gpu/cuda-backend.test.ts for the same reasoning):
//   TF32 operands carry a relative rounding error u = 2⁻¹¹ ≈ 4.9e−4, so a
//   non-target cosine of unit vectors is off by ~u·√(2/3)/√d ≈ 1.7e−5 (d = 512)
//   to 5e−5 (d = 64), the logit by s·δc ≈ 1e−3…3e−3 at s = 64. The target
//   cosine is computed in fp64 outside the tile, so the margin sees no TF32
//   error. LSE averages the logit errors: per-row loss |Δ| ≲ 3e−3.
//   Gradients: g = (p − δ)·dz/V inherits δp/p = δz, and the dX̂/dŴ products
//   round G and the operands to TF32 again: ‖Δ‖/‖ref‖ ≈ 1e−3…4e−3.
//   BF16 path: X̂, W and G in bf16 (u = 2⁻⁹), the CPU reference rounds W only:
//   about 4× the TF32 errors.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../cpu/loss_cpu.h"  // cpu_loss, the reference the CUDA backend is compared with
#include "../cuda/loss_cuda.h"  // cuda_loss, cuda_usable, cuda_device_info

using namespace ms;

namespace {

struct Problem {
  int64_t n = 0, c = 0, d = 0;
  std::vector<float> x, w, row_m;
  std::vector<int32_t> labels;
};

Problem random_problem(int64_t n, int64_t c, int64_t d, uint32_t seed) {
  Problem p;
  p.n = n;
  p.c = c;
  p.d = d;
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> lab(0, c - 1);
  p.x.resize((size_t)(n * d));
  p.w.resize((size_t)(c * d));
  for (auto& v : p.x) v = g(rng);
  for (auto& v : p.w) v = g(rng);
  p.labels.resize((size_t)n);
  for (auto& y : p.labels) y = (int32_t)lab(rng);
  return p;
}

// Rows pulled towards their class centre: x_i = t·ŵ_y + noise, so p_target is
// large and most non-target probabilities are tiny (what gradient filtering skips).
void cluster(Problem& p, float t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t i = 0; i < p.n; ++i) {
    const int32_t y = p.labels[i];
    if (y < 0) continue;
    double nrm = 0;
    for (int64_t k = 0; k < p.d; ++k) nrm += (double)p.w[y * p.d + k] * p.w[y * p.d + k];
    nrm = std::sqrt(nrm);
    for (int64_t k = 0; k < p.d; ++k)
      p.x[i * p.d + k] = (float)(t * p.w[y * p.d + k] / nrm) + (1.0f - t) * g(rng) / std::sqrt((float)p.d);
  }
}

// Target cosines near ±1: x_i = ±w_y (exactly parallel) or a tiny perturbation of it.
void near_parallel(Problem& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const int32_t y = p.labels[i];
    const float sign = (i % 2 == 0) ? 1.0f : -1.0f;
    const float eps = (i % 4 < 2) ? 0.0f : 1e-3f;
    for (int64_t k = 0; k < p.d; ++k)
      p.x[i * p.d + k] = sign * p.w[y * p.d + k] * 1.7f + (k == 0 ? eps : 0.0f);
  }
}

struct Outputs {
  std::vector<float> per_sample, gx, gw;
  LossOutputs o;
};

Outputs alloc_out(const Problem& p, bool grad) {
  Outputs r;
  r.per_sample.assign((size_t)p.n, 0.0f);
  r.o.per_sample = r.per_sample.data();
  if (grad) {
    r.gx.assign((size_t)(p.n * p.d), 0.0f);
    r.gw.assign((size_t)(p.c * p.d), 0.0f);
    r.o.grad_x = r.gx.data();
    r.o.grad_w = r.gw.data();
  }
  return r;
}

LossProblem make_lp(const Problem& p, MarginParams m, float filter, bool bf16) {
  LossProblem lp;
  lp.x = p.x.data();
  lp.w = p.w.data();
  lp.labels = p.labels.data();
  lp.row_margins = p.row_m.empty() ? nullptr : p.row_m.data();
  lp.n = p.n;
  lp.c = p.c;
  lp.d = p.d;
  lp.margin = m;
  lp.grad_filter = filter;
  lp.weights_bf16 = bf16;
  return lp;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float v : a) m = std::fmax(m, std::fabs((double)v));
  return m;
}
// max_k |a_k − b_k| / max_k |b_k| (0 when both are all zero)
double rel_max(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (size_t k = 0; k < a.size(); ++k) e = std::fmax(e, std::fabs((double)a[k] - (double)b[k]));
  const double m = max_abs(b);
  return m > 0 ? e / m : e;
}
// ‖a − b‖₂ / ‖b‖₂
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0, n = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    const double t = (double)a[k] - (double)b[k];
    e += t * t;
    n += (double)b[k] * b[k];
  }
  return n > 0 ? std::sqrt(e / n) : std::sqrt(e);
}
bool all_finite(const std::vector<float>& a) {
  for (float v : a)
    if (!std::isfinite(v)) return false;
  return true;
}

MarginParams margin(MarginKind k, float m1, float m2, float m3, float s = 64.0f) {
  MarginParams m;
  m.kind = k;
  m.scale = s;
  m.m1 = m1;
  m.m2 = m2;
  m.m3 = m3;
  m.fallback = true;
  return m;
}

struct Named {
  const char* name;
  MarginParams m;
};
// Every kind with its typical parameters (margin_math.h's MS_MARGIN_KINDS), and
// after adaptive a strong θ-dependent adaptive term. Order: the table's.
std::vector<Named> all_kinds() {
  std::vector<Named> kinds;
#define MS_TYPICAL_KIND(E, code, js, angular, row_margin, p1, p2, p3, m1, m2, m3) \
  kinds.push_back({js, margin(MarginKind::E, m1, m2, m3)});           \
  if (MarginKind::E == MarginKind::Adaptive) kinds.push_back({"adaptive-big", margin(MarginKind::Adaptive, 0.2f, 0.3f, 0)});
  MS_MARGIN_KINDS(MS_TYPICAL_KIND)
#undef MS_TYPICAL_KIND
  return kinds;
}

int failures = 0;
FILE* json = nullptr;
bool first_json = true;

struct Tol {
  double loss;      // per-row |Δ| ≤ loss·max(1, |ref|)
  double grad_l2;   // ‖Δ‖/‖ref‖
  double grad_max;  // max|Δ| / max|ref|
};
const Tol kTf32{3e-3, 6e-3, 2e-2};
const Tol kBf16{1.5e-2, 3e-2, 8e-2};

void report(const std::string& name, const Problem& p, bool ok, double loss_err, double gx_l2, double gx_max,
            double gw_l2, double gw_max, const Tol& tol, const std::string& extra) {
  std::printf("%-4s %-44s N=%-4lld C=%-7lld d=%-4lld loss %.2e  dX %.2e/%.2e  dW %.2e/%.2e  (tol %.0e, %.0e/%.0e) %s\n",
              ok ? "ok" : "FAIL", name.c_str(), (long long)p.n, (long long)p.c, (long long)p.d, loss_err, gx_l2,
              gx_max, gw_l2, gw_max, tol.loss, tol.grad_l2, tol.grad_max, extra.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
  if (json) {
    std::fprintf(json,
                 "%s{\"name\":\"%s\",\"n\":%lld,\"c\":%lld,\"d\":%lld,\"ok\":%s,\"loss_err\":%.3e,\"dx_l2\":%.3e,"
                 "\"dx_max\":%.3e,\"dw_l2\":%.3e,\"dw_max\":%.3e}",
                 first_json ? "" : ",\n", name.c_str(), (long long)p.n, (long long)p.c, (long long)p.d,
                 ok ? "true" : "false", loss_err, gx_l2, gx_max, gw_l2, gw_max);
    first_json = false;
  }
}

// Runs both backends and compares. `filter` applies to the CUDA run only when
// filter_cpu is false (the CPU then gives the exact gradients).
void compare(const std::string& name, const Problem& p, MarginParams m, bool bf16, float filter, const Tol& tol,
             bool filter_cpu = true, bool expect_skips = false) {
  Outputs ref = alloc_out(p, true), got = alloc_out(p, true), again = alloc_out(p, true);
  CpuOptions co;
  try {
    cpu_loss(make_lp(p, m, filter_cpu ? filter : 0.0f, bf16), ref.o, co);
    cuda_loss(make_lp(p, m, filter, bf16), got.o);
    cuda_loss(make_lp(p, m, filter, bf16), again.o);
  } catch (const CudaError& e) {
    std::printf("FAIL %s: CudaError %s\n", name.c_str(), e.message.c_str());
    ++failures;
    return;
  } catch (const InputError& e) {
    std::printf("FAIL %s: InputError %s\n", name.c_str(), e.message.c_str());
    ++failures;
    return;
  }
  double loss_err = 0;
  for (int64_t i = 0; i < p.n; ++i)
    loss_err = std::fmax(loss_err, std::fabs((double)got.per_sample[i] - ref.per_sample[i]) /
                                       std::fmax(1.0, std::fabs((double)ref.per_sample[i])));
  loss_err = std::fmax(loss_err, std::fabs(got.o.loss - ref.o.loss) / std::fmax(1.0, std::fabs(ref.o.loss)));
  const double gx_l2 = rel_l2(got.gx, ref.gx), gx_max = rel_max(got.gx, ref.gx);
  const double gw_l2 = rel_l2(got.gw, ref.gw), gw_max = rel_max(got.gw, ref.gw);
  const bool finite = all_finite(got.per_sample) && all_finite(got.gx) && all_finite(got.gw) && std::isfinite(got.o.loss);
  const bool deterministic = got.per_sample == again.per_sample && got.gx == again.gx && got.gw == again.gw &&
                             got.o.loss == again.o.loss;
  bool ok = finite && deterministic && got.o.valid_rows == ref.o.valid_rows && loss_err <= tol.loss &&
            gx_l2 <= tol.grad_l2 && gx_max <= tol.grad_max && gw_l2 <= tol.grad_l2 && gw_max <= tol.grad_max;
  // Ignored rows: exactly zero loss and gradient.
  for (int64_t i = 0; i < p.n; ++i) {
    if (p.labels[i] >= 0) continue;
    if (got.per_sample[i] != 0.0f) ok = false;
    for (int64_t k = 0; k < p.d; ++k)
      if (got.gx[i * p.d + k] != 0.0f) ok = false;
  }
  if (expect_skips && got.o.skipped_blocks == 0) ok = false;
  std::string extra = std::string(finite ? "" : " NON-FINITE") + (deterministic ? "" : " NON-DETERMINISTIC") +
                      " skipped " + std::to_string(got.o.skipped_blocks) + "/" + std::to_string(got.o.total_blocks);
  report(name, p, ok, loss_err, gx_l2, gx_max, gw_l2, gw_max, tol, extra);
}

void with_row_margins(Problem& p, const MarginParams& m) {
  if (has_row_margin(m.kind)) {
    p.row_m.resize((size_t)p.n);
    for (int64_t i = 0; i < p.n; ++i) p.row_m[i] = elastic_margin(m.m2, 0.05f, 7, 3, (uint64_t)i);
  } else {
    p.row_m.clear();
  }
}

void expect_input_error(const std::string& name, const Problem& p, const std::string& want) {
  Outputs got = alloc_out(p, true);
  std::string msg;
  try {
    cuda_loss(make_lp(p, margin(MarginKind::Adaptive, 0.03f, 0.5f, 0), 0.0f, false), got.o);
  } catch (const InputError& e) {
    msg = e.message;
  } catch (const CudaError& e) {
    msg = "CudaError " + e.message;
  }
  const bool ok = msg == want;
  std::printf("%-4s %s: '%s'\n", ok ? "ok" : "FAIL", name.c_str(), msg.c_str());
  if (!ok) ++failures;
}

// ---- MarginHead's extras ----------------------------------------------------
// 45 rows against 300 of 900 classes (class_index, reversed), labels −2
// (counted, target in another shard) and −1, a global V of 60.
struct HeadCase {
  Problem full;                 // X and the 900 centres; labels index the subset
  std::vector<int32_t> index;   // problem class j is centre index[j]
  int64_t c = 0;                // classes of the problem (index.size())
  MarginParams m;
  bool bf16 = false;
};

HeadCase head_case(bool bf16) {
  HeadCase h;
  h.full = random_problem(45, 900, 80, 1000);
  for (int32_t j = 899; j >= 0; j -= 3) h.index.push_back(j);  // 300 classes, reversed
  h.c = (int64_t)h.index.size();
  for (int64_t i = 0; i < h.full.n; ++i)
    h.full.labels[i] = (int32_t)(i % 5 == 1 ? -2 : i % 7 == 3 ? -1 : (i * 37) % h.c);
  h.m = margin(MarginKind::Adaptive, 0.03f, 0.5f, 0);
  h.bf16 = bf16;
  return h;
}

// Everything one run of the head's problem returns, the hook's view included.
struct HeadRun {
  std::vector<float> ps, gx, gw, rmax, rsum, roth, rtgt, rcos, hooked;
  std::vector<int64_t> nulls;  // blocks the hook got as null (filtered)
  LossOutputs o;
};

// The head's problem with the merged inputs lse_in / target_pm1_in (or null)
// and, when `hook`, the per-block update hook writing into r.hooked.
LossProblem head_problem(const HeadCase& h, const float* lse_in, const float* target_pm1_in, bool hook, HeadRun& r) {
  LossProblem lp;
  lp.x = h.full.x.data();
  lp.w = h.full.w.data();
  lp.labels = h.full.labels.data();
  lp.n = h.full.n;
  lp.c = h.c;
  lp.d = h.full.d;
  lp.margin = h.m;
  lp.weights_bf16 = h.bf16;
  lp.class_index = h.index.data();
  lp.valid_rows = 60;
  lp.lse_in = lse_in;
  lp.target_pm1_in = target_pm1_in;
  if (hook) {
    r.hooked.assign((size_t)(h.c * h.full.d), -7.0f);
    lp.block_update = [&r, d = h.full.d](int64_t j0, int64_t count, const float* g) {
      if (!g) {
        r.nulls.push_back(j0);
        return;
      }
      std::memcpy(r.hooked.data() + j0 * d, g, sizeof(float) * count * d);
    };
  }
  return lp;
}

HeadRun run_head(const HeadCase& h, bool cuda, const float* lse_in, const float* target_pm1_in, bool hook) {
  const int64_t n = h.full.n;
  HeadRun r;
  r.ps.assign((size_t)n, 0);
  r.gx.assign((size_t)(n * h.full.d), 0);
  r.gw.assign((size_t)(h.c * h.full.d), 0);
  for (auto* v : {&r.rmax, &r.rsum, &r.roth, &r.rtgt, &r.rcos}) v->assign((size_t)n, 0);
  r.o.per_sample = r.ps.data();
  r.o.grad_x = r.gx.data();
  r.o.grad_w = hook ? nullptr : r.gw.data();
  r.o.row_max = r.rmax.data();
  r.o.row_sumexp = r.rsum.data();
  r.o.row_sumexp_other = r.roth.data();
  r.o.row_target = r.rtgt.data();
  r.o.row_target_cos = r.rcos.data();
  LossProblem lp = head_problem(h, lse_in, target_pm1_in, hook, r);
  if (cuda) {
    cuda_loss(lp, r.o);
  } else {
    CpuOptions co;
    cpu_loss(lp, r.o, co);
  }
  return r;
}

// The LSE and p_y − 1 a run's own row statistics give: as merged inputs they
// must reproduce that run.
void own_merged_inputs(const HeadRun& got, const std::vector<int32_t>& labels, std::vector<float>& lse_own,
                       std::vector<float>& target_pm1_own) {
  const size_t n = labels.size();
  lse_own.assign(n, 0.0f);
  target_pm1_own.assign(n, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const LseState a{got.rmax[i], got.rsum[i], got.roth[i]};
    lse_own[i] = lse_value(a);
    if (labels[i] >= 0) target_pm1_own[i] = target_terms(a, got.rtgt[i]).pt_minus_1;
  }
}

// The largest error of the partial row statistics (target logit and cosine,
// the LSE with and without the target), in logit units / 64; 1 where a row's
// target is not where it should be.
double head_stat_error(const HeadRun& got, const HeadRun& ref, const std::vector<int32_t>& labels) {
  double e = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const bool tgt = labels[i] >= 0;
    if (tgt != std::isfinite(got.rtgt[i])) e = 1;
    if (tgt) e = std::fmax(e, std::fabs(got.rtgt[i] - ref.rtgt[i]) / 64.0);
    // cos θ_y: fp64 dot on the device, fp32 on the CPU (|Δ| ≲ d·2⁻²⁴).
    if (tgt != std::isfinite(got.rcos[i])) e = 1;
    if (tgt) e = std::fmax(e, std::fabs((double)got.rcos[i] - ref.rcos[i]));
    // Compare the states as LSE values (m and l are only defined up to a common factor).
    const double a = got.rmax[i] + std::log((double)got.rsum[i]), b = ref.rmax[i] + std::log((double)ref.rsum[i]);
    e = std::fmax(e, std::fabs(a - b) / 64.0);
    const double ao = got.rmax[i] + std::log((double)got.roth[i]), bo = ref.rmax[i] + std::log((double)ref.roth[i]);
    e = std::fmax(e, std::fabs(ao - bo) / 64.0);
  }
  return e;
}

// MarginHead's extras, against the CPU backend: labels −2 (counted, target in
// another shard) with a global V, a class subset (class_index), the partial
// row statistics, merged LSE / p_y − 1 inputs, and the per-block update hook.
void head_extras(const std::string& name, bool bf16, const Tol& tol) {
  const HeadCase h = head_case(bf16);
  Problem shape;
  shape.n = h.full.n;
  shape.c = h.c;
  shape.d = h.full.d;
  try {
    HeadRun ref = run_head(h, false, nullptr, nullptr, false);
    HeadRun got = run_head(h, true, nullptr, nullptr, false);
    // Merged inputs equal to the CUDA run's own values: the same result.
    std::vector<float> lse_own, target_pm1_own;
    own_merged_inputs(got, h.full.labels, lse_own, target_pm1_own);
    HeadRun merged = run_head(h, true, lse_own.data(), target_pm1_own.data(), true);
    double loss_err = 0;
    for (int64_t i = 0; i < h.full.n; ++i)
      loss_err = std::fmax(loss_err, std::fabs((double)got.ps[i] - ref.ps[i]) / std::fmax(1.0, std::fabs(ref.ps[i])));
    const double stat_err = head_stat_error(got, ref, h.full.labels);
    const double gx_l2 = rel_l2(got.gx, ref.gx), gx_max = rel_max(got.gx, ref.gx);
    const double gw_l2 = rel_l2(got.gw, ref.gw), gw_max = rel_max(got.gw, ref.gw);
    const double hook_err = std::fmax(rel_max(merged.hooked, got.gw), rel_max(merged.gx, got.gx));
    const bool ok = got.o.valid_rows == 60 && std::fabs(got.o.loss - ref.o.loss) <= tol.loss * std::fmax(1.0, ref.o.loss) &&
                    loss_err <= tol.loss && stat_err <= tol.loss && gx_l2 <= tol.grad_l2 && gx_max <= tol.grad_max &&
                    gw_l2 <= tol.grad_l2 && gw_max <= tol.grad_max && hook_err <= 1e-5 && merged.nulls.empty();
    report(name, shape, ok, loss_err, gx_l2, gx_max, gw_l2, gw_max, tol,
           "stats " + std::to_string(stat_err) + " merged-inputs+hook " + std::to_string(hook_err));
  } catch (const CudaError& e) {
    std::printf("FAIL %s: CudaError %s\n", name.c_str(), e.message.c_str());
    ++failures;
  } catch (const InputError& e) {
    std::printf("FAIL %s: InputError %s\n", name.c_str(), e.message.c_str());
    ++failures;
  }
}

// Gradient filtering: the filtered gradients may differ from the exact ones
// by at most the skipped terms, |g_ij| < thr·|dz/dc|/V each: per component of
// dX at most C·thr·s·(1 + 2|m2_cvm|)/V·max 1/‖x_i‖, of dW at most
// N·thr·s·(1 + 2|m2_cvm|)/V·max_j 1/‖w_j‖ (‖x̂‖, ‖ŵ‖ ≤ 1, and the projection
// of the normalisation does not increase a norm). Also: tiles were skipped,
// and the unfiltered run agrees with the CPU backend.
void filter_case(const std::string& name, Problem p, MarginParams m, float thr) {
  compare(name + " (off, vs CPU)", p, m, false, 0.0f, kTf32);
  Outputs exact = alloc_out(p, true), filt = alloc_out(p, true);
  try {
    cuda_loss(make_lp(p, m, 0.0f, false), exact.o);
    cuda_loss(make_lp(p, m, thr, false), filt.o);
  } catch (const CudaError& e) {
    std::printf("FAIL %s: CudaError %s\n", name.c_str(), e.message.c_str());
    ++failures;
    return;
  }
  double max_invx = 0, max_invw = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    double s2 = 0;
    for (int64_t k = 0; k < p.d; ++k) s2 += (double)p.x[i * p.d + k] * p.x[i * p.d + k];
    if (s2 > 0) max_invx = std::fmax(max_invx, 1 / std::sqrt(s2));
  }
  for (int64_t j = 0; j < p.c; ++j) {
    double s2 = 0;
    for (int64_t k = 0; k < p.d; ++k) s2 += (double)p.w[j * p.d + k] * p.w[j * p.d + k];
    if (s2 > 0) max_invw = std::fmax(max_invw, 1 / std::sqrt(s2));
  }
  const double V = (double)exact.o.valid_rows;
  const double dz = m.scale * (1.0 + 2.0 * std::fabs(cvm_false_margin(m)));
  const double bound_x = (double)p.c * thr * dz / V * max_invx * 1.01;
  const double bound_w = (double)p.n * thr * dz / V * max_invw * 1.01;
  double ex = 0, ew = 0;
  for (size_t k = 0; k < exact.gx.size(); ++k) ex = std::fmax(ex, std::fabs((double)exact.gx[k] - filt.gx[k]));
  for (size_t k = 0; k < exact.gw.size(); ++k) ew = std::fmax(ew, std::fabs((double)exact.gw[k] - filt.gw[k]));
  const bool ok = filt.o.skipped_blocks > 0 && ex <= bound_x && ew <= bound_w && filt.per_sample == exact.per_sample;
  std::printf("%-4s %-44s max|ΔdX| %.2e ≤ %.2e, max|ΔdW| %.2e ≤ %.2e, skipped %lld/%lld\n", ok ? "ok" : "FAIL",
              (name + " (on, vs off)").c_str(), ex, bound_x, ew, bound_w, (long long)filt.o.skipped_blocks,
              (long long)filt.o.total_blocks);
  if (!ok) ++failures;
}

void small_suite() {
  for (const auto& k : {all_kinds()[4], all_kinds()[8]}) {
    Problem p = random_problem(7, 127, 64, 11);
    p.labels[2] = -1;
    with_row_margins(p, k.m);
    compare(std::string("small/") + k.name, p, k.m, false, 0.0f, kTf32);
  }
  Problem p = random_problem(5, 300, 513, 12);
  compare("small/bf16 d=513 filter", p, all_kinds()[4].m, true, 1e-6f, kBf16, false);
}

// ---- The suite ---------------------------------------------------------------
// One suite, parameterised by where it runs. On a GPU: every case at full
// size. Emulated (--emu, test/gpu/emu/run.sh: the kernels on the CPU, every
// CTA 256 real threads): moderate shapes instead of the GPU-sized ones, fewer
// kinds where a case repeats per kind, and the cases only the emulation can
// set up (EMU_SMS: few multiprocessors → class groups of several tiles).
struct Scope {
  bool emulated = false;
};

// Every kind on small odd shapes, both d paths (multiple of 4 / not).
void kind_cases(const std::vector<Named>& kinds) {
  for (const auto& k : kinds) {
    for (int64_t d : {64, 513}) {
      Problem p = random_problem(7, 127, d, 100 + (uint32_t)d);
      p.labels[3] = -1;
      with_row_margins(p, k.m);
      compare(std::string("kind/") + k.name, p, k.m, false, 0.0f, kTf32);
    }
  }
}

// Several row and class tiles.
void tile_cases(const std::vector<Named>& kinds, Scope scope) {
  std::vector<size_t> which;
  if (scope.emulated) {
    which = {1, 4, 8};
  } else {
    for (size_t k = 0; k < kinds.size(); ++k) which.push_back(k);
  }
  for (size_t kind : which) {
    Problem p = random_problem(300, 1000, 128, 200);
    with_row_margins(p, kinds[kind].m);
    compare(std::string("tiles/") + kinds[kind].name, p, kinds[kind].m, false, 0.0f, kTf32);
  }
}

// Emulated only: few multiprocessors → class groups of several tiles; d = 513 → two slices.
void group_slice_cases(const std::vector<Named>& kinds) {
  setenv("EMU_SMS", "2", 1);
  Problem p = random_problem(200, 700, 513, 210);
  p.labels[150] = -1;
  compare("groups+slices/adaptive", p, kinds[4].m, false, 0.0f, kTf32);
  compare("groups+slices/bf16", p, kinds[4].m, true, 0.0f, kBf16);
  unsetenv("EMU_SMS");
}

// C = 1 and N = 1 (the loss and the gradients are exactly zero), ignored
// rows, all rows ignored, zero vectors; on a GPU one row against 100003
// classes, emulated d = 3.
void edge_cases(const std::vector<Named>& kinds, Scope scope) {
  Problem p = random_problem(1, 1, 64, 300);
  compare("edge/N=1 C=1", p, kinds[4].m, false, 0.0f, kTf32);
  Problem q = random_problem(9, 1, 513, 301);
  compare("edge/C=1 d=513", q, kinds[1].m, false, 0.0f, kTf32);
  if (!scope.emulated) {
    Problem r = random_problem(1, 100003, 512, 302);
    compare("edge/N=1 C=100003", r, kinds[4].m, false, 0.0f, kTf32);
  }
  Problem z = random_problem(70, 500, 96, 400);
  for (int64_t i = 0; i < z.n; i += 3) z.labels[i] = -1;
  for (int64_t k = 0; k < z.d; ++k) z.x[5 * z.d + k] = 0.0f;   // zero embedding (row 5 counted)
  for (int64_t k = 0; k < z.d; ++k) z.w[17 * z.d + k] = 0.0f;  // zero class centre
  compare("edge/ignored+zero vectors", z, kinds[4].m, false, 0.0f, kTf32);
  Problem a = random_problem(40, 300, 64, 401);
  for (auto& y : a.labels) y = -1;
  compare("edge/all ignored", a, kinds[4].m, false, 0.0f, kTf32);
  if (scope.emulated) {
    Problem u = random_problem(33, 129, 3, 402);
    compare("edge/d=3", u, kinds[3].m, false, 0.0f, kTf32);
  }
}

// Target cosines at and near ±1 (the clamp, the π fallback).
void near_parallel_cases(const std::vector<Named>& kinds) {
  for (int kind : {1, 3, 4, 8}) {
    Problem p = random_problem(16, 257, 128, 500);
    near_parallel(p);
    compare(std::string("near±1/") + kinds[kind].name, p, kinds[kind].m, false, 0.0f, kTf32);
  }
}

// BF16 centres against the CPU's bf16 emulation.
void bf16_cases(const std::vector<Named>& kinds, Scope scope) {
  const std::vector<int> which = scope.emulated ? std::vector<int>{0, 8} : std::vector<int>{0, 4, 8};
  for (int kind : which) {
    Problem p = random_problem(64, 1000, 200, 600);
    compare(std::string("bf16/") + kinds[kind].name, p, kinds[kind].m, true, 0.0f, kBf16);
  }
}

// Gradient filtering: clustered rows, most tiles skipped; the result must
// stay within the TF32 tolerance of the exact CPU gradients.
void filter_cases(const std::vector<Named>& kinds, Scope scope) {
  Problem p = scope.emulated ? random_problem(128, 3000, 64, 700) : random_problem(512, 20000, 128, 700);
  cluster(p, 0.8f, 701);
  filter_case("filter/adaptive", p, kinds[4].m, 1e-8f);
  filter_case("filter/cvm", p, kinds[8].m, 1e-6f);
}

// GPU only: the face-recognition shape.
void face_cases(const std::vector<Named>& kinds) {
  Problem p = random_problem(512, 100003, 512, 800);
  compare("face/adaptive", p, kinds[4].m, false, 0.0f, kTf32);
  compare("face/adaptive bf16", p, kinds[4].m, true, 0.0f, kBf16);
}

// Non-finite weights: the same message as the CPU backend.
void error_cases() {
  Problem p = random_problem(4, 50, 32, 900);
  p.w[37 * 32 + 5] = NAN;
  p.w[41 * 32 + 1] = INFINITY;
  expect_input_error("error/non-finite weights", p,
                     "Expected finite values with row norms at most 1e30 for weights but received a non-finite value or a larger norm in row 37");
}

void suite(Scope scope) {
  const auto kinds = all_kinds();
  kind_cases(kinds);
  tile_cases(kinds, scope);
  if (scope.emulated) group_slice_cases(kinds);
  edge_cases(kinds, scope);
  near_parallel_cases(kinds);
  bf16_cases(kinds, scope);
  filter_cases(kinds, scope);
  if (!scope.emulated) face_cases(kinds);
  head_extras("head/extras tf32", false, kTf32);
  head_extras("head/extras bf16", true, kBf16);
  error_cases();
}

}  // namespace

int main(int argc, char** argv) {
  bool small = false, emu = false;
  for (int a = 1; a < argc; ++a) {
    if (!std::strcmp(argv[a], "--small")) small = true;
    if (!std::strcmp(argv[a], "--emu")) emu = true;
    if (!std::strcmp(argv[a], "--json") && a + 1 < argc) json = std::fopen(argv[++a], "w");
  }
  std::string why;
  if (!cuda_usable(&why)) {
    std::printf("FAIL cuda not usable: %s\n", why.c_str());
    return 100;
  }
  CudaDeviceInfo info;
  cuda_device_info(&info);
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.major, info.minor, info.multiprocessors);
  if (json) std::fprintf(json, "[\n");
  if (small) {
    small_suite();
  } else {
    suite(Scope{emu});
  }
  if (json) {
    std::fprintf(json, "\n]\n");
    std::fclose(json);
  }
  std::printf("%s: %d failed\n", failures ? "FAILED" : "PASSED", failures);
  return failures > 100 ? 100 : failures;
}
