/** Problem builders and error measures for the GPU tests. */

export interface Problem {
  embeddings: Float32Array;
  weights: Float32Array;
  labels: Int32Array;
  dim: number;
}

// The same seeded generators as the CPU suite (identical draws).
import { test } from 'vitest';
import { deviceInfo } from '../../lib/index';
import { gaussian, rng } from '../reference.mjs';
export { gaussian, rng };

/** The CUDA backend is the CPU emulation of the kernels (test/gpu/emu), not a GPU. */
export const EMULATED = deviceInfo().cuda.name === 'CPU emulation';
/**
 * Under the emulation every CTA runs on the CPU: cases sized for a GPU (10⁵
 * classes) take minutes each there, so they run on a real GPU only, unless
 * EMU_FULL=1 (test/gpu/README.md lists them).
 */
export const SMALL = EMULATED && process.env.EMU_FULL !== '1';
export const gpuOnlyTest: (name: string, fn: () => void) => void = SMALL ? test.skip : test;

/**
 * For afterEach: lets the event loop turn between tests. Back-to-back
 * synchronous tests only chain microtasks, so under the emulation the worker
 * could block for over a minute with a vitest RPC outstanding, and that RPC
 * then times out ("Timeout calling onTaskUpdate") although it was answered.
 */
export const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Random problem: Gaussian embeddings and centres for small sizes, uniform
 * [−1, 1) above a million weights (faster to draw; the loss normalises anyway).
 */
export function randomProblem(n: number, c: number, d: number, seed: number): Problem {
  const r = rng(seed);
  const g = gaussian(r);
  const embeddings = new Float32Array(n * d);
  for (let k = 0; k < embeddings.length; k++) embeddings[k] = g();
  const weights = new Float32Array(c * d);
  if (weights.length <= 1 << 20) {
    for (let k = 0; k < weights.length; k++) weights[k] = g();
  } else {
    for (let k = 0; k < weights.length; k++) weights[k] = 2 * r() - 1;
  }
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) labels[i] = Math.floor(r() * c);
  return { embeddings, weights, labels, dim: d };
}

/** Pulls each counted row towards its class centre: x = t·ŵ_y + (1 − t)·noise/√d. */
export function cluster(p: Problem, t: number, seed: number): void {
  const g = gaussian(rng(seed));
  const d = p.dim;
  for (let i = 0; i < p.labels.length; i++) {
    const y = p.labels[i];
    if (y < 0) continue;
    let nrm = 0;
    for (let k = 0; k < d; k++) nrm += p.weights[y * d + k] ** 2;
    nrm = Math.sqrt(nrm);
    for (let k = 0; k < d; k++) p.embeddings[i * d + k] = (t * p.weights[y * d + k]) / nrm + ((1 - t) * g()) / Math.sqrt(d);
  }
}

/**
 * Target cosines at and near ±1: row i is ±1.7·w_y, exactly parallel (i % 4 < 2)
 * or with 1e−3 added to its first element; even rows +, odd rows − (θ = π: the
 * monotonic fallback of the angular kinds).
 */
export function nearParallel(p: Problem): void {
  const d = p.dim;
  for (let i = 0; i < p.labels.length; i++) {
    const y = p.labels[i];
    const sign = i % 2 === 0 ? 1 : -1;
    for (let k = 0; k < d; k++) p.embeddings[i * d + k] = sign * p.weights[y * d + k] * 1.7 + (k === 0 && i % 4 >= 2 ? 1e-3 : 0);
  }
}

/** ‖a − b‖₂ / ‖b‖₂ (the absolute norm when b is all zero). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  let n = 0;
  for (let k = 0; k < a.length; k++) {
    const t = a[k] - b[k];
    e += t * t;
    n += b[k] * b[k];
  }
  return n > 0 ? Math.sqrt(e / n) : Math.sqrt(e);
}

/** max |a − b| / max |b| (the absolute error when b is all zero). */
export function relMax(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  let m = 0;
  for (let k = 0; k < a.length; k++) {
    e = Math.max(e, Math.abs(a[k] - b[k]));
    m = Math.max(m, Math.abs(b[k]));
  }
  return m > 0 ? e / m : e;
}

/** Largest per-row loss error, relative to max(1, |ref|). */
export function lossErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let k = 0; k < a.length; k++) e = Math.max(e, Math.abs(a[k] - b[k]) / Math.max(1, Math.abs(b[k])));
  return e;
}

export function allFinite(a: ArrayLike<number>): boolean {
  for (let k = 0; k < a.length; k++) if (!Number.isFinite(a[k])) return false;
  return true;
}

export function bitwiseEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let k = 0; k < ua.length; k++) if (ua[k] !== ub[k]) return false;
  return true;
}
