/**
 * The wasm backend as the library exposes it: backends() and deviceInfo(),
 * the same results as the native CPU backend on its portable kernels, the
 * same elastic margins and defaults, async calls that reject instead of
 * throwing, top-k, and the 4 GiB limit refused before any allocation.
 *
 * wasm vs native (portable kernels, one thread): the same C++ arithmetic in
 * the same order, compiled by clang for SIMD128 and by GCC for SSE2; only the
 * few scalar libm calls (the LSE's logf, the margins' acos/cos) come from
 * different C libraries (musl in the module, glibc natively). Measured on
 * 2026-12-07: gradients bit-identical, losses within 3e−9 relative.
 * MATCH_TOL = 1e−6 (relative) leaves room for a libm that rounds a last bit
 * differently and is 100× below the reference tolerances of test/wasm-loss.test.ts.
 */
import { describe, expect, test } from 'vitest';
import { ArgumentError, BackendUnavailableError, backends, deviceInfo, forward, lossAndGrad, lossAndGradAsync, forwardAsync, DEFAULT_SCALE } from '../lib/index';
import { native, nativeStatus } from '../lib/native';
import type { Margin } from '../lib/types';
import { PACKAGED_DEFAULTS, checkFits, lossBytes, wasmDefaults, wasmGaussian, wasmTopk, WASM_MEMORY_LIMIT } from '../lib/wasm/index';
import { ALL_KINDS, label } from './helpers';
import { WASM_BUILT } from './wasm-helpers';
import { randomProblem, relMaxErr } from './reference.mjs';

const MATCH_TOL = 1e-6;
const haveNative = nativeStatus().usable;

describe.runIf(WASM_BUILT)('wasm backend: selection and description', () => {
  test("backends() lists 'wasm' and deviceInfo() describes it", () => {
    expect(backends()).toContain('wasm');
    const info = deviceInfo();
    expect(info.wasm).toMatchObject({ usable: true, threads: 1, simd: 'simd128', memoryLimitBytes: 2 ** 32 });
    expect(info.cpu.usable).toBe(haveNative);
    if (haveNative) expect(['cpu', 'cuda']).toContain(info.backend);
    else expect(info.backend).toBe('wasm');
  });
  test("'auto' keeps the native backend where the addon loads", () => {
    const p = randomProblem(4, 20, 8, 1);
    const r = lossAndGrad(p, { margin: { kind: 'softmax' } });
    expect(r.backend).toBe(haveNative ? deviceInfo().backend : 'wasm');
  });
  test('an unknown backend name is an ArgumentError listing wasm', () => {
    const p = randomProblem(4, 20, 8, 1);
    expect(() => lossAndGrad(p, { margin: { kind: 'softmax' }, backend: 'wasm32' as 'wasm' })).toThrow(/'auto', 'cpu', 'cuda' or 'wasm'/);
  });
  test('the defaults and the elastic draws are the native layer\'s', () => {
    expect(wasmDefaults().scale).toBe(DEFAULT_SCALE);
    expect(wasmDefaults()).toEqual(PACKAGED_DEFAULTS);
    if (!haveNative) return;
    expect(wasmDefaults()).toEqual(native._defaults());
    const a = wasmGaussian(0.5, 0.05, 7, 3, 1000, 11);
    const b = native.gaussian(0.5, 0.05, 7, 3, 1000, 11);
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
  });
});

describe.runIf(WASM_BUILT && haveNative)('wasm backend against the native CPU backend (portable kernels, one thread)', () => {
  for (const margin of ALL_KINDS) {
    test(label(margin), () => {
      const p = randomProblem(50, 700, 48, 8);
      p.labels[0] = -1;
      const opts = { margin, scale: 48 };
      const w = lossAndGrad(p, { ...opts, backend: 'wasm' });
      const c = lossAndGrad(p, { ...opts, backend: 'cpu', simd: 'portable', threads: 1 });
      expect(Math.abs(w.loss - c.loss)).toBeLessThanOrEqual(MATCH_TOL * Math.max(1, Math.abs(c.loss)));
      expect(relMaxErr(w.perSample, c.perSample)).toBeLessThanOrEqual(MATCH_TOL);
      expect(relMaxErr(w.gradEmbeddings, c.gradEmbeddings)).toBeLessThanOrEqual(MATCH_TOL);
      expect(relMaxErr(w.gradWeights, c.gradWeights)).toBeLessThanOrEqual(MATCH_TOL);
      expect(relMaxErr(w.targetCos.filter(Number.isFinite), c.targetCos.filter(Number.isFinite))).toBeLessThanOrEqual(MATCH_TOL);
      expect(w.skippedBlocks).toBe(c.skippedBlocks);
      expect(w.totalBlocks).toBe(c.totalBlocks);
      if (w.margins) expect(Buffer.from(w.margins.buffer).equals(Buffer.from(c.margins!.buffer))).toBe(true);
    });
  }
  test('bf16 centres (rounded operands, as the native path without matrix instructions)', () => {
    const p = randomProblem(16, 300, 32, 4);
    const opts = { margin: { kind: 'arcface', m: 0.5 } as Margin, weightsDtype: 'bfloat16' as const };
    const w = lossAndGrad(p, { ...opts, backend: 'wasm' });
    const c = lossAndGrad(p, { ...opts, backend: 'cpu', simd: 'portable', matrix: 'none', threads: 1 });
    expect(relMaxErr(w.gradWeights, c.gradWeights)).toBeLessThanOrEqual(MATCH_TOL);
    expect(Math.abs(w.loss - c.loss)).toBeLessThanOrEqual(MATCH_TOL * c.loss);
  });
  test('top-k: the classes and scores of the native top-k', () => {
    const p = randomProblem(9, 1000, 24, 5);
    const w = wasmTopk(p.embeddings, p.weights, 24, 7);
    const c = native.topk(p.embeddings, p.weights, 24, 7, 1);
    expect(Array.from(w.classes)).toEqual(Array.from(c.classes));
    expect(relMaxErr(w.scores, c.scores)).toBeLessThanOrEqual(MATCH_TOL);
  });
});

describe.runIf(WASM_BUILT)('wasm backend: async calls', () => {
  const p = randomProblem(6, 40, 8, 2);
  test('resolve with the synchronous result', async () => {
    const margin: Margin = { kind: 'cosface', m: 0.35 };
    const sync = lossAndGrad(p, { margin, backend: 'wasm' });
    const r = await lossAndGradAsync(p, { margin, backend: 'wasm' });
    expect(r.loss).toBe(sync.loss);
    expect(relMaxErr(r.gradWeights, sync.gradWeights)).toBe(0);
    expect((await forwardAsync(p, { margin, backend: 'wasm' })).loss).toBe(forward(p, { margin, backend: 'wasm' }).loss);
  });
  test('reject (never throw) on bad input, whether the check is in TypeScript or in the module', async () => {
    const weights = p.weights.slice();
    weights[5] = Infinity;
    let promise: Promise<unknown> | undefined;
    expect(() => {
      promise = lossAndGradAsync({ ...p, weights }, { margin: { kind: 'softmax' }, backend: 'wasm' });
    }).not.toThrow();
    await expect(promise).rejects.toThrow(ArgumentError);
    expect(() => {
      promise = lossAndGradAsync({ ...p, dim: 0 }, { margin: { kind: 'softmax' }, backend: 'wasm' });
    }).not.toThrow();
    await expect(promise).rejects.toThrow(ArgumentError);
  });
});

describe.runIf(WASM_BUILT)('wasm backend: the 4 GiB memory', () => {
  test('the limit is wasm32\'s address space', () => {
    expect(WASM_MEMORY_LIMIT).toBe(2 ** 32);
  });
  test('a call that cannot fit is an ArgumentError before anything is allocated, naming the sizes', () => {
    const ws = { workspaceBytes: 64 * 2 ** 20 };
    // lossAndGrad with copied centres: 8·C·d bytes for the centres and their gradient.
    expect(() => checkFits(lossBytes(128, 1_100_000, 512, ws, true, false), { n: 128, c: 1_100_000, d: 512 })).toThrow(ArgumentError);
    expect(() => checkFits(lossBytes(128, 1_100_000, 512, ws, true, false), { n: 128, c: 1_100_000, d: 512 })).toThrow(/4\.00 GiB memory .* N=128, C=1100000, d=512 .* needs 4\.\d\d GiB/);
    // The forward alone (4·C·d) fits, and so does lossAndGrad at C = 10⁶, d = 256.
    expect(() => checkFits(lossBytes(128, 1_100_000, 512, ws, false, false), { n: 128, c: 1_100_000, d: 512 })).not.toThrow();
    expect(() => checkFits(lossBytes(128, 1_000_000, 256, ws, true, false), { n: 128, c: 1_000_000, d: 256 })).not.toThrow();
  });
});

describe.runIf(WASM_BUILT)('wasm backend: unavailable', () => {
  test('a BackendUnavailableError names why, for a module that does not load', async () => {
    const { initWasm } = await import('../lib/wasm/module');
    // A valid but empty module, and bytes that are no module at all.
    await expect(initWasm({ bytes: new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]) })).rejects.toThrow(/without its exports/);
    await expect(initWasm({ bytes: new Uint8Array([1, 2, 3]) })).rejects.toThrow(BackendUnavailableError);
    await expect(initWasm({ url: '/nonexistent/margin_softmax.wasm' })).rejects.toThrow(/from \/nonexistent\/margin_softmax.wasm but it could not be loaded/);
    // The instance in use is kept.
    const p = randomProblem(4, 20, 8, 1);
    expect(Number.isFinite(lossAndGrad(p, { margin: { kind: 'softmax' }, backend: 'wasm' }).loss)).toBe(true);
  });
});
