// gemm_ceiling.h — see gemm_ceiling.cc.
#pragma once
#include <cstdint>

namespace ms {
// Seconds for the forward product (and, if backward, the two backward
// products) over all class blocks of X (N×d) and W (C×d).
double products_seconds(const float* x, const float* w, int64_t N, int64_t C, int64_t D, int threads, int simd,
                        bool backward);
}  // namespace ms
