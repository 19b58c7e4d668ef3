// class_blocks.h — what every CPU pass over the classes shares: the block
// layout (block_classes classes per block, row vectors padded to ldt lanes), the
// normalised rows X̂ and X̂ᵀ, the thread fan-out, and the chunks of blocks
// that the threads of a pass take as they finish one.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "loss_cpu.h"
#include "simd_dispatch.h"
#include "thread_pool.h"

namespace ms {

// Block b of the classes: classes [j0, j0 + count); count < block_classes only for the last one.
struct ClassBlock {
  int64_t j0, count;
};

struct BlockLayout {
  int64_t ldt;            // rows padded to a multiple of 16 lanes
  int64_t block_classes;  // classes per block: a ~64 KiB cosine tile, a multiple of 8
  int64_t classes;        // C
  int64_t nblocks;
  int threads;            // ≤ nblocks
  int64_t lo(int t) const { return nblocks * t / threads; }  // thread t's blocks [lo, hi)
  int64_t hi(int t) const { return nblocks * (t + 1) / threads; }
  ClassBlock block(int64_t b) const {
    const int64_t j0 = b * block_classes;
    return {j0, std::min(block_classes, classes - j0)};
  }
};

inline BlockLayout block_layout(int64_t N, int64_t C, int threads) {
  BlockLayout L;
  L.ldt = (std::max<int64_t>(N, 1) + 15) / 16 * 16;
  L.block_classes = std::clamp<int64_t>((16384 / L.ldt) / 8 * 8, 8, 256);
  L.classes = C;
  L.nblocks = (C + L.block_classes - 1) / L.block_classes;
  const int T = threads > 0 ? threads : cpu_default_threads();
  L.threads = (int)std::max<int64_t>(1, std::min<int64_t>(T, L.nblocks));
  return L;
}

// X̂ (N×d, row-major), X̂ᵀ (d×ldt, zero padding) and 1/‖x_i‖ (0 for zero rows).
struct NormalizedRows {
  std::unique_ptr<float[]> xn, xt, invx;
};

inline NormalizedRows normalize_rows(const KernelSet& kern, const float* x, int64_t N, int64_t D, int64_t ldt) {
  NormalizedRows r;
  r.xn.reset(new float[std::max<int64_t>(N * D, 1)]);
  r.xt.reset(new float[std::max<int64_t>(D * ldt, 1)]());
  r.invx.reset(new float[std::max<int64_t>(N, 1)]);
  for (int64_t i = 0; i < N; ++i) {
    const double sq = kern.sumsq(x + i * D, (int)D);
    if (!(sq <= kMaxNormSq))
      throw bad_rows_error("embeddings", i);
    r.invx[i] = inv_norm_from_sq(sq);
    for (int64_t k = 0; k < D; ++k) {
      const float v = x[i * D + k] * r.invx[i];
      r.xn[i * D + k] = v;
      r.xt[k * ldt + i] = v;
    }
  }
  return r;
}

// The chunks' block ranges for T threads. One thread: a single chunk. More:
// each chunk is 1/(2T) of the blocks not yet given out (at least
// kMinChunkBlocks), so the chunks shrink towards the end and the threads
// finish together even when the host takes time from one of them; at most
// max_chunks (a caller's per-chunk partials may bound them: the smallest size
// doubles until they fit). The ranges depend on nblocks and T only, so
// partials kept per chunk and merged in chunk order give the same bits
// whichever thread ran which chunk.
constexpr int64_t kMinChunkBlocks = 4;
inline std::vector<std::pair<int64_t, int64_t>> chunk_ranges(int64_t nblocks, int T, int64_t max_chunks) {
  std::vector<std::pair<int64_t, int64_t>> r;
  if (T <= 1 || nblocks <= kMinChunkBlocks) return {{0, nblocks}};
  for (int64_t min_size = kMinChunkBlocks;; min_size *= 2) {
    r.clear();
    for (int64_t lo = 0; lo < nblocks;) {
      const int64_t size = std::max(min_size, (nblocks - lo + 2 * T - 1) / (2 * T));
      r.emplace_back(lo, std::min(nblocks, lo + size));
      lo = r.back().second;
    }
    if ((int64_t)r.size() <= std::max<int64_t>(max_chunks, T)) return r;
  }
}

// The loss's chunks: each keeps a dX̂ partial of N×d floats, and these may
// take 16 MiB beyond one per thread.
inline std::vector<std::pair<int64_t, int64_t>> loss_chunks(const BlockLayout& lay, int64_t N, int64_t D) {
  const size_t part_bytes = (size_t)std::max<int64_t>(N * D, 1) * sizeof(float);
  return chunk_ranges(lay.nblocks, lay.threads, (int64_t)((size_t(16) << 20) / part_bytes));
}

// Hands out chunk indices in order to the threads of one pass.
struct ChunkQueue {
  std::atomic<int64_t> next{0};
  int64_t take() { return next.fetch_add(1, std::memory_order_relaxed); }
};

// One thread's part of a pass: the blocks of the chunks it takes from queue,
// in order; begin(c) before chunk c, then fn(c, b, next_c, next_b) for each
// block b (false: leave the chunk), where next_b is the block the thread runs
// after b (−1: none) and next_c its chunk: the chunk's next block, or the
// first of the chunk it takes while b, its chunk's last, runs, so that b's
// products can fetch that block's operands meanwhile across chunks too.
template <class Begin, class Fn>
void take_chunks(const std::vector<std::pair<int64_t, int64_t>>& ranges, ChunkQueue& queue, Begin begin, Fn fn) {
  const int64_t K = (int64_t)ranges.size();
  for (int64_t c = queue.take(); c < K;) {
    const auto [lo, hi] = ranges[c];
    begin(c);
    int64_t next_c = -1;
    for (int64_t b = lo; b < hi; ++b) {
      int64_t nc = c, nb = b + 1;
      if (b + 1 == hi) {
        next_c = queue.take();
        nc = next_c;
        nb = next_c < K ? ranges[next_c].first : -1;
      }
      if (!fn(c, b, nc, nb)) break;
    }
    c = next_c >= 0 ? next_c : queue.take();
  }
}

// Runs fn(t) for t in [0, T) on the thread pool (the caller's thread takes
// part) and rethrows the first exception after all have finished.
template <class Fn>
void parallel(int T, Fn fn) {
  std::exception_ptr err;
  std::mutex mu;
  pool_run(T, [&](int t) {
    try {
      fn(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  });
  if (err) std::rethrow_exception(err);
}

}  // namespace ms
