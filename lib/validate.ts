/** Argument validation: everything is checked here, before the native call. */
import { expected, describe } from './errors';
import { MARGIN_KIND_NAMES, isOptionalParam, marginParams, type MarginParamSpec } from './margins';
import type { LossInput, LossOptions, Margin } from './types';

/** Most CPU threads a call may ask for: the pool keeps every thread it starts for the process's lifetime. */
export const MAX_THREADS = 256;

/**
 * Largest scale, margin parameter, learning rate or weight decay accepted.
 * These are stored as float32 natively, and beyond this the float32 logits
 * s·cos θ (and the loss, their log-sum-exp) lose every significant digit and
 * then overflow (scale 1e10 gives an infinite CVM loss); a learning rate past
 * it pushes the centres' squared norms past float32 in one step.
 */
export const MAX_PARAMETER = 1e4;

/** Largest finite float32. */
const FLOAT32_MAX = 3.4028234663852886e38;

/** Levenshtein distance (case-insensitive): how far a misspelt option name is from a valid one. */
function editDistance(a: string, b: string): number {
  a = a.toLowerCase();
  b = b.toLowerCase();
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}

/** The valid name closest to `name`. */
export function closestName(name: string, valid: readonly string[]): string {
  let best = valid[0];
  for (const v of valid) if (editDistance(name, v) < editDistance(name, best)) best = v;
  return best;
}

/**
 * Rejects option names that are not in `valid` (a misspelt option would
 * otherwise run silently with its default), naming the closest valid one.
 */
export function rejectUnknownKeys(obj: object, valid: readonly string[], what: string): void {
  for (const key of Object.keys(obj)) {
    if (valid.includes(key)) continue;
    const list = valid.map((v) => `'${v}'`).join(', ');
    expected(`only the options ${list}`, what, obj, `unknown option '${key}' (did you mean '${closestName(key, valid)}'?)`);
  }
}

/**
 * A number stored as float32 natively: finite, within [min, max] (max at most
 * float32's range) and, where `below` is given, still below it once rounded to
 * float32 (0.99999999 rounds to 1).
 */
export function checkFloat32(v: unknown, what: string, range: { min?: number; minExclusive?: boolean; max?: number; below?: number }): number {
  const { min = 0, minExclusive = false, max = MAX_PARAMETER, below } = range;
  const hi = Math.min(max, FLOAT32_MAX);
  const lowText = minExclusive ? `> ${min}` : `≥ ${min}`;
  const highText = below !== undefined ? `< ${below}` : `≤ ${hi}`;
  if (typeof v !== 'number' || !Number.isFinite(v)) expected(`a finite number ${lowText} and ${highText}`, what, v);
  if (minExclusive ? !(v > min) : !(v >= min)) expected(`a number ${lowText}`, what, v);
  if (below !== undefined) {
    if (!(Math.fround(v) < below)) expected(`a number < ${below} (after rounding to float32)`, what, v);
  } else if (v > hi) {
    const why = hi === FLOAT32_MAX ? 'the float32 range' : `larger values overflow the float32 loss or centres (the limit is ${hi})`;
    expected(`a number ≤ ${hi}`, what, v, `${v}: ${why}`);
  }
  return v;
}

const LOSS_OPTION_NAMES = ['margin', 'scale', 'backend', 'fallback', 'gradFilter', 'weightsDtype', 'threads', 'workspaceBytes', 'simd', 'matrix', 'out'] as const;
const OUT_NAMES = ['perSample', 'gradEmbeddings', 'gradWeights'] as const;

export interface Shape {
  n: number;
  c: number;
  d: number;
}

/** Caller-provided output arrays must be Float32Arrays of the right length (and not overlap: see CallArrays in native/napi/napi_util.h). */
export function validateOut(options: LossOptions, shape: Shape): void {
  const out = options.out;
  if (out === undefined) return;
  if (out === null || typeof out !== 'object') expected('an object { perSample?, gradEmbeddings?, gradWeights? }', 'options.out', out);
  rejectUnknownKeys(out, OUT_NAMES, 'options.out');
  const lengths = { perSample: shape.n, gradEmbeddings: shape.n * shape.d, gradWeights: shape.c * shape.d } as const;
  for (const key of Object.keys(lengths) as (keyof typeof lengths)[]) {
    const a = out[key];
    if (a === undefined) continue;
    if (!(a instanceof Float32Array) || a.length !== lengths[key]) expected(`Float32Array of length ${lengths[key]}`, `options.out.${key}`, a);
  }
  // Overlap between the out arrays, the inputs (labels included) and each
  // other is checked natively, on the addresses and lengths V8 holds.
}

export function validateInput(input: LossInput): Shape {
  if (input === null || typeof input !== 'object') expected('an object { embeddings, weights, labels, dim }', 'input', input);
  const { embeddings, weights, labels, dim } = input;
  if (!Number.isInteger(dim) || dim <= 0) expected('a positive integer', 'dim', dim);
  const n = validateBatchShape(embeddings, labels, dim);
  if (!(weights instanceof Float32Array)) expected('Float32Array', 'weights', weights);
  if (weights.length === 0 || weights.length % dim !== 0) {
    expected(`a non-empty Float32Array whose length is a multiple of dim = ${dim}`, 'weights', weights);
  }
  const c = weights.length / dim;
  if (c > 0x7fffffff) expected('at most 2³¹−1 classes', 'weights', weights, `${c} classes`);
  validateBatchValues(embeddings, labels, dim, c);
  // Weights (possibly 2 GB) are checked for finiteness natively while streaming.
  return { n, c, d: dim };
}

/**
 * A batch of rows against `classes` classes (the loss input without its weights,
 * or a MarginHead step): its shape, then its labels and values.
 */
export function validateBatch(embeddings: Float32Array, labels: Int32Array, dim: number, classes: number): void {
  validateBatchShape(embeddings, labels, dim);
  validateBatchValues(embeddings, labels, dim, classes);
}

/** Labels an Int32Array, embeddings a Float32Array of labels.length × dim values; returns N. */
function validateBatchShape(embeddings: Float32Array, labels: Int32Array, dim: number): number {
  if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
  const n = labels.length;
  if (!(embeddings instanceof Float32Array) || embeddings.length !== n * dim) {
    expected(`Float32Array of length ${n * dim} (labels.length × dim = ${n} × ${dim})`, 'embeddings', embeddings);
  }
  return n;
}

/** Every label in [−1, classes) (−1 = ignored) and every embedding finite. */
function validateBatchValues(embeddings: Float32Array, labels: Int32Array, dim: number, classes: number): void {
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (y < -1 || y >= classes) expected(`labels in [-1, ${classes - 1}] (−1 = ignored)`, `labels[${i}]`, y);
  }
  validateFinite(embeddings, 'embeddings', dim);
}

/** Every value finite; the first that is not is named by its index (and its row, given the row length). */
export function validateFinite(a: Float32Array, what: string, rowLength?: number): void {
  for (let i = 0; i < a.length; i++) {
    if (Number.isFinite(a[i])) continue;
    const row = rowLength ? ` (row ${Math.floor(i / rowLength)})` : '';
    expected('finite values', what, a, `${a[i]} at index ${i}${row}`);
  }
}

function checkParam(kind: string, name: string, v: unknown, spec: MarginParamSpec): void {
  const what = `margin.${name} of '${kind}'`;
  if (!spec.integer) {
    checkFloat32(v, what, {});
    return;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > Number.MAX_SAFE_INTEGER) expected('a non-negative safe integer', what, v);
}

/** Checks a margin object against its kind's row of the table (lib/margins.ts). */
export function validateMargin(margin: unknown): Margin {
  if (margin === null || typeof margin !== 'object') expected(`a margin object { kind, … }`, 'options.margin', margin);
  const kind = (margin as { kind?: unknown }).kind;
  if (typeof kind !== 'string' || !(MARGIN_KIND_NAMES as readonly string[]).includes(kind)) {
    expected(`one of ${MARGIN_KIND_NAMES.map((k) => `'${k}'`).join(', ')}`, 'margin.kind', kind);
  }
  const k = kind as Margin['kind'];
  const m = margin as unknown as Record<string, unknown>;
  const params = marginParams(k);
  rejectUnknownKeys(m, ['kind', ...params.map(([name]) => name)], `margin of kind '${k}'`);
  for (const [name, spec] of params) {
    if (isOptionalParam(spec)) {
      if (m[name] !== undefined) checkParam(k, name, m[name], spec);
      continue;
    }
    if (!(name in m)) expected(`margin.${name} (a number)`, `margin kind '${k}'`, undefined, 'no such field');
    checkParam(k, name, m[name], spec);
  }
  return margin as Margin;
}

export function validateOptions(options: LossOptions): void {
  if (options === null || typeof options !== 'object') expected('an options object { margin, … }', 'options', options);
  rejectUnknownKeys(options, LOSS_OPTION_NAMES, 'options');
  validateMargin(options.margin);
  const o = options;
  if (o.scale !== undefined) checkFloat32(o.scale, 'options.scale', { min: 0, minExclusive: true });
  if (o.backend !== undefined && !['auto', 'cpu', 'cuda', 'wasm'].includes(o.backend as string)) {
    expected(`'auto', 'cpu', 'cuda' or 'wasm'`, 'options.backend', o.backend);
  }
  if (o.fallback !== undefined && typeof o.fallback !== 'boolean') expected('a boolean', 'options.fallback', o.fallback);
  if (o.gradFilter !== undefined) checkFloat32(o.gradFilter, 'options.gradFilter', { below: 1 });
  if (o.weightsDtype !== undefined && o.weightsDtype !== 'float32' && o.weightsDtype !== 'bfloat16') {
    expected(`'float32' or 'bfloat16'`, 'options.weightsDtype', o.weightsDtype);
  }
  if (o.threads !== undefined && (!Number.isInteger(o.threads) || o.threads < 1 || o.threads > MAX_THREADS)) {
    expected(`an integer in [1, ${MAX_THREADS}]`, 'options.threads', o.threads);
  }
  if (o.workspaceBytes !== undefined && (!Number.isSafeInteger(o.workspaceBytes) || o.workspaceBytes < 0)) {
    expected('a non-negative integer', 'options.workspaceBytes', o.workspaceBytes);
  }
  if (o.simd !== undefined && !['auto', 'avx512', 'avx2', 'neon', 'portable'].includes(o.simd as string)) {
    expected(`'auto', 'avx512', 'avx2', 'neon' or 'portable'`, 'options.simd', o.simd);
  }
  if (o.matrix !== undefined && !['auto', 'amx-bf16', 'avx512-bf16', 'neon-bf16', 'none'].includes(o.matrix as string)) {
    expected(`'auto', 'amx-bf16', 'avx512-bf16', 'neon-bf16' or 'none'`, 'options.matrix', o.matrix);
  }
}

export { describe };
