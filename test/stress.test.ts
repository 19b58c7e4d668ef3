/**
 * The stress suite: the addon under concurrency, in several worker_threads
 * at once, torn down in the middle of its work, with heads created and
 * dropped by the thousand, and checkpoints written onto a full disk. Every
 * assertion is deterministic (results equal bit for bit, memory counters
 * back to their baseline, a process that exits cleanly); timing is never
 * asserted. Worker teardown runs in a child process of its own
 * (test/stress/teardown-harness.mjs): an abort there fails the test instead
 * of killing the runner.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, test } from 'vitest';
import {
  CheckpointError,
  HeadBusyError,
  HeadDisposedError,
  MARGIN_KIND_NAMES,
  MarginHead,
  forward,
  forwardAsync,
  lossAndGrad,
  lossAndGradAsync,
  type LossOptions,
  type MarginKindName,
} from '../lib';
import { native } from '../lib/native';
import { typical } from './helpers';
import { randomProblem } from './reference.mjs';
import { expectCleanTeardown } from './stress/harness';

const gc = (globalThis as { gc?: () => void }).gc;
const DIST = path.resolve(__dirname, '..', 'dist', 'index.js');


async function collect(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc?.();
    await new Promise((r) => setImmediate(r));
  }
}

/** Options for each kind with its typical parameters. */
function optionsFor(kind: MarginKindName, threads: number): LossOptions {
  return { margin: typical(kind) as LossOptions['margin'], threads };
}

describe('concurrency', () => {
  test('many async calls of mixed shapes and margin kinds, all in flight at once, equal their sync results bit for bit', async () => {
    const calls = [];
    for (let k = 0; k < 42; k++) {
      const kind = MARGIN_KIND_NAMES[k % MARGIN_KIND_NAMES.length];
      const p = randomProblem(8 + (k % 5) * 9, 300 + 97 * k, [16, 32, 48][k % 3], 100 + k);
      const o = optionsFor(kind, 1 + (k % 2));
      calls.push({ p, o, grad: k % 3 !== 0 });
    }
    const promises = calls.map(({ p, o, grad }) => (grad ? lossAndGradAsync(p, o) : forwardAsync(p, o)));
    const got = await Promise.all(promises);
    calls.forEach(({ p, o, grad }, k) => {
      const want = grad ? lossAndGrad(p, o) : forward(p, o);
      expect(got[k].loss).toBe(want.loss);
      expect(Buffer.from(got[k].perSample.buffer).equals(Buffer.from(want.perSample.buffer))).toBe(true);
      if (grad) {
        const g = got[k] as ReturnType<typeof lossAndGrad>;
        const w = want as ReturnType<typeof lossAndGrad>;
        expect(Buffer.from(g.gradEmbeddings.buffer).equals(Buffer.from(w.gradEmbeddings.buffer))).toBe(true);
        expect(Buffer.from(g.gradWeights.buffer).equals(Buffer.from(w.gradWeights.buffer))).toBe(true);
      }
    });
  });

  test('a busy head names the running call, and every async call rejects (never throws) when refused', async () => {
    const head = new MarginHead({ classes: 4000, dim: 32, margin: { kind: 'arcface', m: 0.5 }, seed: 2 });
    const p = randomProblem(16, 4000, 32, 9);
    const predicting = head.predictAsync(p.embeddings, 3);
    let step: Promise<unknown> | undefined;
    expect(() => {
      step = head.stepAsync(p.embeddings, p.labels);
    }).not.toThrow();
    await expect(step).rejects.toThrow(HeadBusyError);
    await expect(head.stepAsync(p.embeddings, p.labels)).rejects.toThrow(/a predictAsync\(\) call is still running/);
    await expect(head.predictAsync(p.embeddings, 3)).rejects.toMatchObject({ code: 'ERR_MARGIN_SOFTMAX_HEAD_BUSY', running: 'predictAsync', call: 'predictAsync' });
    expect(() => head.step(p.embeddings, p.labels)).toThrow(HeadBusyError);
    await predicting;
    const stepping = head.stepAsync(p.embeddings, p.labels);
    await expect(head.predictAsync(p.embeddings, 3)).rejects.toThrow(/a stepAsync\(\) call is still running/);
    await stepping;
    // Argument errors reject too.
    const refused = head.stepAsync(new Float32Array(3), p.labels);
    await expect(refused).rejects.toThrow(/Expected/);
    await expect(head.predictAsync(p.embeddings, -1)).rejects.toThrow(/Expected/);
    await expect(lossAndGradAsync({ ...p, dim: 7 }, { margin: { kind: 'none' } as unknown as LossOptions['margin'] })).rejects.toThrow(/Expected/);
    head.dispose();
    await expect(head.stepAsync(p.embeddings, p.labels)).rejects.toThrow(HeadDisposedError);
    await expect(head.predictAsync(p.embeddings, 1)).rejects.toMatchObject({ code: 'ERR_MARGIN_SOFTMAX_HEAD_DISPOSED' });
  });
});

describe('several workers at once', () => {
  test('the addon in three workers at once gives the main thread’s results', async () => {
    const job = `
      const { parentPort, workerData } = require('node:worker_threads');
      const ms = require(workerData.dist);
      const d = 32, c = 5000, n = 24;
      const weights = new Float32Array(c * d).map((_, k) => Math.sin(k * 0.017));
      const embeddings = new Float32Array(n * d).map((_, k) => Math.cos(k * 0.3));
      const labels = new Int32Array(n).map((_, i) => (i * 31) % c);
      ms.lossAndGradAsync({ embeddings, weights, labels, dim: d }, { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, threads: 1 })
        .then((r) => parentPort.postMessage({ loss: r.loss, gx: Array.from(r.gradEmbeddings) }));`;
    const run = () =>
      new Promise<{ loss: number; gx: number[] }>((resolve, reject) => {
        const w = new Worker(job, { eval: true, workerData: { dist: DIST } });
        w.once('message', (m) => w.terminate().then(() => resolve(m)));
        w.once('error', reject);
      });
    const got = await Promise.all([run(), run(), run()]);
    const d = 32;
    const c = 5000;
    const n = 24;
    const want = lossAndGrad(
      {
        embeddings: new Float32Array(n * d).map((_, k) => Math.cos(k * 0.3)),
        weights: new Float32Array(c * d).map((_, k) => Math.sin(k * 0.017)),
        labels: new Int32Array(n).map((_, i) => (i * 31) % c),
        dim: d,
      },
      { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, threads: 1 },
    );
    for (const g of got) {
      expect(g.loss).toBe(want.loss);
      expect(g.gx).toEqual(Array.from(want.gradEmbeddings));
    }
  });
});

describe('teardown during work', () => {
  test('workers terminated, or calling process.exit, before, during and after every async call and a save: the process lives, its results are unchanged, native memory returns', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-teardown-'));
    try {
      await expectCleanTeardown({ backend: 'cpu', rounds: 2, dir }, 420_000);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 480_000);
});

describe('churn of heads', () => {
  test('2,000 heads created and disposed, and 400 left to the garbage collector, return their memory', async () => {
    // 8192 × 64 fp32 centres are 2 MiB: the addon's own memory (not V8's), which its counter sees.
    // Centres copied from one array: drawing them would dominate the test's time.
    const spec = { classes: 8192, dim: 64, margin: { kind: 'arcface', m: 0.5 }, init: new Float32Array(8192 * 64).fill(0.125) } as const;
    await collect();
    const base = native._liveNativeBytes();
    for (let k = 0; k < 2000; k++) {
      const h = new MarginHead({ ...spec, optimizer: { lr: 0.1, momentum: 0.9 } });
      expect(native._liveNativeBytes()).toBeGreaterThanOrEqual(base + 2 * 8192 * 64 * 4); // centres and momentum
      h.dispose(); // the host memory goes with its last reference (the collector's finalizer)
    }
    await collect();
    expect(native._liveNativeBytes()).toBe(base);
    let kept: MarginHead[] = [];
    for (let k = 0; k < 400; k++) {
      kept.push(new MarginHead(spec));
      if (kept.length > 4) kept = kept.slice(1);
    }
    expect(native._liveNativeBytes()).toBeGreaterThanOrEqual(base + 4 * 8192 * 64 * 4);
    kept = [];
    await collect();
    await collect();
    expect(native._liveNativeBytes()).toBe(base);
  });
});

/** A small tmpfs mounted for the test (root only; elsewhere the test says why it skips). */
function mountTinyTmpfs(bytes: number): string | null {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-fulldisk-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir]);
  if (r.status !== 0) {
    fs.rmdirSync(dir);
    return null;
  }
  return dir;
}

const tinyDisk = mountTinyTmpfs(1 << 20);
const fullDiskTest = tinyDisk ? test : test.skip;
if (!tinyDisk) console.log('stress: the full-disk case needs root and mount -t tmpfs; skipped here');

describe('a full disk during save', () => {
  fullDiskTest('a save that does not fit is a CheckpointError; the earlier checkpoint stays intact and no temporary is left', () => {
    const dir = tinyDisk as string;
    try {
      const small = new MarginHead({ classes: 500, dim: 64, margin: { kind: 'arcface', m: 0.5 }, seed: 1 });
      const file = path.join(dir, 'head.safetensors');
      small.save(file);
      const saved = fs.readFileSync(file);
      const big = new MarginHead({ classes: 20_000, dim: 64, margin: { kind: 'arcface', m: 0.5 }, seed: 2 }); // 5 MB > 1 MiB
      expect(() => big.save(file)).toThrow(CheckpointError);
      expect(fs.readFileSync(file).equals(saved)).toBe(true);
      expect(fs.readdirSync(dir)).toEqual(['head.safetensors']);
      expect(MarginHead.load(file).getWeights()).toEqual(small.getWeights());
    } finally {
      spawnSync('umount', [dir]);
      fs.rmdirSync(dir);
    }
  });
});
