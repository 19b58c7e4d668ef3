// options.out: results written into caller-provided arrays equal fresh ones.
import { describe, expect, it } from 'vitest';
import { ArgumentError, forward, lossAndGrad, lossAndGradAsync } from '../lib/index';
import { randomProblem } from './reference.mjs';

describe('options.out', () => {
  const p = randomProblem(9, 700, 33, 4);
  const opts = { margin: { kind: 'adaptive' as const }, threads: 2 };

  it('reuses the arrays and gives bit-identical results, sync and async', async () => {
    const fresh = lossAndGrad(p, opts);
    const out = { perSample: new Float32Array(9).fill(NaN), gradEmbeddings: new Float32Array(9 * 33).fill(NaN), gradWeights: new Float32Array(700 * 33).fill(NaN) };
    for (const call of [() => Promise.resolve(lossAndGrad(p, { ...opts, out })), () => lossAndGradAsync(p, { ...opts, out })]) {
      const r = await call();
      expect(r.gradWeights).toBe(out.gradWeights);
      expect(r.gradEmbeddings).toBe(out.gradEmbeddings);
      expect(r.perSample).toBe(out.perSample);
      expect(r.loss).toBe(fresh.loss);
      expect(Buffer.from(out.gradWeights.buffer).equals(Buffer.from(fresh.gradWeights.buffer))).toBe(true);
      expect(Buffer.from(out.gradEmbeddings.buffer).equals(Buffer.from(fresh.gradEmbeddings.buffer))).toBe(true);
      // Every entry overwritten, including gradient-filtered blocks.
      out.gradWeights.fill(NaN);
    }
    const filtered = lossAndGrad(p, { ...opts, gradFilter: 0.5, out });
    expect(out.gradWeights.every(Number.isFinite)).toBe(true);
    expect(filtered.skippedBlocks).toBeGreaterThanOrEqual(0);
  });

  it('forward writes perSample into the given array', () => {
    const perSample = new Float32Array(9);
    const r = forward(p, { ...opts, out: { perSample } });
    expect(r.perSample).toBe(perSample);
    expect(perSample.some((v) => v !== 0)).toBe(true);
  });

  it('rejects wrong lengths, wrong types and arrays aliasing the inputs', () => {
    expect(() => lossAndGrad(p, { ...opts, out: { gradWeights: new Float32Array(5) } })).toThrow(
      /Expected Float32Array of length 23100 for options.out.gradWeights but received Float32Array of length 5/,
    );
    expect(() => lossAndGrad(p, { ...opts, out: { perSample: new Float64Array(9) as unknown as Float32Array } })).toThrow(ArgumentError);
    const alias = new Float32Array(p.weights.buffer, 0, 9);
    expect(() => lossAndGrad(p, { ...opts, out: { perSample: alias } })).toThrow(/Expected an array that does not overlap weights for options.out.perSample/);
  });
});
