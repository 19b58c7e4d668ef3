// MarginHead: fused SGD update, Partial FC sampling, sharding, predict,
// safetensors checkpoints, disposal. The loss itself is checked against the
// float64 reference in cpu-backend.test.ts; here the head is checked against
// lossAndGrad plus the optimizer written out by hand.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../lib/native';
import { describe, expect, it } from 'vitest';
import { CheckpointError, MarginHead, lossAndGrad, mergeStats, type MarginHeadOptions } from '../lib/index';
import { classSample } from '../lib/sampling';
import { randomProblem } from './reference.mjs';

const C = 300;
const D = 24;
const N = 40;

function batch(seed: number, n = N, classes = C) {
  const p = randomProblem(n, classes, D, seed);
  p.labels[3] = -1; // one ignored row
  return { x: p.embeddings, y: p.labels };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

const base: MarginHeadOptions = {
  classes: C,
  dim: D,
  margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 },
  seed: 7,
  optimizer: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
  threads: 2,
};

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ms-head-'));
}

describe('MarginHead.step', () => {
  it('equals lossAndGrad followed by PyTorch SGD (momentum, weight decay), step after step', () => {
    const head = new MarginHead(base);
    const { lr, momentum, weightDecay } = { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 };
    for (let step = 0; step < 3; step++) {
      // Start each step from the head's own state, so rounding differences of
      // earlier steps do not accumulate into the comparison.
      const w = head.getWeights();
      const buf = head.getMomentum() as Float32Array;
      const { x, y } = batch(100 + step);
      const ref = lossAndGrad({ embeddings: x, weights: w, labels: y, dim: D }, { margin: base.margin, threads: 2 });
      const r = head.step(x, y);
      // Same kernels, same thread count, same weights: bit-identical loss and dX.
      expect(r.loss).toBe(ref.loss);
      expect(maxAbsDiff(r.gradEmbeddings, ref.gradEmbeddings)).toBe(0);
      // torch.optim.SGD (dampening 0, no Nesterov): g += λw; b = μb + g; w -= lr·b.
      for (let i = 0; i < w.length; i++) {
        const g = ref.gradWeights[i] + weightDecay * w[i];
        buf[i] = momentum * buf[i] + g;
        w[i] = w[i] - lr * buf[i];
      }
      // The native update runs in fp32 with FMA contraction; this one in
      // float64: they agree to a few fp32 ulps of the values' scale.
      expect(maxAbsDiff(head.getWeights(), w)).toBeLessThan(1e-6 * Math.max(1, maxAbs(w)));
      expect(maxAbsDiff(head.getMomentum() as Float32Array, buf)).toBeLessThan(1e-5 * Math.max(1, maxAbs(buf)));
      if (step === 0) expect(maxAbs(buf)).toBeGreaterThan(0);
    }
    expect(head.stepCount).toBe(3);
  });

  it('lowers the loss on a fixed batch and reports accuracy in [0, 1]', () => {
    const head = new MarginHead({ ...base, margin: { kind: 'arcface', m: 0.2 }, optimizer: { lr: 0.02, momentum: 0.9 } });
    const { x, y } = batch(5);
    const first = head.step(x, y);
    let last = first;
    for (let i = 0; i < 30; i++) last = head.step(x, y);
    expect(last.loss).toBeLessThan(first.loss * 0.5);
    expect(last.accuracy).toBeGreaterThanOrEqual(0);
    expect(last.accuracy).toBeLessThanOrEqual(1);
    expect(last.accuracy).toBeGreaterThan(first.accuracy);
  });

  it('stepAsync equals step, and the head refuses calls while it runs', async () => {
    const a = new MarginHead(base);
    const b = new MarginHead(base);
    const { x, y } = batch(9);
    const p = b.stepAsync(x, y);
    expect(() => b.getWeights()).toThrow(/stepAsync/);
    const rb = await p;
    const ra = a.step(x, y);
    expect(rb.loss).toBe(ra.loss);
    expect(maxAbsDiff(rb.gradEmbeddings, ra.gradEmbeddings)).toBe(0);
    expect(maxAbsDiff(a.getWeights(), b.getWeights())).toBe(0);
  });
});

describe('class sampling (Partial FC)', () => {
  it('r = 1 is exactly the full loss', () => {
    const full = new MarginHead(base);
    const sampled = new MarginHead({ ...base, sampleRate: 1 });
    const { x, y } = batch(11);
    const a = full.step(x, y);
    const b = sampled.step(x, y);
    expect(b.loss).toBe(a.loss);
    expect(maxAbsDiff(full.getWeights(), sampled.getWeights())).toBe(0);
  });

  it('keeps every positive, draws up to ⌈r·C⌉ classes, deterministically, and remaps labels', () => {
    const y = new Int32Array([5, 17, 5, -1, 299, 0]);
    const s1 = classSample(y, C, 0.1, 3, 0);
    const s2 = classSample(y, C, 0.1, 3, 0);
    const s3 = classSample(y, C, 0.1, 3, 1);
    expect(s1.classIndex.length).toBe(Math.ceil(0.1 * C));
    expect(Array.from(s1.classIndex)).toEqual(Array.from(s2.classIndex));
    expect(Array.from(s1.classIndex)).not.toEqual(Array.from(s3.classIndex));
    for (const pos of [0, 5, 17, 299]) expect(Array.from(s1.classIndex)).toContain(pos);
    for (let i = 0; i < y.length; i++) {
      if (y[i] < 0) expect(s1.labels[i]).toBe(y[i]);
      else expect(s1.classIndex[s1.labels[i]]).toBe(y[i]);
    }
    // Sorted and distinct.
    for (let q = 1; q < s1.classIndex.length; q++) expect(s1.classIndex[q]).toBeGreaterThan(s1.classIndex[q - 1]);
    // More positives than ⌈r·C⌉: all positives, nothing else.
    const many = Int32Array.from({ length: 100 }, (_, i) => i * 3);
    expect(classSample(many, C, 0.01, 1, 0).classIndex.length).toBe(100);
  });

  it('updates only the sampled centres, matching the loss on the sampled subset', () => {
    const head = new MarginHead({ ...base, sampleRate: 0.2, optimizer: { lr: 0.05 } });
    const { x, y } = batch(13);
    const w0 = head.getWeights();
    const sample = classSample(y, C, 0.2, base.seed as number, 0);
    const sub = new Float32Array(sample.classIndex.length * D);
    sample.classIndex.forEach((c, q) => sub.set(w0.subarray(c * D, (c + 1) * D), q * D));
    const ref = lossAndGrad({ embeddings: x, weights: sub, labels: sample.labels, dim: D }, { margin: base.margin, threads: 2 });
    const r = head.step(x, y);
    expect(r.loss).toBeCloseTo(ref.loss, 5);
    const w1 = head.getWeights();
    const inSample = new Uint8Array(C);
    for (const c of sample.classIndex) inSample[c] = 1;
    let changedOutside = 0;
    for (let c = 0; c < C; c++) {
      const rowChanged = maxAbsDiff(w0.subarray(c * D, (c + 1) * D), w1.subarray(c * D, (c + 1) * D)) > 0;
      if (!inSample[c] && rowChanged) changedOutside++;
    }
    expect(changedOutside).toBe(0);
    sample.classIndex.forEach((c, q) => {
      for (let k = 0; k < D; k++) {
        const expected = w0[c * D + k] - 0.05 * ref.gradWeights[q * D + k];
        expect(Math.abs(w1[c * D + k] - expected)).toBeLessThan(1e-6 + 1e-5 * Math.abs(expected));
      }
    });
  });
});

describe('sharding', () => {
  it('four shards equal one head: loss, dX, accuracy and updated weights over three steps', () => {
    const whole = new MarginHead(base);
    const counts = [80, 70, 90, 60];
    let offset = 0;
    const shards = counts.map((count) => {
      const h = new MarginHead({ ...base, shard: { offset, count, total: C } });
      offset += count;
      return h;
    });
    for (let step = 0; step < 3; step++) {
      const { x, y } = batch(200 + step);
      const a = whole.step(x, y);
      const merged = mergeStats(shards.map((s) => s.partialStats(x, y)));
      const grad = new Float32Array(N * D);
      for (const s of shards) {
        const g = s.finishStep(merged).gradEmbeddings;
        for (let i = 0; i < grad.length; i++) grad[i] += g[i];
      }
      // fp32: the LSE merge order differs (shards vs threads), so agreement is
      // to rounding: relative 1e-5 on the loss, 1e-4 of the gradient's scale.
      expect(Math.abs(merged.loss - a.loss)).toBeLessThan(1e-5 * Math.abs(a.loss) + 1e-6);
      expect(merged.accuracy).toBe(a.accuracy);
      expect(maxAbsDiff(grad, a.gradEmbeddings)).toBeLessThan(1e-4 * maxAbs(a.gradEmbeddings));
      const w = whole.getWeights();
      let off = 0;
      for (const s of shards) {
        const ws = s.getWeights();
        expect(maxAbsDiff(ws, w.subarray(off * D, off * D + ws.length))).toBeLessThan(1e-4 * Math.max(1e-2, maxAbs(w)));
        off += s.localClasses;
      }
    }
  });

  it('predict on a shard returns global class ids', () => {
    const head = new MarginHead({ ...base, shard: { offset: 100, count: 50, total: C } });
    const { x } = batch(3, 4);
    const r = head.predict(x, 2);
    for (const c of r.classes) {
      expect(c).toBeGreaterThanOrEqual(100);
      expect(c).toBeLessThan(150);
    }
  });

  it('finishStep without partialStats, and step on a sharded head, throw', () => {
    const head = new MarginHead({ ...base, shard: { offset: 0, count: 10, total: C } });
    expect(() => head.finishStep({ lse: new Float32Array(1), targetPm1: new Float32Array(1), perSample: new Float32Array(1), loss: 0, accuracy: 0, validRows: 1 })).toThrow(/partialStats/);
    const { x, y } = batch(1);
    expect(() => head.step(x, y)).toThrow(/two phases/);
  });
});

describe('predict and evaluate', () => {
  it('top-k matches a brute-force cosine ranking', () => {
    const head = new MarginHead(base);
    const { x } = batch(21, 6);
    const w = head.getWeights();
    const k = 5;
    const r = head.predict(x, k);
    for (let i = 0; i < 6; i++) {
      const scores: [number, number][] = [];
      let nx = 0;
      for (let q = 0; q < D; q++) nx += x[i * D + q] ** 2;
      for (let c = 0; c < C; c++) {
        let dot = 0;
        let nw = 0;
        for (let q = 0; q < D; q++) {
          dot += x[i * D + q] * w[c * D + q];
          nw += w[c * D + q] ** 2;
        }
        scores.push([dot / Math.sqrt(nx * nw), c]);
      }
      scores.sort((a, b) => b[0] - a[0]);
      expect(Array.from(r.classes.subarray(i * k, i * k + k))).toEqual(scores.slice(0, k).map((s) => s[1]));
      for (let q = 0; q < k; q++) expect(r.scores[i * k + q]).toBeCloseTo(scores[q][0], 5);
    }
  });

  it('evaluate does not update the centres and matches forward', () => {
    const head = new MarginHead(base);
    const { x, y } = batch(23);
    const w0 = head.getWeights();
    const e = head.evaluate(x, y);
    expect(maxAbsDiff(head.getWeights(), w0)).toBe(0);
    const ref = lossAndGrad({ embeddings: x, weights: w0, labels: y, dim: D }, { margin: base.margin, threads: 2 });
    expect(e.loss).toBe(ref.loss);
    expect(e.accuracy).toBeGreaterThanOrEqual(0);
  });
});

describe('checkpoints (safetensors)', () => {
  it('save → load round-trips bit-exactly, configuration and step count included', () => {
    const dir = tmpdir();
    const head = new MarginHead(base);
    const { x, y } = batch(31);
    head.step(x, y);
    head.step(x, y);
    const file = path.join(dir, 'head.safetensors');
    head.save(file);
    const back = MarginHead.load(file);
    expect(Buffer.from(back.getWeights().buffer).equals(Buffer.from(head.getWeights().buffer))).toBe(true);
    expect(Buffer.from((back.getMomentum() as Float32Array).buffer).equals(Buffer.from((head.getMomentum() as Float32Array).buffer))).toBe(true);
    expect(back.stepCount).toBe(2);
    // Training continues identically from the checkpoint.
    const a = head.step(x, y);
    const b = back.step(x, y);
    expect(b.loss).toBe(a.loss);
    // The file is a valid safetensors file: u64 header length, JSON header, F32 data.
    const raw = fs.readFileSync(file);
    const hlen = Number(raw.readBigUInt64LE(0));
    const header = JSON.parse(raw.subarray(8, 8 + hlen).toString('utf8'));
    expect(header.weight).toEqual({ dtype: 'F32', shape: [C, D], data_offsets: [0, C * D * 4] });
    expect(header.__metadata__.format).toBe('margin-softmax/head');
    expect(raw.length).toBe(8 + hlen + 2 * C * D * 4);
  });

  it('refuses a truncated file, a wrong-shape file and a non-safetensors file, each with its own error', () => {
    const dir = tmpdir();
    const head = new MarginHead(base);
    const good = path.join(dir, 'good.safetensors');
    head.save(good);
    const raw = fs.readFileSync(good);

    const truncated = path.join(dir, 'truncated.safetensors');
    fs.writeFileSync(truncated, raw.subarray(0, raw.length - 100));
    expect(() => MarginHead.load(truncated)).toThrow(CheckpointError);
    expect(() => MarginHead.load(truncated)).toThrow(/Truncated or corrupted/);

    const other = new MarginHead({ ...base, classes: C + 1 });
    const otherFile = path.join(dir, 'other.safetensors');
    other.save(otherFile);
    // Splice the other head's header (C+1 classes) with a config claiming C: a shape mismatch.
    const hlen = Number(fs.readFileSync(otherFile).readBigUInt64LE(0));
    const header = JSON.parse(fs.readFileSync(otherFile).subarray(8, 8 + hlen).toString('utf8'));
    header.__metadata__.config = JSON.stringify({ ...JSON.parse(header.__metadata__.config), classes: C });
    const json = Buffer.from(JSON.stringify(header));
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    const wrongShape = path.join(dir, 'wrong-shape.safetensors');
    fs.writeFileSync(wrongShape, Buffer.concat([prefix, json, fs.readFileSync(otherFile).subarray(8 + hlen)]));
    expect(() => MarginHead.load(wrongShape)).toThrow(/expected shape \[300, 24\] for 'weight' but found \[301,24\]/);

    const text = path.join(dir, 'notes.txt');
    fs.writeFileSync(text, 'this is not a checkpoint at all, just some text');
    expect(() => MarginHead.load(text)).toThrow(/Not a safetensors file/);
    const tiny = path.join(dir, 'tiny.bin');
    fs.writeFileSync(tiny, Buffer.from([1, 2, 3]));
    expect(() => MarginHead.load(tiny)).toThrow(/shorter than the 8-byte header length/);
  });

  it('a crash mid-save leaves the previous checkpoint loadable and no temporary file behind', () => {
    const dir = tmpdir();
    const head = new MarginHead(base);
    const file = path.join(dir, 'head.safetensors');
    head.save(file);
    const before = fs.readFileSync(file);
    const { x, y } = batch(41);
    head.step(x, y);
    expect(() =>
      head.save(file, {
        afterChunk: () => {
          throw new Error('simulated crash after a partial write');
        },
      }),
    ).toThrow(/simulated crash/);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(MarginHead.load(file).stepCount).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(['head.safetensors']);
  });
});

describe('lifetime', () => {
  it('every call after dispose throws', () => {
    const head = new MarginHead(base);
    head.dispose();
    const { x, y } = batch(1);
    expect(() => head.step(x, y)).toThrow(/disposed/);
    expect(() => head.predict(x, 1)).toThrow(/disposed/);
    expect(() => head.getWeights()).toThrow(/disposed/);
    expect(head.disposed).toBe(true);
  });

  it('Symbol.dispose disposes', () => {
    const head = new MarginHead(base);
    head[Symbol.dispose]();
    expect(head.disposed).toBe(true);
  });

  // The leak checks count the addon's own large allocations (big_alloc minus
  // big_free, native/cpu/big_alloc.h): exact, and independent of what else
  // runs on the machine (the process's RSS is not; see bench/head_rss.mjs).
  it('10,000 steps on a small head leave no native allocation behind', () => {
    const head = new MarginHead({ ...base, classes: 64, dim: 16, sampleRate: 0.5, optimizer: { lr: 0.01, momentum: 0.9 } });
    const p = randomProblem(8, 64, 16, 3);
    head.step(p.embeddings, p.labels);
    const live0 = native._liveNativeBytes();
    for (let i = 0; i < 10_000; i++) head.step(p.embeddings, p.labels);
    expect(native._liveNativeBytes()).toBe(live0);
  });

  it('a large head’s native centres and momentum are released once disposed and collected', async () => {
    const collect = async () => {
      (globalThis as { gc?: () => void }).gc?.();
      await new Promise((r) => setImmediate(r));
    };
    // Arrays of earlier tests still awaiting collection are collected first.
    for (let last = -1, round = 0; round < 50 && native._liveNativeBytes() !== last; round++) {
      last = native._liveNativeBytes();
      await collect();
    }
    const start = native._liveNativeBytes();
    const head = new MarginHead({ ...base, classes: 20_000, dim: 64, optimizer: { lr: 0.01, momentum: 0.9 } });
    // Both arrays are above big_alloc's threshold: counted exactly.
    expect(native._liveNativeBytes() - start).toBe(2 * 20_000 * 64 * 4);
    const p = randomProblem(4, 20_000, 64, 3);
    for (let i = 0; i < 20; i++) head.step(p.embeddings, p.labels);
    expect(native._liveNativeBytes() - start).toBe(2 * 20_000 * 64 * 4);
    head.dispose();
    // Finalizers run after a collection; a correct build gets back to the start.
    for (let round = 0; round < 50 && native._liveNativeBytes() !== start; round++) await collect();
    expect(native._liveNativeBytes()).toBe(start);
  });

  it('rejects bad options with typed messages', () => {
    expect(() => new MarginHead({ ...base, classes: 0 })).toThrow(/Expected a positive integer for classes but received 0/);
    expect(() => new MarginHead({ ...base, sampleRate: 0 })).toThrow(/Expected a number in \(0, 1\] for sampleRate/);
    expect(() => new MarginHead({ ...base, optimizer: { lr: 0.1, momentum: 1 } })).toThrow(/optimizer.momentum/);
    expect(() => new MarginHead({ ...base, shard: { offset: 250, count: 100, total: C } })).toThrow(/shard.count/);
    expect(() => new MarginHead({ ...base, init: new Float32Array(5) })).toThrow(/Expected 'normal' or a Float32Array of length 7200 for init/);
    // Only load() leaves the centres unset (it reads them in): no init value of a user's does.
    expect(() => new MarginHead({ ...base, init: 'skip' as unknown as 'normal' })).toThrow(/Expected 'normal' or a Float32Array of length 7200 for init but received 'skip'/);
    const head = new MarginHead(base);
    expect(() => head.step(new Float32Array(D), new Int32Array([C]))).toThrow(/labels\[0\]/);
    expect(() => head.step(new Float32Array(D), new Int32Array([0]), { lr: -1 })).toThrow(/for lr/);
  });
});
