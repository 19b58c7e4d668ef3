// loss_cpu.h — the CPU backend's entry points. The problem it solves and the
// outputs it writes are the contract shared with the CUDA backend (../loss_problem.h).
#pragma once

#include <cstddef>

#include "../loss_problem.h"

namespace ms {

// Bytes of cosine tiles kept between the passes where a caller gives no
// workspaceBytes (lib/ reads it through _defaults()): every tile up to
// C ≈ 2.6·10⁵ at N = 128, and a quarter of them at C = 10⁶, where the loss
// then needs about 140 MiB beyond its inputs and outputs (docs/cpu.md).
constexpr size_t kDefaultWorkspaceBytes = size_t(128) << 20;

struct CpuOptions {
  int threads = 0;                                   // 0 = all hardware threads
  size_t workspace_bytes = kDefaultWorkspaceBytes;   // cosine tiles kept between passes
  int simd = -1;                                     // −1 best available, 0 portable, 8 AVX2, 16 AVX-512
  // With weights_bf16: the bf16 product path (MatrixPath in bf16_gemm.h),
  // −1 the best available, 0 none (rounded operands, fp32 kernels), 1
  // AVX512-BF16, 2 AMX-BF16; a path the CPU lacks falls back to the best below.
  int matrix = -1;
};

void cpu_loss(const LossProblem& p, LossOutputs& out, const CpuOptions& opt);

// Description of the CPU backend for deviceInfo(): best SIMD width in floats
// (16 AVX-512, 8 AVX2+FMA, 1 portable), its name, and the thread count used.
int cpu_simd_width(int requested);
const char* cpu_simd_name(int width);
int cpu_default_threads();

}  // namespace ms
