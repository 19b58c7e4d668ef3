// bf16_gemm.h — products from bfloat16 operands with fp32 accumulation, on
// the CPU's matrix instructions: AMX tiles (TDPBF16PS) or AVX512-BF16
// (VDPBF16PS). Which one runs is decided at run time (CPUID, and for AMX the
// kernel's permission to use the tile state); 'none' means neither, and the
// loss then rounds its operands to bf16 and uses the fp32 kernels (see
// fused_loss_cpu.cc), which gives the same products up to fp32 summation order
// (a product of two bf16 values is exact in fp32).
//
// Operand layouts (bf16 values stored as uint16_t, zero padded):
//   A  row-major M×Kp, row stride lda (bf16 elements, ≥ Kp, even)
//   Bp pair-packed Kp×Np in panels of 32 columns: element (k, n) at
//      Bp[(n/32)·32·Kp + (k/2)·64 + 2·(n%32) + (k&1)]. Each 32-bit word holds
//      rows k and k+1 of one column (the operand form of both VDPBF16PS and
//      TDPBF16PS); a panel is contiguous, so the kernels read 128-byte rows
//      without the cache-set conflicts of power-of-two strides.
// Kp is a multiple of kBf16KPad, Np a multiple of kBf16NPad (the padding is
// zero, so it adds nothing); the product writes exactly M×NN of C.
#pragma once

#include <cstdint>
#include <cstring>

namespace ms {

// Codes as lib/native.ts MATRIX_CODES. NeonBf16: BFDOT on aarch64 (neon_bf16_gemm.cc).
enum class MatrixPath : int { None = 0, Avx512Bf16 = 1, AmxBf16 = 2, NeonBf16 = 3 };

constexpr int kBf16KPad = 32;  // one AMX tile row: 32 bf16
constexpr int kBf16NPad = 32;  // two AVX-512 vectors / AMX tiles of columns

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The best path this CPU (and, for AMX, the OS) allows; computed once.
MatrixPath best_matrix_path();
// The path 'auto' runs: the best one, except 'none' where the CPU's bf16 dot
// product is slower than fp32 FMAs on the widened values (bf16_dot_half_rate).
MatrixPath auto_matrix_path();
// requested: −1 = auto_matrix_path(); otherwise the path asked for, or where the CPU lacks
// it the best one it has at or below it (as the SIMD option falls back); the
// ranks: none < avx512-bf16 = neon-bf16 < amx-bf16.
MatrixPath resolve_matrix_path(int requested);
const char* matrix_path_name(MatrixPath p);
// The CPU (and, for AMX, the OS) can run path p ('none' always).
bool matrix_available(MatrixPath p);
bool cpu_has_avx512_bf16();
// An Intel core whose VDPBF16PS runs at half the fp32 FMA rate (bf16_gemm.cc).
bool bf16_dot_half_rate();
// CPUID says AMX-TILE and AMX-BF16, and the kernel granted the tile-data
// permission to this process (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once).
bool amx_bf16_usable();
// aarch64: FEAT_BF16 (BFDOT), as the OS reports it (getauxval(AT_HWCAP2) & HWCAP2_BF16).
bool cpu_has_neon_bf16();
// The NeonBf16 product (neon_bf16_gemm.cc; aarch64 builds with FEAT_BF16 support only).
void gemm_neon_bf16(int M, int NN, int Kp, const uint16_t* A, long lda, const uint16_t* Bp, float* C, long ldc,
                    bool accumulate);

// The normalisation term of dŴ for bf16 centre rows, applied to a product's
// finished output (bf16_gemm's sub): row m becomes C_m − a[m]·(b[m]·w_m), w_m
// the bf16 row at w + m·ldw widened (exactly), b·w rounded, then one fused
// multiply-subtract (the fp32 kernels' sub_scaled, contracted as they compile it).
struct RowSubBf16 {
  const uint16_t* w;
  long ldw;
  const float* a;
  const float* b;
};

// C[m·ldc + n] = (accumulate ? C : 0) + Σ_k A[m][k]·B[k][n], m < M, n < NN,
// then sub where given. path must be Avx512Bf16, AmxBf16 or NeonBf16 (and
// available). On Avx512Bf16 the bytes [next, next + next_bytes) (the next
// class block's operand) are fetched into L2 while the product runs (a hint
// only, the results do not change), and sub is applied in the last stores.
void bf16_gemm(MatrixPath path, int M, int NN, int Kp, const uint16_t* A, long lda, const uint16_t* Bp,
               float* C, long ldc, bool accumulate, const void* next = nullptr, size_t next_bytes = 0,
               const RowSubBf16* sub = nullptr);
inline int64_t pair_packed_size(int64_t Kp, int64_t NN) { return Kp * round_up(NN, kBf16NPad); }

// ---- Conversions (round to nearest even; inputs are finite) ----
// The pack_* functions run only where a matrix path is available; on x86-64
// (AVX-512 there) they use it, elsewhere they are scalar loops.
// Inline so that loops over arrays vectorise.
inline uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float bf16_round(float v) {  // v rounded to bf16, as a float
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&v, &u, 4);
  return v;
}
// dst[k] = bf16_round(src[k]), k < n (vectorised; src == dst or disjoint).
void round_bf16_array(const float* src, float* dst, int64_t n);
// dst[k] = src[k] widened to fp32 (exact), k < n.
inline void widen_bf16_array(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t u = (uint32_t)src[k] << 16;
    std::memcpy(dst + k, &u, 4);
  }
}
// dst[k] = to_bf16(src[k]), k < n.
inline void narrow_bf16_array(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = to_bf16(src[k]);
}
// dst[m·ldd + k] = bf16(src[m·lds + k]) for k < K, 0 for K ≤ k < Kp.
void pack_rows_bf16(const float* src, long lds, int M, int K, int Kp, uint16_t* dst, long ldd);
// Σ_k v_k² in double over the K bf16 values v (each square exact): per lane
// l = k mod 16 an FMA chain in k order, then t_i = acc_i + acc_{i+8} and
// ((t0 + t4) + (t1 + t5)) + ((t2 + t6) + (t3 + t7)). One order on every
// build, so that a row's norm does not depend on where its bf16 values came from.
double sumsq_bf16(const uint16_t* v, int K);
// pack_rows_bf16, and sq[m] = sumsq_bf16 of packed row m (in the same pass on AVX-512).
void pack_rows_bf16_sumsq(const float* src, long lds, int M, int K, int Kp, uint16_t* dst, long ldd, double* sq);
// Pair-packs the K×NN matrix whose element (k, n) is src[k·sk + n] (rows k
// contiguous in n) into dst (pair_packed_size(Kp, NN) elements), zero padded.
void pack_pairs_bf16(const float* src, long sk, int K, int NN, int Kp, uint16_t* dst);
// The same from bf16 values (element (k, n) = src[k·sk + n], copied as they are).
void pack_pairs_bf16_rows(const uint16_t* src, long sk, int K, int NN, int Kp, uint16_t* dst);
// The row-major form of a transposed source: dst[m·ldd + k] = bf16(src[k·sk + m]).
void pack_rows_bf16_t(const float* src, long sk, int M, int K, int Kp, uint16_t* dst, long ldd);

}  // namespace ms
