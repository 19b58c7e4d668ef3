/**
 * weightsDtype 'bfloat16' on the CPU: every bf16 product path this machine has
 * (deviceInfo().cpu.matrix and the ones below it), against the float64 reference
 * on the bf16-rounded centres, against each other, and for determinism.
 *
 * Error model (docs/cpu.md, "bf16 on the CPU"): the centres are bf16 by definition, so the
 * only new rounding is of X̂ (and, in the backward, of G) to bf16, unit roundoff
 * u = 2⁻⁸. A non-target cosine then moves by at most u (Cauchy–Schwarz), typically
 * by about u/√(3d); the target cosine is formed in fp32, so the per-row loss moves by
 * at most s·u·(1 + 2|m2_cvm|) and typically by about s·u/√(3d), and each gradient
 * entry by a few u relative to the largest one.
 */
import fs from 'node:fs';
import { describe, expect, test } from 'vitest';
import { ArgumentError, MarginHead, deviceInfo, forward, lossAndGrad } from '../lib/index';
import type { CpuMatrixPath, LossOptions, Margin } from '../lib/types';
import { typical } from './helpers';
import { randomProblem, referenceLoss, relMaxErr, roundBf16 } from './reference.mjs';

const U = 2 ** -8; // bf16 unit roundoff (8 significand bits, round to nearest even)
const S = 64;
const ORDER: CpuMatrixPath[] = process.arch === 'arm64' ? ['none', 'neon-bf16'] : ['none', 'avx512-bf16', 'amx-bf16'];
const info = deviceInfo().cpu;
const best = info.matrixPaths[0];
const available = new Set(info.matrixPaths);
const WHY: Record<CpuMatrixPath, string> = {
  none: '',
  'avx512-bf16': 'the CPU lacks AVX512-BF16 (VDPBF16PS)',
  'amx-bf16': 'the CPU lacks AMX-BF16, or the OS refused the tile-data permission',
  'neon-bf16': 'the CPU lacks FEAT_BF16 (BFDOT)',
};
const MARGINS: Margin[] = (['adaptive', 'arcface', 'cvm'] as const).map(typical);

function bf16(matrix: CpuMatrixPath, extra: Partial<LossOptions> = {}): Omit<LossOptions, 'margin'> {
  return { backend: 'cpu', weightsDtype: 'bfloat16', matrix, threads: 2, ...extra };
}

function expectSameResult(a: ReturnType<typeof lossAndGrad>, b: ReturnType<typeof lossAndGrad>): void {
  expect(a.loss).toBe(b.loss);
  expect(Buffer.compare(Buffer.from(a.perSample.buffer), Buffer.from(b.perSample.buffer))).toBe(0);
  expect(Buffer.compare(Buffer.from(a.gradEmbeddings.buffer), Buffer.from(b.gradEmbeddings.buffer))).toBe(0);
  expect(Buffer.compare(Buffer.from(a.gradWeights.buffer), Buffer.from(b.gradWeights.buffer))).toBe(0);
}

describe('bf16 paths of this CPU', () => {
  test('deviceInfo().cpu.matrixPaths: the paths at and below the best one, consistent with the CPU flags', () => {
    expect(ORDER).toContain(best);
    expect(info.matrixPaths).toEqual([...ORDER.slice(0, ORDER.indexOf(best) + 1)].reverse());
    let flags: string[] | null = null;
    try {
      flags = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:\s*(.*)$/m)?.[1] ?? '').split(' ');
    } catch {
      flags = null; // not Linux: nothing to compare with
    }
    if (flags) {
      // A path is never claimed without its flags. (The converse needs a compiler that
      // knows the instructions, GCC ≥ 11 or Clang ≥ 12: an older one builds 'none' only.)
      const dp = ['avx512f', 'avx512bw', 'avx512vl', 'avx512_bf16'].every((f) => flags!.includes(f));
      if (best !== 'none') expect(dp).toBe(true);
      if (best === 'amx-bf16') expect(flags.includes('amx_bf16') && flags.includes('amx_tile')).toBe(true);
    }
  });

  for (const path of ORDER) {
    const skip = !available.has(path);
    describe.skipIf(skip)(`matrix '${path}'${skip ? ` (skipped: ${WHY[path]})` : ''}`, () => {
      for (const [n, c, d] of [
        [16, 600, 40],
        [64, 2000, 256],
        [33, 700, 96],
      ] as const) {
        test(`N=${n} C=${c} d=${d}: within the bf16 error bound of the float64 reference`, () => {
          const p = randomProblem(n, c, d, 31);
          const wb = roundBf16(p.weights);
          for (const margin of MARGINS) {
            const ref = referenceLoss({ ...p, weights: wb }, { margin });
            const r = lossAndGrad(p, { margin, ...bf16(path) });
            const m2 = margin.kind === 'cvm' ? Math.abs(margin.m2 ?? 0) : 0;
            const typical = (S * U) / Math.sqrt(3 * d);
            let worst = 0;
            for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(r.perSample[i] - ref.perSample[i]));
            // The proven bound, and the typical size (measured 0.8–1.6× of it on these problems).
            expect(worst).toBeLessThanOrEqual(S * U * (1 + 2 * m2));
            expect(worst).toBeLessThanOrEqual(3 * typical);
            expect(Math.abs(r.loss - ref.loss)).toBeLessThanOrEqual(3 * typical);
            // Gradients: measured 2.4–4.8e−3 = 0.6–1.2 u; the rounding is real (fp32 gives ~1e−6).
            const ex = relMaxErr(r.gradEmbeddings, ref.gradEmbeddings);
            const ew = relMaxErr(r.gradWeights, ref.gradWeights);
            expect(ex).toBeLessThanOrEqual(4 * U);
            expect(ew).toBeLessThanOrEqual(4 * U);
            expect(Math.max(ex, ew)).toBeGreaterThan(1e-4);
          }
        });
      }

      test('the target cosine (hence the margin) is full precision: fp32 x̂ against the bf16 centre', () => {
        const p = randomProblem(24, 900, 128, 32);
        const wb = roundBf16(p.weights);
        const r = forward(p, { margin: { kind: 'adaptive' }, ...bf16(path) });
        let worst = 0;
        for (let i = 0; i < p.labels.length; i++) {
          const y = p.labels[i];
          let dot = 0, nx = 0, nw = 0;
          for (let k = 0; k < p.dim; k++) {
            dot += p.embeddings[i * p.dim + k] * wb[y * p.dim + k];
            nx += p.embeddings[i * p.dim + k] ** 2;
            nw += wb[y * p.dim + k] ** 2;
          }
          worst = Math.max(worst, Math.abs(r.targetCos[i] - dot / Math.sqrt(nx * nw)));
        }
        // A bf16 X̂ would move it by up to u ≈ 4e−3; fp32 keeps it at ~1e−7.
        expect(worst).toBeLessThan(2e-6);
      });

      test('deterministic per thread count; cached and recomputed tiles agree bit for bit', () => {
        const p = randomProblem(40, 3000, 64, 33);
        const m: Margin = { kind: 'combined', m1: 0.9, m2: 0.4, m3: 0.15 };
        for (const threads of [1, 2, 3]) {
          const a = lossAndGrad(p, { margin: m, ...bf16(path, { threads }) });
          expectSameResult(a, lossAndGrad(p, { margin: m, ...bf16(path, { threads }) }));
          expectSameResult(a, lossAndGrad(p, { margin: m, ...bf16(path, { threads, workspaceBytes: 0 }) }));
        }
        // Across thread counts only the merge order of the fp32 partials changes.
        const one = lossAndGrad(p, { margin: m, ...bf16(path, { threads: 1 }) });
        const two = lossAndGrad(p, { margin: m, ...bf16(path, { threads: 2 }) });
        expect(Math.abs(one.loss - two.loss)).toBeLessThanOrEqual(1e-6 * one.loss);
        expect(relMaxErr(one.gradEmbeddings, two.gradEmbeddings)).toBeLessThan(1e-5);
        expect(relMaxErr(one.gradWeights, two.gradWeights)).toBeLessThan(1e-5);
      });

      test.skipIf(path === 'none')('the same products as the rounded-operand fp32 path, up to fp32 summation order', () => {
        for (const [n, c, d] of [
          [7, 301, 37],
          [128, 1500, 512],
        ] as const) {
          const p = randomProblem(n, c, d, 34);
          for (const margin of MARGINS) {
            const a = lossAndGrad(p, { margin, ...bf16(path) });
            const b = lossAndGrad(p, { margin, ...bf16('none') });
            // The loss sees only fp32 summation order. Gradients: where that order flips the
            // bf16 rounding of a g_ij, its terms move by one bf16 step, u·|g_ij·x̂_ik| (measured
            // up to 1.2e−4 of the largest gradient); u/8 is still 10× below the bf16 error
            // against the reference, and far below what a wrong product would give.
            expect(Math.abs(a.loss - b.loss)).toBeLessThanOrEqual(1e-6 * b.loss);
            for (let i = 0; i < n; i++) expect(Math.abs(a.perSample[i] - b.perSample[i])).toBeLessThanOrEqual(1e-5 * b.perSample[i]);
            expect(relMaxErr(a.gradEmbeddings, b.gradEmbeddings)).toBeLessThan(U / 8);
            expect(relMaxErr(a.gradWeights, b.gradWeights)).toBeLessThan(U / 8);
          }
        }
      });
    });
  }

  test("'none' on every SIMD level of the CPU: the same rounding, fp32 kernels of each width", () => {
    const p = randomProblem(20, 900, 72, 37);
    const m: Margin = { kind: 'arcface', m: 0.5 };
    const widest = lossAndGrad(p, { margin: m, ...bf16('none') });
    for (const simd of ['avx2', 'portable'] as const) {
      const r = lossAndGrad(p, { margin: m, ...bf16('none', { simd }) });
      // fp32 summation order only (bf16 rounding of G can flip: see above).
      expect(Math.abs(r.loss - widest.loss)).toBeLessThanOrEqual(1e-6 * widest.loss);
      expect(relMaxErr(r.gradEmbeddings, widest.gradEmbeddings)).toBeLessThan(U / 8);
      expect(relMaxErr(r.gradWeights, widest.gradWeights)).toBeLessThan(U / 8);
      expectSameResult(r, lossAndGrad(p, { margin: m, ...bf16('none', { simd }) }));
    }
  });

  test("MarginHead with weightsDtype 'bfloat16' steps on the same bf16 products as lossAndGrad", () => {
    // The head's fused update consumes each block's gradient inside the backward pass
    // (and, with sampling, reads the centres through a class index): the products it
    // sees must be the ones lossAndGrad returns for the same centres.
    const C = 700, d = 48;
    const p = randomProblem(30, C, d, 38);
    const lr = 0.05;
    const head = new MarginHead({ classes: C, dim: d, margin: { kind: 'adaptive' }, weightsDtype: 'bfloat16', threads: 2, optimizer: { lr }, init: p.weights });
    // The head stores bf16 centres: p.weights rounded to the nearest bf16, the values lossAndGrad's bf16 products use.
    const w0 = roundBf16(p.weights);
    const ref = lossAndGrad({ ...p, weights: w0 }, { margin: { kind: 'adaptive' }, weightsDtype: 'bfloat16', threads: 2 });
    const r = head.step(p.embeddings, p.labels);
    expect(r.loss).toBe(ref.loss);
    expect(Buffer.compare(Buffer.from(r.gradEmbeddings.buffer), Buffer.from(ref.gradEmbeddings.buffer))).toBe(0);
    const w = head.getWeights();
    let worst = 0;
    for (let k = 0; k < w.length; k++) {
      // The update w0 − lr·g (float64 here, fp32 natively) rounded stochastically to one of
      // its two bf16 neighbours: at most one bf16 step, ≤ 2⁻⁷·|t|, from it (test/bf16-head.test.ts
      // checks the rounding bit for bit).
      const t = w0[k] - lr * ref.gradWeights[k];
      worst = Math.max(worst, Math.abs(w[k] - t) / (2 ** -7 * Math.abs(t) * (1 + 1e-4) + 1e-30));
    }
    expect(worst).toBeLessThanOrEqual(1);
    // Partial FC sampling (the class-index path): fewer classes in every row's log-sum-exp.
    const sampled = new MarginHead({ classes: C, dim: d, margin: { kind: 'adaptive' }, weightsDtype: 'bfloat16', threads: 2, sampleRate: 0.5, init: p.weights });
    const s = sampled.step(p.embeddings, p.labels);
    expect(Number.isFinite(s.loss) && s.loss > 0).toBe(true);
    expect(s.loss).toBeLessThan(ref.loss);
  });

  test("'auto' runs deviceInfo().cpu.matrix: the best path, or 'none' on an Intel core with a half-rate VDPBF16PS", () => {
    expect(available.has(info.matrix)).toBe(true);
    let cpuinfo = '';
    try {
      cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      cpuinfo = ''; // not Linux: the rule is only checked where /proc/cpuinfo says what the CPU is
    }
    if (cpuinfo) {
      const field = (name: string) => cpuinfo.match(new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm'))?.[1] ?? '';
      const halfRate = field('vendor_id') === 'GenuineIntel' && field('cpu family') === '6' && ['143', '207'].includes(field('model'));
      expect(info.matrix).toBe(best === 'avx512-bf16' && halfRate ? 'none' : best);
    }
    const p = randomProblem(8, 400, 32, 36);
    const m: Margin = { kind: 'adaptive' };
    expectSameResult(lossAndGrad(p, { margin: m, ...bf16('auto' as CpuMatrixPath) }), lossAndGrad(p, { margin: m, ...bf16(info.matrix) }));
  });

  test('a path the CPU lacks falls back to the best one it has', () => {
    const p = randomProblem(8, 400, 32, 35);
    const m: Margin = { kind: 'adaptive' };
    const auto = lossAndGrad(p, { margin: m, ...bf16(best) });
    for (const path of ORDER.filter((q) => !available.has(q))) expectSameResult(lossAndGrad(p, { margin: m, ...bf16(path) }), auto);
    // The option is ignored for fp32 centres.
    const f32 = lossAndGrad(p, { margin: m, threads: 2 });
    expectSameResult(lossAndGrad(p, { margin: m, threads: 2, matrix: 'none' }), f32);
  });

  test('a bad matrix option is refused with a typed error', () => {
    const p = randomProblem(4, 50, 8, 36);
    for (const bad of ['avx512', 'amx', 1, null]) {
      expect(() => lossAndGrad(p, { margin: { kind: 'adaptive' }, matrix: bad as never })).toThrow(ArgumentError);
      expect(() => lossAndGrad(p, { margin: { kind: 'adaptive' }, matrix: bad as never })).toThrow(/options\.matrix/);
    }
  });
});
