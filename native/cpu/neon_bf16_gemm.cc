// neon_bf16_gemm.cc — the bf16 matrix path of aarch64 ('neon-bf16'): BFDOT
// (Armv8.6 FEAT_BF16) on the operand layouts of bf16_gemm.h, and the run-time
// check for it. Each BFDOT lane multiplies one k-pair of a column of the
// pair-packed B panel (one 32-bit word) by one k-pair of a row of A and adds
// both products into an fp32 accumulator, so the panel's words feed it as
// they are: no repacking for this path.
//
// Register tile 4 rows × 16 columns (16 accumulators, 4 registers of A each
// holding 4 k-pairs, 4 of B per k-pair). BFDOT rounds differently from an fp32
// FMA chain (its two products are exact, the pair sum is rounded once, and
// denormal results are flushed), so it matches the fp32 kernels on the
// rounded operands to fp32 accuracy, not bit for bit.
//
// Build: only an aarch64 build (GCC ≥ 10, clang ≥ 16) compiles the kernel,
// inside an MS_TARGET_PUSH region for bf16; it runs only where the kernel
// reports HWCAP2_BF16 (Linux getauxval) or FEAT_BF16 (macOS sysctl).
// Check: test/arm64/kernels.mjs with matrix 'neon-bf16' (qemu-aarch64 -cpu
// max has FEAT_BF16; -cpu cortex-a72 lacks it and checks the fallback).
#include "bf16_gemm.h"
#include "target_region.h"

#if defined(__aarch64__) && (defined(__clang__) ? __clang_major__ >= 16 : __GNUC__ >= 10)
#define MS_HAVE_NEON_BF16 1
#include <arm_neon.h>

#include <algorithm>
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

namespace ms {

#ifdef MS_HAVE_NEON_BF16

bool cpu_has_neon_bf16() {
  static const bool has = [] {
#if defined(__linux__)
    constexpr unsigned long kHwcap2Bf16 = 1ul << 14;  // HWCAP2_BF16 of <asm/hwcap.h>
    return (getauxval(AT_HWCAP2) & kHwcap2Bf16) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t n = sizeof(v);
    return sysctlbyname("hw.optional.arm.FEAT_BF16", &v, &n, nullptr, 0) == 0 && v != 0;
#else
    return false;
#endif
  }();
  return has;
}

// GCC's arm_neon.h defines the bf16 intrinsics for "arch=armv8.2-a+bf16";
// a function must have every feature of that set to inline them.
#if defined(__clang__)
MS_TARGET_PUSH("bf16")
#else
MS_TARGET_PUSH("arch=armv8.2-a+bf16")
#endif
namespace {

constexpr int kMR = 4;

// C[r·ldc + q] for q < 16 of the tile's rows, reading and writing only the
// nc < 16 columns that exist at a panel's right edge.
inline float32x4_t load_c(const float* c, int q, int nc) {
  if (4 * q + 4 <= nc) return vld1q_f32(c + 4 * q);
  float tmp[4] = {0, 0, 0, 0};
  for (int e = 0; 4 * q + e < nc; ++e) tmp[e] = c[4 * q + e];
  return vld1q_f32(tmp);
}
inline void store_c(float* c, int q, int nc, float32x4_t v) {
  if (4 * q + 4 <= nc) return vst1q_f32(c + 4 * q, v);
  float tmp[4];
  vst1q_f32(tmp, v);
  for (int e = 0; 4 * q + e < nc; ++e) c[4 * q + e] = tmp[e];
}

// R rows × 16 columns over kpairs k-pairs (a multiple of 4). B: the panel's
// first word of this 16-column half; its k-pair rows are 64 bf16 apart.
template <int R>
void dot_micro(int kpairs, const uint16_t* A, long lda, const uint16_t* B, float* C, long ldc, bool acc, int nc) {
  float32x4_t c[R][4];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) c[r][q] = acc ? load_c(C + r * ldc, q, nc) : vdupq_n_f32(0.0f);
  for (int p = 0; p < kpairs; p += 4) {
    bfloat16x8_t a[R];
    for (int r = 0; r < R; ++r) a[r] = vreinterpretq_bf16_u16(vld1q_u16(A + r * lda + 2 * p));
#define MS_BFDOT_STEP(LANE)                                                                  \
  {                                                                                          \
    const uint16_t* b = B + (long)(p + LANE) * 64;                                           \
    const bfloat16x8_t b0 = vreinterpretq_bf16_u16(vld1q_u16(b)), b1 = vreinterpretq_bf16_u16(vld1q_u16(b + 8)); \
    const bfloat16x8_t b2 = vreinterpretq_bf16_u16(vld1q_u16(b + 16)), b3 = vreinterpretq_bf16_u16(vld1q_u16(b + 24)); \
    for (int r = 0; r < R; ++r) {                                                            \
      c[r][0] = vbfdotq_laneq_f32(c[r][0], b0, a[r], LANE);                                  \
      c[r][1] = vbfdotq_laneq_f32(c[r][1], b1, a[r], LANE);                                  \
      c[r][2] = vbfdotq_laneq_f32(c[r][2], b2, a[r], LANE);                                  \
      c[r][3] = vbfdotq_laneq_f32(c[r][3], b3, a[r], LANE);                                  \
    }                                                                                        \
  }
    MS_BFDOT_STEP(0)
    MS_BFDOT_STEP(1)
    MS_BFDOT_STEP(2)
    MS_BFDOT_STEP(3)
#undef MS_BFDOT_STEP
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) store_c(C + r * ldc, q, nc, c[r][q]);
}

template <int R>
void dot_micro_rows(int rows, int kpairs, const uint16_t* A, long lda, const uint16_t* B, float* C, long ldc,
                    bool acc, int nc) {
  if constexpr (R > 1) {
    if (rows < R) return dot_micro_rows<R - 1>(rows, kpairs, A, lda, B, C, ldc, acc, nc);
  }
  dot_micro<R>(kpairs, A, lda, B, C, ldc, acc, nc);
}

}  // namespace

void gemm_neon_bf16(int M, int NN, int Kp, const uint16_t* A, long lda, const uint16_t* Bp, float* C, long ldc,
                    bool accumulate) {
  constexpr int kKC = 256;  // k block: the panel slice (128 k-pairs × 128 bytes) stays in L1
  for (int k0 = 0; k0 < Kp; k0 += kKC) {
    const int kc = std::min(kKC, Kp - k0);
    const bool acc = accumulate || k0 > 0;
    for (int n0 = 0; n0 < NN; n0 += 16) {
      // Column n0 sits in panel n0/32, half (n0 % 32)/16: 32 bf16 into each 64-bf16 k-pair row.
      const uint16_t* half = Bp + (long)(n0 / 32) * 32 * Kp + (long)k0 * 32 + 2 * (n0 % 32);
      const int nc = std::min(16, NN - n0);
      for (int m0 = 0; m0 < M; m0 += kMR)
        dot_micro_rows<kMR>(std::min(kMR, M - m0), kc / 2, A + (long)m0 * lda + k0, lda, half,
                            C + (long)m0 * ldc + n0, ldc, acc, nc);
    }
  }
}
MS_TARGET_POP

#else

bool cpu_has_neon_bf16() { return false; }

#endif

}  // namespace ms
