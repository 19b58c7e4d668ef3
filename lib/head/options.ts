/**
 * MarginHead's options: their types, their validation (every argument is
 * checked here, before anything is allocated), the defaults filled in, and
 * the backend a head runs on.
 */
import { BackendUnavailableError, expected } from '../errors';
import { DEFAULT_SCALE, resolveBackend } from '../loss';
import type { BackendName, Margin } from '../types';
import { checkFloat32, rejectUnknownKeys, validateFinite, validateMargin, validateOptions } from '../validate';
import { deviceHeadCompiled } from './device-centres';

export interface SgdOptions {
  /** Learning rate (> 0). */
  lr: number;
  /** Momentum μ in [0, 1). Default 0 (no momentum buffer is allocated). */
  momentum?: number;
  /** L2 weight decay λ ≥ 0, added to the gradient as in torch.optim.SGD. Default 0. */
  weightDecay?: number;
}

export interface ShardOptions {
  /** First class this head owns. */
  offset: number;
  /** Number of classes this head owns: [offset, offset + count). */
  count: number;
  /** Total number of classes over all shards (= `classes`). */
  total: number;
}

export interface MarginHeadOptions {
  /** Total number of classes C. */
  classes: number;
  /** Embedding dimension d. */
  dim: number;
  margin: Margin;
  /** Logit scale s. Default 64. */
  scale?: number;
  /**
   * 'auto' (default: CUDA where usable, else the CPU, else wasm where the native
   * addon does not load), 'cpu', 'cuda' or 'wasm'. On CUDA the centres and the
   * momentum live in device memory (see docs/cuda.md, "MarginHead on CUDA"); on
   * wasm in the WebAssembly module's memory (fp32 only, no shards; docs/wasm.md).
   */
  backend?: 'auto' | BackendName;
  /**
   * Centre storage and compute. 'bfloat16': the head stores its centres in bf16
   * (half the memory: 1 GB at 10⁶ × 512) on both backends, the loss runs on bf16
   * operands (LossOptions.weightsDtype), and each SGD update is computed in fp32
   * and rounded stochastically to bf16 (unbiased, so small steps do not vanish;
   * keyed by seed, step and element, so deterministic). The momentum stays fp32.
   * getWeights() and checkpoints give the values widened to fp32. See docs/head.md,
   * "bf16 centres". Default 'float32'.
   */
  weightsDtype?: 'float32' | 'bfloat16';
  /** See LossOptions.gradFilter. Default 0 (exact). */
  gradFilter?: number;
  /** 'normal' (default): centres ~ N(0, 0.01²) drawn from `seed`; or the initial C_local×d centres. */
  init?: 'normal' | Float32Array;
  /** Seed of the initialisation and of class sampling. Default 0. */
  seed?: number;
  /** SGD applied to the centres in every step. Default { lr: 0.1 }. */
  optimizer?: SgdOptions;
  /** Partial FC class sampling rate r in (0, 1]. Default 1 (every class, the exact full loss). */
  sampleRate?: number;
  /** Own only the classes [offset, offset + count) of `total`. */
  shard?: ShardOptions;
  /** CPU threads. Default: all. */
  threads?: number;
  /** CPU cosine-tile workspace in bytes. Default 64 MiB. */
  workspaceBytes?: number;
}

/** The options with their defaults filled in (what a checkpoint's metadata.config holds). */
export type HeadConfig = Required<Omit<MarginHeadOptions, 'init' | 'shard' | 'threads' | 'workspaceBytes'>> &
  Pick<MarginHeadOptions, 'shard' | 'threads' | 'workspaceBytes'>;

const HEAD_OPTION_NAMES = [
  'classes', 'dim', 'margin', 'scale', 'backend', 'weightsDtype', 'gradFilter', 'init', 'seed', 'optimizer', 'sampleRate', 'shard', 'threads', 'workspaceBytes',
] as const;
const STEP_OPTION_NAMES = ['lr'] as const;

/** The validated options with their defaults. */
export function headConfig(o: MarginHeadOptions): HeadConfig {
  return {
    classes: o.classes,
    dim: o.dim,
    margin: o.margin,
    scale: o.scale ?? DEFAULT_SCALE,
    backend: o.backend ?? 'auto',
    weightsDtype: o.weightsDtype ?? 'float32',
    gradFilter: o.gradFilter ?? 0,
    seed: o.seed ?? 0,
    optimizer: { lr: o.optimizer?.lr ?? 0.1, momentum: o.optimizer?.momentum ?? 0, weightDecay: o.optimizer?.weightDecay ?? 0 },
    sampleRate: o.sampleRate ?? 1,
    shard: o.shard,
    threads: o.threads,
    workspaceBytes: o.workspaceBytes,
  };
}

/**
 * 'auto' picks CUDA where it is usable (an addon built with CUDA has the device
 * head), else the CPU, else wasm; 'cuda' demands it. A shard of a sharded head
 * needs the native backends (the wasm module has no merged-statistics pass).
 */
export function headBackend(requested: MarginHeadOptions['backend'], shard?: ShardOptions): BackendName {
  const b = resolveBackend(requested);
  if (b === 'cuda' && !deviceHeadCompiled()) throw new BackendUnavailableError('Expected an addon with the CUDA device head but this one has none');
  if (b === 'wasm' && shard) {
    throw new BackendUnavailableError("Expected backend 'cpu' or 'cuda' for a MarginHead shard but the head resolved to 'wasm' (shards need the native addon's merged-statistics pass)");
  }
  return b;
}

/** A step's options `{ lr? }`: the learning rate to use (the optimizer's when absent). */
export function stepLr(opts: { lr?: number }, config: HeadConfig): number {
  if (opts === null || typeof opts !== 'object') expected('an options object { lr? }', 'step options', opts);
  rejectUnknownKeys(opts, STEP_OPTION_NAMES, 'step options');
  if (opts.lr === undefined) return config.optimizer.lr;
  return checkFloat32(opts.lr, 'lr', {});
}

export function validateHeadOptions(o: MarginHeadOptions): void {
  if (o === null || typeof o !== 'object') expected('an options object { classes, dim, margin, … }', 'MarginHead options', o);
  rejectUnknownKeys(o, HEAD_OPTION_NAMES, 'MarginHead options');
  if (!Number.isSafeInteger(o.classes) || o.classes < 1 || o.classes > 0x7fffffff) expected('a positive integer', 'classes', o.classes);
  if (!Number.isSafeInteger(o.dim) || o.dim < 1) expected('a positive integer', 'dim', o.dim);
  validateMargin(o.margin);
  validateOptions({ margin: o.margin, scale: o.scale, backend: o.backend, gradFilter: o.gradFilter, weightsDtype: o.weightsDtype, threads: o.threads, workspaceBytes: o.workspaceBytes });
  if (o.seed !== undefined && (!Number.isSafeInteger(o.seed) || o.seed < 0)) expected('a non-negative safe integer', 'seed', o.seed);
  if (o.sampleRate !== undefined && (typeof o.sampleRate !== 'number' || !(o.sampleRate > 0 && o.sampleRate <= 1))) {
    expected('a number in (0, 1]', 'sampleRate', o.sampleRate);
  }
  validateOptimizer(o.optimizer);
  validateShard(o.shard, o.classes);
  const local = o.shard ? o.shard.count : o.classes;
  if (o.init !== undefined && o.init !== 'normal') {
    if (!(o.init instanceof Float32Array) || o.init.length !== local * o.dim) {
      expected(`'normal' or a Float32Array of length ${local * o.dim}`, 'init', o.init);
    }
    validateFinite(o.init, 'init');
  }
}

function validateOptimizer(opt: SgdOptions | undefined): void {
  if (opt === undefined) return;
  if (typeof opt !== 'object' || opt === null) expected('an object { lr, momentum?, weightDecay? }', 'optimizer', opt);
  rejectUnknownKeys(opt, ['lr', 'momentum', 'weightDecay'], 'optimizer');
  checkFloat32(opt.lr, 'optimizer.lr', {});
  if (opt.momentum !== undefined) checkFloat32(opt.momentum, 'optimizer.momentum', { below: 1 });
  if (opt.weightDecay !== undefined) checkFloat32(opt.weightDecay, 'optimizer.weightDecay', {});
}

function validateShard(s: ShardOptions | undefined, classes: number): void {
  if (s === undefined) return;
  if (typeof s !== 'object' || s === null) expected('an object { offset, count, total }', 'shard', s);
  rejectUnknownKeys(s, ['offset', 'count', 'total'], 'shard');
  if (s.total !== classes) expected(`shard.total equal to classes = ${classes}`, 'shard.total', s.total);
  if (!Number.isSafeInteger(s.offset) || s.offset < 0) expected('a non-negative integer', 'shard.offset', s.offset);
  if (!Number.isSafeInteger(s.count) || s.count < 1 || s.offset + s.count > s.total) {
    expected(`an integer in [1, ${s.total - s.offset}]`, 'shard.count', s.count);
  }
}
