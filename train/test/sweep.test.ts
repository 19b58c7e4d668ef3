/**
 * compare's parameter sweeps: the --losses entries (kind:name=value, `|`
 * alternatives, the m1 = 0 baseline a grid adds), their errors, the run
 * folder per loss, the Table 2 layout on fixed accuracies, and one tiny
 * sweep trained end to end through `main`.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { ArgumentError, type Margin } from 'margin-softmax';
import { main } from '../src/commands/main';
import { UsageError } from '../src/commands/options';
import { COMPARE_LOSSES, pairedTable, type CompareCell } from '../src/commands/compare';
import { formatSweep, lossFolder, pairedDifferences, parseLossEntry, parseLosses, type SweepCell } from '../src/commands/sweep';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-sweep-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('--losses entries', () => {
  test('bare kinds take the paper parameters compare uses by default', () => {
    expect(parseLosses('softmax,arcface,cosface,combined,elastic-arc,cvm,adaptive')).toEqual(COMPARE_LOSSES);
  });

  test('parameters override the defaults of their kind', () => {
    expect(parseLossEntry('adaptive:m1=0.01:m2=0.45')).toEqual([{ kind: 'adaptive', m1: 0.01, m2: 0.45 }]);
    expect(parseLossEntry('arcface:m=0.4')).toEqual([{ kind: 'arcface', m: 0.4 }]);
    expect(parseLossEntry('adaptive:m2=0.6')).toEqual([{ kind: 'adaptive', m1: 0.03, m2: 0.6 }]);
    expect(parseLossEntry(' cvm:m2=0.1 ')).toEqual([{ kind: 'cvm', m1: 0.3, m2: 0.1 }]);
  });

  test('a grid expands to every combination, with the m1 = 0 baseline of each m2 first', () => {
    const g = parseLossEntry('adaptive:m1=0.01|0.03|0.05:m2=0.45|0.5|0.55') as { m1: number; m2: number }[];
    expect(g).toHaveLength(12);
    expect(g.slice(0, 3).map((m) => [m.m1, m.m2])).toEqual([[0, 0.45], [0, 0.5], [0, 0.55]]);
    expect(g.slice(3).map((m) => [m.m1, m.m2])).toEqual([
      [0.01, 0.45], [0.01, 0.5], [0.01, 0.55],
      [0.03, 0.45], [0.03, 0.5], [0.03, 0.55],
      [0.05, 0.45], [0.05, 0.5], [0.05, 0.55],
    ]);
    // Already asked for: not added twice. Grids of other kinds get no baseline.
    expect(parseLossEntry('adaptive:m1=0|0.03')).toEqual([{ kind: 'adaptive', m1: 0, m2: 0.5 }, { kind: 'adaptive', m1: 0.03, m2: 0.5 }]);
    expect(parseLossEntry('arcface:m=0.3|0.5')).toEqual([{ kind: 'arcface', m: 0.3 }, { kind: 'arcface', m: 0.5 }]);
    // A single adaptive entry is not a grid: no baseline.
    expect(parseLossEntry('adaptive:m1=0.05')).toHaveLength(1);
  });

  test('duplicates across entries are trained once', () => {
    expect(parseLosses('adaptive,adaptive:m1=0.03:m2=0.5,arcface')).toEqual([{ kind: 'adaptive', m1: 0.03, m2: 0.5 }, { kind: 'arcface', m: 0.5 }]);
  });

  test('clear errors for unknown kinds, parameters and values', () => {
    expect(() => parseLossEntry('sphereface')).toThrow(ArgumentError);
    expect(() => parseLossEntry('sphereface:m=4')).toThrow(/Expected a loss kind \(one of softmax, arcface, .*\) in --losses entry "sphereface:m=4" but received "sphereface"/);
    expect(() => parseLossEntry('adaptive:m=0.5')).toThrow(/Expected a parameter of adaptive \(m1, m2\) in --losses entry "adaptive:m=0.5" but received "m"/);
    expect(() => parseLossEntry('softmax:m=1')).toThrow(/Expected a parameter of softmax \(it has none\)/);
    expect(() => parseLossEntry('adaptive:m1')).toThrow(/Expected name=value .* but received "m1"/);
    expect(() => parseLossEntry('adaptive:m1=abc')).toThrow(/Expected a finite number ≥ 0 for m1 in --losses entry "adaptive:m1=abc" but received "abc"/);
    expect(() => parseLossEntry('adaptive:m1=0.1|')).toThrow(/for m1 .* but received ""/);
    expect(() => parseLossEntry('adaptive:m1=-0.1')).toThrow(/but received "-0.1"/);
    expect(() => parseLossEntry('adaptive:m1=0.1:m1=0.2')).toThrow(/each parameter once .* m1 is given twice/);
    expect(() => parseLosses('softmax,,arcface')).toThrow(/comma-separated loss entries/);
  });

  test('through main(): a bad entry is a usage error (exit code 2)', async () => {
    await expect(main(['compare', '--losses', 'adaptive:m3=0.1', '--out', path.join(tmp, 'x')])).rejects.toThrow(UsageError);
  });

  test('run folders: the kind for its default parameters, kind and parameters otherwise', () => {
    expect(lossFolder({ kind: 'adaptive', m1: 0.03, m2: 0.5 })).toBe('adaptive');
    expect(lossFolder({ kind: 'adaptive', m1: 0, m2: 0.45 })).toBe('adaptive-m1_0-m2_0.45');
    expect(lossFolder({ kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: 3 })).toBe('elastic-arc');
    expect(lossFolder({ kind: 'softmax' })).toBe('softmax');
  });
});

describe('Table 2 layout', () => {
  const cell = (m1: number, m2: number, accuracy: number[], seeds = [0, 1, 2], dataset = 'orl_faces'): SweepCell => ({
    margin: { kind: 'adaptive', m1, m2 } as Margin,
    dataset,
    seeds,
    accuracy,
  });

  test('rows m1, columns m2, mean ± std; differences paired by seed against m1 = 0', () => {
    const cells = [
      cell(0, 0.45, [0.8, 0.82, 0.84]),
      cell(0, 0.5, [0.9, 0.9, 0.9]),
      cell(0.01, 0.45, [0.81, 0.84, 0.84]),
      cell(0.01, 0.5, [0.92, 0.94, 0.93]),
      cell(0.03, 0.45, [0.79, 0.82, 0.83]),
      // Only two seeds of this cell: the difference uses those two.
      cell(0.03, 0.5, [0.95, 0.9], [0, 2]),
      { dataset: 'orl_faces', seeds: [0], accuracy: [0.5] }, // no margin (untrained): not in the grid
      { margin: { kind: 'arcface', m: 0.5 } as Margin, dataset: 'orl_faces', seeds: [0], accuracy: [0.5] },
    ];
    const lines = formatSweep(cells)!.split('\n');
    expect(lines[0]).toBe('Adaptive margin sweep on orl_faces: verification accuracy (%), rows m1, columns m2, mean ± std over seeds 0, 1, 2');
    expect(lines.slice(2, 7)).toEqual([
      '| m1 \\ m2 | 0.45 | 0.5 |',
      '|---:|---:|---:|',
      '| 0 | 82.00 ± 2.00 | 90.00 ± 0.00 |',
      '| 0.01 | 83.00 ± 1.73 | 93.00 ± 1.00 |',
      '| 0.03 | 81.33 ± 2.08 | 92.50 ± 3.54 |',
    ]);
    expect(lines[8]).toMatch(/^Paired by seed on orl_faces: accuracy minus m1 = 0 at the same m2/);
    // m1 = 0.01, m2 = 0.45: +1, +2, 0 → +1.00 ± 1.00, 2 of 3 won (a tie is no win);
    // m2 = 0.5: +2, +4, +3 → +3.00 ± 1.00 (3/3). m1 = 0.03: −1, 0, −1 → −0.67 ± 0.58 (0/3);
    // m2 = 0.5 on seeds 0 and 2: +5, 0 → +2.50 ± 3.54 (1/2).
    expect(lines.slice(12)).toEqual(['| 0.01 | +1.00 ± 1.00 (2/3) | +3.00 ± 1.00 (3/3) |', '| 0.03 | −0.67 ± 0.58 (0/3) | +2.50 ± 3.54 (1/2) |']);
  });

  test('a missing cell shows —; no m1 = 0 row, no difference table; no grid, no table', () => {
    const t = formatSweep([cell(0.01, 0.45, [0.8]), cell(0.03, 0.5, [0.9])])!;
    expect(t).toContain('| 0.01 | 80.00 ± 0.00 | — |');
    expect(t).not.toContain('Paired by seed');
    expect(formatSweep([cell(0.03, 0.5, [0.9])])).toBeNull();
    expect(formatSweep([])).toBeNull();
  });

  test('one table per data set', () => {
    const t = formatSweep([cell(0, 0.5, [0.8], [0], 'a'), cell(0.03, 0.5, [0.9], [0], 'a'), cell(0, 0.5, [0.7], [0], 'b'), cell(0.03, 0.5, [0.6], [0], 'b')])!;
    expect(t.match(/^Adaptive margin sweep on (a|b)/gm)).toEqual(['Adaptive margin sweep on a', 'Adaptive margin sweep on b']);
    expect(t).toContain('| 0.03 | +10.00 ± 0.00 (1/1) |');
    expect(t).toContain('| 0.03 | −10.00 ± 0.00 (0/1) |');
  });

  test('pairedDifferences pairs by seed, not by position', () => {
    expect(pairedDifferences(cell(0.01, 0.5, [0.9, 0.8], [1, 0]), cell(0, 0.5, [0.5, 0.6], [0, 1]))).toEqual([0.9 - 0.6, 0.8 - 0.5]);
  });
});

test('a tiny sweep end to end: the grid trains m1 = 0 baselines and prints the table', async () => {
  const out = path.join(tmp, 'sweep');
  const json = path.join(tmp, 'sweep.json');
  const lines: string[] = [];
  const write = process.stdout.write;
  process.stdout.write = ((s: string) => (lines.push(String(s)), true)) as typeof process.stdout.write;
  let code: number;
  try {
    code = await main([
      'compare', '--losses', 'adaptive:m1=0.05:m2=0.4|0.5', '--seeds', '0,1', '--out', out, '--json', json,
      '--epochs', '1', '--dim', '32', '--widths', '8,16', '--mnist-per-class', '16', '--mnist-eval-per-class', '8', '--eval-every', '1',
    ]);
  } finally {
    process.stdout.write = write;
  }
  expect(code).toBe(0);
  const r = JSON.parse(fs.readFileSync(json, 'utf8'));
  const margins = r.cells.map((c: { margin: { m1: number; m2: number } }) => [c.margin.m1, c.margin.m2]);
  expect(margins).toEqual([[0, 0.4], [0, 0.5], [0.05, 0.4], [0.05, 0.5]]);
  for (const folder of ['adaptive-m1_0-m2_0.4', 'adaptive-m1_0-m2_0.5', 'adaptive-m1_0.05-m2_0.4', 'adaptive-m1_0.05-m2_0.5']) {
    for (const seed of [0, 1]) expect(fs.existsSync(path.join(out, 'mnist_embedded_', folder, `seed${seed}`, 'eval.json'))).toBe(true);
  }
  const text = lines.join('');
  const table = text.slice(text.indexOf('Adaptive margin sweep on mnist (embedded)'));
  const rows = table.split('\n');
  expect(rows[2]).toBe('| m1 \\ m2 | 0.4 | 0.5 |');
  // The cells' numbers are the runs' own: recompute one from compare.json.
  const at = (m1: number, m2: number) => r.cells.find((c: { margin: { m1: number; m2: number } }) => c.margin.m1 === m1 && c.margin.m2 === m2);
  const c = at(0.05, 0.4);
  const mean = (c.accuracy[0] + c.accuracy[1]) / 2;
  expect(rows[5]).toContain(`| 0.05 | ${(100 * mean).toFixed(2)} ± `);
  expect(table).toContain('Paired by seed on mnist (embedded)');
  const d0 = at(0.05, 0.5).accuracy[0] - at(0, 0.5).accuracy[0];
  const d1 = at(0.05, 0.5).accuracy[1] - at(0, 0.5).accuracy[1];
  const wins = [d0, d1].filter((d) => d > 0).length;
  expect(table).toMatch(new RegExp(`\\| 0\\.05 \\| .* \\| [+−]${(100 * Math.abs((d0 + d1) / 2)).toFixed(2)} ± ${(100 * Math.abs(d0 - d1) / Math.SQRT2).toFixed(2)} \\(${wins}/2\\) \\|`));
  expect(fs.readFileSync(path.join(out, 'compare.md'), 'utf8')).toContain('Adaptive margin sweep on mnist (embedded)');
}, 240_000);

test('with several adaptive rows the paired table takes the paper’s setting as its reference', () => {
  const cell = (loss: string, acc: number[]): CompareCell => ({ loss, dataset: 'd', seeds: [0, 1], accuracy: acc, tar1e2: acc, rank1: acc, mean: 0, std: 0 });
  const losses = ['adaptive(m1=0, m2=0.5)', 'adaptive(m1=0.03, m2=0.5)', 'softmax'];
  const t = pairedTable([cell(losses[0], [0.5, 0.5]), cell(losses[1], [0.7, 0.8]), cell(losses[2], [0.6, 0.6])], ['d'], losses)!;
  expect(t.split('\n')[0]).toMatch(/of adaptive\(m1=0.03, m2=0.5\) minus each loss/);
  expect(t.split('\n').slice(4)).toEqual(['| adaptive(m1=0, m2=0.5) | +25.00 ± 7.07 (2/2) |', '| softmax | +15.00 ± 7.07 (2/2) |']);
});
