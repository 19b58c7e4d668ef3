/**
 * The fused loss on the wasm backend, with the native addon's contract
 * (NativeAddon.loss in lib/native.ts): the caller (lib/loss.ts, MarginHead)
 * has validated the input (lib/validate.ts) and resolved the options, as for
 * the native backends. Here: the 4 GiB check, the copies into the module's
 * memory, the call (native/wasm/loss_wasm.cc) and the copies out.
 *
 * The module is single-threaded (options.threads does not apply) and has
 * only the portable kernels (options.simd and options.matrix do not apply;
 * weightsBf16 rounds the centres' operands to bf16 as the native 'none'
 * matrix path does).
 */
import { ArgumentError, BackendUnavailableError, NativeError } from '../errors';
import type { NativeLossOptions, NativeLossResult } from '../native';
import { LOSS_SLOTS, STATUS, slotIndex } from './abi';
import { allocArray, copyIn, copyOutF32, freeAll, readString, view, WASM_MEMORY_LIMIT, type WasmBlock } from './memory';
import { withInstance, type WasmExports } from './module';

const S = slotIndex(LOSS_SLOTS);

/** Centres that already live in the module's memory (a wasm MarginHead's storage). */
export interface WasmResidentCentres {
  /** Offset of the fp32 (or, with bf16, uint16) C_rows×d array. */
  ptr: number;
  rows: number;
  bf16: boolean;
  /** Offset of the fp32 momentum buffer, or 0. */
  momentumPtr: number;
}

/** Bytes besides the module's static data that a call keeps free (stack, allocator overhead). */
const RESERVE_BYTES = 64 * 2 ** 20;

/**
 * Bytes one call needs in the module's memory: the arrays copied in and out,
 * and the CPU backend's workspace (the cached cosine tiles, at most
 * workspaceBytes; X̂, X̂ᵀ and dX̂; the centres' inverse norms; per-block scratch).
 */
export function lossBytes(n: number, c: number, d: number, opts: Pick<NativeLossOptions, 'workspaceBytes'>, withGrad: boolean, residentCentres: boolean): number {
  const ldt = Math.ceil(Math.max(n, 1) / 16) * 16;
  const blockClasses = Math.min(256, Math.max(8, Math.floor(16384 / ldt / 8) * 8));
  const tile = blockClasses * ldt * 4;
  const centres = residentCentres ? 0 : c * d * 4;
  const arrays = centres + n * d * 4 + n * 4 * 8 + (withGrad ? n * d * 4 + (residentCentres ? 0 : c * d * 4) : 0);
  const nblocks = Math.ceil(c / blockClasses);
  const cache = withGrad ? Math.min(opts.workspaceBytes, nblocks * tile) : 0;
  const work = c * 4 + 3 * ldt * d * 4 + 4 * tile + blockClasses * d * 4 * 2 + 16 * ldt * 4;
  return arrays + cache + work;
}

/** Refuses a call that cannot fit in wasm32's memory, before anything is allocated. */
export function checkFits(bytes: number, shape: { n: number; c: number; d: number }): void {
  const room = WASM_MEMORY_LIMIT - RESERVE_BYTES;
  if (bytes <= room) return;
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  throw new ArgumentError(
    `Expected a problem that fits in the wasm backend's ${gib(WASM_MEMORY_LIMIT)} GiB memory (${gib(room)} GiB for one call) ` +
      `for N=${shape.n}, C=${shape.c}, d=${shape.d} but received one that needs ${gib(bytes)} GiB ` +
      `(the centres and their gradient take 8·C·d bytes): use the native CPU backend, a smaller workspaceBytes, or fewer classes per call`,
  );
}

/** A module status other than ok as the typed error lib/ throws for the native backends. */
export function statusError(w: WasmExports, status: number): Error {
  const message = readString(w, w.ms_wasm_error());
  if (status === STATUS.inputError) return new ArgumentError(message);
  return new NativeError(message);
}

function setMargin(a: Float64Array, opts: NativeLossOptions): void {
  a[S.kind] = opts.kind;
  a[S.scale] = opts.scale;
  a[S.m1] = opts.m1;
  a[S.m2] = opts.m2;
  a[S.m3] = opts.m3;
  a[S.fallback] = opts.fallback ? 1 : 0;
  a[S.gradFilter] = opts.gradFilter;
  a[S.weightsBf16] = opts.weightsBf16 ? 1 : 0;
  a[S.workspaceBytes] = opts.workspaceBytes;
}

/** One call's shape and what it computes. */
interface LossCall {
  n: number;
  c: number;
  dim: number;
  withGrad: boolean;
  /** The fused SGD update of resident centres instead of gradWeights. */
  sgd: boolean;
}

type Slots = Partial<Record<keyof typeof S, number>>;
const STAT_SLOTS = ['rowMax', 'rowSumExp', 'rowSumExpOther', 'rowTarget'] as const;

/** Copies the inputs into the module and allocates the outputs; their offsets by slot. */
function placeArrays(m: WasmExports, x: Float32Array, w: Float32Array | WasmResidentCentres, labels: Int32Array, opts: NativeLossOptions, call: LossCall, blocks: WasmBlock[]): Slots {
  const { n, c, dim } = call;
  const slots: Slots = {};
  if (w instanceof Float32Array) slots.w = copyIn(m, w, 'the centres (weights)', blocks);
  else slots[w.bf16 ? 'wBf16' : 'w'] = w.ptr;
  slots.x = copyIn(m, x, 'the embeddings', blocks);
  slots.labels = copyIn(m, labels, 'the labels', blocks);
  if (opts.rowMargins) slots.rowMargins = copyIn(m, opts.rowMargins, 'the row margins', blocks);
  if (opts.classIndex) slots.classIndex = copyIn(m, opts.classIndex, 'the class index', blocks);
  slots.perSample = allocArray(m, Float32Array, n, 'perSample', blocks);
  slots.targetCos = allocArray(m, Float32Array, n, 'targetCos', blocks);
  if (opts.stats) for (const k of STAT_SLOTS) slots[k] = allocArray(m, Float32Array, n, k, blocks);
  if (call.withGrad) {
    slots.gradX = allocArray(m, Float32Array, n * dim, 'gradEmbeddings', blocks);
    if (!call.sgd) slots.gradW = allocArray(m, Float32Array, c * dim, 'gradWeights', blocks);
  }
  return slots;
}

/** Writes the slot array: offsets, shape, margin, and the SGD step's parameters. */
function writeArgs(a: Float64Array, slots: Slots, opts: NativeLossOptions, call: LossCall, momentumPtr: number): void {
  for (const [k, v] of Object.entries(slots)) a[S[k as keyof typeof S]] = v as number;
  a[S.n] = call.n;
  a[S.c] = call.c;
  a[S.d] = call.dim;
  a[S.withGrad] = call.withGrad ? 1 : 0;
  setMargin(a, opts);
  if (!call.sgd || !opts.sgd) return;
  a[S.sgdOn] = 1;
  a[S.sgdLr] = opts.sgd.lr;
  a[S.sgdMomentum] = opts.sgd.momentum;
  a[S.sgdWeightDecay] = opts.sgd.weightDecay;
  a[S.sgdBuf] = momentumPtr;
  a[S.sgdRoundSeed] = opts.sgd.roundSeed ?? 0;
  a[S.sgdRoundStep] = opts.sgd.roundStep ?? 0;
}

/** The results, copied out of the module (into the caller's out arrays where given). */
function readResult(m: WasmExports, argsPtr: number, slots: Slots, opts: NativeLossOptions, call: LossCall): NativeLossResult {
  const { n, c, dim } = call;
  const out = view(m, Float64Array, argsPtr, LOSS_SLOTS.length);
  const result: NativeLossResult = {
    loss: out[S.outLoss],
    validRows: out[S.outValidRows],
    skippedBlocks: out[S.outSkipped],
    totalBlocks: out[S.outTotal],
    perSample: copyOutF32(m, slots.perSample!, n, opts.outPerSample),
    targetCos: copyOutF32(m, slots.targetCos!, n),
  };
  if (opts.stats) {
    result.rowMax = copyOutF32(m, slots.rowMax!, n);
    result.rowSumExp = copyOutF32(m, slots.rowSumExp!, n);
    result.rowSumExpOther = copyOutF32(m, slots.rowSumExpOther!, n);
    result.rowTarget = copyOutF32(m, slots.rowTarget!, n);
  }
  if (call.withGrad) {
    result.gradEmbeddings = copyOutF32(m, slots.gradX!, n * dim, opts.outGradEmbeddings);
    if (!call.sgd) result.gradWeights = copyOutF32(m, slots.gradW!, c * dim, opts.outGradWeights);
  }
  return result;
}

/**
 * loss / lossAndGrad on the module. `w` is a Float32Array of the centres (copied
 * in), or centres resident in the module's memory (a wasm MarginHead; with
 * opts.sgd the update is applied to them in place).
 */
export function wasmLoss(
  x: Float32Array,
  w: Float32Array | WasmResidentCentres,
  labels: Int32Array,
  dim: number,
  opts: NativeLossOptions,
  withGrad: boolean,
): NativeLossResult {
  const resident = !(w instanceof Float32Array);
  const call: LossCall = {
    n: labels.length,
    c: opts.classIndex ? opts.classIndex.length : resident ? w.rows : w.length / dim,
    dim,
    withGrad,
    sgd: withGrad && opts.sgd !== undefined,
  };
  if (opts.lseIn || opts.targetPm1In) {
    throw new BackendUnavailableError("Expected backend 'cpu' or 'cuda' for a sharded step (merged statistics) but received 'wasm'");
  }
  if (call.sgd && !resident) throw new NativeError('Internal error: the fused SGD update needs centres resident in the module');
  return withInstance((m) => {
    checkFits(lossBytes(call.n, call.c, dim, opts, withGrad, resident || call.sgd), { n: call.n, c: call.c, d: dim });
    const blocks: WasmBlock[] = [];
    try {
      const argsPtr = allocArray(m, Float64Array, LOSS_SLOTS.length, 'the call arguments', blocks);
      const slots = placeArrays(m, x, w, labels, opts, call, blocks);
      writeArgs(view(m, Float64Array, argsPtr, LOSS_SLOTS.length), slots, opts, call, resident ? w.momentumPtr : 0);
      const status = m.ms_wasm_loss(argsPtr);
      if (status !== STATUS.ok) throw statusError(m, status);
      return readResult(m, argsPtr, slots, opts, call);
    } finally {
      freeAll(m, blocks);
    }
  });
}

/** n draws of mean + sigma·N(0,1), draw i keyed by (seed, counter, start + i): the native addon's gaussian. */
export function wasmGaussian(mean: number, sigma: number, seed: number, counter: number, n: number, start = 0): Float32Array {
  return withInstance((m) => {
    const blocks: WasmBlock[] = [];
    try {
      const ptr = allocArray(m, Float32Array, n, 'the gaussian draws', blocks);
      m.ms_wasm_gaussian(ptr, n, mean, sigma, seed, counter, start);
      return copyOutF32(m, ptr, n);
    } finally {
      freeAll(m, blocks);
    }
  });
}

/** The module's defaults (native/loss_problem.h, native/cpu/loss_cpu.h): the same numbers as the addon's _defaults(). */
export function wasmDefaults(): { scale: number; workspaceBytes: number } {
  return withInstance((m) => ({ scale: m.ms_wasm_default_scale(), workspaceBytes: m.ms_wasm_default_workspace() }));
}

/** Test hook: the target logit of one cosine through native/margin_math.h, as the addon's _targetLogit. */
export function wasmTargetLogit(p: { kind: number; scale: number; m1: number; m2: number; m3: number; fallback: boolean }, cos: number, rowMargin: number): { z: number; dz: number } {
  return withInstance((m) => {
    const blocks: WasmBlock[] = [];
    try {
      const dz = allocArray(m, Float32Array, 1, 'dz', blocks);
      const z = m.ms_wasm_target_logit(p.kind, p.scale, p.m1, p.m2, p.m3, p.fallback ? 1 : 0, cos, rowMargin, dz);
      return { z, dz: view(m, Float32Array, dz, 1)[0] };
    } finally {
      freeAll(m, blocks);
    }
  });
}
