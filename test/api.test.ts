/**
 * The public API: determinism, the async variants, the event loop, the elastic
 * margins' generator, backends()/deviceInfo(), and the typed errors of every
 * kind of bad input.
 */
import { describe, expect, test } from 'vitest';
import {
  ArgumentError,
  allocFloat32,
  BackendUnavailableError,
  NativeError,
  backends,
  deviceInfo,
  forward,
  forwardAsync,
  lossAndGrad,
  lossAndGradAsync,
  ADAPTIVE_DEFAULTS,
  DEFAULT_SCALE,
} from '../lib/index';
import type { LossInput, LossOptions, Margin } from '../lib/types';
import { ALL_KINDS, label } from './helpers';
import { randomProblem } from './reference.mjs';

const sameBits = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

describe('determinism and the async variants', () => {
  // 3000 classes, N = 32: 12 blocks, split over the threads.
  const p = randomProblem(32, 3000, 64, 41);

  for (const threads of [1, 2]) {
    test(`bit-identical repeated runs with threads = ${threads}`, () => {
      for (const m of [{ kind: 'adaptive' }, { kind: 'cvm', m1: 0.3, m2: 0.2 }] as Margin[]) {
        const a = lossAndGrad(p, { margin: m, threads });
        for (let k = 0; k < 3; k++) {
          const b = lossAndGrad(p, { margin: m, threads });
          expect(b.loss).toBe(a.loss);
          expect(sameBits(a.perSample, b.perSample)).toBe(true);
          expect(sameBits(a.gradEmbeddings, b.gradEmbeddings)).toBe(true);
          expect(sameBits(a.gradWeights, b.gradWeights)).toBe(true);
        }
      }
    });
  }

  test('bit-identical whichever thread runs which chunk of class blocks', () => {
    // 16 rows, 20000 classes: 79 blocks of 256, in 10 chunks on 2 threads and 12 on 3, which the
    // threads take as they finish; the ends of the chunks, and the partials merged at them, do not
    // depend on which thread took which. Repeated runs differ in that assignment, not in the bits.
    const q = randomProblem(16, 20000, 32, 43);
    for (const threads of [2, 3]) {
      for (const weightsDtype of ['float32', 'bfloat16'] as const) {
        const opts: LossOptions = { margin: { kind: 'adaptive' }, threads, weightsDtype };
        const a = lossAndGrad(q, opts);
        for (let k = 0; k < 4; k++) {
          const b = lossAndGrad(q, opts);
          expect(b.loss).toBe(a.loss);
          expect(sameBits(a.gradEmbeddings, b.gradEmbeddings)).toBe(true);
          expect(sameBits(a.gradWeights, b.gradWeights)).toBe(true);
        }
        // and agree with one thread's single chunk to fp32 rounding of the merge order
        const one = lossAndGrad(q, { ...opts, threads: 1 });
        expect(Math.abs(one.loss - a.loss)).toBeLessThanOrEqual(1e-6 * one.loss);
        let worst = 0;
        let scale = 0;
        for (let k = 0; k < one.gradEmbeddings.length; k++) {
          worst = Math.max(worst, Math.abs(one.gradEmbeddings[k] - a.gradEmbeddings[k]));
          scale = Math.max(scale, Math.abs(one.gradEmbeddings[k]));
        }
        expect(worst).toBeLessThanOrEqual(1e-5 * scale);
      }
    }
  });

  test('lossAndGradAsync and forwardAsync equal their sync versions bit for bit', async () => {
    for (const m of ALL_KINDS) {
      const opts: LossOptions = { margin: m, threads: 2 };
      const s = lossAndGrad(p, opts);
      const a = await lossAndGradAsync(p, opts);
      expect(a.loss).toBe(s.loss);
      expect(a.validRows).toBe(s.validRows);
      expect(a.backend).toBe(s.backend);
      expect(a.totalBlocks).toBe(s.totalBlocks);
      expect(sameBits(a.perSample, s.perSample)).toBe(true);
      expect(sameBits(a.gradEmbeddings, s.gradEmbeddings)).toBe(true);
      expect(sameBits(a.gradWeights, s.gradWeights)).toBe(true);
      if (m.kind.startsWith('elastic')) expect(sameBits(a.margins!, s.margins!)).toBe(true);
      const f = forward(p, opts);
      const fa = await forwardAsync(p, opts);
      expect(fa.loss).toBe(f.loss);
      expect(sameBits(fa.perSample, f.perSample)).toBe(true);
      expect(f.loss).toBe(s.loss);
    }
  });

  test('several async calls in flight at once each get their own right answer', async () => {
    const kinds = ALL_KINDS.slice(0, 6);
    const sync = kinds.map((m) => lossAndGrad(p, { margin: m, threads: 1 }));
    const all = await Promise.all(kinds.map((m) => lossAndGradAsync(p, { margin: m, threads: 1 })));
    all.forEach((r, k) => {
      expect(r.loss).toBe(sync[k].loss);
      expect(sameBits(r.gradWeights, sync[k].gradWeights)).toBe(true);
    });
  });

  test('the inputs are not modified', () => {
    const x = new Float32Array(p.embeddings);
    const w = new Float32Array(p.weights);
    const l = new Int32Array(p.labels);
    lossAndGrad(p, { margin: { kind: 'adaptive' }, weightsDtype: 'bfloat16' });
    expect(sameBits(x, p.embeddings)).toBe(true);
    expect(sameBits(w, p.weights)).toBe(true);
    expect(Array.from(l)).toEqual(Array.from(p.labels));
  });

  test('the event loop keeps ticking during lossAndGradAsync (N = 256, C = 60000, d = 128)', async () => {
    const problem = randomProblem(256, 60000, 128, 42);
    // Weights in the addon's memory: used in place (V8-allocated ones are
    // copied on this thread first, which is not what this test measures).
    const weights = allocFloat32(problem.weights.length);
    weights.set(problem.weights);
    const big = { ...problem, weights };
    const opts: LossOptions = { margin: { kind: 'adaptive' } };
    let ticks = 0;
    let maxGap = 0;
    let last = performance.now();
    let running = true;
    const tick = () => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      ticks++;
      if (running) setTimeout(tick, 1);
    };
    const t0 = performance.now();
    setTimeout(tick, 1);
    const r = await lossAndGradAsync(big, opts);
    running = false;
    const elapsed = performance.now() - t0;
    // ~12 GFLOP: a few hundred ms on 2 cores. What is deterministic is that timers fire while the
    // call runs (a blocking call would let none through before it returns); how many, and the
    // longest gap between them, depend on the machine's load, so they are only logged.
    expect(ticks).toBeGreaterThanOrEqual(2);
    expect(Number.isFinite(r.loss)).toBe(true);
    if (process.env.MS_TEST_VERBOSE) console.log('event loop', { elapsed, ticks, maxGap });
    // The sync call, by contrast, blocks: no timer fires during it.
    let fired = 0;
    const h = setTimeout(() => fired++, 0);
    const s = lossAndGrad(big, opts);
    expect(fired).toBe(0);
    clearTimeout(h);
    expect(s.loss).toBe(r.loss);
  });
});

describe('elastic margins', () => {
  const p = randomProblem(64, 10, 8, 43);
  const kinds = ['elastic-arc', 'elastic-cos'] as const;

  for (const kind of kinds) {
    test(`${kind}: same (seed, counter) → same margins and loss; another counter or seed → different`, () => {
      const m = { kind, m: 0.5, sigma: 0.05, seed: 1234, counter: 7 };
      const a = lossAndGrad(p, { margin: m });
      const b = forward(p, { margin: m });
      const c = lossAndGrad(p, { margin: { ...m, counter: 8 } });
      const d = lossAndGrad(p, { margin: { ...m, seed: 1235 } });
      expect(a.margins).toBeInstanceOf(Float32Array);
      expect(a.margins!.length).toBe(64);
      expect(sameBits(a.margins!, b.margins!)).toBe(true);
      expect(a.loss).toBe(b.loss);
      expect(c.margins!.some((v, i) => v !== a.margins![i])).toBe(true);
      expect(d.margins!.some((v, i) => v !== a.margins![i])).toBe(true);
      expect(c.loss).not.toBe(a.loss);
      // Rows draw independently: not all equal.
      expect(new Set(a.margins).size).toBeGreaterThan(60);
      // The draw of row i does not depend on N (key = (seed, counter, row)).
      const small = forward({ ...p, embeddings: p.embeddings.subarray(0, 10 * 8), labels: p.labels.subarray(0, 10) }, { margin: m });
      expect(sameBits(small.margins!, a.margins!.subarray(0, 10))).toBe(true);
    });
  }

  test('the two elastic kinds draw the same margins for the same key', () => {
    const a = forward(p, { margin: { kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: 9, counter: 2 } });
    const b = forward(p, { margin: { kind: 'elastic-cos', m: 0.5, sigma: 0.05, seed: 9, counter: 2 } });
    expect(sameBits(a.margins!, b.margins!)).toBe(true);
  });

  test('many draws have mean ≈ m and standard deviation ≈ sigma, Gaussian shape', () => {
    const n = 40000;
    const q = { embeddings: new Float32Array(n).fill(1), weights: new Float32Array([1]), labels: new Int32Array(n), dim: 1 };
    const m = 0.35;
    const sigma = 0.05;
    const r = forward(q, { margin: { kind: 'elastic-cos', m, sigma, seed: 77, counter: 0 } });
    const v = r.margins!;
    let mean = 0;
    for (const x of v) mean += x;
    mean /= n;
    let varr = 0;
    for (const x of v) varr += (x - mean) ** 2;
    const std = Math.sqrt(varr / (n - 1));
    // Standard errors: σ/√n = 2.5e−4 for the mean, σ/√(2n) = 1.8e−4 for the std: allow 5 of them.
    expect(Math.abs(mean - m)).toBeLessThan((5 * sigma) / Math.sqrt(n));
    expect(Math.abs(std - sigma)).toBeLessThan((5 * sigma) / Math.sqrt(2 * n));
    // Shape: 68.27% within 1σ, 95.45% within 2σ (binomial s.e. ≤ 0.0024: allow 0.01).
    const within = (k: number) => v.filter((x) => Math.abs(x - m) < k * sigma).length / n;
    expect(Math.abs(within(1) - 0.6827)).toBeLessThan(0.01);
    expect(Math.abs(within(2) - 0.9545)).toBeLessThan(0.01);
    // Symmetric.
    expect(Math.abs(v.filter((x) => x > m).length / n - 0.5)).toBeLessThan(0.01);
    // sigma = 0: every row gets exactly m (as fp32).
    const z = forward(q, { margin: { kind: 'elastic-cos', m, sigma: 0, seed: 77, counter: 0 } });
    expect(z.margins!.every((x) => x === Math.fround(m))).toBe(true);
  });

  test('without a counter, each call with a seed uses the next counter (0, 1, 2, …) of that seed', () => {
    const seed = 20240611; // not used elsewhere in this process
    const base = { kind: 'elastic-arc' as const, m: 0.5, sigma: 0.05, seed };
    const first = forward(p, { margin: base });
    const second = lossAndGrad(p, { margin: base });
    const third = forward(p, { margin: base });
    expect(sameBits(first.margins!, forward(p, { margin: { ...base, counter: 0 } }).margins!)).toBe(true);
    expect(sameBits(second.margins!, forward(p, { margin: { ...base, counter: 1 } }).margins!)).toBe(true);
    expect(sameBits(third.margins!, forward(p, { margin: { ...base, counter: 2 } }).margins!)).toBe(true);
    // Explicit counters do not advance the automatic one.
    expect(sameBits(forward(p, { margin: base }).margins!, forward(p, { margin: { ...base, counter: 3 } }).margins!)).toBe(true);
    // Another seed has its own counter, starting at 0.
    const other = { ...base, seed: seed + 1 };
    expect(sameBits(forward(p, { margin: other }).margins!, forward(p, { margin: { ...other, counter: 0 } }).margins!)).toBe(true);
  });

  test('non-elastic kinds return no margins', () => {
    expect(lossAndGrad(p, { margin: { kind: 'arcface', m: 0.5 } }).margins).toBeUndefined();
    expect(forward(p, { margin: { kind: 'adaptive' } }).margins).toBeUndefined();
  });
});

describe('backends() and deviceInfo()', () => {
  test("backends() lists 'cpu', 'cuda' exactly when a GPU is usable, and 'wasm' exactly when its module loads", () => {
    const b = backends();
    expect(b).toContain('cpu');
    expect(b.every((x) => x === 'cpu' || x === 'cuda' || x === 'wasm')).toBe(true);
    expect(b.includes('cuda')).toBe(deviceInfo().cuda.usable);
    expect(b.includes('wasm')).toBe(deviceInfo().wasm.usable);
  });

  test('deviceInfo() has the documented shape', () => {
    const info = deviceInfo();
    expect(['cpu', 'cuda']).toContain(info.backend);
    expect(info.backend === 'cuda').toBe(info.cuda.usable);
    expect(Number.isInteger(info.cpu.threads) && info.cpu.threads >= 1).toBe(true);
    expect(['avx512', 'avx2', 'neon', 'portable']).toContain(info.cpu.simd);
    expect(info.cpu.simdWidth).toBe({ avx512: 16, avx2: 8, neon: 4, portable: 4 }[info.cpu.simd]);
    expect(typeof info.cuda.compiled).toBe('boolean');
    expect(typeof info.cuda.usable).toBe('boolean');
    if (!info.cuda.usable) {
      expect(typeof info.cuda.reason).toBe('string');
      expect(info.cuda.reason!.length).toBeGreaterThan(0);
    } else {
      expect(info.cuda.compiled).toBe(true);
      expect(typeof info.cuda.name).toBe('string');
    }
  });

  test("results name their backend; 'auto' resolves to deviceInfo().backend", () => {
    const p = randomProblem(4, 10, 8, 44);
    expect(lossAndGrad(p, { margin: { kind: 'softmax' }, backend: 'cpu' }).backend).toBe('cpu');
    expect(lossAndGrad(p, { margin: { kind: 'softmax' } }).backend).toBe(deviceInfo().backend);
    expect(forward(p, { margin: { kind: 'softmax' }, backend: 'auto' }).backend).toBe(deviceInfo().backend);
  });

  test('exported defaults', () => {
    expect(DEFAULT_SCALE).toBe(64);
    expect(ADAPTIVE_DEFAULTS).toEqual({ m1: 0.03, m2: 0.5 });
    // The defaults are what an options-free adaptive call uses.
    const p = randomProblem(6, 20, 8, 45);
    const a = lossAndGrad(p, { margin: { kind: 'adaptive' }, threads: 1 });
    const b = lossAndGrad(p, { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, scale: 64, threads: 1 });
    expect(a.loss).toBe(b.loss);
  });
});

describe('bad inputs raise typed errors', () => {
  const p = randomProblem(4, 6, 8, 46);
  const ok: LossOptions = { margin: { kind: 'adaptive' } };
  /** "Expected X for Y but received Z" with Y containing `what` (and Z containing `got`, if given). */
  const shape = (what: string, got?: string) =>
    new RegExp(`^Expected .+ for ${what.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.* but received ${got ? `.*${got.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}` : '.+'}`, 's');

  function expectArgError(input: unknown, options: unknown, what: string, got?: string): void {
    for (const fn of [lossAndGrad, forward]) {
      let err: unknown;
      try {
        fn(input as LossInput, options as LossOptions);
      } catch (e) {
        err = e;
      }
      expect(err, `${fn.name}: no error for ${what}`).toBeInstanceOf(ArgumentError);
      expect(err).toBeInstanceOf(TypeError);
      const e = err as ArgumentError;
      expect(e.name).toBe('ArgumentError');
      expect(e.code).toBe('ERR_MARGIN_SOFTMAX_ARGUMENT');
      expect(e.message).toMatch(shape(what, got));
    }
  }

  test('argument errors are TypeErrors with a code', () => {
    const e = new ArgumentError('Expected a for b but received c');
    expect(e).toBeInstanceOf(TypeError);
    expect(e).toBeInstanceOf(Error);
    expect(new BackendUnavailableError('x')).toBeInstanceOf(Error);
    expect(new BackendUnavailableError('x').code).toBe('ERR_MARGIN_SOFTMAX_BACKEND_UNAVAILABLE');
    expect(new NativeError('x').code).toBe('ERR_MARGIN_SOFTMAX_NATIVE');
  });

  test('wrong array types', () => {
    expectArgError({ ...p, embeddings: Float64Array.from(p.embeddings) }, ok, 'embeddings', 'Float64Array of length 32');
    expectArgError({ ...p, embeddings: Array.from(p.embeddings) }, ok, 'embeddings', 'Array of length 32');
    expectArgError({ ...p, weights: Float64Array.from(p.weights) }, ok, 'weights', 'Float64Array');
    expectArgError({ ...p, weights: null }, ok, 'weights', 'null');
    expectArgError({ ...p, labels: Uint32Array.from(p.labels) }, ok, 'labels', 'Uint32Array');
    expectArgError({ ...p, labels: Float32Array.from(p.labels) }, ok, 'labels', 'Float32Array');
    expectArgError({ ...p, labels: Array.from(p.labels) }, ok, 'labels', 'Array');
    expectArgError(null, ok, 'input', 'null');
    expectArgError(undefined, ok, 'input', 'undefined');
  });

  test('wrong array lengths', () => {
    expectArgError({ ...p, embeddings: p.embeddings.subarray(0, 31) }, ok, 'embeddings', 'Float32Array of length 31');
    expectArgError({ ...p, embeddings: new Float32Array(40) }, ok, 'embeddings', 'of length 40');
    expectArgError({ ...p, labels: p.labels.subarray(0, 3) }, ok, 'embeddings'); // N from labels: 3 × 8 ≠ 32
    expectArgError({ ...p, weights: p.weights.subarray(0, 47) }, ok, 'weights', 'of length 47');
    expectArgError({ ...p, weights: new Float32Array(0) }, ok, 'weights', 'of length 0');
  });

  test('dim ≤ 0, not an integer, or not dividing weights.length', () => {
    for (const dim of [0, -8, 1.5, NaN, Infinity]) expectArgError({ ...p, dim }, ok, 'dim', String(dim));
    expectArgError({ ...p, dim: '8' }, ok, 'dim', "'8'");
    expectArgError({ ...p, dim: undefined }, ok, 'dim', 'undefined');
    // weights.length = 45 is not a multiple of dim = 8.
    expectArgError({ ...p, weights: new Float32Array(45).fill(1) }, ok, 'weights', 'of length 45');
    // dim divides embeddings.length but not weights.length.
    expectArgError({ embeddings: new Float32Array(32).fill(1), weights: new Float32Array(36).fill(1), labels: new Int32Array(2), dim: 16 }, ok, 'weights', 'of length 36');
  });

  test('labels ≥ C or < −1', () => {
    for (const [y, what] of [
      [6, 'labels[2]'],
      [100, 'labels[2]'],
      [-2, 'labels[2]'],
      [-2147483648, 'labels[2]'],
    ] as const) {
      const labels = new Int32Array(p.labels);
      labels[2] = y;
      expectArgError({ ...p, labels }, ok, what, String(y));
    }
    // −1 and C − 1 are fine.
    const labels = new Int32Array([-1, 5, 0, 5]);
    expect(lossAndGrad({ ...p, labels }, ok).validRows).toBe(3);
  });

  test('NaN / ±Inf in embeddings', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = new Float32Array(p.embeddings);
      x[13] = bad;
      expectArgError({ ...p, embeddings: x }, ok, 'embeddings', `${bad} at index 13 (row 1)`);
    }
  });

  test('NaN / ±Inf in weights (found natively while streaming), sync and async, every block', async () => {
    const q = randomProblem(8, 3000, 16, 47);
    for (const bad of [NaN, Infinity, -Infinity]) {
      for (const row of [0, 2999, 1500]) {
        const w = new Float32Array(q.weights);
        w[row * 16 + 5] = bad;
        for (const weightsDtype of ['float32', 'bfloat16'] as const) {
          for (const threads of [1, 2]) {
            expectArgError({ ...q, weights: w }, { ...ok, weightsDtype, threads }, 'weights', `row ${row}`);
          }
        }
        await expect(lossAndGradAsync({ ...q, weights: w }, ok)).rejects.toThrow(ArgumentError);
        await expect(forwardAsync({ ...q, weights: w }, ok)).rejects.toThrow(shape('weights', `row ${row}`));
      }
    }
  });

  test('margin: missing, not an object, unknown kind', () => {
    expectArgError(p, {}, 'options.margin', 'undefined');
    expectArgError(p, { margin: null }, 'options.margin', 'null');
    expectArgError(p, { margin: 'arcface' }, 'options.margin', "'arcface'");
    expectArgError(p, { margin: { kind: 'sphereface', m: 4 } }, 'margin.kind', "'sphereface'");
    expectArgError(p, { margin: { kind: 'ArcFace', m: 0.5 } }, 'margin.kind', "'ArcFace'");
    expectArgError(p, { margin: {} }, 'margin.kind', 'undefined');
    expectArgError(p, null, 'options', 'null');
    expectArgError(p, undefined, 'options', 'undefined');
  });

  test('missing margin parameters', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ kind: 'arcface' }, 'm'],
      [{ kind: 'cosface' }, 'm'],
      [{ kind: 'combined', m1: 1, m2: 0.3 }, 'm3'],
      [{ kind: 'combined', m2: 0.3, m3: 0.2 }, 'm1'],
      [{ kind: 'cvm', m1: 0.3 }, 'm2'],
      [{ kind: 'elastic-arc', m: 0.5, sigma: 0.05 }, 'seed'],
      [{ kind: 'elastic-cos', m: 0.35, seed: 1 }, 'sigma'],
    ];
    for (const [margin, field] of cases) {
      let err: unknown;
      try {
        lossAndGrad(p, { margin } as unknown as LossOptions);
      } catch (e) {
        err = e;
      }
      expect(err, label(margin as unknown as Margin)).toBeInstanceOf(ArgumentError);
      expect((err as Error).message).toMatch(new RegExp(`^Expected margin\\.${field} .* for margin kind '${margin.kind}' but received`));
    }
  });

  test('non-finite or negative margin parameters', () => {
    const bads: unknown[] = [NaN, Infinity, -Infinity, -0.1, '0.5', null];
    const fields: [Record<string, unknown>, string][] = [
      [{ kind: 'arcface', m: 0.5 }, 'm'],
      [{ kind: 'cosface', m: 0.35 }, 'm'],
      [{ kind: 'combined', m1: 1, m2: 0.3, m3: 0.2 }, 'm1'],
      [{ kind: 'combined', m1: 1, m2: 0.3, m3: 0.2 }, 'm3'],
      [{ kind: 'adaptive', m1: 0.03, m2: 0.5 }, 'm1'],
      [{ kind: 'adaptive', m1: 0.03, m2: 0.5 }, 'm2'],
      [{ kind: 'cvm', m1: 0.3, m2: 0.2 }, 'm2'],
      [{ kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: 1 }, 'sigma'],
      [{ kind: 'elastic-cos', m: 0.35, sigma: 0.05, seed: 1 }, 'm'],
    ];
    for (const [margin, field] of fields) {
      for (const bad of bads) {
        expectArgError(p, { margin: { ...margin, [field]: bad } }, `margin.${field} of '${margin.kind}'`);
      }
    }
    // seed and counter: non-negative safe integers.
    for (const bad of [1.5, -1, NaN, 2 ** 53, '3']) {
      expectArgError(p, { margin: { kind: 'elastic-arc', m: 0.5, sigma: 0.05, seed: bad } }, "margin.seed of 'elastic-arc'");
      expectArgError(p, { margin: { kind: 'elastic-cos', m: 0.5, sigma: 0.05, seed: 1, counter: bad } }, "margin.counter of 'elastic-cos'");
    }
  });

  test('unknown backend', () => {
    for (const b of ['gpu', 'CPU', 'webgl', 1]) expectArgError(p, { ...ok, backend: b }, 'options.backend');
  });

  test("backend 'cuda' without a usable GPU → BackendUnavailableError (sync throws, async rejects)", async () => {
    if (backends().includes('cuda')) return; // a GPU is usable here: nothing to check
    expect(() => lossAndGrad(p, { ...ok, backend: 'cuda' })).toThrow(BackendUnavailableError);
    expect(() => forward(p, { ...ok, backend: 'cuda' })).toThrow(BackendUnavailableError);
    let err: unknown;
    try {
      lossAndGrad(p, { ...ok, backend: 'cuda' });
    } catch (e) {
      err = e;
    }
    expect(err).not.toBeInstanceOf(ArgumentError);
    expect((err as BackendUnavailableError).code).toBe('ERR_MARGIN_SOFTMAX_BACKEND_UNAVAILABLE');
    expect((err as Error).message).toMatch(/^Expected a usable CUDA device for backend 'cuda' but .+/);
    expect((err as Error).message).toContain(deviceInfo().cuda.reason!);
    await expect(lossAndGradAsync(p, { ...ok, backend: 'cuda' })).rejects.toThrow(BackendUnavailableError);
    await expect(forwardAsync(p, { ...ok, backend: 'cuda' })).rejects.toThrow(BackendUnavailableError);
  });

  test('bad scale, fallback, threads, gradFilter, workspaceBytes, simd, weightsDtype', () => {
    const table: [string, unknown[]][] = [
      ['scale', [0, -64, NaN, Infinity, '64', null]],
      ['fallback', ['yes', 1, null]],
      ['threads', [0, -1, 1.5, 1025, NaN, '2']],
      ['gradFilter', [-1e-9, 1, 2, NaN, Infinity, '0.1']],
      ['workspaceBytes', [-1, 1.5, NaN, Infinity, 2 ** 60, '0']],
      ['simd', ['sse', 'AVX2', 'sve', 16]],
      ['weightsDtype', ['float16', 'bf16', 'fp32', 32]],
    ];
    for (const [field, values] of table) {
      for (const v of values) expectArgError(p, { ...ok, [field]: v }, `options.${field}`);
    }
    // The boundary values that are allowed.
    for (const extra of [{ threads: 1 }, { threads: 256 }, { gradFilter: 0 }, { gradFilter: 0.999 }, { workspaceBytes: 0 }, { scale: 1e-3 }, { simd: 'portable' }, { weightsDtype: 'float32' }, { fallback: false }] as Partial<LossOptions>[]) {
      expect(Number.isFinite(lossAndGrad(p, { ...ok, ...extra }).loss)).toBe(true);
    }
  });

  test('async variants reject (not throw) on bad arguments', async () => {
    const bad = { ...p, dim: 0 };
    const pr = lossAndGradAsync(bad, ok);
    expect(pr).toBeInstanceOf(Promise);
    await expect(pr).rejects.toThrow(ArgumentError);
    await expect(forwardAsync(p, { margin: { kind: 'nope' } } as unknown as LossOptions)).rejects.toThrow(shape('margin.kind'));
  });
});
