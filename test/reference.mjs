/**
 * A float64 reference of the whole margin-softmax family, written as plain
 * loops straight from docs/math.md: no fused kernels, no online
 * log-sum-exp, no tiling, no shortcuts. It is the ground truth of the CPU test
 * suite and of the benchmark's accuracy column.
 *
 *   x̂ = x/‖x‖, ŵ = w/‖w‖ (a vector with ‖·‖ ≤ 1e−12 normalises to 0 and gets a zero gradient)
 *   c_ij = x̂_i·ŵ_j
 *   z_ij = s·c_ij                (j ≠ y_i; CVM: s·(c + m2·c²))
 *   z_iy = margin(c_iy)          (see targetLogitRef)
 *   L    = (1/V) Σ_{i: y_i ≥ 0} (log Σ_j exp z_ij − z_iy)
 *   g_ij = (p_ij − [j = y_i])·dz_ij/dc_ij / V
 *   dX̂ = G·Ŵ, dŴ = Gᵀ·X̂, dx = (dx̂ − x̂(x̂·dx̂))/‖x‖ (same for w)
 *
 * A plain ES module, so that bench/ runs it with node as it is; the JSDoc
 * types are checked with the tests (tsconfig.test.json).
 */

/** @typedef {import('../lib/types').Margin} Margin */

/** Default clamp of the cosine before arccos (ε = 1e−7, docs/math.md §3). */
export const COS_EPS = 1e-7;
/**
 * The clamp bound the fp32 backends actually use: 1 − 1e−7 is not an fp32
 * number and rounds to 1 − 2⁻²³ (see native/margin_math.h). Only matters for
 * cosines within ~1e−7 of ±1.
 */
export const COS_EPS_FP32 = 1 - Math.fround(1 - Math.fround(1e-7));
/** Norm at or below which a vector is treated as the zero vector. */
export const ZERO_NORM = 1e-12;

/**
 * @typedef {object} RefOptions
 * @property {Margin} margin
 * @property {number} [scale] Scale s (default 64).
 * @property {boolean} [fallback] Monotonic fallback for the angular kinds where φ > π (default true).
 * @property {ArrayLike<number>} [rowMargins] Elastic kinds: the per-row margin m_i (required for them, ignored otherwise).
 * @property {number} [cosEps] ε of the cosine clamp [−1+ε, 1−ε] (default 1e−7).
 */

/**
 * @typedef {object} RefInput
 * @property {ArrayLike<number>} embeddings
 * @property {ArrayLike<number>} weights
 * @property {ArrayLike<number>} labels
 * @property {number} dim
 */

/**
 * @typedef {object} RefResult
 * @property {number} loss
 * @property {Float64Array} perSample
 * @property {number} validRows
 * @property {Float64Array} gradEmbeddings dL/dX (N×d); empty when withGrad is false.
 * @property {Float64Array} gradWeights dL/dW (C×d); empty when withGrad is false.
 */

/**
 * @typedef {object} Logit
 * @property {number} z
 * @property {number} dz dz/dc (the clamp is treated as the identity).
 */

/**
 * The margined angle φ(θ) of the angular kinds (θ + m for ArcFace, m1θ + m2 for combined, θ + f(θ) for adaptive).
 * @param {Margin} margin
 * @param {number} theta
 * @param {number} [rowM]
 * @returns {{ phi: number; dphi: number; mAdd: number; m3: number }}
 */
export function marginedAngle(margin, theta, rowM = 0) {
  switch (margin.kind) {
    case 'arcface':
      return { phi: theta + margin.m, dphi: 1, mAdd: margin.m, m3: 0 };
    case 'elastic-arc':
      return { phi: theta + rowM, dphi: 1, mAdd: rowM, m3: 0 };
    case 'combined':
      return { phi: margin.m1 * theta + margin.m2, dphi: margin.m1, mAdd: margin.m2, m3: margin.m3 };
    case 'adaptive': {
      const m1 = margin.m1 ?? 0.03;
      const m2 = margin.m2 ?? 0.5;
      const st = Math.sin(theta);
      return { phi: theta + adaptiveF(theta, m1, m2), dphi: 1 + 2 * m1 * st * Math.cos(theta), mAdd: m2, m3: 0 };
    }
    default:
      throw new Error(`marginedAngle: '${margin.kind}' is not an angular kind`);
  }
}

/**
 * The adaptive margin f(θ) = m1·sin²θ + m2 (paper: f(π/2) = m1 + m2, f(π) = f(0) = m2).
 * @param {number} theta
 * @param {number} m1
 * @param {number} m2
 * @returns {number}
 */
export function adaptiveF(theta, m1, m2) {
  const st = Math.sin(theta);
  return m1 * st * st + m2;
}

/**
 * @param {Margin['kind']} kind
 * @returns {boolean}
 */
export function isAngular(kind) {
  return kind === 'arcface' || kind === 'combined' || kind === 'adaptive' || kind === 'elastic-arc';
}

/**
 * Target logit z_y and dz_y/dc of one row, with cosine c (unclamped) and row margin rowM (elastic kinds).
 * @param {Margin} margin
 * @param {number} s
 * @param {number} c
 * @param {{ fallback?: boolean; rowM?: number; cosEps?: number }} [opts]
 * @returns {Logit}
 */
export function targetLogitRef(margin, s, c, opts = {}) {
  const fallback = opts.fallback ?? true;
  const rowM = opts.rowM ?? 0;
  switch (margin.kind) {
    case 'softmax':
      return { z: s * c, dz: s };
    case 'cosface':
      return { z: s * (c - margin.m), dz: s };
    case 'elastic-cos':
      return { z: s * (c - rowM), dz: s };
    case 'cvm':
      return { z: s * (c - margin.m1 * (1 - c * c)), dz: s * (1 + 2 * margin.m1 * c) };
    default:
      break;
  }
  const eps = opts.cosEps ?? COS_EPS;
  const cc = Math.min(Math.max(c, -1 + eps), 1 - eps);
  const theta = Math.acos(cc);
  const sinT = Math.sqrt(1 - cc * cc);
  const { phi, dphi, mAdd, m3 } = marginedAngle(margin, theta, rowM);
  if (fallback && phi > Math.PI) {
    return { z: s * (c - m3 - mAdd * Math.sin(mAdd)), dz: s };
  }
  return { z: s * (Math.cos(phi) - m3), dz: (s * Math.sin(phi) * dphi) / sinT };
}

/**
 * Non-target logit z_j (j ≠ y) and its derivative: s·c, or s·(c + m2·c²) for CVM.
 * @param {Margin} margin
 * @param {number} s
 * @param {number} c
 * @returns {Logit}
 */
export function otherLogitRef(margin, s, c) {
  const m = margin.kind === 'cvm' ? margin.m2 : 0;
  return { z: s * (c + m * c * c), dz: s * (1 + 2 * m * c) };
}

/**
 * Normalises the rows of a (rows×d) matrix in float64; returns x̂ and the norms.
 * @param {ArrayLike<number>} a
 * @param {number} rows
 * @param {number} d
 * @returns {{ hat: Float64Array; norm: Float64Array }}
 */
function normaliseRows(a, rows, d) {
  const hat = new Float64Array(rows * d);
  const norm = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sq = 0;
    for (let k = 0; k < d; k++) sq += a[r * d + k] * a[r * d + k];
    const n = Math.sqrt(sq);
    norm[r] = n;
    if (n > ZERO_NORM) for (let k = 0; k < d; k++) hat[r * d + k] = a[r * d + k] / n;
  }
  return { hat, norm };
}

/**
 * Back through the L2 normalisation: dv = (dv̂ − v̂(v̂·dv̂))/‖v‖, zero for zero vectors.
 * @param {Float64Array} dhat
 * @param {Float64Array} hat
 * @param {Float64Array} norm
 * @param {number} rows
 * @param {number} d
 * @returns {Float64Array}
 */
function backNormalise(dhat, hat, norm, rows, d) {
  const out = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) {
    if (!(norm[r] > ZERO_NORM)) continue;
    let dot = 0;
    for (let k = 0; k < d; k++) dot += hat[r * d + k] * dhat[r * d + k];
    for (let k = 0; k < d; k++) out[r * d + k] = (dhat[r * d + k] - hat[r * d + k] * dot) / norm[r];
  }
  return out;
}

/**
 * @typedef {object} Problem a checked input, its rows normalised in float64
 * @property {number} n rows
 * @property {number} C classes
 * @property {number} d dimension
 * @property {{ hat: Float64Array; norm: Float64Array }} X
 * @property {{ hat: Float64Array; norm: Float64Array }} W
 * @property {ArrayLike<number>} labels
 * @property {number} s scale
 * @property {RefOptions} options
 * @property {(i: number) => number} rowM row i's margin (elastic kinds; 0 otherwise)
 */

/**
 * @param {RefInput} input
 * @param {RefOptions} options
 * @returns {Problem}
 */
function referenceProblem(input, options) {
  const { embeddings, weights, labels, dim: d } = input;
  const n = labels.length;
  const C = weights.length / d;
  if (!Number.isInteger(C) || embeddings.length !== n * d) throw new Error('referenceLoss: bad shapes');
  const margin = options.margin;
  const elastic = margin.kind === 'elastic-arc' || margin.kind === 'elastic-cos';
  const rowMargins = options.rowMargins;
  if (elastic && (!rowMargins || rowMargins.length !== n)) {
    throw new Error('referenceLoss: elastic kinds need rowMargins of length N');
  }
  const rowM = elastic && rowMargins ? (/** @type {number} */ i) => rowMargins[i] : () => 0;
  return { n, C, d, X: normaliseRows(embeddings, n, d), W: normaliseRows(weights, C, d), labels, s: options.scale ?? 64, options, rowM };
}

/**
 * Row i's logits z_j and their derivatives dz_j/dc_j (target y), written into z and dz.
 * @param {Problem} p
 * @param {number} i
 * @param {number} y
 * @param {Float64Array} z
 * @param {Float64Array} dz
 */
function rowLogits(p, i, y, z, dz) {
  const { C, d, X, W, s, options } = p;
  for (let j = 0; j < C; j++) {
    let c = 0;
    for (let k = 0; k < d; k++) c += X.hat[i * d + k] * W.hat[j * d + k];
    const L =
      j === y
        ? targetLogitRef(options.margin, s, c, { fallback: options.fallback, rowM: p.rowM(i), cosEps: options.cosEps })
        : otherLogitRef(options.margin, s, c);
    z[j] = L.z;
    dz[j] = L.dz;
  }
}

/**
 * A row's loss log Σ_j exp z_j − z_y and its log-sum-exp, max-subtracted. Written so that
 * confident rows (p_y → 1) keep full precision: the row loss is log Σ_j exp(z_j − z_y) =
 * log1p(Σ_{j≠y} exp(z_j − z_y)) (the same number, without the cancellation of LSE − z_y).
 * @param {Float64Array} z
 * @param {number} y
 * @returns {{ loss: number; lse: number }}
 */
function rowLoss(z, y) {
  let mx = -Infinity;
  for (let j = 0; j < z.length; j++) mx = Math.max(mx, z[j]);
  let sum = 0;
  for (let j = 0; j < z.length; j++) sum += Math.exp(z[j] - mx);
  const lse = mx + Math.log(sum);
  let others = 0; // Σ_{j≠y} exp(z_j − z_y)
  for (let j = 0; j < z.length; j++) if (j !== y) others += Math.exp(z[j] - z[y]);
  return { loss: z[y] >= mx ? Math.log1p(others) : lse - z[y], lse };
}

/**
 * Row i's share of dX̂ and dŴ: g_ij = (p_ij − [j = y])·dz_ij / V; dX̂_i += g_ij ŵ_j; dŴ_j += g_ij x̂_i.
 * p_y − 1 is taken as −Σ_{j≠y} p_j (an identity, no cancellation).
 * @param {Problem} p
 * @param {number} i
 * @param {number} y
 * @param {{ z: Float64Array; dz: Float64Array; lse: number; V: number }} row
 * @param {Float64Array} dXh
 * @param {Float64Array} dWh
 */
function addRowGrad(p, i, y, row, dXh, dWh) {
  const { C, d, X, W } = p;
  const { z, dz, lse, V } = row;
  let pOthers = 0; // Σ_{j≠y} p_ij
  for (let j = 0; j < C; j++) if (j !== y) pOthers += Math.exp(z[j] - lse);
  for (let j = 0; j < C; j++) {
    const pm = j === y ? -pOthers : Math.exp(z[j] - lse); // p_ij − [j = y]
    const g = (pm * dz[j]) / V;
    if (g === 0) continue;
    for (let k = 0; k < d; k++) {
      dXh[i * d + k] += g * W.hat[j * d + k];
      dWh[j * d + k] += g * X.hat[i * d + k];
    }
  }
}

/**
 * The loss, per-row losses and (if withGrad) both gradients, in float64.
 * @param {RefInput} input
 * @param {RefOptions} options
 * @param {boolean} [withGrad]
 * @returns {RefResult}
 */
export function referenceLoss(input, options, withGrad = true) {
  const p = referenceProblem(input, options);
  const { n, C, d, X, W, labels } = p;
  let V = 0;
  for (let i = 0; i < n; i++) if (labels[i] >= 0) V++;
  const perSample = new Float64Array(n);
  const dXh = new Float64Array(n * d);
  const dWh = new Float64Array(C * d);
  const z = new Float64Array(C);
  const dz = new Float64Array(C);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const y = labels[i];
    if (y < 0) continue;
    rowLogits(p, i, y, z, dz);
    const { loss, lse } = rowLoss(z, y);
    perSample[i] = loss;
    total += loss;
    if (withGrad) addRowGrad(p, i, y, { z, dz, lse, V }, dXh, dWh);
  }
  return {
    loss: V > 0 ? total / V : 0,
    perSample,
    validRows: V,
    gradEmbeddings: withGrad ? backNormalise(dXh, X.hat, X.norm, n, d) : new Float64Array(0),
    gradWeights: withGrad ? backNormalise(dWh, W.hat, W.norm, C, d) : new Float64Array(0),
  };
}

/**
 * Loss only (float64), convenient for finite differences.
 * @param {RefInput} input
 * @param {RefOptions} options
 * @returns {number}
 */
export function referenceLossValue(input, options) {
  return referenceLoss(input, options, false).loss;
}

/**
 * Rounds each value to bfloat16 (round to nearest, ties to even), as the CPU backend's emulation does.
 * @param {Float32Array} a
 * @returns {Float32Array}
 */
export function roundBf16(a) {
  const out = new Float32Array(a);
  const u = new Uint32Array(out.buffer);
  for (let k = 0; k < u.length; k++) {
    const v = u[k];
    u[k] = ((v + 0x7fff + ((v >>> 16) & 1)) & 0xffff0000) >>> 0;
  }
  return out;
}

// ---- Small helpers shared by the tests and the benchmark ------------------

/**
 * Deterministic PRNG (mulberry32) → uniform [0, 1).
 * @param {number} seed
 * @returns {() => number}
 */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Standard normal draws (Box–Muller) from rng.
 * @param {() => number} r
 * @returns {() => number}
 */
export function gaussian(r) {
  return () => {
    const u1 = 1 - r();
    const u2 = r();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
}

/**
 * A random problem: Gaussian X (N×d) and W (C×d), labels uniform in [0, C).
 * @param {number} n
 * @param {number} c
 * @param {number} d
 * @param {number} seed
 * @returns {{ embeddings: Float32Array; weights: Float32Array; labels: Int32Array; dim: number }}
 */
export function randomProblem(n, c, d, seed) {
  const g = gaussian(rng(seed));
  const embeddings = new Float32Array(n * d);
  const weights = new Float32Array(c * d);
  const labels = new Int32Array(n);
  for (let k = 0; k < embeddings.length; k++) embeddings[k] = g();
  for (let k = 0; k < weights.length; k++) weights[k] = g();
  const r = rng(seed ^ 0x5bd1e995);
  for (let i = 0; i < n; i++) labels[i] = Math.floor(r() * c);
  return { embeddings, weights, labels, dim: d };
}

/**
 * max_k |a_k − b_k| / max(max_k |b_k|, floor): the gradient error measure of the suite.
 * @param {ArrayLike<number>} a
 * @param {ArrayLike<number>} b
 * @param {number} [floor]
 * @returns {number}
 */
export function relMaxErr(a, b, floor = 1e-30) {
  if (a.length !== b.length) throw new Error(`relMaxErr: lengths ${a.length} ≠ ${b.length}`);
  let err = 0;
  let scale = floor;
  for (let k = 0; k < a.length; k++) {
    err = Math.max(err, Math.abs(a[k] - b[k]));
    scale = Math.max(scale, Math.abs(b[k]));
  }
  return err / scale;
}

/**
 * Largest |v_k|.
 * @param {ArrayLike<number>} a
 * @returns {number}
 */
export function maxAbs(a) {
  let m = 0;
  for (let k = 0; k < a.length; k++) m = Math.max(m, Math.abs(a[k]));
  return m;
}

/**
 * True when every value is finite.
 * @param {ArrayLike<number>} a
 * @returns {boolean}
 */
export function allFinite(a) {
  for (let k = 0; k < a.length; k++) if (!Number.isFinite(a[k])) return false;
  return true;
}
