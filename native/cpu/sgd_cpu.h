// sgd_cpu.h — SGD with momentum and weight decay on the class centres, applied
// by the CPU loss block by block inside the backward pass (LossProblem::block_update),
// so that no C×d gradient is ever stored. PyTorch's torch.optim.SGD with
// dampening 0 and no Nesterov:
//   g ← g + λ·w;  b ← μ·b + g;  w ← w − lr·b      (b starts at 0)
// The centres are fp32 (w), or bf16 (w_bf16: MarginHead with weightsDtype
// 'bfloat16'), in which case the arithmetic is fp32 on the widened value and
// the new value is rounded stochastically (bf16_round_stochastic in
// margin_math.h, the same bits as the CUDA head's); the momentum stays fp32.
#pragma once

#include <cstdint>
#include <functional>

namespace ms {

struct CpuSgd {
  float lr = 0, momentum = 0, weight_decay = 0;
  float* w = nullptr;          // fp32 centres (C_total×d), updated in place
  uint16_t* w_bf16 = nullptr;  // or bf16 centres (C_total×d); both null = no update
  float* buf = nullptr;        // momentum buffer (C_total×d), null when μ = 0
  // Problem class j is row class_index[j] of w (LossProblem::class_index); null = row j.
  const int32_t* class_index = nullptr;
  int64_t d = 0;
  // bf16 only: stochastic_round_key(seed, step), and the global row of local row 0 (a shard's offset).
  uint64_t round_key = 0;
  int64_t row_offset = 0;

  bool on() const { return w != nullptr || w_bf16 != nullptr; }
  // Updates the rows of problem classes [j0, j0 + bc) with their gradient
  // rows g (bc×d), or with a zero gradient where g is null (a block that
  // gradient filtering skipped: weight decay and momentum still apply).
  void apply(int64_t j0, int64_t bc, const float* g) const;
};

// The LossProblem::block_update hook that applies `sgd`; it points at `sgd`,
// which must outlive the call.
std::function<void(int64_t, int64_t, const float*)> sgd_block_update(const CpuSgd* sgd);

}  // namespace ms
