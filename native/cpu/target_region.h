// target_region.h — MS_TARGET_PUSH("isa,...") … MS_TARGET_POP: compile the
// functions between them for an instruction set beyond the build's baseline,
// so that one binary carries kernels for several ISAs and picks one at run
// time (simd_dispatch.cc, bf16_gemm.cc, peak_cpu.cc).
//
// Why a macro: GCC spells this `#pragma GCC target`, which clang does not
// implement (it warns and ignores it, so the "AVX-512" kernels would be
// compiled for SSE2 and any intrinsic inside them would fail to inline);
// clang spells it `#pragma clang attribute push(__attribute__((target(…))))`,
// which applies the attribute to every function declared in the region,
// lambdas and template instantiations included. The ISA strings are the
// target-attribute names both compilers accept ("avx2,fma",
// "avx512f,avx512bf16", on aarch64 "+bf16").
//
// Check: .ci/run builds the addon with clang as well as GCC, runs the CPU
// suite on it, and requires AVX-512 (zmm) instructions in its disassembly.
#pragma once

#define MS_PRAGMA(...) _Pragma(#__VA_ARGS__)

#if defined(__clang__)
#define MS_TARGET_PUSH(isa) MS_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define MS_TARGET_POP MS_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define MS_TARGET_PUSH(isa) MS_PRAGMA(GCC push_options) MS_PRAGMA(GCC target(isa))
#define MS_TARGET_POP MS_PRAGMA(GCC pop_options)
#else
#define MS_TARGET_PUSH(isa)
#define MS_TARGET_POP
#endif
