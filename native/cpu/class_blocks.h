// class_blocks.h — what every CPU pass over the classes shares: the block
// layout (block_classes classes per block, row vectors padded to ldt lanes), the
// normalised rows X̂ and X̂ᵀ, and the thread fan-out.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
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
