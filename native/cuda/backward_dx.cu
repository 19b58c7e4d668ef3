// backward_dx.cu — the fused backward pass, embedding side: dX̂ = G·Ŵ.
//
// What is fused, and why: a CTA owns 32 rows and one group of consecutive
// class tiles. For each class tile it recomputes the 32×128 cosine tile on
// tensor cores, turns it into g' = g_ij/‖w_j‖ in shared memory (g from the
// forward's LSE, see tiles.cuh), and multiplies G' (32×128) by the tile's raw
// centres (128×d slice) into a 32×512 fp32 accumulator that stays in
// registers for the whole group. Neither the logits nor G ever reach device
// memory; what does is one 32×dp partial per (row tile, class group).
//
// Determinism without atomics: the partial of group g goes to its own slice
// dxp[g] (plain stores, one writer per element); finish_dx sums the groups in
// order 0, 1, 2, … The number of groups depends only on the shape and the
// device's multiprocessor count (see choose_groups in loss_cuda.cu).
//
// The dŴ side lives in backward_dw.cu: the two reductions run along opposite
// axes (dX̂ over classes, dŴ over rows), so each kernel keeps its own output
// in registers and recomputes the cosine tile (one extra 2·N·d·C of tensor
// work) instead of spilling N×d or C×d partial sums to memory per tile.
//
// Tile ownership and bounds:
//   blockIdx.x = g·row_tiles32 + rt; blockIdx.y = output slice (columns [512·y, 512·y+512) ∩ [0, dp));
//   rows [32·rt, 32·rt+32) ⊂ [0, N_pad); class tiles [g·tpg, min(nct, (g+1)·tpg));
//   warp w owns output columns [q0 + 64w, q0 + 64w + 64): all inside dp or all
//   outside (dp is a multiple of 64); an outside warp does no MMA and no store.
//   Epilogue: thread t owns class column t % 128 and rows t/128 + 2k, k < 16.
//   Gradient filtering: a (class tile, 32 rows) entry of the mask ≠ 0 skips the
//   tile (the decision is uniform across the CTA).
#include "cuda_common.cuh"
#include "kernels.cuh"

namespace ms {
namespace cu {
namespace {

constexpr int kDxRows = kTileR;  // 32

template <class T>
struct DxCfg {
  using E = Elem<T>;
  using Tile = CosTile<T, kDxRows, kTileC, 2, 4>;
  using Chunk = Staged<T>;                                  // W in chunks of Chunk::K classes
  static constexpr int LDG = kTileC + E::kPad;             // G' row stride (elements)
  static constexpr size_t kUnion = align128(cmax(Tile::kBytes, Chunk::kBytes));
  static constexpr size_t kGsBytes = align128((size_t)kDxRows * LDG * sizeof(T));
  static constexpr size_t kSmem = kUnion + kGsBytes;
  static_assert(kTileC % Chunk::K == 0, "whole chunks per class tile");
  static_assert(kSmem <= 99 * 1024, "fits sm_86/sm_89's 99 KiB per block");
};

template <class T>
__global__ void __launch_bounds__(kThreads, 1) backward_dx(const BwdParams p) {
  using Cfg = DxCfg<T>;
  using E = Elem<T>;
  using Tile = typename Cfg::Tile;
  MS_DYNAMIC_SMEM(smem);
  T* Ws = reinterpret_cast<T*>(smem);  // aliases the tile's operands and S (used one after another)
  T* Gs = reinterpret_cast<T*>(smem + Cfg::kUnion);
  const float* S = reinterpret_cast<const float*>(smem);

  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t bid = blockIdx.x;
  const int64_t rt = bid % p.row_tiles32, g = bid / p.row_tiles32;
  const int q0 = blockIdx.y * kSlice;
  const int64_t row0 = rt * kDxRows;
  const int64_t ct_begin = g * p.tiles_per_group;
  const int64_t ct_end = min(p.nct, ct_begin + p.tiles_per_group);
  const int wq = q0 + warp * 64;
  const bool active = wq < p.dp;

  Acc<T> acc[2][4];
  zero_acc<T>(acc);

  const int col = tid % kTileC, rbase = tid / kTileC;
  for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
    if (p.mask[ct * p.row_tiles32 + rt] != kMaskCompute) continue;  // same value for every thread
    const int64_t col0 = ct * kTileC;
    Tile::run(static_cast<const T*>(p.x_operand), row0, p.dp, p.w, col0, smem);

    // G' tile: g_ij·invw_j for my column, rows rbase, rbase+2, …
    const int64_t j = col0 + col;
    const bool jok = j < p.w.c;
    const float inv = jok ? p.w.invw[j] : 0.0f;
#pragma unroll 4
    for (int k = 0; k < kDxRows / 2; ++k) {
      const int r = rbase + 2 * k;
      const int64_t i = row0 + r;
      const int32_t y = p.labels[i];  // ≥ 0 local target, −1 ignored/padding, −2 counted without a local target
      float gv = 0.0f;
      if (jok && y != -1) {
        float c = S[r * Tile::LDS + col] * inv;
        gv = grad_entry(p, i, y, j, c);
      }
      Gs[r * Cfg::LDG + col] = E::cvt(gv * inv);
    }
    __syncthreads();  // G' complete; S is dead, the W chunks may overwrite it

    // dX̂[rows, slice] += G'(32×128) · W[tile](128×slice), 128 classes in chunks of Chunk::K.
    mma_staged<T, FragA<T>, Cfg::LDG, kTileC>(
        acc, Ws, [&](int r, int k) { return load_w16<T>(p.w, col0 + r, q0 + k); },
        [&](int a, int k) { return Gs + a * 16 * Cfg::LDG + k; }, active, warp);
    // The next tile's Tile::run begins with a barrier: nobody overwrites Ws/Gs
    // before every warp has finished the MMAs above.
  }

  // One writer per element of dxp[g][row0 .. row0+32)[wq .. wq+64): plain stores.
  if (active) {
    float* out = p.dxp + ((int64_t)g * p.n_pad + row0) * p.dp + wq;
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b)
        wmma::store_matrix_sync(out + (int64_t)a * 16 * p.dp + b * 16, acc[a][b], (unsigned)p.dp, wmma::mem_row_major);
  }
}

}  // namespace

template <class T>
void launch_backward_dx(const BwdParams& p, int64_t groups, int slices, cudaStream_t s) {
  const size_t smem = DxCfg<T>::kSmem;
  MS_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&backward_dx<T>), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const dim3 grid((unsigned)(groups * p.row_tiles32), (unsigned)slices);
  MS_LAUNCH(backward_dx<T>, grid, kThreads, smem, s, p);
  MS_CUDA_LAUNCHED("backward_dx");
}

template void launch_backward_dx<float>(const BwdParams&, int64_t, int, cudaStream_t);
template void launch_backward_dx<bf16>(const BwdParams&, int64_t, int, cudaStream_t);

}  // namespace cu
}  // namespace ms
