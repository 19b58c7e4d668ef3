// sgd_cpu.cc — see sgd_cpu.h.
#include "sgd_cpu.h"

#include "../margin_math.h"  // the stochastic rounding (bf16_round_stochastic), bf16_bits_to_float

namespace ms {

void CpuSgd::apply(int64_t j0, int64_t bc, const float* g) const {
  for (int64_t j = 0; j < bc; ++j) {
    const int64_t r = class_index ? class_index[j0 + j] : j0 + j;
    float* wr = w ? w + r * d : nullptr;
    uint16_t* hr = w_bf16 ? w_bf16 + r * d : nullptr;
    float* br = buf ? buf + r * d : nullptr;
    const float* gr = g ? g + j * d : nullptr;
    const uint64_t element0 = (uint64_t)(row_offset + r) * (uint64_t)d;
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
