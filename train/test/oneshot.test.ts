/**
 * N-way K-shot evaluation on synthetic embeddings whose answer is known:
 * perfectly separated classes, classes with one flipped image (exact
 * expected accuracies for K = 1 and K = 3), structure-free embeddings
 * (chance, 1/N), the interval, the seed, and the errors; then `eval
 * --n-way` on a tiny trained run, and `eval` of an ensemble of checkpoints.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { ArgumentError } from 'margin-softmax';
import { main } from '../src/commands/main';
import { UsageError } from '../src/commands/options';
import { runEval } from '../src/commands/eval';
import { nWayKShot, formatOneShot } from '../src/eval/oneshot';
import { Rng } from '../src/data/rng';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-oneshot-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** C classes of `per` images in C dimensions: image i of class c is e_c, or −e_c for the first `flipped` images. */
function axes(C: number, per: number, flipped = 0): { emb: Float32Array; labels: Int32Array } {
  const emb = new Float32Array(C * per * C);
  const labels = new Int32Array(C * per);
  for (let c = 0; c < C; c++) {
    for (let i = 0; i < per; i++) {
      const row = c * per + i;
      labels[row] = c;
      emb[row * C + c] = i < flipped ? -1 : 1;
    }
  }
  return { emb, labels };
}

describe('N-way K-shot on synthetic embeddings', () => {
  test('separated classes: every query right, interval 0', () => {
    const { emb, labels } = axes(30, 4);
    const r = nWayKShot(emb, 30, labels, { ways: 20, shots: 1, episodes: 200 });
    expect(r.accuracy).toBe(1);
    expect(r.ci95).toBe(0);
    expect(r).toMatchObject({ ways: 20, shots: 1, queries: 1, episodes: 200, eligibleIdentities: 30 });
  });

  test('one flipped image of five: 1-shot is right with probability 4/5·3/4 = 0.6, 3-shot 4/5 = 0.8', () => {
    // Other prototypes are orthogonal (score 0); the own one scores +1 when the query and the
    // prototype agree in sign, −1 otherwise. 1-shot: both drawn from the four unflipped images.
    // 3-shot: the mean of three supports keeps the sign of the majority (always +), so only a
    // flipped query fails.
    const { emb, labels } = axes(40, 5, 1);
    const one = nWayKShot(emb, 40, labels, { ways: 10, shots: 1, episodes: 3000, seed: 1 });
    const three = nWayKShot(emb, 40, labels, { ways: 10, shots: 3, episodes: 3000, seed: 1 });
    expect(Math.abs(one.accuracy - 0.6)).toBeLessThan(one.ci95);
    expect(Math.abs(three.accuracy - 0.8)).toBeLessThan(three.ci95);
    // The interval: 1.96 × sample std / √episodes of the episode accuracies.
    const m = one.perEpisode.reduce((a, b) => a + b, 0) / one.episodes;
    const s = Math.sqrt(one.perEpisode.reduce((a, b) => a + (b - m) ** 2, 0) / (one.episodes - 1));
    expect(one.ci95).toBeCloseTo((1.96 * s) / Math.sqrt(3000), 12);
    expect(one.accuracy).toBeCloseTo(m, 12);
    // Each episode's accuracy is a multiple of 1/(N·Q).
    expect(one.perEpisode.every((a) => Number.isInteger(Math.round(a * 10 * 1e9) / 1e9))).toBe(true);
  });

  test('no class structure: chance, 1/N', () => {
    const rng = new Rng(3);
    const dim = 24;
    const n = 50 * 6;
    const emb = Float32Array.from({ length: n * dim }, () => rng.next() - 0.5);
    for (let i = 0; i < n; i++) {
      const row = emb.subarray(i * dim, (i + 1) * dim);
      const len = Math.hypot(...row);
      for (let d = 0; d < dim; d++) row[d] /= len;
    }
    const labels = Int32Array.from({ length: n }, (_, i) => Math.floor(i / 6));
    const r = nWayKShot(emb, dim, labels, { ways: 5, shots: 2, queries: 3, episodes: 2000, seed: 2 });
    // The interval covers the episode draws given these embeddings, not the draw of the
    // embeddings themselves (a fixed sample has some chance structure): 1/N within 2 points.
    expect(Math.abs(r.accuracy - 1 / 5)).toBeLessThan(0.02);
    expect(r.ci95).toBeGreaterThan(0);
  });

  test('a fixed seed repeats the episodes; another seed draws others', () => {
    const { emb, labels } = axes(12, 5, 1);
    const a = nWayKShot(emb, 12, labels, { ways: 5, shots: 1, episodes: 50, seed: 4 });
    const b = nWayKShot(emb, 12, labels, { ways: 5, shots: 1, episodes: 50, seed: 4 });
    const c = nWayKShot(emb, 12, labels, { ways: 5, shots: 1, episodes: 50, seed: 5 });
    expect(b.perEpisode).toEqual(a.perEpisode);
    expect(c.perEpisode).not.toEqual(a.perEpisode);
  });

  test('only identities with K + Q images are drawn; too few is an error', () => {
    const { emb, labels } = axes(6, 3);
    // Two identities with one image each: not eligible for 1-shot with a query.
    const few = Int32Array.from(labels);
    few[0] = 100;
    few[3] = 101;
    const r = nWayKShot(emb, 6, few, { ways: 4, shots: 1, episodes: 10 });
    expect(r.eligibleIdentities).toBe(6);
    expect(() => nWayKShot(emb, 6, labels, { ways: 4, shots: 3, episodes: 10 })).toThrow(
      /Expected at least 4 identities with ≥ 4 images \(K = 3 support \+ 1 query\) for 4-way evaluation but found 0/,
    );
    expect(() => nWayKShot(emb, 6, labels, { ways: 1, shots: 1 })).toThrow(ArgumentError);
    expect(() => nWayKShot(emb, 6, labels, { ways: 2, shots: 0 })).toThrow(/Expected an integer ≥ 1 for shots \(K\) but received 0/);
    expect(() => nWayKShot(emb.subarray(1), 6, labels, { ways: 2, shots: 1 })).toThrow(/Expected 18×6 embedding values/);
  });

  test('the report line', () => {
    const { emb, labels } = axes(30, 4);
    expect(formatOneShot(nWayKShot(emb, 30, labels, { ways: 20, shots: 1, episodes: 10 }), 0)).toBe(
      '  20-way 1-shot  100.00 ± 0.00 %  (mean ± 95 % interval over 10 episodes, seed 0; 1 query per class; classes drawn from 30 held-out identities)',
    );
  });
});

test('eval --n-way on a tiny run: one-shot beside verification, on the same embeddings', async () => {
  const out = path.join(tmp, 'run');
  expect(
    await main(['train', '--out', out, '--epochs', '1', '--dim', '32', '--widths', '8,16', '--quiet', '--no-plots', '--mnist-per-class', '16', '--mnist-eval-per-class', '8']),
  ).toBe(0);
  const json = path.join(tmp, 'eval.json');
  const lines: string[] = [];
  const write = process.stdout.write;
  process.stdout.write = ((s: string) => (lines.push(String(s)), true)) as typeof process.stdout.write;
  try {
    expect(await main(['eval', '--checkpoint', out, '--n-way', '3', '--k-shot', '2', '--episodes', '100', '--json', json])).toBe(0);
  } finally {
    process.stdout.write = write;
  }
  const r = JSON.parse(fs.readFileSync(json, 'utf8'));
  expect(r.oneShot).toMatchObject({ ways: 3, shots: 2, queries: 1, episodes: 100, eligibleIdentities: 3 });
  expect(r.oneShot.accuracy).toBeGreaterThanOrEqual(0);
  expect(lines.join('')).toContain(`3-way 2-shot  ${(100 * r.oneShot.accuracy).toFixed(2)} ± `);
  // Without --n-way: no one-shot; its options alone are a usage error.
  const plain = await runEval({ checkpoint: out });
  expect(plain.oneShot).toBeUndefined();
  expect(plain.result.accuracy).toEqual(r.result.accuracy);
  await expect(main(['eval', '--checkpoint', out, '--k-shot', '5'])).rejects.toThrow(UsageError);
  await expect(main(['eval', '--checkpoint', out, '--n-way', '5'])).rejects.toThrow(/Expected at least 5 identities/);

  // An ensemble: the cosine of two images is the mean of the members' cosines.
  // Two runs of the same seed are the same model, so their ensemble has that
  // model's cosines, and its figures are the single checkpoint's.
  const twin = path.join(tmp, 'twin');
  fs.cpSync(out, twin, { recursive: true });
  const ensJson = path.join(tmp, 'ensemble.json');
  expect(await main(['eval', '--checkpoint', out, '--checkpoint', twin, '--json', ensJson])).toBe(0);
  const ens = JSON.parse(fs.readFileSync(ensJson, 'utf8'));
  expect(ens.checkpoint).toEqual([out, twin].map((p) => path.resolve(p)));
  expect(ens.result.accuracy.mean).toBeCloseTo(plain.result.accuracy.mean, 12);
  expect(ens.result.auc).toBeCloseTo(plain.result.auc, 6);
  expect(ens.members.map((m: { result: { accuracy: unknown } }) => m.result.accuracy)).toEqual([plain.result.accuracy, plain.result.accuracy]);
  // A second, different model: the ensemble is scored on the same pairs, and each member alone as before.
  const other = path.join(tmp, 'other');
  expect(
    await main(['train', '--out', other, '--seed', '1', '--epochs', '1', '--dim', '32', '--widths', '8,16', '--quiet', '--no-plots', '--mnist-per-class', '16', '--mnist-eval-per-class', '8']),
  ).toBe(0);
  const both = await runEval({ checkpoint: [out, other] });
  const alone = await runEval({ checkpoint: other });
  expect(both.members!.map((m) => m.result.accuracy)).toEqual([plain.result.accuracy, alone.result.accuracy]);
  expect(both.result.genuinePairs).toBe(plain.result.genuinePairs);
  expect(both.text).toMatch(/^ensemble of 2 checkpoints on /);
  // Members that hold out other identities, or embed another input shape, are refused.
  const split = path.join(tmp, 'split');
  fs.cpSync(out, split, { recursive: true });
  const stateFile = path.join(split, 'checkpoint', 'state.json');
  const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  fs.writeFileSync(stateFile, JSON.stringify({ ...state, valClasses: state.valClasses.slice(1) }));
  await expect(runEval({ checkpoint: [out, split] })).rejects.toThrow(/same held-out identities/);
  const small = path.join(tmp, 'small');
  expect(
    await main(['train', '--out', small, '--size', '24', '--epochs', '1', '--dim', '32', '--widths', '8,16', '--quiet', '--no-plots', '--mnist-per-class', '16', '--mnist-eval-per-class', '8']),
  ).toBe(0);
  await expect(runEval({ checkpoint: [out, small] })).rejects.toThrow(/must share the input shape: height is 32 in .* but 24 in /);
  await expect(runEval({ checkpoint: [] })).rejects.toThrow(/Expected at least one checkpoint/);
}, 240_000);
