/**
 * The loss family written the naive way in TensorFlow.js, as a competent tfjs
 * user would write it: normalise the rows, one dense N×C matMul, the margin
 * (and its arccos) on the N target cosines only, put back on the target column
 * through a one-hot mask, log-sum-exp cross-entropy, and tfjs autodiff for both
 * gradients. It is the "what you would write without this package" baseline:
 * the tests check the native backend against it, the benchmark times it (a
 * plain ES module so that bench/ runs it with node as it is; the JSDoc types
 * are checked with the tests).
 *
 *   x̂ = x/‖x‖, ŵ = w/‖w‖         (rows; the norm is floored at 1e−12, so a zero row stays zero)
 *   cos = x̂·ŵᵀ                     N×C
 *   c_y = Σ_j cos ⊙ onehot          N (the target cosine of each row)
 *   z_y = margin(c_y)               N (angular kinds: arccos of c_y clipped to [−1+1e−7, 1−1e−7])
 *   z   = other(cos) + onehot ⊙ (z_y − other(c_y))   N×C (other: s·c, CVM s·(c + m2·c²))
 *   loss = (1/V) Σ_{i: y_i ≥ 0} (logsumexp_j z_ij − z_{i,y_i})
 *
 * The N×C work is the product, the mask, the masked add and the log-sum-exp.
 * The clip uses clipByValue, whose gradient is 0 outside the band (the native
 * backend treats the clamp as the identity), so compare the two only away from
 * |cos| = 1.
 *
 * Every function takes the tfjs module as its first argument: the benchmark
 * loads it with require() (an ES import of tfjs's CommonJS build costs some
 * 30 MB more resident memory, which would count in the peaks it measures).
 * Call `await tf.setBackend('cpu')` (or 'wasm') and `await tf.ready()` first.
 */

/** @typedef {import('../lib/types').Margin} Margin */
/** @typedef {typeof import('@tensorflow/tfjs')} Tfjs */
/** @typedef {import('@tensorflow/tfjs').Tensor} Tensor */
/** @typedef {import('@tensorflow/tfjs').Tensor1D} Tensor1D */
/** @typedef {import('@tensorflow/tfjs').Tensor2D} Tensor2D */
/** @typedef {import('@tensorflow/tfjs').Scalar} Scalar */

/**
 * @typedef {object} NaiveOptions
 * @property {Margin} margin
 * @property {number} [scale] Scale s (default 64).
 * @property {boolean} [fallback] Monotonic fallback where φ > π for the angular kinds (default true).
 * @property {Float32Array} [rowMargins] Elastic kinds: the per-row margins (e.g. the `margins` a native call returned).
 */

/**
 * @typedef {object} NaiveInput
 * @property {Float32Array} embeddings N×d
 * @property {Float32Array} weights C×d
 * @property {Int32Array} labels N, in [−1, C) (−1 = ignored)
 * @property {number} dim d
 */

/**
 * @typedef {object} NaiveResult
 * @property {number} loss
 * @property {Float32Array} perSample
 * @property {Float32Array} gradEmbeddings
 * @property {Float32Array} gradWeights
 */

/** @typedef {Tensor1D | number} PerRow a margin: one per row (elastic kinds) or one for all */

const CLAMP = 1e-7;
const ZERO_NORM = 1e-12;

/**
 * Row-wise L2 normalisation; a zero row stays zero (its norm is taken as ZERO_NORM).
 * @param {Tfjs} tf
 * @param {Tensor2D} a
 * @returns {Tensor2D}
 */
function normalizeRows(tf, a) {
  return tf.div(a, tf.maximum(tf.norm(a, 'euclidean', 1, true), ZERO_NORM));
}

/**
 * The one-hot mask of the labels as float32 (ignored rows: their row is that of class 0; the
 * per-row loss masks them out). Made as int32 and cast: tfjs-backend-wasm 4.22's oneHot with
 * dtype 'float32' writes integer bit patterns (1.4e−45 instead of 1), which the benchmark's
 * correctness check caught.
 * @param {Tfjs} tf
 * @param {Int32Array} labels
 * @param {number} numClasses
 * @returns {Tensor2D}
 */
function oneHotMask(tf, labels, numClasses) {
  const indices = tf.tensor1d(Array.from(labels, (y) => Math.max(y, 0)), 'int32');
  return /** @type {Tensor2D} */ (tf.cast(tf.oneHot(indices, numClasses), 'float32'));
}

/**
 * A non-target logit from its cosine (N×C or N): s·c, or s·(c + m2·c²) for CVM (its false-class margin).
 * @template {Tensor} T
 * @param {Tfjs} tf
 * @param {T} cos
 * @param {number} s
 * @param {Margin} margin
 * @returns {T}
 */
function otherLogit(tf, cos, s, margin) {
  const c = margin.kind === 'cvm' ? tf.add(cos, tf.mul(margin.m2, tf.square(cos))) : cos;
  return /** @type {T} */ (tf.mul(s, c));
}

/**
 * @typedef {object} TargetRows what every target logit is made from
 * @property {Tfjs} tf
 * @property {Tensor1D} ct the target cosine of each row
 * @property {number} s the scale
 * @property {NaiveOptions} opts
 */

/**
 * s·(cos φ − m3), or where φ > π (with the fallback) the monotonic s·(c − m3 − m·sin m).
 * @param {TargetRows} rows
 * @param {Tensor} phi the margined angle of each row
 * @param {PerRow} mAdd the additive angular margin m
 * @param {number} m3
 * @returns {Tensor1D}
 */
function angularLogit({ tf, ct, s, opts }, phi, mAdd, m3) {
  const margined = /** @type {Tensor1D} */ (tf.mul(s, tf.sub(tf.cos(phi), m3)));
  if (!(opts.fallback ?? true)) return margined;
  const mSinM = typeof mAdd === 'number' ? mAdd * Math.sin(mAdd) : tf.mul(mAdd, tf.sin(mAdd));
  const beyond = /** @type {Tensor1D} */ (tf.mul(s, tf.sub(tf.sub(ct, m3), mSinM)));
  // The branch mask carries no gradient: step's is zero (tfjs has none for Greater).
  const pastPi = tf.cast(tf.step(tf.sub(phi, Math.PI)), 'bool');
  return /** @type {Tensor1D} */ (tf.where(pastPi, beyond, margined));
}

/**
 * The elastic kinds' per-row margins as a tensor.
 * @param {Tfjs} tf
 * @param {NaiveOptions} opts
 * @returns {Tensor1D}
 */
function rowMarginTensor(tf, opts) {
  if (!opts.rowMargins) throw new Error(`naive tfjs loss: margin kind '${opts.margin.kind}' needs opts.rowMargins`);
  return tf.tensor1d(opts.rowMargins);
}

/**
 * The target logit z_y of each row from its target cosine.
 * @param {TargetRows} rows
 * @returns {Tensor1D}
 */
function targetLogitPerRow(rows) {
  const { tf, ct, s, opts } = rows;
  const margin = opts.margin;
  const theta = () => tf.acos(tf.clipByValue(ct, -1 + CLAMP, 1 - CLAMP));
  /** @type {(phi: Tensor, mAdd: PerRow, m3: number) => Tensor1D} */
  const angular = (phi, mAdd, m3) => angularLogit(rows, phi, mAdd, m3);
  /** @type {(t: Tensor) => Tensor1D} */
  const scaled = (t) => /** @type {Tensor1D} */ (tf.mul(s, t));
  switch (margin.kind) {
    case 'softmax':
      return scaled(ct);
    case 'cosface':
      return scaled(tf.sub(ct, margin.m));
    case 'elastic-cos':
      return scaled(tf.sub(ct, rowMarginTensor(tf, opts)));
    case 'cvm':
      return scaled(tf.sub(ct, tf.mul(margin.m1, tf.sub(1, tf.square(ct)))));
    case 'arcface':
      return angular(tf.add(theta(), margin.m), margin.m, 0);
    case 'elastic-arc': {
      const rm = rowMarginTensor(tf, opts);
      return angular(tf.add(theta(), rm), rm, 0);
    }
    case 'combined':
      return angular(tf.add(tf.mul(margin.m1, theta()), margin.m2), margin.m2, margin.m3);
    case 'adaptive': {
      const m1 = margin.m1 ?? 0.03;
      const m2 = margin.m2 ?? 0.5;
      const th = theta();
      // φ = θ + f(θ), f(θ) = m1·sin²θ + m2
      return angular(tf.add(tf.add(th, tf.mul(m1, tf.square(tf.sin(th)))), m2), m2, 0);
    }
  }
}

/**
 * The mean loss over non-ignored rows (labels −1 are ignored) as a scalar tensor, and the
 * per-row losses (0 for ignored rows). x: N×d, w: C×d.
 * @param {Tfjs} tf
 * @param {Tensor2D} x
 * @param {Tensor2D} w
 * @param {Int32Array} labels
 * @param {NaiveOptions} opts
 * @returns {{ loss: Scalar; perSample: Tensor1D }}
 */
export function naiveLossTensors(tf, x, w, labels, opts) {
  const s = opts.scale ?? 64;
  const cos = /** @type {Tensor2D} */ (tf.matMul(normalizeRows(tf, x), normalizeRows(tf, w), false, true)); // N×C
  const onehot = oneHotMask(tf, labels, w.shape[0]);
  const ct = /** @type {Tensor1D} */ (tf.sum(tf.mul(cos, onehot), 1)); // target cosine per row
  const zt = targetLogitPerRow({ tf, ct, s, opts });
  const shift = tf.sub(zt, otherLogit(tf, ct, s, opts.margin)); // how far the margin moves each target logit
  const logits = tf.add(otherLogit(tf, cos, s, opts.margin), tf.mul(onehot, tf.expandDims(shift, 1)));
  const valid = tf.tensor1d(Array.from(labels, (y) => (y >= 0 ? 1 : 0)), 'float32');
  const perSample = /** @type {Tensor1D} */ (tf.mul(tf.sub(tf.logSumExp(logits, 1), zt), valid));
  const validRows = labels.reduce((a, y) => a + (y >= 0 ? 1 : 0), 0);
  const loss = /** @type {Scalar} */ (validRows > 0 ? tf.div(tf.sum(perSample), validRows) : tf.mul(tf.sum(perSample), 0));
  return { loss, perSample };
}

/**
 * Loss and per-row losses read back, no gradient tape.
 * @param {Tfjs} tf
 * @param {Tensor2D} x
 * @param {Tensor2D} w
 * @param {Int32Array} labels
 * @param {NaiveOptions} opts
 * @returns {{ loss: number; perSample: Float32Array }}
 */
export function naiveForward(tf, x, w, labels, opts) {
  const r = tf.tidy(() => naiveLossTensors(tf, x, w, labels, opts));
  const out = { loss: r.loss.dataSync()[0], perSample: /** @type {Float32Array} */ (r.perSample.dataSync()) };
  tf.dispose([r.loss, r.perSample]);
  return out;
}

/**
 * Loss, per-row losses and both gradients (tf.valueAndGrads autodiff), read back.
 * @param {Tfjs} tf
 * @param {Tensor2D} x
 * @param {Tensor2D} w
 * @param {Int32Array} labels
 * @param {NaiveOptions} opts
 * @returns {NaiveResult}
 */
export function naiveForwardBackward(tf, x, w, labels, opts) {
  /** @type {Tensor1D | undefined} */
  let perSample;
  const { value, grads } = tf.valueAndGrads((a, b) => {
    const r = naiveLossTensors(tf, /** @type {Tensor2D} */ (a), /** @type {Tensor2D} */ (b), labels, opts);
    perSample = tf.keep(r.perSample);
    return r.loss;
  })([x, w]);
  const kept = /** @type {Tensor1D} */ (/** @type {unknown} */ (perSample));
  const out = {
    loss: value.dataSync()[0],
    perSample: /** @type {Float32Array} */ (kept.dataSync()),
    gradEmbeddings: /** @type {Float32Array} */ (grads[0].dataSync()),
    gradWeights: /** @type {Float32Array} */ (grads[1].dataSync()),
  };
  tf.dispose([value, kept, ...grads]);
  return out;
}

/**
 * Runs `f` on the input as tensors (x: N×d, w: C×d) and frees them.
 * @template R
 * @param {Tfjs} tf
 * @param {NaiveInput} input
 * @param {(x: Tensor2D, w: Tensor2D) => R} f
 * @returns {R}
 */
function withTensors(tf, input, f) {
  const { embeddings, weights, labels, dim } = input;
  const x = tf.tensor2d(embeddings, [labels.length, dim]);
  const w = tf.tensor2d(weights, [weights.length / dim, dim]);
  try {
    return f(x, w);
  } finally {
    tf.dispose([x, w]);
  }
}

/**
 * Loss, per-row losses and both gradients from plain arrays.
 * @param {Tfjs} tf
 * @param {NaiveInput} input
 * @param {NaiveOptions} opts
 * @returns {NaiveResult}
 */
export function naiveLossAndGrad(tf, input, opts) {
  return withTensors(tf, input, (x, w) => naiveForwardBackward(tf, x, w, input.labels, opts));
}

/**
 * Loss only (no gradient tape) from plain arrays.
 * @param {Tfjs} tf
 * @param {NaiveInput} input
 * @param {NaiveOptions} opts
 * @returns {number}
 */
export function naiveLoss(tf, input, opts) {
  return withTensors(tf, input, (x, w) => naiveForward(tf, x, w, input.labels, opts).loss);
}
