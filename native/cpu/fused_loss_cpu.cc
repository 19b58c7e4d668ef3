// fused_loss_cpu.cc — the fused margin-softmax loss on the CPU.
//
// What is fused, and why: the N×C logits never exist. Classes are streamed
// in blocks of Bc; for each block one GEMM gives the Bc×N cosine tile, the
// epilogue applies the margin to the target entries and folds the tile into
// per-row online log-sum-exp states. The backward pass revisits each block
// (from a bounded cache of cosine tiles, or by recomputing the tile), forms
// g = (softmax − onehot)·dz/dc/V and issues two GEMMs: dŴ for the block
// (owned by one thread, written straight into gradWeights) and a per-thread
// partial dX̂. The L2 normalisation of W is never materialised: the block's
// inverse norms scale the tile rows, and its chain rule uses
//   dw_j = invn_j·Σ_i g_ij x̂_i − w_j·invn_j²·t_j,  t_j = Σ_i g_ij c_ij
// (ŵ_j·dŵ_j = t_j because c_ij = ŵ_j·x̂_i).
//
// Threads own contiguous ranges of blocks; per-thread partials (LSE states,
// dX̂) are merged in thread order, so a fixed thread count gives bit-identical
// results run after run. Extra memory: the tile cache (workspace_bytes),
// O(Bc·N) per thread, O(N·d) per thread for dX̂, and C floats of norms.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "bf16_gemm.h"
#include "big_alloc.h"
#include "class_blocks.h"
#include "loss_cpu.h"
#include "simd_dispatch.h"

namespace ms {
namespace {

template <class T>
std::unique_ptr<T[]> uninit(size_t n) {
  return std::unique_ptr<T[]>(new T[n == 0 ? 1 : n]);
}

std::unique_ptr<float[]> rounded_copy(const float* src, size_t n) {
  auto r = uninit<float>(n);
  round_bf16_array(src, r.get(), (int64_t)n);
  return r;
}

double dot_f64(const float* a, const float* b, int64_t n) {
  double s = 0.0;
  for (int64_t k = 0; k < n; ++k) s += (double)a[k] * b[k];
  return s;
}

}  // namespace

int cpu_default_threads() {
  const unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : (int)h;
}

int cpu_simd_width(int requested) { return kernels_for(requested).vw; }

const char* cpu_simd_name(int width) {
  return width >= 16 ? "avx512" : width >= 8 ? "avx2" : "portable";
}

void cpu_loss(const LossProblem& p, LossOutputs& out, const CpuOptions& opt) {
  const KernelSet& K = kernels_for(opt.simd);
  const int64_t N = p.n, C = p.c, D = p.d;
  const bool backward = out.grad_x != nullptr && (out.grad_w != nullptr || p.block_update);
  // Row j of the problem's W (through class_index when sampling).
  auto wrow = [&](int64_t j) { return p.w + (p.class_index ? (int64_t)p.class_index[j] : j) * D; };
  const BlockLayout lay = block_layout(N, C, opt.threads);
  const int64_t ldt = lay.ldt, Bc = lay.bc, nblocks = lay.nblocks;
  const int T = lay.threads;
  const float s = p.margin.scale;
  const float cvm_m2 = cvm_false_margin(p.margin);
  out.total_blocks = nblocks;
  out.skipped_blocks = 0;

  // ---- Rows: normalise X (row-major X̂ and its transpose X̂ᵀ, d×ldt). ----
  const NormalizedRows rows = normalize_rows(K, p.x, N, D, ldt);
  const float* xn = rows.xn.get();
  const float* xt = rows.xt.get();
  const float* invx = rows.invx.get();
  // bf16 compute (weightsDtype 'bfloat16'): the three products take bf16
  // operands (X̂, the bf16 centres, G) and accumulate in fp32, on the matrix
  // path chosen at run time; 'none' rounds the operands and uses the fp32
  // kernels (the same products up to summation order: a product of two bf16
  // values is exact in fp32). Norms, the target cosine (hence the margin) and
  // the chain rule stay in fp32. Error bound: README, "bf16 on the CPU".
  const MatrixPath mp = p.weights_bf16 ? resolve_matrix_path(opt.matrix) : MatrixPath::None;
  const bool packed = mp != MatrixPath::None;
  const int64_t Dp = round_up(D, kBf16KPad), ldtp = round_up(ldt, kBf16KPad), Bcp = round_up(Bc, kBf16KPad);
  std::unique_ptr<float[]> xt_r, xn_r;
  std::unique_ptr<uint16_t[]> xt_p, xn_p;
  if (p.weights_bf16 && !packed) {
    xt_r = rounded_copy(xt, (size_t)(D * ldt));
    xn_r = rounded_copy(xn, (size_t)(N * D));
  } else if (packed) {
    xt_p.reset(new uint16_t[pair_packed_size(Dp, ldt)]);
    pack_pairs_bf16(xt, ldt, (int)D, (int)ldt, (int)Dp, xt_p.get());  // element (k, i) = x̂_ik
    xn_p.reset(new uint16_t[pair_packed_size(ldtp, D)]);
    pack_pairs_bf16(xn, D, (int)N, (int)D, (int)ldtp, xn_p.get());  // element (i, k) = x̂_ik
  }
  const float* xt_op = xt_r ? xt_r.get() : xt;  // the fp32 kernels' X̂ operands
  const float* xn_op = xn_r ? xn_r.get() : xn;
  // bf16 compute: each row's target cosine in fp32 (x̂_i·w_y·invn_y), patched
  // into the tiles so the margin and t_j see full precision.
  auto tcos = std::unique_ptr<float[]>(new float[ldt]());
  // Per-row arrays padded to ldt lanes (padding: ignored rows).
  auto rowscale = std::unique_ptr<float[]>(new float[ldt]());
  auto zt = std::unique_ptr<float[]>(new float[ldt]());
  auto ptm1 = std::unique_ptr<float[]>(new float[ldt]());
  auto dzt = std::unique_ptr<float[]>(new float[ldt]());
  auto lse = std::unique_ptr<float[]>(new float[ldt]());
  // Label −1: ignored; −2: counts, target in another shard; ≥ 0: local target.
  int64_t V = 0;
  for (int64_t i = 0; i < N; ++i) V += p.labels[i] != -1;
  if (p.valid_rows > 0) V = p.valid_rows;
  out.valid_rows = V;
  for (int64_t i = 0; i < N; ++i) rowscale[i] = (p.labels[i] != -1 && V > 0) ? (float)(1.0 / V) : 0.0f;

  // For each thread: its block range, tile cache, and LSE partial states.
  auto invw = uninit<float>(C);
  std::vector<int64_t> b_lo(T), b_hi(T), cached(T);
  const size_t tile_floats = (size_t)(Bc * ldt);
  const size_t cache_tiles_per_thread =
      backward ? opt.workspace_bytes / (size_t)T / (tile_floats * sizeof(float)) : 0;
  std::vector<BigArray<float>> cache(T);
  std::vector<std::unique_ptr<float[]>> st_m(T), st_l(T), st_o(T);
  for (int t = 0; t < T; ++t) {
    b_lo[t] = lay.lo(t);
    b_hi[t] = lay.hi(t);
    cached[t] = std::min<int64_t>((int64_t)cache_tiles_per_thread, b_hi[t] - b_lo[t]);
    if (cached[t] > 0) cache[t] = BigArray<float>(cached[t] * tile_floats);
    st_m[t] = uninit<float>(ldt);
    st_l[t] = uninit<float>(ldt);
    st_o[t] = uninit<float>(ldt);
  }
  // Rows whose label lands in a block, found by sorting rows by label once.
  std::vector<std::pair<int32_t, int32_t>> by_label;  // (label, row)
  for (int64_t i = 0; i < N; ++i)
    if (p.labels[i] >= 0) by_label.emplace_back(p.labels[i], (int32_t)i);
  std::sort(by_label.begin(), by_label.end());
  auto targets_in = [&](int64_t j0, int64_t j1) {
    auto lo = std::lower_bound(by_label.begin(), by_label.end(), std::make_pair((int32_t)j0, INT32_MIN));
    auto hi = std::lower_bound(by_label.begin(), by_label.end(), std::make_pair((int32_t)j1, INT32_MIN));
    return std::make_pair(lo, hi);
  };
  std::vector<int64_t> bad_w(T, -1);

  // The W rows of a block as the kernels see them: the rows themselves, or a
  // gathered (class_index) and/or bf16-rounded copy in per-thread scratch.
  const bool gather = p.weights_bf16 || p.class_index;
  auto block_weights = [&](int64_t j0, int64_t bc, float* scratch) -> const float* {
    if (!gather) return p.w + j0 * D;
    for (int64_t j = 0; j < bc; ++j) {
      const float* src = wrow(j0 + j);
      float* dst = scratch + j * D;
      if (p.weights_bf16) {
        round_bf16_array(src, dst, D);
      } else {
        std::memcpy(dst, src, sizeof(float) * D);
      }
    }
    return scratch;
  };
  // Cosine tile of a block: tile[j·ldt + i] = invn_j·(w_j·x̂_i); padding lanes 0.
  // wa: per-thread scratch for the block's bf16 rows (Bc×Dp) on a matrix path.
  auto cos_tile = [&](const float* wb, int64_t j0, int64_t bc, float* tile, uint16_t* wa) {
    if (packed) {
      pack_rows_bf16(wb, (long)D, (int)bc, (int)D, (int)Dp, wa, (long)Dp);
      bf16_gemm(mp, (int)bc, (int)ldt, (int)Dp, wa, (long)Dp, xt_p.get(), tile, (long)ldt, false);
    } else {
      K.gemm((int)bc, (int)N, (int)D, wb, (long)D, 1, xt_op, (long)ldt, tile, (long)ldt, false);
    }
    for (int64_t j = 0; j < bc; ++j) {
      float* row = tile + j * ldt;
      K.scale(row, invw[j0 + j], (int)N);
      for (int64_t i = N; i < ldt; ++i) row[i] = 0.0f;
    }
  };
  auto patch_target_cos = [&](float* tile, int64_t j0, int64_t j1) {
    if (!p.weights_bf16) return;
    auto [lo, hi] = targets_in(j0, j1);
    for (auto it = lo; it != hi; ++it) tile[(it->first - j0) * ldt + it->second] = tcos[it->second];
  };

  // ---- Forward: stream class blocks, online LSE per row. ----
  parallel(T, [&](int t) {
    auto tile_own = uninit<float>(tile_floats);
    auto wscratch = uninit<float>(gather ? Bc * D : 1);
    auto wa = uninit<uint16_t>(packed ? Bc * Dp : 1);
    auto tcol = uninit<int32_t>(ldt);
    auto ztb = std::unique_ptr<float[]>(new float[ldt]());
    auto bm = uninit<float>(ldt);
    auto bl = uninit<float>(ldt);
    auto bo = uninit<float>(ldt);
    float* m = st_m[t].get();
    float* l = st_l[t].get();
    float* o = st_o[t].get();
    for (int64_t i = 0; i < ldt; ++i) {
      tcol[i] = -1;
      m[i] = -INFINITY;
      l[i] = 0.0f;
      o[i] = 0.0f;
    }
    for (int64_t b = b_lo[t]; b < b_hi[t]; ++b) {
      const int64_t j0 = b * Bc, bc = std::min(Bc, C - j0);
      // Norms of the rows as the kernels see them (bf16: the rounded rows; a
      // finite value rounds to a finite one, or to ±inf beyond bf16's range,
      // which the norm check below then reports).
      const float* wb = block_weights(j0, bc, wscratch.get());
      const float* wn = p.weights_bf16 ? wb : nullptr;
      for (int64_t j = 0; j < bc; ++j) {
        const double sq = K.sumsq(wn ? wn + j * D : wrow(j0 + j), (int)D);
        if (!(sq <= kMaxNormSq)) {  // non-finite, or a norm the fp32 products would overflow
          bad_w[t] = p.class_index ? p.class_index[j0 + j] : j0 + j;
          return;
        }
        invw[j0 + j] = inv_norm_from_sq(sq);
      }
      float* tile = (b - b_lo[t] < cached[t]) ? cache[t].get() + (b - b_lo[t]) * tile_floats : tile_own.get();
      cos_tile(wb, j0, bc, tile, wa.get());
      auto [lo, hi] = targets_in(j0, j0 + bc);
      if (p.weights_bf16) {
        for (auto it = lo; it != hi; ++it) {
          const int32_t i = it->second, col = it->first - (int32_t)j0;
          tcos[i] = (float)(invw[j0 + col] * dot_f64(xn + (int64_t)i * D, wb + (int64_t)col * D, D));
        }
        patch_target_cos(tile, j0, j0 + bc);
      }
      for (auto it = lo; it != hi; ++it) {
        const int32_t i = it->second, col = it->first - (int32_t)j0;
        const float c = tile[col * ldt + i];
        const float rm = p.row_margins ? p.row_margins[i] : 0.0f;
        const Logit L = target_logit(p.margin, c, rm);
        tcol[i] = col;
        if (out.row_target_cos) out.row_target_cos[i] = c;  // each row's target is in one block
        ztb[i] = L.z;
        zt[i] = L.z;
        dzt[i] = L.dz;
      }
      K.block_stats(tile, (int)bc, (int)ldt, s, cvm_m2, tcol.get(), ztb.get(), bm.get(), bl.get(), bo.get());
      for (int64_t i = 0; i < ldt; ++i) {
        const LseState a = lse_merge({m[i], l[i], o[i]}, {bm[i], bl[i], bo[i]});
        m[i] = a.m;
        l[i] = a.l;
        o[i] = a.o;
      }
      for (auto it = lo; it != hi; ++it) tcol[it->second] = -1;
    }
  });
  for (int t = 0; t < T; ++t)
    if (bad_w[t] >= 0)
      throw bad_rows_error("weights", bad_w[t]);

  // Merge the thread partials in thread order → LSE, per-sample loss, mean,
  // and the target's p − 1 (from the target-free sum: see target_terms).
  double total = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    LseState a = lse_empty();
    for (int t = 0; t < T; ++t) a = lse_merge(a, {st_m[t][i], st_l[t][i], st_o[t][i]});
    lse[i] = p.lse_in ? p.lse_in[i] : lse_value(a);
    if (out.row_max) out.row_max[i] = a.m;
    if (out.row_sumexp) out.row_sumexp[i] = a.l;
    if (out.row_sumexp_other) out.row_sumexp_other[i] = a.o;
    if (out.row_target) out.row_target[i] = p.labels[i] >= 0 ? zt[i] : NAN;
    if (out.row_target_cos && p.labels[i] < 0) out.row_target_cos[i] = NAN;
    if (p.labels[i] >= 0) {
      const TargetTerms tt = target_terms(a, zt[i]);
      ptm1[i] = p.target_pm1_in ? p.target_pm1_in[i] : tt.pt_minus_1;
      out.per_sample[i] = tt.per_sample;
      total += tt.per_sample;
    } else {
      out.per_sample[i] = 0.0f;
    }
  }
  out.loss = V > 0 ? total / (double)V : 0.0;
  if (!backward) return;

  // ---- Backward: revisit blocks, g tile, dŴ (owned) and dX̂ (per thread). ----
  std::vector<std::unique_ptr<float[]>> dxh(T);
  std::vector<int64_t> skipped(T, 0);
  parallel(T, [&](int t) {
    auto tile_own = uninit<float>(tile_floats);
    auto gt = uninit<float>(tile_floats);
    auto tj = uninit<float>(Bc);
    auto wscratch = uninit<float>(gather ? Bc * D : 1);
    auto gblock = uninit<float>(p.block_update ? Bc * D : 1);
    auto wa = uninit<uint16_t>(packed ? Bc * Dp : 1);
    auto ga = uninit<uint16_t>(packed ? Bc * ldtp : 1);       // G, class-major (A of dŴ)
    auto gT = uninit<uint16_t>(packed ? N * Bcp : 1);         // G, row-major (A of dX̂)
    auto wp = uninit<uint16_t>(packed ? pair_packed_size(Bcp, D) : 1);  // the block's centres (B of dX̂)
    auto tcol = uninit<int32_t>(ldt);
    for (int64_t i = 0; i < ldt; ++i) tcol[i] = -1;
    dxh[t] = std::unique_ptr<float[]>(new float[N * D]());
    float* dx = dxh[t].get();
    for (int64_t b = b_lo[t]; b < b_hi[t]; ++b) {
      const int64_t j0 = b * Bc, bc = std::min(Bc, C - j0);
      const float* wb = block_weights(j0, bc, wscratch.get());
      const float* tile;
      if (b - b_lo[t] < cached[t]) {
        tile = cache[t].get() + (b - b_lo[t]) * tile_floats;
      } else {
        cos_tile(wb, j0, bc, tile_own.get(), wa.get());
        patch_target_cos(tile_own.get(), j0, j0 + bc);
        tile = tile_own.get();
      }
      auto [lo, hi] = targets_in(j0, j0 + bc);
      for (auto it = lo; it != hi; ++it) tcol[it->second] = it->first - (int32_t)j0;
      const float pmax = K.block_grad(tile, (int)bc, (int)ldt, s, cvm_m2, tcol.get(), ptm1.get(), dzt.get(),
                                      lse.get(), rowscale.get(), invw.get() + j0, gt.get(), tj.get());
      for (auto it = lo; it != hi; ++it) tcol[it->second] = -1;
      float* gw = p.block_update ? gblock.get() : out.grad_w + j0 * D;
      if (p.grad_filter > 0.0f && lo == hi && pmax < p.grad_filter) {
        if (p.block_update) {
          p.block_update(j0, bc, nullptr);
        } else {
          std::memset(gw, 0, sizeof(float) * bc * D);
        }
        ++skipped[t];
        continue;
      }
      // The backward products' G operand in bf16.
      if (packed) {
        pack_rows_bf16(gt.get(), (long)ldt, (int)bc, (int)ldt, (int)ldtp, ga.get(), (long)ldtp);
        pack_rows_bf16_t(gt.get(), (long)ldt, (int)N, (int)bc, (int)Bcp, gT.get(), (long)Bcp);
        pack_pairs_bf16(wb, (long)D, (int)bc, (int)D, (int)Bcp, wp.get());
      } else if (p.weights_bf16) {
        round_bf16_array(gt.get(), gt.get(), bc * ldt);
      }
      // dŴ' = Gᵀ·X̂ (already scaled by invn_j), then the normalisation term.
      if (packed) {
        bf16_gemm(mp, (int)bc, (int)D, (int)ldtp, ga.get(), (long)ldtp, xn_p.get(), gw, (long)D, false);
      } else {
        K.gemm((int)bc, (int)D, (int)N, gt.get(), (long)ldt, 1, xn_op, (long)D, gw, (long)D, false);
      }
      for (int64_t j = 0; j < bc; ++j) {
        // w·invn² underflows for huge norms: form it as (invn·t)·(invn·w).
        const float inv = invw[j0 + j];
        K.sub_scaled(gw + j * D, wb + j * D, inv * tj[j], inv, (int)D);
      }
      // dX̂ += G·W_block (G already carries invn_j, so this is G_raw·Ŵ).
      if (packed) {
        bf16_gemm(mp, (int)N, (int)D, (int)Bcp, gT.get(), (long)Bcp, wp.get(), dx, (long)D, true);
      } else {
        K.gemm((int)N, (int)D, (int)bc, gt.get(), 1, (long)ldt, wb, (long)D, dx, (long)D, true);
      }
      if (p.block_update) p.block_update(j0, bc, gw);
    }
  });
  for (int t = 0; t < T; ++t) out.skipped_blocks += skipped[t];

  // Sum the per-thread dX̂ in thread order, then the normalisation's chain rule.
  for (int64_t i = 0; i < N; ++i) {
    float* gx = out.grad_x + i * D;
    for (int64_t q = 0; q < D; ++q) {
      float acc = 0.0f;
      for (int t = 0; t < T; ++t) acc += dxh[t][i * D + q];
      gx[q] = acc;
    }
    double dot = 0.0;
    for (int64_t q = 0; q < D; ++q) dot += (double)gx[q] * xn[i * D + q];
    const float inv = invx[i];
    for (int64_t q = 0; q < D; ++q) gx[q] = (gx[q] - (float)dot * xn[i * D + q]) * inv;
  }
}

}  // namespace ms
