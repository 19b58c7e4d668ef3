/**
 * The margin functions of the kernels, evaluated point by point for figures:
 * nothing here re-types a formula. The target logit z_y(cos θ) and its
 * derivative come from the library's `targetLogit`, which runs
 * native/margin_math.h's `target_logit` (the function both the CPU and the
 * CUDA kernels call); the non-target logit z_j(cos θ) (CVM's false-class
 * margin) comes from the library's public `forward` on a two-class problem.
 */
import { ArgumentError, MARGIN_KINDS, MARGIN_KIND_NAMES, forward, targetLogit, type Margin } from 'margin-softmax';

export interface LogitOptions {
  /** Logit scale s (default 1: the boundaries of Figure 2 do not depend on it). */
  scale?: number;
  /** The monotonic fallback where the margined angle passes π (default true, as in training). */
  fallback?: boolean;
}

function checkCosines(cosines: ArrayLike<number>): void {
  for (let i = 0; i < cosines.length; i++) {
    if (!(cosines[i] >= -1 && cosines[i] <= 1)) throw new ArgumentError(`Expected cosines in [-1, 1] for cosines[${i}] but received ${cosines[i]}`);
  }
}

/**
 * Target logits z_y and dz_y/dcos θ at each cosine, from the kernels' own
 * target_logit. The elastic kinds are evaluated at their mean margin m
 * (targetLogit's default row margin).
 */
export function targetLogits(margin: Margin, cosines: ArrayLike<number>, o: LogitOptions = {}): { z: Float64Array; dz: Float64Array } {
  checkCosines(cosines);
  const options = { scale: o.scale ?? 1, fallback: o.fallback ?? true };
  const z = new Float64Array(cosines.length);
  const dz = new Float64Array(cosines.length);
  for (let i = 0; i < cosines.length; i++) {
    const r = targetLogit(margin, cosines[i], options);
    z[i] = r.z;
    dz[i] = r.dz;
  }
  return { z, dz };
}

/**
 * The margined angle φ(θ) (radians) of an angular kind (arcface, combined,
 * adaptive, elastic-arc at its mean margin), without the fallback, so past π
 * it keeps growing: cos φ = z_y/s from the kernel, and the sign of sin φ is
 * the sign of dz_y/dcos θ (= s·sin φ·φ'/sin θ with φ' > 0), which tells φ
 * from 2π − φ. The kernel clamps cos θ to [−1+1e−7, 1−1e−7], so at θ = 0
 * and θ = π it works on angles about 5e−4 rad inside the range.
 */
export function marginedAngles(margin: Margin, thetas: ArrayLike<number>): Float64Array {
  if (!MARGIN_KINDS[margin.kind].angular) {
    const angular = MARGIN_KIND_NAMES.filter((k) => MARGIN_KINDS[k].angular).join(', ');
    throw new ArgumentError(`Expected an angular margin (${angular}) for marginedAngles but received ${JSON.stringify(margin.kind)}`);
  }
  const cos = Float64Array.from(thetas, (t) => Math.cos(t));
  const { z, dz } = targetLogits(margin, cos, { scale: 1, fallback: false });
  const m3 = margin.kind === 'combined' ? margin.m3 : 0;
  return Float64Array.from(z, (zi, i) => {
    const a = Math.acos(Math.max(-1, Math.min(1, zi + m3)));
    return dz[i] >= 0 ? a : 2 * Math.PI - a;
  });
}

/**
 * Non-target logits z_j(cos θ) (CVM: with its false-class margin), from the
 * library's `forward` on two classes: a row at cosine 0 to its target class
 * and cos θ to the other class has loss log(1 + exp(z_j − z_y(0))), so
 * z_j = z_y(0) + log(expm1(loss)), with z_y(0) from targetLogits.
 */
export function otherLogits(margin: Margin, cosines: ArrayLike<number>, o: Pick<LogitOptions, 'scale'> = {}): Float64Array {
  checkCosines(cosines);
  const scale = o.scale ?? 1;
  const n = cosines.length;
  const embeddings = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    embeddings[3 * i + 1] = cosines[i];
    embeddings[3 * i + 2] = Math.sqrt(Math.max(0, 1 - cosines[i] * cosines[i]));
  }
  const weights = Float32Array.from([1, 0, 0, 0, 1, 0]);
  // Elastic kinds: σ = 0 draws exactly the mean margin for every row.
  const m = MARGIN_KINDS[margin.kind].rowMargins ? { ...margin, sigma: 0 } : margin;
  const r = forward({ embeddings, weights, labels: new Int32Array(n), dim: 3 }, { margin: m, scale, backend: 'cpu', threads: 1 });
  const zy0 = targetLogits(margin, [0], { scale }).z[0];
  return Float64Array.from(r.perSample, (l) => zy0 + Math.log(Math.expm1(l)));
}
