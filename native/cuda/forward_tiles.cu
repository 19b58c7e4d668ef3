// forward_tiles.cu — the fused forward pass.
//
// What is fused, and why: each CTA computes one 64-row × 128-class tile of
// cosines on tensor cores (X̂·Wᵀ, then ·1/‖w_j‖), applies the non-target
// logit (s·c, or CVM's s·(c + m2·c²)) and reduces the tile straight to one
// (max, Σ exp(z − max)) pair per row over the tile's non-target classes. The
// margined target logit is not in the tile at all: it was computed once per
// row, precisely, by target_logits, and merge_lse adds it to the row's state
// while keeping the target-free sum apart (the CPU backend's (m, l, o) state,
// which makes the loss and p_y − 1 of confident rows accurate).
// The 64×128 logits live only in shared memory; what reaches device memory is
// 8 bytes per (row, class tile), i.e. 1/64 of the logits. No locks, no
// atomics: merge_lse (small_kernels.cu) combines a row's partials in
// class-tile order afterwards.
//
// Tile ownership and bounds:
//   blockIdx.x = ct·row_tiles64 + rt (row tiles vary fastest, so the CTAs that read
//   the same 128 class centres run together and share them through L2);
//   rows  [rt·64, rt·64+64)   ⊂ [0, N_pad)  always (N_pad is a multiple of 128);
//   classes [ct·128, ct·128+128), only those < C count (ncols below);
//   thread t reduces row t/4, columns {4k + t%4 : k < 32} (conflict-free reads
//   of S: bank = (4·row + 4k + t%4) mod 32 is distinct across the warp).
//   Rows ≥ N still get (finite) partials: their x̂ is zero, nobody reads them.
#include "cuda_common.cuh"
#include "kernels.cuh"

namespace ms {
namespace cu {
namespace {

constexpr int kFwdRows = 64;

template <class T>
struct FwdCfg {
  using Tile = CosTile<T, kFwdRows, kTileC, 2, 4>;
  static constexpr size_t kInvOffset = Tile::kBytes;
  static constexpr size_t kSmem = Tile::kBytes + kTileC * sizeof(float);
};

template <class T>
__global__ void __launch_bounds__(kThreads, 2) forward_tiles(const FwdParams p) {
  using Cfg = FwdCfg<T>;
  using Tile = typename Cfg::Tile;
  MS_DYNAMIC_SMEM(smem);
  float* invw_s = reinterpret_cast<float*>(smem + Cfg::kInvOffset);

  const int64_t bid = blockIdx.x;
  const int64_t rt = bid % p.row_tiles64, ct = bid / p.row_tiles64;
  const int64_t row0 = rt * kFwdRows, col0 = ct * kTileC;
  const int tid = threadIdx.x;
  const int ncols = (int)min((int64_t)kTileC, p.w.c - col0);  // ≥ 1 because ct < nct

  if (tid < kTileC) invw_s[tid] = tid < ncols ? p.w.invw[col0 + tid] : 0.0f;  // published by run()'s barriers
  Tile::run(static_cast<const T*>(p.x_operand), row0, p.dp, p.w, col0, smem);
  const float* S = reinterpret_cast<const float*>(smem);

  const int r = tid >> 2, part = tid & 3;
  const int64_t i = row0 + r;
  const int32_t y = p.labels[i];  // −1 / −2 never match a column
  const int target_col = (y >= 0 && (int64_t)y >= col0 && (int64_t)y < col0 + kTileC) ? (int)((int64_t)y - col0) : -1;
  const float* Srow = S + r * Tile::LDS;

  // Pass 1: the row's max over the tile's non-target classes (a max is exact:
  // any order gives the same bits).
  float mx = -INFINITY;
#pragma unroll 2
  for (int k = 0; k < kTileC / 4; ++k) {
    const int col = 4 * k + part;
    if (col < ncols && col != target_col) mx = fmaxf(mx, other_z(Srow[col] * invw_s[col], p.scale, p.cvm_m2));
  }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  // Pass 2: Σ exp(z − max), per thread in column order, then a fixed butterfly
  // (a + b = b + a, so all four lanes hold the same bits). A tile whose only
  // class is the row's target has mx = −inf and l = 0: the empty state.
  float l = 0.0f;
#pragma unroll 2
  for (int k = 0; k < kTileC / 4; ++k) {
    const int col = 4 * k + part;
    if (col < ncols && col != target_col) l += expf(other_z(Srow[col] * invw_s[col], p.scale, p.cvm_m2) - mx);
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (part == 0) p.partial[ct * p.n_pad + i] = make_float2(mx, l);
}

}  // namespace

template <class T>
void launch_forward(const FwdParams& p, cudaStream_t s) {
  const size_t smem = FwdCfg<T>::kSmem;
  MS_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&forward_tiles<T>), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const int64_t blocks = p.row_tiles64 * p.nct;
  MS_LAUNCH(forward_tiles<T>, (unsigned)blocks, kThreads, smem, s, p);
  MS_CUDA_LAUNCHED("forward_tiles");
}

template void launch_forward<float>(const FwdParams&, cudaStream_t);
template void launch_forward<bf16>(const FwdParams&, cudaStream_t);

}  // namespace cu
}  // namespace ms
