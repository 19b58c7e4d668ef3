// loss_problem.h — the contract every backend implements: the problem a loss
// call describes (LossProblem), what it writes (LossOutputs), the error a
// caller can fix (InputError, with the one wording of the norm rule) and the
// defaults a caller that names no value gets. The CPU backend (cpu/loss_cpu.h),
// the CUDA backend (cuda/loss_cuda.h, cuda/head_cuda.h) and the N-API layer
// (napi/) include it; the element-wise math it names lives in margin_math.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "margin_math.h"

namespace ms {

// Logit scale s where a caller gives none (lib/ reads it through _defaults()).
constexpr float kDefaultScale = 64.0f;

// Inputs are borrowed (never copied): X is N×d, W is C×d, both row-major.
struct LossProblem {
  const float* x = nullptr;
  const float* w = nullptr;
  const int32_t* labels = nullptr;     // N entries in [−1, C); −1 = ignored row
  const float* row_margins = nullptr;  // N entries for the elastic kinds, else null
  int64_t n = 0, c = 0, d = 0;
  MarginParams margin{};
  // Gradient filtering: a class block whose every softmax probability is
  // below this value (and that holds no target) is skipped in the backward
  // pass. 0 disables it (exact gradients).
  float grad_filter = 0.0f;
  // bfloat16 class centres: W is rounded to bf16 (round-to-nearest-even) as
  // it is read, and the three products take bf16 operands (X̂, W, G) with fp32
  // accumulation on the matrix path of CpuOptions::matrix; the target cosine,
  // norms and chain rule stay fp32 (fused_loss_cpu.cc).
  bool weights_bf16 = false;
  // MarginHead with bf16 centres on the CPU: W is stored in bf16 (C×d, the
  // upper halves of fp32 values) and read here instead of w, which is then
  // null; implies weights_bf16. Widening bf16 to fp32 is exact, so the call
  // computes what it would from the fp32 array of the same values.
  const uint16_t* w_bf16 = nullptr;

  // ---- Used by MarginHead (class sampling, sharding, fused update) ----
  // Class j of the problem is row class_index[j] of w (c entries, distinct);
  // null = row j. Lets a sampled subset of centres be used without a copy.
  const int32_t* class_index = nullptr;
  // Label −2 marks a row that counts (in V) but whose target lives in another
  // shard. valid_rows > 0 overrides V (the global count when sharded).
  int64_t valid_rows = 0;
  // If set, the backward uses these per-row log-sum-exps (merged over all
  // shards) instead of this problem's own.
  const float* lse_in = nullptr;
  // With lse_in: the target's p − 1 per row (merged over shards, computed
  // from the target-free sum; see target_terms), used where the target is local.
  const float* target_pm1_in = nullptr;
  // If set, called by the owning thread for each class block after its
  // backward work, with the block's gradient rows (bc×d, with respect to the
  // raw centres) or null when gradient filtering skipped the block (zero
  // gradient). out.grad_w is then not written (may be null). The callback may
  // modify the block's W rows: nothing reads them afterwards.
  std::function<void(int64_t j0, int64_t bc, const float* grad)> block_update;
};

// Outputs are written, never read. grad_x null = forward only; the backward
// needs grad_w or problem.block_update.
struct LossOutputs {
  float* per_sample = nullptr;  // N (0 for ignored rows and rows with label −2)
  // Optional per-row online-LSE state of this problem's classes and the
  // target logit (NaN where the target is not among them): the partial
  // statistics that shards exchange.
  float* row_max = nullptr;
  float* row_sumexp = nullptr;
  float* row_sumexp_other = nullptr;  // the same sum without the target class
  float* row_target = nullptr;
  // Optional: cos θ_y, the unmargined target cosine of each row (NaN where
  // the row is ignored or its target is not among this problem's classes),
  // so a training loop can follow θ_y without reading the centres.
  float* row_target_cos = nullptr;
  float* grad_x = nullptr;      // N×d
  float* grad_w = nullptr;      // C×d
  double loss = 0.0;            // mean over non-ignored rows (0 if none)
  int64_t valid_rows = 0;
  int64_t skipped_blocks = 0;   // blocks skipped by gradient filtering
  int64_t total_blocks = 0;
};

// Thrown for problems the caller can fix (bad values found while streaming).
struct InputError {
  std::string message;
};

// The one wording of the norm rule's error (docs/math.md: rows with a
// non-finite value or a norm above kMaxRowNormText are refused), for both backends.
inline InputError bad_rows_error(const char* what, int64_t row) {
  return InputError{std::string("Expected finite values with row norms at most ") + kMaxRowNormText + " for " + what +
                    " but received a non-finite value or a larger norm in row " + std::to_string(row)};
}

}  // namespace ms
