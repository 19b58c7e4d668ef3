// small_kernels.cu — the bandwidth-bound steps around the tile kernels:
// row/centre normalisation, the target logits, the per-row LSE merge, the
// gradient-filter mask and the final dX reduction with the normalisation's
// chain rule. Each is O(N·d), O(C·d) or O(N·C/128): small next to the tiles.
//
// What is fused, and why:
//   prep_x   reads X once: norm (fp64 sum), x̂ in fp32 (for the chain rule and
//            the target cosine) and the tensor-core operand copy, padded.
//   prep_w*  reads W once: norm, non-finite check and (BF16 path) conversion.
//   target   one dot product per row in fp64 → c_t, z_t, dz_t/dc. Doing it
//            outside the TF32 tile matters: arccos amplifies a cosine error δ
//            by 1/sinθ, and TF32's δ ≈ 1e−4 near |c| = 1 would move the
//            margined logit by ~1e−2·s.
//   merge    partials → (m, l, o) → LSE, per-row loss and p_y − 1 (through
//            target_terms, accurate for confident rows), in fixed order.
//   mask     partial max of each (class tile, row) against LSE → skip flags,
//            so the backward's filter decision is made once, identically for
//            both backward kernels, before any tile is recomputed.
//   finish   Σ of the class-group partials (fixed order) + chain rule.
// Zero vectors: ‖v‖ ≤ 1e−12 gives 1/‖v‖ = 0 (margin_math.h), so x̂ = 0, every
// cosine 0, and a zero gradient — the CPU backend's documented behaviour.
#include <cfloat>

#include "cuda_common.cuh"
#include "kernels.cuh"

namespace ms {
namespace cu {
namespace {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ double warp_sum(double v) {
  // xor butterfly: every lane ends with the same bits (a + b == b + a).
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// One warp per row (8 rows per block).
template <class T>
__global__ void __launch_bounds__(256) prep_x(const float* __restrict__ x, int64_t n, int d, int dp, int64_t n_pad,
                                              float* __restrict__ x32, float* __restrict__ invx, T* __restrict__ x_operand,
                                              unsigned long long* bad) {
  const int64_t i = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= n_pad) return;  // uniform per warp
  const bool real = i < n;
  const float* row = x + i * (int64_t)d;
  double ss = 0.0;
  if (real) {
    for (int k = lane; k < d; k += 32) ss += (double)row[k] * (double)row[k];
  }
  ss = warp_sum(ss);  // inf / NaN for a non-finite element
  if (real && !(ss <= kMaxNormSq) && lane == 0) atomicMin(bad, (unsigned long long)i);
  const float inv = real ? inv_norm_from_sq(ss) : 0.0f;
  if (lane == 0) invx[i] = inv;
  for (int k = lane; k < dp; k += 32) {
    const bool in = real && k < d;
    const float v = in ? row[k] * inv : 0.0f;
    if (in) x32[i * (int64_t)d + k] = v;
    x_operand[i * (int64_t)dp + k] = Elem<T>::cvt(v);
  }
}

__global__ void __launch_bounds__(256) prep_w32(const float* __restrict__ w, int64_t c, int d, float* __restrict__ invw,
                                                unsigned long long* bad) {
  const int64_t j = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (j >= c) return;
  const float* row = w + j * (int64_t)d;
  double ss = 0.0;
  for (int k = lane; k < d; k += 32) ss += (double)row[k] * (double)row[k];
  ss = warp_sum(ss);
  if (lane == 0) {
    if (!(ss <= kMaxNormSq)) atomicMin(bad, (unsigned long long)j);  // non-finite, or a norm > 1e30
    invw[j] = inv_norm_from_sq(ss);
  }
}

__global__ void __launch_bounds__(256) prep_wbf16(const float* __restrict__ staging, int64_t j0, int64_t rows, int d,
                                                  int dp, bf16* __restrict__ wb, float* __restrict__ invw,
                                                  unsigned long long* bad) {
  const int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t j = j0 + r;
  const float* src = staging + r * (int64_t)d;
  bf16* dst = wb + j * (int64_t)dp;
  double raw = 0.0, ss = 0.0;  // Σ of the raw values (the check), Σ of the rounded ones (the norm)
  for (int k = lane; k < dp; k += 32) {
    bf16 b = __float2bfloat16_rn(0.0f);
    if (k < d) {
      const float v = src[k];
      raw += (double)v * (double)v;
      b = __float2bfloat16_rn(v);
      const double fb = (double)__bfloat162float(b);
      ss += fb * fb;
    }
    dst[k] = b;
  }
  raw = warp_sum(raw);
  ss = warp_sum(ss);
  if (lane == 0) {
    if (!(raw <= kMaxNormSq)) atomicMin(bad, (unsigned long long)j);
    invw[j] = inv_norm_from_sq(ss);
  }
}

// One warp per row.
__global__ void __launch_bounds__(256) target_logits(const TargetParams p) {
  const int64_t i = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= p.n_pad) return;
  const int32_t y = p.labels[i];  // −1 for ignored rows and padding (whose x32 rows do not exist)
  if (y < 0) {
    if (lane == 0) p.zt[i] = p.dzt[i] = p.target_cos[i] = 0.0f;
    return;
  }
  const int d = p.w.d;
  const float* xr = p.x32 + i * (int64_t)d;
  double dot = 0.0;
  for (int k = lane; k < d; k += 32) dot += (double)xr[k] * (double)w_value(p.w, y, k);
  dot = warp_sum(dot);
  if (lane == 0) {
    const float c = (float)dot * p.w.invw[y];
    const float rm = p.row_m ? p.row_m[i] : 0.0f;
    const Logit L = target_logit(p.margin, c, rm);
    p.zt[i] = L.z;
    p.dzt[i] = L.dz;
    p.target_cos[i] = c;
  }
}

// Block = 32 rows × 16 warps; lane = row, warp w merges class tiles w, w+16, …
constexpr int kMergeWarps = 16;
__global__ void __launch_bounds__(kMergeWarps * 32) merge_lse(const MergeParams p) {
  __shared__ float sm[kMergeWarps][32], sl[kMergeWarps][32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t i = (int64_t)blockIdx.x * 32 + lane;  // < n_pad (n_pad is a multiple of 32)
  // Partials cover non-target classes only, so l and o coincide until the target joins.
  LseState st = lse_empty();
  for (int64_t ct = w; ct < p.nct; ct += kMergeWarps) {
    const float2 v = p.partial[ct * p.n_pad + i];
    st = lse_merge(st, LseState{v.x, v.y, v.y});
  }
  sm[w][lane] = st.m;
  sl[w][lane] = st.l;
  __syncthreads();
  if (w == 0) {
    LseState a = lse_empty();
#pragma unroll
    for (int q = 0; q < kMergeWarps; ++q) a = lse_merge(a, LseState{sm[q][lane], sl[q][lane], sl[q][lane]});
    const int32_t y = p.labels[i];
    const float zt = p.zt[i];
    float per = 0.0f, target_pm1 = 0.0f;
    if (y >= 0) {
      a = lse_merge(a, LseState{zt, 1.0f, 0.0f});  // the local target: in l, not in o
      const TargetTerms tt = target_terms(a, zt);
      per = tt.per_sample;
      target_pm1 = (p.target_pm1_in && i < p.n) ? p.target_pm1_in[i] : tt.pt_minus_1;
    }
    p.lse[i] = (p.lse_in && i < p.n) ? p.lse_in[i] : lse_value(a);
    p.target_pm1[i] = target_pm1;
    p.per_sample[i] = per;
    p.row_m[i] = a.m;
    p.row_l[i] = a.l;
    p.row_o[i] = a.o;
  }
}

// One warp per (class tile ct, rows [32·rt, 32·rt+32)); gw = ct·row_tiles32 + rt.
__global__ void __launch_bounds__(256) filter_mask(const float2* __restrict__ partial, const float* __restrict__ lse,
                                                   const int32_t* __restrict__ labels, int64_t nct, int64_t n_pad,
                                                   int64_t row_tiles32, float grad_filter, uint8_t* __restrict__ mask) {
  const int64_t gw = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (gw >= nct * row_tiles32) return;  // uniform per warp
  const int64_t ct = gw / row_tiles32, rt = gw % row_tiles32;
  const int64_t i = rt * kTileR + lane;
  const int32_t y = labels[i];
  const bool counted = y != -1;  // −2: counted, target in another shard
  const bool has_target = y >= 0 && (int64_t)y / kTileC == ct;
  // Largest non-target p of the row in this tile: exp(max z − LSE) (the
  // partial max is over non-target classes; −inf → 0 for an empty tile).
  const float pmax = counted ? expf(partial[ct * n_pad + i].x - lse[i]) : 0.0f;
  const bool skippable = !counted || (!has_target && pmax < grad_filter);
  const bool all_skip = __all_sync(kFull, skippable);
  const bool any_counted = __any_sync(kFull, counted);
  if (lane == 0) {
    mask[gw] = !any_counted ? kMaskNoRows : (grad_filter > 0.0f && all_skip) ? kMaskFiltered : kMaskCompute;
  }
}

// One block per row.
constexpr int kFinishThreads = 256;
__global__ void __launch_bounds__(kFinishThreads) finish_dx(const float* __restrict__ dxp, int64_t groups, int64_t n_pad,
                                                            int dp, int d, const float* __restrict__ x32,
                                                            const float* __restrict__ invx, float* __restrict__ grad_x) {
  __shared__ double red[kFinishThreads / 32];
  __shared__ float dot_s;
  const int64_t i = blockIdx.x;
  const int tid = threadIdx.x;
  const float* xr = x32 + i * (int64_t)d;
  float* gr = grad_x + i * (int64_t)d;
  double dl = 0.0;
  for (int k = tid; k < d; k += kFinishThreads) {
    float s = 0.0f;
    for (int64_t g = 0; g < groups; ++g) s += dxp[(g * n_pad + i) * (int64_t)dp + k];
    gr[k] = s;
    dl += (double)s * (double)xr[k];
  }
  dl = warp_sum(dl);
  if ((tid & 31) == 0) red[tid >> 5] = dl;
  __syncthreads();
  if (tid == 0) {
    double t = 0.0;
    for (int q = 0; q < kFinishThreads / 32; ++q) t += red[q];
    dot_s = (float)t;
  }
  __syncthreads();
  const float dot = dot_s, inv = invx[i];
  for (int k = tid; k < d; k += kFinishThreads) gr[k] = (gr[k] - dot * xr[k]) * inv;
}

unsigned blocks_for_warps(int64_t warps) { return (unsigned)ceil_div(warps, 8); }

}  // namespace

template <class T>
void launch_prep_x(const float* x, int64_t n, int d, int dp, int64_t n_pad, float* x32, float* invx, T* x_operand,
                   unsigned long long* bad, cudaStream_t s) {
  MS_LAUNCH(prep_x<T>, blocks_for_warps(n_pad), 256, 0, s, x, n, d, dp, n_pad, x32, invx, x_operand, bad);
  MS_CUDA_LAUNCHED("prep_x");
}
template void launch_prep_x<float>(const float*, int64_t, int, int, int64_t, float*, float*, float*,
                                   unsigned long long*, cudaStream_t);
template void launch_prep_x<bf16>(const float*, int64_t, int, int, int64_t, float*, float*, bf16*,
                                  unsigned long long*, cudaStream_t);

void launch_prep_w32(const float* w, int64_t c, int d, float* invw, unsigned long long* bad, cudaStream_t s) {
  MS_LAUNCH(prep_w32, blocks_for_warps(c), 256, 0, s, w, c, d, invw, bad);
  MS_CUDA_LAUNCHED("prep_w32");
}

void launch_prep_wbf16(const float* staging, int64_t j0, int64_t rows, int d, int dp, bf16* wb, float* invw,
                       unsigned long long* bad, cudaStream_t s) {
  MS_LAUNCH(prep_wbf16, blocks_for_warps(rows), 256, 0, s, staging, j0, rows, d, dp, wb, invw, bad);
  MS_CUDA_LAUNCHED("prep_wbf16");
}

void launch_target(const TargetParams& p, cudaStream_t s) {
  MS_LAUNCH(target_logits, blocks_for_warps(p.n_pad), 256, 0, s, p);
  MS_CUDA_LAUNCHED("target_logits");
}

void launch_merge(const MergeParams& p, cudaStream_t s) {
  MS_LAUNCH(merge_lse, (unsigned)(p.n_pad / 32), kMergeWarps * 32, 0, s, p);
  MS_CUDA_LAUNCHED("merge_lse");
}

void launch_mask(const float2* partial, const float* lse, const int32_t* labels, int64_t nct, int64_t n_pad,
                 int64_t row_tiles32, float grad_filter, uint8_t* mask, cudaStream_t s) {
  MS_LAUNCH(filter_mask, blocks_for_warps(nct * row_tiles32), 256, 0, s, partial, lse, labels, nct, n_pad, row_tiles32, grad_filter, mask);
  MS_CUDA_LAUNCHED("filter_mask");
}

void launch_finish_dx(const float* dxp, int64_t groups, int64_t n_pad, int dp, int64_t n, int d, const float* x32,
                      const float* invx, float* grad_x, cudaStream_t s) {
  MS_LAUNCH(finish_dx, (unsigned)n, kFinishThreads, 0, s, dxp, groups, n_pad, dp, d, x32, invx, grad_x);
  MS_CUDA_LAUNCHED("finish_dx");
}

}  // namespace cu
}  // namespace ms
