// margin_math.h — the element-wise math of the margin-softmax family, shared by
// the CPU backend and the CUDA kernels (every function is __host__ __device__),
// so the CPU test-suite covers exactly the code the GPU runs.
//
// What lives here: the margin of every kind (target logit and its exact
// derivative d z / d cos θ), the non-target logit (CVM adds a false-class
// margin), the monotonic π fallback, the online log-sum-exp merge, and the
// counter-based Gaussian draw used by the elastic margins.
//
// What does not: products, reductions, threads. Those are the backends' job.
//
// Notation and derivations: docs/math.md (formulas, derivatives, the π
// fallback, the norm rules) and docs/numerics.md (the online log-sum-exp).
// c = cos θ = x̂·ŵ, s = scale, φ(θ) = margined angle for the angular kinds.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MS_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU backend calls these from SIMD code compiled for
// several instruction sets; inlining makes each copy use its caller's ISA.
#define MS_HD inline __attribute__((always_inline))
#else
#define MS_HD inline
#endif

namespace ms {

// The margin kinds, one row each:
//   X(Enum, code, "js-name", angular, row_margin, "p1", "p2", "p3", m1, m2, m3)
// code: the integer that crosses the N-API boundary; "js-name": margin.kind in
// TypeScript; angular: z_y = s·cos φ(θ) (see is_angular); row_margin: the
// per-row margins of the elastic kinds (see has_row_margin); "p1".."p3": the
// TypeScript parameter carried in MarginParams's m1, m2, m3 ("": unused);
// m1, m2, m3: the kind's typical parameters (the self-tests' case).
// lib/margins.ts holds the TypeScript side's row of each kind (all parameters,
// defaults, help text); test/margin-kinds.test.ts checks the two agree
// through the addon's _marginKinds() (native/margin_kinds_napi.cc).
// Adding a kind: its row here, its math in target_logit, its row in lib/margins.ts.
#define MS_MARGIN_KINDS(X)                                                                     \
  X(Softmax, 0, "softmax", false, false, "", "", "", 0.0f, 0.0f, 0.0f)                         \
  X(ArcFace, 1, "arcface", true, false, "", "m", "", 0.0f, 0.5f, 0.0f)                         \
  X(CosFace, 2, "cosface", false, false, "", "m", "", 0.0f, 0.35f, 0.0f)                       \
  X(Combined, 3, "combined", true, false, "m1", "m2", "m3", 0.95f, 0.45f, 0.1f)                \
  X(Adaptive, 4, "adaptive", true, false, "m1", "m2", "", 0.03f, 0.5f, 0.0f)                   \
  X(ElasticArc, 5, "elastic-arc", true, true, "", "m", "", 0.0f, 0.5f, 0.0f)                   \
  X(ElasticCos, 6, "elastic-cos", false, true, "", "m", "", 0.0f, 0.35f, 0.0f)                 \
  X(Cvm, 7, "cvm", false, false, "m1", "m2", "", 0.3f, 0.2f, 0.0f)

enum class MarginKind : int32_t {
#define MS_KIND_ENUM(E, code, ...) E = code,
  MS_MARGIN_KINDS(MS_KIND_ENUM)
#undef MS_KIND_ENUM
};

// One struct describes the loss; both backends take it by value.
// For the elastic kinds the per-row margin comes from `row_margins` (drawn on
// the host, see elastic_margin below) and m2 is unused.
struct MarginParams {
  MarginKind kind;
  float scale;     // s
  float m1;        // combined: multiplicative angular; adaptive: sin² coefficient; cvm: true-class
  float m2;        // additive angular (arcface m, combined m2, adaptive m2); cosface m; cvm: false-class
  float m3;        // combined: additive cosine margin
  bool fallback;   // monotonic fallback where φ > π (angular kinds)
};

// cos θ is clamped to [−1+ε, 1−ε] before arccos so that sin θ > 0 and dz/dc
// stays finite. In fp32, 1 − 1e−7 rounds to 1 − 2⁻²³ (sin θ ≈ 4.9e−4).
constexpr float kCosEps = 1e-7f;

MS_HD float clamp_cos(float c) {
  const float hi = 1.0f - kCosEps;
  const float lo = -1.0f + kCosEps;
  return c > hi ? hi : (c < lo ? lo : c);
}

// A logit and its derivative with respect to the (unclamped) cosine.
// The clamp is treated as the identity for the derivative: it only keeps
// arccos away from its singularity (the clamped band is 1e−7 wide).
struct Logit {
  float z;
  float dz;  // d z / d c
};

MS_HD bool is_angular(MarginKind k) {
  switch (k) {
#define MS_KIND_ANGULAR(E, code, js, angular, ...) \
  case MarginKind::E:                              \
    return angular;
    MS_MARGIN_KINDS(MS_KIND_ANGULAR)
#undef MS_KIND_ANGULAR
  }
  return false;
}

MS_HD bool has_row_margin(MarginKind k) {
  switch (k) {
#define MS_KIND_ROW_MARGIN(E, code, js, angular, row_margin, ...) \
  case MarginKind::E:                                             \
    return row_margin;
    MS_MARGIN_KINDS(MS_KIND_ROW_MARGIN)
#undef MS_KIND_ROW_MARGIN
  }
  return false;
}

// Non-target logit z_j for j ≠ y. Only CVM adds a false-class margin:
// z = s·(c + m2·c²), dz/dc = s·(1 + 2·m2·c). Templated on the value type so
// the CPU backend's SIMD epilogue evaluates exactly this formula on vectors.
// The SIMD code of an ISA beyond the baseline uses the expressions
// (MS_OTHER_Z, MS_OTHER_DZ): clang does not let a function compiled for the
// baseline take or return its wider vectors, inlined or not.
#define MS_OTHER_Z(c, s, cvm_m2) ((s) * ((c) + (cvm_m2) * (c) * (c)))
#define MS_OTHER_DZ(c, s, cvm_m2) ((s) * (1.0f + 2.0f * (cvm_m2) * (c)))
template <class F>
MS_HD F other_z(F c, float s, float cvm_m2) {
  return MS_OTHER_Z(c, s, cvm_m2);
}
template <class F>
MS_HD F other_dz(F c, float s, float cvm_m2) {
  return MS_OTHER_DZ(c, s, cvm_m2);
}
// The false-class margin coefficient: m2 for CVM, 0 for every other kind.
MS_HD float cvm_false_margin(const MarginParams& p) {
  return p.kind == MarginKind::Cvm ? p.m2 : 0.0f;
}

MS_HD Logit other_logit(const MarginParams& p, float c) {
  const float m = cvm_false_margin(p);
  return {other_z(c, p.scale, m), other_dz(c, p.scale, m)};
}

// Target logit z_y for one row. `row_m` is the row's own margin (elastic
// kinds only; ignored otherwise).
//
// Angular kinds: z = s·(cos φ(θ) − m3), dz/dc = s·sin φ·φ'(θ)/sin θ
// (from d cos φ/dc = −sin φ·φ'·dθ/dc and dθ/dc = −1/sin θ).
// Where φ > π (and `fallback`), cos φ would rise as θ grows; the fallback
// z = s·(c − m3 − m2·sin m2), dz/dc = s keeps the logit decreasing in θ (the
// classic ArcFace th/mm rule). It is not continuous: at the switch the logit
// steps down, by s·(cos m2 + m2·sin m2 − 1) ≈ s·m2²/2 for ArcFace; for
// combined with m1 > 1 it steps up (docs/math.md §4).
MS_HD Logit target_logit(const MarginParams& p, float c_raw, float row_m) {
  const float s = p.scale;
  switch (p.kind) {
    case MarginKind::Softmax:
      return {s * c_raw, s};
    case MarginKind::CosFace:
      return {s * (c_raw - p.m2), s};
    case MarginKind::ElasticCos:
      return {s * (c_raw - row_m), s};
    case MarginKind::Cvm:
      // z = s·(c − m1·(1 − c²)) = s·(c − m1·sin²θ)
      return {s * (c_raw - p.m1 * (1.0f - c_raw * c_raw)), s * (1.0f + 2.0f * p.m1 * c_raw)};
    default:
      break;
  }
  // Angular kinds.
  const float c = clamp_cos(c_raw);
  const float theta = acosf(c);
  const float sin_t = sqrtf(fmaxf(1.0f - c * c, 0.0f));
  float phi, dphi, m_add, m3 = 0.0f;
  switch (p.kind) {
    case MarginKind::ArcFace:
      m_add = p.m2;
      phi = theta + m_add;
      dphi = 1.0f;
      break;
    case MarginKind::ElasticArc:
      m_add = row_m;
      phi = theta + m_add;
      dphi = 1.0f;
      break;
    case MarginKind::Combined:
      m_add = p.m2;
      m3 = p.m3;
      phi = p.m1 * theta + m_add;
      dphi = p.m1;
      break;
    default:  // Adaptive: φ = θ + m1·sin²θ + m2, φ' = 1 + 2·m1·sinθ·cosθ
      m_add = p.m2;
      phi = theta + p.m1 * sin_t * sin_t + m_add;
      dphi = 1.0f + 2.0f * p.m1 * sin_t * c;
      break;
  }
  if (p.fallback && phi > 3.14159265358979f) {
    return {s * (c_raw - m3 - m_add * sinf(m_add)), s};
  }
  return {s * (cosf(phi) - m3), s * sinf(phi) * dphi / sin_t};
}

// ---- Online log-sum-exp -------------------------------------------------
// Per row: m = running max, l = Σ exp(z − m) over all classes seen, and
// o = the same sum without the row's target class. Merging is associative;
// the backends merge in a fixed order so results are bit-reproducible.
// The empty state is (−inf, 0, 0); merging it with anything is the identity.
//
// Why o: for a confident row p_y → 1 and the loss LSE − z_y → 0. Forming
// them as exp(z_y − LSE) − 1 and LSE − z_y from an fp32 LSE (≈ 64, rounding
// step 7.6e−6) cancels catastrophically. With o kept apart,
//   loss = log1p(q),  p_y − 1 = −q/(1 + q),  q = o / exp(z_y − m),
// which is accurate to fp32 relative precision however small q is.
struct LseState {
  float m;
  float l;
  float o;
};

MS_HD LseState lse_empty() { return {-INFINITY, 0.0f, 0.0f}; }

MS_HD LseState lse_merge(LseState a, LseState b) {
  if (a.l == 0.0f) return b;
  if (b.l == 0.0f) return a;
  const float m = fmaxf(a.m, b.m);
  const float ea = expf(a.m - m), eb = expf(b.m - m);
  return {m, a.l * ea + b.l * eb, a.o * ea + b.o * eb};
}

MS_HD float lse_value(LseState a) { return a.m + logf(a.l); }

// The per-row loss and the target's softmax gradient from a row's merged
// state and its target logit zt (see above). Falls back to the direct forms
// where exp(zt − m) would underflow (the target is hopeless: p_y ≈ 0).
struct TargetTerms {
  float per_sample;  // LSE − z_y ≥ 0
  float pt_minus_1;  // p_y − 1 ∈ [−1, 0]
};

MS_HD TargetTerms target_terms(LseState a, float zt) {
  const double d = (double)zt - (double)a.m;
  if (d > -600.0) {
    const double q = (double)a.o / exp(d);
    return {(float)log1p(q), (float)(-q / (1.0 + q))};
  }
  const double lse = (double)a.m + log((double)a.l);
  return {(float)(lse - zt), (float)(exp((double)zt - lse) - 1.0)};
}

// ---- Counter-based Gaussian draws (elastic margins) ---------------------
// A stateless hash of (seed, counter, row) → two 32-bit uniforms → Box–Muller.
// Stateless, so every backend (and every thread) gets the same draw for the
// same key. The mixer is SplitMix64's finaliser applied to a keyed counter.
MS_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Standard normal draw for key (seed, counter, row).
MS_HD double gaussian_draw(uint64_t seed, uint64_t counter, uint64_t row) {
  const uint64_t k = mix64(seed * 0x9e3779b97f4a7c15ULL + mix64(counter + 0x632be59bd9b4e019ULL));
  const uint64_t h = mix64(k ^ mix64(row + 0x2545f4914f6cdd1dULL));
  // Two 32-bit halves → uniforms in (0, 1] and [0, 1).
  const double u1 = ((double)(h >> 32) + 1.0) * (1.0 / 4294967296.0);
  const double u2 = (double)(h & 0xffffffffULL) * (1.0 / 4294967296.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// Per-row elastic margin m_i ~ N(m, σ²).
MS_HD float elastic_margin(float m, float sigma, uint64_t seed, uint64_t counter, uint64_t row) {
  return (float)((double)m + (double)sigma * gaussian_draw(seed, counter, row));
}

// ---- bf16 centres: their update rounded stochastically ------------------
// MarginHead with weightsDtype 'bfloat16' stores its centres in bf16 (both
// backends). Rounding each update w − lr·b to the nearest bf16 would drop every
// change smaller than half a bf16 step (2⁻⁹ of the element): late in training,
// lr·b is often that small, and the centres would freeze. Stochastic rounding
// keeps them moving in expectation: adding 16 uniform random bits below the
// bf16 mantissa and truncating rounds the magnitude up with probability equal
// to its distance from the lower neighbour over the gap, so E[round(v)] = v
// (sign-magnitude: the same holds for negative v). The random bits are a hash
// of (seed, step, element index): the result does not depend on the thread
// count, the backend or the order of the blocks.
MS_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  return u;
#endif
}

MS_HD float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float v;
  __builtin_memcpy(&v, &u, 4);
  return v;
#endif
}

MS_HD float bf16_bits_to_float(uint16_t b) { return float_from_bits((uint32_t)b << 16); }

// The key of one update (seed of the head, index of the step).
MS_HD uint64_t stochastic_round_key(uint64_t seed, uint64_t step) {
  return mix64(seed * 0x9e3779b97f4a7c15ULL + mix64(step + 0xd1b54a32d192ed03ULL));
}

// The random bits of the update: SplitMix64 keyed by the update's key, one
// 64-bit output per group of four consecutive elements, 16 bits each (one
// hash per four elements: the CPU head's update is otherwise cheap).
MS_HD uint64_t stochastic_group_bits(uint64_t key, uint64_t group) {
  return mix64(key + group * 0x9e3779b97f4a7c15ULL);
}
MS_HD uint32_t stochastic_lane(uint64_t group_bits, uint64_t element) {
  return (uint32_t)(group_bits >> (16 * (element & 3))) & 0xffffu;
}
// v (finite) rounded to bf16 with 16 random bits r (uniform in [0, 2¹⁶)).
MS_HD uint16_t bf16_round_with_bits(float v, uint32_t r) { return (uint16_t)((float_bits(v) + r) >> 16); }
// v rounded stochastically; `element` = global row · d + column.
MS_HD uint16_t bf16_round_stochastic(float v, uint64_t key, uint64_t element) {
  return bf16_round_with_bits(v, stochastic_lane(stochastic_group_bits(key, element >> 2), element));
}

// ---- L2 normalisation -----------------------------------------------------
// A vector whose norm is ≤ kZeroNorm has no direction: it is treated as the
// zero vector (x̂ = 0, every cosine 0) and receives a zero gradient. This is
// a choice, documented in the README; it keeps everything finite.
constexpr float kZeroNorm = 1e-12f;
// Rows with a norm above 1e30 are refused: the fp32 products w·x̂ (formed
// before the 1/‖w‖ scaling) would overflow. Checked on the double sum of
// squares against 1e60 (the nearest double to 1e60, one ulp below the square
// of the double 1e30); kMaxRowNormText is the limit as error messages spell it
// (bad_rows_error in loss_problem.h).
constexpr double kMaxNormSq = 1e60;
inline constexpr char kMaxRowNormText[] = "1e30";

MS_HD float inv_norm_from_sq(double sq) {
  const double n = sqrt(sq);
  return n > (double)kZeroNorm ? (float)(1.0 / n) : 0.0f;
}

}  // namespace ms
