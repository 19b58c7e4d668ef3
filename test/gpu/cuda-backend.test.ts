/**
 * The CUDA backend against the CPU backend (the oracle: itself checked against
 * a float64 reference in test/cpu-backend.test.ts).
 *
 * Skipped where `backends()` has no 'cuda', unless REQUIRE_CUDA=1: then a
 * missing GPU fails the suite (the GPU check script sets it).
 *
 * Tolerances, and why:
 *  - TF32 (fp32 centres): the tensor cores read X̂ and W rounded to 10 mantissa
 *    bits (unit roundoff u = 2⁻¹¹ ≈ 4.9e−4). A non-target cosine of unit vectors
 *    is then off by ≈ u·√(2/3)/√d: 1.7e−5 at d = 512, 5e−5 at d = 64; the logit
 *    by s·δc ≈ 1e−3…3e−3 at s = 64. The target cosine is computed in fp64 outside
 *    the tiles, so the margin (arccos, which amplifies δc by 1/sin θ) sees no
 *    TF32 error. The LSE averages the logit errors: per-row loss errors ≲ 1e−3
 *    (LOSS_TOL = 3e−3·max(1, |ref|)).
 *    Gradients: g = (p − δ)·dz/V inherits δp/p = δz ≈ 1e−3, and the dX̂ = G·Ŵ and
 *    dŴ = Gᵀ·X̂ products round G and the operands to TF32 again. Measured in the
 *    CPU emulation of the kernels (test/gpu/emu): ‖Δ‖/‖ref‖ = 3e−4…9e−4 on random
 *    problems, 2.3e−3 on confident (clustered) rows whose gradients are tiny;
 *    max|Δ|/max|ref| ≤ 1.4e−3. Bounds: GRAD_L2 = 6e−3, GRAD_MAX = 2e−2.
 *    A wrong derivative factor is far outside: dropping the adaptive margin's
 *    φ' = 1 + 2·m1·sinθ·cosθ changes the target gradients by ~3% at m1 = 0.03.
 *  - BF16 centres: the GPU rounds X̂, W and G to bf16 (7 explicit mantissa
 *    bits, u = 2⁻⁸), the CPU's emulation rounds W only, so the difference
 *    comes from X̂ and G: about 4–6× the TF32 errors (measured 2e−3…4e−3;
 *    derivation in docs/numerics.md §5).
 *    Bounds ×5: LOSS 1.5e−2, GRAD_L2 3e−2, GRAD_MAX 8e−2.
 *  - Results that must be exactly zero (ignored rows, C = 1, every row ignored)
 *    are checked for exact zeros; repeated calls must agree bit for bit.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { ArgumentError, backends, deviceInfo, forward, lossAndGrad, lossAndGradAsync } from '../../lib/index';
import type { LossAndGradResult, LossOptions, Margin } from '../../lib/types';
import {
  allFinite,
  bitwiseEqual,
  cluster,
  gpuOnlyTest,
  lossErr,
  nearParallel,
  randomProblem,
  relL2,
  relMax,
  SMALL,
  type Problem,
  yieldToEventLoop,
} from './gpu-helpers';
import { ALL_KINDS, label } from '../helpers';

const REQUIRE = process.env.REQUIRE_CUDA === '1';
const HAVE_CUDA = backends().includes('cuda');
const suite = HAVE_CUDA || REQUIRE ? describe : describe.skip;

const TF32 = { loss: 3e-3, l2: 6e-3, max: 2e-2 };
const BF16 = { loss: 1.5e-2, l2: 3e-2, max: 8e-2 };
type Tol = typeof TF32;

// Every kind with typical parameters, named as in the CPU suite.
const KINDS = ALL_KINDS;
const name = label;
const ADAPTIVE: Margin = { kind: 'adaptive' };

interface Errors {
  loss: number;
  dxL2: number;
  dxMax: number;
  dwL2: number;
  dwMax: number;
}

/** Runs both backends; returns the GPU result and the measured errors (logged for the record). */
function both(p: Problem, options: LossOptions, label: string): { gpu: LossAndGradResult; cpu: LossAndGradResult; err: Errors } {
  const cpu = lossAndGrad(p, { ...options, backend: 'cpu' });
  const gpu = lossAndGrad(p, { ...options, backend: 'cuda' });
  expect(gpu.backend).toBe('cuda');
  const err: Errors = {
    loss: Math.max(lossErr(gpu.perSample, cpu.perSample), Math.abs(gpu.loss - cpu.loss) / Math.max(1, Math.abs(cpu.loss))),
    dxL2: relL2(gpu.gradEmbeddings, cpu.gradEmbeddings),
    dxMax: relMax(gpu.gradEmbeddings, cpu.gradEmbeddings),
    dwL2: relL2(gpu.gradWeights, cpu.gradWeights),
    dwMax: relMax(gpu.gradWeights, cpu.gradWeights),
  };
  const n = p.labels.length;
  const c = p.weights.length / p.dim;
  console.log(
    `${label} N=${n} C=${c} d=${p.dim}: loss ${err.loss.toExponential(2)} dX ${err.dxL2.toExponential(2)}/${err.dxMax.toExponential(2)} ` +
      `dW ${err.dwL2.toExponential(2)}/${err.dwMax.toExponential(2)} skipped ${gpu.skippedBlocks}/${gpu.totalBlocks}`,
  );
  return { gpu, cpu, err };
}

function expectClose(p: Problem, options: LossOptions, tol: Tol, label: string): LossAndGradResult {
  const { gpu, cpu, err } = both(p, options, label);
  expect(allFinite(gpu.perSample) && allFinite(gpu.gradEmbeddings) && allFinite(gpu.gradWeights)).toBe(true);
  expect(gpu.validRows).toBe(cpu.validRows);
  expect(err.loss).toBeLessThanOrEqual(tol.loss);
  expect(err.dxL2).toBeLessThanOrEqual(tol.l2);
  expect(err.dxMax).toBeLessThanOrEqual(tol.max);
  expect(err.dwL2).toBeLessThanOrEqual(tol.l2);
  expect(err.dwMax).toBeLessThanOrEqual(tol.max);
  // cos θ_y: the CUDA backend computes it outside the tiles in fp64 (from the
  // same bf16-rounded centres when weightsDtype is bfloat16), the CPU in an fp32
  // dot product of d ≤ 1024 terms: |error| ≲ d·2⁻²⁴ ≈ 6e-5 in the worst case.
  for (let i = 0; i < p.labels.length; i++) {
    if (p.labels[i] < 0) expect(Number.isNaN(gpu.targetCos[i])).toBe(true);
    else expect(Math.abs(gpu.targetCos[i] - cpu.targetCos[i])).toBeLessThanOrEqual(1e-4);
  }
  // Ignored rows: no loss and no gradient, exactly (±0: `=== 0`, not Object.is).
  for (let i = 0; i < p.labels.length; i++) {
    if (p.labels[i] !== -1) continue;
    expect(gpu.perSample[i] === 0).toBe(true);
    expect(gpu.gradEmbeddings.subarray(i * p.dim, (i + 1) * p.dim).every((v) => v === 0)).toBe(true);
  }
  return gpu;
}

suite('CUDA backend', () => {
  afterEach(yieldToEventLoop);

  test('a CUDA device is usable (REQUIRE_CUDA=1 makes its absence a failure)', () => {
    const info = deviceInfo();
    if (!info.cuda.usable) throw new Error(`CUDA backend not usable: ${info.cuda.reason ?? 'no reason given'}`);
    expect(info.cuda.compiled).toBe(true);
    expect(Number(info.cuda.computeCapability)).toBeGreaterThanOrEqual(8);
    console.log(`device: ${info.cuda.name} (sm ${info.cuda.computeCapability}, ${info.cuda.multiprocessors} SMs)`);
  });

  describe('every margin kind, small odd shapes (d a multiple of 4 and not)', () => {
    for (const m of KINDS) {
      for (const d of [64, 513]) {
        test(`${name(m)} d=${d}`, () => {
          const p = randomProblem(7, 127, d, 11 + d);
          p.labels[3] = -1;
          expectClose(p, { margin: m }, TF32, name(m));
        });
      }
    }
  });

  describe('several row and class tiles', () => {
    for (const m of KINDS) {
      test(`${name(m)} N=512 C=1000 d=128`, () => {
        expectClose(randomProblem(512, 1000, 128, 21), { margin: m }, TF32, name(m));
      });
    }
  });

  describe('the face-recognition shape N=512, C=100003, d=512', () => {
    let cached: Problem | undefined; // 51 M weights: drawn on first use, not at collection
    const face = () => (cached ??= randomProblem(512, 100003, 512, 31));
    gpuOnlyTest('adaptive (TF32)', () => {
      expectClose(face(), { margin: ADAPTIVE }, TF32, 'adaptive');
    });
    gpuOnlyTest('arcface (TF32)', () => {
      expectClose(face(), { margin: { kind: 'arcface', m: 0.5 } }, TF32, 'arcface');
    });
    gpuOnlyTest('adaptive with bfloat16 centres', () => {
      expectClose(face(), { margin: ADAPTIVE, weightsDtype: 'bfloat16' }, BF16, 'adaptive bf16');
    });
    gpuOnlyTest('bit-identical results on repeated calls', () => {
      const p = face();
      const a = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      const b = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      expect(a.loss).toBe(b.loss);
      expect(bitwiseEqual(a.perSample, b.perSample)).toBe(true);
      expect(bitwiseEqual(a.gradEmbeddings, b.gradEmbeddings)).toBe(true);
      expect(bitwiseEqual(a.gradWeights, b.gradWeights)).toBe(true);
    });
  });

  describe('edges', () => {
    test('N=1, C=1: loss and gradients exactly zero', () => {
      const p = randomProblem(1, 1, 64, 41);
      const r = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      expect(r.loss === 0).toBe(true);
      expect(r.gradEmbeddings.every((v) => v === 0)).toBe(true);
      expect(r.gradWeights.every((v) => v === 0)).toBe(true);
    });
    test('C=1, d=513', () => {
      const p = randomProblem(9, 1, 513, 42);
      const r = lossAndGrad(p, { margin: { kind: 'arcface', m: 0.5 }, backend: 'cuda' });
      expect(r.perSample.every((v) => v === 0)).toBe(true);
      expect(r.gradWeights.every((v) => v === 0)).toBe(true);
    });
    gpuOnlyTest('N=1, C=100003, d=513', () => {
      expectClose(randomProblem(1, 100003, 513, 43), { margin: ADAPTIVE }, TF32, 'N=1');
    });
    test('ignored rows and zero vectors', () => {
      const p = randomProblem(70, 500, 96, 44);
      for (let i = 0; i < 70; i += 3) p.labels[i] = -1;
      p.embeddings.fill(0, 5 * 96, 6 * 96); // a counted zero embedding
      p.weights.fill(0, 17 * 96, 18 * 96); // a zero centre
      const r = expectClose(p, { margin: ADAPTIVE }, TF32, 'ignored+zero');
      expect(r.gradEmbeddings.subarray(5 * 96, 6 * 96).every((v) => v === 0)).toBe(true);
      expect(r.gradWeights.subarray(17 * 96, 18 * 96).every((v) => v === 0)).toBe(true);
    });
    test('every row ignored', () => {
      const p = randomProblem(40, 300, 64, 45);
      p.labels.fill(-1);
      const r = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      expect(r.loss === 0).toBe(true);
      expect(r.validRows).toBe(0);
      expect(r.gradEmbeddings.every((v) => v === 0)).toBe(true);
      expect(r.gradWeights.every((v) => v === 0)).toBe(true);
    });
    test('d=3 (smaller than any vector width)', () => {
      expectClose(randomProblem(33, 129, 3, 46), { margin: ADAPTIVE }, TF32, 'd=3');
    });
  });

  describe('target cosines at and near ±1 (clamp, π fallback)', () => {
    for (const m of [KINDS[1], KINDS[3], KINDS[4], KINDS[8]]) {
      test(name(m), () => {
        const p = randomProblem(16, 257, 128, 51);
        nearParallel(p);
        expectClose(p, { margin: m }, TF32, `near±1 ${name(m)}`);
      });
    }
  });

  describe('bfloat16 centres', () => {
    for (const m of [KINDS[0], KINDS[4], KINDS[8]]) {
      test(name(m), () => {
        expectClose(randomProblem(64, 1000, 200, 61), { margin: m, weightsDtype: 'bfloat16' }, BF16, `bf16 ${name(m)}`);
      });
    }
  });

  describe('gradient filtering', () => {
    // Rows pulled towards their centres: most non-target p are tiny.
    let cached: Problem | undefined;
    const clustered = () => {
      if (!cached) {
        cached = randomProblem(512, SMALL ? 4000 : 20000, 128, 71); // 4000: the emulation's size
        cluster(cached, 0.8, 72);
      }
      return cached;
    };
    test('off: matches the CPU backend', () => {
      const r = expectClose(clustered(), { margin: ADAPTIVE }, TF32, 'filter off');
      expect(r.skippedBlocks).toBe(0);
    });
    test('on: tiles skipped, every gradient within the bound of the skipped terms', () => {
      const thr = 1e-8;
      const p = clustered();
      const exact = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      const filt = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda', gradFilter: thr });
      expect(filt.skippedBlocks).toBeGreaterThan(0);
      expect(bitwiseEqual(filt.perSample, exact.perSample)).toBe(true);
      // Each skipped |g_ij| < thr·s/V (‖x̂‖, ‖ŵ‖ ≤ 1; the projection does not grow norms):
      // a dX component moves by ≤ C·thr·s/V·max 1/‖x‖, a dW component by ≤ N·thr·s/V·max 1/‖w‖.
      const d = p.dim;
      const n = p.labels.length;
      const c = p.weights.length / d;
      const invMax = (a: Float32Array, rows: number) => {
        let m = 0;
        for (let r = 0; r < rows; r++) {
          let s = 0;
          for (let k = 0; k < d; k++) s += a[r * d + k] ** 2;
          if (s > 0) m = Math.max(m, 1 / Math.sqrt(s));
        }
        return m;
      };
      const boundX = ((c * thr * 64) / exact.validRows) * invMax(p.embeddings, n) * 1.01;
      const boundW = ((n * thr * 64) / exact.validRows) * invMax(p.weights, c) * 1.01;
      let ex = 0;
      let ew = 0;
      for (let k = 0; k < exact.gradEmbeddings.length; k++) ex = Math.max(ex, Math.abs(exact.gradEmbeddings[k] - filt.gradEmbeddings[k]));
      for (let k = 0; k < exact.gradWeights.length; k++) ew = Math.max(ew, Math.abs(exact.gradWeights[k] - filt.gradWeights[k]));
      console.log(`filter 1e-8: skipped ${filt.skippedBlocks}/${filt.totalBlocks}, max|ΔdX| ${ex.toExponential(2)} ≤ ${boundX.toExponential(2)}, max|ΔdW| ${ew.toExponential(2)} ≤ ${boundW.toExponential(2)}`);
      expect(ex).toBeLessThanOrEqual(boundX);
      expect(ew).toBeLessThanOrEqual(boundW);
    });
  });

  describe('API paths', () => {
    const p = randomProblem(100, SMALL ? 1000 : 3000, 256, 81);
    test('forward() gives the same loss as lossAndGrad()', () => {
      const f = forward(p, { margin: ADAPTIVE, backend: 'cuda' });
      const g = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      expect(f.loss).toBe(g.loss);
      expect(bitwiseEqual(f.perSample, g.perSample)).toBe(true);
    });
    test('lossAndGradAsync() gives the synchronous result', async () => {
      const a = await lossAndGradAsync(p, { margin: ADAPTIVE, backend: 'cuda' });
      const b = lossAndGrad(p, { margin: ADAPTIVE, backend: 'cuda' });
      expect(bitwiseEqual(a.gradWeights, b.gradWeights)).toBe(true);
      expect(bitwiseEqual(a.gradEmbeddings, b.gradEmbeddings)).toBe(true);
    });
    test('concurrent async calls', async () => {
      const rs = await Promise.all([0, 1, 2, 3].map(() => lossAndGradAsync(p, { margin: ADAPTIVE, backend: 'cuda' })));
      for (const r of rs) expect(bitwiseEqual(r.gradWeights, rs[0].gradWeights)).toBe(true);
    });
    test('a non-finite centre is an ArgumentError with the CPU backend\'s message', () => {
      const q = randomProblem(4, 50, 32, 82);
      q.weights[37 * 32 + 5] = Number.NaN;
      q.weights[41 * 32 + 1] = Number.POSITIVE_INFINITY;
      let cpuMsg = '';
      let gpuErr: unknown;
      try {
        lossAndGrad(q, { margin: ADAPTIVE, backend: 'cpu' });
      } catch (e) {
        cpuMsg = (e as Error).message;
      }
      try {
        lossAndGrad(q, { margin: ADAPTIVE, backend: 'cuda' });
      } catch (e) {
        gpuErr = e;
      }
      expect(gpuErr).toBeInstanceOf(ArgumentError);
      expect((gpuErr as Error).message).toBe(cpuMsg);
      expect(cpuMsg).toContain('row 37');
    });
  });
});
