// backward_dw.cu — the fused backward pass, class-centre side: dW.
//
// What is fused, and why: a CTA owns 32 classes (and one 512-column output
// slice) and walks every row tile of 128 rows. Per row tile it recomputes the
// 128×32 cosine tile on tensor cores, forms g' = g_ij/‖w_j‖ in shared memory
// and accumulates Gᵀ·X̂ (32×512, fp32) in registers; it also accumulates
// t_j = Σ_i g_ij·c_ij. At the end it applies the normalisation's chain rule
//   dw_j = invn_j·Σ_i g_ij x̂_i − (invn_j·t_j)·(invn_j·w_j)
// (ŵ_j·dŵ_j = t_j because c_ij = ŵ_j·x̂_i; grouped so that invn_j² cannot
// underflow for huge norms, as in the CPU backend) and writes dW once. The
// rows with a label ≠ −1 count (−2: counted, target in another shard); the
// target entry uses p_y − 1 from merge_lse (or target_pm1_in). The class tile
// has exactly one owner, so there are no atomics and no partial buffers, and
// each W row is read from device memory once (its reuse across row tiles hits
// L2). See backward_dx.cu for why dX̂ is a separate kernel.
//
// Determinism: t_j is summed per thread in row order, then over the 8 warps
// in warp order, then over row tiles in order; the MMA accumulation order is
// fixed by the loop structure.
//
// Tile ownership and bounds:
//   blockIdx.x = class tile (classes [32x, 32x+32), only those < C are stored),
//   blockIdx.y = output slice (columns [512y, 512y+512) ∩ [0, d) are stored);
//   row tiles [128r, 128r+128) ⊂ [0, N_pad); the filter mask is looked up at
//   (class tile 32x/128, rows/32): a row tile whose four entries are all
//   non-zero is skipped, and rows of a non-zero entry get g = 0, so dŴ sees
//   exactly the G that backward_dx sees.
//   Epilogue: warp w handles rows 16w..16w+16 of the row tile, lane = class.
//   MMA: warp w owns output columns [q0 + 64w, +64) if inside dp (dp % 64 == 0).
#include "cuda_common.cuh"
#include "kernels.cuh"

namespace ms {
namespace cu {
namespace {

constexpr int kDwClasses = 32;
constexpr int kDwRows = 128;

template <class T>
struct DwCfg {
  using E = Elem<T>;
  using Tile = CosTile<T, kDwRows, kDwClasses, 8, 1>;
  using Chunk = Staged<T>;                        // X̂ in chunks of Chunk::K rows
  static constexpr int LDG = kDwClasses + E::kPad;
  static constexpr size_t kStageBytes = (size_t)(kThreads / 32) * 256 * sizeof(float);
  static constexpr size_t kUnion = align128(cmax(cmax(Tile::kBytes, Chunk::kBytes), kStageBytes));
  static constexpr size_t kGsOffset = kUnion;
  static constexpr size_t kGsBytes = align128((size_t)kDwRows * LDG * sizeof(T));
  static constexpr size_t kTpartOffset = kGsOffset + kGsBytes;
  static constexpr size_t kCoefOffset = kTpartOffset + (kThreads / 32) * kDwClasses * sizeof(float);
  static constexpr size_t kSmem = kCoefOffset + 2 * kDwClasses * sizeof(float);  // coef, invw
  static_assert(kDwRows % Chunk::K == 0, "whole chunks per row tile");
  static_assert(kTileC % kDwClasses == 0 && kDwRows % kTileR == 0, "aligned with the filter mask");
  static_assert(kRowPad % kDwRows == 0, "row tiles cover N_pad exactly");
  static_assert(kSmem <= 99 * 1024, "fits sm_86/sm_89's 99 KiB per block");
};

// One element of the fused SGD step (see SgdParams): the same operations in
// the same order as the CPU head's Sgd::apply, in fp32.
__device__ __forceinline__ void sgd_update(const SgdParams& s, int64_t j, int q, int d, int dp, float g) {
  const int64_t r = s.class_index ? (int64_t)s.class_index[j] : j;
  const float w = s.wb ? __bfloat162float(s.wb[r * dp + q]) : s.w32[r * d + q];
  float gq = g + s.weight_decay * w;
  if (s.mom) {
    float& b = s.mom[r * d + q];
    b = s.momentum * b + gq;
    gq = b;
  }
  const float nw = w - s.lr * gq;
  if (s.wb) {
    const uint64_t element = (uint64_t)(s.row_offset + r) * (uint64_t)d + (uint64_t)q;
    s.wb[r * dp + q] = __ushort_as_bfloat16(bf16_round_stochastic(nw, s.round_key, element));
  } else {
    s.w32[r * d + q] = nw;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1) backward_dw(const BwdParams p) {
  using Cfg = DwCfg<T>;
  using E = Elem<T>;
  using Tile = typename Cfg::Tile;
  MS_DYNAMIC_SMEM(smem);
  T* Xs = reinterpret_cast<T*>(smem);  // aliases the tile's operands and S
  T* Gs = reinterpret_cast<T*>(smem + Cfg::kGsOffset);
  float* tpart = reinterpret_cast<float*>(smem + Cfg::kTpartOffset);
  float* coef = reinterpret_cast<float*>(smem + Cfg::kCoefOffset);
  float* invs = coef + kDwClasses;
  const float* S = reinterpret_cast<const float*>(smem);
  const T* x_operand = static_cast<const T*>(p.x_operand);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t j0 = (int64_t)blockIdx.x * kDwClasses;
  const int q0 = blockIdx.y * kSlice;
  const int64_t ctm = j0 / kTileC;  // mask class tile
  const int wq = q0 + warp * 64;
  const bool active = wq < p.dp;

  const int64_t jmine = j0 + lane;  // the epilogue column of this thread
  const bool jok = jmine < p.w.c;
  const float inv = jok ? p.w.invw[jmine] : 0.0f;
  float t_acc = 0.0f;  // t_j of class j0+lane, kept by warp 0
  if (warp == 0) invs[lane] = inv;

  Acc<T> acc[2][4];
  zero_acc<T>(acc);

  const int64_t nrow_tiles = p.n_pad / kDwRows;
  for (int64_t rt = 0; rt < nrow_tiles; ++rt) {
    const uint8_t* mrow = p.mask + ctm * p.row_tiles32 + rt * (kDwRows / kTileR);
    const uint8_t m0 = mrow[0], m1 = mrow[1], m2 = mrow[2], m3 = mrow[3];
    if (m0 != kMaskCompute && m1 != kMaskCompute && m2 != kMaskCompute && m3 != kMaskCompute) continue;
    const int64_t row0 = rt * kDwRows;
    Tile::run(x_operand, row0, p.dp, p.w, j0, smem);

    // Rows 16·warp .. 16·warp+16 all fall in mask entry warp/2.
    const int sub = warp >> 1;
    const bool rows_on = (sub == 0 ? m0 : sub == 1 ? m1 : sub == 2 ? m2 : m3) == kMaskCompute;
    float tl = 0.0f;
#pragma unroll 4
    for (int k = 0; k < 16; ++k) {
      const int r = warp * 16 + k;
      const int64_t i = row0 + r;
      const int32_t y = p.labels[i];  // ≥ 0 local target, −1 ignored/padding, −2 counted without a local target
      float gv = 0.0f, cu = 0.0f;
      if (rows_on && jok && y != -1) {
        cu = S[r * Tile::LDS + lane] * inv;
        gv = grad_entry(p, i, y, jmine, cu);
      }
      tl += gv * cu;
      Gs[r * Cfg::LDG + lane] = E::cvt(gv * inv);
    }
    tpart[warp * kDwClasses + lane] = tl;
    __syncthreads();  // G' and tpart complete; S is dead (the X̂ chunks may overwrite it)
    if (warp == 0) {
      float s = 0.0f;
#pragma unroll
      for (int q = 0; q < kThreads / 32; ++q) s += tpart[q * kDwClasses + lane];
      t_acc += s;
    }

    // dŴ'[32 classes, slice] += G'ᵀ(32×128) · X̂[rows, slice](128×slice).
    // A = G'ᵀ: (m = class, k = row) at Gs[k·LDG + m], i.e. column-major.
    mma_staged<T, FragAc<T>, Cfg::LDG, kDwRows>(
        acc, Xs, [&](int r, int k) { return load_x16<T>(x_operand, p.dp, row0 + r, q0 + k); },
        [&](int a, int k) { return Gs + k * Cfg::LDG + a * 16; }, active, warp);
    // The next Tile::run begins with a barrier (protects Xs, Gs and tpart).
  }

  __syncthreads();  // all MMAs done: the staging area below aliases Xs
  if (warp == 0) coef[lane] = inv * t_acc;  // times invn_j·w_jq below
  __syncthreads();
  if (active) {
    float* stage = reinterpret_cast<float*>(smem) + warp * 256;
#pragma unroll
    for (int a = 0; a < 2; ++a) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        wmma::store_matrix_sync(stage, acc[a][b], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int jl = a * 16 + (e >> 4);
          const int64_t j = j0 + jl;
          const int q = wq + b * 16 + (e & 15);
          if (j < p.w.c && q < p.w.d) {
            const float g = stage[e] - coef[jl] * (invs[jl] * w_value(p.w, j, q));
            if (p.sgd.on()) {
              sgd_update(p.sgd, j, q, p.w.d, p.w.dp, g);
            } else {
              p.grad_w[j * (int64_t)p.w.d + q] = g;
            }
          }
        }
        __syncwarp();  // stage is rewritten by the next fragment
      }
    }
  }
}

}  // namespace

template <class T>
void launch_backward_dw(const BwdParams& p, int slices, cudaStream_t s) {
  const size_t smem = DwCfg<T>::kSmem;
  MS_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&backward_dw<T>), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const dim3 grid((unsigned)ceil_div(p.w.c, kDwClasses), (unsigned)slices);
  MS_LAUNCH(backward_dw<T>, grid, kThreads, smem, s, p);
  MS_CUDA_LAUNCHED("backward_dw");
}

template void launch_backward_dw<float>(const BwdParams&, int, cudaStream_t);
template void launch_backward_dw<bf16>(const BwdParams&, int, cudaStream_t);

}  // namespace cu
}  // namespace ms
