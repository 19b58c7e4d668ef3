/**
 * The float64 reference against itself: central finite differences on the raw
 * X and W, and the paper's properties of the adaptive margin and the two-class
 * decision boundaries of Table 1 (the latter also through the native backend).
 */
import { describe, expect, test } from 'vitest';
import { lossAndGrad } from '../lib/index';
import type { Margin } from '../lib/types';
import { MARGIN_KINDS } from '../lib/margins';
import { ALL_KINDS, problemWithTargetCos, label, cat, typical } from './helpers';
import {
  adaptiveF,
  isAngular,
  marginedAngle,
  referenceLoss,
  referenceLossValue,
  relMaxErr,
  randomProblem,
  targetLogitRef,
  type RefOptions,
} from './reference.mjs';

/** Central differences of the reference loss with respect to every coordinate of X and W (float64). */
function finiteDifferences(x: Float64Array, w: Float64Array, labels: Int32Array, dim: number, opts: RefOptions, h = 1e-6) {
  const f = () => referenceLossValue({ embeddings: x, weights: w, labels, dim }, opts);
  const diff = (a: Float64Array) => {
    const g = new Float64Array(a.length);
    for (let k = 0; k < a.length; k++) {
      const v = a[k];
      const step = h * Math.max(1, Math.abs(v));
      a[k] = v + step;
      const fp = f();
      a[k] = v - step;
      const fm = f();
      a[k] = v;
      g[k] = (fp - fm) / (2 * step);
    }
    return g;
  };
  return { gx: diff(x), gw: diff(w) };
}

// Target cosines of the 8 rows: a spread over (−1, 1) that, for the angular kinds
// below, puts some rows in the margined branch and some in the fallback branch
// (φ > π), every one at least 0.01 rad from the fallback kink φ = π and far from the
// clamp (|c| ≤ 0.999 ≪ 1 − 1e−7).
const TARGET_COS = [0.75, 0.4, 0.0, -0.3, -0.6, -0.97, -0.999, 0.2];
const N = TARGET_COS.length;
const C = 5;
const D = 4;

interface FdCase {
  name: string;
  opts: RefOptions;
  ignore?: number[];
}

const rowMargins = [0.47, 0.52, 0.55, 0.44, 0.5, 0.58, 0.41, 0.49];
const FD_CASES: FdCase[] = [
  { name: 'softmax s=64', opts: { margin: { kind: 'softmax' }, scale: 64 } },
  { name: 'arcface m=0.5 s=64', opts: { margin: { kind: 'arcface', m: 0.5 }, scale: 64 } },
  { name: 'arcface m=0.5 s=64, fallback off', opts: { margin: { kind: 'arcface', m: 0.5 }, scale: 64, fallback: false } },
  { name: 'cosface m=0.35 s=64', opts: { margin: { kind: 'cosface', m: 0.35 }, scale: 64 } },
  { name: `${label(typical('combined'))} s=64`, opts: { margin: typical('combined'), scale: 64 } },
  { name: 'adaptive defaults s=64', opts: { margin: { kind: 'adaptive' }, scale: 64 } },
  { name: 'adaptive (0.2, 0.3) s=10', opts: { margin: { kind: 'adaptive', m1: 0.2, m2: 0.3 }, scale: 10 } },
  { name: 'adaptive (0.2, 0.3) s=64, fallback off', opts: { margin: { kind: 'adaptive', m1: 0.2, m2: 0.3 }, scale: 64, fallback: false } },
  { name: 'cvm (0.3, 0.2) s=64', opts: { margin: { kind: 'cvm', m1: 0.3, m2: 0.2 }, scale: 64 } },
  {
    name: 'elastic-arc (given margins) s=64',
    opts: { margin: { kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: 1 }, scale: 64, rowMargins },
  },
  {
    name: 'elastic-cos (given margins) s=64',
    opts: { margin: { kind: 'elastic-cos', m: 0.35, sigma: 0.05, seed: 1 }, scale: 64, rowMargins },
  },
  { name: 'adaptive defaults with ignored rows', opts: { margin: { kind: 'adaptive' }, scale: 64 }, ignore: [1, 5] },
];

describe('reference vs central finite differences (float64, raw X and W)', () => {
  for (const cse of FD_CASES) {
    test(cse.name, () => {
      const p = problemWithTargetCos(N, C, D, (i) => TARGET_COS[i], 101);
      for (const i of cse.ignore ?? []) p.labels[i] = -1;
      const m = cse.opts.margin;
      // Guard: the chosen points really are away from the fallback kink, and both branches occur.
      if (isAngular(m.kind) && cse.opts.fallback !== false) {
        const branches = new Set<boolean>();
        TARGET_COS.forEach((c, i) => {
          const { phi } = marginedAngle(m, Math.acos(c), rowMargins[i]);
          expect(Math.abs(phi - Math.PI)).toBeGreaterThan(0.01);
          branches.add(phi > Math.PI);
        });
        expect(branches.size).toBe(2);
      }
      const ref = referenceLoss({ embeddings: p.x64, weights: p.w64, labels: p.labels, dim: D }, cse.opts);
      const fd = finiteDifferences(p.x64, p.w64, p.labels, D, cse.opts);
      // Error of a central difference with h = 1e−6: truncation ~h²·f''' (f''' ~ s³ ≈ 3e5 → ~3e−7)
      // plus rounding ~1e−16·|L|/h ≈ 1e−9, against gradients of order 1–10: 1e−6 relative to
      // the largest gradient entry is a tight bound a wrong derivative cannot meet.
      expect(relMaxErr(ref.gradEmbeddings, fd.gx)).toBeLessThan(1e-6);
      expect(relMaxErr(ref.gradWeights, fd.gw)).toBeLessThan(1e-6);
      // And the gradient is not trivially zero.
      expect(Math.max(...cat(ref.gradEmbeddings).map(Math.abs))).toBeGreaterThan(1e-3);
      if (cse.ignore) {
        for (const i of cse.ignore) {
          expect(ref.perSample[i]).toBe(0);
          for (let k = 0; k < D; k++) expect(ref.gradEmbeddings[i * D + k]).toBe(0);
        }
        expect(ref.validRows).toBe(N - cse.ignore.length);
      }
    });
  }

  test('the margin derivative dz/dc of every kind matches a central difference of z(c)', () => {
    // Every kind without row margins at its typical parameters, and a stronger adaptive term.
    const kinds: Margin[] = [...ALL_KINDS.filter((m) => !MARGIN_KINDS[m.kind].rowMargins), { kind: 'adaptive', m1: 0.5, m2: 0.2 }];
    let checked = 0;
    for (const m of kinds) {
      for (const fallback of [true, false]) {
        for (let c = -0.995; c <= 0.995; c += 0.01) {
          // Skip the fallback kink (±0.002 in c).
          if (isAngular(m.kind) && fallback) {
            const a = marginedAngle(m, Math.acos(c - 0.002)).phi - Math.PI;
            const b = marginedAngle(m, Math.acos(c + 0.002)).phi - Math.PI;
            if (Math.sign(a) !== Math.sign(b)) continue;
          }
          const h = 1e-7;
          const zp = targetLogitRef(m, 64, c + h, { fallback }).z;
          const zm = targetLogitRef(m, 64, c - h, { fallback }).z;
          const dz = targetLogitRef(m, 64, c, { fallback }).dz;
          // dz/dc up to s·(1+m)/sinθ ≈ 64·1.5/0.1 near |c| = 0.995; FD error ~h²·z''' + 1e−16·64/h.
          expect(Math.abs((zp - zm) / (2 * h) - dz), `${label(m)} fallback=${fallback} c=${c}`).toBeLessThan(
            1e-5 * Math.max(1, Math.abs(dz)),
          );
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(2000);
  });
});

describe('paper properties of the adaptive margin', () => {
  const m1 = 0.03;
  const m2 = 0.5;
  test('f(90°) = m1 + m2, f(180°) = m2, f(0°) = m2', () => {
    expect(adaptiveF(Math.PI / 2, m1, m2)).toBeCloseTo(m1 + m2, 14);
    expect(adaptiveF(Math.PI, m1, m2)).toBeCloseTo(m2, 14);
    expect(adaptiveF(0, m1, m2)).toBeCloseTo(m2, 14);
    // f peaks at 90° and is symmetric about it.
    expect(adaptiveF(Math.PI / 2 + 0.3, m1, m2)).toBeCloseTo(adaptiveF(Math.PI / 2 - 0.3, m1, m2), 14);
    expect(adaptiveF(Math.PI / 2 + 0.3, m1, m2)).toBeLessThan(m1 + m2);
    // Through the target logit: at θ = 90° (c = 0) z = s·cos(π/2 + m1 + m2).
    const z = targetLogitRef({ kind: 'adaptive', m1, m2 }, 64, 0).z;
    expect(z).toBeCloseTo(64 * Math.cos(Math.PI / 2 + m1 + m2), 12);
    // At θ → 180° (no fallback; c = −1 is clamped to −1 + 1e−7, θc = π − 4.5e−4) the margin is
    // m2 + m1·sin²θc = m2 + 6e−9: z = s·cos(θc + m2) to 1e−6, far from s·cos(θc + m1 + m2).
    const thetaC = Math.acos(-1 + 1e-7);
    const zPi = targetLogitRef({ kind: 'adaptive', m1, m2 }, 64, -1, { fallback: false }).z;
    expect(Math.abs(zPi - 64 * Math.cos(thetaC + m2))).toBeLessThan(1e-6);
    expect(Math.abs(zPi - 64 * Math.cos(thetaC + m1 + m2))).toBeGreaterThan(0.1);
  });

  const p = randomProblem(6, 9, 7, 11);
  // Spread the target cosines (random ones are all near 0 and would test only one regime).
  const q = problemWithTargetCos(6, 9, 7, (i) => [0.9, 0.5, 0.1, -0.4, -0.8, -0.95][i], 12);
  for (const [name, prob] of [
    ['random', p],
    ['spread cosines', q.fp32],
  ] as const) {
    test(`adaptive with m1 = 0 equals arcface with m = m2 (${name})`, () => {
      const a = referenceLoss(prob, { margin: { kind: 'adaptive', m1: 0, m2: 0.45 } });
      const b = referenceLoss(prob, { margin: { kind: 'arcface', m: 0.45 } });
      expect(a.loss).toBe(b.loss);
      expect(relMaxErr(a.gradEmbeddings, b.gradEmbeddings)).toBe(0);
      expect(relMaxErr(a.gradWeights, b.gradWeights)).toBe(0);
      // The native backend too (same math in fp32: identical code path up to the margin).
      const na = lossAndGrad(prob, { margin: { kind: 'adaptive', m1: 0, m2: 0.45 }, threads: 1 });
      const nb = lossAndGrad(prob, { margin: { kind: 'arcface', m: 0.45 }, threads: 1 });
      expect(Math.abs(na.loss - nb.loss)).toBeLessThanOrEqual(1e-6 * Math.abs(nb.loss));
      expect(relMaxErr(na.gradEmbeddings, nb.gradEmbeddings)).toBeLessThan(1e-6);
      expect(relMaxErr(na.gradWeights, nb.gradWeights)).toBeLessThan(1e-6);
    });

    test(`adaptive with m1 = m2 = 0 equals softmax (${name})`, () => {
      const a = referenceLoss(prob, { margin: { kind: 'adaptive', m1: 0, m2: 0 } });
      const b = referenceLoss(prob, { margin: { kind: 'softmax' } });
      // acos then cos round-trips to ~1e−16 relative: equal to float64 rounding.
      expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-12 * Math.abs(b.loss));
      expect(relMaxErr(a.gradEmbeddings, b.gradEmbeddings)).toBeLessThan(1e-10);
      expect(relMaxErr(a.gradWeights, b.gradWeights)).toBeLessThan(1e-10);
      const na = lossAndGrad(prob, { margin: { kind: 'adaptive', m1: 0, m2: 0 }, threads: 1 });
      const nb = lossAndGrad(prob, { margin: { kind: 'softmax' }, threads: 1 });
      // fp32 acos/cos round trip (~1e−7 relative in c, ×s in z) and dz/dc = s·sinθ/sinθ.
      expect(Math.abs(na.loss - nb.loss)).toBeLessThan(1e-5 * Math.abs(nb.loss));
      expect(relMaxErr(na.gradEmbeddings, nb.gradEmbeddings)).toBeLessThan(1e-4);
      expect(relMaxErr(na.gradWeights, nb.gradWeights)).toBeLessThan(1e-4);
    });
  }
});

describe('Table 1: two-class decision boundaries give equal logits (loss = log 2)', () => {
  // Two unit centres at angle α; x = (cos t, sin t) at θ1 = t from w1 and θ2 = α − t from w2.
  const alpha = 2.0;
  const m = 0.5;
  const m1 = 0.2;
  const m2 = 0.1;
  const cases: { name: string; margin: Margin; boundary: (t: number) => number }[] = [
    { name: 'softmax: c1 = c2', margin: { kind: 'softmax' }, boundary: (t) => Math.cos(t) - Math.cos(alpha - t) },
    { name: 'ArcFace: cos(θ1+m) = c2', margin: { kind: 'arcface', m }, boundary: (t) => Math.cos(t + m) - Math.cos(alpha - t) },
    { name: 'CosFace: c1 − m = c2', margin: { kind: 'cosface', m: 0.35 }, boundary: (t) => Math.cos(t) - 0.35 - Math.cos(alpha - t) },
    {
      name: 'CVM: c1 − c2 − (m1 sin²θ1 + m2 cos²θ2) = 0',
      margin: { kind: 'cvm', m1, m2 },
      boundary: (t) => Math.cos(t) - Math.cos(alpha - t) - (m1 * Math.sin(t) ** 2 + m2 * Math.cos(alpha - t) ** 2),
    },
    {
      name: 'adaptive: cos(θ1 + m1(1−cos²θ1) + m2) = c2',
      margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 },
      boundary: (t) => Math.cos(t + 0.03 * (1 - Math.cos(t) ** 2) + 0.5) - Math.cos(alpha - t),
    },
    {
      name: 'adaptive (strong m1): cos(θ1 + m1(1−cos²θ1) + m2) = c2',
      margin: { kind: 'adaptive', m1: 0.4, m2: 0.2 },
      boundary: (t) => Math.cos(t + 0.4 * (1 - Math.cos(t) ** 2) + 0.2) - Math.cos(alpha - t),
    },
  ];
  const w = new Float32Array([1, 0, Math.cos(alpha), Math.sin(alpha)]);
  const w64 = Float64Array.from([1, 0, Math.cos(alpha), Math.sin(alpha)]);
  const labels = new Int32Array([0]);

  for (const cse of cases) {
    test(cse.name, () => {
      // Bisection for the boundary angle t in (0, α): g(0) > 0 (x on w1), g(α) < 0 (x on w2).
      let lo = 0;
      let hi = alpha;
      expect(cse.boundary(lo)).toBeGreaterThan(0);
      expect(cse.boundary(hi)).toBeLessThan(0);
      for (let it = 0; it < 200; it++) {
        const mid = (lo + hi) / 2;
        if (cse.boundary(mid) > 0) lo = mid;
        else hi = mid;
      }
      const t = (lo + hi) / 2;
      const at = (u: number) => ({ embeddings: Float64Array.from([Math.cos(u), Math.sin(u)]), weights: w64, labels, dim: 2 });
      const ref = referenceLoss(at(t), { margin: cse.margin, scale: 64 });
      expect(Math.abs(ref.loss - Math.LN2)).toBeLessThan(1e-10);
      // Off the boundary: towards w1 the loss drops below log 2, towards w2 it rises above.
      expect(referenceLoss(at(t - 0.01), { margin: cse.margin, scale: 64 }).loss).toBeLessThan(Math.LN2 - 0.01);
      expect(referenceLoss(at(t + 0.01), { margin: cse.margin, scale: 64 }).loss).toBeGreaterThan(Math.LN2 + 0.01);
      // Native backend, fp32 inputs: rounding x to fp32 moves c by ~6e−8, z by s·|dz/dc|·6e−8 ≲ 1e−5,
      // and the loss by half the logit gap: 5e−5 absolute is a safe bound.
      const x32 = new Float32Array([Math.cos(t), Math.sin(t)]);
      const nat = lossAndGrad({ embeddings: x32, weights: w, labels, dim: 2 }, { margin: cse.margin, scale: 64, backend: 'cpu' });
      expect(Math.abs(nat.loss - Math.LN2)).toBeLessThan(5e-5);
      const natOff = lossAndGrad(
        { embeddings: new Float32Array([Math.cos(t - 0.01), Math.sin(t - 0.01)]), weights: w, labels, dim: 2 },
        { margin: cse.margin, scale: 64, backend: 'cpu' },
      );
      expect(natOff.loss).toBeLessThan(Math.LN2 - 0.01);
    });
  }
});
