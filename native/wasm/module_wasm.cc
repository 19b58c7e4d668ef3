// module_wasm.cc — what the WebAssembly module exports besides the two
// operations: its ABI numbers, memory, the last error, the defaults, and the
// elastic margins' counter-based Gaussian draws (the same function as the
// native addon's, so every backend draws the same margins).
#include <cstdlib>
#include <cstring>

#include "../cpu/loss_cpu.h"
#include "wasm_abi.h"

namespace ms::wasm {
std::string& last_error() {
  static std::string message;
  return message;
}
}  // namespace ms::wasm

using namespace ms;
using namespace ms::wasm;

extern "C" {

// kAbiVersion·1000 + kLossSlots·10 + ... : one number the loader compares.
__attribute__((export_name("ms_wasm_abi"))) int ms_wasm_abi() { return kAbiVersion * 10000 + kLossSlots * 100 + kTopkSlots; }

// bytes zeroed and 16-byte aligned, or 0 where the memory cannot grow that far.
__attribute__((export_name("ms_wasm_alloc"))) void* ms_wasm_alloc(double bytes) {
  if (!(bytes >= 0) || bytes > 4294967295.0) return nullptr;
  const size_t n = bytes == 0 ? 16 : (size_t)bytes;
  void* p = std::aligned_alloc(16, (n + 15) / 16 * 16);
  if (p) std::memset(p, 0, n);
  return p;
}

__attribute__((export_name("ms_wasm_free"))) void ms_wasm_free(void* p) { std::free(p); }

// The NUL-terminated message of the last failed call.
__attribute__((export_name("ms_wasm_error"))) const char* ms_wasm_error() { return last_error().c_str(); }

__attribute__((export_name("ms_wasm_default_scale"))) double ms_wasm_default_scale() { return kDefaultScale; }
__attribute__((export_name("ms_wasm_default_workspace"))) double ms_wasm_default_workspace() {
  return (double)kDefaultWorkspaceBytes;
}

// dst[i] = m + sigma·N(0,1) drawn for (seed, counter, start + i), i < n; the
// integers arrive as exact doubles (safe integers, checked in TypeScript).
__attribute__((export_name("ms_wasm_gaussian"))) void ms_wasm_gaussian(float* dst, double n, double m, double sigma,
                                                                      double seed, double counter, double start) {
  const uint64_t s = (uint64_t)seed, c = (uint64_t)counter, st = (uint64_t)start;
  for (uint64_t i = 0; i < (uint64_t)n; ++i) dst[i] = elastic_margin((float)m, (float)sigma, s, c, st + i);
}

// Test hook: the target logit of one cosine through margin_math.h.
__attribute__((export_name("ms_wasm_target_logit"))) double ms_wasm_target_logit(int kind, double scale, double m1,
                                                                                double m2, double m3, int fallback,
                                                                                double cos, double row_margin,
                                                                                float* dz) {
  MarginParams p{(MarginKind)kind, (float)scale, (float)m1, (float)m2, (float)m3, fallback != 0};
  const Logit z = target_logit(p, (float)cos, (float)row_margin);
  *dz = z.dz;
  return z.z;
}

}  // extern "C"
