// bf16_gemm.cc — see bf16_gemm.h. Every kernel here is compiled on every
// x86-64 GCC/Clang build (inside MS_TARGET_PUSH regions, so the rest of
// the addon keeps the baseline ISA) and runs only where best_matrix_path()
// found the CPU able to.
#include "bf16_gemm.h"
#include "target_region.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define MS_HAVE_BF16_ISA 1
#include <cpuid.h>
#include <immintrin.h>
// GCC 12 warns about the intrinsics' own _mm512_undefined_*() placeholders.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace ms {

// NAME(src, dst, n): dst = bf16_round(src), LANES floats at a time on the bit
// pattern (round to nearest even; the scalar tail through bf16_round).
#define MS_ROUND_BF16_ARRAY(NAME, LANES)                       \
  static void NAME(const float* src, float* dst, int64_t n) {  \
    typedef uint32_t vu __attribute__((vector_size(LANES * 4))); \
    int64_t k = 0;                                             \
    for (; k + LANES <= n; k += LANES) {                       \
      vu u;                                                    \
      std::memcpy(&u, src + k, LANES * 4);                     \
      u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;      \
      std::memcpy(dst + k, &u, LANES * 4);                     \
    }                                                          \
    for (; k < n; ++k) dst[k] = bf16_round(src[k]);            \
  }

#ifdef MS_HAVE_BF16_ISA
MS_TARGET_PUSH("avx512f")
MS_ROUND_BF16_ARRAY(round_bf16_array_avx512, 16)
MS_TARGET_POP
#endif
MS_ROUND_BF16_ARRAY(round_bf16_array_portable, 4)

void round_bf16_array(const float* src, float* dst, int64_t n) {
#ifdef MS_HAVE_BF16_ISA
  static const bool avx512 = (__builtin_cpu_init(), __builtin_cpu_supports("avx512f"));
  if (avx512) return round_bf16_array_avx512(src, dst, n);
#endif
  round_bf16_array_portable(src, dst, n);
}

const char* matrix_path_name(MatrixPath p) {
  return p == MatrixPath::AmxBf16      ? "amx-bf16"
         : p == MatrixPath::Avx512Bf16 ? "avx512-bf16"
         : p == MatrixPath::NeonBf16   ? "neon-bf16"
                                       : "none";
}

#ifdef MS_HAVE_BF16_ISA

bool cpu_has_avx512_bf16() {
  static const bool has = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
      return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return ((a >> 5) & 1u) != 0;  // CPUID.(7,1):EAX[5] = AVX512_BF16
  }();
  return has;
}

bool amx_bf16_usable() {
  static const bool usable = [] {
    // The AMX kernels convert with AVX512-BF16, which every AMX CPU has.
    if (!cpu_has_avx512_bf16()) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 22) & 1u) || !((d >> 24) & 1u)) return false;  // EDX[22] AMX-BF16, EDX[24] AMX-TILE
#if defined(__linux__)
    // Linux hands out the 8 KiB tile-data state only on request (5.16+).
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & (3u << 17)) == (3u << 17);  // XCR0: XTILECFG and XTILEDATA enabled
#else
    return false;
#endif
  }();
  return usable;
}

// Intel cores whose VDPBF16PS retires at half the rate of fp32 FMAs, so that
// the same bf16 product runs faster as fp32 FMAs on the widened values:
// Sapphire Rapids (family 6, model 143) and Emerald Rapids (207), the same
// Golden Cove / Raptor Cove core. Measured on Emerald Rapids (2026-12-07):
// 204 GFLOP/s of VDPBF16PS against 406 of fp32 FMA on 2 cores, and the loss
// with bf16 centres, forward + backward, in 159 ms through 'none' against
// 266 ms through 'avx512-bf16' at C = 10⁵ (interleaved, quiet machine).
// (AMD Zen 5 runs VDPBF16PS at twice the fp32 rate.)
bool bf16_dot_half_rate() {
  static const bool half = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    const bool intel = b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "GenuineIntel"
    if (!intel || !__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned family = (a >> 8) & 0xfu, model = ((a >> 4) & 0xfu) | (((a >> 16) & 0xfu) << 4);
    return family == 6 && (model == 143 || model == 207);
  }();
  return half;
}

#else

bool cpu_has_avx512_bf16() { return false; }
bool amx_bf16_usable() { return false; }
bool bf16_dot_half_rate() { return false; }

#endif

MatrixPath best_matrix_path() {
  if (amx_bf16_usable()) return MatrixPath::AmxBf16;
  if (cpu_has_avx512_bf16()) return MatrixPath::Avx512Bf16;
  if (cpu_has_neon_bf16()) return MatrixPath::NeonBf16;
  return MatrixPath::None;
}

namespace {
int matrix_rank(MatrixPath p) {
  return p == MatrixPath::AmxBf16 ? 2 : p == MatrixPath::None ? 0 : 1;
}
}  // namespace

bool matrix_available(MatrixPath p) {
  switch (p) {
    case MatrixPath::AmxBf16: return amx_bf16_usable();
    case MatrixPath::Avx512Bf16: return cpu_has_avx512_bf16();
    case MatrixPath::NeonBf16: return cpu_has_neon_bf16();
    default: return true;
  }
}

MatrixPath auto_matrix_path() {
  const MatrixPath best = best_matrix_path();
  return best == MatrixPath::Avx512Bf16 && bf16_dot_half_rate() ? MatrixPath::None : best;
}

MatrixPath resolve_matrix_path(int requested) {
  if (requested < 0) return auto_matrix_path();
  const MatrixPath asked = (MatrixPath)requested;
  if (matrix_available(asked)) return asked;
  for (MatrixPath p : {MatrixPath::AmxBf16, MatrixPath::Avx512Bf16, MatrixPath::NeonBf16})
    if (matrix_rank(p) <= matrix_rank(asked) && matrix_available(p)) return p;
  return MatrixPath::None;
}

#ifdef MS_HAVE_BF16_ISA
MS_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

namespace {

// 16 floats → their bf16 bit patterns in the low halves of 16 words (RNE,
// the same integer rounding as to_bf16, so every path rounds alike).
inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
}
// Masked load of up to 16 floats (lanes beyond n read as 0).
inline __m512 load_n(const float* p, int n) {
  return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps((__mmask16)((1u << std::max(n, 0)) - 1u), p);
}
inline __mmask16 lanes(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << std::max(n, 0)) - 1u); }

// Fetches the R×32-float output tile at C (row stride ldc) into L1 ahead of
// its stores. Without it, a product whose output is fresh memory waits at
// every tile's stores for the lines to come from DRAM (read for ownership):
// measured on an AMD EPYC (Zen 4), one core, the dŴ product (128×512 from
// K = 128) writing into a 200 MB gradient ran at 128–139 GFLOP/s, at 164–174
// with this, against 199 into an output that stays in L2.
template <int R>
inline void write_intent(float* C, long ldc) {
  for (int r = 0; r < R; ++r) {
    __builtin_prefetch(C + r * ldc, 1, 3);
    __builtin_prefetch(C + r * ldc + 16, 1, 3);
  }
}

// ---- VDPBF16PS GEMM ------------------------------------------------------
// Register tile R×32 (2·R accumulators): per k-pair two 64-byte rows of the
// B panel and R 32-bit broadcasts of A. K blocked by kKC (a panel slice is
// kKC/2 rows × 128 bytes = 16 KiB). Loop order: each R-row strip of A stays in
// L1 while the panels stream past it from L2, and the output is written row
// by row, left to right. Measured against panels outer (a panel in L1, the
// strips streaming), one Zen 4 core, the loss's three products at N = 128,
// d = 512 on operands from L3 and a 200 MB gradient: 176 → 190 GFLOP/s (dŴ
// 167 → 183, dX̂ 175 → 195), and 203 → 207 with everything in cache.
constexpr int kMR = 8;
constexpr int kKC = 256;

// pf: lines of the next block's operand that this call fetches into L2, one
// every kPfPairs k-pairs (see gemm_avx512_bf16).
struct PfLines {
  const char* at;
  int n;
};
constexpr int kPfPairs = 4;

// 16 bf16 values (lanes beyond n: 0) widened to fp32.
inline __m512 widen16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
// c − a·(b·w) for one 16-lane row slice (RowSubBf16).
inline __m512 row_sub(__m512 c, float a, float b, __m512 w) {
  return _mm512_fnmadd_ps(_mm512_set1_ps(a), _mm512_mul_ps(_mm512_set1_ps(b), w), c);
}

// sub: null, or the RowSubBf16 of this tile (w at its first row and column),
// applied before the stores.
template <int R>
inline void dp_micro(int kpairs, const uint16_t* A, long lda, const uint16_t* B, float* C, long ldc, bool acc,
                     int nc, PfLines pf, const RowSubBf16* sub) {
  __m512 c0[R], c1[R];
  const __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16);
  // A fresh output tile (dŴ into the caller's gradient, a cosine tile into the
  // tile cache) is in no cache: fetch its lines now, so that the stores at the
  // end find them instead of stalling on memory (write_intent).
  if (!acc) write_intent<R>(C, ldc);
  for (int r = 0; r < R; ++r) {
    c0[r] = acc ? _mm512_maskz_loadu_ps(m0, C + r * ldc) : _mm512_setzero_ps();
    c1[r] = acc ? _mm512_maskz_loadu_ps(m1, C + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int p = 0; p < kpairs; ++p) {
    if (p % kPfPairs == 0 && pf.n > 0) {
      __builtin_prefetch(pf.at, 0, 2);
      pf.at += 64;
      --pf.n;
    }
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B + p * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B + p * 64 + 32);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * p, 4);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      c0[r] = _mm512_dpbf16_ps(c0[r], a, b0);
      c1[r] = _mm512_dpbf16_ps(c1[r], a, b1);
    }
  }
  if (sub) {
    for (int r = 0; r < R; ++r) {
      const uint16_t* w = sub->w + r * sub->ldw;
      c0[r] = row_sub(c0[r], sub->a[r], sub->b[r], widen16(w, m0));
      c1[r] = row_sub(c1[r], sub->a[r], sub->b[r], widen16(w + 16, m1));
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
  }
}

template <int R>
void dp_micro_rows(int rows, int kpairs, const uint16_t* A, long lda, const uint16_t* B, float* C, long ldc,
                   bool acc, int nc, PfLines pf, const RowSubBf16* sub) {
  if constexpr (R > 1) {
    if (rows < R) return dp_micro_rows<R - 1>(rows, kpairs, A, lda, B, C, ldc, acc, nc, pf, sub);
  }
  dp_micro<R>(kpairs, A, lda, B, C, ldc, acc, nc, pf, sub);
}

// sub applied to a finished M×NN output (the AMX path's; the VDPBF16PS kernel
// applies it in its stores).
void apply_row_sub(int M, int NN, float* C, long ldc, const RowSubBf16& sub) {
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < NN; n += 16) {
      const __mmask16 k = lanes(NN - n);
      float* c = C + (long)m * ldc + n;
      const __m512 w = widen16(sub.w + (long)m * sub.ldw + n, k);
      _mm512_mask_storeu_ps(c, k, row_sub(_mm512_maskz_loadu_ps(k, c), sub.a[m], sub.b[m], w));
    }
  }
}

// The bytes [next, next + next_bytes) are fetched into L2 while the product
// runs, shared out over its micro-kernel calls (as the fp32 gemm_prefetch).
void gemm_avx512_bf16(int M, int NN, int Kp, const uint16_t* A, long lda, const uint16_t* Bp, float* C, long ldc,
                      bool accumulate, const void* next, size_t next_bytes, const RowSubBf16* sub) {
  const long calls = (long)((Kp + kKC - 1) / kKC) * ((NN + 31) / 32) * ((M + kMR - 1) / kMR);
  const long lines = next ? (long)((next_bytes + 63) / 64) : 0;
  const long per_call = calls > 0 ? (lines + calls - 1) / calls : 0;
  const char* pf = (const char*)next;
  long pf_left = lines;
  for (int k0 = 0; k0 < Kp; k0 += kKC) {
    const int kc = std::min(kKC, Kp - k0);
    const bool acc = accumulate || k0 > 0;
    for (int m0 = 0; m0 < M; m0 += kMR) {
      for (int n0 = 0; n0 < NN; n0 += 32) {
        const uint16_t* panel = Bp + (long)(n0 / 32) * 32 * Kp + (long)k0 * 32;
        const int n_pf = (int)std::min<long>({per_call, pf_left, (kc / 2 + kPfPairs - 1) / kPfPairs});
        RowSubBf16 tile_sub{nullptr, 0, nullptr, nullptr};
        if (sub) tile_sub = {sub->w + (long)m0 * sub->ldw + n0, sub->ldw, sub->a + m0, sub->b + m0};
        dp_micro_rows<kMR>(std::min(kMR, M - m0), kc / 2, A + (long)m0 * lda + k0, lda, panel,
                           C + (long)m0 * ldc + n0, ldc, acc, NN - n0, {pf, n_pf},
                           sub && k0 + kc >= Kp ? &tile_sub : nullptr);
        pf += 64L * n_pf;
        pf_left -= n_pf;
      }
    }
  }
}

}  // namespace

void pack_rows_bf16(const float* src, long lds, int M, int K, int Kp, uint16_t* dst, long ldd) {
  for (int m = 0; m < M; ++m) {
    const float* s = src + (long)m * lds;
    uint16_t* o = dst + (long)m * ldd;
    for (int k = 0; k < Kp; k += 16) {
      const __m512i b = bf16_bits(load_n(s + k, K - k));
      _mm256_storeu_si256((__m256i*)(o + k), _mm512_cvtepi32_epi16(b));
    }
  }
}

namespace {
// The squares of 16 values (fp32, exact in double) added into a (lanes k mod
// 16 < 8) and b (the other eight) by double FMAs; sq_total adds the lanes in
// the order bf16_gemm.h gives for sumsq_bf16.
inline void sq_acc(__m512 v, __m512d& a, __m512d& b) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  a = _mm512_fmadd_pd(lo, lo, a);
  b = _mm512_fmadd_pd(hi, hi, b);
}
inline double sq_total(__m512d a, __m512d b) {
  alignas(64) double t[8];
  _mm512_store_pd(t, _mm512_add_pd(a, b));
  return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}
}  // namespace

void pack_rows_bf16_sumsq(const float* src, long lds, int M, int K, int Kp, uint16_t* dst, long ldd, double* sq) {
  for (int m = 0; m < M; ++m) {
    const float* s = src + (long)m * lds;
    uint16_t* o = dst + (long)m * ldd;
    __m512d a = _mm512_setzero_pd(), b = _mm512_setzero_pd();
    for (int k = 0; k < Kp; k += 16) {
      const __m512i bits = bf16_bits(load_n(s + k, K - k));
      _mm256_storeu_si256((__m256i*)(o + k), _mm512_cvtepi32_epi16(bits));
      sq_acc(_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)), a, b);
    }
    sq[m] = sq_total(a, b);
  }
}

double sumsq_bf16(const uint16_t* v, int K) {
  __m512d a = _mm512_setzero_pd(), b = _mm512_setzero_pd();
  for (int k = 0; k < K; k += 16) sq_acc(widen16(v + k, lanes(K - k)), a, b);
  return sq_total(a, b);
}

void pack_rows_bf16_t(const float* src, long sk, int M, int K, int Kp, uint16_t* dst, long ldd) {
  // Words of two source rows (k, k+1), vectorised along m, then scattered
  // into the rows of dst: the transpose of a 32-bit (Kp/2)×M matrix.
  std::vector<uint32_t> words((size_t)M);
  for (int k = 0; k < Kp; k += 2) {
    for (int m = 0; m < M; m += 16) {
      const int n = M - m;
      const __m512i lo = k < K ? bf16_bits(load_n(src + (long)k * sk + m, n)) : _mm512_setzero_si512();
      const __m512i hi = k + 1 < K ? bf16_bits(load_n(src + (long)(k + 1) * sk + m, n)) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(words.data() + m, lanes(n), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    for (int m = 0; m < M; ++m) std::memcpy(dst + (long)m * ldd + k, &words[m], 4);
  }
}

void pack_pairs_bf16(const float* src, long sk, int K, int NN, int Kp, uint16_t* dst) {
  const int Np = (int)round_up(NN, kBf16NPad);
  for (int n0 = 0; n0 < Np; n0 += 32) {
    uint16_t* panel = dst + (long)(n0 / 32) * 32 * Kp;
    for (int k = 0; k < Kp; k += 2) {
      for (int h = 0; h < 32; h += 16) {
        const int n = NN - n0 - h;
        const __m512i lo = k < K ? bf16_bits(load_n(src + (long)k * sk + n0 + h, n)) : _mm512_setzero_si512();
        const __m512i hi = k + 1 < K ? bf16_bits(load_n(src + (long)(k + 1) * sk + n0 + h, n)) : _mm512_setzero_si512();
        _mm512_storeu_si512(panel + (long)k * 32 + 2 * h, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
}

void pack_pairs_bf16_rows(const uint16_t* src, long sk, int K, int NN, int Kp, uint16_t* dst) {
  const int Np = (int)round_up(NN, kBf16NPad);
  auto row = [&](int k, int n0, int n) {  // 16 bf16 of row k widened to 32-bit words (0 past NN or K)
    if (k >= K) return _mm512_setzero_si512();
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes(n), src + (long)k * sk + n0));
  };
  for (int n0 = 0; n0 < Np; n0 += 32) {
    uint16_t* panel = dst + (long)(n0 / 32) * 32 * Kp;
    for (int k = 0; k < Kp; k += 2) {
      for (int h = 0; h < 32; h += 16) {
        const int n = NN - n0 - h;
        const __m512i lo = row(k, n0 + h, n), hi = row(k + 1, n0 + h, n);
        _mm512_storeu_si512(panel + (long)k * 32 + 2 * h, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
}

MS_TARGET_POP

// ---- AMX GEMM (TDPBF16PS): amx_gemm.inc ------------------------------------
MS_TARGET_PUSH("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace {
#include "amx_gemm.inc"
}  // namespace

MS_TARGET_POP

void bf16_gemm(MatrixPath path, int M, int NN, int Kp, const uint16_t* A, long lda, const uint16_t* Bp, float* C,
               long ldc, bool accumulate, const void* next, size_t next_bytes, const RowSubBf16* sub) {
  if (path == MatrixPath::AmxBf16) {
    gemm_amx_bf16(M, NN, Kp, A, lda, Bp, C, ldc, accumulate);
    if (sub) apply_row_sub(M, NN, C, ldc, *sub);
    return;
  }
  gemm_avx512_bf16(M, NN, Kp, A, lda, Bp, C, ldc, accumulate, next, next_bytes, sub);
}

#else  // no x86 matrix instructions in this build: the packing as scalar loops (for NeonBf16).

void pack_rows_bf16(const float* src, long lds, int M, int K, int Kp, uint16_t* dst, long ldd) {
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < Kp; ++k) dst[(long)m * ldd + k] = k < K ? to_bf16(src[(long)m * lds + k]) : 0;
}

double sumsq_bf16(const uint16_t* v, int K) {
  double acc[16] = {};
  for (int k = 0; k < K; ++k) {
    const uint32_t u = (uint32_t)v[k] << 16;
    float f;
    std::memcpy(&f, &u, 4);
    acc[k % 16] = std::fma((double)f, (double)f, acc[k % 16]);
  }
  double t[8];
  for (int i = 0; i < 8; ++i) t[i] = acc[i] + acc[i + 8];
  return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

void pack_rows_bf16_sumsq(const float* src, long lds, int M, int K, int Kp, uint16_t* dst, long ldd, double* sq) {
  pack_rows_bf16(src, lds, M, K, Kp, dst, ldd);
  for (int m = 0; m < M; ++m) sq[m] = sumsq_bf16(dst + (long)m * ldd, K);
}

void pack_rows_bf16_t(const float* src, long sk, int M, int K, int Kp, uint16_t* dst, long ldd) {
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < Kp; ++k) dst[(long)m * ldd + k] = k < K ? to_bf16(src[(long)k * sk + m]) : 0;
}

void pack_pairs_bf16(const float* src, long sk, int K, int NN, int Kp, uint16_t* dst) {
  const int Np = (int)round_up(NN, kBf16NPad);
  for (int n = 0; n < Np; ++n)
    for (int k = 0; k < Kp; ++k)
      dst[(long)(n / 32) * 32 * Kp + (long)(k / 2) * 64 + 2 * (n % 32) + (k & 1)] =
          (k < K && n < NN) ? to_bf16(src[(long)k * sk + n]) : 0;
}

void pack_pairs_bf16_rows(const uint16_t* src, long sk, int K, int NN, int Kp, uint16_t* dst) {
  const int Np = (int)round_up(NN, kBf16NPad);
  for (int n = 0; n < Np; ++n)
    for (int k = 0; k < Kp; ++k)
      dst[(long)(n / 32) * 32 * Kp + (long)(k / 2) * 64 + 2 * (n % 32) + (k & 1)] =
          (k < K && n < NN) ? src[(long)k * sk + n] : 0;
}

void bf16_gemm(MatrixPath path, int M, int NN, int Kp, const uint16_t* A, long lda, const uint16_t* Bp, float* C,
               long ldc, bool accumulate, const void* next, size_t next_bytes, const RowSubBf16* sub) {
  (void)next, (void)next_bytes;
  // Only NeonBf16 can be selected here (best_matrix_path: cpu_has_neon_bf16),
  // and only on aarch64 (elsewhere, WebAssembly included, cpu_has_neon_bf16 is false).
#if defined(__aarch64__)
  if (path != MatrixPath::NeonBf16) return;
  gemm_neon_bf16(M, NN, Kp, A, lda, Bp, C, ldc, accumulate);
  if (!sub) return;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < NN; ++n) {
      float w;
      const uint32_t u = (uint32_t)sub->w[(long)m * sub->ldw + n] << 16;
      std::memcpy(&w, &u, 4);
      float& c = C[(long)m * ldc + n];
      c = std::fma(-sub->a[m], sub->b[m] * w, c);
    }
#else
  (void)sub;
  (void)path, (void)M, (void)NN, (void)Kp, (void)A, (void)lda, (void)Bp, (void)C, (void)ldc, (void)accumulate;
#endif
}

#endif

}  // namespace ms
