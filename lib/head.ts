/**
 * MarginHead: a stateful loss head that owns the class centres (and the SGD
 * momentum), computes the fused loss, updates the centres inside the
 * backward pass, samples classes (Partial FC), shards classes across
 * devices or processes, predicts top-k classes and checkpoints to safetensors.
 */
import { ArgumentError, expected } from './errors';
import { elasticMargins, nativeOptions, resolveBackend, rethrow } from './loss';
import { native, type NativeLossOptions, type NativeLossResult } from './native';
import { CheckpointError, readHeader, readTensor, saveSafetensors, type SaveHooks, type TensorEntry } from './safetensors';
import { classSample } from './sampling';
import type { ShardStats, MergedStats } from './shard';
import type { BackendName, Margin } from './types';
import { validateMargin, validateOptions } from './validate';

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
  /** 'auto' (default), 'cpu' or 'cuda'. The head currently runs on the CPU backend (see README). */
  backend?: 'auto' | BackendName;
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

export interface StepResult {
  /** Mean loss over the non-ignored rows. */
  loss: number;
  /** dLoss/dEmbeddings (N×d) for the backbone. */
  gradEmbeddings: Float32Array;
  /** Fraction of non-ignored rows whose margined target logit is the row's largest logit. */
  accuracy: number;
  /**
   * cos θ_y per row against the centres before this step's update (NaN for
   * ignored rows): θ_y can be followed without copying the centres.
   */
  targetCos: Float32Array;
  /** Elastic kinds: the per-row margins used. */
  margins?: Float32Array;
}

const NORMAL_INIT_STD = 0.01;
const INIT_COUNTER = 0x1417;
const FORMAT = 'margin-softmax/head';
const FORMAT_VERSION = '1';

interface Pending {
  embeddings: Float32Array;
  labels: Int32Array;
  classIndex?: Int32Array;
  margins?: Float32Array;
}

export class MarginHead {
  readonly classes: number;
  readonly dim: number;
  /** Classes owned by this head (shard.count, or classes). */
  readonly localClasses: number;
  readonly offset: number;
  readonly backend: BackendName;
  private readonly config: Required<Omit<MarginHeadOptions, 'init' | 'shard' | 'threads' | 'workspaceBytes'>> &
    Pick<MarginHeadOptions, 'shard' | 'threads' | 'workspaceBytes'>;
  private weights: Float32Array | null;
  private momentum: Float32Array | null;
  private steps = 0;
  private busy = false;
  private pending: Pending | null = null;

  constructor(options: MarginHeadOptions) {
    validateHeadOptions(options);
    const o = options;
    this.classes = o.classes;
    this.dim = o.dim;
    this.localClasses = o.shard ? o.shard.count : o.classes;
    this.offset = o.shard ? o.shard.offset : 0;
    // The head runs on the CPU backend in this version: 'auto' means 'cpu' here
    // (even where a GPU is usable), and an explicit 'cuda' is refused.
    this.backend = o.backend === 'cuda' ? resolveBackend('cuda') : 'cpu';
    if (this.backend === 'cuda') {
      // The fused kernels run on CUDA through lossAndGrad; the stateful head's
      // device-resident centres are not built yet. Refuse rather than silently
      // running somewhere else.
      throw new ArgumentError(`Expected backend 'cpu' or 'auto' for MarginHead but received 'cuda' (the head runs on the CPU backend in this version)`);
    }
    this.config = {
      classes: o.classes,
      dim: o.dim,
      margin: o.margin,
      scale: o.scale ?? 64,
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
    const n = this.localClasses * this.dim;
    if (o.init instanceof Float32Array) {
      this.weights = native.zeros(n);
      this.weights.set(o.init);
    } else if ((o.init as unknown) === 'skip') {
      this.weights = native.zeros(n);
    } else {
      // Keyed by the global element index, so shards draw exactly the rows
      // the unsharded head would.
      this.weights = native.gaussian(0, NORMAL_INIT_STD, this.config.seed, INIT_COUNTER, n, this.offset * this.dim);
    }
    this.momentum = (this.config.optimizer.momentum ?? 0) > 0 ? native.zeros(n) : null;
  }

  // ---- Training ----------------------------------------------------------

  /** Loss and gradients with the fused kernels, and the SGD update of the centres (in place). */
  step(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): StepResult {
    this.ensureUsable('step');
    this.ensureUnsharded('step');
    const call = this.prepareStep(embeddings, labels, opts);
    let r: NativeLossResult;
    try {
      r = native.loss(embeddings, this.weights as Float32Array, call.labels, this.dim, call.opts, true);
    } catch (err) {
      rethrow(err);
    }
    this.steps++;
    return this.stepResult(r, call.margins);
  }

  /** {@link step} off the event loop. The head refuses other calls until it settles. */
  async stepAsync(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): Promise<StepResult> {
    this.ensureUsable('stepAsync');
    this.ensureUnsharded('stepAsync');
    const call = this.prepareStep(embeddings, labels, opts);
    this.busy = true;
    let r: NativeLossResult;
    try {
      r = await native.lossAsync(embeddings, this.weights as Float32Array, call.labels, this.dim, call.opts, true);
    } catch (err) {
      rethrow(err);
    } finally {
      this.busy = false;
    }
    this.steps++;
    return this.stepResult(r, call.margins);
  }

  /** Loss (with the margin) and top-1 accuracy (plain cosine, no margin) on all classes; no update. */
  evaluate(embeddings: Float32Array, labels: Int32Array): { loss: number; accuracy: number } {
    this.ensureUsable('evaluate');
    this.ensureUnsharded('evaluate');
    this.checkBatch(embeddings, labels, false);
    const margins = elasticMargins(this.config.margin, labels.length);
    const opts = this.baseOptions(margins);
    let r: NativeLossResult;
    try {
      r = native.loss(embeddings, this.weights as Float32Array, labels, this.dim, opts, false);
    } catch (err) {
      rethrow(err);
    }
    const top = this.predict(embeddings, 1);
    let hit = 0;
    let valid = 0;
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] < 0) continue;
      valid++;
      if (top.classes[i] === labels[i]) hit++;
    }
    return { loss: r.loss, accuracy: valid ? hit / valid : 0 };
  }

  /** Top-k classes by cosine for each row (N×k, descending), streamed over class blocks: no N×C buffer. */
  predict(embeddings: Float32Array, k: number): { classes: Int32Array; scores: Float32Array } {
    this.ensureUsable('predict');
    if (!Number.isInteger(k) || k < 1 || k > this.localClasses) expected(`an integer in [1, ${this.localClasses}]`, 'k', k);
    if (!(embeddings instanceof Float32Array) || embeddings.length % this.dim !== 0 || embeddings.length === 0) {
      expected(`a non-empty Float32Array whose length is a multiple of dim = ${this.dim}`, 'embeddings', embeddings);
    }
    checkFinite(embeddings, 'embeddings');
    let r: { classes: Int32Array; scores: Float32Array };
    try {
      r = native.topk(embeddings, this.weights as Float32Array, this.dim, k, this.config.threads ?? 0);
    } catch (err) {
      rethrow(err);
    }
    if (this.offset) for (let i = 0; i < r.classes.length; i++) if (r.classes[i] >= 0) r.classes[i] += this.offset;
    return r;
  }

  // ---- Sharding ------------------------------------------------------------

  /**
   * Phase 1 of a sharded step: this shard's per-row (max, Σexp) over its
   * classes and, where the label is local, the target logit. Combine the
   * shards' stats with {@link mergeStats} (after an all-gather), then call
   * {@link finishStep} on every shard.
   */
  partialStats(embeddings: Float32Array, labels: Int32Array): ShardStats {
    this.ensureUsable('partialStats');
    const local = this.localLabels(labels, embeddings);
    const sample = this.sample(local);
    const margins = elasticMargins(this.config.margin, labels.length);
    const opts = { ...this.baseOptions(margins), classIndex: sample.classIndex, stats: true };
    let r: NativeLossResult;
    try {
      r = native.loss(embeddings, this.weights as Float32Array, sample.labels, this.dim, opts, false);
    } catch (err) {
      rethrow(err);
    }
    this.pending = { embeddings, labels: sample.labels, classIndex: sample.classIndex, margins };
    return {
      max: r.rowMax as Float32Array,
      sumExp: r.rowSumExp as Float32Array,
      sumExpOther: r.rowSumExpOther as Float32Array,
      target: r.rowTarget as Float32Array,
      targetCos: r.targetCos,
    };
  }

  /**
   * Phase 2 of a sharded step: with the merged statistics, this shard's share
   * of dLoss/dEmbeddings (sum the shares over shards: an all-reduce) and the
   * SGD update of this shard's centres.
   */
  finishStep(merged: MergedStats, opts: { lr?: number } = {}): { gradEmbeddings: Float32Array } {
    this.ensureUsable('finishStep');
    const p = this.pending;
    if (!p) throw new ArgumentError('Expected a partialStats() call before finishStep() but received none');
    for (const key of ['lse', 'targetPm1'] as const) {
      if (!(merged?.[key] instanceof Float32Array) || merged[key].length !== p.labels.length) {
        expected(`Float32Array of length ${p.labels.length}`, `merged.${key}`, merged?.[key]);
      }
    }
    const lr = this.checkLr(opts.lr);
    const o: NativeLossOptions = {
      ...this.baseOptions(p.margins),
      classIndex: p.classIndex,
      lseIn: merged.lse,
      targetPm1In: merged.targetPm1,
      sgd: this.sgd(lr),
    };
    let r: NativeLossResult;
    try {
      r = native.loss(p.embeddings, this.weights as Float32Array, p.labels, this.dim, o, true);
    } catch (err) {
      rethrow(err);
    }
    this.pending = null;
    this.steps++;
    return { gradEmbeddings: r.gradEmbeddings as Float32Array };
  }

  // ---- State -----------------------------------------------------------------

  /** A copy of this head's centres (localClasses×dim). */
  getWeights(): Float32Array {
    this.ensureUsable('getWeights');
    return (this.weights as Float32Array).slice();
  }

  /** Replaces the centres (copied in). The momentum buffer is kept, as an optimizer's state would be. */
  setWeights(weights: Float32Array): void {
    this.ensureUsable('setWeights');
    const n = this.localClasses * this.dim;
    if (!(weights instanceof Float32Array) || weights.length !== n) expected(`Float32Array of length ${n}`, 'weights', weights);
    checkFinite(weights, 'weights');
    (this.weights as Float32Array).set(weights);
  }

  /** A copy of the momentum buffer, or null when momentum is 0. */
  getMomentum(): Float32Array | null {
    this.ensureUsable('getMomentum');
    return this.momentum ? this.momentum.slice() : null;
  }

  /** Number of updates applied so far. */
  get stepCount(): number {
    return this.steps;
  }

  /**
   * Writes one safetensors file: 'weight' [localClasses, dim] F32, 'momentum'
   * (when μ > 0), and the configuration in the header's metadata. Atomic:
   * a temporary file in the same folder is flushed and renamed.
   */
  save(file: string, hooks?: SaveHooks): void {
    this.ensureUsable('save');
    const tensors: Record<string, TensorEntry> = {
      weight: { dtype: 'F32', shape: [this.localClasses, this.dim], data: this.weights as Float32Array },
    };
    if (this.momentum) tensors.momentum = { dtype: 'F32', shape: [this.localClasses, this.dim], data: this.momentum };
    const metadata = {
      format: FORMAT,
      version: FORMAT_VERSION,
      config: JSON.stringify(this.config),
      steps: String(this.steps),
    };
    saveSafetensors(file, tensors, metadata, hooks);
  }

  /** Loads a head saved by {@link save}; checks the header, dtypes, shapes and size. */
  static load(file: string, options: { backend?: 'auto' | BackendName } = {}): MarginHead {
    const header = readHeader(file);
    if (header.metadata.format !== FORMAT) {
      throw new CheckpointError(`Checkpoint ${file} is not a margin-softmax head (metadata.format = ${JSON.stringify(header.metadata.format)})`);
    }
    let config: MarginHeadOptions;
    try {
      config = JSON.parse(header.metadata.config);
    } catch {
      throw new CheckpointError(`Corrupted checkpoint ${file}: metadata.config is not valid JSON`);
    }
    const local = config.shard ? config.shard.count : config.classes;
    for (const name of ['weight', 'momentum']) {
      const t = header.tensors[name];
      if (!t) {
        if (name === 'weight' || (config.optimizer?.momentum ?? 0) > 0) throw new CheckpointError(`Checkpoint ${file} has no tensor '${name}'`);
        continue;
      }
      if (t.dtype !== 'F32') throw new CheckpointError(`Checkpoint ${file}: expected dtype F32 for '${name}' but found ${t.dtype}`);
      if (t.shape.length !== 2 || t.shape[0] !== local || t.shape[1] !== config.dim) {
        throw new CheckpointError(`Checkpoint ${file}: expected shape [${local}, ${config.dim}] for '${name}' but found ${JSON.stringify(t.shape)}`);
      }
    }
    const head = new MarginHead({ ...config, backend: options.backend ?? config.backend, init: 'skip' as unknown as 'normal' });
    readTensor(file, header, 'weight', head.weights as Float32Array);
    if (head.momentum) readTensor(file, header, 'momentum', head.momentum);
    head.steps = Number(header.metadata.steps ?? 0) || 0;
    return head;
  }

  /** Releases the centres and the momentum; any later call throws. */
  dispose(): void {
    this.weights = null;
    this.momentum = null;
    this.pending = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  get disposed(): boolean {
    return this.weights === null;
  }

  // ---- Internals -----------------------------------------------------------

  private ensureUsable(what: string): void {
    if (this.weights === null) throw new Error(`MarginHead.${what}: the head has been disposed`);
    if (this.busy) throw new Error(`MarginHead.${what}: a stepAsync() call is still running on this head`);
  }

  private ensureUnsharded(what: string): void {
    if (this.config.shard) {
      throw new Error(`MarginHead.${what}: a sharded head steps in two phases, partialStats() then finishStep()`);
    }
  }

  private checkLr(lr: number | undefined): number {
    if (lr === undefined) return this.config.optimizer.lr;
    if (typeof lr !== 'number' || !Number.isFinite(lr) || lr < 0) expected('a finite non-negative number', 'lr', lr);
    return lr;
  }

  private checkBatch(embeddings: Float32Array, labels: Int32Array, allowRemote: boolean): void {
    if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
    const n = labels.length;
    if (!(embeddings instanceof Float32Array) || embeddings.length !== n * this.dim) {
      expected(`Float32Array of length ${n * this.dim} (labels.length × dim = ${n} × ${this.dim})`, 'embeddings', embeddings);
    }
    const hi = allowRemote ? this.classes : this.localClasses;
    for (let i = 0; i < n; i++) {
      if (labels[i] < -1 || labels[i] >= hi) expected(`labels in [-1, ${hi - 1}] (−1 = ignored)`, `labels[${i}]`, labels[i]);
    }
    checkFinite(embeddings, 'embeddings');
  }

  /** Global labels → this shard's labels: local index, −2 (another shard's class) or −1. */
  private localLabels(labels: Int32Array, embeddings: Float32Array): Int32Array {
    this.checkBatch(embeddings, labels, true);
    if (!this.config.shard) return labels;
    const out = new Int32Array(labels.length);
    for (let i = 0; i < labels.length; i++) {
      const y = labels[i];
      out[i] = y < 0 ? -1 : y >= this.offset && y < this.offset + this.localClasses ? y - this.offset : -2;
    }
    return out;
  }

  private sample(labels: Int32Array): { labels: Int32Array; classIndex?: Int32Array } {
    if (this.config.sampleRate >= 1) return { labels };
    return classSample(labels, this.localClasses, this.config.sampleRate, this.config.seed, this.steps);
  }

  private baseOptions(margins?: Float32Array): NativeLossOptions {
    const c = this.config;
    return nativeOptions(
      { margin: c.margin, scale: c.scale, gradFilter: c.gradFilter, weightsDtype: c.weightsDtype, threads: c.threads, workspaceBytes: c.workspaceBytes },
      this.backend,
      margins,
    );
  }

  private sgd(lr: number): NativeLossOptions['sgd'] {
    const o = this.config.optimizer;
    return { lr, momentum: o.momentum ?? 0, weightDecay: o.weightDecay ?? 0, momentumBuffer: this.momentum ?? undefined };
  }

  private prepareStep(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number }) {
    const lr = this.checkLr(opts.lr);
    this.checkBatch(embeddings, labels, false);
    const sample = this.sample(labels);
    const margins = elasticMargins(this.config.margin, labels.length);
    const o: NativeLossOptions = { ...this.baseOptions(margins), classIndex: sample.classIndex, stats: true, sgd: this.sgd(lr) };
    return { opts: o, labels: sample.labels, margins };
  }

  private stepResult(r: NativeLossResult, margins?: Float32Array): StepResult {
    const max = r.rowMax as Float32Array;
    const target = r.rowTarget as Float32Array;
    let hit = 0;
    let valid = 0;
    for (let i = 0; i < target.length; i++) {
      if (Number.isNaN(target[i])) continue;
      valid++;
      if (target[i] >= max[i]) hit++;
    }
    const out: StepResult = { loss: r.loss, gradEmbeddings: r.gradEmbeddings as Float32Array, accuracy: valid ? hit / valid : 0, targetCos: r.targetCos };
    if (margins) out.margins = margins;
    return out;
  }
}

function checkFinite(a: Float32Array, what: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) expected('finite values', what, a, `${a[i]} at index ${i}`);
  }
}

function validateHeadOptions(o: MarginHeadOptions): void {
  if (o === null || typeof o !== 'object') expected('an options object { classes, dim, margin, … }', 'MarginHead options', o);
  if (!Number.isSafeInteger(o.classes) || o.classes < 1 || o.classes > 0x7fffffff) expected('a positive integer', 'classes', o.classes);
  if (!Number.isSafeInteger(o.dim) || o.dim < 1) expected('a positive integer', 'dim', o.dim);
  validateMargin(o.margin);
  validateOptions({ margin: o.margin, scale: o.scale, backend: o.backend, gradFilter: o.gradFilter, weightsDtype: o.weightsDtype, threads: o.threads, workspaceBytes: o.workspaceBytes });
  if (o.seed !== undefined && (!Number.isSafeInteger(o.seed) || o.seed < 0)) expected('a non-negative safe integer', 'seed', o.seed);
  if (o.sampleRate !== undefined && (typeof o.sampleRate !== 'number' || !(o.sampleRate > 0 && o.sampleRate <= 1))) {
    expected('a number in (0, 1]', 'sampleRate', o.sampleRate);
  }
  const opt = o.optimizer;
  if (opt !== undefined) {
    if (typeof opt !== 'object' || opt === null) expected('an object { lr, momentum?, weightDecay? }', 'optimizer', opt);
    if (typeof opt.lr !== 'number' || !Number.isFinite(opt.lr) || opt.lr < 0) expected('a finite non-negative number', 'optimizer.lr', opt.lr);
    if (opt.momentum !== undefined && (typeof opt.momentum !== 'number' || !(opt.momentum >= 0 && opt.momentum < 1))) {
      expected('a number in [0, 1)', 'optimizer.momentum', opt.momentum);
    }
    if (opt.weightDecay !== undefined && (typeof opt.weightDecay !== 'number' || !Number.isFinite(opt.weightDecay) || opt.weightDecay < 0)) {
      expected('a finite non-negative number', 'optimizer.weightDecay', opt.weightDecay);
    }
  }
  const s = o.shard;
  if (s !== undefined) {
    if (typeof s !== 'object' || s === null) expected('an object { offset, count, total }', 'shard', s);
    if (s.total !== o.classes) expected(`shard.total equal to classes = ${o.classes}`, 'shard.total', s.total);
    if (!Number.isSafeInteger(s.offset) || s.offset < 0) expected('a non-negative integer', 'shard.offset', s.offset);
    if (!Number.isSafeInteger(s.count) || s.count < 1 || s.offset + s.count > s.total) {
      expected(`an integer in [1, ${s.total - s.offset}]`, 'shard.count', s.count);
    }
  }
  const local = s ? s.count : o.classes;
  if (o.init !== undefined && o.init !== 'normal' && (o.init as unknown) !== 'skip') {
    if (!(o.init instanceof Float32Array) || o.init.length !== local * o.dim) {
      expected(`'normal' or a Float32Array of length ${local * o.dim}`, 'init', o.init);
    }
    checkFinite(o.init, 'init');
  }
}
