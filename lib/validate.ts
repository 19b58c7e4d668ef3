/** Argument validation: everything is checked here, before the native call. */
import { expected, describe } from './errors';
import type { LossInput, LossOptions, Margin } from './types';

const KINDS = ['softmax', 'arcface', 'cosface', 'combined', 'adaptive', 'elastic-arc', 'elastic-cos', 'cvm'] as const;

/** Parameters each margin kind requires (adaptive's are optional: paper defaults). */
const REQUIRED: Record<Margin['kind'], readonly string[]> = {
  softmax: [],
  arcface: ['m'],
  cosface: ['m'],
  combined: ['m1', 'm2', 'm3'],
  adaptive: [],
  'elastic-arc': ['m', 'sigma', 'seed'],
  'elastic-cos': ['m', 'sigma', 'seed'],
  cvm: ['m1', 'm2'],
};
const OPTIONAL: Record<Margin['kind'], readonly string[]> = {
  softmax: [],
  arcface: [],
  cosface: [],
  combined: [],
  adaptive: ['m1', 'm2'],
  'elastic-arc': ['counter'],
  'elastic-cos': ['counter'],
  cvm: [],
};

export interface Shape {
  n: number;
  c: number;
  d: number;
}

/** Caller-provided output arrays must be Float32Arrays of the right length, not aliasing the inputs. */
export function validateOut(options: LossOptions, input: LossInput, shape: Shape): void {
  const out = options.out;
  if (out === undefined) return;
  if (out === null || typeof out !== 'object') expected('an object { perSample?, gradEmbeddings?, gradWeights? }', 'options.out', out);
  const lengths = { perSample: shape.n, gradEmbeddings: shape.n * shape.d, gradWeights: shape.c * shape.d } as const;
  for (const key of Object.keys(lengths) as (keyof typeof lengths)[]) {
    const a = out[key];
    if (a === undefined) continue;
    if (!(a instanceof Float32Array) || a.length !== lengths[key]) expected(`Float32Array of length ${lengths[key]}`, `options.out.${key}`, a);
    if (a.buffer === input.embeddings.buffer || a.buffer === input.weights.buffer) {
      expected('an array that does not share memory with the inputs', `options.out.${key}`, a, 'a view of an input buffer');
    }
  }
}

export function validateInput(input: LossInput): Shape {
  if (input === null || typeof input !== 'object') expected('an object { embeddings, weights, labels, dim }', 'input', input);
  const { embeddings, weights, labels, dim } = input;
  if (!Number.isInteger(dim) || dim <= 0) expected('a positive integer', 'dim', dim);
  if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
  const n = labels.length;
  if (!(embeddings instanceof Float32Array) || embeddings.length !== n * dim) {
    expected(`Float32Array of length ${n * dim} (labels.length × dim = ${n} × ${dim})`, 'embeddings', embeddings);
  }
  if (!(weights instanceof Float32Array)) expected('Float32Array', 'weights', weights);
  if (weights.length === 0 || weights.length % dim !== 0) {
    expected(`a non-empty Float32Array whose length is a multiple of dim = ${dim}`, 'weights', weights);
  }
  const c = weights.length / dim;
  if (c > 0x7fffffff) expected('at most 2³¹−1 classes', 'weights', weights, `${c} classes`);
  for (let i = 0; i < n; i++) {
    const y = labels[i];
    if (y < -1 || y >= c) expected(`labels in [-1, ${c - 1}] (−1 = ignored)`, `labels[${i}]`, y);
  }
  for (let i = 0; i < embeddings.length; i++) {
    if (!Number.isFinite(embeddings[i])) {
      expected('finite values', 'embeddings', embeddings, `${embeddings[i]} at index ${i} (row ${Math.floor(i / dim)})`);
    }
  }
  // Weights (possibly 2 GB) are checked for finiteness natively while streaming.
  return { n, c, d: dim };
}

function checkParam(kind: string, name: string, v: unknown, { integer = false } = {}): void {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (integer && (!Number.isInteger(v) || v > Number.MAX_SAFE_INTEGER))) {
    expected(integer ? 'a non-negative safe integer' : 'a finite non-negative number', `margin.${name} of '${kind}'`, v);
  }
}

export function validateMargin(margin: unknown): Margin {
  if (margin === null || typeof margin !== 'object') expected(`a margin object { kind, … }`, 'options.margin', margin);
  const kind = (margin as { kind?: unknown }).kind;
  if (typeof kind !== 'string' || !(KINDS as readonly string[]).includes(kind)) {
    expected(`one of ${KINDS.map((k) => `'${k}'`).join(', ')}`, 'margin.kind', kind);
  }
  const k = kind as Margin['kind'];
  const m = margin as unknown as Record<string, unknown>;
  for (const name of REQUIRED[k]) {
    if (!(name in m)) expected(`margin.${name} (a number)`, `margin kind '${k}'`, undefined, 'no such field');
    checkParam(k, name, m[name], { integer: name === 'seed' });
  }
  for (const name of OPTIONAL[k]) {
    if (m[name] !== undefined) checkParam(k, name, m[name], { integer: name === 'counter' });
  }
  return margin as Margin;
}

export function validateOptions(options: LossOptions): void {
  if (options === null || typeof options !== 'object') expected('an options object { margin, … }', 'options', options);
  validateMargin(options.margin);
  const o = options;
  if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale) || o.scale <= 0)) {
    expected('a finite positive number', 'options.scale', o.scale);
  }
  if (o.backend !== undefined && !['auto', 'cpu', 'cuda'].includes(o.backend as string)) {
    expected(`'auto', 'cpu' or 'cuda'`, 'options.backend', o.backend);
  }
  if (o.fallback !== undefined && typeof o.fallback !== 'boolean') expected('a boolean', 'options.fallback', o.fallback);
  if (o.gradFilter !== undefined && (typeof o.gradFilter !== 'number' || !(o.gradFilter >= 0 && o.gradFilter < 1))) {
    expected('a number in [0, 1)', 'options.gradFilter', o.gradFilter);
  }
  if (o.weightsDtype !== undefined && o.weightsDtype !== 'float32' && o.weightsDtype !== 'bfloat16') {
    expected(`'float32' or 'bfloat16'`, 'options.weightsDtype', o.weightsDtype);
  }
  if (o.threads !== undefined && (!Number.isInteger(o.threads) || o.threads < 1 || o.threads > 1024)) {
    expected('an integer in [1, 1024]', 'options.threads', o.threads);
  }
  if (o.workspaceBytes !== undefined && (!Number.isSafeInteger(o.workspaceBytes) || o.workspaceBytes < 0)) {
    expected('a non-negative integer', 'options.workspaceBytes', o.workspaceBytes);
  }
  if (o.simd !== undefined && !['auto', 'avx512', 'avx2', 'portable'].includes(o.simd as string)) {
    expected(`'auto', 'avx512', 'avx2' or 'portable'`, 'options.simd', o.simd);
  }
  if (o.matrix !== undefined && !['auto', 'amx-bf16', 'avx512-bf16', 'none'].includes(o.matrix as string)) {
    expected(`'auto', 'amx-bf16', 'avx512-bf16' or 'none'`, 'options.matrix', o.matrix);
  }
}

export { describe };
