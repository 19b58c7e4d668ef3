// The tfjs adapter (margin-softmax/tfjs): the loss a tfjs model minimises is
// exactly MarginHead.step's, its gradient is step's dLoss/dEmbeddings (times
// the upstream gradient), the centres move once per minimize(), and the lr /
// onStep options reach the head. A twin head with the same seed, stepped
// directly, is the reference: same kernels, same thread count → same bits.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { ArgumentError, MarginHead, type MarginHeadOptions, type StepResult } from '../lib/index';
import { marginLoss, type TfLike } from '../lib/tfjs';
import { gaussian, rng } from './reference.mjs';

const N = 12;
const C = 300;
const D = 16;
const opts: MarginHeadOptions = {
  classes: C,
  dim: D,
  margin: { kind: 'adaptive' },
  seed: 5,
  optimizer: { lr: 0.1, momentum: 0.9 },
  threads: 1,
};
const tfl: TfLike<tf.Scalar> = tf; // the real module satisfies TfLike without a cast

function batch(seed: number): { x: Float32Array; y: Int32Array } {
  const g = gaussian(rng(seed));
  const x = Float32Array.from({ length: N * D }, () => g());
  const r = rng(seed + 1);
  const y = Int32Array.from({ length: N }, () => Math.floor(r() * C));
  return { x, y };
}

function same(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

describe('marginLoss (tfjs adapter)', () => {
  it('has the value and the gradient of MarginHead.step (times dy), with labels as a tensor or an Int32Array', () => {
    const a = new MarginHead(opts);
    const b = new MarginHead(opts);
    const loss = marginLoss(a, tfl);
    for (const [step, asTensor] of [[0, true], [1, false]] as const) {
      const { x, y } = batch(10 + step);
      const ref = b.step(x, y);
      const xt = tf.tensor2d(x, [N, D]);
      const labels = asTensor ? tf.tensor1d(y, 'int32') : y;
      // d(3·L)/dx = 3·dL/dx: the adapter multiplies by the upstream gradient.
      const { value, grad } = tf.valueAndGrad((e: tf.Tensor) => tf.mul(loss(e as tf.Tensor2D, labels as never) as tf.Tensor, 3) as tf.Scalar)(xt);
      expect(value.dataSync()[0]).toBeCloseTo(3 * ref.loss, 4);
      const g = grad.dataSync() as Float32Array;
      const want = ref.gradEmbeddings.map((v) => Math.fround(3 * v));
      expect(same(g, want)).toBe(true);
      // One step each: the centres stay identical.
      expect(same(a.getWeights(), b.getWeights())).toBe(true);
    }
  });

  it('moves the centres once per minimize() and passes lr (a schedule) and onStep', () => {
    const a = new MarginHead(opts);
    const b = new MarginHead(opts);
    let rate = 0.3;
    const seen: StepResult[] = [];
    const loss = marginLoss(a, tfl, { lr: () => rate, onStep: (r) => seen.push(r) });
    const { x, y } = batch(20);
    const v = tf.variable(tf.tensor2d(x, [N, D]));
    const opt = tf.train.sgd(0.01);
    for (let step = 0; step < 2; step++) {
      const xs = v.dataSync() as Float32Array;
      const ref = b.step(Float32Array.from(xs), y, { lr: rate });
      opt.minimize(() => loss(v as unknown as tf.Tensor2D, y) as unknown as tf.Scalar);
      expect(seen.length).toBe(step + 1);
      expect(seen[step].loss).toBe(ref.loss);
      expect(same(seen[step].targetCos, ref.targetCos)).toBe(true);
      expect(same(a.getWeights(), b.getWeights())).toBe(true);
      rate = 0.05;
    }
    v.dispose();
  });

  it('rejects bad options with typed errors', () => {
    const a = new MarginHead(opts);
    expect(() => marginLoss(a, tfl, { lr: -1 })).toThrow(ArgumentError);
    expect(() => marginLoss(a, tfl, { lr: Number.NaN })).toThrow(/Expected a finite number ≥ 0 or a function for options.lr/);
    expect(() => marginLoss(a, tfl, { onStep: 3 as never })).toThrow(/Expected a function for options.onStep/);
    expect(() => marginLoss(a, tfl, 'fast' as never)).toThrow(ArgumentError);
    // A schedule that returns a bad rate fails at the step, with the head's own message.
    const loss = marginLoss(a, tfl, { lr: () => -2 });
    const { x, y } = batch(30);
    expect(() => loss(tf.tensor2d(x, [N, D]) as never, y)).toThrow(ArgumentError);
  });
});
