// simd_dispatch.cc — instantiates simd_kernels.inc per instruction set.
#include "simd_dispatch.h"

#include <cmath>
#include <memory>  // the per-thread packed-B buffer of the GEMM
#include <new>

#include "../margin_math.h"
#include "target_region.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>  // sumsq's float → double conversion
#endif

namespace ms {

// One instance per instruction set: simd_kernels.inc sets the target ISA, the
// register tile and the vector types from VW.
#define MS_SIMD_NS portable
#define VW 4
#include "simd_kernels.inc"

#if defined(__x86_64__) && defined(__GNUC__)
#define MS_SIMD_NS avx2
#define VW 8
#include "simd_kernels.inc"

#define MS_SIMD_NS avx512
#define VW 16
#include "simd_kernels.inc"
#define MS_HAVE_X86_DISPATCH 1
#endif

int best_simd_width() {
#ifdef MS_HAVE_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
#if defined(__aarch64__)
  return kSimdNeon;
#endif
  return kSimdPortable;
}

int simd_level(int requested) {
  const int best = best_simd_width();
  const int w = (requested < 0 || requested > best) ? best : requested;
  if (w >= kSimdAvx512 && best >= kSimdAvx512) return kSimdAvx512;
  if (w >= kSimdAvx2 && best >= kSimdAvx2) return kSimdAvx2;
  if (w >= kSimdNeon && best == kSimdNeon) return kSimdNeon;
  return kSimdPortable;
}

const char* simd_level_name(int level) {
  return level == kSimdAvx512 ? "avx512" : level == kSimdAvx2 ? "avx2" : level == kSimdNeon ? "neon" : "portable";
}

const KernelSet& kernels_for(int level) {
  switch (simd_level(level)) {
#ifdef MS_HAVE_X86_DISPATCH
    case kSimdAvx512: return avx512::kernels;
    case kSimdAvx2: return avx2::kernels;
#endif
#if defined(__aarch64__)
    case kSimdNeon: return neon::kernels;
#endif
    default: return portable::kernels;
  }
}

}  // namespace ms
