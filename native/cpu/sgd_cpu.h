// sgd_cpu.h — SGD with momentum and weight decay on the class centres, applied
// by the CPU loss block by block inside the backward pass (LossProblem::block_update),
// so that no C×d gradient is ever stored. PyTorch's torch.optim.SGD with
// dampening 0 and no Nesterov:
//   g ← g + λ·w;  b ← μ·b + g;  w ← w − lr·b      (b starts at 0)
#pragma once

#include <cstdint>
#include <functional>

namespace ms {

struct CpuSgd {
  float lr = 0, momentum = 0, weight_decay = 0;
  float* w = nullptr;    // the centres (C_total×d), updated in place; null = no update
  float* buf = nullptr;  // momentum buffer (C_total×d), null when μ = 0
  // Problem class j is row class_index[j] of w (LossProblem::class_index); null = row j.
  const int32_t* class_index = nullptr;
  int64_t d = 0;

  // Updates the rows of problem classes [j0, j0 + bc) with their gradient
  // rows g (bc×d), or with a zero gradient where g is null (a block that
  // gradient filtering skipped: weight decay and momentum still apply).
  void apply(int64_t j0, int64_t bc, const float* g) const;
};

// The LossProblem::block_update hook that applies `sgd`; it points at `sgd`,
// which must outlive the call.
std::function<void(int64_t, int64_t, const float*)> sgd_block_update(const CpuSgd* sgd);

}  // namespace ms
