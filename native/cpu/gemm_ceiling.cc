// gemm_ceiling.cc — the machine ceiling for the benchmarks: the three products
// of a forward + backward (cosines X̂·Wᵀ, dŴ = Gᵀ·X̂, dX̂ = G·W) run with the
// same kernel, blocking and threads as the fused loss, but with no epilogue
// (no margin, no softmax, no normalisation). The fused loss divided by this
// is the fraction of attainable GEMM speed that the fusion keeps. The threads
// share the blocks out as the loss's do (loss_chunks, take_chunks), so that
// the two see the same balance on a host whose other work slows one core.
//
// With a bf16 matrix path (weightsDtype 'bfloat16') the products are those of
// the loss's bf16 compute: the same bf16_gemm calls on operands of the same
// shapes and layouts (W's rows and pair-packed panels, G in both layouts),
// packed before the clock starts, since packing is part of what the fused loss
// has to hide, not of the products.
#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "bf16_gemm.h"
#include "big_alloc.h"
#include "class_blocks.h"
#include "gemm_ceiling.h"
#include "loss_cpu.h"
#include "simd_dispatch.h"

namespace ms {

namespace {

// The bf16 products of every block on matrix path `path` (see the header comment).
double products_seconds_bf16(MatrixPath path, const float* x, const float* w, int64_t N, int64_t C, int64_t D,
                             int threads, bool backward) {
  const BlockLayout lay = block_layout(N, C, threads);
  const int64_t ldt = lay.ldt, block_classes = lay.block_classes;
  const int64_t d_pad = round_up(D, kBf16KPad), ldt_pad = round_up(ldt, kBf16KPad),
                block_pad = round_up(block_classes, kBf16KPad);
  const KernelSet& kern = kernels_for(-1);
  const NormalizedRows rows = normalize_rows(kern, x, N, D, ldt);
  std::vector<uint16_t> xt_packed(pair_packed_size(d_pad, ldt)), xn_packed(pair_packed_size(ldt_pad, D));
  pack_pairs_bf16(rows.xt.get(), ldt, (int)D, (int)ldt, (int)d_pad, xt_packed.data());
  pack_pairs_bf16(rows.xn.get(), D, (int)N, (int)D, (int)ldt_pad, xn_packed.data());
  // W as the cosine product reads it (rows, d_pad apart) and as dX̂ reads it
  // (each block pair-packed), and dŴ, each thread filling its own blocks.
  const int64_t pairs_per_block = pair_packed_size(block_pad, D);
  BigArray<uint16_t> w_rows((size_t)(C * d_pad), Fill::any);
  BigArray<uint16_t> w_pairs(backward ? (size_t)(lay.nblocks * pairs_per_block) : 1, Fill::any);
  BigArray<float> gw(backward ? (size_t)(C * D) : 1, Fill::any);
  parallel(lay.threads, [&](int t) {
    for (int64_t b = lay.lo(t); b < lay.hi(t); ++b) {
      const auto [j0, count] = lay.block(b);
      pack_rows_bf16(w + j0 * D, (long)D, (int)count, (int)D, (int)d_pad, w_rows.get() + j0 * d_pad, (long)d_pad);
      if (!backward) continue;
      pack_pairs_bf16(w + j0 * D, (long)D, (int)count, (int)D, (int)block_pad, w_pairs.get() + b * pairs_per_block);
      std::fill(gw.get() + j0 * D, gw.get() + (j0 + count) * D, 0.0f);
    }
  });
  const auto ranges = loss_chunks(lay, N, D);
  ChunkQueue queue;
  const auto t0 = std::chrono::steady_clock::now();
  parallel(lay.threads, [&](int) {
    // G's two layouts: any values (the time does not depend on them).
    std::vector<uint16_t> g_cls((size_t)(block_classes * ldt_pad), 0x3c00), g_rows((size_t)(N * block_pad), 0x3c00);
    std::vector<float> tile(block_classes * ldt), dx(N * D, 0.0f);
    take_chunks(ranges, queue, [](int64_t) {}, [&](int64_t, int64_t b, int64_t, int64_t nb) {
      const auto [j0, count] = lay.block(b);
      // The next block's W operands come into L2 during the products, as in the loss.
      const bool more = nb >= 0;
      const int64_t nj0 = more ? lay.block(nb).j0 : 0, next_count = more ? lay.block(nb).count : 0;
      bf16_gemm(path, (int)count, (int)ldt, (int)d_pad, w_rows.get() + j0 * d_pad, (long)d_pad, xt_packed.data(),
                tile.data(), (long)ldt, false, w_rows.get() + nj0 * d_pad, (size_t)(next_count * d_pad) * sizeof(uint16_t));
      if (!backward) return true;
      bf16_gemm(path, (int)count, (int)D, (int)ldt_pad, g_cls.data(), (long)ldt_pad, xn_packed.data(),
                gw.get() + j0 * D, (long)D, false, more ? w_pairs.get() + nb * pairs_per_block : nullptr,
                more ? (size_t)pairs_per_block * sizeof(uint16_t) : 0);
      bf16_gemm(path, (int)N, (int)D, (int)block_pad, g_rows.data(), (long)block_pad,
                w_pairs.get() + b * pairs_per_block, dx.data(), (long)D, true);
      return true;
    });
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

double products_seconds(const float* x, const float* w, int64_t N, int64_t C, int64_t D, int threads, int simd,
                        bool backward, int matrix) {
  if (matrix >= -1) {
    const MatrixPath path = resolve_matrix_path(matrix);
    if (path != MatrixPath::None) return products_seconds_bf16(path, x, w, N, C, D, threads, backward);
  }
  const KernelSet& kern = kernels_for(simd);
  const BlockLayout lay = block_layout(N, C, threads);
  const int64_t ldt = lay.ldt, block_classes = lay.block_classes;
  const NormalizedRows rows = normalize_rows(kern, x, N, D, ldt);
  const float* xt = rows.xt.get();
  BigArray<float> gw(backward ? (size_t)(C * D) : 1, Fill::any);
  // Fault dW's pages in before the clock starts, each thread its own blocks:
  // the ceiling is the products alone, not first-touch page faults (2 GB at
  // C = 10⁶ costs about as much as the products on a VM).
  if (backward) {
    parallel(lay.threads, [&](int t) {
      const int64_t j0 = std::min(C, lay.lo(t) * block_classes), j1 = std::min(C, lay.hi(t) * block_classes);
      std::fill(gw.get() + j0 * D, gw.get() + j1 * D, 0.0f);
    });
  }
  // The shared B operands (X̂ᵀ, X) packed once, as the loss does, where the kernel set can.
  const bool packed = kern.pack_b_whole && kern.gemm_packed;
  const int64_t nr = 2 * kern.vw;
  std::vector<float> xt_b(packed ? D * ((N + nr - 1) / nr * nr) : 0), x_b(packed ? N * ((D + nr - 1) / nr * nr) : 0);
  if (packed) {
    kern.pack_b_whole((int)D, (int)N, xt, (long)ldt, xt_b.data());
    kern.pack_b_whole((int)N, (int)D, x, (long)D, x_b.data());
  }
  const auto ranges = loss_chunks(lay, N, D);
  ChunkQueue queue;
  const auto t0 = std::chrono::steady_clock::now();
  parallel(lay.threads, [&](int) {
    std::vector<float> tile(block_classes * ldt, 0.0f), dx(N * D, 0.0f);
    take_chunks(ranges, queue, [](int64_t) {}, [&](int64_t, int64_t b, int64_t, int64_t nb) {
      const auto [j0, count] = lay.block(b);
      float* gwb = gw.get() + j0 * D;
      // The next block's centres come into L2 during this product, as in the loss.
      const float* wn = nb >= 0 ? w + lay.block(nb).j0 * D : nullptr;
      const size_t next_bytes = nb >= 0 ? (size_t)(lay.block(nb).count * D) * sizeof(float) : 0;
      if (packed) {
        kern.gemm_packed((int)count, (int)N, (int)D, w + j0 * D, (long)D, 1, xt_b.data(), tile.data(), (long)ldt, false,
                         wn, next_bytes, nullptr);
        if (!backward) return true;
        kern.gemm_packed((int)count, (int)D, (int)N, tile.data(), (long)ldt, 1, x_b.data(), gwb, (long)D, false,
                         nullptr, 0, nullptr);
      } else {
        kern.gemm((int)count, (int)N, (int)D, w + j0 * D, (long)D, 1, xt, (long)ldt, tile.data(), (long)ldt, false);
        if (!backward) return true;
        kern.gemm((int)count, (int)D, (int)N, tile.data(), (long)ldt, 1, x, (long)D, gwb, (long)D, false);
      }
      kern.gemm((int)N, (int)D, (int)count, tile.data(), 1, (long)ldt, w + j0 * D, (long)D, dx.data(), (long)D, true);
      return true;
    });
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace ms
