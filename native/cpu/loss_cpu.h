// loss_cpu.h — the CPU backend's entry points and the problem description
// shared by every backend (the CUDA backend takes the same LossProblem).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "../margin_math.h"

namespace ms {

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

struct CpuOptions {
  int threads = 0;                         // 0 = all hardware threads
  size_t workspace_bytes = 64u << 20;      // cosine tiles kept between passes
  int simd = -1;                           // −1 best available, 0 portable, 8 AVX2, 16 AVX-512
  // With weights_bf16: the bf16 product path (MatrixPath in bf16_gemm.h),
  // −1 the best available, 0 none (rounded operands, fp32 kernels), 1
  // AVX512-BF16, 2 AMX-BF16; a path the CPU lacks falls back to the best below.
  int matrix = -1;
};

// Thrown for problems the caller can fix (bad values found while streaming).
struct InputError {
  std::string message;
};

// The one wording of the norm rule's error (docs/math.md: rows with a
// non-finite value or a norm above 1e30 are refused), for both backends.
inline InputError bad_rows_error(const char* what, int64_t row) {
  return InputError{std::string("Expected finite values with row norms at most 1e30 for ") + what +
                    " but received a non-finite value or a larger norm in row " + std::to_string(row)};
}

void cpu_loss(const LossProblem& p, LossOutputs& out, const CpuOptions& opt);

// Description of the CPU backend for deviceInfo(): best SIMD width in floats
// (16 AVX-512, 8 AVX2+FMA, 1 portable), its name, and the thread count used.
int cpu_simd_width(int requested);
const char* cpu_simd_name(int width);
int cpu_default_threads();

}  // namespace ms
