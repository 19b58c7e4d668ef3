/**
 * The loss functions: argument validation, backend choice, and the call into
 * the fused kernels (the native addon's, or the same C++ compiled to
 * WebAssembly, lib/wasm/). N = labels.length, C = weights.length / dim.
 */
import { mpiInfo } from './sharded/comm';
import { ArgumentError, BackendUnavailableError, NativeError, expected } from './errors';
import { MARGIN_KINDS, nativeMarginParams } from './margins';
import { MATRIX_CODES, SIMD_CODES, native, nativeStatus, type NativeLossOptions, type NativeLossResult } from './native';
import type { BackendName, DeviceInfo, ForwardResult, LossAndGradResult, LossInput, LossOptions, Margin } from './types';
import { validateInput, validateOptions, validateOut, type Shape } from './validate';
import { PACKAGED_DEFAULTS, WASM_INFO, wasmDefaults, wasmGaussian, wasmLoss, wasmStatus } from './wasm';

/**
 * The defaults are the native layer's (native/loss_problem.h, native/cpu/loss_cpu.h),
 * read once from the addon, or where it does not load from the wasm module
 * (built from the same headers); in a browser, before initWasm() has run, the
 * packaged copy of the same numbers (a test checks the three agree).
 */
const NATIVE_DEFAULTS = nativeStatus().usable ? native._defaults() : wasmStatus().usable ? wasmDefaults() : PACKAGED_DEFAULTS;
/** Logit scale s where the options give none (64). */
export const DEFAULT_SCALE = NATIVE_DEFAULTS.scale;
/** Bytes of cosine tiles the CPU backend keeps between passes where the options give none (128 MiB). */
export const DEFAULT_WORKSPACE_BYTES = NATIVE_DEFAULTS.workspaceBytes;
export const ADAPTIVE_DEFAULTS = { m1: MARGIN_KINDS.adaptive.params.m1.default, m2: MARGIN_KINDS.adaptive.params.m2.default } as const;

/** Per-seed call counters of the elastic margins (used when margin.counter is not given). */
const elasticCounters = new Map<number, number>();

/** Backends usable in this process: 'cpu' where the native addon loads, 'cuda' where a GPU is usable too, 'wasm' where the module loads. */
export function backends(): BackendName[] {
  const list: BackendName[] = [];
  if (nativeStatus().usable) {
    list.push('cpu');
    if (native.info().cuda.usable) list.push('cuda');
  }
  if (wasmStatus().usable) list.push('wasm');
  return list;
}

/**
 * Describes the CPU (threads, SIMD) and the GPU, if any, the wasm backend,
 * and which backend 'auto' uses. Without the native addon, `cpu` and `cuda`
 * say why it did not load.
 */
export function deviceInfo(): DeviceInfo {
  const nat = nativeStatus();
  const wasm = wasmStatus();
  const wasmInfo = { ...WASM_INFO, usable: wasm.usable, ...(wasm.reason ? { reason: wasm.reason } : {}) };
  if (!nat.usable) {
    const reason = nat.reason ?? 'the native addon did not load';
    return {
      backend: wasm.usable ? 'wasm' : 'none',
      cpu: { threads: 0, simd: 'portable', simdWidth: 0, matrix: 'none', matrixPaths: ['none'], usable: false, reason },
      cuda: { compiled: false, usable: false, reason },
      wasm: wasmInfo,
      mpi: { compiled: false, reason },
    };
  }
  const info = native.info();
  return {
    backend: info.cuda.usable ? 'cuda' : 'cpu',
    cpu: { ...info.cpu, usable: true },
    cuda: info.cuda as DeviceInfo['cuda'],
    wasm: wasmInfo,
    mpi: mpiInfo(),
  };
}

/**
 * The backend a call runs on. 'auto': CUDA where a GPU is usable, else the
 * native CPU backend, else wasm (the native addon did not load). A named
 * backend that cannot run here is a BackendUnavailableError saying why.
 */
export function resolveBackend(requested: LossOptions['backend']): BackendName {
  const want = requested ?? 'auto';
  if (want === 'wasm') {
    const wasm = wasmStatus();
    if (!wasm.usable) throw new BackendUnavailableError(`Expected a loadable WebAssembly module for backend 'wasm' but ${wasm.reason}`);
    return 'wasm';
  }
  const nat = nativeStatus();
  if (!nat.usable) {
    if (want === 'auto' && wasmStatus().usable) return 'wasm';
    const why = want === 'auto' ? ` and the wasm backend cannot run either (${wasmStatus().reason})` : '';
    throw new BackendUnavailableError(`Expected a loadable native addon for backend '${want}' but ${nat.reason}${why}`);
  }
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
  // Without the addon (the wasm backend copies its inputs in any case) an ordinary array serves.
  if (!nativeStatus().usable) return new Float32Array(n);
  return callNative(() => native.zeros(n));
}

/**
 * Gives back to the operating system the large blocks (outputs, workspaces)
 * the addon keeps after they are freed, and returns their size in bytes.
 * Freed blocks are kept, up to 8 of them and a quarter of the physical memory,
 * so that the next call that needs an array of the same size reuses pages
 * already mapped instead of faulting in new ones: a training loop that takes
 * fresh gradients every step runs at the speed of one that passes
 * `options.out`. The kernel may reclaim kept pages under memory pressure
 * (they are marked MADV_FREE), but they count in the process's RSS until it
 * does; call this after the last large call to drop them at once.
 */
export function releaseCachedMemory(): number {
  if (!nativeStatus().usable) return 0;
  return callNative(() => native._releaseRecycled());
}

/**
 * Draws the per-row margins of the elastic kinds, or returns undefined for
 * the other kinds. Row i of draw `counter` is the same number wherever it is
 * drawn. `step`: a head's step count, the counter when the margin names none
 * (so every shard of a sharded head, in one process or many, and the
 * unsharded head draw the same margins for the same step, also after a
 * resume); without either, a per-seed counter of this process.
 */
export function elasticMargins(margin: Margin, n: number, step?: number): Float32Array | undefined {
  if (!MARGIN_KINDS[margin.kind].rowMargins) return undefined;
  const { m, sigma, seed, counter: given } = margin as Extract<Margin, { seed: number }>;
  let counter = given ?? step;
  if (counter === undefined) {
    counter = elasticCounters.get(seed) ?? 0;
    elasticCounters.set(seed, counter + 1);
  }
  // The same counter-based draw (native/margin_math.h) in the addon and in the wasm module.
  return nativeStatus().usable ? native.gaussian(m, sigma, seed, counter, n) : wasmGaussian(m, sigma, seed, counter, n);
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
  if (p.backend === 'wasm') return wasmLoss(input.embeddings, input.weights, input.labels, input.dim, p.opts, withGrad);
  return callNative(() => native.loss(input.embeddings, input.weights, input.labels, input.dim, p.opts, withGrad));
}

/**
 * The native backends run on the libuv thread pool; the wasm backend runs on
 * this thread, after the caller's synchronous code (a failure rejects the promise).
 */
async function callAsync(input: LossInput, p: Prepared, withGrad: boolean): Promise<NativeLossResult> {
  if (p.backend === 'wasm') {
    await new Promise((resolve) => setTimeout(resolve, 0));
    return call(input, p, withGrad);
  }
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
