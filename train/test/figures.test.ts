/**
 * The figures' data come from the kernels' margin functions: the hook
 * agrees with the library's forward pass for every kind, the margin function
 * hits the values the paper marks (f(90°) = m1 + m2, f(180°) = m2), the
 * two-class boundaries have the closed forms Table 1 gives, and
 * `margin-softmax figures` writes both SVGs.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { ArgumentError, forward, type Margin } from 'margin-softmax';
import { main } from '../src/commands/main';
import { UsageError } from '../src/commands/options';
import { COMPARE_LOSSES } from '../src/commands/compare';
import { crossing, figure1Data, figure2Data, FIGURE1_SETTINGS } from '../src/figures/figures';
import { marginedAngles, otherLogits, targetLogits } from '../src/figures/margin-math';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-fig-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const DEG = Math.PI / 180;

describe('margin math from the kernels', () => {
  const cosines = [-0.999, -0.7, -0.2, 0, 0.3, 0.8, 0.999];
  const kinds: Margin[] = [...COMPARE_LOSSES, { kind: 'elastic-cos', m: 0.35, sigma: 0.05, seed: 0 }, { kind: 'adaptive', m1: 0.2, m2: 0.3 }];

  test.each(kinds.map((m) => [m.kind, m] as const))('%s: targetLogits and otherLogits reproduce forward()’s per-row loss', (_k, m) => {
    // Rows at cosine c to their target and c' to the other class: loss = log(1 + exp(z_j(c') − z_y(c))).
    const pairs = cosines.flatMap((c) => cosines.map((c2) => [c, c2]));
    const dim = 4;
    const emb = new Float32Array(pairs.length * dim);
    pairs.forEach(([c, c2], i) => {
      // Target centre e1, other centre e2 (orthogonal): a unit x with x·e1 = c, x·e2 = c2 needs c² + c2² ≤ 1.
      emb.set([c, c2, Math.sqrt(Math.max(0, 1 - c * c - c2 * c2)), 0], i * dim);
    });
    const keep = pairs.map(([c, c2]) => c * c + c2 * c2 <= 1);
    const weights = Float32Array.from([1, 0, 0, 0, 0, 1, 0, 0]);
    const mm = m.kind === 'elastic-arc' || m.kind === 'elastic-cos' ? { ...m, sigma: 0 } : m;
    const r = forward({ embeddings: emb, weights, labels: new Int32Array(pairs.length), dim }, { margin: mm, scale: 8, backend: 'cpu' });
    const zy = targetLogits(m, pairs.map((p) => p[0]), { scale: 8 }).z;
    const zj = otherLogits(m, pairs.map((p) => p[1]), { scale: 8 });
    let checked = 0;
    pairs.forEach((_, i) => {
      if (!keep[i]) return;
      expect(r.perSample[i]).toBeCloseTo(Math.log1p(Math.exp(zj[i] - zy[i])), 4);
      checked++;
    });
    expect(checked).toBeGreaterThan(20);
  });

  test('known values: softmax z = s·c, CosFace z = s·(c − m), CVM z_j = s·(c + m2·c²), ArcFace φ = θ + m', () => {
    expect(Array.from(targetLogits({ kind: 'softmax' }, [0.5], { scale: 64 }).z)).toEqual([32]);
    expect(targetLogits({ kind: 'cosface', m: 0.35 }, [0.5], { scale: 2 }).z[0]).toBeCloseTo(0.3, 6);
    expect(otherLogits({ kind: 'softmax' }, [0.25, -0.5])[1]).toBeCloseTo(-0.5, 5);
    const cvm = otherLogits({ kind: 'cvm', m1: 0.3, m2: 0.2 }, [0.5, -0.5]);
    expect(cvm[0]).toBeCloseTo(0.55, 5);
    expect(cvm[1]).toBeCloseTo(-0.45, 5);
    const phi = marginedAngles({ kind: 'arcface', m: 0.5 }, [30 * DEG, 150 * DEG, 170 * DEG]);
    // Past π (170° + 0.5 rad) too: the sign of dz tells φ from 2π − φ.
    [30, 150, 170].forEach((t, i) => expect(phi[i]).toBeCloseTo(t * DEG + 0.5, 5));
  });

  test('bad input is refused', () => {
    expect(() => targetLogits({ kind: 'softmax' }, [1.5])).toThrow(ArgumentError);
    expect(() => otherLogits({ kind: 'softmax' }, [NaN])).toThrow(/Expected cosines in \[-1, 1\] for cosines\[0\] but received NaN/);
    expect(() => marginedAngles({ kind: 'cosface', m: 0.35 }, [0])).toThrow(/Expected an angular margin/);
  });
});

describe('Figure 1 data', () => {
  const d = figure1Data();

  test('f(90°) = m1 + m2 and f(180°) = m2 for every setting (θ clamped 5e−4 rad inside π by the kernel)', () => {
    for (const s of FIGURE1_SETTINGS) {
      const setting = `m1 = ${s.m1}, m2 = ${s.m2}`;
      const at = (deg: number) => d.curves.find((r) => r.setting === setting && r.theta === deg)!;
      expect(at(90).f).toBeCloseTo(s.m1 + s.m2, 5);
      expect(Math.abs(at(180).f - s.m2)).toBeLessThan(1e-3);
      expect(Math.abs(at(0).f - s.m2)).toBeLessThan(1e-3);
      // f(θ) = m1·sin²θ + m2 in between, as the paper defines it.
      for (const deg of [20, 45, 120, 160]) expect(at(deg).f).toBeCloseTo(s.m1 * Math.sin(deg * DEG) ** 2 + s.m2, 4);
      const marks = d.marks.filter((m) => m.setting === setting);
      expect(marks.map((m) => m.theta)).toEqual([90, 180]);
      for (const m of marks) expect(Math.abs(m.f - m.expected)).toBeLessThan(1e-3);
    }
    expect(d.curves).toHaveLength(FIGURE1_SETTINGS.length * 181);
  });

  test('the margined angle exceeds ArcFace’s θ + m2 exactly where m1·sin²θ does', () => {
    const arc = new Map(d.arcface.map((r) => [r.theta, r.phi]));
    for (const r of d.curves.filter((c) => c.m2 === 0.5)) {
      expect(r.phi - arc.get(r.theta)!).toBeCloseTo((r.m1 * Math.sin(r.theta * DEG) ** 2) / DEG, 2);
    }
  });
});

describe('Figure 2 data', () => {
  const rows = figure2Data();
  const of = (loss: string, t: number) => rows.find((r) => r.loss.startsWith(loss) && r.theta1 === t)!;

  test('crossing() inverts a decreasing table and clamps outside it', () => {
    const t = [0, 1, 2, 3];
    const v = Float64Array.from([3, 2, 0, -1]);
    expect(crossing(t, v, 1)).toBeCloseTo(1.5, 12);
    expect(crossing(t, v, 5)).toBe(0);
    expect(crossing(t, v, -2)).toBe(3);
  });

  test('softmax: one boundary θ1 = θ2, no margin region', () => {
    for (const t of [10, 60, 90, 150]) {
      expect(of('softmax', t).a).toBeCloseTo(t, 1);
      expect(of('softmax', t).b).toBeCloseTo(t, 1);
    }
  });

  test('ArcFace and ElasticFace-Arc at its mean: θ2 = θ1 + m above, θ1 − m below', () => {
    for (const loss of ['arcface', 'elastic-arc']) {
      for (const t of [40, 90, 120]) {
        expect(of(loss, t).b).toBeCloseTo(t + 0.5 / DEG, 0);
        expect(of(loss, t).a).toBeCloseTo(t - 0.5 / DEG, 0);
      }
    }
  });

  test('CosFace: cos θ2 = cos θ1 − m; adaptive: θ2 = θ1 + m1·sin²θ1 + m2; CVM: the quadratic false-class margin', () => {
    expect(Math.cos(of('cosface', 60).b * DEG)).toBeCloseTo(0.5 - 0.35, 3);
    expect(of('adaptive', 90).b).toBeCloseTo(90 + (0.03 + 0.5) / DEG, 0);
    // CVM, class 1's boundary at θ1 = 60°: c2 + 0.2·c2² = 0.5 − 0.3·0.75.
    const c2 = Math.cos(of('cvm', 60).b * DEG);
    expect(c2 + 0.2 * c2 * c2).toBeCloseTo(0.5 - 0.3 * 0.75, 3);
    // Every margin loss has a region of positive width in the middle of the plane.
    for (const loss of ['arcface', 'elastic-arc', 'cosface', 'cvm', 'adaptive']) expect(of(loss, 90).b - of(loss, 90).a).toBeGreaterThan(20);
  });
});

test('margin-softmax figures --out DIR writes both SVGs', async () => {
  const out = path.join(tmp, 'figs');
  expect(await main(['figures', '--out', out])).toBe(0);
  for (const f of ['margin-function.svg', 'decision-boundaries.svg']) {
    const svg = fs.readFileSync(path.join(out, f), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.length).toBeGreaterThan(5000);
  }
  expect(fs.readFileSync(path.join(out, 'margin-function.svg'), 'utf8')).toContain('0.530');
});

test('each tool command has its own --help (exit 0); unknown options are usage errors', async () => {
  const { parseToolArgs, runTool } = await import('../src/commands/model-commands');
  let text = '';
  expect(await runTool(parseToolArgs('identify', ['--help']), (s) => (text += s))).toBe(0);
  expect(text).toMatch(/^Usage:\n {2}margin-softmax identify --checkpoint RUN --gallery FILE.safetensors \[--top K\] IMAGE\.\.\./);
  expect(text).not.toContain('margin-softmax verify');
  expect(() => parseToolArgs('figures', ['--bogus'])).toThrow(/figures: Unknown option '--bogus'/);
  await expect(main(['figures', '--bogus'])).rejects.toThrow(UsageError);
});
