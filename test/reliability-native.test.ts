/**
 * Faults and misuse that used to kill the process: arrays freed under an
 * async call, allocation failures (std::bad_alloc), and lengths the native
 * layer took from JavaScript. Each must end as a typed error, never a crash.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, test } from 'vitest';
import { ArgumentError, NativeError, lossAndGrad, lossAndGradAsync, MarginHead, type LossOptions } from '../lib';
import { native } from '../lib/native';
import { randomProblem } from './reference.mjs';

const opts: LossOptions = { margin: { kind: 'arcface', m: 0.5 }, threads: 2 };
const gc = (globalThis as { gc?: () => void }).gc;

/** Collects garbage several times and lets finalizers run between collections. */
async function collect(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc?.();
    await new Promise((r) => setImmediate(r));
  }
}

/** Detaches the array's buffer the way a postMessage transfer does; the new owner is dropped at once. */
function transfer(a: Float32Array | Int32Array): void {
  const buffer = a.buffer as ArrayBuffer;
  structuredClone(buffer, { transfer: [buffer] });
}

describe('async calls keep their arrays alive', () => {
  test('gc() is exposed to the test workers (the checks below rely on it)', () => {
    expect(typeof gc).toBe('function');
  });

  test('transferring the weights, embeddings and labels during lossAndGradAsync, then collecting, gives the same result', async () => {
    for (let run = 0; run < 3; run++) {
      const p = randomProblem(64, 20000, 64, 7 + run);
      const expectedLoss = lossAndGrad(p, opts).loss;
      const pending = lossAndGradAsync(p, opts);
      transfer(p.weights);
      transfer(p.embeddings);
      transfer(p.labels);
      expect(p.weights.length).toBe(0); // detached
      await collect();
      // Overwrite freed memory, if any were freed, with new allocations.
      const junk = Array.from({ length: 20 }, () => new Float32Array(20000 * 64).fill(NaN));
      const r = await pending;
      expect(junk.length).toBe(20);
      expect(r.loss).toBe(expectedLoss);
    }
  });

  test('the head’s own centres (addon memory, pinned without a copy) survive a transfer during stepAsync', async () => {
    const head = new MarginHead({ classes: 20000, dim: 64, margin: { kind: 'arcface', m: 0.5 }, threads: 2 });
    const twin = new MarginHead({ classes: 20000, dim: 64, margin: { kind: 'arcface', m: 0.5 }, threads: 2 });
    const p = randomProblem(32, 20000, 64, 3);
    const expectedStep = twin.step(p.embeddings, p.labels);
    const pending = head.stepAsync(p.embeddings, p.labels);
    transfer((head as unknown as { centres: { values: Float32Array } }).centres.values);
    await collect();
    const r = await pending;
    expect(r.loss).toBe(expectedStep.loss);
  });

  test('an options.out array transferred during the call rejects (its results have nowhere to go)', async () => {
    const p = randomProblem(16, 500, 32, 1);
    const out = { gradWeights: new Float32Array(500 * 32) };
    // The handler is attached at once: the rejection happens while we collect.
    const settled = lossAndGradAsync(p, { ...opts, out }).then(() => 'resolved', (e: Error) => e);
    transfer(out.gradWeights);
    await collect();
    const err = await settled;
    expect(err).toBeInstanceOf(ArgumentError);
    expect((err as Error).message).toMatch(/one was transferred \(detached\); its results are lost/);
  });

  test('inputs already detached are rejected up front, sync and async', async () => {
    const p = randomProblem(4, 10, 8, 2);
    transfer(p.weights);
    expect(() => lossAndGrad(p, opts)).toThrow(ArgumentError);
    const q = randomProblem(4, 10, 8, 2);
    const emb = q.embeddings;
    transfer(emb);
    // A detached array reads as length 0 in JS too; the native check is the one that names it.
    expect(() => native.loss(emb, q.weights, q.labels, 8, { kind: 0, scale: 64 } as never, true)).toThrow(
      /Expected Float32Array with an attached buffer for embeddings but received a detached ArrayBuffer/,
    );
    await expect(lossAndGradAsync({ ...q, embeddings: emb }, opts)).rejects.toThrow(ArgumentError);
  });
});

describe('lengths are read natively, not from JavaScript properties', () => {
  test('an embeddings array with a shadowed length property is refused, not read out of bounds', () => {
    const p = randomProblem(64, 10, 8, 5);
    const short = new Float32Array(8); // one row, claiming 64
    Object.defineProperty(short, 'length', { value: 64 * 8 });
    // The TypeScript checks read past the end (undefined: not finite); the native check, underneath, reads V8's length.
    expect(() => lossAndGrad({ ...p, embeddings: short }, opts)).toThrow(ArgumentError);
    expect(() => native.loss(short, p.weights, p.labels, 8, { kind: 0, scale: 64 } as never, true)).toThrow(
      /Expected an array of length 512 for embeddings \(labels.length × dim\) but received an array of length 8/,
    );
  });

  test('shadowed lengths on labels, out arrays and predict inputs are refused', () => {
    const p = randomProblem(8, 10, 8, 5);
    const labels = new Int32Array(2);
    Object.defineProperty(labels, 'length', { value: 8 });
    expect(() => lossAndGrad({ ...p, labels }, opts)).toThrow(ArgumentError);
    const perSample = new Float32Array(1);
    Object.defineProperty(perSample, 'length', { value: 8 });
    expect(() => lossAndGrad(p, { ...opts, out: { perSample } })).toThrow(/for options.out.perSample but received an array of length 1/);
    const head = new MarginHead({ classes: 10, dim: 8, margin: { kind: 'softmax' } });
    expect(() => native.topk(new Float32Array(3), new Float32Array(80), 8, 1, 1)).toThrow(/multiples of dim/);
    expect(() => head.predict(new Float32Array(8), 1)).not.toThrow();
  });

  test('a weights array with a shadowed length: labels are checked against the class count V8 holds', () => {
    const w = new Float32Array(8).fill(0.5); // one class of d = 8
    Object.defineProperty(w, 'length', { value: 80 }); // claiming ten
    const input = { embeddings: new Float32Array(8).fill(1), weights: w, labels: Int32Array.from([5]), dim: 8 };
    expect(() => lossAndGrad(input, opts)).toThrow(/^Expected labels in \[-1, 0\] for labels\[0\] but received 5$/);
  });

  test('class indices out of range are refused natively', () => {
    const p = randomProblem(2, 10, 8, 5);
    const o = { kind: 0, scale: 64, classIndex: new Int32Array([0, 10]) };
    expect(() => native.loss(p.embeddings, p.weights, new Int32Array([0, 1]), 8, o as never, true)).toThrow(
      /Expected class indices in \[0, 10\) for options.classIndex but received 10/,
    );
  });
});

describe('allocation failures are NativeErrors naming the bytes', () => {
  test('a 10⁶ × 10⁶ head', () => {
    let err: unknown;
    try {
      new MarginHead({ classes: 1e6, dim: 1e6, margin: { kind: 'softmax' } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeError);
    expect((err as Error).message).toMatch(/^Out of memory: could not allocate 4000000000000 bytes/);
  });

  test('MarginHead.load of a small sparse file whose header declares a [10⁶, 10⁶] weight', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-rel-'));
    const file = path.join(dir, 'huge.safetensors');
    const config = { classes: 1e6, dim: 1e6, margin: { kind: 'softmax' } };
    const header = {
      __metadata__: { format: 'margin-softmax/head', version: '1', config: JSON.stringify(config), steps: '0' },
      weight: { dtype: 'F32', shape: [1e6, 1e6], data_offsets: [0, 4e12] },
    };
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - (json.length % 8)) % 8);
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(json)]));
    try {
      fs.truncateSync(file, 8 + json.length + 4e12); // sparse: no data blocks
    } catch {
      // A file system without 4 TB sparse files: the size check refuses it instead.
      expect(() => MarginHead.load(file)).toThrow();
      return;
    }
    try {
      expect(() => MarginHead.load(file)).toThrow(NativeError);
      expect(() => MarginHead.load(file)).toThrow(/could not allocate 4000000000000 bytes/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('lossAndGrad of 200,000 × 512 weights under ulimit -v: NativeError, the process lives on', () => {
    const dist = path.resolve(__dirname, '..', 'dist', 'index.js');
    // Virtual memory of a node process with the addon loaded, then a limit
    // 600 MB above it: the 400 MB weights fit, their 400 MB gradient does not.
    const probe = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(dist)}); process.stdout.write(String(require('fs').readFileSync('/proc/self/status','utf8').match(/VmSize:\\s+(\\d+)/)[1]))`], { encoding: 'utf8' });
    expect(probe.status).toBe(0);
    const baseKb = Number(probe.stdout);
    const limitKb = baseKb + 600 * 1024;
    const script = `
      const ms = require(${JSON.stringify(dist)});
      const d = 512, c = 200000, n = 64;
      const weights = new Float32Array(c * d).fill(0.01);
      const embeddings = new Float32Array(n * d).fill(0.5);
      const labels = new Int32Array(n);
      try {
        ms.lossAndGrad({ embeddings, weights, labels, dim: d }, { margin: { kind: 'softmax' }, threads: 1 });
        console.log('OK');
      } catch (e) {
        console.log(e.name + ': ' + e.message);
      }
      console.log('alive');`;
    const r = spawnSync('bash', ['-c', `ulimit -v ${limitKb}; exec "${process.execPath}" -e "$0"`, script], { encoding: 'utf8' });
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/NativeError: Out of memory: could not allocate \d+ bytes for /);
    expect(r.stdout).toContain('alive');
  });
});

describe('threads are bounded', () => {
  test('threads: 1000 is refused (the pool keeps every thread it starts)', () => {
    const p = randomProblem(4, 10, 8, 2);
    expect(() => lossAndGrad(p, { ...opts, threads: 1000 })).toThrow(/Expected an integer in \[1, 256\] for options.threads but received 1000/);
    expect(() => new MarginHead({ classes: 10, dim: 8, margin: { kind: 'softmax' }, threads: 1000 })).toThrow(/options.threads/);
  });
});
