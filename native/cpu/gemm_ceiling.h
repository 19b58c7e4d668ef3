// gemm_ceiling.h — see gemm_ceiling.cc.
#pragma once
#include <cstdint>

namespace ms {
// Seconds for the forward product (and, if backward, the two backward
// products) over all class blocks of X (N×d) and W (C×d). matrix: −2 for the
// fp32 products (kernel set `simd`); otherwise a MatrixPath code (−1: auto) for
// the bf16 products of weightsDtype 'bfloat16' on that path, or the fp32 ones
// where it resolves to 'none' (which runs the fp32 kernels on rounded operands).
double products_seconds(const float* x, const float* w, int64_t N, int64_t C, int64_t D, int threads, int simd,
                        bool backward, int matrix = -2);
}  // namespace ms
