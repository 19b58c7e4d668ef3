// neon_kernels.cc — the CPU backend's vector kernels for aarch64, written with
// Advanced SIMD (NEON) intrinsics: the 'neon' KernelSet of simd_dispatch.
// The same three kernels as simd_kernels.inc (read its header for what each
// computes and why it is fused), with the register use chosen for AArch64's
// 32 vector registers rather than left to the vector extensions:
//   gemm          C (+)= A·B, A through arbitrary strides. Register tile
//                 8 rows × 12 columns: 24 accumulators, 3 registers of the
//                 packed B row, A broadcast per element (FMLA by element).
//                 The portable kernel's 4×8 tile uses 8 of the 32 registers.
//   block_stats   forward epilogue (per-row max and Σexp of a class block)
//   block_grad    backward epilogue (g and t_j = Σ_i g_ij·c_ij)
// and vexp with FRINTN for the range reduction (round to nearest) and FMA
// for the polynomial. AdvSIMD is part of every AArch64 CPU, so this set is
// always available there; 'portable' (simd_kernels.inc at 4 lanes) remains
// selectable with simd: 'portable'.
//
// Build: compiled into every build; the body exists only for __aarch64__
// (cross: cmake-js with aarch64-linux-gnu-g++, see scripts/build-arm64.sh).
// Check: test/arm64/kernels.mjs (float64 reference and finite differences
// for simd 'neon' and 'portable', under qemu-aarch64 in .ci/run).
// Time: `npm run bench:cpu` on an aarch64 machine.
#include "simd_dispatch.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <cmath>
#include <memory>
#include <new>

#include "../margin_math.h"

namespace ms {
namespace neon {
namespace {

constexpr int kMR = 8;        // rows of the register tile
constexpr int kNR = 12;       // columns: three 4-float registers
constexpr int kKC = 512;      // k block (= d for d ≤ 512)
constexpr int kBPack = 36864; // floats of the packed B block (144 KiB, a multiple of 12·512)
constexpr int kPrefetchRows = 16;

// exp(x), the range reduction and degree-6 polynomial of simd_kernels.inc's
// vexp (relative error ≈ 1.2e−7), inputs clamped to [−87.3, 88.7].
inline float32x4_t vexp(float32x4_t x) {
  x = vmaxq_f32(x, vdupq_n_f32(-87.3f));
  x = vminq_f32(x, vdupq_n_f32(88.7f));
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));
  r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
  float32x4_t p = vdupq_n_f32(1.0f / 720.0f);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

// ---- GEMM ------------------------------------------------------------------
// C[m·ldc + n] = (acc ? C : 0) + Σ_k A[m·sam + k·sak]·Bp[k·kNR + n] for the
// R×12 tile; Bp a packed panel.
template <int R>
inline void micro(int K, const float* A, long sam, long sak, const float* B, float* C, long ldc, bool acc) {
  float32x4_t c[R][3];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 3; ++q) c[r][q] = acc ? vld1q_f32(C + r * ldc + 4 * q) : vdupq_n_f32(0.0f);
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    __builtin_prefetch(B + (k + kPrefetchRows) * kNR);
    const float32x4_t b0 = vld1q_f32(B + k * kNR), b1 = vld1q_f32(B + k * kNR + 4), b2 = vld1q_f32(B + k * kNR + 8);
    const float* a = A + k * sak;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float ar = a[r * sam];
      c[r][0] = vfmaq_n_f32(c[r][0], b0, ar);
      c[r][1] = vfmaq_n_f32(c[r][1], b1, ar);
      c[r][2] = vfmaq_n_f32(c[r][2], b2, ar);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 3; ++q) vst1q_f32(C + r * ldc + 4 * q, c[r][q]);
}

template <int R>
void micro_rows(int rows, int K, const float* A, long sam, long sak, const float* B, float* C, long ldc, bool acc) {
  if constexpr (R > 1) {
    if (rows < R) return micro_rows<R - 1>(rows, K, A, sam, sak, B, C, ldc, acc);
  }
  micro<R>(K, A, sam, sak, B, C, ldc, acc);
}

// The kc×nc block of B (row stride ldb) as panels of kNR columns, each kc×kNR
// contiguous, zero-padded past nc.
void pack_b(int kc, int nc, const float* Bs, long ldb, float* bp) {
  for (int n0 = 0; n0 < nc; n0 += kNR) {
    float* dst = bp + (long)n0 * kc;
    const float* src = Bs + n0;
    const int w = nc - n0 < kNR ? nc - n0 : kNR;
    for (int k = 0; k < kc; ++k)
      for (int q = 0; q < kNR; ++q) dst[k * kNR + q] = q < w ? src[k * ldb + q] : 0.0f;
  }
}

float* packed_b_buffer() {
  thread_local std::unique_ptr<float[]> buf;
  if (!buf) buf.reset(new (std::align_val_t(64)) float[kBPack]);
  return buf.get();
}

// The loop order of simd_kernels.inc's gemm: each packed kc×nc block of B
// meets every 8-row strip of A; column edges go through a padded copy of C.
void gemm(int M, int NN, int K, const float* A, long sam, long sak, const float* B, long ldb, float* C, long ldc,
          bool accumulate) {
  alignas(64) float cpad[kMR * kNR];
  float* bp = packed_b_buffer();
  for (int k0 = 0; k0 < K; k0 += kKC) {
    const int kc = K - k0 < kKC ? K - k0 : kKC;
    const bool acc = accumulate || k0 > 0;
    const int ncb = kBPack / kc / kNR * kNR;
    for (int nb = 0; nb < NN; nb += ncb) {
      const int nc = NN - nb < ncb ? NN - nb : ncb;
      pack_b(kc, nc, B + (long)k0 * ldb + nb, ldb, bp);
      for (int m0 = 0; m0 < M; m0 += kMR) {
        const int mc = M - m0 < kMR ? M - m0 : kMR;
        const float* Ap = A + (long)m0 * sam + (long)k0 * sak;
        for (int n0 = 0; n0 < nc; n0 += kNR) {
          const float* Bp = bp + (long)n0 * kc;
          float* Cp = C + (long)m0 * ldc + nb + n0;
          const int w = nc - n0 < kNR ? nc - n0 : kNR;
          if (w == kNR) {
            micro_rows<kMR>(mc, kc, Ap, sam, sak, Bp, Cp, ldc, acc);
            continue;
          }
          for (int r = 0; r < mc; ++r)
            for (int q = 0; q < kNR; ++q) cpad[r * kNR + q] = (acc && q < w) ? Cp[r * ldc + q] : 0.0f;
          micro_rows<kMR>(mc, kc, Ap, sam, sak, Bp, cpad, kNR, true);
          for (int r = 0; r < mc; ++r)
            for (int q = 0; q < w; ++q) Cp[r * ldc + q] = cpad[r * kNR + q];
        }
      }
    }
  }
}

// ---- Forward epilogue (simd_kernels.inc: block_stats) ----------------------
void block_stats(const float* tile, int classes, int ldt, float s, float cvm_m2, const int32_t* target_col,
                 const float* zt, float* m_out, float* l_out, float* o_out) {
  for (int i0 = 0; i0 < ldt; i0 += 4) {
    const int32x4_t tc = vld1q_s32(target_col + i0);
    const float32x4_t ztv = vld1q_f32(zt + i0);
    float32x4_t mx = vdupq_n_f32(-INFINITY);
    for (int j = 0; j < classes; ++j) {
      const float32x4_t z = ms::other_z(vld1q_f32(tile + (long)j * ldt + i0), s, cvm_m2);
      const uint32x4_t is_t = vceqq_s32(tc, vdupq_n_s32(j));
      mx = vmaxq_f32(mx, vbslq_f32(is_t, ztv, z));
    }
    float32x4_t other = vdupq_n_f32(0.0f);
    for (int j = 0; j < classes; ++j) {
      const float32x4_t e = vexp(vsubq_f32(ms::other_z(vld1q_f32(tile + (long)j * ldt + i0), s, cvm_m2), mx));
      const uint32x4_t is_t = vceqq_s32(tc, vdupq_n_s32(j));
      other = vaddq_f32(other, vbslq_f32(is_t, vdupq_n_f32(0.0f), e));
    }
    const uint32x4_t has_t = vcgeq_s32(tc, vdupq_n_s32(0));
    const float32x4_t target = vbslq_f32(has_t, vexp(vsubq_f32(ztv, mx)), vdupq_n_f32(0.0f));
    vst1q_f32(m_out + i0, mx);
    vst1q_f32(l_out + i0, vaddq_f32(other, target));
    vst1q_f32(o_out + i0, other);
  }
}

// ---- Backward epilogue (simd_kernels.inc: block_grad) ----------------------
float block_grad(const float* tile, int classes, int ldt, float s, float cvm_m2, const int32_t* target_col,
                 const float* target_pm1, const float* dzt, const float* lse, const float* rowscale,
                 const float* invn, float* gout, float* t) {
  float32x4_t pmax = vdupq_n_f32(0.0f);
  const float32x4_t zero = vdupq_n_f32(0.0f);
  for (int j = 0; j < classes; ++j) {
    float32x4_t tacc = zero;
    const float inv = invn[j];
    for (int i0 = 0; i0 < ldt; i0 += 4) {
      const float32x4_t c = vld1q_f32(tile + (long)j * ldt + i0);
      const float32x4_t rs = vld1q_f32(rowscale + i0);
      const float32x4_t p_o = vexp(vsubq_f32(ms::other_z(c, s, cvm_m2), vld1q_f32(lse + i0)));
      pmax = vmaxq_f32(pmax, vbslq_f32(vcgtq_f32(rs, zero), p_o, zero));
      float32x4_t g = vmulq_f32(p_o, ms::other_dz(c, s, cvm_m2));
      const uint32x4_t is_t = vceqq_s32(vld1q_s32(target_col + i0), vdupq_n_s32(j));
      if (vmaxvq_u32(is_t) != 0) g = vbslq_f32(is_t, vmulq_f32(vld1q_f32(target_pm1 + i0), vld1q_f32(dzt + i0)), g);
      g = vmulq_f32(g, rs);
      tacc = vfmaq_f32(tacc, g, c);
      vst1q_f32(gout + (long)j * ldt + i0, vmulq_n_f32(g, inv));
    }
    t[j] = vaddvq_f32(tacc);
  }
  return vmaxvq_f32(pmax);
}

// Σ v[k]² in double (see simd_kernels.inc: sumsq).
double sumsq(const float* v, int d) {
  float64x2_t a = vdupq_n_f64(0.0), b = vdupq_n_f64(0.0);
  int k = 0;
  for (; k + 4 <= d; k += 4) {
    const float32x4_t x = vld1q_f32(v + k);
    const float64x2_t lo = vcvt_f64_f32(vget_low_f32(x)), hi = vcvt_high_f64_f32(x);
    a = vfmaq_f64(a, lo, lo);
    b = vfmaq_f64(b, hi, hi);
  }
  double s = vaddvq_f64(vaddq_f64(a, b));
  for (; k < d; ++k) s += (double)v[k] * v[k];
  return s;
}

void sub_scaled(float* __restrict y, const float* __restrict x, float a, float b, int n) {
  int q = 0;
  for (; q + 4 <= n; q += 4) vst1q_f32(y + q, vfmsq_n_f32(vld1q_f32(y + q), vmulq_n_f32(vld1q_f32(x + q), b), a));
  for (; q < n; ++q) y[q] -= a * (b * x[q]);
}

void scale(float* v, float a, int n) {
  int q = 0;
  for (; q + 4 <= n; q += 4) vst1q_f32(v + q, vmulq_n_f32(vld1q_f32(v + q), a));
  for (; q < n; ++q) v[q] *= a;
}

}  // namespace

const KernelSet kernels = {4, kMR, gemm, block_stats, block_grad, sumsq, sub_scaled, scale};

}  // namespace neon
}  // namespace ms

#endif  // __aarch64__
