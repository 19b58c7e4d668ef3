/**
 * --workers N: backbone replicas in worker threads, each on a share of every
 * batch, the head on the whole batch. A 2-replica run trains (finite loss
 * that falls), is the same run every time for a seed, writes checkpoints that
 * --resume continues; where every batch is too small to split (a share needs
 * two rows for batch norm) the replicated step is the one-model step bit for bit.
 *
 * The workers run the compiled script (train/dist/run/replica-worker.js), so
 * these tests need `npm run build:ts` (CI's `npm ci` runs it).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { ArgumentError } from 'margin-softmax';
import { configFromArgs, parse, UsageError } from '../src/commands/options';
import { DEFAULT_CONFIG, type TrainConfig } from '../src/run/config';
import { train, type TrainResult } from '../src/run/train';
import { sharesOf } from '../src/run/replicas';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-workers-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The embedded MNIST default, shrunk: 7 training digits × 12 images, a small backbone. */
function tiny(name: string, over: Partial<TrainConfig> = {}): TrainConfig {
  return {
    ...DEFAULT_CONFIG,
    out: path.join(tmp, name),
    mnistPerClass: 12,
    mnistEvalPerClass: 4,
    height: 16,
    width: 16,
    dim: 32,
    widths: [8, 16],
    epochs: 3,
    lrSteps: [],
    batchSize: 16,
    shift: 1,
    evalEvery: 0,
    thetaSamples: 64,
    backend: 'cpu',
    ...over,
  };
}

const quiet = { verbose: false, plots: false };

/** What a seed decides: losses, accuracies, θ_y samples (unless left out) and the checkpoint's bytes (timings left out). */
function outcome(r: TrainResult, withTheta = true): unknown {
  const ckpt = path.join(r.out, 'checkpoint');
  return {
    epochs: r.epochs.map((e) => [e.epoch, e.loss, e.trainAcc, e.images, withTheta ? e.theta : null]),
    weights: fs.readFileSync(path.join(ckpt, 'weights.bin')).toString('base64'),
    head: fs.readFileSync(path.join(ckpt, 'head.safetensors')).toString('base64'),
    momentum: fs.readFileSync(path.join(ckpt, 'optimizer.bin')).toString('base64'),
  };
}

test('--workers takes an integer ≥ 1 or auto (the default: 2 on two CPUs or more, 1 with --distributed mpi)', () => {
  const auto = Math.min(2, os.availableParallelism());
  expect(configFromArgs(parse([]).values, 'train').workers).toBe(auto);
  expect(configFromArgs(parse(['--workers', 'auto']).values, 'train').workers).toBe(auto);
  expect(configFromArgs(parse(['--distributed', 'mpi']).values, 'train').workers).toBe(1);
  expect(configFromArgs(parse(['--workers', '1']).values, 'train').workers).toBe(1);
  expect(configFromArgs(parse(['--workers', '2']).values, 'train').workers).toBe(2);
  expect(() => configFromArgs(parse(['--workers', '0']).values, 'train')).toThrow(UsageError);
  expect(() => configFromArgs(parse(['--workers', 'two']).values, 'train')).toThrow(UsageError);
});

test('train() refuses a workers count that is not an integer ≥ 1, before touching the run folder', async () => {
  for (const workers of [0, 1.5, NaN]) {
    const cfg = tiny(`bad-${workers}`, { workers });
    await expect(train(cfg, quiet)).rejects.toThrow(ArgumentError);
    await expect(train(cfg, quiet)).rejects.toThrow(/Expected an integer ≥ 1 for workers but received/);
    expect(fs.existsSync(cfg.out)).toBe(false);
  }
});

test('a batch is shared out in equal parts of at least two rows, in batch order', () => {
  expect(sharesOf(32, 2)).toEqual([16, 16]);
  expect(sharesOf(31, 2)).toEqual([16, 15]);
  expect(sharesOf(9, 4)).toEqual([3, 2, 2, 2]);
  expect(sharesOf(3, 2)).toEqual([3]);
  expect(sharesOf(5, 8)).toEqual([3, 2]);
  expect(sharesOf(16, 1)).toEqual([16]);
});

describe('two backbone replicas', () => {
  test('train: the loss is finite and falls, the same for a seed run after run', async () => {
    const a = await train(tiny('w2a', { workers: 2 }), quiet);
    const b = await train(tiny('w2b', { workers: 2 }), quiet);
    const losses = a.epochs.map((e) => e.loss as number);
    expect(losses).toHaveLength(3);
    for (const l of losses) expect(Number.isFinite(l)).toBe(true);
    expect(losses[2]).toBeLessThan(losses[0]);
    expect(outcome(b)).toEqual(outcome(a));
    // Half-batch batch-norm statistics: not the one-model run.
    const one = await train(tiny('w1', { workers: 1 }), quiet);
    expect(one.epochs.map((e) => e.loss)).not.toEqual(losses);
    for (const e of a.epochs) expect(e.headSeconds).toBeGreaterThan(0);
  });

  test('batches too small to split: the replicated step equals the one-model step bit for bit', async () => {
    // Batch 3: a share needs two rows, so every step runs on this thread's
    // replica alone, through the gather, the gradient sum, the moving-statistics
    // mean and the weight broadcast of the replicated path.
    const one = await train(tiny('s1', { workers: 1, batchSize: 3, epochs: 2 }), quiet);
    const two = await train(tiny('s2', { workers: 2, batchSize: 3, epochs: 2 }), quiet);
    expect(outcome(two)).toEqual(outcome(one));
  });

  test('--resume continues a 2-replica run from its checkpoint as an uninterrupted run', async () => {
    const whole = await train(tiny('r-whole', { workers: 2 }), quiet);
    await train(tiny('r-part', { workers: 2, epochs: 2 }), quiet);
    const resumed = await train(tiny('r-part', { workers: 2 }), { ...quiet, resume: true });
    // θ_y is a sample whose RNG starts afresh in a resumed process: not compared.
    expect(outcome(resumed, false)).toEqual(outcome(whole, false));
  });
});
