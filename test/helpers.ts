/** Problem builders shared by the test files (not part of the public reference). */
import { MARGIN_KIND_NAMES, type MarginKindName } from '../lib/margins';
import { TYPICAL } from './margin-cases';
import type { Margin } from '../lib/types';
import { gaussian, rng } from './reference.mjs';

export interface Problem {
  embeddings: Float32Array;
  weights: Float32Array;
  labels: Int32Array;
  dim: number;
}

/** A unit vector orthogonal to the unit vector u (Gram–Schmidt on a random draw), in float64. */
function orthogonalUnit(u: Float64Array, g: () => number): Float64Array {
  const d = u.length;
  for (;;) {
    const v = new Float64Array(d);
    for (let k = 0; k < d; k++) v[k] = g();
    let dot = 0;
    for (let k = 0; k < d; k++) dot += v[k] * u[k];
    let n = 0;
    for (let k = 0; k < d; k++) {
      v[k] -= dot * u[k];
      n += v[k] * v[k];
    }
    n = Math.sqrt(n);
    if (n > 1e-3) {
      for (let k = 0; k < d; k++) v[k] /= n;
      return v;
    }
  }
}

/**
 * Rows whose target cosine is set exactly (in float64): x_i = r_i·(t_i·ŵ_y + √(1−t_i²)·u_i)
 * with u_i ⟂ ŵ_y random and the norm r_i random in [0.5, 2]. W is Gaussian with random
 * row norms in [0.5, 2]. Returns float64 arrays (for finite differences) and their fp32 copies.
 */
export function problemWithTargetCos(
  n: number,
  c: number,
  d: number,
  targetCos: (i: number) => number,
  seed: number,
  labelOf?: (i: number) => number,
): { x64: Float64Array; w64: Float64Array; labels: Int32Array; dim: number; fp32: Problem } {
  const g = gaussian(rng(seed));
  const r = rng(seed + 17);
  const w64 = new Float64Array(c * d);
  for (let j = 0; j < c; j++) {
    const scale = 0.5 + 1.5 * r();
    let nrm = 0;
    const row = new Float64Array(d);
    for (let k = 0; k < d; k++) {
      row[k] = g();
      nrm += row[k] * row[k];
    }
    nrm = Math.sqrt(nrm);
    for (let k = 0; k < d; k++) w64[j * d + k] = (row[k] / nrm) * scale;
  }
  const labels = new Int32Array(n);
  const x64 = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    const drawn = Math.floor(r() * c);
    const y = labelOf ? labelOf(i) : drawn;
    labels[i] = y;
    const wy = new Float64Array(d);
    let nrm = 0;
    for (let k = 0; k < d; k++) nrm += w64[y * d + k] ** 2;
    nrm = Math.sqrt(nrm);
    for (let k = 0; k < d; k++) wy[k] = w64[y * d + k] / nrm;
    const u = orthogonalUnit(wy, g);
    const t = targetCos(i);
    const st = Math.sqrt(Math.max(0, 1 - t * t));
    const scale = 0.5 + 1.5 * r();
    for (let k = 0; k < d; k++) x64[i * d + k] = scale * (t * wy[k] + st * u[k]);
  }
  return {
    x64,
    w64,
    labels,
    dim: d,
    fp32: { embeddings: Float32Array.from(x64), weights: Float32Array.from(w64), labels, dim: d },
  };
}

/** A kind's typical case: test/margin-cases.ts's TYPICAL parameters (also native/margin_math.h's row). */
export function typical(kind: MarginKindName): Margin {
  return { kind, ...TYPICAL[kind] } as Margin;
}

/** The adaptive margin with a strong θ-dependent term (m1 = 0.2), beside its typical case (the native self-test's adaptive-big). */
export const STRONG_ADAPTIVE: Margin = { kind: 'adaptive', m1: 0.2, m2: 0.3 };

/**
 * Every margin kind with its typical parameters, and STRONG_ADAPTIVE after
 * adaptive (elastic kinds need rowMargins / seed).
 */
export const ALL_KINDS: Margin[] = MARGIN_KIND_NAMES.flatMap((k) => (k === 'adaptive' ? [typical(k), STRONG_ADAPTIVE] : [typical(k)]));

export function label(m: Margin): string {
  const params = Object.entries(m)
    .filter(([k]) => k !== 'kind')
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return params ? `${m.kind}{${params}}` : m.kind;
}

/** Concatenates typed arrays (for global error measures). */
export function cat(...parts: ArrayLike<number>[]): Float64Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Float64Array(n);
  let o = 0;
  for (const p of parts) {
    for (let k = 0; k < p.length; k++) out[o + k] = p[k];
    o += p.length;
  }
  return out;
}
