/**
 * The command line: option parsing into a training configuration, clear
 * errors (unknown options, bad values, margin parameters that do not apply,
 * missing folders and checkpoints), and the embedded default data set
 * (MNIST digits, no --data) trained for one short epoch through `main`.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { main, report } from '../src/commands/main';
import { configFromArgs, defaultSteps, parse, UsageError } from '../src/commands/options';
import { CheckpointMismatchError } from '../src/run/checkpoint';
import { formatCompare, pairedTable, resumableRun, runCompare, type CompareCell } from '../src/commands/compare';
import { DEFAULT_CONFIG } from '../src/run/config';
import { DataError } from '../src/data/datasets';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cfg(args: string[], command: 'train' | 'compare' = 'train') {
  return configFromArgs(parse(args).values, command);
}

describe('options → configuration', () => {
  test('defaults: adaptive (0.03, 0.5), s = 64, dim 512, 32×32 grey, wasm, the embedded data set', () => {
    const c = cfg([]);
    expect(c.margin).toEqual({ kind: 'adaptive', m1: 0.03, m2: 0.5 });
    expect([c.scale, c.dim, c.height, c.width, c.channels, c.tfBackend, c.data]).toEqual([64, 512, 32, 32, 1, 'wasm', null]);
    expect(c.lrSteps).toEqual(DEFAULT_CONFIG.lrSteps);
  });

  test('every margin kind with its parameters', () => {
    expect(cfg(['--margin', 'arcface']).margin).toEqual({ kind: 'arcface', m: 0.5 });
    expect(cfg(['--margin', 'cosface', '--m', '0.4']).margin).toEqual({ kind: 'cosface', m: 0.4 });
    expect(cfg(['--margin', 'combined']).margin).toEqual({ kind: 'combined', m1: 1, m2: 0.3, m3: 0.2 });
    expect(cfg(['--margin', 'adaptive', '--m1', '0.1', '--m2', '0.4']).margin).toEqual({ kind: 'adaptive', m1: 0.1, m2: 0.4 });
    expect(cfg(['--margin', 'elastic-arc', '--seed', '3']).margin).toEqual({ kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: 3 });
    expect(cfg(['--margin', 'elastic-cos', '--sigma', '0.1']).margin).toEqual({ kind: 'elastic-cos', m: 0.35, sigma: 0.1, seed: 0 });
    expect(cfg(['--margin', 'cvm']).margin).toEqual({ kind: 'cvm', m1: 0.3, m2: 0.2 });
    expect(cfg(['--margin', 'softmax']).margin).toEqual({ kind: 'softmax' });
    expect(() => cfg(['--margin', 'cosface', '--m1', '0.3'])).toThrow(/--m1 does not apply to --margin cosface/);
    expect(() => cfg(['--margin', 'sphereface'])).toThrow(/Expected --margin one of/);
  });

  test('sizes, lists, schedules and bad values', () => {
    const c = cfg(['--size', '40x32', '--widths', '8,16', '--epochs', '20', '--lr-steps', '12,18']);
    expect([c.height, c.width, c.widths, c.epochs, c.lrSteps]).toEqual([40, 32, [8, 16], 20, [12, 18]]);
    expect(cfg(['--epochs', '10']).lrSteps).toEqual([6, 9]);
    expect(defaultSteps(3)).toEqual([2, 3]);
    expect(() => cfg(['--size', 'big'])).toThrow(UsageError);
    expect(() => cfg(['--epochs', '0'])).toThrow(/Expected an integer ≥ 1 for --epochs but received "0"/);
    expect(() => cfg(['--tf-backend', 'webgl'])).toThrow(/--tf-backend wasm or cpu/);
    expect(() => cfg(['--on-bad-image', 'ignore'])).toThrow(/skip or stop/);
  });

  test('augmentation ranges: photometric off by default, each option read and bounded', () => {
    const d = cfg([]);
    expect([d.contrast, d.brightness, d.lightingRamp]).toEqual([0, 0, 0]);
    const c = cfg(['--contrast', '0.2', '--brightness', '0.1', '--lighting-ramp', '0.15', '--rotate', '10', '--shear', '5']);
    expect([c.contrast, c.brightness, c.lightingRamp, c.rotate, c.shear]).toEqual([0.2, 0.1, 0.15, 10, 5]);
    expect(() => cfg(['--contrast', '1'])).toThrow(/Expected a fraction in \[0, 0.9\] for --contrast but received "1"/);
    expect(() => cfg(['--brightness', '-0.1'])).toThrow(/--brightness/);
    expect(() => cfg(['--lighting-ramp', 'x'])).toThrow(/--lighting-ramp/);
  });
});

describe('errors through main()', () => {
  test('unknown command or option', async () => {
    await expect(main(['fit'])).rejects.toThrow(/Unknown command "fit"/);
    await expect(main(['train', '--epoch', '3'])).rejects.toThrow(UsageError);
    expect(report(new UsageError('x'))).toBe(2);
  });
  test('missing data folder, missing checkpoint', async () => {
    await expect(main(['train', '--data', path.join(tmp, 'missing'), '--out', path.join(tmp, 'r')])).rejects.toThrow(DataError);
    await expect(main(['train', '--data', path.join(tmp, 'missing')])).rejects.toThrow(/Data folder not found: .*missing/);
    await expect(main(['eval', '--checkpoint', path.join(tmp, 'no-run')])).rejects.toThrow(CheckpointMismatchError);
    await expect(main(['eval'])).rejects.toThrow(/eval needs --checkpoint/);
    expect(report(new DataError('y'))).toBe(1);
  });
});

test('no --data: trains and evaluates on the embedded MNIST digits', async () => {
  const out = path.join(tmp, 'mnist');
  const json = path.join(tmp, 'mnist.json');
  const code = await main([
    'train', '--out', out, '--epochs', '1', '--dim', '64', '--widths', '8,16', '--quiet', '--no-plots', '--json', json,
    '--mnist-per-class', '24', '--mnist-eval-per-class', '12',
  ]);
  expect(code).toBe(0);
  const r = JSON.parse(fs.readFileSync(json, 'utf8'));
  expect(r.after.identities).toBe(3); // digits 7, 8, 9 held out
  expect(r.after.images).toBe(36);
  expect(r.after.folds).toBe(3);
  expect(r.after.genuinePairs).toBe(3 * 66);
  expect(r.epochs.map((e: { epoch: number }) => e.epoch)).toEqual([0, 1]);
  expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).split.trainClasses).toEqual(['0', '1', '2', '3', '4', '5', '6']);
});

test('the compare table has a row per loss and a column per data set', () => {
  const cell = (loss: string, dataset: string, acc: number[]): CompareCell => ({ loss, dataset, seeds: acc.map((_, i) => i), accuracy: acc, tar1e2: acc, rank1: acc, mean: 0, std: 0 });
  const text = formatCompare(
    [cell('softmax', 'orl_faces', [0.8, 0.9]), cell('softmax', 'omniglot', [0.7, 0.7]), cell('adaptive(m1=0.03, m2=0.5)', 'orl_faces', [0.9, 0.92]), cell('adaptive(m1=0.03, m2=0.5)', 'omniglot', [0.75, 0.77])],
    [],
    { seeds: [0, 1], base: DEFAULT_CONFIG },
  );
  const first = text.split('\n\n')[1].split('\n');
  expect(first[0]).toBe('| loss | orl_faces | omniglot |');
  expect(first[2]).toBe('| softmax | 85.00 ± 7.07 | 70.00 ± 0.00 |');
  expect(first[3]).toBe('| adaptive(m1=0.03, m2=0.5) | 91.00 ± 1.41 | 76.00 ± 1.41 |');
  // Paired by seed: orl 0.9−0.8 = +10, 0.92−0.9 = +2 → +6.00 ± 5.66, won 2/2;
  // omniglot +5, +7 → +6.00 ± 1.41.
  const paired = text.split('\n\n').slice(-2).join('\n\n').split('\n');
  expect(paired[0]).toMatch(/^Paired by seed: verification accuracy of adaptive\(m1=0.03, m2=0.5\) minus each loss/);
  expect(paired[2]).toBe('| versus | orl_faces | omniglot |');
  expect(paired[4]).toBe('| softmax | +6.00 ± 5.66 (2/2) | +6.00 ± 1.41 (2/2) |');
});

test('the θ_y table: median target angle in degrees, mean ± std over seeds, no untrained row', () => {
  const cell = (loss: string, acc: number[], theta?: (number | null)[]): CompareCell => ({ loss, dataset: 'd', seeds: acc.map((_, i) => i), accuracy: acc, tar1e2: acc, rank1: acc, thetaP50: theta, mean: 0, std: 0 });
  const untrained = [cell('untrained backbone', [0.6, 0.6])];
  const text = formatCompare([cell('softmax', [0.7, 0.8], [60, 64]), cell('adaptive', [0.8, 0.8], [50, null])], untrained, { seeds: [0, 1], base: DEFAULT_CONFIG });
  const blocks = text.split('\n\n');
  const theta = blocks[blocks.findIndex((b) => b.startsWith('Median target angle')) + 1].split('\n');
  expect(theta).toEqual(['| loss | d |', '|---|---:|', '| softmax | 62.00 ± 2.83 |', '| adaptive | 50.00 ± 0.00 |']);
  // Cells from older compare.json files carry no θ_y: no table.
  expect(formatCompare([cell('softmax', [0.7, 0.8])], untrained, { seeds: [0, 1], base: DEFAULT_CONFIG })).not.toMatch(/Median target angle/);
});

test('the paired table reports losses and ties, and is left out for one seed or no adaptive row', () => {
  const cell = (loss: string, acc: number[], seeds = acc.map((_, i) => i)): CompareCell => ({ loss, dataset: 'd', seeds, accuracy: acc, tar1e2: acc, rank1: acc, mean: 0, std: 0 });
  const t = pairedTable([cell('adaptive', [0.5, 0.6, 0.7]), cell('arcface', [0.6, 0.6, 0.6])], ['d'], ['arcface', 'adaptive'])!;
  // −10, 0, +10 → mean 0 (printed +0.00), std 10, one seed won (a tie is not a win).
  expect(t.split('\n')[4]).toBe('| arcface | +0.00 ± 10.00 (1/3) |');
  const u = pairedTable([cell('adaptive', [0.5, 0.6]), cell('cosface', [0.7, 0.9])], ['d'], ['cosface', 'adaptive'])!;
  expect(u.split('\n')[4]).toBe('| cosface | −25.00 ± 7.07 (0/2) |');
  // Only seeds both losses ran are paired.
  const v = pairedTable([cell('adaptive', [0.5, 0.6, 0.9], [0, 1, 2]), cell('softmax', [0.4, 0.4], [1, 2])], ['d'], ['softmax', 'adaptive'])!;
  expect(v.split('\n')[4]).toBe('| softmax | +35.00 ± 21.21 (2/2) |');
  expect(pairedTable([cell('adaptive', [0.5]), cell('arcface', [0.6])], ['d'], ['arcface', 'adaptive'])).toBeNull();
  expect(pairedTable([cell('cosface', [0.5, 0.6]), cell('arcface', [0.6, 0.7])], ['d'], ['arcface', 'cosface'])).toBeNull();
});

test('compare --resume reads back finished runs of the same configuration and retrains changed ones', async () => {
  const out = path.join(tmp, 'compare');
  const base = { ...cfg(['--epochs', '1', '--dim', '32', '--widths', '8,16', '--mnist-per-class', '24', '--mnist-eval-per-class', '12'], 'compare'), out };
  const opts = { datasets: [null], losses: [{ kind: 'softmax' as const }], seeds: [0, 1], base, out };
  const first = await runCompare({ ...opts, log: () => {} });
  const runDir = path.join(out, 'mnist_embedded_', 'softmax', 'seed0');
  expect(resumableRun({ ...base, margin: { kind: 'softmax' }, seed: 0, out: runDir })).toBe(true);
  // Another learning rate is another configuration: not resumable.
  expect(resumableRun({ ...base, margin: { kind: 'softmax' }, seed: 0, out: runDir, lr: 0.05 })).toBe(false);
  expect(resumableRun({ ...base, margin: { kind: 'softmax' }, seed: 0, out: path.join(tmp, 'nowhere') })).toBe(false);
  // A config.json written before an option existed lacks it: the run had the option's default.
  const file = path.join(runDir, 'config.json');
  const saved = fs.readFileSync(file, 'utf8');
  const { contrast: _c, ...older } = JSON.parse(saved);
  void _c;
  fs.writeFileSync(file, JSON.stringify(older));
  expect(resumableRun({ ...base, margin: { kind: 'softmax' }, seed: 0, out: runDir })).toBe(true);
  expect(resumableRun({ ...base, margin: { kind: 'softmax' }, seed: 0, out: runDir, contrast: 0.2 })).toBe(false);
  fs.writeFileSync(file, saved);

  const lines: string[] = [];
  const again = await runCompare({ ...opts, resume: true, log: (m) => lines.push(m) });
  expect(lines.filter((l) => l.includes('resuming the saved run'))).toHaveLength(2);
  expect(lines.filter((l) => l.includes('no epochs left to train'))).toHaveLength(2);
  expect(again.cells[0].accuracy).toEqual(first.cells[0].accuracy);
  expect(again.untrained[0].accuracy).toEqual(first.untrained[0].accuracy);

  const changed: string[] = [];
  await runCompare({ ...opts, seeds: [0], base: { ...base, lr: 0.05 }, resume: true, log: (m) => changed.push(m) });
  expect(changed.some((l) => l.includes('resuming'))).toBe(false);
}, 120_000);

const CLI = path.resolve(__dirname, '..', 'dist', 'cli.js');
test.skipIf(!fs.existsSync(CLI))('Ctrl-C (SIGINT) stops the built bin cleanly and keeps the last checkpoint', async () => {
  const out = path.join(tmp, 'sigint');
  const { spawn } = await import('child_process');
  const child = spawn(process.execPath, [CLI, 'train', '--out', out, '--epochs', '3', '--mnist-per-class', '40', '--mnist-eval-per-class', '8', '--dim', '32', '--widths', '8,16', '--no-plots'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const state = path.join(out, 'checkpoint', 'state.json');
  const timer = setInterval(() => {
    // Once epoch 1 is saved and epoch 2 is under way, press Ctrl-C.
    if (fs.existsSync(state) && err.includes('epoch 2/3 [')) {
      clearInterval(timer);
      child.kill('SIGINT');
    }
  }, 50);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  clearInterval(timer);
  expect(code).toBe(130);
  expect(err).toMatch(/Stopped during epoch 2; the checkpoint of epoch 1 .* is kept: continue with --resume/);
  expect(JSON.parse(fs.readFileSync(state, 'utf8')).epoch).toBe(1);
  expect(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length).toBe(2);
}, 120_000);
