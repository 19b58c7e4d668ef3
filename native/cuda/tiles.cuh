// tiles.cuh — the device-side building blocks of the fused kernels:
//   * Elem<T>: the two operand precisions. T = float is the TF32 path (fp32
//     class centres; operands rounded to TF32 with round-to-nearest as they
//     are written to shared memory), T = __nv_bfloat16 the BF16 path (centres
//     converted to bf16 once on the device). Accumulation is fp32 in both.
//   * WView: the class centres as the kernels read them, with bounds.
//   * CosTile<T, BM, BN, WR, WC>: one BM×BN tile of X̂·Wᵀ on tensor cores
//     (WMMA), K streamed through shared memory in 128-byte row chunks with a
//     register prefetch of the next chunk, result left in shared memory as fp32.
//   * the per-element gradient of a non-target logit (grad_other).
//
// Layout conventions (all kernels):
//   x_operand   N_pad × dp operand copy of X̂ (T), zero rows ≥ N and zero columns ≥ d.
//         N_pad = round_up(N, kRowPad), dp = round_up(d, kDPad).
//   W     TF32 path: the caller's fp32 C×d rows (stride d, any d);
//         BF16 path: C×dp bf16 rows, zero columns ≥ d.
//   Rows ≥ N and classes ≥ C never reach a result: rows ≥ N carry label −1
//   (so g = 0 and nothing is stored for them), classes ≥ C are masked out of
//   the log-sum-exp and get g = 0, and their loads return zeros.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "../margin_math.h"

// Launch and dynamic-shared-memory spellings in one place, so that the
// emulation harness (test/gpu/emu) can compile these sources as plain C++ and
// run the real kernel code on the CPU. Under nvcc they are the usual syntax.
#ifndef MS_LAUNCH
#define MS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) kernel<<<grid, block, smem_bytes, stream>>>(__VA_ARGS__)
#endif
#ifndef MS_DYNAMIC_SMEM
#define MS_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace ms {
namespace cu {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

// ---- Geometry (one place; the host code sizes buffers from these) ---------
constexpr int kThreads = 256;     // every tile kernel: 8 warps
constexpr int kTileC = 128;       // classes per forward tile = class granularity of the filter mask
constexpr int kTileR = 32;        // rows per filter-mask entry (= dX row tile)
constexpr int kRowPad = 128;      // N is padded to this (the largest row tile, the dW kernel's)
constexpr int kDPad = 64;         // d is padded to this (both K chunks, 32 fp32 / 64 bf16, divide it)
constexpr int kSlice = 512;       // output columns of one backward CTA: 8 warps × 64
constexpr int kChunkBytes = 128;  // one row of a K chunk in shared memory

// ---- Operand precision ----------------------------------------------------
template <class T>
struct Elem;

template <>
struct Elem<float> {  // TF32 tensor cores
  using prec = wmma::precision::tf32;
  static constexpr int kStep = 8;  // K of one m16n16kK MMA
  static constexpr int kVec = 4;   // elements per 16-byte vector
  static constexpr int kPad = 4;   // shared-memory row padding (16 bytes: conflict-free fragment loads)
  static __device__ __forceinline__ float cvt(float v) { return wmma::__float_to_tf32(v); }
  static __device__ __forceinline__ float val(float v) { return v; }
};

template <>
struct Elem<bf16> {  // BF16 tensor cores
  using prec = bf16;
  static constexpr int kStep = 16;
  static constexpr int kVec = 8;
  static constexpr int kPad = 8;
  static __device__ __forceinline__ bf16 cvt(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float val(bf16 v) { return __bfloat162float(v); }
};

template <class T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Elem<T>::kStep, typename Elem<T>::prec, wmma::row_major>;
template <class T>
using FragAc = wmma::fragment<wmma::matrix_a, 16, 16, Elem<T>::kStep, typename Elem<T>::prec, wmma::col_major>;
template <class T>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Elem<T>::kStep, typename Elem<T>::prec, wmma::row_major>;
template <class T>
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, Elem<T>::kStep, typename Elem<T>::prec, wmma::col_major>;
template <class T>
using Acc = wmma::fragment<wmma::accumulator, 16, 16, Elem<T>::kStep, float>;

// A warp's M×N accumulator fragments set to zero.
template <class T, int M, int N>
__device__ __forceinline__ void zero_acc(Acc<T> (&acc)[M][N]) {
#pragma unroll
  for (int a = 0; a < M; ++a)
#pragma unroll
    for (int b = 0; b < N; ++b) wmma::fill_fragment(acc[a][b], 0.0f);
}

constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
constexpr size_t align128(size_t a) { return (a + 127) / 128 * 128; }

// ---- Class centres as the kernels see them ---------------------------------
struct WView {
  const float* w32 = nullptr;  // TF32 path: C×d fp32, row stride d (null on the BF16 path)
  const bf16* wb = nullptr;    // BF16 path: C×dp, zero columns d..dp (null on the TF32 path)
  const float* invw = nullptr; // C inverse norms (0 for a zero row)
  int64_t c = 0;
  int d = 0, dp = 0;
  int vec4 = 0;  // d % 4 == 0: 16-byte loads of w32 rows are aligned
};

__device__ __forceinline__ uint4 zero16() { return make_uint4(0u, 0u, 0u, 0u); }

// 16 bytes of operand T holding W[j][k .. k+kVec) (k a multiple of kVec),
// zero where j ≥ C or the column is ≥ d.
template <class T>
__device__ __forceinline__ uint4 load_w16(const WView& w, int64_t j, int k);

template <>
__device__ __forceinline__ uint4 load_w16<float>(const WView& w, int64_t j, int k) {
  if (j >= w.c || k >= w.d) return zero16();
  const float* row = w.w32 + j * (int64_t)w.d;
  float4 f;
  if (w.vec4) {
    f = __ldg(reinterpret_cast<const float4*>(row + k));  // k + 3 < d because d % 4 == 0
  } else {
    f.x = __ldg(row + k);
    f.y = k + 1 < w.d ? __ldg(row + k + 1) : 0.0f;
    f.z = k + 2 < w.d ? __ldg(row + k + 2) : 0.0f;
    f.w = k + 3 < w.d ? __ldg(row + k + 3) : 0.0f;
  }
  using E = Elem<float>;
  return make_uint4(__float_as_uint(E::cvt(f.x)), __float_as_uint(E::cvt(f.y)), __float_as_uint(E::cvt(f.z)),
                    __float_as_uint(E::cvt(f.w)));
}

template <>
__device__ __forceinline__ uint4 load_w16<bf16>(const WView& w, int64_t j, int k) {
  if (j >= w.c || k >= w.dp) return zero16();  // columns d..dp are stored zeros
  return __ldg(reinterpret_cast<const uint4*>(w.wb + j * (int64_t)w.dp + k));
}

// W[j][q] as a float (the raw fp32 value, or the bf16 value the kernels used).
__device__ __forceinline__ float w_value(const WView& w, int64_t j, int q) {
  return w.wb ? __bfloat162float(w.wb[j * (int64_t)w.dp + q]) : w.w32[j * (int64_t)w.d + q];
}

// 16 bytes of x_operand row `row` from column k (zero for k ≥ dp). Rows < N_pad always exist.
template <class T>
__device__ __forceinline__ uint4 load_x16(const T* x_operand, int dp, int64_t row, int k) {
  if (k >= dp) return zero16();
  return __ldg(reinterpret_cast<const uint4*>(x_operand + row * (int64_t)dp + k));
}

// ---- One BM×BN cosine tile --------------------------------------------------
// S = X̂[row0 .. row0+BM) · W[col0 .. col0+BN)ᵀ (raw W: the caller multiplies by
// invw_j), over K = dp in chunks of KC elements (128 bytes per row).
// 8 warps form a WR×WC grid; each warp owns a (BM/WR)×(BN/WC) sub-tile of
// 16×16 accumulator fragments.
//
// Shared memory (`smem`, kBytes, 128-byte aligned):
//   As[BM][LDK], Bs[BN][LDK] (T) during the K loop; afterwards the same bytes
//   hold S[BM][LDS] (fp32, row-major). LDK = KC + pad keeps fragment loads
//   bank-conflict-free and every fragment pointer 32-byte aligned
//   (LDK·sizeof(T) = 144 bytes; 16 rows = 2304 bytes = 72·32).
// Synchronisation: starts with a barrier (the caller may still be reading the
// region from a previous phase) and ends with a barrier (S visible to all).
template <class T, int BM, int BN, int WR, int WC>
struct CosTile {
  using E = Elem<T>;
  static constexpr int KC = kChunkBytes / (int)sizeof(T);  // 32 (TF32) or 64 (BF16)
  static constexpr int LDK = KC + E::kPad;
  static constexpr int VPR = KC / E::kVec;  // 16-byte vectors per chunk row (8)
  static constexpr int NVA = BM * VPR / kThreads;
  static constexpr int NVB = BN * VPR / kThreads;
  static constexpr int TM = BM / WR, TN = BN / WC;
  static constexpr int FM = TM / 16, FN = TN / 16;
  static constexpr int LDS = BN + 4;  // fp32 S row stride (multiple of 4, rows 16-aligned → 32-byte fragment pointers)
  static constexpr size_t kOperandBytes = (size_t)(BM + BN) * LDK * sizeof(T);
  static constexpr size_t kSBytes = (size_t)BM * LDS * sizeof(float);
  static constexpr size_t kBytes = align128(cmax(kOperandBytes, kSBytes));
  static_assert(WR * WC == kThreads / 32, "8 warps");
  static_assert(TM % 16 == 0 && TN % 16 == 0, "warp tile is whole fragments");
  static_assert((BM * VPR) % kThreads == 0 && (BN * VPR) % kThreads == 0, "whole vectors per thread");
  static_assert(kDPad % KC == 0, "dp is a whole number of K chunks");

  // Loads chunk k0 of both operands into registers (16 bytes per vector).
  static __device__ __forceinline__ void fetch(uint4 (&ra)[NVA], uint4 (&rb)[NVB], const T* x_operand, int64_t row0, int dp,
                                               const WView& w, int64_t col0, int k0) {
#pragma unroll
    for (int q = 0; q < NVA; ++q) {
      const int v = threadIdx.x + q * kThreads;
      ra[q] = load_x16<T>(x_operand, dp, row0 + v / VPR, k0 + (v % VPR) * E::kVec);
    }
#pragma unroll
    for (int q = 0; q < NVB; ++q) {
      const int v = threadIdx.x + q * kThreads;
      rb[q] = load_w16<T>(w, col0 + v / VPR, k0 + (v % VPR) * E::kVec);
    }
  }

  static __device__ void run(const T* __restrict__ x_operand, int64_t row0, int dp, const WView& w, int64_t col0,
                             unsigned char* smem) {
    T* As = reinterpret_cast<T*>(smem);
    T* Bs = As + BM * LDK;
    float* S = reinterpret_cast<float*>(smem);
    const int warp = threadIdx.x >> 5;
    const int wr = warp / WC, wc = warp % WC;

    Acc<T> acc[FM][FN];
    zero_acc<T>(acc);

    uint4 ra[NVA], rb[NVB];
    fetch(ra, rb, x_operand, row0, dp, w, col0, 0);
    for (int k0 = 0; k0 < dp; k0 += KC) {
      __syncthreads();  // previous chunk's fragment loads (or the caller's phase) are done with the region
#pragma unroll
      for (int q = 0; q < NVA; ++q) {
        const int v = threadIdx.x + q * kThreads;
        *reinterpret_cast<uint4*>(As + (v / VPR) * LDK + (v % VPR) * E::kVec) = ra[q];
      }
#pragma unroll
      for (int q = 0; q < NVB; ++q) {
        const int v = threadIdx.x + q * kThreads;
        *reinterpret_cast<uint4*>(Bs + (v / VPR) * LDK + (v % VPR) * E::kVec) = rb[q];
      }
      __syncthreads();  // chunk visible
      if (k0 + KC < dp) fetch(ra, rb, x_operand, row0, dp, w, col0, k0 + KC);  // in flight during the MMAs
#pragma unroll
      for (int ks = 0; ks < KC; ks += E::kStep) {
        FragA<T> fa[FM];
        FragBc<T> fb[FN];
#pragma unroll
        for (int a = 0; a < FM; ++a) wmma::load_matrix_sync(fa[a], As + (wr * TM + a * 16) * LDK + ks, LDK);
        // B = Wᵀ (K×N) read column-major from Bs[n][k]: element (k, n) at Bs[n·LDK + k].
#pragma unroll
        for (int b = 0; b < FN; ++b) wmma::load_matrix_sync(fb[b], Bs + (wc * TN + b * 16) * LDK + ks, LDK);
#pragma unroll
        for (int a = 0; a < FM; ++a)
#pragma unroll
          for (int b = 0; b < FN; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
      }
    }
    __syncthreads();  // every warp is done with As/Bs before S overwrites them
#pragma unroll
    for (int a = 0; a < FM; ++a)
#pragma unroll
      for (int b = 0; b < FN; ++b)
        wmma::store_matrix_sync(S + (wr * TM + a * 16) * LDS + wc * TN + b * 16, acc[a][b], LDS, wmma::mem_row_major);
    __syncthreads();  // S visible
  }
};

// ---- Staged chunks of the backward products -----------------------------------
// Both backward kernels stream their B operand (W for dX̂, X̂ for dŴ) through
// shared memory in chunks of K rows × kSlice columns, the next chunk held in
// registers while the current one is multiplied, each warp owning a 32×64
// block of the output slice (columns 64·warp …).
template <class T>
struct Staged {
  using E = Elem<T>;
  static constexpr int K = 2 * E::kStep;       // rows per chunk (16 TF32 / 32 BF16)
  static constexpr int LD = kSlice + E::kPad;  // chunk row stride (elements)
  static constexpr int VP = kSlice / E::kVec;  // 16-byte vectors per chunk row
  static constexpr int NV = K * VP / kThreads; // per thread (8)
  static constexpr size_t kBytes = (size_t)K * LD * sizeof(T);
  static_assert((K * VP) % kThreads == 0, "whole vectors per thread");
};

// This thread's vectors of the chunk at rows k0 … k0 + K into registers:
// load(r, k) gives the 16-byte vector at row r, column k of the slice.
template <class T, class Load>
__device__ __forceinline__ void fetch_chunk(uint4 (&r)[Staged<T>::NV], Load load, int k0) {
  using S = Staged<T>;
#pragma unroll
  for (int q = 0; q < S::NV; ++q) {
    const int v = threadIdx.x + q * kThreads;
    r[q] = load(k0 + v / S::VP, (v % S::VP) * Elem<T>::kVec);
  }
}

// The registers r (this thread's vectors of a chunk) into the chunk buffer Bs.
template <class T>
__device__ __forceinline__ void stage_chunk(T* Bs, const uint4 (&r)[Staged<T>::NV]) {
  using S = Staged<T>;
#pragma unroll
  for (int q = 0; q < S::NV; ++q) {
    const int v = threadIdx.x + q * kThreads;
    *reinterpret_cast<uint4*>(Bs + (v / S::VP) * S::LD + (v % S::VP) * Elem<T>::kVec) = r[q];
  }
}

// acc[a][b] += A(16·a …, k) · Bs(k, 64·warp + 16·b …) over the K rows of one
// staged chunk. FA: A's fragment type (row- or column-major, stride LDA);
// a_at(a, ks) the address of A's fragment a at depth ks of the chunk.
template <class T, class FA, int LDA, class AAt>
__device__ __forceinline__ void mma_chunk(Acc<T> (&acc)[2][4], AAt a_at, const T* Bs, int warp) {
  using S = Staged<T>;
#pragma unroll
  for (int ks = 0; ks < S::K; ks += Elem<T>::kStep) {
    FA fa[2];
#pragma unroll
    for (int a = 0; a < 2; ++a) wmma::load_matrix_sync(fa[a], a_at(a, ks), LDA);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      FragB<T> fb;  // (k, n = column) at Bs[k·LD + n]
      wmma::load_matrix_sync(fb, Bs + ks * S::LD + warp * 64 + b * 16, S::LD);
#pragma unroll
      for (int a = 0; a < 2; ++a) wmma::mma_sync(acc[a][b], fa[a], fb, acc[a][b]);
    }
  }
}

// acc += A · B over B's rows [0, KB): B streamed through the chunk buffer Bs
// (load as in fetch_chunk), a_at(a, k) the address of A's fragment a at depth
// k. Every thread of the CTA calls it (barriers); only `active` warps multiply.
template <class T, class FA, int LDA, int KB, class Load, class AAt>
__device__ __forceinline__ void mma_staged(Acc<T> (&acc)[2][4], T* Bs, Load load, AAt a_at, bool active, int warp) {
  using S = Staged<T>;
  static_assert(KB % S::K == 0, "whole chunks");
  uint4 r[S::NV];
  fetch_chunk<T>(r, load, 0);
  for (int kc = 0; kc < KB; kc += S::K) {
    if (kc > 0) __syncthreads();  // the previous chunk's fragment loads are done
    stage_chunk<T>(Bs, r);
    __syncthreads();  // chunk visible
    if (kc + S::K < KB) fetch_chunk<T>(r, load, kc + S::K);
    if (active) mma_chunk<T, FA, LDA>(acc, [&](int a, int ks) { return a_at(a, kc + ks); }, Bs, warp);
  }
}

// ---- The softmax gradient of one logit ----------------------------------------
// g_ij = (p_ij − [j = y_i])·dz_ij/dc·rowscale_i, p = exp(z − LSE_i). The target
// entry is (p_y − 1)·dz_t/dc with p_y − 1 from target_terms (merge_lse); the
// caller multiplies by the rowscale (1/V for counted rows, 0 otherwise), in
// the CPU backend's order.
__device__ __forceinline__ float grad_other(float c, float lse, float s, float cvm_m2) {
  return expf(other_z(c, s, cvm_m2) - lse) * other_dz(c, s, cvm_m2);
}

}  // namespace cu
}  // namespace ms
