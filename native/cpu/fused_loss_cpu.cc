// fused_loss_cpu.cc — the fused margin-softmax loss on the CPU.
//
// What is fused, and why: the N×C logits never exist. Classes are streamed
// in blocks; for each block one GEMM gives the block_classes×N cosine tile, the
// epilogue applies the margin to the target entries and folds the tile into
// per-row online log-sum-exp states. The backward pass revisits each block
// (from a bounded cache of cosine tiles, or by recomputing the tile), forms
// g = (softmax − onehot)·dz/dc/V and issues two GEMMs: dŴ for the block
// (owned by one thread, written straight into gradWeights) and a partial dX̂
// per chunk of blocks. The L2 normalisation of W is never materialised: the block's
// inverse norms scale the tile rows, and its chain rule uses
//   dw_j = invn_j·Σ_i g_ij x̂_i − w_j·invn_j²·t_j,  t_j = Σ_i g_ij c_ij
// (ŵ_j·dŵ_j = t_j because c_ij = ŵ_j·x̂_i).
//
// While a block's products run, the next block's centres (and, backward, its
// cached tile) are fetched into L2 (KernelSet::gemm_prefetch; bf16_gemm's
// `next` on AVX512-BF16), so the stream of W from memory overlaps the FMAs
// instead of stalling the norms, the rounding and the packing: measured +7 to
// +26 % forward + backward at C = 10⁵ on one core (fp32; Xeon, Emerald Rapids)
// and +3 to +14 % (bf16 compute; AMD EPYC Zen 4, 2 threads), versions
// interleaved, results bit-identical.
//
// The blocks are grouped into chunks of consecutive blocks, fixed by the
// block count and the thread count, that the threads take in order as they
// finish the last one (Chunk). Partials (LSE states, dX̂) belong to the chunk
// and are merged in chunk order, so a fixed thread count gives bit-identical
// results run after run, whichever thread ran which chunk. Extra memory: the
// tile cache (workspace_bytes), O(block_classes·N) per thread, O(N·d) per
// chunk for dX̂ (loss_chunks), and C floats of norms.
//
// The steps of cpu_loss, top to bottom: normalise the rows (and make their
// bf16 operands), count the rows, make the chunks; forward pass
// (forward_block per block); merge the chunk partials into the LSE and the
// loss; backward pass (backward_block); sum the dX̂ partials and apply the
// rows' normalisation chain rule (finish_grad_x). One LossCall holds what the
// steps pass on.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "bf16_gemm.h"      // bf16 rounding, pair packing and the bf16 matrix paths
#include "big_alloc.h"      // BigArray: the tile cache
#include "class_blocks.h"   // BlockLayout, normalize_rows, parallel
#include "loss_cpu.h"       // LossProblem, LossOutputs, CpuOptions (the contract)
#include "simd_dispatch.h"  // KernelSet: gemm and the two epilogues per ISA

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

// bf16 compute (weightsDtype 'bfloat16'): the three products take bf16
// operands (X̂, the bf16 centres, G) and accumulate in fp32, on the matrix
// path chosen at run time; 'none' rounds the operands and uses the fp32
// kernels (the same products up to summation order: a product of two bf16
// values is exact in fp32). Norms, the target cosine (hence the margin) and
// the chain rule stay in fp32. Error bound: README, "bf16 on the CPU".
struct RowOperands {
  MatrixPath path = MatrixPath::None;
  bool packed = false;                    // a bf16 matrix path: operands pair-packed
  int64_t d_pad = 0, ldt_pad = 0, block_pad = 0;  // D, ldt, block_classes rounded to kBf16KPad
  std::unique_ptr<float[]> xt_rounded, xn_rounded;       // bf16 without a matrix path
  std::unique_ptr<uint16_t[]> xt_packed, xn_packed;      // bf16 on a matrix path
  const float* xt = nullptr;  // the fp32 kernels' X̂ᵀ and X̂ operands
  const float* xn = nullptr;
  // xt and xn packed once as the B operands of the cosine and dŴ products
  // (KernelSet::pack_b_whole), where the kernel set can; else null.
  std::unique_ptr<float[]> xt_b, xn_b;
};

// Bytes that a product fetches into L2 while it runs (the next block's operands).
struct Prefetch {
  const void* at = nullptr;
  size_t bytes = 0;
};

// The centre rows of a block as the products read them: fp32 rows (w, row
// stride d) for the fp32 kernels, or bf16 rows (a, row stride lda) on a
// matrix path, where they are the only copy: rounded from fp32 centres
// straight into the operand, or the stored bf16 rows themselves. The norms,
// the target cosines and the backward chain rule read a row in fp32 through
// row(), which widens a bf16 row (exactly) into a buffer of d floats; on a
// matrix path the rows' sums of squares come with them (sq, sumsq_bf16's
// order, formed while rounding fp32 centres into the operand) where asked.
struct BlockRows {
  const float* w = nullptr;
  const uint16_t* a = nullptr;
  long lda = 0;
  const double* sq = nullptr;
  const float* row(int64_t j, int64_t d, float* buf) const {
    if (w) return w + j * d;
    widen_bf16_array(a + j * lda, buf, d);
    return buf;
  }
};

// A run of consecutive class blocks (LossCall::ranges; lo is its first) that
// one thread processes at a time: the first `cached` of their cosine tiles,
// kept for the backward pass (at `cache`, its slice of the tile cache), and
// its partial results. Threads take chunks in order from a shared counter
// (ChunkQueue), so a thread the host slows down takes fewer of them; the
// partials belong to the chunk, not to the thread that happened to run it,
// and are merged in chunk order, so the results do not depend on which thread
// ran what (chunk_ranges).
struct Chunk {
  int64_t lo = 0, cached = 0;
  float* cache = nullptr;
  std::unique_ptr<float[]> part_max, part_sumexp, part_other;  // per-row LSE state over its blocks
  int64_t bad_row = -1;                                      // a W row with a bad norm (forward)
  int64_t skipped = 0;                                       // blocks the filter skipped (backward)
  float* grad_xn = nullptr;                                  // its dX̂ partial, N×d (LossCall::grad_xn_parts)
  bool grad_xn_written = false;                              // false: every block skipped, no partial
};

// The block a thread runs next (b < 0: none) and its chunk.
struct NextBlock {
  const Chunk* ch = nullptr;
  int64_t b = -1;
};

// Everything one call reads and builds, passed from step to step.
struct LossCall {
  const LossProblem& p;
  LossOutputs& out;
  const KernelSet& kern;
  const int64_t N, C, D;
  const BlockLayout lay;
  const int64_t ldt, block_classes;
  const float s, cvm_m2;
  const bool backward;
  const bool gather;  // the kernels read W rows through a copy (class_index and/or bf16)
  const size_t tile_floats;
  NormalizedRows rows;
  RowOperands ops;
  // Per-row arrays padded to ldt lanes (padding: ignored rows).
  std::unique_ptr<float[]> target_cos;  // bf16 compute: x̂_i·w_y·invn_y in fp32
  std::unique_ptr<float[]> rowscale, zt, dzt, target_pm1, lse;
  int64_t V = 0;
  std::unique_ptr<float[]> invw;  // 1/‖w_j‖ of the rows as the kernels see them
  std::vector<Chunk> chunks;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // the chunks' block ranges
  BigArray<float> tile_cache;     // the chunks' cached tiles
  BigArray<float> grad_xn_parts;  // the chunks' dX̂ partials
  std::vector<std::pair<int32_t, int32_t>> by_label;  // (label, row) of the local targets, sorted

  LossCall(const LossProblem& p_, LossOutputs& out_, const CpuOptions& opt)
      : p(p_),
        out(out_),
        kern(kernels_for(opt.simd)),
        N(p.n),
        C(p.c),
        D(p.d),
        lay(block_layout(N, C, opt.threads)),
        ldt(lay.ldt),
        block_classes(lay.block_classes),
        s(p.margin.scale),
        cvm_m2(cvm_false_margin(p.margin)),
        backward(out.grad_x != nullptr && (out.grad_w != nullptr || p.block_update)),
        gather(p.weights_bf16 || p.class_index),
        tile_floats((size_t)(block_classes * ldt)) {}

  // Floats of per-thread scratch block_weights needs for its fp32 row copies.
  int64_t fp32_rows_floats() const { return gather && !ops.packed ? block_classes * D : 1; }

  // Row of W that problem class j reads (class_index when sampling).
  int64_t row_of(int64_t j) const { return p.class_index ? (int64_t)p.class_index[j] : j; }
  // Row j of the problem's fp32 W (not with bf16 storage, p.w_bf16).
  const float* wrow(int64_t j) const { return p.w + row_of(j) * D; }

  // The rows whose label lands in classes [j0, j1), as a range of by_label.
  auto targets_in(int64_t j0, int64_t j1) const {
    auto lo = std::lower_bound(by_label.begin(), by_label.end(), std::make_pair((int32_t)j0, INT32_MIN));
    auto hi = std::lower_bound(by_label.begin(), by_label.end(), std::make_pair((int32_t)j1, INT32_MIN));
    return std::make_pair(lo, hi);
  }

  // The W rows of a block for the fp32 kernels: the rows themselves, or a
  // gathered (class_index) and/or bf16 copy in per-thread scratch (rounded
  // from fp32 centres, or widened, exactly, from bf16 storage).
  const float* block_weights(ClassBlock blk, float* scratch) const {
    if (!gather) return p.w + blk.j0 * D;
    for (int64_t j = 0; j < blk.count; ++j) {
      float* dst = scratch + j * D;
      if (p.w_bf16) {
        widen_bf16_array(p.w_bf16 + row_of(blk.j0 + j) * D, dst, D);
      } else if (p.weights_bf16) {
        round_bf16_array(wrow(blk.j0 + j), dst, D);
      } else {
        std::memcpy(dst, wrow(blk.j0 + j), sizeof(float) * D);
      }
    }
    return scratch;
  }

  // The block's rows as the products read them (BlockRows). On a matrix
  // path: bf16 storage whose rows already have the operand's form (no
  // class_index, d a multiple of kBf16KPad) is read in place; otherwise the
  // rows go into `wa` (block_classes×d_pad), rounded from fp32 or copied.
  // Skipping the rounded fp32 copy saves its pass and keeps the block's
  // 2·d bytes per class, not 6·d, in L2 (docs/cpu.md).
  // sq (block_classes doubles) receives the rows' sums of squares, where given.
  BlockRows block_rows(ClassBlock blk, float* scratch, uint16_t* wa, double* sq) const {
    if (!ops.packed) return {block_weights(blk, scratch), nullptr, 0, nullptr};
    const int64_t dp = ops.d_pad;
    BlockRows r{nullptr, wa, (long)dp, sq};
    if (p.w_bf16 && !p.class_index && D == dp) {
      r.a = p.w_bf16 + blk.j0 * D;
      r.lda = (long)D;
    } else if (!p.w_bf16 && !p.class_index) {
      if (sq) {
        pack_rows_bf16_sumsq(p.w + blk.j0 * D, (long)D, (int)blk.count, (int)D, (int)dp, wa, (long)dp, sq);
        return r;
      }
      pack_rows_bf16(p.w + blk.j0 * D, (long)D, (int)blk.count, (int)D, (int)dp, wa, (long)dp);
    } else {
      for (int64_t j = 0; j < blk.count; ++j) {
        uint16_t* dst = wa + j * dp;
        if (p.w_bf16) {
          std::memcpy(dst, p.w_bf16 + row_of(blk.j0 + j) * D, sizeof(uint16_t) * D);
          std::memset(dst + D, 0, sizeof(uint16_t) * (dp - D));
        } else {
          pack_rows_bf16(wrow(blk.j0 + j), (long)D, 1, (int)D, (int)dp, dst, (long)dp);
        }
      }
    }
    if (sq)
      for (int64_t j = 0; j < blk.count; ++j) sq[j] = sumsq_bf16(r.a + j * r.lda, (int)D);
    return r;
  }

  // The centre rows of the block the thread runs next, as stored (fp32 or
  // bf16): what the products fetch into L2 while they run (Prefetch). None
  // where the rows are gathered through class_index, or there is no next block.
  Prefetch next_rows(const NextBlock& next) const {
    if (next.b < 0 || p.class_index) return {};
    const ClassBlock nb = lay.block(next.b);
    if (p.w_bf16) return {p.w_bf16 + nb.j0 * D, (size_t)(nb.count * D) * sizeof(uint16_t)};
    return {p.w + nb.j0 * D, (size_t)(nb.count * D) * sizeof(float)};
  }

  // The fp32 GEMM, fetching `next` into L2 while it runs where the kernel set can.
  void gemm(int M, int NN, int K, const float* A, long sam, long sak, const float* B, long ldb, float* C, long ldc,
            bool accumulate, Prefetch next) const {
    if (kern.gemm_prefetch && next.bytes > 0) {
      kern.gemm_prefetch(M, NN, K, A, sam, sak, B, ldb, C, ldc, accumulate, next.at, next.bytes);
    } else {
      kern.gemm(M, NN, K, A, sam, sak, B, ldb, C, ldc, accumulate);
    }
  }

  // The fp32 GEMM on a B operand that every block shares (X̂ᵀ or X̂): its
  // packed form Bp where there is one, else B itself. sub (only with Bp):
  // the rows' RowSub, applied in the product's stores.
  void gemm_shared(int M, int NN, int K, const float* A, long sam, long sak, const float* B, long ldb,
                   const float* Bp, float* C, long ldc, Prefetch next, const RowSub* sub = nullptr) const {
    if (Bp) {
      kern.gemm_packed(M, NN, K, A, sam, sak, Bp, C, ldc, false, next.at, next.bytes, sub);
    } else {
      gemm(M, NN, K, A, sam, sak, B, ldb, C, ldc, false, next);
    }
  }

  // Cosine tile of a block: tile[j·ldt + i] = invn_j·(w_j·x̂_i); padding lanes 0.
  void cos_tile(const BlockRows& wr, ClassBlock blk, float* tile, Prefetch next) const {
    if (ops.packed) {
      bf16_gemm(ops.path, (int)blk.count, (int)ldt, (int)ops.d_pad, wr.a, wr.lda, ops.xt_packed.get(), tile,
                (long)ldt, false, next.at, next.bytes);
    } else {
      gemm_shared((int)blk.count, (int)N, (int)D, wr.w, (long)D, 1, ops.xt, (long)ldt, ops.xt_b.get(), tile,
                  (long)ldt, next);
    }
    for (int64_t j = 0; j < blk.count; ++j) {
      float* row = tile + j * ldt;
      kern.scale(row, invw[blk.j0 + j], (int)N);
      for (int64_t i = N; i < ldt; ++i) row[i] = 0.0f;
    }
  }

  // bf16 compute: the tile's target entries replaced by the fp32 target cosines.
  void patch_target_cos(float* tile, ClassBlock blk) const {
    if (!p.weights_bf16) return;
    auto [lo, hi] = targets_in(blk.j0, blk.j0 + blk.count);
    for (auto it = lo; it != hi; ++it) tile[(it->first - blk.j0) * ldt + it->second] = target_cos[it->second];
  }

  // The tile chunk `ch` keeps for its block b, or null.
  float* cached_tile(const Chunk& ch, int64_t b) const {
    return b - ch.lo < ch.cached ? ch.cache + (b - ch.lo) * tile_floats : nullptr;
  }
};

// ---- Rows: normalise X (row-major X̂ and its transpose X̂ᵀ, d×ldt) and make
// the products' X̂ operands. ----
void prepare_rows(LossCall& L, const CpuOptions& opt) {
  L.rows = normalize_rows(L.kern, L.p.x, L.N, L.D, L.ldt);
  const float* xn = L.rows.xn.get();
  const float* xt = L.rows.xt.get();
  RowOperands& ops = L.ops;
  ops.path = L.p.weights_bf16 ? resolve_matrix_path(opt.matrix) : MatrixPath::None;
  ops.packed = ops.path != MatrixPath::None;
  ops.d_pad = round_up(L.D, kBf16KPad);
  ops.ldt_pad = round_up(L.ldt, kBf16KPad);
  ops.block_pad = round_up(L.block_classes, kBf16KPad);
  if (L.p.weights_bf16 && !ops.packed) {
    ops.xt_rounded = rounded_copy(xt, (size_t)(L.D * L.ldt));
    ops.xn_rounded = rounded_copy(xn, (size_t)(L.N * L.D));
  } else if (ops.packed) {
    ops.xt_packed.reset(new uint16_t[pair_packed_size(ops.d_pad, L.ldt)]);
    pack_pairs_bf16(xt, L.ldt, (int)L.D, (int)L.ldt, (int)ops.d_pad, ops.xt_packed.get());  // element (k, i) = x̂_ik
    ops.xn_packed.reset(new uint16_t[pair_packed_size(ops.ldt_pad, L.D)]);
    pack_pairs_bf16(xn, L.D, (int)L.N, (int)L.D, (int)ops.ldt_pad, ops.xn_packed.get());  // element (i, k) = x̂_ik
  }
  ops.xt = ops.xt_rounded ? ops.xt_rounded.get() : xt;
  ops.xn = ops.xn_rounded ? ops.xn_rounded.get() : xn;
  const KernelSet& k = L.kern;
  if (!ops.packed && k.pack_b_whole && k.gemm_packed) {
    const int64_t nr = 2 * k.vw;  // the kernels' panel width
    ops.xt_b = uninit<float>((size_t)(L.D * round_up(L.N, nr)));
    k.pack_b_whole((int)L.D, (int)L.N, ops.xt, (long)L.ldt, ops.xt_b.get());
    if (L.backward) {
      ops.xn_b = uninit<float>((size_t)(L.N * round_up(L.D, nr)));
      k.pack_b_whole((int)L.N, (int)L.D, ops.xn, (long)L.D, ops.xn_b.get());
    }
  }
}

// ---- The per-row arrays, V and each row's weight 1/V. ----
// Label −1: ignored; −2: counts, target in another shard; ≥ 0: local target.
void count_rows(LossCall& L) {
  const int64_t ldt = L.ldt;
  L.target_cos.reset(new float[ldt]());
  L.rowscale.reset(new float[ldt]());
  L.zt.reset(new float[ldt]());
  L.target_pm1.reset(new float[ldt]());
  L.dzt.reset(new float[ldt]());
  L.lse.reset(new float[ldt]());
  int64_t V = 0;
  for (int64_t i = 0; i < L.N; ++i) V += L.p.labels[i] != -1;
  if (L.p.valid_rows > 0) V = L.p.valid_rows;
  L.V = V;
  L.out.valid_rows = V;
  for (int64_t i = 0; i < L.N; ++i) L.rowscale[i] = (L.p.labels[i] != -1 && V > 0) ? (float)(1.0 / V) : 0.0f;
}

// ---- The chunks: block ranges, their share of the tile cache (the same
// fraction of each chunk's tiles), LSE partial states and dX̂ partials; the
// rows sorted by label (to find the targets of a block). ----
void make_chunks(LossCall& L, size_t workspace_bytes) {
  const int64_t nblocks = L.lay.nblocks;
  L.invw = uninit<float>(L.C);
  L.ranges = loss_chunks(L.lay, L.N, L.D);
  const auto& ranges = L.ranges;
  const int64_t slots =
      L.backward ? std::min<int64_t>(nblocks, (int64_t)(workspace_bytes / (L.tile_floats * sizeof(float)))) : 0;
  if (slots > 0) L.tile_cache = BigArray<float>(slots * L.tile_floats, Fill::any);
  if (L.backward) L.grad_xn_parts = BigArray<float>(ranges.size() * L.N * L.D, Fill::any);
  L.chunks.resize(ranges.size());
  for (size_t c = 0; c < ranges.size(); ++c) {
    Chunk& ch = L.chunks[c];
    ch.lo = ranges[c].first;
    const int64_t first = slots * ch.lo / nblocks, last = slots * ranges[c].second / nblocks;
    ch.cached = last - first;
    ch.cache = L.tile_cache.get() + first * L.tile_floats;
    if (L.backward) ch.grad_xn = L.grad_xn_parts.get() + c * L.N * L.D;
    ch.part_max = uninit<float>(L.ldt);
    ch.part_sumexp = uninit<float>(L.ldt);
    ch.part_other = uninit<float>(L.ldt);
  }
  for (int64_t i = 0; i < L.N; ++i)
    if (L.p.labels[i] >= 0) L.by_label.emplace_back(L.p.labels[i], (int32_t)i);
  std::sort(L.by_label.begin(), L.by_label.end());
}

// ---- Forward: stream class blocks, online LSE per row. ----
struct ForwardScratch {
  std::unique_ptr<float[]> tile, wrows, row;
  std::unique_ptr<double[]> sq;  // the block's rows' sums of squares
  std::unique_ptr<uint16_t[]> wa;
  std::unique_ptr<int32_t[]> target_col;  // per row: its target's column in this block, or −1
  std::unique_ptr<float[]> target_z;      // per row: its target logit (read where target_col ≥ 0)
  std::unique_ptr<float[]> blk_max, blk_sumexp, blk_other;
  explicit ForwardScratch(const LossCall& L)
      : tile(uninit<float>(L.tile_floats)),
        wrows(uninit<float>(L.fp32_rows_floats())),
        row(uninit<float>(L.D)),
        sq(uninit<double>(L.block_classes)),
        wa(uninit<uint16_t>(L.ops.packed ? L.block_classes * L.ops.d_pad : 1)),
        target_col(uninit<int32_t>(L.ldt)),
        target_z(new float[L.ldt]()),
        blk_max(uninit<float>(L.ldt)),
        blk_sumexp(uninit<float>(L.ldt)),
        blk_other(uninit<float>(L.ldt)) {
    for (int64_t i = 0; i < L.ldt; ++i) target_col[i] = -1;
  }
};

// Norms of the block's rows as the kernels see them (bf16: the rounded rows; a
// finite value rounds to a finite one, or to ±inf beyond bf16's range, which
// the check then reports). False, with ch.bad_row set, for a bad row.
// fp32 rows are summed several at a time (KernelSet::sumsq_rows) into sq_buf.
bool block_norms(LossCall& L, Chunk& ch, ClassBlock blk, const BlockRows& wr, float* buf, double* sq_buf) {
  const double* sums = wr.sq;
  if (!sums && wr.w && L.kern.sumsq_rows) {
    L.kern.sumsq_rows(wr.w, (long)L.D, (int)blk.count, (int)L.D, sq_buf);
    sums = sq_buf;
  }
  for (int64_t j = 0; j < blk.count; ++j) {
    const double sq = sums ? sums[j] : L.kern.sumsq(wr.row(j, L.D, buf), (int)L.D);
    if (!(sq <= kMaxNormSq)) {  // non-finite, or a norm the fp32 products would overflow
      ch.bad_row = L.row_of(blk.j0 + j);
      return false;
    }
    L.invw[blk.j0 + j] = inv_norm_from_sq(sq);
  }
  return true;
}

// The margin on the targets of the block's rows: their logits and derivatives.
void block_targets(LossCall& L, ForwardScratch& fs, ClassBlock blk, const BlockRows& wr, float* tile) {
  const LossProblem& p = L.p;
  auto [lo, hi] = L.targets_in(blk.j0, blk.j0 + blk.count);
  if (p.weights_bf16) {
    for (auto it = lo; it != hi; ++it) {
      const int32_t i = it->second, col = it->first - (int32_t)blk.j0;
      L.target_cos[i] = (float)(L.invw[blk.j0 + col] *
                                dot_f64(L.rows.xn.get() + (int64_t)i * L.D, wr.row(col, L.D, fs.row.get()), L.D));
    }
    L.patch_target_cos(tile, blk);
  }
  for (auto it = lo; it != hi; ++it) {
    const int32_t i = it->second, col = it->first - (int32_t)blk.j0;
    const float c = tile[col * L.ldt + i];
    const float rm = p.row_margins ? p.row_margins[i] : 0.0f;
    const Logit z = target_logit(p.margin, c, rm);
    fs.target_col[i] = col;
    if (L.out.row_target_cos) L.out.row_target_cos[i] = c;  // each row's target is in one block
    fs.target_z[i] = z.z;
    L.zt[i] = z.z;
    L.dzt[i] = z.dz;
  }
}

// One block of the forward pass: false for a bad W row.
bool forward_block(LossCall& L, Chunk& ch, ForwardScratch& fs, int64_t b, const NextBlock& next) {
  const ClassBlock blk = L.lay.block(b);
  const BlockRows wr = L.block_rows(blk, fs.wrows.get(), fs.wa.get(), fs.sq.get());
  if (!block_norms(L, ch, blk, wr, fs.row.get(), fs.sq.get())) return false;
  float* tile = L.cached_tile(ch, b);
  if (!tile) tile = fs.tile.get();
  L.cos_tile(wr, blk, tile, L.next_rows(next));
  block_targets(L, fs, blk, wr, tile);
  L.kern.block_stats(tile, (int)blk.count, (int)L.ldt, L.s, L.cvm_m2, fs.target_col.get(), fs.target_z.get(),
                     fs.blk_max.get(), fs.blk_sumexp.get(), fs.blk_other.get());
  for (int64_t i = 0; i < L.ldt; ++i) {
    const LseState a = lse_merge({ch.part_max[i], ch.part_sumexp[i], ch.part_other[i]},
                                 {fs.blk_max[i], fs.blk_sumexp[i], fs.blk_other[i]});
    ch.part_max[i] = a.m;
    ch.part_sumexp[i] = a.l;
    ch.part_other[i] = a.o;
  }
  auto [lo, hi] = L.targets_in(blk.j0, blk.j0 + blk.count);
  for (auto it = lo; it != hi; ++it) fs.target_col[it->second] = -1;
  return true;
}

// One thread's part of a pass (take_chunks over L's chunks): fn(chunk, b,
// next) for each block, after begin(chunk), with `next` the block the thread
// runs after b, so that b's products fetch its operands.
template <class Begin, class Fn>
void run_chunks(LossCall& L, ChunkQueue& queue, Begin begin, Fn fn) {
  take_chunks(
      L.ranges, queue, [&](int64_t c) { begin(L.chunks[c]); },
      [&](int64_t c, int64_t b, int64_t next_c, int64_t next_b) {
        return fn(L.chunks[c], b, next_b < 0 ? NextBlock{} : NextBlock{&L.chunks[next_c], next_b});
      });
}

void forward_thread(LossCall& L, ChunkQueue& queue) {
  ForwardScratch fs(L);
  run_chunks(
      L, queue,
      [&](Chunk& ch) {
        for (int64_t i = 0; i < L.ldt; ++i) {
          ch.part_max[i] = -INFINITY;
          ch.part_sumexp[i] = 0.0f;
          ch.part_other[i] = 0.0f;
        }
      },
      [&](Chunk& ch, int64_t b, const NextBlock& next) { return forward_block(L, ch, fs, b, next); });
}

// Merge the chunk partials in chunk order → LSE, per-sample loss, mean,
// and the target's p − 1 (from the target-free sum: see target_terms).
void merge_forward(LossCall& L) {
  const LossProblem& p = L.p;
  LossOutputs& out = L.out;
  double total = 0.0;
  for (int64_t i = 0; i < L.N; ++i) {
    LseState a = lse_empty();
    for (const Chunk& ch : L.chunks) a = lse_merge(a, {ch.part_max[i], ch.part_sumexp[i], ch.part_other[i]});
    L.lse[i] = p.lse_in ? p.lse_in[i] : lse_value(a);
    if (out.row_max) out.row_max[i] = a.m;
    if (out.row_sumexp) out.row_sumexp[i] = a.l;
    if (out.row_sumexp_other) out.row_sumexp_other[i] = a.o;
    if (out.row_target) out.row_target[i] = p.labels[i] >= 0 ? L.zt[i] : NAN;
    if (out.row_target_cos && p.labels[i] < 0) out.row_target_cos[i] = NAN;
    if (p.labels[i] >= 0) {
      const TargetTerms tt = target_terms(a, L.zt[i]);
      L.target_pm1[i] = p.target_pm1_in ? p.target_pm1_in[i] : tt.pt_minus_1;
      out.per_sample[i] = tt.per_sample;
      total += tt.per_sample;
    } else {
      out.per_sample[i] = 0.0f;
    }
  }
  out.loss = L.V > 0 ? total / (double)L.V : 0.0;
}

// ---- Backward: revisit blocks, g tile, dŴ (owned) and dX̂ (per chunk). ----
struct BackwardScratch {
  std::unique_ptr<float[]> tile, g, tj, tj_inv, wrows, row, grad_block;  // tj_inv: invn_j·t_j
  std::unique_ptr<uint16_t[]> wa;
  std::unique_ptr<uint16_t[]> g_cls;   // G, class-major (A of dŴ)
  std::unique_ptr<uint16_t[]> g_rows;  // G, row-major (A of dX̂)
  std::unique_ptr<uint16_t[]> w_pairs; // the block's centres (B of dX̂)
  std::unique_ptr<int32_t[]> target_col;
  explicit BackwardScratch(const LossCall& L)
      : tile(uninit<float>(L.tile_floats)),
        g(uninit<float>(L.tile_floats)),
        tj(uninit<float>(L.block_classes)),
        tj_inv(uninit<float>(L.block_classes)),
        wrows(uninit<float>(L.fp32_rows_floats())),
        row(uninit<float>(L.D)),
        grad_block(uninit<float>(L.p.block_update ? L.block_classes * L.D : 1)),
        wa(uninit<uint16_t>(L.ops.packed ? L.block_classes * L.ops.d_pad : 1)),
        g_cls(uninit<uint16_t>(L.ops.packed ? L.block_classes * L.ops.ldt_pad : 1)),
        g_rows(uninit<uint16_t>(L.ops.packed ? L.N * L.ops.block_pad : 1)),
        w_pairs(uninit<uint16_t>(L.ops.packed ? pair_packed_size(L.ops.block_pad, L.D) : 1)),
        target_col(uninit<int32_t>(L.ldt)) {
    for (int64_t i = 0; i < L.ldt; ++i) target_col[i] = -1;
  }
};

// The block's gradient tile G (and t_j) from its cosine tile; the largest
// non-target probability of the block.
float grad_tile(const LossCall& L, const Chunk& ch, BackwardScratch& bs, int64_t b, ClassBlock blk,
                const BlockRows& wr, const NextBlock& next) {
  const float* tile = L.cached_tile(ch, b);
  if (!tile) {
    L.cos_tile(wr, blk, bs.tile.get(), L.next_rows(next));
    L.patch_target_cos(bs.tile.get(), blk);
    tile = bs.tile.get();
  }
  auto [lo, hi] = L.targets_in(blk.j0, blk.j0 + blk.count);
  for (auto it = lo; it != hi; ++it) bs.target_col[it->second] = it->first - (int32_t)blk.j0;
  const float pmax = L.kern.block_grad(tile, (int)blk.count, (int)L.ldt, L.s, L.cvm_m2, bs.target_col.get(),
                                       L.target_pm1.get(), L.dzt.get(), L.lse.get(), L.rowscale.get(),
                                       L.invw.get() + blk.j0, bs.g.get(), bs.tj.get());
  for (auto it = lo; it != hi; ++it) bs.target_col[it->second] = -1;
  return pmax;
}

// The backward products' G operand in bf16.
void grad_operands_bf16(const LossCall& L, BackwardScratch& bs, ClassBlock blk, const BlockRows& wr) {
  const RowOperands& ops = L.ops;
  const int64_t N = L.N, D = L.D, ldt = L.ldt;
  if (ops.packed) {
    pack_rows_bf16(bs.g.get(), (long)ldt, (int)blk.count, (int)ldt, (int)ops.ldt_pad, bs.g_cls.get(),
                   (long)ops.ldt_pad);
    pack_rows_bf16_t(bs.g.get(), (long)ldt, (int)N, (int)blk.count, (int)ops.block_pad, bs.g_rows.get(),
                     (long)ops.block_pad);
    pack_pairs_bf16_rows(wr.a, wr.lda, (int)blk.count, (int)D, (int)ops.block_pad, bs.w_pairs.get());
  } else if (L.p.weights_bf16) {
    round_bf16_array(bs.g.get(), bs.g.get(), blk.count * ldt);
  }
}

// dŴ' = Gᵀ·X̂ (already scaled by invn_j), then the normalisation term
// w_j·invn_j²·t_j, formed as (invn_j·t_j)·(invn_j·w_j): w·invn² underflows for
// huge norms. On a matrix path and on the fp32 kernels with a packed X̂ the
// term is applied in the product's last stores (RowSubBf16, RowSub), bit for
// bit the sub_scaled pass below (the AVX-512 and AVX2 sets' on the bf16 path):
// that pass re-read the block's dŴ and centres from L2, 2.5 % of a one-thread
// fp32 loss's samples (Xeon, Emerald Rapids, C = 10⁵) and 1.1 % of a bf16
// one's (AMD EPYC Zen 4), besides widening each bf16 row.
void grad_w_block(const LossCall& L, BackwardScratch& bs, ClassBlock blk, const BlockRows& wr, float* gw,
                  Prefetch next) {
  const RowOperands& ops = L.ops;
  const int64_t N = L.N, D = L.D;
  const float* invn = L.invw.get() + blk.j0;
  for (int64_t j = 0; j < blk.count; ++j) bs.tj_inv[j] = invn[j] * bs.tj[j];
  if (ops.packed) {
    const RowSubBf16 sub{wr.a, wr.lda, bs.tj_inv.get(), invn};
    bf16_gemm(ops.path, (int)blk.count, (int)D, (int)ops.ldt_pad, bs.g_cls.get(), (long)ops.ldt_pad,
              ops.xn_packed.get(), gw, (long)D, false, next.at, next.bytes, &sub);
    return;
  }
  if (ops.xn_b) {
    const RowSub sub{wr.w, (long)D, bs.tj_inv.get(), invn};
    L.gemm_shared((int)blk.count, (int)D, (int)N, bs.g.get(), (long)L.ldt, 1, ops.xn, (long)D, ops.xn_b.get(), gw,
                  (long)D, next, &sub);
    return;
  }
  L.gemm((int)blk.count, (int)D, (int)N, bs.g.get(), (long)L.ldt, 1, ops.xn, (long)D, gw, (long)D, false, next);
  for (int64_t j = 0; j < blk.count; ++j)
    L.kern.sub_scaled(gw + j * D, wr.row(j, D, bs.row.get()), bs.tj_inv[j], invn[j], (int)D);
}

// dX̂ += G·W_block (G already carries invn_j, so this is G_raw·Ŵ); the
// chunk's first product writes its partial instead of adding to it.
void grad_x_block(const LossCall& L, const BackwardScratch& bs, ClassBlock blk, const BlockRows& wr, Chunk& ch,
                  Prefetch next) {
  const RowOperands& ops = L.ops;
  const int64_t N = L.N, D = L.D;
  const bool accumulate = ch.grad_xn_written;
  if (ops.packed) {
    bf16_gemm(ops.path, (int)N, (int)D, (int)ops.block_pad, bs.g_rows.get(), (long)ops.block_pad, bs.w_pairs.get(),
              ch.grad_xn, (long)D, accumulate, next.at, next.bytes);
  } else {
    L.gemm((int)N, (int)D, (int)blk.count, bs.g.get(), 1, (long)L.ldt, wr.w, (long)D, ch.grad_xn, (long)D,
           accumulate, next);
  }
  ch.grad_xn_written = true;
}

void backward_block(const LossCall& L, Chunk& ch, BackwardScratch& bs, int64_t b, const NextBlock& next) {
  const LossProblem& p = L.p;
  const ClassBlock blk = L.lay.block(b);
  const BlockRows wr = L.block_rows(blk, bs.wrows.get(), bs.wa.get(), nullptr);
  const float pmax = grad_tile(L, ch, bs, b, blk, wr, next);
  auto [lo, hi] = L.targets_in(blk.j0, blk.j0 + blk.count);
  float* gw = p.block_update ? bs.grad_block.get() : L.out.grad_w + blk.j0 * L.D;
  if (p.grad_filter > 0.0f && lo == hi && pmax < p.grad_filter) {
    if (p.block_update) {
      p.block_update(blk.j0, blk.count, nullptr);
    } else {
      std::memset(gw, 0, sizeof(float) * blk.count * L.D);
    }
    ++ch.skipped;
    return;
  }
  grad_operands_bf16(L, bs, blk, wr);
  // While the products run, the next block's centres (dŴ) and its cached
  // cosine tile (dX̂) come into L2.
  const float* next_tile = next.b >= 0 ? L.cached_tile(*next.ch, next.b) : nullptr;
  grad_w_block(L, bs, blk, wr, gw, L.next_rows(next));
  grad_x_block(L, bs, blk, wr, ch, {next_tile, next_tile ? L.tile_floats * sizeof(float) : 0});
  if (p.block_update) p.block_update(blk.j0, blk.count, gw);
}

void backward_thread(LossCall& L, ChunkQueue& queue) {
  BackwardScratch bs(L);
  run_chunks(
      L, queue, [](Chunk&) {},
      [&](Chunk& ch, int64_t b, const NextBlock& next) {
        backward_block(L, ch, bs, b, next);
        return true;
      });
}

// Rows [i0, i1) of dX: the chunks' dX̂ partials summed in chunk order, then
// the normalisation's chain rule.
void finish_grad_x(const LossCall& L, int64_t i0, int64_t i1) {
  const int64_t D = L.D;
  const float* xn = L.rows.xn.get();
  for (int64_t i = i0; i < i1; ++i) {
    float* gx = L.out.grad_x + i * D;
    for (int64_t q = 0; q < D; ++q) gx[q] = 0.0f;
    for (const Chunk& ch : L.chunks) {
      if (!ch.grad_xn_written) continue;
      const float* part = ch.grad_xn + i * D;
      for (int64_t q = 0; q < D; ++q) gx[q] += part[q];
    }
    double dot = 0.0;
    for (int64_t q = 0; q < D; ++q) dot += (double)gx[q] * xn[i * D + q];
    const float inv = L.rows.invx[i];
    for (int64_t q = 0; q < D; ++q) gx[q] = (gx[q] - (float)dot * xn[i * D + q]) * inv;
  }
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
  LossCall L(p, out, opt);
  out.total_blocks = L.lay.nblocks;
  out.skipped_blocks = 0;
  prepare_rows(L, opt);
  count_rows(L);
  make_chunks(L, opt.workspace_bytes);
  const int T = L.lay.threads;

  ChunkQueue forward_queue;
  parallel(T, [&](int) { forward_thread(L, forward_queue); });
  for (const Chunk& ch : L.chunks)
    if (ch.bad_row >= 0) throw bad_rows_error("weights", ch.bad_row);
  merge_forward(L);
  if (!L.backward) return;

  ChunkQueue backward_queue;
  parallel(T, [&](int) { backward_thread(L, backward_queue); });
  for (const Chunk& ch : L.chunks) out.skipped_blocks += ch.skipped;
  parallel(T, [&](int t) { finish_grad_x(L, L.N * t / T, L.N * (t + 1) / T); });
}

}  // namespace ms
