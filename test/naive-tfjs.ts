/**
 * The loss family written the naive way in TensorFlow.js: normalise, one dense
 * N×C matMul, arccos and the margin on the target column through a one-hot
 * mask, softmax cross-entropy, and autodiff for both gradients. It is the
 * "what you would write without this package" baseline: the tests check the
 * native backend against it, the benchmark times it.
 *
 * It materialises several N×C tensors and takes the arccos of the target
 * column only (as the fused kernel does). Zero-norm rows give NaN here (no
 * special case); the cosine clamp uses clipByValue, whose gradient is 0
 * outside the band (the native backend treats the clamp as the identity), so
 * compare the two only away from |cos| = 1.
 *
 * Call `await tf.setBackend('cpu')` (or 'wasm') and `await tf.ready()` first.
 */
import * as tf from '@tensorflow/tfjs';
import type { Margin } from '../lib/types';

export { tf };

export interface NaiveOptions {
  margin: Margin;
  /** Scale s (default 64). */
  scale?: number;
  /** Monotonic fallback where φ > π for the angular kinds (default true). */
  fallback?: boolean;
  /** Elastic kinds: the per-row margins (e.g. the `margins` a native call returned). */
  rowMargins?: Float32Array;
}

const EPS = 1e-7;

/**
 * The mean loss over non-ignored rows (labels −1 are ignored) as a scalar tensor, and the per-row
 * losses. x: N×d, w: C×d.
 */
export function naiveLossTensors(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  labels: Int32Array,
  opts: NaiveOptions,
): { loss: tf.Scalar; perSample: tf.Tensor1D } {
  const s = opts.scale ?? 64;
  const fallback = opts.fallback ?? true;
  const margin = opts.margin;
  const C = w.shape[0];
  const xn = tf.div(x, tf.norm(x, 'euclidean', 1, true));
  const wn = tf.div(w, tf.norm(w, 'euclidean', 1, true));
  const cos = tf.matMul(xn, wn, false, true) as tf.Tensor2D; // N×C
  const valid = tf.tensor1d(Array.from(labels, (y) => (y >= 0 ? 1 : 0)), 'float32');
  const oneHot = tf.mul(tf.oneHot(tf.tensor1d(Array.from(labels, (y) => Math.max(y, 0)), 'int32'), C).toFloat(), tf.expandDims(valid, 1));
  const ct = tf.sum(tf.mul(cos, oneHot), 1) as tf.Tensor1D; // target cosine per row

  // Non-target logits (CVM adds its false-class margin).
  const other =
    margin.kind === 'cvm' ? tf.mul(s, tf.add(cos, tf.mul(margin.m2, tf.square(cos)))) : tf.mul(s, cos);

  // Target logit per row.
  const angular = (phi: tf.Tensor1D, mAdd: number | tf.Tensor1D, m3: number): tf.Tensor1D => {
    const margined = tf.mul(s, tf.sub(tf.cos(phi), m3)) as tf.Tensor1D;
    if (!fallback) return margined;
    const mm = typeof mAdd === 'number' ? mAdd * Math.sin(mAdd) : tf.mul(mAdd, tf.sin(mAdd));
    const fb = tf.mul(s, tf.sub(tf.sub(ct, m3), mm)) as tf.Tensor1D;
    // The branch mask carries no gradient (tfjs has no gradient for Greater): build it from a detached copy.
    const beyond = tf.greater(tf.tensor1d(phi.dataSync() as Float32Array), Math.PI);
    return tf.where(beyond, fb, margined);
  };
  const theta = () => tf.acos(tf.clipByValue(ct, -1 + EPS, 1 - EPS)) as tf.Tensor1D;
  let zt: tf.Tensor1D;
  switch (margin.kind) {
    case 'softmax':
      zt = tf.mul(s, ct);
      break;
    case 'cosface':
      zt = tf.mul(s, tf.sub(ct, margin.m));
      break;
    case 'elastic-cos':
      zt = tf.mul(s, tf.sub(ct, tf.tensor1d(opts.rowMargins!)));
      break;
    case 'cvm':
      zt = tf.mul(s, tf.sub(ct, tf.mul(margin.m1, tf.sub(1, tf.square(ct)))));
      break;
    case 'arcface':
      zt = angular(tf.add(theta(), margin.m), margin.m, 0);
      break;
    case 'elastic-arc': {
      const rm = tf.tensor1d(opts.rowMargins!);
      zt = angular(tf.add(theta(), rm), rm, 0);
      break;
    }
    case 'combined':
      zt = angular(tf.add(tf.mul(margin.m1, theta()), margin.m2), margin.m2, margin.m3);
      break;
    case 'adaptive': {
      const m1 = margin.m1 ?? 0.03;
      const m2 = margin.m2 ?? 0.5;
      const th = theta();
      // f(θ) = m1·sin²θ + m2
      zt = angular(tf.add(tf.add(th, tf.mul(m1, tf.square(tf.sin(th)))), m2), m2, 0);
      break;
    }
  }
  const logits = tf.add(tf.mul(other, tf.sub(1, oneHot)), tf.mul(tf.expandDims(zt, 1), oneHot));
  const perSample = tf.mul(tf.sub(tf.logSumExp(logits, 1), zt), valid) as tf.Tensor1D;
  const V = labels.reduce((a, y) => a + (y >= 0 ? 1 : 0), 0);
  const loss = (V > 0 ? tf.div(tf.sum(perSample), V) : tf.mul(tf.sum(perSample), 0)) as tf.Scalar;
  return { loss, perSample };
}

export interface NaiveResult {
  loss: number;
  perSample: Float32Array;
  gradEmbeddings: Float32Array;
  gradWeights: Float32Array;
}

/** Loss, per-row losses and both gradients (tf.grads autodiff) from plain arrays. */
export function naiveLossAndGrad(
  input: { embeddings: Float32Array; weights: Float32Array; labels: Int32Array; dim: number },
  opts: NaiveOptions,
): NaiveResult {
  const { embeddings, weights, labels, dim } = input;
  let out: NaiveResult | undefined;
  tf.tidy(() => {
    const x = tf.tensor2d(embeddings, [labels.length, dim]);
    const w = tf.tensor2d(weights, [weights.length / dim, dim]);
    let perSample: tf.Tensor1D | undefined;
    const g = tf.grads((a: tf.Tensor, b: tf.Tensor) => {
      const r = naiveLossTensors(a as tf.Tensor2D, b as tf.Tensor2D, labels, opts);
      perSample = tf.keep(r.perSample);
      return r.loss;
    });
    const [gx, gw] = g([x, w]);
    const lossValue = naiveLossTensors(x, w, labels, opts).loss.dataSync()[0];
    out = {
      loss: lossValue,
      perSample: perSample!.dataSync() as Float32Array,
      gradEmbeddings: gx.dataSync() as Float32Array,
      gradWeights: gw.dataSync() as Float32Array,
    };
    perSample!.dispose();
  });
  return out!;
}

/** Loss only (no gradient tape). */
export function naiveLoss(
  input: { embeddings: Float32Array; weights: Float32Array; labels: Int32Array; dim: number },
  opts: NaiveOptions,
): number {
  const { embeddings, weights, labels, dim } = input;
  return tf.tidy(() => {
    const x = tf.tensor2d(embeddings, [labels.length, dim]);
    const w = tf.tensor2d(weights, [weights.length / dim, dim]);
    return naiveLossTensors(x, w, labels, opts).loss.dataSync()[0];
  });
}
