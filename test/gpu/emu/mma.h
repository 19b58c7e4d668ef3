// mma.h — a reference implementation of the subset of nvcuda::wmma that the
// CUDA backend uses, for the CPU emulation (test/gpu/emu). It shadows the
// real <mma.h> through the include path.
//
// Lane 0 of a warp holds the whole fragment and does all its work (loads,
// MMAs, the store); the other lanes only check the pointer rules. The real API's rules are
// asserted: pointers 256-bit aligned, ldm a multiple of 16 bytes, the element
// types and shapes that exist (tf32 m16n16k8 with float pointers, bf16
// m16n16k16 with __nv_bfloat16 pointers). TF32 operands are truncated to
// 10 mantissa bits, as the tensor cores read them; accumulation is fp32.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

inline uint32_t emu_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}
inline float emu_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
// cvt.rna.tf32.f32: round to nearest, ties away from zero, 10 mantissa bits.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  return emu_float((emu_bits(v) + 0x1000u) & 0xffffe000u);
}

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment;
template <int M, int N, int K, class T, class L>
struct fragment<matrix_a, M, N, K, T, L> {
  float v[M][K];
};
template <int M, int N, int K, class T, class L>
struct fragment<matrix_b, M, N, K, T, L> {
  float v[K][N];
};
template <int M, int N, int K>
struct fragment<accumulator, M, N, K, float, void> {
  float v[M][N];
};

inline void emu_fail(const char* what) {
  std::fprintf(stderr, "WMMA emulation: %s\n", what);
  std::abort();
}

template <class T, class P, int K>
inline float emu_operand(const P& x) {
  if constexpr (std::is_same_v<T, precision::tf32>) {
    static_assert(std::is_same_v<P, float>, "tf32 fragments load from float pointers");
    static_assert(K == 8, "tf32 WMMA is m16n16k8");
    return emu_float(emu_bits(x) & 0xffffe000u);  // the low 13 bits are ignored
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16> && std::is_same_v<P, __nv_bfloat16>,
                  "bf16 fragments load from __nv_bfloat16 pointers");
    static_assert(K == 16, "bf16 WMMA is m16n16k16");
    return __bfloat162float(x);
  }
}

template <class P>
inline void emu_check(const P* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu_fail("pointer not 256-bit aligned");
  if ((ldm * sizeof(P)) % 16 != 0) emu_fail("ldm not a multiple of 16 bytes");
}

}  // namespace wmma
}  // namespace nvcuda
namespace ms_emu {
int lane_id();
}
namespace nvcuda {
namespace wmma {

// Only lane 0 computes fragments (it alone stores them): the other lanes'
// fragments are never read, which saves 31/32 of the emulated work.
template <int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<matrix_a, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  emu_check(p, ldm);
  if (ms_emu::lane_id() != 0) return;
  constexpr bool row = std::is_same_v<L, row_major>;
  for (int r = 0; r < M; ++r)
    for (int k = 0; k < K; ++k) f.v[r][k] = emu_operand<T, P, K>(p[row ? r * ldm + k : k * ldm + r]);
}

template <int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<matrix_b, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  emu_check(p, ldm);
  if (ms_emu::lane_id() != 0) return;
  constexpr bool row = std::is_same_v<L, row_major>;
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) f.v[k][n] = emu_operand<T, P, K>(p[row ? k * ldm + n : n * ldm + k]);
}

template <int M, int N, int K>
inline void fill_fragment(fragment<accumulator, M, N, K, float, void>& f, float x) {
  if (ms_emu::lane_id() != 0) return;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) f.v[m][n] = x;
}

}  // namespace wmma
}  // namespace nvcuda

namespace nvcuda {
namespace wmma {

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm,
                              layout_t layout) {
  emu_check(p, ldm);
  if (ms_emu::lane_id() != 0) return;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) p[layout == mem_row_major ? m * ldm + n : n * ldm + m] = f.v[m][n];
}

template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float, void>& c) {
  if (ms_emu::lane_id() != 0) return;
  float t[M][N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s = c.v[m][n];
      for (int k = 0; k < K; ++k) s += a.v[m][k] * b.v[k][n];
      t[m][n] = s;
    }
  std::memcpy(d.v, t, sizeof(t));
}

}  // namespace wmma
}  // namespace nvcuda
