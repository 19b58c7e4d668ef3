/**
 * Large blocks the addon frees are kept for reuse (native/cpu/big_alloc.h): a
 * fresh output may be a recycled block holding the values of an earlier,
 * collected result. Every CPU path must therefore write its outputs in full,
 * ignored rows and gradient-filtered blocks included, and zeroed arrays
 * (allocFloat32) must come back zeroed.
 */
import { describe, expect, test } from 'vitest';
import { allocFloat32, deviceInfo, lossAndGrad, lossAndGradAsync, releaseCachedMemory } from '../lib/index';
import { native } from '../lib/native';
import type { CpuMatrixPath, LossOptions } from '../lib/types';

type CpuSimd = 'portable' | 'neon' | 'avx2' | 'avx512';
import { randomProblem } from './reference.mjs';

const gc = (globalThis as { gc?: () => void }).gc;
const SIMD_ORDER: CpuSimd[] = process.arch === 'arm64' ? ['portable', 'neon'] : ['portable', 'avx2', 'avx512'];
const SIMD = SIMD_ORDER.slice(0, SIMD_ORDER.indexOf(deviceInfo().cpu.simd) + 1);
const MATRIX: CpuMatrixPath[] = deviceInfo().cpu.matrixPaths;

// Both gradients at or above the 2 MiB from which outputs come from the
// recycled blocks (N·d·4 = 2 MiB, C·d·4 = 2.15 MB).
const N = 2048, C = 2100, D = 256;

// Labels in the first 64 classes only, so that gradFilter skips the blocks after them.
function problem() {
  const p = randomProblem(N, C, D, 11);
  for (let i = 0; i < N; i++) p.labels[i] %= 64;
  p.labels[3] = -1; // an ignored row: its gradient row must still be written (zeros)
  p.labels[17] = -1;
  return p;
}

async function collect(): Promise<void> {
  for (let i = 0; i < 2; i++) {
    gc!();
    await new Promise((r) => setImmediate(r));
  }
}

// V8 frees external backing stores after a GC on a background task: wait
// (up to 5 s) until the recycle list holds `bytes`.
async function recycledReaches(bytes: number): Promise<number> {
  const until = Date.now() + 5000;
  for (;;) {
    await collect();
    const now = native._recycledNativeBytes();
    if (now >= bytes || Date.now() > until) return now;
    await new Promise((r) => setTimeout(r, 10));
  }
}

const copy = (a: Float32Array) => Float32Array.from(a);
const sameBits = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe('recycled output memory', () => {
  test('the GC hook is there (vitest runs the files with --expose-gc)', () => {
    expect(typeof gc).toBe('function');
  });

  // First, while no earlier result can join the list late.
  test('allocFloat32 returns zeros from a recycled block, and releaseCachedMemory empties the list', async () => {
    const n = 1 << 20; // 4 MiB
    await collect();
    releaseCachedMemory();
    let a: Float32Array | null = allocFloat32(n);
    a.fill(7);
    a = null;
    expect(await recycledReaches(n * 4)).toBe(n * 4);
    const b = allocFloat32(n);
    expect(b.every((v) => v === 0)).toBe(true);
    const kept = native._recycledNativeBytes();
    expect(releaseCachedMemory()).toBe(kept);
    expect(native._recycledNativeBytes()).toBe(0);
    expect(releaseCachedMemory()).toBe(0);
  });

  const paths: [string, Omit<LossOptions, 'margin'>][] = [
    ...SIMD.map((simd): [string, Omit<LossOptions, 'margin'>] => [`fp32 ${simd}`, { simd }]),
    ...SIMD.map((simd): [string, Omit<LossOptions, 'margin'>] => [`fp32 ${simd}, gradFilter 0.5`, { simd, gradFilter: 0.5 }]),
    ...MATRIX.map((matrix): [string, Omit<LossOptions, 'margin'>] => [`bf16 ${matrix}`, { weightsDtype: 'bfloat16', matrix }]),
  ];
  test.each(paths)('%s: a fresh result written into a poisoned recycled block equals the first', async (_name, extra) => {
    const p = problem();
    const opts: LossOptions = { margin: { kind: 'adaptive' }, threads: 2, ...extra };
    releaseCachedMemory();
    let first: ReturnType<typeof lossAndGrad> | null = lossAndGrad(p, opts);
    const gw = copy(first.gradWeights), gx = copy(first.gradEmbeddings);
    expect(first.gradWeights.every(Number.isFinite)).toBe(true);
    if (extra.gradFilter) expect(first.skippedBlocks).toBeGreaterThan(0);
    // Poison the blocks, then let the GC free them into the recycle list
    // (emptied first of the call's workspaces and of earlier garbage, so that
    // only they are there).
    await collect();
    releaseCachedMemory();
    first.gradWeights.fill(NaN);
    first.gradEmbeddings.fill(NaN);
    first = null;
    // (Blocks of earlier results may join them: all of them were poisoned too.)
    expect(await recycledReaches((C + N) * D * 4)).toBeGreaterThanOrEqual((C + N) * D * 4);
    for (const call of [() => Promise.resolve(lossAndGrad(p, opts)), () => lossAndGradAsync(p, opts)]) {
      const again = await call();
      expect(sameBits(again.gradWeights, gw)).toBe(true);
      expect(sameBits(again.gradEmbeddings, gx)).toBe(true);
      expect(again.gradEmbeddings.subarray(3 * D, 4 * D).every((v) => v === 0)).toBe(true);
      again.gradWeights.fill(NaN);
      again.gradEmbeddings.fill(NaN);
    }
  });

});
