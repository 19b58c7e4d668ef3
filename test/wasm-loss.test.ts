/**
 * The wasm backend (wasm/margin_softmax.wasm: the CPU backend's code on its
 * portable kernels, compiled to WebAssembly SIMD128) against the float64
 * reference for every margin kind, finite differences of its own loss,
 * determinism, the options it shares with the native CPU backend, and its
 * typed errors.
 *
 * Tolerances: the same as the native CPU suite's (test/cpu-backend.test.ts,
 * where they are derived): the wasm module runs the same fp32 arithmetic
 * (4-lane vectors, no FMA, one thread), so its errors are of the same size.
 *  - per-row and mean loss: LOSS_TOL·max(1, |ref|), LOSS_TOL = 5e−5;
 *  - gradients: relMaxErr ≤ GRAD_TOL = 1e−4.
 * Finite differences of the fp32 loss: a central difference with step h on a
 * loss L carries a rounding error ~ε·|L|/h (ε = 6e−8) and a truncation error
 * ~h²·|L'''|; with h = 1e−2 on unit-scale inputs at s = 8, both are ≲ 1e−4 of
 * the gradient's largest entry, so FD_TOL = 2e−2 (relMaxErr) catches a wrong
 * derivative factor (≳ 5e−2 for the smallest margin term tested) and not noise.
 */
import { describe, expect, test } from 'vitest';
import { ArgumentError } from '../lib/errors';
import type { LossOptions, Margin } from '../lib/types';
import { ALL_KINDS, label } from './helpers';
import { allFinite, randomProblem, referenceLoss, relMaxErr } from './reference.mjs';
import { WASM_BUILT, wasmRun } from './wasm-helpers';

const LOSS_TOL = 5e-5;
const GRAD_TOL = 1e-4;

function checkAgainstReference(p: ReturnType<typeof randomProblem>, options: LossOptions): void {
  const r = wasmRun(p, options);
  const ref = referenceLoss(p, { ...options, rowMargins: r.margins });
  expect(Math.abs(r.loss - ref.loss)).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, Math.abs(ref.loss)));
  for (let i = 0; i < ref.perSample.length; i++) {
    expect(Math.abs(r.perSample[i] - ref.perSample[i])).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, Math.abs(ref.perSample[i])));
  }
  expect(r.validRows).toBe(ref.validRows);
  expect(relMaxErr(r.gradEmbeddings!, ref.gradEmbeddings)).toBeLessThanOrEqual(GRAD_TOL);
  expect(relMaxErr(r.gradWeights!, ref.gradWeights)).toBeLessThanOrEqual(GRAD_TOL);
}

describe.runIf(WASM_BUILT)('wasm backend against the float64 reference', () => {
  for (const margin of ALL_KINDS) {
    test(`${label(margin)}: N=37, C=300, d=24 (several class blocks, partial vectors)`, () => {
      const p = randomProblem(37, 300, 24, 11);
      p.labels[3] = -1; // an ignored row
      checkAgainstReference(p, { margin, scale: 32 });
    });
  }
  test('d = 513, C = 1000, N = 64, adaptive at s = 64 (the default scale)', () => {
    checkAgainstReference(randomProblem(64, 1000, 513, 5), { margin: { kind: 'adaptive' } });
  });
  test('a tile cache too small for every block, and none at all, give the same results as the full cache', () => {
    const p = randomProblem(40, 2000, 32, 9);
    const margin: Margin = { kind: 'arcface', m: 0.5 };
    const full = wasmRun(p, { margin, scale: 30 });
    for (const workspaceBytes of [0, 100_000]) {
      const r = wasmRun(p, { margin, scale: 30, workspaceBytes });
      expect(r.loss).toBe(full.loss);
      expect(relMaxErr(r.gradWeights!, full.gradWeights!)).toBe(0);
      expect(relMaxErr(r.gradEmbeddings!, full.gradEmbeddings!)).toBe(0);
    }
  });
  test('forward only: the same loss as lossAndGrad, no gradients', () => {
    const p = randomProblem(20, 500, 16, 3);
    const margin: Margin = { kind: 'cosface', m: 0.35 };
    const f = wasmRun(p, { margin }, false);
    const g = wasmRun(p, { margin });
    expect(f.loss).toBe(g.loss);
    expect((f as { gradEmbeddings?: unknown }).gradEmbeddings).toBeUndefined();
    const ref = referenceLoss(p, { margin, scale: 64 }, false);
    expect(Math.abs(f.loss - ref.loss)).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, ref.loss));
  });
});

describe.runIf(WASM_BUILT)('wasm backend: finite differences of its own fp32 loss', () => {
  const FD_TOL = 2e-2;
  for (const margin of ALL_KINDS) {
    test(label(margin), () => {
      const p = randomProblem(6, 9, 5, 21);
      const opts: LossOptions = { margin, scale: 8 };
      const g = wasmRun(p, opts);
      const h = 1e-2;
      const numeric = (a: Float32Array) => {
        const out = new Float64Array(a.length);
        for (let k = 0; k < a.length; k++) {
          const v = a[k];
          a[k] = v + h;
          const fp = wasmRun(p, opts, false).loss;
          a[k] = v - h;
          const fm = wasmRun(p, opts, false).loss;
          a[k] = v;
          out[k] = (fp - fm) / (2 * h);
        }
        return out;
      };
      expect(relMaxErr(g.gradEmbeddings!, numeric(p.embeddings))).toBeLessThanOrEqual(FD_TOL);
      expect(relMaxErr(g.gradWeights!, numeric(p.weights))).toBeLessThanOrEqual(FD_TOL);
    });
  }
});

describe.runIf(WASM_BUILT)('wasm backend: determinism and options', () => {
  test('the same call twice gives bit-identical results', () => {
    const p = randomProblem(33, 1500, 40, 4);
    const margin: Margin = { kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: 3, counter: 1 };
    const a = wasmRun(p, { margin });
    const b = wasmRun(p, { margin });
    expect(b.loss).toBe(a.loss);
    expect(Buffer.from(b.gradWeights!.buffer).equals(Buffer.from(a.gradWeights!.buffer))).toBe(true);
    expect(Buffer.from(b.gradEmbeddings!.buffer).equals(Buffer.from(a.gradEmbeddings!.buffer))).toBe(true);
    expect(Buffer.from(b.margins!.buffer).equals(Buffer.from(a.margins!.buffer))).toBe(true);
  });
  test('gradient filtering skips blocks with no target and a small probability, and reports them', () => {
    const p = randomProblem(8, 4000, 16, 2);
    const margin: Margin = { kind: 'arcface', m: 0.5 };
    const exact = wasmRun(p, { margin, scale: 64 });
    const filtered = wasmRun(p, { margin, scale: 64, gradFilter: 0.5 });
    expect(exact.skippedBlocks).toBe(0);
    expect(filtered.skippedBlocks).toBeGreaterThan(0);
    expect(filtered.totalBlocks).toBe(exact.totalBlocks);
    expect(filtered.loss).toBe(exact.loss);
  });
  test('out arrays are written and returned', () => {
    const p = randomProblem(5, 50, 8, 1);
    const out = { perSample: new Float32Array(5), gradEmbeddings: new Float32Array(40), gradWeights: new Float32Array(400) };
    const r = wasmRun(p, { margin: { kind: 'softmax' }, out });
    expect(r.perSample).toBe(out.perSample);
    expect(r.gradWeights).toBe(out.gradWeights);
    expect(allFinite(out.gradWeights)).toBe(true);
    expect(out.perSample.some((v) => v !== 0)).toBe(true);
  });
});

describe.runIf(WASM_BUILT)('wasm backend: typed errors', () => {
  const p = randomProblem(4, 10, 8, 1);
  test('a NaN in the centres is an ArgumentError naming the row (found while streaming, in the module)', () => {
    const weights = p.weights.slice();
    weights[3 * 8 + 2] = NaN;
    expect(() => wasmRun({ ...p, weights }, { margin: { kind: 'softmax' } })).toThrow(ArgumentError);
    expect(() => wasmRun({ ...p, weights }, { margin: { kind: 'softmax' } })).toThrow(/for weights but received .* row 3/);
    // The module is still usable after the error.
    expect(Number.isFinite(wasmRun(p, { margin: { kind: 'softmax' } }).loss)).toBe(true);
  });
  test('bad labels and options are refused by the shared validation', () => {
    expect(() => wasmRun({ ...p, labels: new Int32Array([0, 1, 10, 2]) }, { margin: { kind: 'softmax' } })).toThrow(/Expected labels in \[-1, 9\]/);
    expect(() => wasmRun(p, { margin: { kind: 'arcface' } as Margin })).toThrow(ArgumentError);
    expect(() => wasmRun(p, { margin: { kind: 'softmax' }, scale: -1 })).toThrow(ArgumentError);
  });
});
