/**
 * MarginHead on the wasm backend (lib/wasm/centres.ts: the centres and the
 * momentum in the module's memory, the SGD update fused into the loss as on
 * the CPU): the same training as the native CPU head, predict, async calls,
 * checkpoints, and what it refuses.
 *
 * wasm vs the native CPU head: the native head's products run on its best SIMD
 * (AVX-512 here) and the module's on 4 lanes, so sums are ordered differently:
 * each step's gradient differs by fp32 rounding (≲ 1e−6 relative, see
 * test/wasm-backend.test.ts for the portable kernels, where it is 0), and five
 * SGD steps carry that into the centres. HEAD_TOL = 1e−4 (relative to the
 * largest centre entry) is 100× that and 100× below a wrong update (a dropped
 * momentum or weight-decay term changes the centres by ≳ 1e−2 of their size
 * at these learning rates).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, test } from 'vitest';
import { ArgumentError, BackendUnavailableError, HeadDisposedError, MarginHead, type MarginHeadOptions } from '../lib/index';
import { nativeStatus } from '../lib/native';
import { randomProblem, relMaxErr } from './reference.mjs';
import { WASM_BUILT } from './wasm-helpers';

const HEAD_TOL = 1e-4;
const haveNative = nativeStatus().usable;
const C = 600;
const D = 32;
const N = 24;

function options(extra: Partial<MarginHeadOptions> = {}): MarginHeadOptions {
  return { classes: C, dim: D, margin: { kind: 'arcface', m: 0.3 }, scale: 16, optimizer: { lr: 0.2, momentum: 0.9, weightDecay: 5e-4 }, seed: 5, ...extra };
}

function batches(k: number) {
  return Array.from({ length: k }, (_, i) => {
    const p = randomProblem(N, C, D, 100 + i);
    return { x: p.embeddings, y: p.labels };
  });
}

describe.runIf(WASM_BUILT)('MarginHead on the wasm backend', () => {
  describe.runIf(haveNative)('against the native CPU head', () => {
    for (const sampleRate of [1, 0.5]) {
      test(`five steps with momentum and weight decay${sampleRate < 1 ? ', sampled classes' : ''}: the same losses and centres`, () => {
        const w = new MarginHead(options({ backend: 'wasm', sampleRate }));
        const c = new MarginHead(options({ backend: 'cpu', threads: 1, sampleRate }));
        expect(w.backend).toBe('wasm');
        expect(relMaxErr(w.getWeights(), c.getWeights())).toBe(0); // the same draw
        for (const b of batches(5)) {
          const rw = w.step(b.x, b.y);
          const rc = c.step(b.x, b.y);
          expect(Math.abs(rw.loss - rc.loss)).toBeLessThanOrEqual(HEAD_TOL * Math.max(1, rc.loss));
          expect(rw.accuracy).toBe(rc.accuracy);
          expect(relMaxErr(rw.gradEmbeddings, rc.gradEmbeddings)).toBeLessThanOrEqual(HEAD_TOL);
        }
        expect(relMaxErr(w.getWeights(), c.getWeights())).toBeLessThanOrEqual(HEAD_TOL);
        expect(relMaxErr(w.getMomentum()!, c.getMomentum()!)).toBeLessThanOrEqual(HEAD_TOL);
        // The update did move the centres (the comparison is not of two untouched draws).
        const fresh = new MarginHead(options({ backend: 'wasm', sampleRate }));
        expect(relMaxErr(fresh.getWeights(), w.getWeights())).toBeGreaterThan(100 * HEAD_TOL);
        const px = batches(1)[0].x;
        expect(Array.from(w.predict(px, 3).classes)).toEqual(Array.from(c.predict(px, 3).classes));
        expect(w.evaluate(px, batches(1)[0].y).loss).toBeCloseTo(c.evaluate(px, batches(1)[0].y).loss, 3);
        for (const h of [w, c, fresh]) h.dispose();
      });
    }
  });

  test('stepAsync and predictAsync give the synchronous results, and reject bad input', async () => {
    const a = new MarginHead(options({ backend: 'wasm' }));
    const b = new MarginHead(options({ backend: 'wasm' }));
    const [batch] = batches(1);
    const ra = a.step(batch.x, batch.y);
    const rb = await b.stepAsync(batch.x, batch.y);
    expect(rb.loss).toBe(ra.loss);
    expect(relMaxErr(b.getWeights(), a.getWeights())).toBe(0);
    expect(Array.from((await b.predictAsync(batch.x, 4)).classes)).toEqual(Array.from(a.predict(batch.x, 4).classes));
    const bad = batch.y.slice();
    bad[0] = C;
    let p: Promise<unknown> | undefined;
    expect(() => (p = b.stepAsync(batch.x, bad))).not.toThrow();
    await expect(p).rejects.toThrow(ArgumentError);
    a.dispose();
    b.dispose();
    expect(() => b.step(batch.x, batch.y)).toThrow(HeadDisposedError);
  });

  test('save and load: the centres and momentum come back exactly, and training goes on identically', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wasm-head-'));
    try {
      const h = new MarginHead(options({ backend: 'wasm' }));
      const bs = batches(3);
      h.step(bs[0].x, bs[0].y);
      const file = path.join(dir, 'head.safetensors');
      h.save(file);
      const g = MarginHead.load(file, { backend: 'wasm' });
      expect(g.backend).toBe('wasm');
      expect(relMaxErr(g.getWeights(), h.getWeights())).toBe(0);
      expect(relMaxErr(g.getMomentum()!, h.getMomentum()!)).toBe(0);
      expect(g.step(bs[1].x, bs[1].y).loss).toBe(h.step(bs[1].x, bs[1].y).loss);
      expect(relMaxErr(g.getWeights(), h.getWeights())).toBe(0);
      h.dispose();
      g.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('setWeights replaces the centres; the loss falls over repeated steps on one batch', () => {
    const h = new MarginHead(options({ backend: 'wasm', optimizer: { lr: 0.5 } }));
    const w = h.getWeights();
    w.fill(0.01);
    h.setWeights(w);
    expect(h.getWeights().every((v) => v === Math.fround(0.01))).toBe(true);
    const [b] = batches(1);
    const first = h.step(b.x, b.y).loss;
    let last = first;
    for (let i = 0; i < 20; i++) last = h.step(b.x, b.y).loss;
    expect(last).toBeLessThan(0.5 * first);
    h.dispose();
  });

  test('refused: bf16 centres, shards, and centres beyond the 4 GiB memory (before allocating)', () => {
    expect(() => new MarginHead(options({ backend: 'wasm', weightsDtype: 'bfloat16' }))).toThrow(/Expected weightsDtype 'float32' for a MarginHead on the wasm backend/);
    expect(() => new MarginHead(options({ backend: 'wasm', shard: { offset: 0, count: 300, total: C } }))).toThrow(BackendUnavailableError);
    expect(() => new MarginHead({ ...options({ backend: 'wasm' }), classes: 1_000_000, dim: 512 })).toThrow(/fit in the wasm backend's memory .* 1000000 × 512 but received 3\.81 GiB/);
    // Without momentum the same head fits (1.91 GiB); not made here, to keep the suite light.
  });
});
