// kernels.cuh — one parameter struct per kernel family, the host-side
// launchers (each launcher error-checks its launch) and grad_entry, the one
// gradient-tile entry both backward kernels use. Kernels live in
// forward_tiles.cu, backward_dx.cu, backward_dw.cu and small_kernels.cu.
//
// Pipeline of one call (all on one stream, no atomics on any floating-point
// value, every reduction in a fixed order → bit-reproducible results):
//   prep_x        X → x̂ (fp32), 1/‖x‖, operand copy x_operand (T), norm check (finite, ≤ 1e30)
//   prep_w        W → 1/‖w‖ (and the bf16 copy on the BF16 path), norm check
//   target        per row: c_t = x̂·ŵ_y in fp64 (not on tensor cores: arccos
//                 amplifies TF32's error near |c| = 1), z_t and dz_t/dc
//   forward       tiles → per-(class tile, row) partial (max, Σexp) over non-target classes
//   merge         per row, the partials in class-tile order, then the target →
//                 (m, l, o), LSE, per-row loss and p_y − 1 (target_terms)
//   mask          per (class tile, 32 rows): skip for the backward? (filter)
//   backward_dx   recompute tiles, g, dX̂ partial per class group (owned)
//   finish_dx     Σ over class groups in order, then the normalisation's chain rule
//   backward_dw   recompute tiles, g, dŴ for an owned class tile, chain rule
// The formulas and merge orders are derived in docs/math.md and docs/numerics.md.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "tiles.cuh"

namespace ms {
namespace cu {

// Filter-mask values, one byte per (class tile of kTileC, rows of kTileR).
constexpr uint8_t kMaskCompute = 0;   // the tile contributes to the gradients
constexpr uint8_t kMaskFiltered = 1;  // every p < gradFilter and no target: skipped
constexpr uint8_t kMaskNoRows = 2;    // no counted row (ignored rows / padding): g = 0 anyway

// Labels: ≥ 0 a local target, −1 an ignored row (and padding rows ≥ N), −2 a
// row that counts but whose target lives in another shard (MarginHead).
struct FwdParams {
  const void* x_operand;       // N_pad × dp operand copy of X̂ (T)
  WView w;
  const int32_t* labels; // N_pad
  float scale, cvm_m2;
  int dp;
  int64_t n_pad, row_tiles64, nct;
  // nct × N_pad: (max z, Σ exp(z − max)) of each class tile and row over the
  // tile's non-target classes ((−inf, 0) when there is none); the target
  // logit joins in merge_lse, which keeps the target-free sum apart.
  float2* partial;
};

// The SGD update fused into backward_dw's epilogue (MarginHead on the device):
// torch.optim.SGD with dampening 0, no Nesterov, as the CPU head's Sgd:
//   g ← dw + λ·w;  b ← μ·b + g;  w ← w − lr·b
// applied to master row class_index[j] (or j) of w32 / wb and mom, in place of
// writing dW. Race-free only when no other CTA reads those rows while the
// kernel runs: one column slice (dp ≤ kSlice), or weights read from a gathered
// copy (class_index set).
struct SgdParams {
  float lr = 0, momentum = 0, weight_decay = 0;
  float* w32 = nullptr;   // TF32 path: master centres, row stride d
  bf16* wb = nullptr;     // BF16 path: master centres, row stride dp (rounded stochastically:
                          // bf16_round_stochastic, key round_key, element (row_offset + r)·d + q)
  float* mom = nullptr;   // momentum, row stride d (null when μ = 0)
  const int32_t* class_index = nullptr;  // device; null: problem class j is master row j
  uint64_t round_key = 0;
  int64_t row_offset = 0;
  __host__ __device__ bool on() const { return w32 != nullptr || wb != nullptr; }
};

struct BwdParams {
  const void* x_operand;
  WView w;
  const int32_t* labels;
  const float* target_pm1;     // p_y − 1 of the local target (merge_lse / target_pm1_in)
  const float* dzt;      // dz_t/dc
  const float* target_cos;      // target cosine c_t (the value z_t was computed from)
  const float* lse;      // N_pad
  float inv_valid;       // 1/V for rows with label ≠ −1 (0 when V = 0)
  float scale, cvm_m2;
  int dp;
  int64_t n_pad, row_tiles32, nct;
  const uint8_t* mask;   // nct × row_tiles32
  // backward_dx: class tiles [g·tiles_per_group, …) form group g; its dX̂ partial
  // goes to dxp[g] (groups × N_pad × dp floats).
  int64_t tiles_per_group;
  float* dxp;
  // backward_dw: the gradient of W (C × d, row-major), or, when sgd.on(), the
  // fused update instead (grad_w unused).
  float* grad_w;
  SgdParams sgd;
};

// Entry (i, j) of a backward tile (row i with label y ≠ −1, class j), times
// the rowscale 1/V: at the row's local target (y = j) the target's
// (p_y − 1)·dz_t/dc, and c becomes the target cosine z_t was computed from
// (t_j needs it); elsewhere the non-target gradient at the tile's cosine c.
// Shared by backward_dx and backward_dw, so both form G the same way.
__device__ __forceinline__ float grad_entry(const BwdParams& p, int64_t i, int32_t y, int64_t j, float& c) {
  float g;
  if ((int64_t)y == j) {
    g = p.target_pm1[i] * p.dzt[i];
    c = p.target_cos[i];
  } else {
    g = grad_other(c, p.lse[i], p.scale, p.cvm_m2);
  }
  return g * p.inv_valid;
}

// ---- Small kernels (small_kernels.cu) ----------------------------------------
// Row preparation: x̂ = x/‖x‖ (fp32, N×d), 1/‖x‖ (N_pad; 0 for zero rows and
// padding), the operand copy x_operand (N_pad×dp of T, zero padded). The smallest
// row holding a non-finite value is folded into *bad with atomicMin (an
// integer minimum: the result does not depend on the order).
template <class T>
void launch_prep_x(const float* x, int64_t n, int d, int dp, int64_t n_pad, float* x32, float* invx, T* x_operand,
                   unsigned long long* bad, cudaStream_t s);
// 1/‖w_j‖ of fp32 centres already on the device.
void launch_prep_w32(const float* w, int64_t c, int d, float* invw, unsigned long long* bad, cudaStream_t s);
// Rows j0 .. j0+rows of W from an fp32 staging buffer → bf16 (round to nearest
// even, like the CPU backend's emulation), zero padded to dp, and the norms of
// the rounded rows. Non-finite raw values are reported in *bad.
void launch_prep_wbf16(const float* staging, int64_t j0, int64_t rows, int d, int dp, bf16* wb, float* invw,
                       unsigned long long* bad, cudaStream_t s);

struct TargetParams {
  const float* x32;      // N×d normalised rows
  const int32_t* labels; // N_pad
  const float* row_m;    // N per-row margins (elastic kinds) or null
  WView w;
  MarginParams margin;
  int64_t n_pad;
  float *zt, *dzt, *target_cos; // N_pad each (0 for rows without a target)
};
void launch_target(const TargetParams& p, cudaStream_t s);

// Per row: the class-tile partials merged in order (16 warps, each a fixed
// residue class of the tile index, combined in warp order), then the local
// target (z_t, 1, 0) for rows with a local target. Outputs the LSE (or lse_in
// where given), the per-row loss and p_y − 1 from target_terms (accurate for
// confident rows, see margin_math.h) or target_pm1_in, and the row's (m, l, o).
struct MergeParams {
  const float2* partial;      // nct × N_pad (max, Σexp) over non-target columns
  int64_t nct, n_pad, n;
  const int32_t* labels;      // N_pad
  const float* zt;            // N_pad
  const float* lse_in;        // N or null
  const float* target_pm1_in;       // N or null
  float* lse;                 // N_pad
  float* target_pm1;                // N_pad (0 for rows without a local target)
  float* per_sample;          // N_pad (0 for rows without a local target)
  float *row_m, *row_l, *row_o;  // N_pad each
};
void launch_merge(const MergeParams& p, cudaStream_t s);

// The filter mask (see kMask*): one warp per (class tile, 32 rows). A row
// counts when its label is not −1 (−2: counted, target in another shard).
void launch_mask(const float2* partial, const float* lse, const int32_t* labels, int64_t nct, int64_t n_pad,
                 int64_t row_tiles32, float grad_filter, uint8_t* mask, cudaStream_t s);

// dX: dx̂_i = Σ_g dxp[g][i] (g in order), then dx_i = (dx̂_i − x̂_i(x̂_i·dx̂_i))/‖x_i‖.
void launch_finish_dx(const float* dxp, int64_t groups, int64_t n_pad, int dp, int64_t n, int d, const float* x32,
                      const float* invx, float* grad_x, cudaStream_t s);

// ---- Tile kernels ---------------------------------------------------------------
// The operand element type T is bf16 on the BF16 path, float (TF32 tensor
// cores) otherwise. MS_OPERAND_SWITCH is the one place where the run-time flag
// becomes that template parameter: it runs the lambda with OPERAND_T an alias
// of the path's type, e.g.
//   MS_OPERAND_SWITCH(bf16_path, T, [&] { launch_forward<T>(p, s); });
#define MS_OPERAND_SWITCH(BF16_PATH, OPERAND_T, ...) \
  [&] {                                              \
    if (BF16_PATH) {                                 \
      using OPERAND_T = ::ms::cu::bf16;              \
      return __VA_ARGS__();                          \
    } else {                                         \
      using OPERAND_T = float;                       \
      return __VA_ARGS__();                          \
    }                                                \
  }()

template <class T>
void launch_forward(const FwdParams& p, cudaStream_t s);
template <class T>
void launch_backward_dx(const BwdParams& p, int64_t groups, int slices, cudaStream_t s);
template <class T>
void launch_backward_dw(const BwdParams& p, int slices, cudaStream_t s);

}  // namespace cu
}  // namespace ms
