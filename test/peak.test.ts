/**
 * The peak loops and the GEMM ceiling behind `npm run bench:cpu` (native/cpu/peak_cpu.cc,
 * native/cpu/gemm_ceiling.cc). Speeds are
 * never asserted (the machine may be shared); only what is deterministic: the fp32
 * loop runs on every CPU and gives a positive finite figure at every SIMD level, and
 * each bf16 loop gives a figure exactly where deviceInfo() says its path exists, else 0.
 */
import { describe, expect, test } from 'vitest';
import { deviceInfo } from '../lib/index';
import { MATRIX_CODES, native, SIMD_CODES } from '../lib/native';

describe('_peakGflops', () => {
  test('fp32 FMA peak: positive and finite at each SIMD level, one thread and all', () => {
    for (const simd of Object.values(SIMD_CODES)) {
      for (const threads of [1, 0]) {
        const g = native._peakGflops(0, threads, simd, 0.005);
        expect(Number.isFinite(g) && g > 0, `simd ${simd}, threads ${threads}: ${g}`).toBe(true);
      }
    }
  });

  test('bf16 peaks exist exactly where the matrix path does', () => {
    const m = deviceInfo().cpu.matrixPaths[0];
    const dp = native._peakGflops(1, 1, -1, 0.005);
    const amx = native._peakGflops(2, 1, -1, 0.005);
    if (m === 'none') expect(dp).toBe(0);
    else expect(Number.isFinite(dp) && dp > 0).toBe(true);
    if (m === 'amx-bf16') expect(Number.isFinite(amx) && amx > 0).toBe(true);
    else expect(amx).toBe(0);
  });
});

describe('_productsSeconds (the GEMM ceiling)', () => {
  // Shapes off every blocking multiple: rows not a multiple of 16, classes not of
  // the block, d not of the bf16 pair padding; forward and forward + backward.
  const N = 37, d = 70, C = 301;
  const x = Float32Array.from({ length: N * d }, (_, i) => Math.sin(i));
  const w = Float32Array.from({ length: C * d }, (_, i) => Math.cos(i));
  const finitePositive = (t: number) => Number.isFinite(t) && t > 0;

  test('fp32 products at each SIMD level and the bf16 products on each matrix path of this CPU', () => {
    for (const backward of [false, true]) {
      for (const simd of Object.values(SIMD_CODES)) {
        const t = native._productsSeconds(x, w, d, 0, simd, backward);
        expect(finitePositive(t), `fp32 simd ${simd}, backward ${backward}: ${t}`).toBe(true);
      }
      for (const path of [...deviceInfo().cpu.matrixPaths, 'auto'] as (keyof typeof MATRIX_CODES)[]) {
        const t = native._productsSeconds(x, w, d, 0, -1, backward, MATRIX_CODES[path]);
        expect(finitePositive(t), `bf16 ${path}, backward ${backward}: ${t}`).toBe(true);
      }
    }
  });
});
