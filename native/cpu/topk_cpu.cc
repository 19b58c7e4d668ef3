// topk_cpu.cc — top-k classes by cosine for each row (MarginHead.predict),
// streaming over class blocks like the loss: one GEMM per block gives the
// cosine tile, each thread keeps a sorted top-k per row, and the threads'
// lists are merged in thread order. No N×C buffer exists.
#include "topk_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "class_blocks.h"
#include "simd_dispatch.h"

namespace ms {

namespace {
// Inserts (score, cls) into a descending list of k entries (ties: lower class first).
void insert_topk(float* sc, int32_t* cl, int k, float score, int32_t cls) {
  if (!(score > sc[k - 1] || (score == sc[k - 1] && cls < cl[k - 1]))) return;
  int pos = k - 1;
  while (pos > 0 && (score > sc[pos - 1] || (score == sc[pos - 1] && cls < cl[pos - 1]))) {
    sc[pos] = sc[pos - 1];
    cl[pos] = cl[pos - 1];
    --pos;
  }
  sc[pos] = score;
  cl[pos] = cls;
}
}  // namespace

void cpu_topk(const float* x, const float* w, int64_t N, int64_t C, int64_t D, int k, int threads, int simd,
              int32_t* classes, float* scores) {
  const KernelSet& K = kernels_for(simd);
  const BlockLayout lay = block_layout(N, C, threads);
  const int64_t ldt = lay.ldt, Bc = lay.bc;
  const NormalizedRows rows = normalize_rows(K, x, N, D, ldt);
  const int T = lay.threads;
  std::vector<std::vector<float>> sc(T, std::vector<float>(N * k, -INFINITY));
  std::vector<std::vector<int32_t>> cl(T, std::vector<int32_t>(N * k, -1));
  std::vector<int64_t> bad(T, -1);
  parallel(T, [&](int t) {
    std::vector<float> tile(Bc * ldt, 0.0f);
    for (int64_t b = lay.lo(t); b < lay.hi(t); ++b) {
      const int64_t j0 = b * Bc, bc = std::min(Bc, C - j0);
      K.gemm((int)bc, (int)N, (int)D, w + j0 * D, (long)D, 1, rows.xt.get(), (long)ldt, tile.data(), (long)ldt, false);
      for (int64_t j = 0; j < bc; ++j) {
        const double sq = K.sumsq(w + (j0 + j) * D, (int)D);
        if (!(sq <= kMaxNormSq)) {
          bad[t] = j0 + j;
          return;
        }
        const float inv = inv_norm_from_sq(sq);
        for (int64_t i = 0; i < N; ++i)
          insert_topk(&sc[t][i * k], &cl[t][i * k], k, tile[j * ldt + i] * inv, (int32_t)(j0 + j));
      }
    }
  });
  for (int t = 0; t < T; ++t)
    if (bad[t] >= 0)
      throw InputError{"Expected finite values with row norms at most 1e30 for weights but received a "
                       "non-finite value or a larger norm in row " +
                       std::to_string(bad[t])};
  for (int64_t i = 0; i < N; ++i) {
    float* s = scores + i * k;
    int32_t* c = classes + i * k;
    for (int q = 0; q < k; ++q) {
      s[q] = -INFINITY;
      c[q] = -1;
    }
    for (int t = 0; t < T; ++t)
      for (int q = 0; q < k; ++q)
        if (cl[t][i * k + q] >= 0) insert_topk(s, c, k, sc[t][i * k + q], cl[t][i * k + q]);
  }
}

}  // namespace ms
