// topk_cpu.h — see topk_cpu.cc.
#pragma once
#include <cstdint>

namespace ms {
// classes/scores: N×k, each row sorted by descending cosine (−1 / −inf past C).
// The centres are fp32 (w), or bf16 (w_bf16, MarginHead's bf16 storage; w null).
void cpu_topk(const float* x, const float* w, const uint16_t* w_bf16, int64_t N, int64_t C, int64_t D, int k, int threads, int simd,
              int32_t* classes, float* scores);
}  // namespace ms
