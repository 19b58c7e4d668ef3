// kernels.cuh — one parameter struct per kernel family and the host-side
// launchers (each launcher error-checks its launch). Kernels live in
// forward_tiles.cu, backward_dx.cu, backward_dw.cu and small_kernels.cu.
//
// Pipeline of one call (all on one stream, no atomics on any floating-point
// value, every reduction in a fixed order → bit-reproducible results):
//   prep_x        X → x̂ (fp32), 1/‖x‖, operand copy xop (T), non-finite check
//   prep_w        W → 1/‖w‖ (and the bf16 copy on the BF16 path), non-finite check
//   target        per row: c_t = x̂·ŵ_y in fp32/fp64 (not on tensor cores: arccos
//                 amplifies TF32's error near |c| = 1), z_t and dz_t/dc
//   forward       tiles → per-(class tile, row) partial (max, Σexp)
//   merge         per row, the partials in class-tile order → LSE, per-row loss
//   mask          per (class tile, 32 rows): skip for the backward? (filter)
//   backward_dx   recompute tiles, g, dX̂ partial per class group (owned)
//   finish_dx     Σ over class groups in order, then the normalisation's chain rule
//   backward_dw   recompute tiles, g, dŴ for an owned class tile, chain rule
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

struct FwdParams {
  const void* xop;       // N_pad × dp operand copy of X̂ (T)
  WView w;
  const int32_t* labels; // N_pad, −1 for ignored rows and padding
  const float* zt;       // N_pad target logits
  float scale, cvm_m2;
  int dp;
  int64_t n_pad, nrt64, nct;
  float2* partial;       // nct × N_pad: (max z, Σ exp(z − max)) of each class tile and row
};

struct BwdParams {
  const void* xop;
  WView w;
  const int32_t* labels;
  const float* zt;       // target logit z_t
  const float* dzt;      // dz_t/dc
  const float* ctg;      // target cosine c_t (the value z_t was computed from)
  const float* lse;      // N_pad
  float inv_valid;       // 1/V (0 when every row is ignored)
  float scale, cvm_m2;
  int dp;
  int64_t n_pad, nrt32, nct;
  const uint8_t* mask;   // nct × nrt32
  // backward_dx: class tiles [g·tiles_per_group, …) form group g; its dX̂ partial
  // goes to dxp[g] (groups × N_pad × dp floats).
  int64_t tiles_per_group;
  float* dxp;
  // backward_dw: the gradient of W (C × d, row-major).
  float* grad_w;
};

// ---- Small kernels (small_kernels.cu) ----------------------------------------
// Row preparation: x̂ = x/‖x‖ (fp32, N×d), 1/‖x‖ (N_pad; 0 for zero rows and
// padding), the operand copy xop (N_pad×dp of T, zero padded). The smallest
// row holding a non-finite value is folded into *bad with atomicMin (an
// integer minimum: the result does not depend on the order).
template <class T>
void launch_prep_x(const float* x, int64_t n, int d, int dp, int64_t n_pad, float* x32, float* invx, T* xop,
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
  float *zt, *dzt, *ctg; // N_pad each (0 for rows without a target)
};
void launch_target(const TargetParams& p, cudaStream_t s);

// LSE_i = merge of partial[ct][i] for ct = 0, 1, … (16 warps, each a fixed
// residue class of ct, merged in warp order); per_sample_i = LSE_i − z_t,i for
// counted rows, 0 otherwise.
void launch_merge(const float2* partial, int64_t nct, int64_t n_pad, int64_t n, const int32_t* labels,
                  const float* zt, float* lse, float* per_sample, cudaStream_t s);

// The filter mask (see kMask*): one warp per (class tile, 32 rows).
void launch_mask(const float2* partial, const float* lse, const int32_t* labels, int64_t nct, int64_t n_pad,
                 int64_t nrt32, float grad_filter, uint8_t* mask, cudaStream_t s);

// dX: dx̂_i = Σ_g dxp[g][i] (g in order), then dx_i = (dx̂_i − x̂_i(x̂_i·dx̂_i))/‖x_i‖.
void launch_finish_dx(const float* dxp, int64_t groups, int64_t n_pad, int dp, int64_t n, int d, const float* x32,
                      const float* invx, float* grad_x, cudaStream_t s);

// ---- Tile kernels ---------------------------------------------------------------
template <class T>
void launch_forward(const FwdParams& p, cudaStream_t s);
template <class T>
void launch_backward_dx(const BwdParams& p, int64_t groups, int slices, cudaStream_t s);
template <class T>
void launch_backward_dw(const BwdParams& p, int slices, cudaStream_t s);

}  // namespace cu
}  // namespace ms
