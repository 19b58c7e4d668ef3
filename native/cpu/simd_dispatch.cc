// simd_dispatch.cc — instantiates simd_kernels.inc per instruction set.
#include "simd_dispatch.h"

#include <cmath>

#include "../margin_math.h"

namespace ms {

namespace portable {
#define VW 4
#define MR 4
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
typedef float vfu __attribute__((vector_size(16), aligned(4)));
typedef int32_t viu __attribute__((vector_size(16), aligned(4)));
#include "simd_kernels.inc"
#undef VW
#undef MR
}  // namespace portable

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define VW 8
#define MR 6
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef float vfu __attribute__((vector_size(32), aligned(4)));
typedef int32_t viu __attribute__((vector_size(32), aligned(4)));
#include "simd_kernels.inc"
#undef VW
#undef MR
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
#define VW 16
#define MR 8
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t viu __attribute__((vector_size(64), aligned(4)));
#include "simd_kernels.inc"
#undef VW
#undef MR
}  // namespace avx512
#pragma GCC pop_options
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
  return 4;
}

const KernelSet& kernels_for(int width) {
  const int best = best_simd_width();
  const int w = (width < 0 || width > best) ? best : width;
#ifdef MS_HAVE_X86_DISPATCH
  if (w >= 16) return avx512::kernels;
  if (w >= 8) return avx2::kernels;
#endif
  return portable::kernels;
}

}  // namespace ms
