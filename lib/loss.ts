/**
 * The loss functions: argument validation, backend choice, and the call into
 * the fused native kernels. N = labels.length, C = weights.length / dim.
 */
import { mpiInfo } from './sharded/comm';
import { ArgumentError, BackendUnavailableError, NativeError, expected } from './errors';
import { MARGIN_KINDS, nativeMarginParams } from './margins';
import { MATRIX_CODES, SIMD_CODES, native, type NativeLossOptions, type NativeLossResult } from './native';
import type { BackendName, DeviceInfo, ForwardResult, LossAndGradResult, LossInput, LossOptions, Margin } from './types';
import { validateInput, validateOptions, validateOut, type Shape } from './validate';

/** The defaults are the native layer's (native/loss_problem.h, native/cpu/loss_cpu.h), read once. */
const NATIVE_DEFAULTS = native._defaults();
/** Logit scale s where the options give none (64). */
export const DEFAULT_SCALE = NATIVE_DEFAULTS.scale;
/** Bytes of cosine tiles the CPU backend keeps between passes where the options give none (64 MiB). */
export const DEFAULT_WORKSPACE_BYTES = NATIVE_DEFAULTS.workspaceBytes;
export const ADAPTIVE_DEFAULTS = { m1: MARGIN_KINDS.adaptive.params.m1.default, m2: MARGIN_KINDS.adaptive.params.m2.default } as const;

/** Per-seed call counters of the elastic margins (used when margin.counter is not given). */
const elasticCounters = new Map<number, number>();

/** Backends usable in this process: always 'cpu', and 'cuda' when a GPU is usable now. */
export function backends(): BackendName[] {
  return native.info().cuda.usable ? ['cpu', 'cuda'] : ['cpu'];
}

/** Describes the CPU (threads, SIMD) and the GPU, if any, and which backend 'auto' uses. */
export function deviceInfo(): DeviceInfo {
  const info = native.info();
  return {
    backend: info.cuda.usable ? 'cuda' : 'cpu',
    cpu: info.cpu,
    cuda: info.cuda as DeviceInfo['cuda'],
    mpi: mpiInfo(),
  };
}

export function resolveBackend(requested: LossOptions['backend']): BackendName {
  const want = requested ?? 'auto';
  if (want === 'cpu') return 'cpu';
  const cuda = native.info().cuda;
  if (want === 'cuda' && !cuda.usable) {
    throw new BackendUnavailableError(`Expected a usable CUDA device for backend 'cuda' but ${cuda.reason ?? 'none was found'}`);
  }
  return cuda.usable ? 'cuda' : 'cpu';
}

/**
 * A zeroed Float32Array of n floats in the addon's memory (huge-page backed
 * when large). The async calls use such arrays in place (pinned) where they
 * copy arrays that V8 allocated, on the calling thread, for the duration of
 * the call: allocate large weights with this for lossAndGradAsync.
 */
export function allocFloat32(n: number): Float32Array {
  if (!Number.isSafeInteger(n) || n < 0) expected('a non-negative safe integer', 'n', n);
  return callNative(() => native.zeros(n));
}

/** Draws the per-row margins of the elastic kinds, or returns undefined for the other kinds. */
export function elasticMargins(margin: Margin, n: number): Float32Array | undefined {
  if (!MARGIN_KINDS[margin.kind].rowMargins) return undefined;
  const { m, sigma, seed, counter: given } = margin as Extract<Margin, { seed: number }>;
  let counter = given;
  if (counter === undefined) {
    counter = elasticCounters.get(seed) ?? 0;
    elasticCounters.set(seed, counter + 1);
  }
  return native.gaussian(m, sigma, seed, counter, n);
}

interface Prepared {
  shape: Shape;
  backend: BackendName;
  opts: NativeLossOptions;
  margins?: Float32Array;
}

/** The validated options as the native side takes them. */
export function nativeOptions(options: LossOptions, backend: BackendName, margins?: Float32Array): NativeLossOptions {
  return {
    ...nativeMarginParams(options.margin),
    scale: options.scale ?? DEFAULT_SCALE,
    fallback: options.fallback ?? true,
    rowMargins: margins,
    gradFilter: options.gradFilter ?? 0,
    weightsBf16: options.weightsDtype === 'bfloat16',
    threads: options.threads ?? 0,
    workspaceBytes: options.workspaceBytes ?? DEFAULT_WORKSPACE_BYTES,
    simd: SIMD_CODES[options.simd ?? 'auto'],
    matrix: MATRIX_CODES[options.matrix ?? 'auto'],
    backend,
  };
}

function prepare(input: LossInput, options: LossOptions): Prepared {
  validateOptions(options);
  const shape = validateInput(input);
  validateOut(options, shape);
  const backend = resolveBackend(options.backend);
  const margins = elasticMargins(options.margin, shape.n);
  const opts = nativeOptions(options, backend, margins);
  if (options.out) {
    opts.outPerSample = options.out.perSample;
    opts.outGradEmbeddings = options.out.gradEmbeddings;
    opts.outGradWeights = options.out.gradWeights;
  }
  return { shape, backend, opts, margins };
}

/** Native failures become typed errors; messages that name the input are argument errors. */
export function rethrow(err: unknown): never {
  const message = err instanceof Error ? err.message : String(err);
  if (message.startsWith('Expected ')) throw new ArgumentError(message);
  throw new NativeError(message, { cause: err });
}

/** Runs a native call, its failures rethrown as typed errors ({@link rethrow}). */
export function callNative<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    rethrow(err);
  }
}

/** {@link callNative} for a native call that returns a promise. */
export async function callNativeAsync<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    rethrow(err);
  }
}

function forwardResult(r: NativeLossResult, p: Prepared): ForwardResult {
  const out: ForwardResult = { loss: r.loss, perSample: r.perSample, targetCos: r.targetCos, validRows: r.validRows, backend: p.backend };
  if (p.margins) out.margins = p.margins;
  return out;
}

function gradResult(r: NativeLossResult, p: Prepared): LossAndGradResult {
  return {
    ...forwardResult(r, p),
    gradEmbeddings: r.gradEmbeddings as Float32Array,
    gradWeights: r.gradWeights as Float32Array,
    skippedBlocks: r.skippedBlocks,
    totalBlocks: r.totalBlocks,
  };
}

function call(input: LossInput, p: Prepared, withGrad: boolean): NativeLossResult {
  return callNative(() => native.loss(input.embeddings, input.weights, input.labels, input.dim, p.opts, withGrad));
}

function callAsync(input: LossInput, p: Prepared, withGrad: boolean): Promise<NativeLossResult> {
  return callNativeAsync(() => native.lossAsync(input.embeddings, input.weights, input.labels, input.dim, p.opts, withGrad));
}

/** Loss, per-row losses, and the gradients with respect to the embeddings and the class centres. */
export function lossAndGrad(input: LossInput, options: LossOptions): LossAndGradResult {
  const p = prepare(input, options);
  return gradResult(call(input, p, true), p);
}

/** Loss and per-row losses only (no gradient work, no tile cache). */
export function forward(input: LossInput, options: LossOptions): ForwardResult {
  const p = prepare(input, options);
  return forwardResult(call(input, p, false), p);
}

/**
 * {@link lossAndGrad} on the libuv thread pool: the event loop stays free.
 * Do not modify the input arrays until the promise settles. The call keeps
 * what it reads and writes alive even if an ArrayBuffer is transferred
 * meanwhile: arrays the addon allocated are pinned, others are copied for the
 * duration of the call, on the calling thread (allocate large weights with
 * {@link allocFloat32} to avoid that copy; an options.out array transferred
 * before the call settles makes it reject).
 */
export async function lossAndGradAsync(input: LossInput, options: LossOptions): Promise<LossAndGradResult> {
  const p = prepare(input, options);
  return gradResult(await callAsync(input, p, true), p);
}

/** {@link forward} on the libuv thread pool. */
export async function forwardAsync(input: LossInput, options: LossOptions): Promise<ForwardResult> {
  const p = prepare(input, options);
  return forwardResult(await callAsync(input, p, false), p);
}
