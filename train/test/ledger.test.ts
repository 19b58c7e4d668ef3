/**
 * The accumulating comparison (../src/ledger): a run folder recorded as one
 * entry, and the report merging what exists: means over the seeds present,
 * the missing runs named, the paired per-seed differences against ArcFace,
 * and entries of another configuration kept apart.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, expect, test } from 'vitest';
import { DEFAULT_CONFIG, makeMargin, marginLabel } from '../src/run/config';
import { entryFile, entryOfRun, ledgerReport, readEntries, type LedgerEntry } from '../src/commands/ledger';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-ledger-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const arc = makeMargin('arcface');
const ada = makeMargin('adaptive');
const cos = makeMargin('cosface');

function entry(margin: ReturnType<typeof makeMargin>, seed: number, acc: number, oneShot: number | null, config: Record<string, unknown> = { epochs: 3, size: 32 }): LedgerEntry {
  return {
    format: 'margin-softmax/ledger-run',
    version: 1,
    loss: marginLabel(margin),
    margin,
    seed,
    config: { ...config, margin, seed },
    epochs: 3,
    verification: { accuracy: acc, std: 0.01, tar1e2: null, rank1: 0.5, auc: 0.9 },
    oneShot: oneShot === null ? null : { ways: 20, shots: 1, episodes: 1000, accuracy: oneShot, ci95: 0.01 },
    imgPerSec: 50,
    trainSeconds: 10,
    recordedAt: '2026-12-07T00:00:00Z',
  };
}

test('a finished run folder becomes one entry; an unfinished one is refused', () => {
  const run = path.join(tmp, 'run');
  fs.mkdirSync(run, { recursive: true });
  fs.writeFileSync(path.join(run, 'config.json'), JSON.stringify({ margin: ada, seed: 2, epochs: 2, out: '/x', height: 32 }));
  const rec = (epoch: number, acc: number) => ({ epoch, images: 100, trainSeconds: 2, val: { accuracy: acc, std: 0.02, tar1e2: 0.3, rank1: 0.4, auc: 0.8 } });
  fs.writeFileSync(path.join(run, 'metrics.jsonl'), [rec(0, 0.6), rec(1, 0.7)].map((r) => JSON.stringify(r)).join('\n') + '\n');
  expect(() => entryOfRun(run, null)).toThrow(/not a finished run/);
  fs.appendFileSync(path.join(run, 'metrics.jsonl'), JSON.stringify(rec(2, 0.8)) + '\n');
  const evalJson = path.join(tmp, 'eval.json');
  fs.writeFileSync(evalJson, JSON.stringify({ oneShot: { ways: 20, shots: 1, episodes: 1000, accuracy: 0.66, ci95: 0.02 } }));
  const e = entryOfRun(run, evalJson);
  expect(e.loss).toBe('adaptive(m1=0.03, m2=0.5)');
  expect(e.seed).toBe(2);
  expect(e.verification?.accuracy).toBe(0.8);
  expect(e.oneShot?.accuracy).toBe(0.66);
  expect(e.imgPerSec).toBe(50);
  expect(e.config.out).toBeUndefined();
  expect(path.basename(entryFile(tmp, ada, 2))).toBe('adaptive-seed2.json');
});

test('the report merges the entries present, names the missing runs and pairs each loss with ArcFace by seed', () => {
  const entries = [entry(arc, 0, 0.8, 0.7), entry(arc, 1, 0.82, 0.72), entry(ada, 0, 0.83, 0.75), entry(ada, 1, 0.81, 0.73), entry(cos, 0, 0.79, null)];
  const text = ledgerReport(entries, [arc, cos, ada], [0, 1, 2], 'arcface');
  expect(text).toContain('Runs present: 5 of 9');
  expect(text).toContain('Missing: arcface(m=0.5) seed 2; cosface(m=0.35) seed 1; cosface(m=0.35) seed 2; adaptive(m1=0.03, m2=0.5) seed 2.');
  // adaptive − arcface: +3 and −1 points → +1.00 ± 2.83, one seed won, n 2.
  expect(text).toContain('| adaptive(m1=0.03, m2=0.5) | +1.00 ± 2.83 | 1 | 2 |');
  // one-shot: +5 and +1 → +3.00 ± 2.83, two won.
  expect(text).toContain('| adaptive(m1=0.03, m2=0.5) | +3.00 ± 2.83 | 2 | 2 |');
  // cosface has one paired seed for verification (no spread to give), none for one-shot.
  expect(text).toContain('| cosface(m=0.35) | −1.00 | 0 | 1 |');
  expect(text).toContain('| cosface(m=0.35) | 79.00 | 1 |');
  expect(text).toContain('| cosface(m=0.35) | — | 0 | 0 |');
  expect(text).toContain('| arcface(m=0.5) | 81.00 ± 1.41 | 2 |');
});

test('an entry trained with another configuration is listed apart, not merged', () => {
  const entries = [entry(arc, 0, 0.8, 0.7), entry(ada, 0, 0.9, 0.9, { epochs: 5, size: 32 })];
  const text = ledgerReport(entries, [arc, ada], [0], 'arcface');
  expect(text).toContain('Left out (another configuration than the reference\u2019s runs)'.replace('\u2019', "'"));
  expect(text).toContain('| adaptive(m1=0.03, m2=0.5) | — | 0 |');
});

test('an option unset (null) and an option absent are the same configuration; one set is another', () => {
  const entries = [entry(arc, 0, 0.8, 0.7, { epochs: 3, size: 32 }), entry(ada, 0, 0.9, 0.9, { size: 32, epochs: 3, initFrom: null })];
  const merged = ledgerReport(entries, [arc, ada], [0], 'arcface');
  expect(merged).not.toContain('Left out');
  expect(merged).toContain('| adaptive(m1=0.03, m2=0.5) | +10.00 | 1 | 1 |');
  const apart = ledgerReport([entries[0], entry(ada, 0, 0.9, 0.9, { epochs: 3, size: 32, initFrom: 'runs/x' })], [arc, ada], [0], 'arcface');
  expect(apart).toContain('Left out (another configuration');
});

test('an option at its default and the same option absent (a run from before it existed) are the same configuration', () => {
  const old = entry(arc, 0, 0.8, 0.7, { epochs: 3, size: 32, rotate: 10 });
  const withNew = entry(ada, 0, 0.9, 0.9, { epochs: 3, size: 32, rotate: 10, contrast: DEFAULT_CONFIG.contrast, lightingRamp: DEFAULT_CONFIG.lightingRamp });
  expect(ledgerReport([old, withNew], [arc, ada], [0], 'arcface')).not.toContain('Left out');
  const changed = entry(ada, 0, 0.9, 0.9, { epochs: 3, size: 32, rotate: 10, contrast: 0.2 });
  expect(ledgerReport([old, changed], [arc, ada], [0], 'arcface')).toContain('Left out (another configuration');
  const otherRotate = entry(ada, 0, 0.9, 0.9, { epochs: 3, size: 32, rotate: DEFAULT_CONFIG.rotate });
  expect(ledgerReport([old, otherRotate], [arc, ada], [0], 'arcface')).toContain('Left out (another configuration');
});

test('readEntries reads the ledger files of a folder and ignores other JSON', () => {
  const dir = path.join(tmp, 'ledger');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(entryFile(dir, arc, 0), JSON.stringify(entry(arc, 0, 0.8, 0.7)));
  fs.writeFileSync(path.join(dir, 'other.json'), JSON.stringify({ hello: 1 }));
  expect(readEntries(dir).map((e) => e.loss)).toEqual(['arcface(m=0.5)']);
  expect(readEntries(path.join(tmp, 'absent'))).toEqual([]);
});
