// naive-tfjs.mjs — the adaptive-margin softmax loss written the way a competent
// tfjs user would write it: plain tfjs ops and tfjs autodiff. It is the
// benchmark's baseline, not a straw man: the margin (and its arccos) is applied
// to the N target cosines only, and the N×C work is the one product, one clip,
// one masked add and one log-sum-exp.
//
//   x̂ = x/‖x‖, ŵ = w/‖w‖                    (rows; zero rows stay zero)
//   cos = clip(x̂·ŵᵀ, −1+1e−7, 1−1e−7)        N×C
//   c_y = Σ_j cos ⊙ onehot                    N  (the target cosine of each row)
//   θ_y = acos(c_y); φ = θ_y + m1·(1 − c_y²) + m2
//   z_y = s·cos(φ)  if φ ≤ π, else s·(c_y − m2·sin m2)   (the monotonic fallback)
//   z   = s·cos + onehot ⊙ (z_y − s·c_y)      N×C (margin on the target column only)
//   loss = mean_i (logsumexp_j z_ij − z_{i,y_i})
//
// Gradients of loss with respect to the raw x and w come from tf.valueAndGrads.

const EPS_NORM = 1e-12;
const CLAMP = 1e-7;

/** Row-wise L2 normalisation; a zero row stays zero (its norm is taken as EPS_NORM). */
function normalizeRows(tf, a) {
  const norm = tf.maximum(tf.norm(a, 'euclidean', 1, true), EPS_NORM);
  return tf.div(a, norm);
}

/**
 * Returns { lossOf, forward, lossAndGrad } for one margin setting:
 *  - lossOf(x, w, labels): the scalar loss tensor (x: N×d, w: C×d, labels: int32 N);
 *  - forward(x, w, labels): { loss, perSample } as numbers / Float32Array;
 *  - lossAndGrad(x, w, labels): { loss, gradEmbeddings, gradWeights } as Float32Arrays.
 * Every label must be in [0, C) (the benchmark has no ignored rows).
 */
export function makeNaiveLoss(tf, { m1 = 0.03, m2 = 0.5, scale = 64 } = {}) {
  function perSampleOf(x, w, labels) {
    const numClasses = w.shape[0];
    const cos = tf.clipByValue(tf.matMul(normalizeRows(tf, x), normalizeRows(tf, w), false, true), -1 + CLAMP, 1 - CLAMP);
    // int32 one-hot cast to float: tfjs-backend-wasm 4.22's oneHot with dtype 'float32'
    // writes integer bit patterns (1.4e−45 instead of 1), which the correctness check caught.
    const onehot = tf.cast(tf.oneHot(labels, numClasses), 'float32');
    const cy = tf.sum(tf.mul(cos, onehot), 1); // N target cosines
    const theta = tf.acos(cy);
    const phi = tf.add(tf.add(theta, tf.mul(m1, tf.sub(1, tf.square(cy)))), m2);
    const zyMargin = tf.mul(scale, tf.cos(phi));
    const zyFallback = tf.mul(scale, tf.sub(cy, m2 * Math.sin(m2)));
    const beyondPi = tf.step(tf.sub(phi, Math.PI)); // 1 where φ > π (a mask with a zero gradient)
    const zy = tf.add(zyMargin, tf.mul(beyondPi, tf.sub(zyFallback, zyMargin)));
    const shift = tf.sub(zy, tf.mul(scale, cy)); // how far the margin moves each target logit
    const logits = tf.add(tf.mul(scale, cos), tf.mul(onehot, tf.expandDims(shift, 1)));
    return tf.sub(tf.logSumExp(logits, 1), zy);
  }

  const lossOf = (x, w, labels) => tf.mean(perSampleOf(x, w, labels));

  function forward(x, w, labels) {
    const perSample = tf.tidy(() => perSampleOf(x, w, labels));
    const values = perSample.dataSync();
    perSample.dispose();
    let sum = 0;
    for (const v of values) sum += v;
    return { loss: sum / values.length, perSample: values };
  }

  function lossAndGrad(x, w, labels) {
    const { value, grads } = tf.valueAndGrads((a, b) => lossOf(a, b, labels))([x, w]);
    const out = {
      loss: value.dataSync()[0],
      gradEmbeddings: grads[0].dataSync(),
      gradWeights: grads[1].dataSync(),
    };
    tf.dispose([value, ...grads]);
    return out;
  }

  return { lossOf, forward, lossAndGrad };
}
