// topk_cpu.cc — top-k classes by cosine for each row (MarginHead.predict),
// streaming over class blocks like the loss: one GEMM per block gives the
// cosine tile, each thread keeps a bounded heap of the k best per row
// (O(log k) per candidate, so k near C costs O(N·C·log k), not O(N·C·k)),
// and the threads' heaps are merged and sorted at the end. No N×C buffer exists.
#include "topk_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "bf16_gemm.h"  // widen_bf16_array
#include "class_blocks.h"
#include "simd_dispatch.h"

namespace ms {

namespace {
// a ranks before b: the higher score, ties to the lower class.
inline bool before(float sa, int32_t ca, float sb, int32_t cb) { return sa > sb || (sa == sb && ca < cb); }

// Offers (score, cls) to a heap of the k best so far with the worst at the
// root (entries start at (−inf, −1)).
void heap_offer(float* sc, int32_t* cl, int k, float score, int32_t cls) {
  if (!before(score, cls, sc[0], cl[0])) return;
  int i = 0;
  for (;;) {
    int worst = i;
    float ws = score;
    int32_t wc = cls;
    for (int ch = 2 * i + 1; ch <= 2 * i + 2 && ch < k; ++ch) {
      if (before(ws, wc, sc[ch], cl[ch])) {
        worst = ch;
        ws = sc[ch];
        wc = cl[ch];
      }
    }
    if (worst == i) break;
    sc[i] = sc[worst];
    cl[i] = cl[worst];
    i = worst;
  }
  sc[i] = score;
  cl[i] = cls;
}
}  // namespace

void cpu_topk(const float* x, const float* w, const uint16_t* w_bf16, int64_t N, int64_t C, int64_t D, int k, int threads, int simd,
              int32_t* classes, float* scores) {
  const KernelSet& kern = kernels_for(simd);
  const BlockLayout lay = block_layout(N, C, threads);
  const int64_t ldt = lay.ldt;
  const NormalizedRows rows = normalize_rows(kern, x, N, D, ldt);
  const int T = lay.threads;
  std::vector<std::vector<float>> sc(T, std::vector<float>(N * k, -INFINITY));
  std::vector<std::vector<int32_t>> cl(T, std::vector<int32_t>(N * k, -1));
  std::vector<int64_t> bad(T, -1);
  parallel(T, [&](int t) {
    std::vector<float> tile(lay.block_classes * ldt, 0.0f);
    std::vector<float> widened(w_bf16 ? lay.block_classes * D : 0);
    for (int64_t b = lay.lo(t); b < lay.hi(t); ++b) {
      const auto [j0, count] = lay.block(b);
      const float* wb = w ? w + j0 * D : widened.data();
      if (!w) widen_bf16_array(w_bf16 + j0 * D, widened.data(), count * D);
      kern.gemm((int)count, (int)N, (int)D, wb, (long)D, 1, rows.xt.get(), (long)ldt, tile.data(), (long)ldt, false);
      for (int64_t j = 0; j < count; ++j) {
        const double sq = kern.sumsq(wb + j * D, (int)D);
        if (!(sq <= kMaxNormSq)) {
          bad[t] = j0 + j;
          return;
        }
        const float inv = inv_norm_from_sq(sq);
        for (int64_t i = 0; i < N; ++i)
          heap_offer(&sc[t][i * k], &cl[t][i * k], k, tile[j * ldt + i] * inv, (int32_t)(j0 + j));
      }
    }
  });
  for (int t = 0; t < T; ++t)
    if (bad[t] >= 0)
      throw bad_rows_error("weights", bad[t]);
  std::vector<std::pair<float, int32_t>> row(k);
  for (int64_t i = 0; i < N; ++i) {
    float* s = scores + i * k;
    int32_t* c = classes + i * k;
    for (int q = 0; q < k; ++q) {
      s[q] = -INFINITY;
      c[q] = -1;
    }
    for (int t = 0; t < T; ++t)
      for (int q = 0; q < k; ++q)
        if (cl[t][i * k + q] >= 0) heap_offer(s, c, k, sc[t][i * k + q], cl[t][i * k + q]);
    for (int q = 0; q < k; ++q) row[q] = {s[q], c[q]};
    std::sort(row.begin(), row.end(), [](const auto& a, const auto& b) {
      if (b.second < 0) return a.second >= 0;  // unfilled entries last
      if (a.second < 0) return false;
      return before(a.first, a.second, b.first, b.second);
    });
    for (int q = 0; q < k; ++q) s[q] = row[q].first, c[q] = row[q].second;
  }
}

}  // namespace ms
