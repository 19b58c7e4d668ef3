// targetCos: the per-row cos θ_y that forward/lossAndGrad and MarginHead.step
// return, checked against a float64 dot product of the same fp32 inputs.
//
// Tolerance 1e-5 (absolute): the backend forms cos θ_y as an fp32 dot product
// of the normalised rows, d = 65 terms of magnitude ≤ 1, so its rounding error
// is at most about d·2⁻²⁴ ≈ 4e-6 (plus one rounding of each inverse norm).
import { describe, expect, it } from 'vitest';
import { forward, forwardAsync, lossAndGrad, MarginHead } from '../lib/index';
import { problemWithTargetCos } from './helpers';
import { roundBf16 } from './reference.mjs';

const TOL = 1e-5;

/** cos(x_i, w_{y_i}) in float64 from fp32 arrays; NaN for ignored rows, 0 for a zero row. */
function cosRef(x: Float32Array, w: Float32Array, labels: Int32Array, d: number): Float64Array {
  const out = new Float64Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (y < 0) {
      out[i] = NaN;
      continue;
    }
    let dot = 0;
    let nx = 0;
    let nw = 0;
    for (let k = 0; k < d; k++) {
      dot += x[i * d + k] * w[y * d + k];
      nx += x[i * d + k] ** 2;
      nw += w[y * d + k] ** 2;
    }
    out[i] = nx > 0 && nw > 0 ? dot / Math.sqrt(nx * nw) : 0;
  }
  return out;
}

function expectMatches(got: Float32Array, want: Float64Array): void {
  expect(got.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(want[i])) {
      expect(Number.isNaN(got[i]), `row ${i} should be NaN (ignored)`).toBe(true);
      continue;
    }
    worst = Math.max(worst, Math.abs(got[i] - want[i]));
  }
  expect(worst).toBeLessThanOrEqual(TOL);
}

// 41 rows over 3000 classes (several class blocks): cosines from −1 to 1,
// exactly ±1 and 0 included, two ignored rows and a zero embedding.
const N = 41;
const C = 3000;
const D = 65;
const targets = (i: number) => (i === 0 ? 1 : i === 1 ? -1 : i === 2 ? 0 : -1 + (2 * i) / N);
function problem() {
  const p = problemWithTargetCos(N, C, D, targets, 11).fp32;
  p.labels[5] = -1;
  p.labels[17] = -1;
  p.embeddings.fill(0, 9 * D, 10 * D);
  return p;
}

describe('targetCos', () => {
  it('is cos θ_y of every row (NaN for ignored rows, 0 for a zero embedding), forward and backward alike', () => {
    const p = problem();
    const want = cosRef(p.embeddings, p.weights, p.labels, D);
    for (const margin of [{ kind: 'adaptive' as const }, { kind: 'cosface' as const, m: 0.35 }]) {
      const f = forward(p, { margin, threads: 2 });
      const g = lossAndGrad(p, { margin, threads: 2 });
      expectMatches(f.targetCos, want);
      expect(f.targetCos[9]).toBe(0);
      // Both passes compute the same tiles: the same bits.
      expect(Buffer.from(g.targetCos.buffer).equals(Buffer.from(f.targetCos.buffer))).toBe(true);
    }
  });

  it('does not depend on the margin, the thread count or the SIMD level', () => {
    const p = problem();
    const want = cosRef(p.embeddings, p.weights, p.labels, D);
    for (const simd of ['portable', 'auto'] as const) {
      for (const threads of [1, 2]) {
        expectMatches(forward(p, { margin: { kind: 'arcface', m: 0.5 }, threads, simd }).targetCos, want);
      }
    }
  });

  it('uses the bf16-rounded centres when weightsDtype is bfloat16', () => {
    const p = problem();
    const want = cosRef(p.embeddings, roundBf16(p.weights), p.labels, D);
    expectMatches(forward(p, { margin: { kind: 'adaptive' }, weightsDtype: 'bfloat16', threads: 2 }).targetCos, want);
  });

  it('async equals sync', async () => {
    const p = problem();
    const a = await forwardAsync(p, { margin: { kind: 'adaptive' }, threads: 2 });
    const b = forward(p, { margin: { kind: 'adaptive' }, threads: 2 });
    expect(Buffer.from(a.targetCos.buffer).equals(Buffer.from(b.targetCos.buffer))).toBe(true);
  });
});

describe('MarginHead.step targetCos', () => {
  it('is cos θ_y against the centres before the update, with class sampling and ignored rows', () => {
    const classes = 2000;
    const head = new MarginHead({
      classes,
      dim: D,
      margin: { kind: 'adaptive' },
      seed: 3,
      sampleRate: 0.25,
      optimizer: { lr: 0.5, momentum: 0.9 },
      threads: 2,
    });
    const p = problemWithTargetCos(N, classes, D, targets, 12).fp32;
    p.labels[3] = -1;
    for (let step = 0; step < 2; step++) {
      const before = head.getWeights();
      const r = head.step(p.embeddings, p.labels);
      expectMatches(r.targetCos, cosRef(p.embeddings, before, p.labels, D));
      // The update moved the centres, so a second step sees other cosines.
      expect(head.getWeights().some((v, k) => v !== before[k])).toBe(true);
    }
  });
});
