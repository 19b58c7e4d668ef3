// topk_wasm.cc — ms_wasm_topk: the top-k classes by cosine per row
// (MarginHead.predict on the wasm backend), the CPU backend's streaming top-k
// (cpu/topk_cpu.cc) on its portable kernels and one thread.
#include "../cpu/topk_cpu.h"
#include "wasm_abi.h"

using namespace ms;
using namespace ms::wasm;

extern "C" {

__attribute__((export_name("ms_wasm_topk"))) int ms_wasm_topk(double* a) {
  auto p = [&](int slot) { return (uintptr_t)a[slot]; };
  return run_caught(
      [&] {
        cpu_topk(reinterpret_cast<const float*>(p(kTopkX)), reinterpret_cast<const float*>(p(kTopkW)),
                 reinterpret_cast<const uint16_t*>(p(kTopkWBf16)), (int64_t)a[kTopkN], (int64_t)a[kTopkC],
                 (int64_t)a[kTopkD], (int)a[kTopkK], 1, -1, reinterpret_cast<int32_t*>(p(kTopkClasses)),
                 reinterpret_cast<float*>(p(kTopkScores)));
      },
      "the top-k heaps");
}

}  // extern "C"
