// loss_wasm.cc — ms_wasm_loss: the fused margin loss (forward, or loss and
// gradients, or loss and a fused SGD update of the centres) in WebAssembly.
//
// What runs: the CPU backend itself (cpu/fused_loss_cpu.cc, class blocks
// streamed, no N×C buffer), on its portable kernels (cpu/simd_kernels.inc at
// 4 lanes, which clang lowers to SIMD128 with -msimd128) and one thread. This
// file only reads the slot array (wasm_abi.h) into a LossProblem and reports
// the outcome; the loader (lib/wasm/) has validated the input in TypeScript
// with the same checks as the native path (lib/validate.ts) and copied the
// arrays into the module's memory.
//
// Build: scripts/build-wasm.sh. Check: test/wasm-*.test.ts (float64
// reference, finite differences). Time: bench/wasm_loss.mjs.
#include <cmath>

#include "../cpu/loss_cpu.h"
#include "../cpu/sgd_cpu.h"
#include "wasm_abi.h"

namespace ms::wasm {
namespace {

template <class T>
T* ptr(const double* a, int slot) {
  return reinterpret_cast<T*>((uintptr_t)a[slot]);
}

LossProblem problem_of(const double* a) {
  LossProblem p;
  p.x = ptr<const float>(a, kX);
  p.w = ptr<const float>(a, kW);
  p.w_bf16 = ptr<const uint16_t>(a, kWBf16);
  p.labels = ptr<const int32_t>(a, kLabels);
  p.row_margins = ptr<const float>(a, kRowMargins);
  p.class_index = ptr<const int32_t>(a, kClassIndex);
  p.n = (int64_t)a[kN];
  p.c = (int64_t)a[kC];
  p.d = (int64_t)a[kD];
  p.margin.kind = (MarginKind)(int)a[kKind];
  p.margin.scale = (float)a[kScale];
  p.margin.m1 = (float)a[kM1];
  p.margin.m2 = (float)a[kM2];
  p.margin.m3 = (float)a[kM3];
  p.margin.fallback = a[kFallback] != 0.0;
  p.grad_filter = (float)a[kGradFilter];
  p.weights_bf16 = a[kWeightsBf16] != 0.0 || p.w_bf16 != nullptr;
  return p;
}

CpuSgd sgd_of(const double* a, const LossProblem& p) {
  CpuSgd s;
  if (a[kSgdOn] == 0.0) return s;
  s.lr = (float)a[kSgdLr];
  s.momentum = (float)a[kSgdMomentum];
  s.weight_decay = (float)a[kSgdWeightDecay];
  s.w = ptr<float>(a, kW);  // the centres are updated in place
  s.w_bf16 = ptr<uint16_t>(a, kWBf16);
  s.buf = ptr<float>(a, kSgdBuf);
  s.class_index = p.class_index;
  s.d = p.d;
  s.round_key = stochastic_round_key((uint64_t)a[kSgdRoundSeed], (uint64_t)a[kSgdRoundStep]);
  return s;
}

}  // namespace
}  // namespace ms::wasm

using namespace ms;
using namespace ms::wasm;

extern "C" {

// Returns a Status (wasm_abi.h); the results are in the out slots and arrays.
__attribute__((export_name("ms_wasm_loss"))) int ms_wasm_loss(double* a) {
  return run_caught(
      [&] {
        LossProblem p = problem_of(a);
        const CpuSgd sgd = sgd_of(a, p);
        if (sgd.on()) p.block_update = sgd_block_update(&sgd);
        LossOutputs out;
        out.per_sample = ptr<float>(a, kPerSample);
        out.row_target_cos = ptr<float>(a, kTargetCos);
        out.row_max = ptr<float>(a, kRowMax);
        out.row_sumexp = ptr<float>(a, kRowSumExp);
        out.row_sumexp_other = ptr<float>(a, kRowSumExpOther);
        out.row_target = ptr<float>(a, kRowTarget);
        if (a[kWithGrad] != 0.0) {
          out.grad_x = ptr<float>(a, kGradX);
          out.grad_w = sgd.on() ? nullptr : ptr<float>(a, kGradW);
        }
        CpuOptions opt;
        opt.threads = 1;  // the module is built without threads
        opt.simd = -1;    // the portable kernels: the only set on wasm32
        opt.matrix = 0;   // bf16 by rounded operands (no matrix instructions)
        opt.workspace_bytes = (size_t)a[kWorkspaceBytes];
        cpu_loss(p, out, opt);
        a[kOutLoss] = out.loss;
        a[kOutValidRows] = (double)out.valid_rows;
        a[kOutSkipped] = (double)out.skipped_blocks;
        a[kOutTotal] = (double)out.total_blocks;
      },
      "the loss workspace of N=" + std::to_string((int64_t)a[kN]) + ", C=" + std::to_string((int64_t)a[kC]) +
          ", d=" + std::to_string((int64_t)a[kD]));
}

}  // extern "C"
