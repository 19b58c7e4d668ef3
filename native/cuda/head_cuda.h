// head_cuda.h — MarginHead's centres resident on the CUDA device: the
// C++ side of lib/head/device-centres.ts. Plain C++ (no CUDA types), so that the N-API
// glue (napi/device_head.cc) compiles with the host compiler.
//
// The head owns C×d centres (fp32, or bf16 rows padded to a multiple of 64
// columns), their inverse norms, and (μ > 0) the C×d fp32 momentum. A step
// uploads X and the labels, runs the fused kernels against the resident
// centres and applies the SGD update inside the dŴ kernel: no C×d gradient
// buffer exists. Every allocation of a step is made before the first kernel
// that writes the centres, so a failed allocation (CudaError naming the bytes)
// leaves the head unchanged.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../loss_problem.h"

namespace ms {

struct DeviceHead;

struct HeadSgd {
  float lr = 0, momentum = 0, weight_decay = 0;
  // bf16 centres: the stochastic rounding's key (stochastic_round_key of the
  // head's seed and step) and the global row of local row 0, as on the CPU.
  uint64_t round_key = 0;
  int64_t row_offset = 0;
};

// Throws CudaError (device unusable, out of memory). Centres start as zeros.
DeviceHead* head_create(int64_t classes, int d, bool bf16, bool with_momentum);
void head_destroy(DeviceHead* h) noexcept;
// Device bytes this head holds between steps.
size_t head_device_bytes(const DeviceHead* h);
// Device bytes all live heads hold (deviceInfo().cuda.headBytes).
size_t head_device_bytes_all();

// Rows [row0, row0 + rows) of the centres (which = 0) or the momentum
// (which = 1) from / to host fp32. Centres are checked (InputError naming the
// row, as the loss does) and, on the BF16 path, rounded to nearest even.
void head_set_rows(DeviceHead* h, int which, int64_t row0, int64_t rows, const float* src);
void head_get_rows(DeviceHead* h, int which, int64_t row0, int64_t rows, float* dst);

// One call of the loss against the resident centres. p.x, p.labels,
// p.row_margins, p.class_index (the sampled master rows; p.c = their count,
// or the head's C without one), p.lse_in, p.target_pm1_in are host pointers;
// p.w and p.block_update are ignored. With out.grad_x and sgd: the backward
// and the fused update of the centres (out.grad_w is never written).
void head_loss(DeviceHead* h, const LossProblem& p, LossOutputs& out, const HeadSgd* sgd);

// Top-k classes by cosine per row (N×k, descending, ties to the lower class),
// computed on the device; 1 ≤ k ≤ kHeadMaxTopK.
constexpr int kHeadMaxTopK = 32;
void head_topk(DeviceHead* h, const float* x, int64_t n, int k, int32_t* classes, float* scores);

}  // namespace ms
