// sgd_cpu.cc — see sgd_cpu.h.
#include "sgd_cpu.h"

#include "../margin_math.h"  // the stochastic rounding (bf16_round_stochastic), bf16_bits_to_float
#include "simd_dispatch.h"  // best_simd_width
#include "target_region.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ms {
namespace {

// w ← w − lr·b, b ← μ·b + (g + λ·w), per element.
void sgd_momentum_row(float* __restrict w, float* __restrict b, const float* __restrict g, float momentum,
                      float weight_decay, float lr, int64_t d) {
  for (int64_t q = 0; q < d; ++q) {
    const float gq = g[q] + weight_decay * w[q];
    const float bq = momentum * b[q] + gq;
    b[q] = bq;
    w[q] = w[q] - lr * bq;
  }
}

// The same for bf16 centres, rounded stochastically: element e = e0 + q takes
// lane e mod 4 of the hash of group e/4 (stochastic_group_bits), e0 a multiple
// of 4. One hash per four elements, and no branch in the element loop; the
// arithmetic and the bits are the general loop's. Where the CPU has AVX-512
// (BW, DQ: 16-bit lanes and 64-bit multiplies for the hash) an AVX-512 version
// written with intrinsics runs instead (below); the baseline loop alone was 19 %
// of a bf16 MarginHead.step's CPU samples on the Xeon (Emerald Rapids).
// Contraction into FMAs is off in the AVX-512 version (GCC's optimize
// attribute), so that both give the same bits (the x86-64 baseline has no FMA;
// elsewhere the baseline loop contracts as the general loop does). Clang has no
// per-function switch that holds under -ffp-contract=fast (it ignores the
// FP_CONTRACT pragma then, and clang 14 lacks __builtin_arithmetic_fence), so a
// clang build keeps the baseline loop.
#if defined(__GNUC__) && !defined(__clang__)
#define MS_NO_CONTRACT_ATTR __attribute__((optimize("fp-contract=off")))
#else
#define MS_NO_CONTRACT_ATTR
#endif

void sgd_momentum_row_bf16_base(uint16_t* __restrict w, float* __restrict b, const float* __restrict g,
                                float momentum, float weight_decay, float lr, int64_t d, uint64_t key,
                                uint64_t group0) {
  for (int64_t q4 = 0; q4 < d / 4; ++q4) {
    const uint64_t bits = stochastic_group_bits(key, group0 + (uint64_t)q4);
    for (int l = 0; l < 4; ++l) {
      const int64_t q = 4 * q4 + l;
      const float wq = bf16_bits_to_float(w[q]);
      const float gq = g[q] + weight_decay * wq;
      const float bq = momentum * b[q] + gq;
      b[q] = bq;
      w[q] = bf16_round_with_bits(wq - lr * bq, stochastic_lane(bits, (uint64_t)l));
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MS_SGD_AVX512 1
MS_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq")
// GCC 12 warns, wrongly, that the intrinsics' internal _mm512_undefined_*
// values may be used uninitialised once the optimize attribute is on.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Sixteen elements (four hash groups) per iteration, written with intrinsics:
// GCC's vectorisation of the loop above moves the 16-bit random lanes one by
// one (vpextrw/vpinsrw, a dozen instructions per element). Here the four
// SplitMix64 outputs are one 256-bit vector whose sixteen 16-bit lanes are, in
// order, the random bits of the sixteen elements (element 4g + l takes bits
// 16l… of group g's hash: little-endian lane 4g + l), widened to 32 bits and
// added to the new values' bits. The same operations as the body, in the same
// order and without contraction, so the same bits as the loop above. Measured on AMD EPYC
// (Zen 4, 2 threads), C = 10⁵, d = 512, bf16 centres: this function 11.6 % of
// MarginHead.step's CPU samples with GCC's loop (docs/cpu.md has the step
// ratio with each).
MS_NO_CONTRACT_ATTR void sgd_momentum_row_bf16_avx512(uint16_t* __restrict w, float* __restrict b,
                                                      const float* __restrict g, float momentum,
                                                      float weight_decay, float lr, int64_t d, uint64_t key,
                                                      uint64_t group0) {
  const __m512 vmom = _mm512_set1_ps(momentum), vwd = _mm512_set1_ps(weight_decay), vlr = _mm512_set1_ps(lr);
  const __m256i golden = _mm256_set1_epi64x((long long)0x9e3779b97f4a7c15ULL);
  const __m256i mul1 = _mm256_set1_epi64x((long long)0xbf58476d1ce4e5b9ULL);
  const __m256i mul2 = _mm256_set1_epi64x((long long)0x94d049bb133111ebULL);
  const __m256i vkey = _mm256_set1_epi64x((long long)key);
  __m256i group = _mm256_add_epi64(_mm256_set1_epi64x((long long)group0), _mm256_setr_epi64x(0, 1, 2, 3));
  const __m256i four = _mm256_set1_epi64x(4);
  int64_t q = 0;
  for (; q + 16 <= d; q += 16) {
    // mix64(key + group·golden), four groups at once (stochastic_group_bits).
    __m256i z = _mm256_add_epi64(vkey, _mm256_mullo_epi64(group, golden));
    z = _mm256_mullo_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), mul1);
    z = _mm256_mullo_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), mul2);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
    group = _mm256_add_epi64(group, four);
    const __m512i r = _mm512_cvtepu16_epi32(z);
    const __m512i wbits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(w + q)));
    const __m512 wq = _mm512_castsi512_ps(_mm512_slli_epi32(wbits, 16));
    const __m512 gq = _mm512_add_ps(_mm512_loadu_ps(g + q), _mm512_mul_ps(vwd, wq));
    const __m512 bq = _mm512_add_ps(_mm512_mul_ps(vmom, _mm512_loadu_ps(b + q)), gq);
    _mm512_storeu_ps(b + q, bq);
    const __m512 nw = _mm512_sub_ps(wq, _mm512_mul_ps(vlr, bq));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(nw), r), 16);
    _mm256_storeu_si256((__m256i*)(w + q), _mm512_cvtepi32_epi16(rounded));
  }
  // The last d mod 16 elements (whole groups: d is a multiple of 4).
  if (q < d) sgd_momentum_row_bf16_base(w + q, b + q, g + q, momentum, weight_decay, lr, d - q, key, group0 + q / 4);
}
#pragma GCC diagnostic pop
MS_TARGET_POP
#endif

void sgd_momentum_row_bf16(uint16_t* w, float* b, const float* g, float momentum, float weight_decay, float lr,
                           int64_t d, uint64_t key, uint64_t group0) {
#ifdef MS_SGD_AVX512
  // The dispatch's AVX-512 level (F, VL, DQ) and the 16-bit lanes (BW).
  static const bool avx512 = best_simd_width() == kSimdAvx512 && __builtin_cpu_supports("avx512bw");
  if (avx512) return sgd_momentum_row_bf16_avx512(w, b, g, momentum, weight_decay, lr, d, key, group0);
#endif
  sgd_momentum_row_bf16_base(w, b, g, momentum, weight_decay, lr, d, key, group0);
}

}  // namespace

void CpuSgd::apply(int64_t j0, int64_t bc, const float* g) const {
  for (int64_t j = 0; j < bc; ++j) {
    const int64_t r = class_index ? class_index[j0 + j] : j0 + j;
    float* wr = w ? w + r * d : nullptr;
    uint16_t* hr = w_bf16 ? w_bf16 + r * d : nullptr;
    float* br = buf ? buf + r * d : nullptr;
    const float* gr = g ? g + j * d : nullptr;
    if (wr && br && gr) {
      // fp32 centres with momentum (the common case): the same arithmetic as
      // below, element by element, in a loop without branches, which the
      // compiler vectorises (the general loop stays scalar). Measured on the
      // Xeon (Emerald Rapids), one thread, CPU time, alternating calls:
      // MarginHead.step / lossAndGrad at C = 10⁵, 1.35 with the scalar loop,
      // 1.08–1.15 with this one (medians of 7 and 9 pairs, a loaded machine).
      sgd_momentum_row(wr, br, gr, momentum, weight_decay, lr, d);
      continue;
    }
    const uint64_t element0 = (uint64_t)(row_offset + r) * (uint64_t)d;
    if (hr && br && gr && d % 4 == 0 && element0 % 4 == 0) {
      // bf16 centres with momentum: the loop above's counterpart. Measured on
      // the Xeon (Emerald Rapids), 2 threads, alternating calls: MarginHead.step /
      // lossAndGrad at C = 2·10⁴, bf16 centres, 1.18 with the general loop.
      sgd_momentum_row_bf16(hr, br, gr, momentum, weight_decay, lr, d, round_key, element0 >> 2);
      continue;
    }
    uint64_t group = ~0ULL, bits = 0;  // the hash of the current group of four elements
    for (int64_t q = 0; q < d; ++q) {
      const float wq = hr ? bf16_bits_to_float(hr[q]) : wr[q];
      float gq = (gr ? gr[q] : 0.0f) + weight_decay * wq;
      if (br) {
        br[q] = momentum * br[q] + gq;
        gq = br[q];
      }
      const float nw = wq - lr * gq;
      if (hr) {
        const uint64_t e = element0 + (uint64_t)q;
        if (e >> 2 != group) {
          group = e >> 2;
          bits = stochastic_group_bits(round_key, group);
        }
        hr[q] = bf16_round_with_bits(nw, stochastic_lane(bits, e));
      } else {
        wr[q] = nw;
      }
    }
  }
}

std::function<void(int64_t, int64_t, const float*)> sgd_block_update(const CpuSgd* sgd) {
  return [sgd](int64_t j0, int64_t bc, const float* g) { sgd->apply(j0, bc, g); };
}

}  // namespace ms
