// sgd_cpu.cc — see sgd_cpu.h.
#include "sgd_cpu.h"

#include "../margin_math.h"  // the stochastic rounding (bf16_round_stochastic), bf16_bits_to_float
#include "simd_dispatch.h"  // best_simd_width
#include "target_region.h"

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
// arithmetic and the bits are the general loop's. The body is compiled twice:
// for the baseline ISA and, where the CPU has AVX-512 (BW, DQ: 16-bit lanes and
// 64-bit multiplies for the hash), for AVX-512, which the SSE2 build runs at a
// fraction of the speed (per-element 16-bit extracts and stores); measured on
// the Xeon (Emerald Rapids): CpuSgd::apply was 19 % of a bf16 MarginHead.step's
// CPU samples with the baseline build alone. Contraction into FMAs is off in
// the AVX-512 body (GCC's optimize attribute), so that both give the same bits
// (the x86-64 baseline has no FMA; elsewhere the baseline body contracts as
// the general loop does). Clang has no per-function switch that holds under
// -ffp-contract=fast (it ignores the FP_CONTRACT pragma then, and clang 14
// lacks __builtin_arithmetic_fence), so a clang build keeps the baseline body.
#if defined(__GNUC__) && !defined(__clang__)
#define MS_NO_CONTRACT_ATTR __attribute__((optimize("fp-contract=off")))
#else
#define MS_NO_CONTRACT_ATTR
#endif

#define MS_SGD_ROW_BF16_BODY                                                                         \
  for (int64_t q4 = 0; q4 < d / 4; ++q4) {                                                           \
    const uint64_t bits = stochastic_group_bits(key, group0 + (uint64_t)q4);                         \
    for (int l = 0; l < 4; ++l) {                                                                    \
      const int64_t q = 4 * q4 + l;                                                                  \
      const float wq = bf16_bits_to_float(w[q]);                                                     \
      const float gq = g[q] + weight_decay * wq;                                                     \
      const float bq = momentum * b[q] + gq;                                                         \
      b[q] = bq;                                                                                     \
      w[q] = bf16_round_with_bits(wq - lr * bq, stochastic_lane(bits, (uint64_t)l));                 \
    }                                                                                                \
  }

void sgd_momentum_row_bf16_base(uint16_t* __restrict w, float* __restrict b, const float* __restrict g,
                                float momentum, float weight_decay, float lr, int64_t d, uint64_t key,
                                uint64_t group0) {
  MS_SGD_ROW_BF16_BODY
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MS_SGD_AVX512 1
MS_TARGET_PUSH("avx512f,avx512bw,avx512vl,avx512dq")
MS_NO_CONTRACT_ATTR void sgd_momentum_row_bf16_avx512(uint16_t* __restrict w, float* __restrict b,
                                                      const float* __restrict g, float momentum,
                                                      float weight_decay, float lr, int64_t d, uint64_t key,
                                                      uint64_t group0) {
  MS_SGD_ROW_BF16_BODY
}
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
