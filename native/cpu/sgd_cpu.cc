// sgd_cpu.cc — see sgd_cpu.h.
#include "sgd_cpu.h"

namespace ms {

void CpuSgd::apply(int64_t j0, int64_t bc, const float* g) const {
  for (int64_t j = 0; j < bc; ++j) {
    const int64_t r = class_index ? class_index[j0 + j] : j0 + j;
    float* wr = w + r * d;
    float* br = buf ? buf + r * d : nullptr;
    const float* gr = g ? g + j * d : nullptr;
    for (int64_t q = 0; q < d; ++q) {
      float gq = (gr ? gr[q] : 0.0f) + weight_decay * wr[q];
      if (br) {
        br[q] = momentum * br[q] + gq;
        gq = br[q];
      }
      wr[q] -= lr * gq;
    }
  }
}

std::function<void(int64_t, int64_t, const float*)> sgd_block_update(const CpuSgd* sgd) {
  return [sgd](int64_t j0, int64_t bc, const float* g) { sgd->apply(j0, bc, g); };
}

}  // namespace ms
