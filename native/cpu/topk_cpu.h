// topk_cpu.h — see topk_cpu.cc.
#pragma once
#include <cstdint>

namespace ms {
// classes/scores: N×k, each row sorted by descending cosine (−1 / −inf past C).
void cpu_topk(const float* x, const float* w, int64_t N, int64_t C, int64_t D, int k, int threads, int simd,
              int32_t* classes, float* scores);
}  // namespace ms
