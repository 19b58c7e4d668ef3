// loss_cuda.cu — the CUDA backend's host side: device discovery (never
// crashes without a driver: cudaGetDeviceCount's error becomes the reason),
// weight upload and norms, the per-call workspace (LossRunner), and
// cuda_loss(), the host-pointer contract of loss_cuda.h (copy in, compute,
// copy out).
//
// Memory of one call, N = 512, d = 512, C = 10⁶, TF32 path (fp32 W):
//   W 2.05 GB + dW 2.05 GB (the caller's data and result)
//   + partials nct·N_pad·8 B = 32 MB + dX̂ partials ≤ 512 MiB (≈ 66 MB on an
//   H100: 66 groups × N_pad·dp·4 B) + O(N·d + C) small arrays.
// BF16 path: W is 1.02 GB (bf16, dp columns) plus a 64 MiB staging buffer.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "fused_loss_cuda.cuh"
#include "kernels.cuh"
#include "loss_cuda.h"

namespace ms {
namespace cu {

// ---- Errors --------------------------------------------------------------------
std::string cuda_error_text(cudaError_t e, const std::string& what) {
  std::string s = cudaGetErrorName(e);
  s += ": ";
  s += cudaGetErrorString(e);
  if (!what.empty()) s += " (" + what + ")";
  return s;
}

void throw_cuda(cudaError_t e, const std::string& what) { throw CudaError{cuda_error_text(e, what)}; }

void check_launch(const char* kernel_name) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(e, std::string("launch of ") + kernel_name);
}

// ---- Allocation accounting ---------------------------------------------------------
namespace {
std::atomic<size_t> g_live{0}, g_peak{0};
}
size_t device_bytes_live() { return g_live.load(); }
size_t device_bytes_peak() { return g_peak.load(); }
void device_bytes_reset_peak() { g_peak.store(g_live.load()); }
void note_alloc(size_t bytes) {
  const size_t now = g_live.fetch_add(bytes) + bytes;
  size_t prev = g_peak.load();
  while (now > prev && !g_peak.compare_exchange_weak(prev, now)) {
  }
}
void note_free(size_t bytes) { g_live.fetch_sub(bytes); }

int device_multiprocessors() {
  int dev = 0, v = 0;
  MS_CUDA_CHECK(cudaGetDevice(&dev));
  MS_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
  return v > 0 ? v : 1;
}

// ---- Weights ---------------------------------------------------------------------
WView DeviceWeights::view() const {
  WView v;
  v.w32 = bf16_path ? nullptr : w32.get();
  v.wb = bf16_path ? wb.get() : nullptr;
  v.invw = invw.get();
  v.c = c;
  v.d = d;
  v.dp = dp;
  v.vec4 = (d % 4 == 0) ? 1 : 0;
  return v;
}

namespace {
constexpr unsigned long long kNoBadRow = ~0ull;

int64_t read_bad(const DeviceBuffer<unsigned long long>& bad, cudaStream_t s) {
  unsigned long long h = kNoBadRow;
  MS_CUDA_CHECK(cudaMemcpyAsync(&h, bad.get(), sizeof(h), cudaMemcpyDeviceToHost, s));
  MS_CUDA_CHECK(cudaStreamSynchronize(s));
  return h == kNoBadRow ? -1 : (int64_t)h;
}

[[noreturn]] void throw_bad_weights(int64_t row) { throw bad_rows_error("weights", row); }
}  // namespace

void upload_weights(DeviceWeights& w, const float* src, int64_t c, int d, bool bf16_path, cudaStream_t s,
                    bool src_on_device, const int32_t* class_index) {
  if (src_on_device && class_index) throw CudaError{"upload_weights: class_index needs a host source"};
  const cudaMemcpyKind kind = src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
  w.c = c;
  w.d = d;
  w.dp = (int)round_up(d, kDPad);
  w.bf16_path = bf16_path;
  w.invw.allocate((size_t)c, "inverse norms of W");
  DeviceBuffer<unsigned long long> bad(1, "non-finite flag");
  MS_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0xff, sizeof(unsigned long long), s));
  // Rows are moved in chunks of ≤ 16 Mi floats: through a host gather buffer
  // when sampling (class_index), through a device staging buffer on the BF16
  // path. A pageable host→device copy returns once the source is staged, and
  // stream order makes each device-side reuse wait for the previous kernel.
  const int64_t rows_per = std::max<int64_t>(1, std::min<int64_t>(c, (int64_t)(16u << 20) / d));
  std::vector<float> gathered(class_index ? (size_t)rows_per * d : 0);
  auto chunk_source = [&](int64_t j0, int64_t rows) -> const float* {
    if (!class_index) return src + j0 * d;
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(gathered.data() + r * d, src + (int64_t)class_index[j0 + r] * d, sizeof(float) * d);
    return gathered.data();
  };
  if (!bf16_path) {
    w.wb.release();
    w.w32.allocate((size_t)c * d, "W");
    if (!class_index) {
      MS_CUDA_CHECK(cudaMemcpyAsync(w.w32.get(), src, (size_t)c * d * sizeof(float), kind, s));
    } else {
      for (int64_t j0 = 0; j0 < c; j0 += rows_per) {
        const int64_t rows = std::min(rows_per, c - j0);
        MS_CUDA_CHECK(cudaMemcpyAsync(w.w32.get() + j0 * d, chunk_source(j0, rows), (size_t)rows * d * sizeof(float),
                                      cudaMemcpyHostToDevice, s));
        MS_CUDA_CHECK(cudaStreamSynchronize(s));  // the gather buffer is reused
      }
    }
    launch_prep_w32(w.w32.get(), c, d, w.invw.get(), bad.get(), s);
  } else {
    w.w32.release();
    w.wb.allocate((size_t)c * w.dp, "W (bf16)");
    DeviceBuffer<float> staging((size_t)rows_per * d, "bf16 conversion staging");
    for (int64_t j0 = 0; j0 < c; j0 += rows_per) {
      const int64_t rows = std::min(rows_per, c - j0);
      MS_CUDA_CHECK(cudaMemcpyAsync(staging.get(), chunk_source(j0, rows), (size_t)rows * d * sizeof(float),
                                    class_index ? cudaMemcpyHostToDevice : kind, s));
      if (class_index) MS_CUDA_CHECK(cudaStreamSynchronize(s));
      launch_prep_wbf16(staging.get(), j0, rows, d, w.dp, w.wb.get(), w.invw.get(), bad.get(), s);
    }
    const int64_t b = read_bad(bad, s);  // synchronises before `staging` is freed
    if (b >= 0) throw_bad_weights(class_index ? class_index[b] : b);
    return;
  }
  const int64_t b = read_bad(bad, s);
  if (b >= 0) throw_bad_weights(class_index ? class_index[b] : b);
}

void refresh_norms(DeviceWeights& w, cudaStream_t s) {
  if (w.bf16_path || !w.w32) throw CudaError{"refresh_norms: needs fp32 weights resident on the device"};
  DeviceBuffer<unsigned long long> bad(1, "non-finite flag");
  MS_CUDA_CHECK(cudaMemsetAsync(bad.get(), 0xff, sizeof(unsigned long long), s));
  launch_prep_w32(w.w32.get(), w.c, w.d, w.invw.get(), bad.get(), s);
  const int64_t b = read_bad(bad, s);
  if (b >= 0) throw_bad_weights(b);
}

// ---- Workspace ------------------------------------------------------------------
void choose_groups(int64_t nct, int64_t row_tiles32, int slices, int64_t n_pad, int dp, int sms, int64_t* groups,
                   int64_t* tiles_per_group) {
  const int64_t ctas_per_group = row_tiles32 * slices;
  const int64_t want = ceil_div(8LL * sms, ctas_per_group);
  const int64_t bytes_per_group = n_pad * (int64_t)dp * (int64_t)sizeof(float);
  const int64_t cap = std::max<int64_t>(1, (512LL << 20) / bytes_per_group);
  const int64_t g = std::max<int64_t>(1, std::min(want, std::min(nct, cap)));
  const int64_t tpg = ceil_div(nct, g);
  *tiles_per_group = tpg;
  *groups = ceil_div(nct, tpg);  // no empty group
}

LossRunner::LossRunner(int64_t n, int64_t c, int d, bool bf16_path, cudaStream_t s)
    : n_(n), c_(c), d_(d), bf16_(bf16_path), s_(s) {
  n_pad_ = round_up(n, kRowPad);
  nct_ = ceil_div(c, kTileC);
  row_tiles32_ = n_pad_ / kTileR;
  row_tiles64_ = n_pad_ / 64;
  dp_ = (int)round_up(d, kDPad);
  slices_ = (int)ceil_div(dp_, kSlice);
  sms_ = device_multiprocessors();
  // Grid limits: blockIdx.x < 2³¹ for every tile kernel.
  if (row_tiles64_ * nct_ > INT_MAX || nct_ * row_tiles32_ > (int64_t)INT_MAX * 8 || ceil_div(c, 32) > INT_MAX || n > INT_MAX) {
    throw CudaError{"problem too large for the CUDA backend's launch grid: N=" + std::to_string(n) +
                    ", C=" + std::to_string(c)};
  }
  const size_t esz = bf16_ ? sizeof(bf16) : sizeof(float);
  labels_.allocate((size_t)n_pad_, "labels");
  x32_.allocate((size_t)n * d, "normalised embeddings");
  invx_.allocate((size_t)n_pad_, "inverse norms of X");
  x_operand_.allocate((size_t)n_pad_ * dp_ * esz, "embedding operand");
  zt_.allocate((size_t)n_pad_, "target logits");
  dzt_.allocate((size_t)n_pad_, "target derivatives");
  target_cos_.allocate((size_t)n_pad_, "target cosines");
  lse_.allocate((size_t)n_pad_, "LSE");
  per_sample_.allocate((size_t)n_pad_, "per-sample loss");
  target_pm1_.allocate((size_t)n_pad_, "target p - 1");
  row_m_.allocate((size_t)n_pad_, "row max");
  row_l_.allocate((size_t)n_pad_, "row sumexp");
  row_o_.allocate((size_t)n_pad_, "row sumexp without target");
  partial_.allocate((size_t)(nct_ * n_pad_), "LSE partials");
  bad_.allocate(1, "non-finite flag");
}

size_t LossRunner::workspace_bytes(int64_t n, int64_t c, int d, bool bf16_path, bool with_grad, int sms) {
  const int64_t n_pad = round_up(n, kRowPad), nct = ceil_div(c, kTileC), dp = round_up(d, kDPad);
  const int64_t row_tiles32 = n_pad / kTileR;
  const int slices = (int)ceil_div(dp, kSlice);
  size_t b = (size_t)n_pad * 4 * 12 + (size_t)n * d * 4 + (size_t)n_pad * dp * (bf16_path ? 2 : 4) +
             (size_t)(nct * n_pad) * 8;
  if (with_grad) {
    int64_t g = 0, tpg = 0;
    choose_groups(nct, row_tiles32, slices, n_pad, (int)dp, sms, &g, &tpg);
    b += (size_t)(nct * row_tiles32) + (size_t)(g * n_pad * dp) * 4;
  }
  return b;
}

void LossRunner::download_row_stats(LossOutputs& out) const {
  auto download = [&](float* dst, const float* src) {
    if (dst) MS_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n_ * sizeof(float), cudaMemcpyDeviceToHost, s_));
  };
  download(out.per_sample, per_sample());
  download(out.row_max, row_max());
  download(out.row_sumexp, row_sumexp());
  download(out.row_sumexp_other, row_sumexp_other());
  download(out.row_target, target_logit());
  download(out.row_target_cos, target_cos());
}

int64_t LossRunner::set_batch(const float* x_dev, const int32_t* labels_dev, const float* row_margins_dev,
                              int64_t valid_rows, const float* lse_in_dev, const float* target_pm1_in_dev) {
  MS_CUDA_CHECK(cudaMemsetAsync(labels_.get(), 0xff, (size_t)n_pad_ * sizeof(int32_t), s_));  // −1
  MS_CUDA_CHECK(cudaMemcpyAsync(labels_.get(), labels_dev, (size_t)n_ * sizeof(int32_t), cudaMemcpyDeviceToDevice, s_));
  row_m_in_ = row_margins_dev;
  lse_in_ = lse_in_dev;
  target_pm1_in_ = target_pm1_in_dev;
  inv_valid_ = valid_rows > 0 ? (float)(1.0 / (double)valid_rows) : 0.0f;
  MS_CUDA_CHECK(cudaMemsetAsync(bad_.get(), 0xff, sizeof(unsigned long long), s_));
  MS_OPERAND_SWITCH(bf16_, T, [&] {
    launch_prep_x<T>(x_dev, n_, d_, dp_, n_pad_, x32_.get(), invx_.get(), reinterpret_cast<T*>(x_operand_.get()),
                     bad_.get(), s_);
  });
  return read_bad(bad_, s_);
}

template <class P>
P LossRunner::tile_params(const DeviceWeights& w, const MarginParams& m) const {
  P p{};
  p.x_operand = x_operand_.get();
  p.w = w.view();
  p.labels = labels_.get();
  p.scale = m.scale;
  p.cvm_m2 = cvm_false_margin(m);
  p.dp = dp_;
  p.n_pad = n_pad_;
  p.nct = nct_;
  return p;
}

void LossRunner::forward(const DeviceWeights& w, const MarginParams& m) {
  if (w.c != c_ || w.d != d_ || w.bf16_path != bf16_) throw CudaError{"LossRunner::forward: weight shape mismatch"};
  const WView wv = w.view();
  TargetParams tp{};
  tp.x32 = x32_.get();
  tp.labels = labels_.get();
  tp.row_m = row_m_in_;
  tp.w = wv;
  tp.margin = m;
  tp.n_pad = n_pad_;
  tp.zt = zt_.get();
  tp.dzt = dzt_.get();
  tp.target_cos = target_cos_.get();
  launch_target(tp, s_);

  FwdParams fp = tile_params<FwdParams>(w, m);
  fp.row_tiles64 = row_tiles64_;
  fp.partial = partial_.get();
  MS_OPERAND_SWITCH(bf16_, T, [&] { launch_forward<T>(fp, s_); });
  MergeParams mp{};
  mp.partial = partial_.get();
  mp.nct = nct_;
  mp.n_pad = n_pad_;
  mp.n = n_;
  mp.labels = labels_.get();
  mp.zt = zt_.get();
  mp.lse_in = lse_in_;
  mp.target_pm1_in = target_pm1_in_;
  mp.lse = lse_.get();
  mp.target_pm1 = target_pm1_.get();
  mp.per_sample = per_sample_.get();
  mp.row_m = row_m_.get();
  mp.row_l = row_l_.get();
  mp.row_o = row_o_.get();
  launch_merge(mp, s_);
}

int64_t LossRunner::backward(const DeviceWeights& w, const MarginParams& m, float grad_filter, float* grad_x,
                             float* grad_w, const SgdParams* sgd) {
  if (w.c != c_ || w.d != d_ || w.bf16_path != bf16_) throw CudaError{"LossRunner::backward: weight shape mismatch"};
  if (!mask_) mask_.allocate((size_t)(nct_ * row_tiles32_), "filter mask");
  launch_mask(partial_.get(), lse_.get(), labels_.get(), nct_, n_pad_, row_tiles32_, grad_filter, mask_.get(), s_);

  int64_t groups = 0, tpg = 0;
  choose_groups(nct_, row_tiles32_, slices_, n_pad_, dp_, sms_, &groups, &tpg);
  if (!dxp_ || dxp_.size() < (size_t)(groups * n_pad_ * dp_)) {
    dxp_.allocate((size_t)(groups * n_pad_ * dp_), "dX partials");
  }

  BwdParams bp = tile_params<BwdParams>(w, m);
  bp.target_pm1 = target_pm1_.get();
  bp.dzt = dzt_.get();
  bp.target_cos = target_cos_.get();
  bp.lse = lse_.get();
  bp.inv_valid = inv_valid_;
  bp.row_tiles32 = row_tiles32_;
  bp.mask = mask_.get();
  bp.tiles_per_group = tpg;
  bp.dxp = dxp_.get();
  bp.grad_w = grad_w;
  if (sgd) bp.sgd = *sgd;
  MS_OPERAND_SWITCH(bf16_, T, [&] {
    launch_backward_dx<T>(bp, groups, slices_, s_);
    launch_finish_dx(dxp_.get(), groups, n_pad_, dp_, n_, d_, x32_.get(), invx_.get(), grad_x, s_);
    launch_backward_dw<T>(bp, slices_, s_);
  });

  std::vector<uint8_t>& hm = mask_host_;
  hm.resize((size_t)(nct_ * row_tiles32_));
  MS_CUDA_CHECK(cudaMemcpyAsync(hm.data(), mask_.get(), hm.size(), cudaMemcpyDeviceToHost, s_));
  MS_CUDA_CHECK(cudaStreamSynchronize(s_));
  int64_t skipped = 0, total = 0;
  for (uint8_t v : hm) {
    skipped += v == kMaskFiltered;
    total += v != kMaskNoRows;
  }
  total_tiles_ = total;
  return skipped;
}

RowCount count_rows(const int32_t* labels, int64_t n) {
  RowCount rc;
  std::vector<uint8_t> group_has_row((size_t)ceil_div(n, kTileR), 0);
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] != -1) {
      ++rc.valid;
      group_has_row[(size_t)(i / kTileR)] = 1;
    }
  }
  for (uint8_t g : group_has_row) rc.groups_with_rows += g;
  return rc;
}

void finish_outputs(const int32_t* labels, int64_t n, int64_t valid, LossOutputs& out) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] >= 0) {
      total += out.per_sample[i];
    } else {
      if (out.row_target) out.row_target[i] = NAN;
      if (out.row_target_cos) out.row_target_cos[i] = NAN;
    }
  }
  out.valid_rows = valid;
  out.loss = valid > 0 ? total / (double)valid : 0.0;
}

// ---- Discovery --------------------------------------------------------------------
namespace {
__global__ void probe_kernel() {}

struct Usable {
  bool ok = false;
  std::string why;
};

Usable probe() {
  Usable u;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    u.why = cuda_error_text(e, "cudaGetDeviceCount");
    cudaGetLastError();
    return u;
  }
  if (count <= 0) {
    u.why = "no CUDA device was found";
    return u;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) != cudaSuccess) {
    e = cudaGetLastError();
    u.why = cuda_error_text(e, "cudaDeviceGetAttribute");
    return u;
  }
  if (major < 8) {
    u.why = "CUDA device 0 has compute capability " + std::to_string(major) + "." + std::to_string(minor) +
            "; the CUDA backend needs 8.0 or newer (TF32/BF16 tensor cores)";
    return u;
  }
  // Is there machine code (sm_80/86/89/90) or PTX (compute_90) this device runs?
  cudaFuncAttributes fa;
  e = cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(&probe_kernel));
  if (e != cudaSuccess) {
    cudaGetLastError();
    u.why = cuda_error_text(e, "no kernel image for compute capability " + std::to_string(major) + "." +
                                   std::to_string(minor));
    return u;
  }
  u.ok = true;
  return u;
}

const Usable& usable_state() {
  static const Usable u = probe();  // once per process (thread-safe static)
  return u;
}
}  // namespace

}  // namespace cu

// ---- loss_cuda.h --------------------------------------------------------------------
bool cuda_compiled() { return true; }

bool cuda_usable(std::string* why) {
  const cu::Usable& u = cu::usable_state();
  if (!u.ok && why) *why = u.why;
  return u.ok;
}

bool cuda_device_info(CudaDeviceInfo* info) {
  if (!info || !cuda_usable(nullptr)) return false;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  info->name = prop.name;
  info->major = prop.major;
  info->minor = prop.minor;
  info->total_memory = prop.totalGlobalMem;
  info->multiprocessors = prop.multiProcessorCount;
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(0) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    info->free_memory = free_b;
    info->total_memory = total_b;
  } else {
    cudaGetLastError();
  }
  cudaDriverGetVersion(&info->driver_version);
  cudaRuntimeGetVersion(&info->runtime_version);
  return true;
}

namespace cu {
namespace {

void check_shape(const LossProblem& p) {
  if (p.n < 1 || p.c < 1 || p.d < 1 || p.d > (1 << 24)) {
    throw InputError{"Expected N ≥ 1, C ≥ 1 and 1 ≤ d ≤ 2²⁴ for the CUDA backend but received N=" +
                     std::to_string(p.n) + ", C=" + std::to_string(p.c) + ", d=" + std::to_string(p.d)};
  }
}

// The device side of one cuda_loss call. Declaration order matters: `stream`
// is declared last, so it is destroyed first and its destructor waits for the
// kernels before any buffer is freed.
struct CallBuffers {
  DeviceWeights w;
  DeviceBuffer<float> x, rm, lse_in, target_pm1_in, gx, gw;
  DeviceBuffer<int32_t> labels;
  std::optional<LossRunner> runner;
  Stream stream;
};

// N floats host → device, when the host array is given.
void upload_rows(DeviceBuffer<float>& dst, const float* src, int64_t n, const char* what, cudaStream_t s) {
  if (!src) return;
  dst.allocate((size_t)n, what);
  MS_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src, (size_t)n * sizeof(float), cudaMemcpyHostToDevice, s));
}

// X, the labels and the optional per-row inputs to the device, X normalised
// into the runner, then W. V is the count of rows the mean divides by.
void upload_problem(CallBuffers& b, const LossProblem& p, int64_t V) {
  const int64_t N = p.n;
  const int d = (int)p.d;
  const cudaStream_t s = b.stream.get();
  b.x.allocate((size_t)N * d, "X");
  MS_CUDA_CHECK(cudaMemcpyAsync(b.x.get(), p.x, (size_t)N * d * sizeof(float), cudaMemcpyHostToDevice, s));
  b.labels.allocate((size_t)N, "labels");
  MS_CUDA_CHECK(cudaMemcpyAsync(b.labels.get(), p.labels, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  upload_rows(b.rm, p.row_margins, N, "row margins", s);
  upload_rows(b.lse_in, p.lse_in, N, "merged LSE", s);
  upload_rows(b.target_pm1_in, p.target_pm1_in, N, "merged target p - 1", s);
  b.runner.emplace(N, p.c, d, p.weights_bf16, s);
  const int64_t bad_x =
      b.runner->set_batch(b.x.get(), b.labels.get(), b.rm.get(), V, b.lse_in.get(), b.target_pm1_in.get());
  if (bad_x >= 0) throw bad_rows_error("embeddings", bad_x);
  b.x.release();  // x̂ lives on in the runner
  upload_weights(b.w, p.w, p.c, d, p.weights_bf16, s, /*src_on_device=*/false, p.class_index);
}

// The fused update hook, called in class order for blocks of kTileC
// classes, with null for a block the filter skipped entirely (as the CPU
// backend does): dW comes down in chunks of whole blocks.
void update_blocks(CallBuffers& b, const LossProblem& p) {
  const int64_t C = p.c;
  const int d = (int)p.d;
  const std::vector<uint8_t>& mask = b.runner->mask();
  const int64_t row_tiles32 = (int64_t)(mask.size() / (size_t)ceil_div(C, kTileC));
  const int64_t blocks_per_chunk = std::max<int64_t>(1, (int64_t)(64u << 20) / ((int64_t)kTileC * d * 4));
  std::vector<float> host((size_t)(std::min(C, blocks_per_chunk * kTileC) * d));
  for (int64_t j0 = 0; j0 < C; j0 += blocks_per_chunk * kTileC) {
    const int64_t rows = std::min(C - j0, blocks_per_chunk * kTileC);
    MS_CUDA_CHECK(cudaMemcpyAsync(host.data(), b.gw.get() + j0 * d, (size_t)rows * d * sizeof(float),
                                  cudaMemcpyDeviceToHost, b.stream.get()));
    b.stream.sync();
    for (int64_t b0 = 0; b0 < rows; b0 += kTileC) {
      const int64_t ct = (j0 + b0) / kTileC, count = std::min<int64_t>(kTileC, rows - b0);
      bool compute = false, filtered = false;
      for (int64_t rt = 0; rt < row_tiles32; ++rt) {
        compute |= mask[(size_t)(ct * row_tiles32 + rt)] == kMaskCompute;
        filtered |= mask[(size_t)(ct * row_tiles32 + rt)] == kMaskFiltered;
      }
      p.block_update(j0 + b0, count, (!compute && filtered) ? nullptr : host.data() + b0 * d);
    }
  }
}

// Gradients on the device, then dX and dW (or the update hook) on the host.
void backward_to_host(CallBuffers& b, const LossProblem& p, LossOutputs& out) {
  const int64_t N = p.n, C = p.c;
  const int d = (int)p.d;
  const cudaStream_t s = b.stream.get();
  b.gx.allocate((size_t)N * d, "dX");
  b.gw.allocate((size_t)C * d, "dW");
  out.skipped_blocks = b.runner->backward(b.w, p.margin, p.grad_filter, b.gx.get(), b.gw.get());
  MS_CUDA_CHECK(cudaMemcpyAsync(out.grad_x, b.gx.get(), (size_t)N * d * sizeof(float), cudaMemcpyDeviceToHost, s));
  if (!p.block_update) {
    MS_CUDA_CHECK(cudaMemcpyAsync(out.grad_w, b.gw.get(), (size_t)C * d * sizeof(float), cudaMemcpyDeviceToHost, s));
  } else {
    update_blocks(b, p);
  }
}

}  // namespace
}  // namespace cu

void cuda_loss(const LossProblem& p, LossOutputs& out) {
  using namespace cu;
  std::string why;
  if (!cuda_usable(&why)) throw CudaError{why};
  check_shape(p);
  MS_CUDA_CHECK(cudaSetDevice(0));
  const bool backward = out.grad_x != nullptr && (out.grad_w != nullptr || p.block_update);
  // V may be given (the global count when sharded).
  const RowCount rc = count_rows(p.labels, p.n);
  const int64_t V = p.valid_rows > 0 ? p.valid_rows : rc.valid;

  CallBuffers b;
  upload_problem(b, p, V);
  b.runner->forward(b.w, p.margin);
  b.runner->download_row_stats(out);
  out.skipped_blocks = 0;
  out.total_blocks = ceil_div(p.c, kTileC) * rc.groups_with_rows;
  if (backward) backward_to_host(b, p, out);
  b.stream.sync();
  finish_outputs(p.labels, p.n, V, out);
}

}  // namespace ms
