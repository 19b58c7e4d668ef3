// fused_loss_cuda.cuh — the CUDA backend on device pointers.
//
// cuda_loss() (loss_cuda.cu) is a thin host-pointer wrapper around these:
// copy in, LossRunner forward/backward, copy out. A future stateful head that
// keeps W on the device uses DeviceWeights directly (its norms are computed
// once per change of W: call refresh_norms after an update) and a LossRunner
// per batch shape, with no host copies of W or dW.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "cuda_common.cuh"
#include "tiles.cuh"

namespace ms {
namespace cu {

// Class centres resident on the device, with their inverse norms.
struct DeviceWeights {
  int64_t c = 0;
  int d = 0, dp = 0;
  bool bf16_path = false;
  DeviceBuffer<float> w32;          // TF32 path: C×d fp32 (row stride d)
  DeviceBuffer<__nv_bfloat16> wb;   // BF16 path: C×dp, zero columns ≥ d
  DeviceBuffer<float> invw;         // C
  WView view() const;
};

// W (C×d fp32, on the host, or on the device when src_on_device) → the
// kernels' layout. TF32 path: one copy, then the norms. BF16 path: streamed
// through a bounded fp32 staging buffer and converted on the device (W is
// never resident in fp32). Throws InputError for a non-finite value (smallest
// row), CudaError for CUDA failures. Synchronises the stream.
// class_index (host, c entries, or null): problem class j is row
// class_index[j] of src (host sources only); a bad row is reported by its
// index in src.
void upload_weights(DeviceWeights& w, const float* src, int64_t c, int d, bool bf16_path, cudaStream_t s,
                    bool src_on_device = false, const int32_t* class_index = nullptr);
// TF32 path, W already in w.w32: recompute 1/‖w_j‖ (after W changed). Throws
// InputError for a non-finite value. Synchronises the stream.
void refresh_norms(DeviceWeights& w, cudaStream_t s);

struct SgdParams;  // kernels.cuh

// Counted rows of a batch (label ≠ −1; −2 counts, its target is in another
// shard) and the number of 32-row groups that hold one.
struct RowCount {
  int64_t valid = 0, groups_with_rows = 0;
};
RowCount count_rows(const int32_t* labels, int64_t n);
// After the stream is synchronised: the mean loss over V counted rows (the
// local per-row losses summed in row order in double, as the CPU backend) and
// NaN target logits / cosines where the target is not local.
void finish_outputs(const int32_t* labels, int64_t n, int64_t valid, LossOutputs& out);

// One batch shape against one weight shape: the per-call workspace.
class LossRunner {
 public:
  LossRunner(int64_t n, int64_t c, int d, bool bf16_path, cudaStream_t s);

  // Normalises X (device, N×d) and takes the labels (device, N; ≥ 0 a local
  // target, −1 ignored, −2 counted with its target in another shard) and the
  // optional per-row device arrays: elastic margins, merged LSE (lse_in) and
  // p_y − 1 (target_pm1_in) from other shards. valid_rows = V, the number of counted
  // rows (the global count when sharded). Returns the smallest row of X with a
  // non-finite value or a norm above 1e30, or −1 (synchronises the stream).
  int64_t set_batch(const float* x_dev, const int32_t* labels_dev, const float* row_margins_dev, int64_t valid_rows,
                    const float* lse_in_dev = nullptr, const float* target_pm1_in_dev = nullptr);

  // Target logits, the fused tiles, the LSE merge: per-row losses in per_sample().
  void forward(const DeviceWeights& w, const MarginParams& m);
  const float* per_sample() const { return per_sample_.get(); }
  // The row's online-LSE state over this problem's classes (N_pad each) and
  // the target logits (0 where there is no local target).
  const float* row_max() const { return row_m_.get(); }
  const float* row_sumexp() const { return row_l_.get(); }
  const float* row_sumexp_other() const { return row_o_.get(); }
  const float* target_logit() const { return zt_.get(); }
  const float* target_cos() const { return target_cos_.get(); }
  // Queues the copies of the per-row outputs out asks for (non-null fields:
  // per-sample loss, the LSE state, target logit and cosine) to the host.
  void download_row_stats(LossOutputs& out) const;
  // The filter mask of the last backward (host copy, nct × N_pad/32, kMask*).
  const std::vector<uint8_t>& mask() const { return mask_host_; }

  // After forward(): gradients into device buffers grad_x (N×d) and grad_w (C×d).
  // Returns the number of (128-class, 32-row) tiles skipped by the filter;
  // total_tiles() is the number of tiles holding a counted row.
  // With sgd (on()), backward_dw applies the fused update instead of writing
  // grad_w (which may then be null).
  int64_t backward(const DeviceWeights& w, const MarginParams& m, float grad_filter, float* grad_x, float* grad_w,
                   const SgdParams* sgd = nullptr);
  int64_t total_tiles() const { return total_tiles_; }

  // Extra device memory one call of this shape needs (beyond X, W and dW).
  static size_t workspace_bytes(int64_t n, int64_t c, int d, bool bf16_path, bool with_grad, int sms);

 private:
  // The fields FwdParams and BwdParams share, from this runner's buffers.
  template <class P>
  P tile_params(const DeviceWeights& w, const MarginParams& m) const;

  int64_t n_, c_, n_pad_, nct_;
  int64_t row_tiles32_, row_tiles64_;  // N_pad in tiles of kTileR (32) and of 64 rows
  int d_, dp_, slices_;
  bool bf16_;
  int sms_;
  cudaStream_t s_;
  float inv_valid_ = 0.0f;
  int64_t total_tiles_ = 0;
  DeviceBuffer<int32_t> labels_;     // N_pad, −1 padding
  const float* row_m_in_ = nullptr;  // borrowed (elastic margins)
  const float* lse_in_ = nullptr;    // borrowed
  const float* target_pm1_in_ = nullptr;  // borrowed
  DeviceBuffer<float> x32_, invx_;   // N×d, N_pad
  DeviceBuffer<unsigned char> x_operand_;  // N_pad×dp of T
  DeviceBuffer<float> zt_, dzt_, target_cos_, lse_, per_sample_, target_pm1_, row_m_, row_l_, row_o_;
  DeviceBuffer<float2> partial_;     // nct×N_pad
  DeviceBuffer<uint8_t> mask_;       // nct×row_tiles32
  DeviceBuffer<float> dxp_;          // groups×N_pad×dp
  DeviceBuffer<unsigned long long> bad_;
  std::vector<uint8_t> mask_host_;
};

// Class groups of backward_dx: enough CTAs for ~8 per multiprocessor, at most
// 512 MiB of partials, at least one class tile per group.
void choose_groups(int64_t nct, int64_t row_tiles32, int slices, int64_t n_pad, int dp, int sms, int64_t* groups,
                   int64_t* tiles_per_group);

int device_multiprocessors();

}  // namespace cu
}  // namespace ms
