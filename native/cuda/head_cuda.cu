// head_cuda.cu — MarginHead's device-resident centres (see head_cuda.h): the
// step against resident centres with the SGD update fused into backward_dw,
// Partial FC's gather of the sampled centres, the centres' norms, the host
// transfers in caller-sized chunks, and top-k prediction.
//
// Device memory held between steps, C classes, d dims (dp = d rounded up to 64):
//   fp32 centres C·d·4 B (bf16: C·dp·2 B) + inverse norms C·4 B
//   + momentum C·d·4 B when μ > 0.
// Per step, freed at its end: the LossRunner workspace (loss_cuda.cu), X and dX
// (N·d·4 B each), and a gathered copy of the centres the step reads: the
// sampled ones with Partial FC, or all of them when d > 512 without sampling
// (backward_dw's column slices of one class tile are separate CTAs, and one
// slice's update must not be seen by another slice's cosines).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "fused_loss_cuda.cuh"
#include "head_cuda.h"
#include "kernels.cuh"

namespace ms {

struct DeviceHead {
  int64_t c = 0;
  int d = 0;
  bool bf16 = false;
  bool norms_fresh = false;  // invw matches the centres (false after an update)
  cu::DeviceWeights w;
  cu::DeviceBuffer<float> mom;
  size_t bytes = 0;
  cu::Stream stream;  // declared last: destroyed first, after waiting for its work
};

namespace cu {
namespace {

std::atomic<size_t> g_head_bytes{0};

constexpr unsigned long long kNoBad = ~0ull;

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_sum_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// 1/‖w_j‖ of bf16 rows (one warp per row), as prep_wbf16 computes it from the rounded values.
__global__ void __launch_bounds__(256) norms_bf16(const bf16* __restrict__ wb, int64_t c, int d, int dp,
                                                  float* __restrict__ invw, unsigned long long* bad) {
  const int64_t j = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (j >= c) return;
  double ss = 0.0;
  for (int k = lane; k < d; k += 32) {
    const double v = (double)__bfloat162float(wb[j * (int64_t)dp + k]);
    ss += v * v;
  }
  ss = warp_sum_d(ss);
  if (lane == 0) {
    if (!(ss <= kMaxNormSq)) atomicMin(bad, (unsigned long long)j);
    invw[j] = inv_norm_from_sq(ss);
  }
}

// dst row r = src row idx[r] (row stride ld elements of T).
template <class T>
__global__ void __launch_bounds__(256) gather_rows(const T* __restrict__ src, const int32_t* __restrict__ idx,
                                                   int64_t rows, int ld, T* __restrict__ dst) {
  const int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const T* s = src + (int64_t)idx[r] * ld;
  T* o = dst + r * (int64_t)ld;
  for (int k = lane; k < ld; k += 32) o[k] = s[k];
}

// bf16 rows (stride dp) → fp32 rows (stride d), for the host copies.
__global__ void __launch_bounds__(256) bf16_rows_to_f32(const bf16* __restrict__ wb, int64_t rows, int d, int dp,
                                                        float* __restrict__ dst) {
  const int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  for (int k = lane; k < d; k += 32) dst[r * (int64_t)d + k] = __bfloat162float(wb[r * (int64_t)dp + k]);
}

// Top-k by cosine, in two kernels. topk_rows: a CTA owns kTopkRows rows and
// one of gridDim.y class chunks (enough CTAs to fill the device at N = 512);
// warp w scans the chunk's classes w, w+8, … (fp32 dot products of x̂ with the
// raw centre, times 1/‖w‖, lanes summed by a fixed butterfly) keeping a sorted
// list per row in shared memory, and the 8 lists are merged in warp order
// into the chunk's list. topk_merge: one thread per row merges the chunks'
// lists in chunk order. Ties go to the lower class, as on the CPU.
constexpr int kTopkRows = 16;
constexpr int kTopkWarps = 8;

__device__ __forceinline__ void insert_sorted(float* sc, int32_t* cl, int k, float score, int32_t cls) {
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

// Chunk lists: (chunk g, row i) at [(g·n + i)·k, +k).
__global__ void __launch_bounds__(kTopkWarps * 32) topk_rows(const float* __restrict__ xh, int64_t n, const WView w,
                                                             int k, int32_t* __restrict__ chunk_classes,
                                                             float* __restrict__ chunk_scores) {
  __shared__ float sc[kTopkWarps][kTopkRows][kHeadMaxTopK];
  __shared__ int32_t cl[kTopkWarps][kTopkRows][kHeadMaxTopK];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i0 = (int64_t)blockIdx.x * kTopkRows;
  const int rows = (int)(n - i0 < kTopkRows ? n - i0 : kTopkRows);
  const int64_t per = (w.c + gridDim.y - 1) / gridDim.y;
  const int64_t j_begin = (int64_t)blockIdx.y * per;
  const int64_t j_end = j_begin + per < w.c ? j_begin + per : w.c;
  for (int e = lane; e < kTopkRows * kHeadMaxTopK; e += 32) {
    sc[warp][e / kHeadMaxTopK][e % kHeadMaxTopK] = -INFINITY;
    cl[warp][e / kHeadMaxTopK][e % kHeadMaxTopK] = -1;
  }
  __syncwarp();
  for (int64_t j = j_begin + warp; j < j_end; j += kTopkWarps) {
    float acc[kTopkRows];
#pragma unroll
    for (int r = 0; r < kTopkRows; ++r) acc[r] = 0.0f;
    for (int q = lane; q < w.d; q += 32) {
      const float wv = w_value(w, j, q);
#pragma unroll
      for (int r = 0; r < kTopkRows; ++r)
        if (r < rows) acc[r] += wv * xh[(i0 + r) * (int64_t)w.d + q];
    }
    const float inv = w.invw[j];
#pragma unroll
    for (int r = 0; r < kTopkRows; ++r) {
      const float dot = warp_sum_f(acc[r]);
      if (lane == r && r < rows) insert_sorted(sc[warp][r], cl[warp][r], k, dot * inv, (int32_t)j);
    }
    __syncwarp();
  }
  __syncthreads();
  if ((int)threadIdx.x < rows) {
    const int r = threadIdx.x;
    for (int v = 1; v < kTopkWarps; ++v)
      for (int m = 0; m < k; ++m) insert_sorted(sc[0][r], cl[0][r], k, sc[v][r][m], cl[v][r][m]);
    const int64_t o = ((int64_t)blockIdx.y * n + i0 + r) * k;
    for (int m = 0; m < k; ++m) {
      chunk_classes[o + m] = cl[0][r][m];
      chunk_scores[o + m] = sc[0][r][m];
    }
  }
}

__global__ void __launch_bounds__(128) topk_merge(const int32_t* __restrict__ chunk_classes,
                                                  const float* __restrict__ chunk_scores, int64_t n, int chunks, int k,
                                                  int32_t* __restrict__ classes, float* __restrict__ scores) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float sc[kHeadMaxTopK];
  int32_t cl[kHeadMaxTopK];
  for (int m = 0; m < k; ++m) {
    sc[m] = chunk_scores[i * k + m];  // chunk 0's list is sorted already
    cl[m] = chunk_classes[i * k + m];
  }
  for (int g = 1; g < chunks; ++g)
    for (int m = 0; m < k; ++m) {
      const int64_t e = ((int64_t)g * n + i) * k + m;
      insert_sorted(sc, cl, k, chunk_scores[e], chunk_classes[e]);
    }
  for (int m = 0; m < k; ++m) {
    classes[i * k + m] = cl[m];
    scores[i * k + m] = sc[m];
  }
}

unsigned warp_blocks(int64_t warps) { return (unsigned)ceil_div(warps, 8); }

int64_t read_flag(const DeviceBuffer<unsigned long long>& bad, cudaStream_t s) {
  unsigned long long h = kNoBad;
  MS_CUDA_CHECK(cudaMemcpyAsync(&h, bad.get(), sizeof(h), cudaMemcpyDeviceToHost, s));
  MS_CUDA_CHECK(cudaStreamSynchronize(s));
  return h == kNoBad ? -1 : (int64_t)h;
}

[[noreturn]] void throw_bad_rows(const char* what, int64_t row) { throw bad_rows_error(what, row); }

// 1/‖w_j‖ of rows [0, w.c) of w (either path); returns the smallest bad row or −1.
int64_t compute_norms(DeviceWeights& w, cudaStream_t s) {
  DeviceBuffer<unsigned long long> bad(1, "non-finite flag");
  MS_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0xff, sizeof(unsigned long long), s));
  if (w.bf16_path) {
    MS_LAUNCH(norms_bf16, warp_blocks(w.c), 256, 0, s, w.wb.get(), w.c, w.d, w.dp, w.invw.get(), bad.get());
    MS_CUDA_LAUNCHED("norms_bf16");
  } else {
    launch_prep_w32(w.w32.get(), w.c, w.d, w.invw.get(), bad.get(), s);
  }
  return read_flag(bad, s);
}

void ensure_norms(DeviceHead* h) {
  if (h->norms_fresh) return;
  const int64_t b = compute_norms(h->w, h->stream.get());
  if (b >= 0) throw_bad_rows("the head's centres", b);
  h->norms_fresh = true;
}

// The step's read-only copy of the centres it uses: rows idx (device, rows
// entries) of the master, or all of them (idx null).
void gather_centres(DeviceHead* h, const int32_t* idx_dev, const int32_t* idx_host, int64_t rows, DeviceWeights& g) {
  const cudaStream_t s = h->stream.get();
  g.c = rows;
  g.d = h->d;
  g.dp = h->w.dp;
  g.bf16_path = h->bf16;
  g.invw.allocate((size_t)rows, "inverse norms of the step's centres");
  if (h->bf16) {
    g.wb.allocate((size_t)rows * g.dp, "the step's centres (bf16)");
  } else {
    g.w32.allocate((size_t)rows * g.d, "the step's centres");
  }
  if (!idx_dev) {
    ensure_norms(h);
    if (h->bf16) {
      MS_CUDA_CHECK(cudaMemcpyAsync(g.wb.get(), h->w.wb.get(), (size_t)rows * g.dp * sizeof(bf16), cudaMemcpyDeviceToDevice, s));
    } else {
      MS_CUDA_CHECK(cudaMemcpyAsync(g.w32.get(), h->w.w32.get(), (size_t)rows * g.d * sizeof(float), cudaMemcpyDeviceToDevice, s));
    }
    MS_CUDA_CHECK(cudaMemcpyAsync(g.invw.get(), h->w.invw.get(), (size_t)rows * sizeof(float), cudaMemcpyDeviceToDevice, s));
    return;
  }
  if (h->bf16) {
    MS_LAUNCH(gather_rows<bf16>, warp_blocks(rows), 256, 0, s, h->w.wb.get(), idx_dev, rows, g.dp, g.wb.get());
  } else {
    MS_LAUNCH(gather_rows<float>, warp_blocks(rows), 256, 0, s, h->w.w32.get(), idx_dev, rows, g.d, g.w32.get());
  }
  MS_CUDA_LAUNCHED("gather_rows");
  const int64_t b = compute_norms(g, s);
  if (b >= 0) throw_bad_rows("the head's centres", idx_host[b]);
}

template <class T>
void upload(DeviceBuffer<T>& dst, const T* src, size_t count, const char* what, cudaStream_t s) {
  if (!src) return;
  dst.allocate(count, what);
  MS_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src, count * sizeof(T), cudaMemcpyHostToDevice, s));
}

// Waits for the head's stream when a step's scope ends, on every path, so
// that the step's buffers (declared before it) outlive the kernels using them.
struct SyncOnExit {
  cudaStream_t s;
  ~SyncOnExit() { cudaStreamSynchronize(s); }
};

}  // namespace
}  // namespace cu

// ---- head_cuda.h ---------------------------------------------------------------------
using namespace cu;

DeviceHead* head_create(int64_t classes, int d, bool bf16, bool with_momentum) {
  std::string why;
  if (!cuda_usable(&why)) throw CudaError{why};
  MS_CUDA_CHECK(cudaSetDevice(0));
  auto* h = new DeviceHead();
  try {
    h->c = classes;
    h->d = d;
    h->bf16 = bf16;
    h->w.c = classes;
    h->w.d = d;
    h->w.dp = (int)round_up(d, kDPad);
    h->w.bf16_path = bf16;
    const cudaStream_t s = h->stream.get();
    if (bf16) {
      h->w.wb.allocate((size_t)classes * h->w.dp, "the head's centres (bf16)");
      MS_CUDA_CHECK(cudaMemsetAsync(h->w.wb.get(), 0, (size_t)classes * h->w.dp * sizeof(bf16), s));
      h->bytes += (size_t)classes * h->w.dp * sizeof(bf16);
    } else {
      h->w.w32.allocate((size_t)classes * d, "the head's centres");
      MS_CUDA_CHECK(cudaMemsetAsync(h->w.w32.get(), 0, (size_t)classes * d * sizeof(float), s));
      h->bytes += (size_t)classes * d * sizeof(float);
    }
    h->w.invw.allocate((size_t)classes, "the head's inverse norms");
    h->bytes += (size_t)classes * sizeof(float);
    if (with_momentum) {
      h->mom.allocate((size_t)classes * d, "the head's momentum");
      MS_CUDA_CHECK(cudaMemsetAsync(h->mom.get(), 0, (size_t)classes * d * sizeof(float), s));
      h->bytes += (size_t)classes * d * sizeof(float);
    }
    h->stream.sync();
  } catch (...) {
    delete h;
    throw;
  }
  g_head_bytes += h->bytes;
  return h;
}

void head_destroy(DeviceHead* h) noexcept {
  if (!h) return;
  g_head_bytes -= h->bytes;
  delete h;
}

size_t head_device_bytes(const DeviceHead* h) { return h ? h->bytes : 0; }
size_t head_device_bytes_all() { return g_head_bytes.load(); }

void head_set_rows(DeviceHead* h, int which, int64_t row0, int64_t rows, const float* src) {
  MS_CUDA_CHECK(cudaSetDevice(0));
  const cudaStream_t s = h->stream.get();
  const int d = h->d;
  if (which == 1) {
    if (!h->mom) throw CudaError{"head_set_rows: this head has no momentum buffer"};
    MS_CUDA_CHECK(cudaMemcpyAsync(h->mom.get() + row0 * d, src, (size_t)rows * d * sizeof(float), cudaMemcpyHostToDevice, s));
    h->stream.sync();
    return;
  }
  // Checked on the host first, so that a bad chunk leaves the centres unchanged.
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int q = 0; q < d; ++q) ss += (double)src[r * d + q] * (double)src[r * d + q];
    if (!(ss <= kMaxNormSq)) throw_bad_rows("weights", row0 + r);
  }
  if (h->bf16) {
    DeviceBuffer<unsigned long long> bad(1, "non-finite flag");
    MS_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0xff, sizeof(unsigned long long), s));
    DeviceBuffer<float> staging((size_t)rows * d, "bf16 conversion staging");
    MS_CUDA_CHECK(cudaMemcpyAsync(staging.get(), src, (size_t)rows * d * sizeof(float), cudaMemcpyHostToDevice, s));
    launch_prep_wbf16(staging.get(), row0, rows, d, h->w.dp, h->w.wb.get(), h->w.invw.get(), bad.get(), s);
    const int64_t b = read_flag(bad, s);  // synchronises before `staging` is freed
    if (b >= 0) throw_bad_rows("weights", b);
  } else {
    MS_CUDA_CHECK(cudaMemcpyAsync(h->w.w32.get() + row0 * d, src, (size_t)rows * d * sizeof(float), cudaMemcpyHostToDevice, s));
    h->stream.sync();
  }
  h->norms_fresh = false;
}

void head_get_rows(DeviceHead* h, int which, int64_t row0, int64_t rows, float* dst) {
  MS_CUDA_CHECK(cudaSetDevice(0));
  const cudaStream_t s = h->stream.get();
  const int d = h->d;
  if (which == 1) {
    if (!h->mom) throw CudaError{"head_get_rows: this head has no momentum buffer"};
    MS_CUDA_CHECK(cudaMemcpyAsync(dst, h->mom.get() + row0 * d, (size_t)rows * d * sizeof(float), cudaMemcpyDeviceToHost, s));
  } else if (h->bf16) {
    DeviceBuffer<float> staging((size_t)rows * d, "bf16 conversion staging");
    MS_LAUNCH(bf16_rows_to_f32, warp_blocks(rows), 256, 0, s, h->w.wb.get() + row0 * h->w.dp, rows, d, h->w.dp, staging.get());
    MS_CUDA_LAUNCHED("bf16_rows_to_f32");
    MS_CUDA_CHECK(cudaMemcpyAsync(dst, staging.get(), (size_t)rows * d * sizeof(float), cudaMemcpyDeviceToHost, s));
    h->stream.sync();
    return;
  } else {
    MS_CUDA_CHECK(cudaMemcpyAsync(dst, h->w.w32.get() + row0 * d, (size_t)rows * d * sizeof(float), cudaMemcpyDeviceToHost, s));
  }
  h->stream.sync();
}

void head_loss(DeviceHead* h, const LossProblem& p, LossOutputs& out, const HeadSgd* sgd) {
  MS_CUDA_CHECK(cudaSetDevice(0));
  const int64_t N = p.n;
  const int d = h->d;
  const int64_t C = p.class_index ? p.c : h->c;
  if (N < 1 || p.d != d || C < 1) {
    throw InputError{"Expected N ≥ 1 rows of d = " + std::to_string(d) + " for the head but received N=" +
                     std::to_string(N) + ", d=" + std::to_string(p.d)};
  }
  const bool backward = out.grad_x != nullptr;
  if (backward && !sgd) throw CudaError{"head_loss: the head's backward applies an update (sgd missing)"};
  const RowCount rc = count_rows(p.labels, N);
  const int64_t V = p.valid_rows > 0 ? p.valid_rows : rc.valid;
  const cudaStream_t s = h->stream.get();
  // A read-only copy of the centres when the update would race with the reads (see the top of the file).
  const bool copy = p.class_index != nullptr || (backward && h->w.dp > kSlice);

  DeviceBuffer<float> x, rm, lse_in, target_pm1_in, gx;
  DeviceBuffer<int32_t> labels, idx;
  DeviceWeights g;
  std::optional<LossRunner> runner;
  SyncOnExit sync_guard{s};

  upload(x, p.x, (size_t)N * d, "X", s);
  upload(labels, p.labels, (size_t)N, "labels", s);
  upload(rm, p.row_margins, (size_t)N, "row margins", s);
  upload(lse_in, p.lse_in, (size_t)N, "merged LSE", s);
  upload(target_pm1_in, p.target_pm1_in, (size_t)N, "merged target p - 1", s);
  upload(idx, p.class_index, (size_t)C, "sampled class indices", s);
  runner.emplace(N, C, d, h->bf16, s);
  const int64_t bad_x = runner->set_batch(x.get(), labels.get(), rm.get(), V, lse_in.get(), target_pm1_in.get());
  if (bad_x >= 0) throw_bad_rows("embeddings", bad_x);
  x.release();
  if (copy) {
    gather_centres(h, idx.get(), p.class_index, C, g);
  } else {
    ensure_norms(h);
  }
  const DeviceWeights& wr = copy ? g : h->w;

  runner->forward(wr, p.margin);
  runner->download_row_stats(out);
  out.skipped_blocks = 0;
  out.total_blocks = ceil_div(C, kTileC) * rc.groups_with_rows;
  if (backward) {
    gx.allocate((size_t)N * d, "dX");
    SgdParams sp;
    sp.lr = sgd->lr;
    sp.momentum = sgd->momentum;
    sp.weight_decay = sgd->weight_decay;
    sp.round_key = sgd->round_key;
    sp.row_offset = sgd->row_offset;
    if (h->bf16) {
      sp.wb = h->w.wb.get();
    } else {
      sp.w32 = h->w.w32.get();
    }
    sp.mom = sgd->momentum != 0.0f && h->mom ? h->mom.get() : nullptr;
    sp.class_index = idx.get();
    h->norms_fresh = false;  // from the first kernel that may write the centres on
    out.skipped_blocks = runner->backward(wr, p.margin, p.grad_filter, gx.get(), nullptr, &sp);
    MS_CUDA_CHECK(cudaMemcpyAsync(out.grad_x, gx.get(), (size_t)N * d * sizeof(float), cudaMemcpyDeviceToHost, s));
  }
  h->stream.sync();
  finish_outputs(p.labels, N, V, out);
}

void head_topk(DeviceHead* h, const float* x, int64_t n, int k, int32_t* classes, float* scores) {
  MS_CUDA_CHECK(cudaSetDevice(0));
  if (k < 1 || k > kHeadMaxTopK || k > h->c) {
    throw InputError{"Expected k in [1, " + std::to_string(std::min<int64_t>(kHeadMaxTopK, h->c)) +
                     "] for the CUDA head's predict but received " + std::to_string(k)};
  }
  const cudaStream_t s = h->stream.get();
  const int d = h->d;
  const int64_t n_pad = round_up(n, kRowPad);
  const int dp = (int)round_up(d, kDPad);
  DeviceBuffer<float> xd, x32, invx, x_operand;
  // Class chunks: ~8 CTAs per multiprocessor in all, at least 256 classes each.
  const int64_t row_blocks = ceil_div(n, kTopkRows);
  const int chunks = (int)std::max<int64_t>(
      1, std::min<int64_t>({ceil_div(h->c, 256), ceil_div(8LL * device_multiprocessors(), row_blocks), 65535}));
  DeviceBuffer<int32_t> cl, ccl;
  DeviceBuffer<float> sc, csc;
  DeviceBuffer<unsigned long long> bad;
  SyncOnExit sync_guard{s};
  upload(xd, x, (size_t)n * d, "X", s);
  x32.allocate((size_t)n * d, "normalised embeddings");
  invx.allocate((size_t)n_pad, "inverse norms of X");
  x_operand.allocate((size_t)n_pad * dp, "embedding operand");
  cl.allocate((size_t)n * k, "top-k classes");
  sc.allocate((size_t)n * k, "top-k scores");
  ccl.allocate((size_t)chunks * n * k, "top-k classes per class chunk");
  csc.allocate((size_t)chunks * n * k, "top-k scores per class chunk");
  bad.allocate(1, "non-finite flag");
  MS_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0xff, sizeof(unsigned long long), s));
  launch_prep_x<float>(xd.get(), n, d, dp, n_pad, x32.get(), invx.get(), x_operand.get(), bad.get(), s);
  const int64_t bx = read_flag(bad, s);
  if (bx >= 0) throw_bad_rows("embeddings", bx);
  ensure_norms(h);
  MS_LAUNCH(topk_rows, dim3((unsigned)row_blocks, (unsigned)chunks), kTopkWarps * 32, 0, s, x32.get(), n, h->w.view(), k,
            ccl.get(), csc.get());
  MS_CUDA_LAUNCHED("topk_rows");
  MS_LAUNCH(topk_merge, (unsigned)ceil_div(n, 128), 128, 0, s, ccl.get(), csc.get(), n, chunks, k, cl.get(), sc.get());
  MS_CUDA_LAUNCHED("topk_merge");
  MS_CUDA_CHECK(cudaMemcpyAsync(classes, cl.get(), (size_t)n * k * sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  MS_CUDA_CHECK(cudaMemcpyAsync(scores, sc.get(), (size_t)n * k * sizeof(float), cudaMemcpyDeviceToHost, s));
  h->stream.sync();
}

}  // namespace ms
