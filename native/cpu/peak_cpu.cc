// peak_cpu.cc — the machine's arithmetic peaks, for the benchmarks: loops
// that keep every operand in registers (no memory traffic), on all threads
// at once, so the loss can be reported as a fraction of what the cores can
// do at all. Three loops:
//   fp32       FMAs on the widest vectors of the SIMD level asked for (mul +
//              add on the portable level), enough independent accumulators
//              to hide the FMA latency on two FMA ports (4–5 cycles × 2)
//   avx512-bf16  VDPBF16PS (16 lanes × 2 products + 2 adds = 64 flops)
//   amx-bf16   TDPBF16PS on four accumulator tiles (16×16×32×2 flops each)
// Each is timed over runs of about 0.2 s (by default) after calibration; the best
// of three runs is reported (other load only ever slows a run down).
#include "peak_cpu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "bf16_gemm.h"
#include "class_blocks.h"
#include "simd_dispatch.h"
#include "target_region.h"

#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define MS_HAVE_PEAK_ISA 1
#include <immintrin.h>
// GCC 12 warns about the intrinsics' own _mm512_undefined_*() placeholders.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace ms {
namespace {

// fma_NAME(iters): acc ← acc·b + c on NACC independent chains of VW-float
// vectors; the sum is returned so the loop cannot be dropped. b < 1 keeps the
// values bounded and normal. kFlops_NAME: the flops of one iteration.
#define MS_FMA_PEAK(NAME, VW, NACC)                                     \
  float fma_##NAME(long iters) {                                        \
    typedef float vf __attribute__((vector_size(VW * 4)));              \
    vf acc[NACC];                                                       \
    for (int k = 0; k < NACC; ++k) acc[k] = (vf){} + 1e-3f * (k + 1);  \
    const vf b = (vf){} + 0.999999f, c = (vf){} + 1e-7f;                \
    for (long it = 0; it < iters; ++it) {                               \
      _Pragma("GCC unroll 32") for (int k = 0; k < NACC; ++k) {         \
        acc[k] = acc[k] * b + c;                                        \
      }                                                                 \
    }                                                                   \
    float s = 0.0f;                                                     \
    for (int k = 0; k < NACC; ++k)                                      \
      for (int q = 0; q < VW; ++q) s += acc[k][q];                      \
    return s;                                                           \
  }                                                                     \
  constexpr double kFlops_##NAME = NACC * VW * 2;

MS_FMA_PEAK(portable, 4, 12)

#ifdef MS_HAVE_PEAK_ISA
MS_TARGET_PUSH("avx2,fma")
MS_FMA_PEAK(avx2, 8, 12)
MS_TARGET_POP

MS_TARGET_PUSH("avx512f,avx512vl,avx512dq,avx2,fma")
MS_FMA_PEAK(avx512, 16, 24)
MS_TARGET_POP

MS_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512bf16")
constexpr int kDpAcc = 16;
float dpbf16_loop(long iters) {
  __m512 acc[kDpAcc];
  for (int k = 0; k < kDpAcc; ++k) acc[k] = _mm512_set1_ps(0.0f);
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3a833a83);  // bf16 ≈ 1e−3 in both halves
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x3a833a83);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int k = 0; k < kDpAcc; ++k) {
      acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
    }
  }
  float s = 0.0f;
  for (int k = 0; k < kDpAcc; ++k) s += _mm512_reduce_add_ps(acc[k]);
  return s;
}
MS_TARGET_POP
constexpr double kFlopsDp = kDpAcc * 16 * 4;

MS_TARGET_PUSH("amx-tile,amx-bf16")
struct alignas(64) PeakTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
float amx_loop(long iters) {
  PeakTileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  alignas(64) uint16_t ab[16 * 32];
  for (int k = 0; k < 16 * 32; ++k) ab[k] = 0x3a83;  // bf16 ≈ 1e−3
  alignas(64) float out[16 * 16];
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ab, 64);
  _tile_loadd(5, ab, 64);
  _tile_loadd(6, ab, 64);
  _tile_loadd(7, ab, 64);
  for (long it = 0; it < iters; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}
MS_TARGET_POP
constexpr double kFlopsAmx = 4.0 * 16 * 16 * 32 * 2;
#endif

struct Loop {
  float (*fn)(long);
  double flops_per_iter;
};

// The loop for a kind, or {null} where this CPU (or build) lacks it.
Loop loop_for(PeakKind kind, int simd) {
  switch (kind) {
    case PeakKind::Fp32: {
#ifdef MS_HAVE_PEAK_ISA
      const int w = kernels_for(simd).vw;
      if (w >= 16) return {fma_avx512, kFlops_avx512};
      if (w >= 8) return {fma_avx2, kFlops_avx2};
#endif
      (void)simd;
      return {fma_portable, kFlops_portable};
    }
    case PeakKind::Avx512Bf16:
#ifdef MS_HAVE_PEAK_ISA
      if (cpu_has_avx512_bf16()) return {dpbf16_loop, kFlopsDp};
#endif
      return {nullptr, 0};
    case PeakKind::AmxBf16:
#ifdef MS_HAVE_PEAK_ISA
      if (amx_bf16_usable()) return {amx_loop, kFlopsAmx};
#endif
      return {nullptr, 0};
  }
  return {nullptr, 0};
}

double run_seconds(const Loop& L, int T, long iters) {
  std::atomic<float> sink{0.0f};
  const auto t0 = std::chrono::steady_clock::now();
  parallel(T, [&](int) { sink.store(L.fn(iters), std::memory_order_relaxed); });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

double peak_gflops(PeakKind kind, int threads, int simd, double seconds) {
  const Loop L = loop_for(kind, simd);
  if (!L.fn) return 0.0;
  const int T = threads > 0 ? threads : cpu_default_threads();
  // Calibrate: grow the iteration count until a run takes a tenth of the
  // target (at least 1 ms), then size the timed runs to about `seconds`.
  const double target = std::clamp(seconds, 1e-3, 10.0);
  long iters = 1000;
  double t = run_seconds(L, T, iters);
  while (t < std::max(1e-3, target / 10) && iters < (1L << 40)) {
    iters *= 4;
    t = run_seconds(L, T, iters);
  }
  iters = std::max<long>(1, (long)(iters * (target / t)));
  double best = 1e300;
  for (int r = 0; r < 3; ++r) best = std::min(best, run_seconds(L, T, iters));
  return L.flops_per_iter * (double)iters * T / best / 1e9;
}

}  // namespace ms
