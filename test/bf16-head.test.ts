// MarginHead with weightsDtype 'bfloat16' on the CPU: the centres stored in
// bf16 (half the memory), the loss on them exactly as lossAndGrad computes it
// from the same values, and the SGD update computed in fp32 and rounded
// stochastically (native/margin_math.h, bf16_round_stochastic), checked here
// against the same arithmetic written out in TypeScript.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ArgumentError, CheckpointError, MarginHead, lossAndGrad, saveSafetensors, type MarginHeadOptions } from '../lib/index';
import { native } from '../lib/native';
import { randomProblem } from './reference.mjs';

const C = 400;
const D = 32;
const N = 48;
const MARGIN = { kind: 'adaptive', m1: 0.03, m2: 0.5 } as const;

// ---- bf16 arithmetic written out (the reference for the native code) ----
const M64 = (1n << 64n) - 1n;
function mix64(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}
function roundKey(seed: number, step: number): bigint {
  return mix64((BigInt(seed) * 0x9e3779b97f4a7c15n + mix64((BigInt(step) + 0xd1b54a32d192ed03n) & M64)) & M64);
}
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function bitsOf(v: number): number {
  f32[0] = v;
  return u32[0];
}
function fromBits(u: number): number {
  u32[0] = u >>> 0;
  return f32[0];
}
/** v rounded to bf16 stochastically with the bits of (key, element), as a float. */
function stochasticBf16(v: number, key: bigint, element: number): number {
  // SplitMix64 keyed by `key`, one output per group of four elements, 16 bits per element.
  const h = mix64((key + BigInt(element >> 2) * 0x9e3779b97f4a7c15n) & M64);
  const r = Number((h >> BigInt(16 * (element & 3))) & 0xffffn);
  return fromBits(((bitsOf(v) + r) >>> 16) << 16);
}
/** v rounded to the nearest bf16 (ties to even), as a float. */
function nearestBf16(v: number): number {
  const u = bitsOf(v);
  return fromBits(((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16);
}
/** Distance in bf16 steps between two bf16 values of the same sign (the bf16 bit patterns' difference). */
function bf16Steps(a: number, b: number): number {
  return Math.abs((bitsOf(a) >>> 16) - (bitsOf(b) >>> 16));
}

function batch(seed: number) {
  const p = randomProblem(N, C, D, seed);
  return { x: p.embeddings, y: p.labels };
}
const roundedInit = (seed: number) => Float32Array.from(randomProblem(1, C, D, seed).weights, (v) => nearestBf16(v * 0.05));

const base: MarginHeadOptions = {
  classes: C,
  dim: D,
  margin: MARGIN,
  backend: 'cpu',
  weightsDtype: 'bfloat16',
  seed: 11,
  threads: 2,
  optimizer: { lr: 0.2, momentum: 0.9, weightDecay: 5e-4 },
};

describe("MarginHead weightsDtype 'bfloat16' on the CPU", () => {
  it('holds the centres in bf16: C·d·2 bytes, plus the fp32 momentum', () => {
    const big = { ...base, classes: 40_000, dim: 64, init: new Float32Array(40_000 * 64) };
    const before = native._liveNativeBytes();
    const h16 = new MarginHead(big);
    const bf16Bytes = native._liveNativeBytes() - before;
    const h32 = new MarginHead({ ...big, weightsDtype: 'float32' });
    const fp32Bytes = native._liveNativeBytes() - before - bf16Bytes;
    expect(bf16Bytes).toBe(40_000 * 64 * (2 + 4));
    expect(fp32Bytes).toBe(40_000 * 64 * (4 + 4));
    h16.dispose();
    h32.dispose();
  });

  it("draws the fp32 head's initial centres, rounded to the nearest bf16", () => {
    const w16 = new MarginHead(base).getWeights();
    const w32 = new MarginHead({ ...base, weightsDtype: 'float32' }).getWeights();
    expect(w16.every((v, i) => v === nearestBf16(w32[i]))).toBe(true);
  });

  it('a step: the loss and dX of lossAndGrad on the same values, and the update rounded stochastically', () => {
    const w0 = roundedInit(3);
    const head = new MarginHead({ ...base, init: w0 });
    const { x, y } = batch(4);
    const ref = lossAndGrad({ embeddings: x, weights: w0, labels: y, dim: D }, { margin: MARGIN, weightsDtype: 'bfloat16', threads: 2 });
    const r = head.step(x, y);
    expect(r.loss).toBe(ref.loss);
    expect(r.gradEmbeddings.every((v, i) => v === ref.gradEmbeddings[i])).toBe(true);
    // The first step: b = g + λ·w, w ← w − lr·b, in fp32, then rounded with the bits of (seed 11, step 0, element).
    const { lr, weightDecay } = { lr: 0.2, weightDecay: 5e-4 };
    const key = roundKey(11, 0);
    const got = head.getWeights();
    let same = 0;
    let moved = 0;
    for (let e = 0; e < w0.length; e++) {
      const g = Math.fround(ref.gradWeights[e] + Math.fround(weightDecay * w0[e]));
      const want = stochasticBf16(Math.fround(w0[e] - Math.fround(lr * g)), key, e);
      if (got[e] === want) same++;
      else expect(bf16Steps(got[e], want)).toBeLessThanOrEqual(1); // an fp32 rounding on a threshold (an FMA, say)
      if (got[e] !== w0[e]) moved++;
    }
    expect(same / w0.length).toBeGreaterThan(0.99);
    expect(moved).toBeGreaterThan(0);
  });

  it('momentum over two steps, sixteen lanes at a time and a tail: the same bits as the arithmetic written out (x64)', () => {
    // d = 52: three groups of sixteen elements (the AVX-512 update) and four
    // more (the scalar loop). On x86-64 neither contracts into FMAs, so every
    // element is exact; elsewhere the scalar loop may contract (as the first
    // step's test allows).
    const d = 52;
    const opts: MarginHeadOptions = { ...base, dim: d, init: Float32Array.from(randomProblem(1, C, d, 21).weights, (v) => nearestBf16(v * 0.05)) };
    const head = new MarginHead(opts);
    const { lr, momentum, weightDecay } = { lr: 0.2, momentum: 0.9, weightDecay: 5e-4 };
    const buf = new Float32Array(C * d);
    let exact = 0;
    for (let step = 0; step < 2; step++) {
      const p = randomProblem(N, C, d, 30 + step);
      const w = head.getWeights();
      const g = lossAndGrad({ embeddings: p.embeddings, weights: w, labels: p.labels, dim: d }, { margin: MARGIN, weightsDtype: 'bfloat16', threads: 2 }).gradWeights;
      head.step(p.embeddings, p.labels);
      const got = head.getWeights();
      const key = roundKey(11, step);
      exact = 0;
      for (let e = 0; e < w.length; e++) {
        const gq = Math.fround(g[e] + Math.fround(weightDecay * w[e]));
        buf[e] = Math.fround(Math.fround(momentum * buf[e]) + gq);
        const want = stochasticBf16(Math.fround(w[e] - Math.fround(lr * buf[e])), key, e);
        if (got[e] === want) exact++;
        else expect(bf16Steps(got[e], want)).toBeLessThanOrEqual(1);
      }
      if (process.arch === 'x64') expect(exact).toBe(w.length);
      else expect(exact / w.length).toBeGreaterThan(0.99);
    }
    head.dispose();
  });

  it('small updates do not vanish: the centres drift as the fp32 head’s do, where rounding to nearest would freeze them', () => {
    const w0 = roundedInit(5);
    const opt = { lr: 1e-4, momentum: 0, weightDecay: 0 };
    const h16 = new MarginHead({ ...base, init: w0, optimizer: opt });
    const h32 = new MarginHead({ ...base, init: w0, optimizer: opt, weightsDtype: 'float32' });
    // Under rounding to nearest, the first update would leave most elements where they are.
    const { x, y } = batch(6);
    const g = lossAndGrad({ embeddings: x, weights: w0, labels: y, dim: D }, { margin: MARGIN, weightsDtype: 'bfloat16', threads: 2 }).gradWeights;
    let frozen = 0;
    let touched = 0;
    for (let e = 0; e < w0.length; e++) {
      if (g[e] === 0) continue;
      touched++;
      if (nearestBf16(Math.fround(w0[e] - Math.fround(opt.lr * g[e]))) === w0[e]) frozen++;
    }
    expect(frozen / touched).toBeGreaterThan(0.9);
    for (let s = 0; s < 40; s++) {
      const b = batch(100 + (s % 4));
      h16.step(b.x, b.y);
      h32.step(b.x, b.y);
    }
    const d16 = h16.getWeights().map((v, i) => v - w0[i]);
    const d32 = h32.getWeights().map((v, i) => v - w0[i]);
    let dot = 0;
    let n32 = 0;
    let err = 0;
    for (let e = 0; e < w0.length; e++) {
      dot += d16[e] * d32[e];
      n32 += d32[e] * d32[e];
      err += (d16[e] - d32[e]) ** 2;
    }
    // Unbiased rounding: the bf16 drift projects onto the fp32 drift with ratio ≈ 1
    // (measured 1.001; deterministic, the rounding bits are a hash of seed, step and
    // element), and its error (the rounding noise, which grows as √steps while the
    // drift grows as steps) is a fraction of it (measured 0.43 after 40 steps).
    expect(dot / n32).toBeGreaterThan(0.9);
    expect(dot / n32).toBeLessThan(1.1);
    expect(Math.sqrt(err / n32)).toBeLessThan(0.6);
  });

  it('is deterministic, and stepAsync gives step bit for bit', async () => {
    const { x, y } = batch(8);
    const a = new MarginHead(base);
    const b = new MarginHead(base);
    for (let s = 0; s < 3; s++) a.step(x, y);
    for (let s = 0; s < 3; s++) await b.stepAsync(x, y);
    const wa = a.getWeights();
    const wb = b.getWeights();
    expect(wa.every((v, i) => Object.is(v, wb[i]))).toBe(true);
    const ma = a.getMomentum() as Float32Array;
    const mb = b.getMomentum() as Float32Array;
    expect(ma.every((v, i) => Object.is(v, mb[i]))).toBe(true);
  });

  it("predict and evaluate see the fp32 head's results on the same values", () => {
    const { x, y } = batch(9);
    const h16 = new MarginHead(base);
    h16.step(x, y);
    const h32 = new MarginHead({ ...base, weightsDtype: 'float32', init: h16.getWeights() });
    const p16 = h16.predict(x, 5);
    const p32 = h32.predict(x, 5);
    expect(Array.from(p16.classes)).toEqual(Array.from(p32.classes));
    expect(Array.from(p16.scores)).toEqual(Array.from(p32.scores));
    expect(h16.evaluate(x, y).accuracy).toBe(h32.evaluate(x, y).accuracy);
  });

  describe('state', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-bf16-head-'));

    it('save → load gives the same bf16 values, momentum and step count; a value beyond bf16 is refused', () => {
      const { x, y } = batch(10);
      const a = new MarginHead(base);
      a.step(x, y);
      const file = path.join(tmp, 'h.safetensors');
      a.save(file);
      const b = MarginHead.load(file);
      expect(b.stepCount).toBe(1);
      const wa = a.getWeights();
      expect(b.getWeights().every((v, i) => Object.is(v, wa[i]))).toBe(true);
      // The next steps agree bit for bit (the key of the rounding is the step count).
      a.step(x, y);
      b.step(x, y);
      const wa2 = a.getWeights();
      expect(b.getWeights().every((v, i) => Object.is(v, wa2[i]))).toBe(true);

      const bad = Float32Array.from(wa);
      bad[17] = 3.4e38; // finite in fp32, infinite in bf16
      const header = JSON.parse(fs.readFileSync(file).subarray(8, 8 + Number(fs.readFileSync(file).readBigUInt64LE(0))).toString());
      const badFile = path.join(tmp, 'bad.safetensors');
      saveSafetensors(
        badFile,
        {
          weight: { dtype: 'F32', shape: [C, D], data: bad },
          momentum: { dtype: 'F32', shape: [C, D], data: a.getMomentum() as Float32Array },
        },
        header.__metadata__,
      );
      expect(() => MarginHead.load(badFile)).toThrow(CheckpointError);
      expect(() => MarginHead.load(badFile)).toThrow(/element 17, beyond bf16's range/);
    });

    it('setWeights and init round to the nearest bf16 and refuse values beyond its range', () => {
      const h = new MarginHead(base);
      const w = Float32Array.from({ length: C * D }, (_, i) => Math.sin(i) * 0.1);
      h.setWeights(w);
      expect(h.getWeights().every((v, i) => v === nearestBf16(w[i]))).toBe(true);
      w[5] = -3.4e38;
      expect(() => h.setWeights(w)).toThrow(ArgumentError);
      expect(() => h.setWeights(w)).toThrow(/Expected a value within bf16's range .* for weights\[5\] but received -3\.39/);
      expect(() => new MarginHead({ ...base, init: w })).toThrow(/for init\[5\]/);
    });
  });
});
