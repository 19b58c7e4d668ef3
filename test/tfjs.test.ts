/**
 * The native backend against a naive TensorFlow.js implementation with autodiff
 * (test/naive-tfjs.mjs) on tfjs's pure-JS 'cpu' backend: an independent
 * implementation whose gradients come from tf.grads, not from the derivative
 * formulas the native code and the reference share.
 *
 * Tolerances: both sides compute in fp32. Loss LOSS_TOL·max(1, |L|) = 5e−5 relative; gradients
 * max |Δ| / max |g| ≤ 2e−4 (twice the reference tolerance: tfjs's fp32 chain through arccos and
 * the L2 normalisation adds its own ~1e−6…1e−5 error on top of the native one).
 */
import { beforeAll, describe, expect, test } from 'vitest';
import { lossAndGrad } from '../lib/index';
import type { Margin } from '../lib/types';
import { MARGIN_KINDS } from '../lib/margins';
import { ALL_KINDS, label, problemWithTargetCos } from './helpers';
import * as tf from '@tensorflow/tfjs';
import { naiveLoss, naiveLossAndGrad } from './naive-tfjs.mjs';
import { allFinite, randomProblem, referenceLoss, relMaxErr } from './reference.mjs';

const LOSS_TOL = 5e-5;
const GRAD_TOL = 2e-4;

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  expect(tf.getBackend()).toBe('cpu');
});

const KINDS: Margin[] = ALL_KINDS;

function compare(prob: { embeddings: Float32Array; weights: Float32Array; labels: Int32Array; dim: number }, m: Margin, scale: number, fallback = true) {
  const nat = lossAndGrad(prob, { margin: m, scale, fallback, threads: 1 });
  const tfr = naiveLossAndGrad(tf, prob, { margin: m, scale, fallback, rowMargins: nat.margins });
  expect(allFinite(tfr.gradEmbeddings) && allFinite(tfr.gradWeights)).toBe(true);
  expect(Math.abs(nat.loss - tfr.loss)).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, Math.abs(tfr.loss)));
  for (let i = 0; i < tfr.perSample.length; i++) {
    expect(Math.abs(nat.perSample[i] - tfr.perSample[i])).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, Math.abs(tfr.perSample[i])));
  }
  const ex = relMaxErr(nat.gradEmbeddings, tfr.gradEmbeddings);
  const ew = relMaxErr(nat.gradWeights, tfr.gradWeights);
  if (process.env.MS_TEST_VERBOSE) console.log(label(m), scale, { ex, ew });
  expect(ex).toBeLessThanOrEqual(GRAD_TOL);
  expect(ew).toBeLessThanOrEqual(GRAD_TOL);
  return { nat, tfr };
}

describe('native backend vs naive tfjs autodiff', () => {
  const rand = randomProblem(16, 120, 32, 31);
  // Target cosines spread over (−1, 1): the last two rows (θ ≥ 3.0 rad) are past φ = π for every
  // angular kind here, the others (θ ≤ 2.35 rad) before it even with an elastic margin 5σ above m.
  const spreadCos = [0.95, 0.8, 0.6, 0.4, 0.2, 0.0, -0.2, -0.4, -0.6, -0.7, -0.99, -0.999];
  const spread = problemWithTargetCos(12, 40, 24, (i) => spreadCos[i], 32).fp32;

  for (const m of KINDS) {
    test(`${label(m)}: random inputs, s = 64 and s = 30`, () => {
      for (const s of [64, 30]) compare(rand, m, s);
    });
    test(`${label(m)}: spread target cosines, fallback on and off`, () => {
      const on = compare(spread, m, 64, true);
      const off = compare(spread, m, 64, false);
      // The fallback changes the angular kinds' loss (rows 10, 11), nothing else's.
      if (MARGIN_KINDS[m.kind].angular) {
        expect(on.nat.perSample[11]).toBeGreaterThan(off.nat.perSample[11]);
        expect(on.tfr.perSample[11]).toBeGreaterThan(off.tfr.perSample[11]);
      } else {
        expect(on.nat.loss).toBe(off.nat.loss);
      }
    });
  }

  test('ignored rows', () => {
    const labels = new Int32Array(rand.labels);
    labels[2] = -1;
    labels[9] = -1;
    for (const m of KINDS.slice(0, 5)) {
      const { nat, tfr } = compare({ ...rand, labels }, m, 64);
      expect(nat.validRows).toBe(14);
      expect(tfr.perSample[2]).toBe(0);
    }
  });

  test('the naive tfjs loss is itself right: it matches the float64 reference', () => {
    for (const m of KINDS.filter((k) => !k.kind.startsWith('elastic'))) {
      const ref = referenceLoss(spread, { margin: m, scale: 64 });
      const t = naiveLossAndGrad(tf, spread, { margin: m, scale: 64 });
      expect(Math.abs(t.loss - ref.loss)).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, ref.loss));
      expect(relMaxErr(t.gradEmbeddings, ref.gradEmbeddings)).toBeLessThan(GRAD_TOL);
      expect(relMaxErr(t.gradWeights, ref.gradWeights)).toBeLessThan(GRAD_TOL);
      expect(naiveLoss(tf, spread, { margin: m, scale: 64 })).toBeCloseTo(t.loss, 5);
    }
  });

  test('no tensors leak', () => {
    const before = tf.memory().numTensors;
    naiveLossAndGrad(tf, rand, { margin: { kind: 'adaptive' } });
    naiveLoss(tf, rand, { margin: { kind: 'adaptive' } });
    expect(tf.memory().numTensors).toBe(before);
  });
});
