/**
 * The peak loops behind `npm run bench:cpu` (native/cpu/peak_cpu.cc). Speeds are
 * never asserted (the machine may be shared); only what is deterministic: the fp32
 * loop runs on every CPU and gives a positive finite figure at every SIMD level, and
 * each bf16 loop gives a figure exactly where deviceInfo() says its path exists, else 0.
 */
import { describe, expect, test } from 'vitest';
import { deviceInfo } from '../lib/index';
import { native, SIMD_CODES } from '../lib/native';

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
