// simd_dispatch.h — one table of the CPU vector kernels per instruction set;
// simd_kernels.inc is compiled once per ISA and the best one the CPU runs is
// picked at run time (so one binary serves AVX-512, AVX2 and older CPUs).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ms {

// The normalisation term of dŴ applied in a product's last stores
// (KernelSet::gemm_packed): output row m, once complete, becomes
// C_m − a[m]·(b[m]·w_m), w_m = w + m·ldw, with sub_scaled's arithmetic (so
// the same bits as the product followed by sub_scaled on each row).
struct RowSub {
  const float* w;
  long ldw;
  const float* a;
  const float* b;
};

struct KernelSet {
  int vw;  // floats per vector
  int mr;  // GEMM register-tile rows
  void (*gemm)(int M, int NN, int K, const float* A, long sam, long sak, const float* B, long ldb,
               float* C, long ldc, bool accumulate);
  void (*block_stats)(const float* tile, int classes, int ldt, float s, float cvm_m2,
                      const int32_t* target_col, const float* zt, float* m_out, float* l_out, float* o_out);
  float (*block_grad)(const float* tile, int classes, int ldt, float s, float cvm_m2,
                      const int32_t* target_col, const float* target_pm1, const float* dzt, const float* lse,
                      const float* rowscale, const float* invn, float* gout, float* t);
  double (*sumsq)(const float* v, int d);
  // y[q] −= a·(b·x[q]) for q < n (x, y disjoint): the normalisation term of dW.
  void (*sub_scaled)(float* y, const float* x, float a, float b, int n);
  // v[q] *= a for q < n.
  void (*scale)(float* v, float a, int n);
  // gemm, and [next, next + next_bytes) fetched into L2 while it runs (the
  // next class block's operands; a hint only, the results are gemm's). Null in
  // a set without it: callers then use gemm.
  void (*gemm_prefetch)(int M, int NN, int K, const float* A, long sam, long sak, const float* B, long ldb,
                        float* C, long ldc, bool accumulate, const void* next, size_t next_bytes);
  // A B operand shared by many products, packed once (K·round_up(NN, 2·vw)
  // floats at dst), and gemm_prefetch on it without packing. Null in a set
  // without them: callers then use gemm / gemm_prefetch on the plain B.
  void (*pack_b_whole)(int K, int NN, const float* B, long ldb, float* dst);
  // sub: null, or the rows' RowSub, applied after the last k.
  void (*gemm_packed)(int M, int NN, int K, const float* A, long sam, long sak, const float* Bp, float* C, long ldc,
                      bool accumulate, const void* next, size_t next_bytes, const RowSub* sub);
  // sumsq of `rows` rows (row stride ld), bit for bit, several at a time. Null
  // in a set without it: callers then call sumsq per row.
  void (*sumsq_rows)(const float* v, long ld, int rows, int d, double* out);
};

// SIMD level codes (lib/native.ts SIMD_CODES), ordered so that a level the
// CPU lacks falls back to the best supported one below it: 16 AVX-512,
// 8 AVX2+FMA, 5 NEON (aarch64, 4 lanes), 4 portable; −1 = best supported.
constexpr int kSimdPortable = 4, kSimdNeon = 5, kSimdAvx2 = 8, kSimdAvx512 = 16;
const KernelSet& kernels_for(int level);
#if defined(__aarch64__)
namespace neon {
extern const KernelSet kernels;  // neon_kernels.cc
}
#endif
int best_simd_width();  // the best level code this CPU runs
// The level kernels_for(requested) runs, and its name ('avx512', 'avx2', 'neon', 'portable').
int simd_level(int requested);
const char* simd_level_name(int level);

}  // namespace ms
