// peak_cpu.h — see peak_cpu.cc.
#pragma once

namespace ms {

enum class PeakKind : int { Fp32 = 0, Avx512Bf16 = 1, AmxBf16 = 2 };

// GFLOP/s of a register-only loop of `kind` on `threads` threads (0 = all),
// fp32 at the SIMD level `simd` (−1 best, 16, 8, 4 as in CpuOptions); 0 when
// the CPU (or, for AMX, the OS) lacks the instructions. Each of the three
// timed runs lasts about `seconds`.
double peak_gflops(PeakKind kind, int threads, int simd, double seconds = 0.2);

}  // namespace ms
