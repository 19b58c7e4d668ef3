/**
 * Values and names that used to pass validation and then ran wrong: numbers
 * that are finite doubles but overflow float32 (or the loss), misspelt option
 * names, out arrays over other arrays of the call, float label tensors, and
 * an unbounded predict().
 */
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, test } from 'vitest';
import { ArgumentError, MarginHead, MAX_TOP_K, lossAndGrad, type LossOptions, type MarginHeadOptions } from '../lib';
import { marginLoss, type TfLike } from '../lib/tfjs';
import { randomProblem } from './reference.mjs';

const p = randomProblem(8, 40, 16, 11);
const ok: LossOptions = { margin: { kind: 'arcface', m: 0.5 }, threads: 1 };
const headOpts: MarginHeadOptions = { classes: 40, dim: 16, margin: { kind: 'arcface', m: 0.5 }, threads: 1 };

function message(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ArgumentError);
    return (e as Error).message;
  }
  throw new Error('expected an ArgumentError, but the call succeeded');
}

describe('float32 range and loss overflow', () => {
  test('margins beyond float32 (m = 1e39) are refused with the reason, not turned into NaN', () => {
    expect(message(() => lossAndGrad(p, { ...ok, margin: { kind: 'arcface', m: 1e39 } }))).toMatch(
      /^Expected a number ≤ 10000 for margin.m of 'arcface' but received 1e\+39: larger values overflow the float32 loss or centres/,
    );
    for (const margin of [
      { kind: 'cosface', m: 3e38 },
      { kind: 'combined', m1: 1, m2: 1e20, m3: 0 },
      { kind: 'cvm', m1: 0.1, m2: 1e300 },
      { kind: 'adaptive', m1: 1e5 },
      { kind: 'elastic-arc', m: 0.5, sigma: 1e39, seed: 1 },
    ] as LossOptions['margin'][]) {
      expect(message(() => lossAndGrad(p, { ...ok, margin }))).toMatch(/^Expected a number ≤ 10000 for margin\.\w+ of/);
    }
  });

  test('scale 1e10 (an infinite loss before) is refused; the largest accepted scale gives a finite loss', () => {
    expect(message(() => lossAndGrad(p, { ...ok, scale: 1e10 }))).toMatch(/^Expected a number ≤ 10000 for options.scale but received 10000000000: larger values overflow/);
    for (const kind of ['softmax', 'cvm'] as const) {
      const margin = kind === 'cvm' ? { kind, m1: 0.2, m2: 0.2 } : { kind };
      const r = lossAndGrad(p, { ...ok, margin, scale: 1e4 });
      expect(Number.isFinite(r.loss)).toBe(true);
      expect(r.gradEmbeddings.every(Number.isFinite)).toBe(true);
    }
  });

  test('gradFilter and momentum that round to 1 in float32 are refused', () => {
    expect(message(() => lossAndGrad(p, { ...ok, gradFilter: 0.99999999 }))).toMatch(/Expected a number < 1 \(after rounding to float32\) for options.gradFilter/);
    expect(message(() => new MarginHead({ ...headOpts, optimizer: { lr: 0.1, momentum: 0.99999999 } }))).toMatch(/for optimizer.momentum/);
  });

  test('lr 1e39 on step is refused and the centres stay as they were', () => {
    const head = new MarginHead(headOpts);
    const before = head.getWeights();
    expect(message(() => head.step(p.embeddings, p.labels, { lr: 1e39 }))).toMatch(/^Expected a number ≤ 10000 for lr but received 1e\+39/);
    expect(head.getWeights()).toEqual(before);
    expect(head.stepCount).toBe(0);
    expect(message(() => new MarginHead({ ...headOpts, optimizer: { lr: 1e39 } }))).toMatch(/optimizer.lr/);
    expect(message(() => new MarginHead({ ...headOpts, optimizer: { lr: 0.1, weightDecay: 1e39 } }))).toMatch(/optimizer.weightDecay/);
    // The accepted maximum keeps every centre finite.
    head.step(p.embeddings, p.labels, { lr: 1e4 });
    expect(head.getWeights().every(Number.isFinite)).toBe(true);
  });
});

describe('unknown option names are refused with the closest valid name', () => {
  test.each([
    ['loss options', () => lossAndGrad(p, { ...ok, sacle: 64 } as never), /unknown option 'sacle' \(did you mean 'scale'\?\)/],
    ['margin', () => lossAndGrad(p, { ...ok, margin: { kind: 'combined', m1: 1, m2: 0.5, m3: 0, m_1: 1 } } as never), /margin of kind 'combined'.*unknown option 'm_1' \(did you mean 'm1'\?\)/],
    ['out', () => lossAndGrad(p, { ...ok, out: { perSampel: new Float32Array(8) } } as never), /options.out.*'perSampel' \(did you mean 'perSample'\?\)/],
    ['head options', () => new MarginHead({ ...headOpts, sampleRatio: 0.5 } as never), /MarginHead options.*'sampleRatio' \(did you mean 'sampleRate'\?\)/],
    ['optimizer', () => new MarginHead({ ...headOpts, optimizer: { lr: 0.1, momentun: 0.9 } } as never), /for optimizer.*'momentun' \(did you mean 'momentum'\?\)/],
    ['shard', () => new MarginHead({ ...headOpts, shard: { offset: 0, count: 10, total: 40, ofset: 1 } } as never), /for shard.*'ofset' \(did you mean 'offset'\?\)/],
    ['step options', () => new MarginHead(headOpts).step(p.embeddings, p.labels, { lR: 0.1 } as never), /for step options.*'lR' \(did you mean 'lr'\?\)/],
  ])('%s', (_what, f, pattern) => {
    expect(message(f as () => unknown)).toMatch(pattern);
  });

  test('the tfjs adapter options', () => {
    const head = new MarginHead(headOpts);
    expect(message(() => marginLoss(head, tf as unknown as TfLike, { onstep: () => {} } as never))).toMatch(/'onstep' \(did you mean 'onStep'\?\)/);
  });
});

describe('options.out may not overlap any array of the call', () => {
  test('out.perSample over the labels’ buffer is refused and the labels are intact', () => {
    const buf = new ArrayBuffer(8 * 4 * 2);
    const labels = new Int32Array(buf, 0, 8);
    labels.set(p.labels);
    const perSample = new Float32Array(buf, 0, 8);
    expect(message(() => lossAndGrad({ ...p, labels }, { ...ok, out: { perSample } }))).toMatch(
      /^Expected an array that does not overlap labels for options.out.perSample but received one that shares memory with it/,
    );
    expect(Array.from(labels)).toEqual(Array.from(p.labels));
  });

  test('out arrays that overlap each other are refused', () => {
    const buf = new Float32Array(8 * 16 + 8);
    const gradEmbeddings = buf.subarray(0, 8 * 16);
    const perSample = buf.subarray(8 * 16 - 4, 8 * 16 + 4); // straddles the end of gradEmbeddings
    expect(message(() => lossAndGrad(p, { ...ok, out: { perSample, gradEmbeddings } }))).toMatch(
      /does not overlap options.out.perSample for options.out.gradEmbeddings/,
    );
    // Disjoint views of one buffer are fine.
    const ps = buf.subarray(8 * 16);
    const r = lossAndGrad(p, { ...ok, out: { perSample: ps, gradEmbeddings } });
    expect(r.perSample).toBe(ps);
  });

  test('out over the embeddings or weights (the old check) is still refused', () => {
    expect(message(() => lossAndGrad(p, { ...ok, out: { perSample: new Float32Array(p.weights.buffer, 16, 8) } }))).toMatch(/does not overlap weights/);
    expect(message(() => lossAndGrad(p, { ...ok, out: { gradEmbeddings: new Float32Array(p.embeddings.buffer, 0, 8 * 16) } }))).toMatch(/does not overlap embeddings/);
  });
});

describe('the tfjs adapter refuses float labels', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
    await tf.ready();
  });

  test.each([
    ['[0.7, 1.9]', [0.7, 1.9]],
    ['[NaN, 1]', [NaN, 1]],
    ['[0, 1] as float32', [0, 1]],
  ])('%s', (_what, values) => {
    const head = new MarginHead({ ...headOpts, dim: 4 });
    const loss = marginLoss(head, tf as unknown as TfLike);
    const x = tf.randomNormal([2, 4]) as tf.Tensor2D;
    const y = tf.tensor1d(values, 'float32');
    expect(message(() => loss(x, y))).toMatch(/^Expected an int32 tensor or an Int32Array for labels but received a float32 tensor/);
    expect(head.stepCount).toBe(0);
    // int32 tensors are taken as they are.
    loss(x, tf.tensor1d([0, 1], 'int32'));
    expect(head.stepCount).toBe(1);
  });
});

describe('predict is bounded', () => {
  test('k is capped at min(C, MAX_TOP_K) and predictAsync gives the same answer as predict', async () => {
    const head = new MarginHead({ classes: 3000, dim: 16, margin: { kind: 'softmax' }, threads: 2 });
    const x = randomProblem(50, 1, 16, 4).embeddings;
    expect(MAX_TOP_K).toBe(1024);
    expect(message(() => head.predict(x, MAX_TOP_K + 1))).toMatch(/^Expected an integer in \[1, 1024\] \(at most min\(classes, 1024\)\) for k but received 1025/);
    await expect(head.predictAsync(x, 3001)).rejects.toThrow(ArgumentError);
    const sync = head.predict(x, MAX_TOP_K);
    const pending = head.predictAsync(x, MAX_TOP_K);
    expect(() => head.step(x, new Int32Array(50))).toThrow(/still running/);
    const async = await pending;
    expect(async.classes).toEqual(sync.classes);
    expect(async.scores).toEqual(sync.scores);
  });

  test('the heap gives the exact top-k (checked against a full sort) with ties to the lower class', () => {
    const c = 700;
    const head = new MarginHead({ classes: c, dim: 8, margin: { kind: 'softmax' }, threads: 2 });
    const w = head.getWeights();
    for (let j = 0; j < 8; j++) w.set(w.subarray(0, 8), (100 + j) * 8); // ties: classes 100..107 equal class 0
    head.setWeights(w);
    const x = randomProblem(5, 1, 8, 9).embeddings;
    const k = 300;
    const r = head.predict(x, k);
    for (let i = 0; i < 5; i++) {
      const xi = x.subarray(i * 8, i * 8 + 8);
      const nx = Math.hypot(...xi);
      const cos = Array.from({ length: c }, (_, j) => {
        const wj = w.subarray(j * 8, j * 8 + 8);
        let dot = 0;
        for (let q = 0; q < 8; q++) dot += xi[q] * wj[q];
        return { j, s: dot / (nx * Math.hypot(...wj)) };
      });
      cos.sort((a, b) => b.s - a.s || a.j - b.j);
      const got = Array.from(r.classes.subarray(i * k, i * k + k));
      // Cosines within float32 rounding of each other may swap; compare as sets of near-equal scores.
      for (let q = 0; q < k; q++) expect(Math.abs(r.scores[i * k + q] - cos[q].s)).toBeLessThan(1e-5);
      for (let q = 1; q < k; q++) expect(r.scores[i * k + q]).toBeLessThanOrEqual(r.scores[i * k + q - 1]);
      expect(new Set(got).size).toBe(k);
    }
  });
});
