/**
 * The native CPU backend against the float64 reference (test/reference.mjs) for
 * every margin kind, on random and on adversarial inputs, for every SIMD level
 * the CPU supports, thread counts, tile-cache sizes, bf16 centres and gradient
 * filtering.
 *
 * Tolerances (why these numbers):
 *  - Cosines: fp32 dot products of unit vectors over d ≤ 513 terms carry an error
 *    δc ≲ 1e−7…3e−7; the logit error is s·δc ≲ 2e−5 at s = 64, and LSE − z_y adds
 *    fp32 rounding of values up to ~100 (≈ 1e−5). Hence the per-row loss and the
 *    mean loss are checked to LOSS_TOL·max(1, |ref|) with LOSS_TOL = 5e−5.
 *  - Gradients: max_k |g_k − g_ref,k| / max_k |g_ref,k| ≤ GRAD_TOL = 1e−4. Each
 *    g_ij = (p_ij − δ)·dz/dc/V carries a relative error ~s·δc (~1e−5) and the fp32
 *    sums over C ≤ 3000 classes and N rows add ~1e−6; measured errors are ≲ 3e−6,
 *    while a wrong derivative factor (e.g. dropping the adaptive φ' = 1 + 2m1 sinθ
 *    cosθ, a 3% change at m1 = 0.03) gives errors ≳ 1e−2.
 *  - Results that must be exactly zero (ignored rows, zero vectors, all rows
 *    ignored, C = 1) are checked for exact zeros.
 */
import { describe, expect, test } from 'vitest';
import { ArgumentError, deviceInfo, lossAndGrad, forward } from '../lib/index';
import { native } from '../lib/native';
import type { LossOptions, LossAndGradResult, Margin } from '../lib/types';
import { MARGIN_KINDS, nativeMarginParams } from '../lib/margins';
import { ALL_KINDS, cat, label, problemWithTargetCos, typical, type Problem } from './helpers';
import { PAPER } from './margin-cases';
import {
  COS_EPS_FP32,
  allFinite,
  isAngular,
  marginedAngle,
  maxAbs,
  randomProblem,
  referenceLoss,
  relMaxErr,
  roundBf16,
  targetLogitRef,
  type RefResult,
} from './reference.mjs';

const LOSS_TOL = 5e-5;
const GRAD_TOL = 1e-4;

const SIMD_ORDER = ['portable', 'avx2', 'avx512'] as const;
const BEST_SIMD = deviceInfo().cpu.simd;
const SIMD_LEVELS = SIMD_ORDER.slice(0, SIMD_ORDER.indexOf(BEST_SIMD) + 1);

interface Tol {
  loss?: number;
  grad?: number;
}

function expectAllFinite(r: LossAndGradResult): void {
  expect(Number.isFinite(r.loss)).toBe(true);
  expect(allFinite(r.perSample)).toBe(true);
  expect(allFinite(r.gradEmbeddings)).toBe(true);
  expect(allFinite(r.gradWeights)).toBe(true);
}

/** Runs the native backend and the reference on the same problem and checks them against each other. */
function check(
  prob: Problem,
  opts: LossOptions,
  tol: Tol = {},
  refExtra: { cosEps?: number; weights?: Float32Array } = {},
): { nat: LossAndGradResult; ref: RefResult; errX: number; errW: number } {
  const nat = lossAndGrad(prob, { backend: 'cpu', ...opts });
  expectAllFinite(nat);
  expect(nat.backend).toBe('cpu');
  const ref = referenceLoss(
    { ...prob, weights: refExtra.weights ?? prob.weights },
    { margin: opts.margin, scale: opts.scale, fallback: opts.fallback, rowMargins: nat.margins, cosEps: refExtra.cosEps },
  );
  const lossTol = tol.loss ?? LOSS_TOL;
  const gradTol = tol.grad ?? GRAD_TOL;
  expect(nat.validRows).toBe(ref.validRows);
  expect(Math.abs(nat.loss - ref.loss)).toBeLessThanOrEqual(lossTol * Math.max(1, Math.abs(ref.loss)));
  for (let i = 0; i < ref.perSample.length; i++) {
    expect(Math.abs(nat.perSample[i] - ref.perSample[i]), `perSample[${i}]`).toBeLessThanOrEqual(
      lossTol * Math.max(1, Math.abs(ref.perSample[i])),
    );
  }
  const errX = relMaxErr(nat.gradEmbeddings, ref.gradEmbeddings);
  const errW = relMaxErr(nat.gradWeights, ref.gradWeights);
  if (process.env.MS_TEST_VERBOSE) console.log(label(opts.margin), { errX, errW, loss: nat.loss, ref: ref.loss });
  expect(errX).toBeLessThanOrEqual(gradTol);
  expect(errW).toBeLessThanOrEqual(gradTol);
  return { nat, ref, errX, errW };
}

/** Target cosines spread over (−1, 1), nudged 0.02 rad away from each kind's fallback kink. */
function spreadCos(m: Margin, n: number): (i: number) => number {
  return (i) => {
    let c = -0.995 + (1.99 * i) / Math.max(1, n - 1);
    if (isAngular(m.kind)) {
      const rowM = m.kind === 'elastic-arc' ? m.m : 0;
      for (let it = 0; it < 200; it++) {
        const a = marginedAngle(m, Math.acos(Math.max(-1, c - 0.03)), rowM).phi - Math.PI;
        const b = marginedAngle(m, Math.acos(Math.min(1, c + 0.03)), rowM).phi - Math.PI;
        if (Math.sign(a) === Math.sign(b)) break;
        c += 0.01;
      }
    }
    return c;
  };
}

/**
 * Rows close to their centre: target cosine 0.93–0.98, every other cosine ≲ 0.4 (d = 64): p_y ≈ 1 at
 * s = 64. Labels are 0…n−1 (all in the first class block).
 */
function confident(n: number, c: number, d: number, seed: number): Problem {
  return problemWithTargetCos(n, c, d, (i) => 0.93 + (0.05 * ((i * 7) % 10)) / 10, seed, (i) => i).fp32;
}

describe('every margin kind vs the float64 reference', () => {
  const rand = randomProblem(24, 200, 40, 1);
  for (const m of ALL_KINDS) {
    for (const scale of [64, 16]) {
      test(`${label(m)} s=${scale}, random inputs`, () => {
        const { nat } = check(rand, { margin: m, scale });
        expect(nat.loss).toBeGreaterThan(0);
        if (m.kind.startsWith('elastic')) expect(nat.margins?.length).toBe(24);
      });
    }
    // Random Gaussian inputs have every cosine near 0; this spreads the target cosines
    // over (−1, 1), so the angular kinds run both the margined and the fallback branch.
    // Elastic-arc rows have margins m ± a few σ: the kink moves by ≲ 0.2, so σ = 0.01 here.
    test(`${label(m)} s=64, target cosines spread over (−1, 1)`, () => {
      const mm: Margin = m.kind === 'elastic-arc' ? { ...m, sigma: 0.01 } : m;
      const q = problemWithTargetCos(40, 60, 24, spreadCos(mm, 40), 2);
      const { nat } = check(q.fp32, { margin: mm, scale: 64 });
      if (isAngular(mm.kind)) {
        // Both branches really ran.
        const phis = Array.from({ length: 40 }, (_, i) => marginedAngle(mm, Math.acos(spreadCos(mm, 40)(i)), nat.margins?.[i] ?? 0).phi);
        expect(phis.some((p) => p > Math.PI)).toBe(true);
        expect(phis.some((p) => p < Math.PI)).toBe(true);
      }
    });
  }

  test('the tolerances discriminate: the adaptive term m1 = 0.03 (vs ArcFace) or a 10% change of m1 fails them', () => {
    const m: Margin = { kind: 'adaptive', m1: 0.03, m2: 0.5 };
    const q = problemWithTargetCos(24, 60, 24, spreadCos(m, 24), 3).fp32;
    const nat = lossAndGrad(q, { margin: m });
    for (const wrong of [
      { kind: 'arcface', m: 0.5 },
      { kind: 'adaptive', m1: 0.033, m2: 0.5 },
    ] as Margin[]) {
      const ref = referenceLoss(q, { margin: wrong });
      const e = Math.max(relMaxErr(nat.gradEmbeddings, ref.gradEmbeddings), relMaxErr(nat.gradWeights, ref.gradWeights));
      expect(e, label(wrong)).toBeGreaterThan(10 * GRAD_TOL);
      expect(Math.abs(nat.loss - ref.loss)).toBeGreaterThan(10 * LOSS_TOL * ref.loss);
    }
  });

  test('the shared header (_targetLogit) matches the reference margin on a grid of cosines', () => {
    // Every kind without row margins at its typical and its paper's parameters, and a strong adaptive term.
    const kinds: Margin[] = [];
    for (const m of ALL_KINDS.filter((k) => !MARGIN_KINDS[k.kind].rowMargins)) {
      kinds.push(m);
      const paper = { kind: m.kind, ...PAPER[m.kind] } as Margin;
      if (label(paper) !== label(m) && !kinds.some((k) => label(k) === label(paper))) kinds.push(paper);
    }
    kinds.push({ kind: 'adaptive', m1: 0.4, m2: 0.2 });
    expect(kinds.map((m) => m.kind)).toContain('combined');
    let n = 0;
    for (const m of kinds) {
      const params = nativeMarginParams(m);
      for (const fallback of [true, false]) {
        for (let k = -999; k <= 999; k += 7) {
          const c = Math.fround(k / 1000);
          if (isAngular(m.kind) && fallback) {
            const a = marginedAngle(m, Math.acos(c - 0.003)).phi - Math.PI;
            const b = marginedAngle(m, Math.acos(c + 0.003)).phi - Math.PI;
            if (Math.sign(a) !== Math.sign(b)) continue; // the kink: fp32 may pick the other branch
          }
          const got = native._targetLogit({ scale: 64, ...params, fallback }, c, 0);
          const want = targetLogitRef(m, 64, c, { fallback });
          // fp32 acos/cos/sin: ~1e−7 relative, amplified by 1/sinθ (≤ 22 at |c| ≤ 0.999) in dz.
          expect(Math.abs(got.z - want.z), `${label(m)} c=${c} z`).toBeLessThan(64 * 2e-6);
          expect(Math.abs(got.dz - want.dz), `${label(m)} c=${c} dz`).toBeLessThan(1e-4 * Math.max(64, Math.abs(want.dz)));
          n++;
        }
      }
    }
    expect(n).toBeGreaterThan(3000);
  });
});

describe('adversarial inputs', () => {
  test('cos exactly ±1: x parallel / antiparallel to its centre, every kind, fallback on and off', () => {
    const p = randomProblem(12, 30, 20, 3);
    const x = new Float32Array(p.embeddings);
    // Rows 0–3 parallel (x = 2·w_y, exact in fp32), rows 4–7 antiparallel (x = −0.5·w_y).
    for (let i = 0; i < 8; i++) {
      const y = p.labels[i];
      const a = i < 4 ? 2 : -0.5;
      for (let k = 0; k < 20; k++) x[i * 20 + k] = a * p.weights[y * 20 + k];
    }
    const prob = { ...p, embeddings: x };
    for (const m of ALL_KINDS) {
      for (const fallback of [true, false]) {
        // The fp32 backend clamps at 1 − 2⁻²³ (1 − 1e−7 is not an fp32 number): the reference
        // uses the same bound, otherwise dz/dc ∝ 1/sinθ differs by 9% at the clamp.
        // At the clamp dz/dc reaches s·sin m/sinθc ≈ 6e4; its component along x̂ is projected out by
        // the normalisation, leaving fp32 cancellation residue ≈ 6e4·1e−7/V: GRAD_TOL·10 here.
        const { nat } = check(prob, { margin: m, scale: 64, fallback }, { grad: 1e-3 }, { cosEps: COS_EPS_FP32 });
        // Parallel rows are (for the additive-cosine kinds) confident; antiparallel rows lose.
        expect(nat.perSample[5]).toBeGreaterThan(nat.perSample[1]);
      }
    }
  });

  test('d = 1: every cosine is ±1 and the gradient through the normalisation is 0', () => {
    const p = randomProblem(9, 4, 1, 4);
    for (const m of ALL_KINDS) {
      const nat = lossAndGrad(p, { margin: m, scale: 64 });
      expectAllFinite(nat);
      const ref = referenceLoss(p, { margin: m, scale: 64, rowMargins: nat.margins, cosEps: COS_EPS_FP32 });
      expect(Math.abs(nat.loss - ref.loss)).toBeLessThanOrEqual(LOSS_TOL * Math.max(1, ref.loss));
      expect(maxAbs(ref.gradEmbeddings)).toBe(0);
      expect(maxAbs(ref.gradWeights)).toBe(0);
      // The gradient before the normalisation is entirely along x̂ (or ŵ) and is removed by an fp32
      // subtraction. Its size: |dz/dc| ≤ 1.6·s/sinθc (|sin φ·φ'| ≤ 1.4 here, CVM ≤ 1 + 2·0.3) with
      // sinθc = 4.9e−4 at the fp32 clamp, ≤ 2 such terms per row over V rows, N rows per class; the
      // residue is a few fp32 ulps (≤ 1e−6 relative) of it, divided by the norm.
      const G = (1.6 * 64) / Math.sqrt(1 - (1 - COS_EPS_FP32) ** 2);
      const V = 9;
      const minNorm = (a: Float32Array) => Math.min(...Array.from(a, Math.abs));
      expect(maxAbs(nat.gradEmbeddings)).toBeLessThan((1e-6 * 2 * G) / V / minNorm(p.embeddings));
      expect(maxAbs(nat.gradWeights)).toBeLessThan((1e-6 * 2 * G * 9) / V / minNorm(p.weights));
    }
  });

  test('zero embedding row and zero weight rows (one of them a target): finite, zero gradient rows', () => {
    const p = randomProblem(10, 40, 24, 5);
    const x = new Float32Array(p.embeddings);
    const w = new Float32Array(p.weights);
    x.fill(0, 2 * 24, 3 * 24); // row 2 of X
    const targeted = p.labels[4];
    w.fill(0, targeted * 24, (targeted + 1) * 24); // the centre of row 4's class
    const untargeted = [...Array(40).keys()].find((j) => !p.labels.includes(j))!;
    w.fill(0, untargeted * 24, (untargeted + 1) * 24);
    const prob = { ...p, embeddings: x, weights: w };
    for (const m of ALL_KINDS) {
      const { nat, ref } = check(prob, { margin: m, scale: 64 });
      // Exactly zero (±0): no direction, no gradient.
      expect(maxAbs(nat.gradEmbeddings.subarray(2 * 24, 3 * 24))).toBe(0);
      expect(maxAbs(nat.gradWeights.subarray(targeted * 24, (targeted + 1) * 24))).toBe(0);
      expect(maxAbs(nat.gradWeights.subarray(untargeted * 24, (untargeted + 1) * 24))).toBe(0);
      expect(maxAbs(nat.gradEmbeddings)).toBeGreaterThan(0);
      // Row 2 sees every cosine = 0: its loss is log C − (z_y(0) − 0) for the non-CVM kinds.
      expect(nat.perSample[2]).toBeCloseTo(ref.perSample[2], 4);
    }
  });

  test('tiny but non-zero norms (1e−10) are normalised like any other vector', () => {
    const p = randomProblem(8, 20, 16, 6);
    const x = new Float32Array(p.embeddings);
    for (let k = 0; k < 16; k++) x[16 + k] *= 1e-10;
    const w = new Float32Array(p.weights);
    for (let k = 0; k < 16; k++) w[3 * 16 + k] *= 1e-10;
    check({ ...p, embeddings: x, weights: w }, { margin: { kind: 'adaptive' } });
  });

  test('many classes: C = 3000 spans several class blocks (N = 16 → 256-class blocks)', () => {
    const p = randomProblem(16, 3000, 64, 7);
    for (const m of (['adaptive', 'cvm', 'cosface'] as const).map(typical)) {
      const { nat } = check(p, { margin: m, scale: 64 });
      expect(nat.totalBlocks).toBeGreaterThanOrEqual(3);
      expect(nat.skippedBlocks).toBe(0);
    }
  });

  test('many classes with N = 50 (ldt = 64) and N = 200 (ldt = 208, 72-class blocks)', () => {
    for (const [n, c] of [
      [50, 2000],
      [200, 700],
    ]) {
      const p = randomProblem(n, c, 24, 8 + n);
      const { nat } = check(p, { margin: { kind: 'arcface', m: 0.5 }, scale: 64 });
      expect(nat.totalBlocks).toBeGreaterThan(1);
    }
  });

  test('confident rows at s = 64 mixed with unconfident ones (1 − p_y from ~1 down to 1e−14)', () => {
    // Target cosines 0.3…0.9 over 24 rows and 500 classes: row losses from ~5 down to 1e−14.
    const p = problemWithTargetCos(24, 500, 64, (i) => 0.3 + (0.6 * i) / 23, 9).fp32;
    for (const m of ALL_KINDS) {
      const { ref } = check(p, { margin: m, scale: 64 });
      if (m.kind === 'softmax') {
        expect(Math.min(...ref.perSample)).toBeLessThan(1e-8);
        expect(Math.max(...ref.perSample)).toBeGreaterThan(1);
      }
    }
  });

  // Regression (found by this suite; fixed by carrying the target-free sum, see target_terms in
  // native/margin_math.h). The backend used to store each
  // row's log-sum-exp as one fp32 number LSE ≈ z_y ≈ 30…64 and form the target term as
  // p_y − 1 = exp(z_y − LSE) − 1. LSE is rounded to ulp(64) ≈ 7.6e−6, so for a row with
  // 1 − p_y ≲ 4e−6 the term is exactly 0 (and perSample is 0), and for 1 − p_y ~ 1e−4 it is off by
  // a few %. The row's gradient then lacks its pull towards w_y: relative error 40–85% per row on an
  // all-confident batch (where most rows are late in training). Absolute errors are tiny
  // (≤ (1 − p_y)·|dz/dc|/V), which is why the mixed-batch test above passes. Fix: carry
  // Σ_{j≠y} exp(z_j − m) (or log l and m separately) to the backward and use p_y − 1 = −Σ_{j≠y} p_j,
  // and perSample = log1p(·); the reference does exactly this. Reproduction:
  //   p = problemWithTargetCos(24, 500, 64, i => 0.3 + 0.6*i/23, 9).fp32, softmax s = 64:
  //   row 14 (1 − p_y = 2e−9): native perSample 0, gradient row error 68%.
  test('an all-confident batch keeps its target-term gradient (1 − p_y in [1e−9, 1e−4])', () => {
    const p = problemWithTargetCos(16, 500, 64, (i) => 0.5 + (0.25 * i) / 15, 9).fp32;
    const m: Margin = { kind: 'softmax' };
    const nat = lossAndGrad(p, { margin: m, scale: 64 });
    const ref = referenceLoss(p, { margin: m, scale: 64 });
    expectAllFinite(nat);
    expect(Math.max(...ref.perSample)).toBeLessThan(1e-3);
    expect(Math.abs(nat.loss - ref.loss)).toBeLessThan(1e-5);
    // 10× looser than GRAD_TOL·100: a per-row error of 1% still fails only a gross loss of precision.
    for (let i = 0; i < 16; i++) {
      const e = relMaxErr(nat.gradEmbeddings.subarray(i * 64, (i + 1) * 64), ref.gradEmbeddings.subarray(i * 64, (i + 1) * 64));
      expect(e, `row ${i}: 1 − p_y ≈ ${ref.perSample[i].toExponential(1)}`).toBeLessThan(1e-2);
    }
  });

  test('θ + f(θ) > π: the fallback branch (on) and the raw margined logit (off), no NaN either way', () => {
    // Target cosines in [−0.999, −0.9]: θ ∈ [2.69, 3.10] rad, so θ + 0.5 > π for every angular kind here.
    const q = problemWithTargetCos(12, 30, 16, (i) => -0.999 + (0.099 * i) / 11, 10);
    for (const m of ALL_KINDS.filter((k) => isAngular(k.kind))) {
      const on = check(q.fp32, { margin: m, scale: 64, fallback: true }).nat;
      const off = check(q.fp32, { margin: m, scale: 64, fallback: false }).nat;
      // Past φ = π, cos φ rises again as θ grows while the fallback keeps decreasing (c − m3 − m2 sin m2
      // < cos φ there): the fallback's target logit is lower, its loss higher — the point of the rule.
      expect(on.loss).toBeGreaterThan(off.loss);
    }
  });

  test('ignored rows: zero loss and zero gradient for them, the mean over the others', () => {
    const p = randomProblem(20, 50, 16, 11);
    const labels = new Int32Array(p.labels);
    for (const i of [0, 3, 4, 19]) labels[i] = -1;
    for (const m of ALL_KINDS) {
      const { nat } = check({ ...p, labels }, { margin: m, scale: 64 });
      expect(nat.validRows).toBe(16);
      for (const i of [0, 3, 4, 19]) {
        expect(nat.perSample[i]).toBe(0);
        for (let k = 0; k < 16; k++) expect(nat.gradEmbeddings[i * 16 + k]).toBe(0);
      }
      let mean = 0;
      for (let i = 0; i < 20; i++) mean += nat.perSample[i];
      expect(nat.loss).toBeCloseTo(mean / 16, 4);
    }
  });

  test('all rows ignored: loss 0, every output exactly 0', () => {
    const p = randomProblem(6, 30, 16, 12);
    const labels = new Int32Array(6).fill(-1);
    for (const m of ALL_KINDS) {
      const r = lossAndGrad({ ...p, labels }, { margin: m });
      expect(r.loss).toBe(0);
      expect(r.validRows).toBe(0);
      expect(maxAbs(r.perSample)).toBe(0);
      expect(maxAbs(r.gradEmbeddings)).toBe(0);
      expect(maxAbs(r.gradWeights)).toBe(0);
      expect(forward({ ...p, labels }, { margin: m }).loss).toBe(0);
    }
  });

  test('C = 1: the target is the only class, loss 0 and zero gradients', () => {
    const p = randomProblem(5, 1, 12, 13);
    for (const m of ALL_KINDS) {
      const { nat } = check(p, { margin: m, scale: 64 });
      expect(nat.loss).toBe(0);
      expect(maxAbs(nat.gradEmbeddings)).toBe(0);
      expect(maxAbs(nat.gradWeights)).toBe(0);
    }
  });

  test('N = 1', () => {
    const p = randomProblem(1, 70, 20, 14);
    for (const m of ALL_KINDS) check(p, { margin: m, scale: 64 });
  });

  test('N = 0: empty batch gives loss 0 and a zero weight gradient', () => {
    const p = randomProblem(0, 10, 8, 15);
    const r = lossAndGrad(p, { margin: { kind: 'adaptive' } });
    expect(r.loss).toBe(0);
    expect(r.validRows).toBe(0);
    expect(r.gradEmbeddings.length).toBe(0);
    expect(r.gradWeights.length).toBe(80);
    expect(maxAbs(r.gradWeights)).toBe(0);
  });

  for (const d of [33, 513, 17, 3]) {
    test(`d = ${d} (not a multiple of 16)`, () => {
      const p = randomProblem(13, d > 100 ? 90 : 150, d, 16 + d);
      for (const m of ALL_KINDS) check(p, { margin: m, scale: 64 });
    });
  }
});

describe('execution options', () => {
  test(`every SIMD level the CPU supports (${SIMD_LEVELS.join(', ')}) matches the reference and the others`, () => {
    expect(SIMD_LEVELS.length).toBeGreaterThanOrEqual(1);
    // native.info(width) reports which kernels a request resolves to.
    expect(native.info(4).cpu.simd).toBe('portable');
    for (const [i, lvl] of SIMD_LEVELS.entries()) expect(native.info([4, 8, 16][i]).cpu.simd).toBe(lvl);
    const p = randomProblem(21, 700, 37, 17);
    for (const m of (['adaptive', 'cvm', 'elastic-cos'] as const).map(typical)) {
      const results = SIMD_LEVELS.map((simd) => check(p, { margin: m, scale: 64, simd }).nat);
      const auto = check(p, { margin: m, scale: 64, simd: 'auto' }).nat;
      for (const r of results) {
        expect(Math.abs(r.loss - auto.loss)).toBeLessThanOrEqual(LOSS_TOL * auto.loss);
        expect(relMaxErr(r.gradEmbeddings, auto.gradEmbeddings)).toBeLessThan(GRAD_TOL);
        expect(relMaxErr(r.gradWeights, auto.gradWeights)).toBeLessThan(GRAD_TOL);
      }
      // 'auto' is the best level: bit-identical to asking for it by name.
      const best = results[results.length - 1];
      expect(auto.loss).toBe(best.loss);
      expect(Buffer.compare(Buffer.from(auto.gradWeights.buffer), Buffer.from(best.gradWeights.buffer))).toBe(0);
    }
  });

  test('threads 1 vs 2 (several blocks per thread) agree with each other and the reference', () => {
    const p = randomProblem(16, 2500, 32, 18);
    const m: Margin = { kind: 'adaptive' };
    const t1 = check(p, { margin: m, threads: 1 }).nat;
    const t2 = check(p, { margin: m, threads: 2 }).nat;
    const t3 = check(p, { margin: m, threads: 3 }).nat; // more threads than cores
    for (const r of [t2, t3]) {
      expect(Math.abs(r.loss - t1.loss)).toBeLessThanOrEqual(LOSS_TOL * t1.loss);
      expect(relMaxErr(r.gradEmbeddings, t1.gradEmbeddings)).toBeLessThan(GRAD_TOL);
      expect(relMaxErr(r.gradWeights, t1.gradWeights)).toBeLessThan(GRAD_TOL);
    }
    // More threads than blocks: clamped, still right.
    check(randomProblem(4, 10, 8, 19), { margin: m, threads: 64 });
  });

  test('workspaceBytes 0 (always recompute) vs default (cache) vs one tile (partial cache)', () => {
    const p = randomProblem(16, 2000, 48, 20);
    const m: Margin = { kind: 'combined', m1: 0.9, m2: 0.4, m3: 0.15 };
    const base = check(p, { margin: m, threads: 2 }).nat;
    for (const workspaceBytes of [0, 256 * 16 * 4 * 2 + 100, 1 << 30]) {
      const r = check(p, { margin: m, threads: 2, workspaceBytes }).nat;
      // Same products, same order: agreement to fp32 rounding (in practice bit-identical).
      expect(Math.abs(r.loss - base.loss)).toBeLessThanOrEqual(1e-6 * base.loss);
      expect(relMaxErr(r.gradEmbeddings, base.gradEmbeddings)).toBeLessThan(1e-6);
      expect(relMaxErr(r.gradWeights, base.gradWeights)).toBeLessThan(1e-6);
    }
  });

  test("weightsDtype 'bfloat16' rounds the centres (bf16 products: test/bf16-cpu.test.ts)", () => {
    const p = randomProblem(16, 600, 40, 21);
    const wb = roundBf16(p.weights);
    // The rounding is real: a few values differ, and in their last 16 bits are zero.
    const u = new Uint32Array(wb.buffer);
    expect(u.every((v) => (v & 0xffff) === 0)).toBe(true);
    expect(wb.some((v, k) => v !== p.weights[k])).toBe(true);
    for (const m of (['adaptive', 'arcface', 'cvm'] as const).map(typical)) {
      // The products take bf16 operands too (X̂ and G are rounded): the reference on the
      // rounded centres holds to the bf16 bound (s·u per row, a few u for the gradients).
      const bf = check(p, { margin: m, weightsDtype: 'bfloat16' }, { loss: 64 * 2 ** -8 / 50, grad: 4 * 2 ** -8 }, { weights: wb }).nat;
      const f32 = lossAndGrad(p, { margin: m, weightsDtype: 'float32' });
      // bf16 (8-bit mantissa) moves each cosine by ~1e−3·|w|-relative: against the unrounded weights the
      // gradients differ by ~5e−3, far outside GRAD_TOL, so the rounding really happened.
      expect(relMaxErr(bf.gradWeights, f32.gradWeights)).toBeGreaterThan(10 * GRAD_TOL);
      expect(bf.loss).not.toBe(f32.loss);
      // The same weights already in bf16 give the same result either way.
      const again = lossAndGrad({ ...p, weights: wb }, { margin: m, weightsDtype: 'bfloat16' });
      const plain = lossAndGrad({ ...p, weights: wb }, { margin: m, weightsDtype: 'float32' });
      expect(again.loss).toBe(bf.loss);
      expect(relMaxErr(plain.gradWeights, again.gradWeights)).toBeLessThan(4 * 2 ** -8);
    }
  });

  test('gradFilter on a confident problem: blocks skipped, loss unchanged, gradient error within the stated bound', () => {
    // 16 confident rows, 3000 classes (12 blocks of 256); every target in block 0.
    const p = confident(16, 3000, 64, 22);
    const m: Margin = { kind: 'adaptive' };
    const exact = lossAndGrad(p, { margin: m, threads: 2 });
    const thr = 1e-6;
    const filt = lossAndGrad(p, { margin: m, threads: 2, gradFilter: thr });
    expectAllFinite(filt);
    expect(exact.skippedBlocks).toBe(0);
    expect(filt.totalBlocks).toBe(exact.totalBlocks);
    expect(filt.skippedBlocks).toBeGreaterThan(0);
    expect(filt.skippedBlocks).toBeLessThan(filt.totalBlocks); // the target block is never skipped
    // The forward pass is untouched.
    expect(filt.loss).toBe(exact.loss);
    expect(Array.from(filt.perSample)).toEqual(Array.from(exact.perSample));
    // Error bound. A skipped block has every non-target p_ij < thr, so |g_ij| < thr·s/V (dz/dc = s for
    // non-target logits here). Dropped from dX̂_i: Σ_j |g_ij|·‖ŵ_j‖ ≤ C·thr·s/V; from dŴ_j: Σ_i |g_ij| ≤
    // N·thr·s/V; the normalisation divides by the norm (and the projection does not increase it).
    const s = 64;
    const V = 16;
    const d = 64;
    const norms = (a: Float32Array, rows: number) =>
      Array.from({ length: rows }, (_, r) => Math.hypot(...a.subarray(r * d, (r + 1) * d)));
    const minNx = Math.min(...norms(p.embeddings, 16));
    const minNw = Math.min(...norms(p.weights, 3000));
    const boundX = (3000 * thr * s) / V / minNx;
    const boundW = (16 * thr * s) / V / minNw;
    let errX = 0;
    for (let i = 0; i < 16; i++) {
      let e = 0;
      for (let k = 0; k < d; k++) e += (filt.gradEmbeddings[i * d + k] - exact.gradEmbeddings[i * d + k]) ** 2;
      errX = Math.max(errX, Math.sqrt(e));
    }
    let errW = 0;
    for (let j = 0; j < 3000; j++) {
      let e = 0;
      for (let k = 0; k < d; k++) e += (filt.gradWeights[j * d + k] - exact.gradWeights[j * d + k]) ** 2;
      errW = Math.max(errW, Math.sqrt(e));
    }
    // Row-wise L2 errors: 1e−6·(rows' fp32 noise) slack on top of the bound.
    expect(errX).toBeLessThanOrEqual(boundX + 1e-6 * maxAbs(exact.gradEmbeddings));
    expect(errW).toBeLessThanOrEqual(boundW + 1e-6 * maxAbs(exact.gradWeights));
    // Measured (threshold 1e−6, this problem): 9 of 12 blocks skipped; largest row error 2.0e−6 in dX
    // (bound 2.2e−2) and 9.9e−7 in dW (bound 1.3e−4). Relative to the largest entry of this batch's
    // gradient — itself tiny (~1e−5), every row being confident — that is 23% (dX) and 7% (dW): gradient
    // filtering only ever skips blocks on (nearly) all-confident batches, where the whole gradient is small.
    // On random or mixed batches (tested below and in the benchmark) nothing is skipped up to 1e−3.
    expect(errX).toBeGreaterThan(0);
    const relX = relMaxErr(filt.gradEmbeddings, exact.gradEmbeddings);
    const relW = relMaxErr(filt.gradWeights, exact.gradWeights);
    if (process.env.MS_TEST_VERBOSE) console.log('gradFilter', { skipped: filt.skippedBlocks, total: filt.totalBlocks, errX, boundX, errW, boundW, relX, relW });
    // Skipped blocks hold no target: every target class keeps a non-zero gradient.
    for (let i = 0; i < 16; i++) {
      const y = p.labels[i];
      expect(maxAbs(filt.gradWeights.subarray(y * d, (y + 1) * d))).toBeGreaterThan(0);
    }
  });

  test('gradFilter on a non-confident problem skips nothing and changes nothing', () => {
    const p = randomProblem(16, 1000, 16, 23);
    const exact = lossAndGrad(p, { margin: { kind: 'softmax' }, scale: 4, threads: 1 });
    const filt = lossAndGrad(p, { margin: { kind: 'softmax' }, scale: 4, threads: 1, gradFilter: 1e-6 });
    expect(filt.skippedBlocks).toBe(0);
    expect(Buffer.compare(Buffer.from(filt.gradWeights.buffer), Buffer.from(exact.gradWeights.buffer))).toBe(0);
    expect(Buffer.compare(Buffer.from(filt.gradEmbeddings.buffer), Buffer.from(exact.gradEmbeddings.buffer))).toBe(0);
  });

  test('forward() equals the loss part of lossAndGrad()', () => {
    const p = randomProblem(16, 900, 32, 24);
    for (const m of ALL_KINDS) {
      const a = forward(p, { margin: m, threads: 2 });
      const b = lossAndGrad(p, { margin: m, threads: 2 });
      expect(a.loss).toBe(b.loss);
      expect(Array.from(a.perSample)).toEqual(Array.from(b.perSample));
      expect(a.validRows).toBe(b.validRows);
      expect(a.backend).toBe('cpu');
      // gradients are not computed
      expect((a as unknown as Record<string, unknown>).gradEmbeddings).toBeUndefined();
    }
  });
});

describe('row-norm invariance over the fp32 range', () => {
  // The loss depends only on directions: scaling a row of X or W by α leaves the loss unchanged and
  // divides that row's gradient by α. Checked against the reference, which scales exactly.
  const p = randomProblem(8, 40, 16, 25);
  const m: Margin = { kind: 'arcface', m: 0.5 };
  for (const alpha of [1e-8, 1e-4, 1e4, 1e8, 1e15]) {
    test(`all rows of X and W scaled by ${alpha}`, () => {
      const x = p.embeddings.map((v) => v * alpha);
      const w = p.weights.map((v) => v * alpha);
      check({ ...p, embeddings: x, weights: w }, { margin: m });
    });
  }

  // Regression (found by this suite): the weight gradient's normalisation term was formed as
  // invn_j²·t_j in fp32, and invn_j² underflows once ‖w_j‖ ≳ 1e19, dropping the term (gradWeights
  // off by ~50%). It is now formed as (invn·t_j)·(invn·w_j). Row norms up to 1e30 are accepted.
  test('W rows with norms ~1e22, 1e25, 1e29 give the right weight gradient', () => {
    for (const alpha of [1e22, 1e25, 1e29]) {
      const w = p.weights.map((v) => v * alpha);
      expect(allFinite(w)).toBe(true);
      check({ ...p, weights: w }, { margin: m });
    }
  });

  // Regression: a finite row whose norm exceeds what the fp32 product w·x̂ can hold (formed before
  // the 1/‖w‖ scaling) used to give loss 0 and NaN gradients silently. Norms above 1e30 are now
  // refused with a typed error naming the row, for weights and embeddings alike.
  test('rows with norms above 1e30 are refused with a typed error, not NaN', () => {
    const prob = { embeddings: new Float32Array([1, 1]), weights: new Float32Array([1, 0, 3e38, 3e38]), labels: new Int32Array([1]), dim: 2 };
    expect(() => lossAndGrad(prob, { margin: { kind: 'softmax' } })).toThrow(ArgumentError);
    expect(() => lossAndGrad(prob, { margin: { kind: 'softmax' } })).toThrow(/row norms at most 1e30 for weights .* in row 1/);
    const big = { ...prob, embeddings: new Float32Array([2e30, 0]), weights: new Float32Array([1, 0, 0, 1]) };
    expect(() => forward(big, { margin: { kind: 'softmax' } })).toThrow(/row norms at most 1e30 for embeddings .* in row 0/);
  });
});
