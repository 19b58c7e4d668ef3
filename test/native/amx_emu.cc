// amx_emu.cc — checks native/cpu/amx_gemm.inc (the AMX path of bf16_gemm.cc)
// on machines without AMX: the tile intrinsics it uses are emulated here from
// their definitions in the Intel SDM (tile rows and bytes from the loaded
// configuration, TDPBF16PS as pairwise bf16 products accumulated in fp32), and
// the kernel's result is compared with a plain product of the same bf16
// operands, on shapes with row, column and k edges. Operands are laid out per
// the contract in bf16_gemm.h, written here independently of its packers.
// Built and run by test/amx-emu.test.ts (with AddressSanitizer where the
// compiler has it, so a tile load outside an operand is an error).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace emu {
struct Tile {
  int rows = 0, colsb = 0;
  uint8_t data[16 * 64];
};
Tile tmm[8];
bool configured = false;

void fail(const char* what) {
  std::fprintf(stderr, "amx emulation: %s\n", what);
  std::exit(2);
}
float bf16_to_f32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
void loadconfig(const void* cfg) {
  const uint8_t* c = static_cast<const uint8_t*>(cfg);
  if (c[0] != 1) fail("palette must be 1");
  for (int t = 0; t < 8; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, c + 16 + 2 * t, 2);
    tmm[t].rows = c[48 + t];
    tmm[t].colsb = colsb;
    if (tmm[t].rows > 16 || tmm[t].colsb > 64) fail("tile shape beyond 16 rows × 64 bytes");
  }
  configured = true;
}
Tile& tile(int t) {
  if (!configured) fail("tile used before ldtilecfg");
  return tmm[t];
}
void zero(int t) { std::memset(tile(t).data, 0, sizeof tmm[t].data); }
void loadd(int t, const void* base, long stride) {
  Tile& T = tile(t);
  for (int r = 0; r < T.rows; ++r) std::memcpy(T.data + r * 64, static_cast<const uint8_t*>(base) + r * stride, T.colsb);
}
void stored(int t, void* base, long stride) {
  Tile& T = tile(t);
  for (int r = 0; r < T.rows; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride, T.data + r * 64, T.colsb);
}
// TDPBF16PS: C[m][n] += Σ_k A.bf16[m][2k]·B.bf16[k][2n] + A.bf16[m][2k+1]·B.bf16[k][2n+1].
void dpbf16ps(int c, int a, int b) {
  Tile &C = tile(c), &A = tile(a), &B = tile(b);
  if (A.colsb / 4 != B.rows || C.rows != A.rows || C.colsb != B.colsb) fail("TDPBF16PS shapes do not match");
  for (int m = 0; m < C.rows; ++m)
    for (int n = 0; n < C.colsb / 4; ++n) {
      float acc;
      std::memcpy(&acc, C.data + m * 64 + 4 * n, 4);
      for (int k = 0; k < A.colsb / 4; ++k) {
        uint16_t a0, a1, b0, b1;
        std::memcpy(&a0, A.data + m * 64 + 4 * k, 2);
        std::memcpy(&a1, A.data + m * 64 + 4 * k + 2, 2);
        std::memcpy(&b0, B.data + k * 64 + 4 * n, 2);
        std::memcpy(&b1, B.data + k * 64 + 4 * n + 2, 2);
        acc += bf16_to_f32(a0) * bf16_to_f32(b0) + bf16_to_f32(a1) * bf16_to_f32(b1);
      }
      std::memcpy(C.data + m * 64 + 4 * n, &acc, 4);
    }
}
void release() { configured = false; }
}  // namespace emu

#define _tile_loadconfig(cfg) emu::loadconfig(cfg)
#define _tile_zero(t) emu::zero(t)
#define _tile_loadd(t, base, stride) emu::loadd(t, base, stride)
#define _tile_stored(t, base, stride) emu::stored(t, base, stride)
#define _tile_dpbf16ps(c, a, b) emu::dpbf16ps(c, a, b)
#define _tile_release() emu::release()

namespace {
#include "../../native/cpu/amx_gemm.inc"
}  // namespace

namespace {
uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
long round_up(long v, long m) { return (v + m - 1) / m * m; }

// One case: C (+)= A·B for M×K times K×NN, against a double-precision product.
bool check(int M, int NN, int K, bool accumulate, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const long Kp = round_up(K, 32), Np = round_up(NN, 32), lda = Kp + 32;  // lda > Kp: strided rows
  std::vector<uint16_t> A(M * lda, 0), Bp(Kp * Np, 0);
  std::vector<float> a(M * K), b(K * NN);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) {
      const uint16_t h = to_bf16(u(g));
      A[m * lda + k] = h;
      a[m * K + k] = emu::bf16_to_f32(h);
    }
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < NN; ++n) {  // bf16_gemm.h: (n/32)·32·Kp + (k/2)·64 + 2·(n%32) + (k&1)
      const uint16_t h = to_bf16(u(g));
      Bp[(n / 32) * 32 * Kp + (k / 2) * 64 + 2 * (n % 32) + (k & 1)] = h;
      b[k * NN + n] = emu::bf16_to_f32(h);
    }
  const long ldc = NN + 3;
  std::vector<float> C(M * ldc), C0(M * ldc);
  for (auto& v : C0) v = u(g);
  C = C0;
  gemm_amx_bf16(M, NN, (int)Kp, A.data(), lda, Bp.data(), C.data(), ldc, accumulate);
  double worst = 0.0;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < NN; ++n) {
      double want = accumulate ? C0[m * ldc + n] : 0.0, mag = std::fabs(want);
      for (int k = 0; k < K; ++k) {
        want += (double)a[m * K + k] * b[k * NN + n];
        mag += std::fabs((double)a[m * K + k] * b[k * NN + n]);
      }
      worst = std::max(worst, std::fabs(C[m * ldc + n] - want) / (mag + 1e-30));
    }
    for (int n = NN; n < ldc; ++n)
      if (C[m * ldc + n] != C0[m * ldc + n]) {
        std::printf("M=%d NN=%d K=%d: wrote outside the NN columns\n", M, NN, K);
        return false;
      }
  }
  // fp32 accumulation of K products: relative to Σ|a·b| within K·2⁻²⁴.
  const bool ok = worst <= (K + 2) * 6e-8;
  std::printf("M=%d NN=%d K=%d acc=%d: max error / Σ|a·b| = %.2e %s\n", M, NN, K, accumulate, worst, ok ? "ok" : "FAIL");
  return ok;
}
}  // namespace

int main() {
  bool ok = true;
  const int shapes[][3] = {{32, 32, 32}, {37, 45, 40}, {128, 128, 512}, {5, 512, 128}, {64, 17, 7}, {1, 1, 1}};
  unsigned seed = 1;
  for (const auto& s : shapes)
    for (bool acc : {false, true}) ok &= check(s[0], s[1], s[2], acc, seed++);
  std::printf(ok ? "all ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
