/**
 * MarginHead: a stateful loss head that owns the class centres (and the SGD
 * momentum), computes the fused loss, updates the centres inside the
 * backward pass, samples classes (Partial FC), shards classes across
 * devices or processes, predicts top-k classes and checkpoints to safetensors.
 * Where and how the centres are stored is its CentresStorage's business
 * (storage.ts); the options are checked in options.ts, the checkpoint format
 * is checkpoint.ts.
 */
import { ArgumentError, HeadBusyError, HeadDisposedError, expected, type HeadAsyncCall } from '../errors';
import { callNative, callNativeAsync, elasticMargins, nativeOptions } from '../loss';
import type { NativeLossOptions, NativeLossResult } from '../native';
import { CheckpointError, type SaveHooks } from '../io/safetensors';
import { classSample } from '../sampling';
import type { ShardStats, MergedStats } from '../sharded/stats';
import type { BackendName } from '../types';
import { validateBatch, validateFinite } from '../validate';
import { readCheckpoint, writeCheckpoint } from './checkpoint';
import { createCentres } from './create-centres';
import { headBackend, headConfig, stepLr, validateHeadOptions, type HeadConfig, type MarginHeadOptions } from './options';
import type { CentresInit, CentresStorage, TopK } from './storage';

export type { MarginHeadOptions, SgdOptions, ShardOptions } from './options';

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

/** Largest k of predict(): each row keeps a heap of k entries per thread. */
export const MAX_TOP_K = 1024;

/** Options objects made by {@link MarginHead.load}: the constructor leaves their centres for it to read in. */
const LOADING = new WeakSet<MarginHeadOptions>();

interface Pending {
  embeddings: Float32Array;
  labels: Int32Array;
  classIndex?: Int32Array;
  margins?: Float32Array;
}

/**
 * The loss head: the class centres, the fused loss over them, and their SGD
 * update. A head runs one call at a time. Its asynchronous calls
 * ({@link MarginHead.stepAsync}, {@link MarginHead.predictAsync}) run on the
 * libuv pool and report every error by rejecting, never by throwing; while one
 * runs, every other call on the same head (synchronous or not) is refused with
 * a {@link HeadBusyError} naming it, except {@link MarginHead.dispose} (the
 * head is released when the call settles) and the read-only properties.
 * Different heads, and the free functions (lossAndGradAsync, forwardAsync),
 * may run at the same time without limit.
 */
export class MarginHead {
  readonly classes: number;
  readonly dim: number;
  /** Classes owned by this head (shard.count, or classes). */
  readonly localClasses: number;
  readonly offset: number;
  readonly backend: BackendName;
  private readonly config: HeadConfig;
  /** The centres and the momentum (host fp32, host bf16 or device: see storage.ts); null once disposed. */
  private centres: CentresStorage | null;
  private disposeWhenSettled = false;
  private steps = 0;
  /** The asynchronous call now running on this head, if any (one at a time). */
  private running: HeadAsyncCall | null = null;
  private pending: Pending | null = null;

  constructor(options: MarginHeadOptions) {
    validateHeadOptions(options);
    const o = options;
    this.classes = o.classes;
    this.dim = o.dim;
    this.localClasses = o.shard ? o.shard.count : o.classes;
    this.offset = o.shard ? o.shard.offset : 0;
    this.backend = headBackend(o.backend, o.shard);
    const c = (this.config = headConfig(o));
    const init: CentresInit = LOADING.has(options) ? 'from-checkpoint' : (o.init ?? 'normal');
    this.centres = createCentres(
      { rows: this.localClasses, dim: this.dim, offset: this.offset, seed: c.seed, backend: this.backend, dtype: c.weightsDtype, withMomentum: (c.optimizer.momentum ?? 0) > 0 },
      init,
    );
  }

  // ---- Training ----------------------------------------------------------

  /** Loss and gradients with the fused kernels, and the SGD update of the centres (in place). */
  step(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): StepResult {
    const centres = this.ensureUsable('step');
    this.ensureUnsharded('step');
    const call = this.prepareStep(embeddings, labels, opts);
    const r = this.loss(centres, embeddings, call.labels, call.opts, true);
    this.steps++;
    return this.stepResult(r, call.margins);
  }

  /** {@link step} off the event loop. The head refuses other calls until it settles. */
  async stepAsync(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): Promise<StepResult> {
    const centres = this.ensureUsable('stepAsync');
    this.ensureUnsharded('stepAsync');
    const call = this.prepareStep(embeddings, labels, opts);
    this.running = 'stepAsync';
    let r: NativeLossResult;
    try {
      r = await this.lossAsync(centres, embeddings, call.labels, call.opts, true);
    } finally {
      this.settled();
    }
    this.steps++;
    return this.stepResult(r, call.margins);
  }

  /** Loss (with the margin) and top-1 accuracy (plain cosine, no margin) on all classes; no update. */
  evaluate(embeddings: Float32Array, labels: Int32Array): { loss: number; accuracy: number } {
    const centres = this.ensureUsable('evaluate');
    this.ensureUnsharded('evaluate');
    validateBatch(embeddings, labels, this.dim, this.localClasses);
    const margins = elasticMargins(this.config.margin, labels.length, this.steps);
    const r = this.loss(centres, embeddings, labels, this.baseOptions(margins), false);
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

  /**
   * Top-k classes by cosine for each row (N×k, descending), streamed over
   * class blocks with a heap of k per row: O(N·C·(d + log k)), no N×C buffer.
   * k ≤ min(localClasses, MAX_TOP_K = 1024). Synchronous: use
   * {@link predictAsync} for large N·C.
   */
  predict(embeddings: Float32Array, k: number): { classes: Int32Array; scores: Float32Array } {
    const centres = this.ensureUsable('predict');
    this.checkPredict(embeddings, k);
    const r = callNative(() => centres.topk(embeddings, k, this.config.threads ?? 0));
    return this.globalClasses(r);
  }

  /** {@link predict} on the libuv thread pool: the event loop stays free. The head refuses other calls until it settles. */
  async predictAsync(embeddings: Float32Array, k: number): Promise<{ classes: Int32Array; scores: Float32Array }> {
    const centres = this.ensureUsable('predictAsync');
    this.checkPredict(embeddings, k);
    this.running = 'predictAsync';
    let r: TopK;
    try {
      r = await callNativeAsync(() => centres.topkAsync(embeddings, k, this.config.threads ?? 0));
    } finally {
      this.settled();
    }
    return this.globalClasses(r);
  }

  // ---- Sharding ------------------------------------------------------------

  /**
   * Phase 1 of a sharded step: this shard's per-row (max, Σexp) over its
   * classes and, where the label is local, the target logit. Combine the
   * shards' stats with {@link mergeStats} (after an all-gather), then call
   * {@link finishStep} on every shard.
   */
  partialStats(embeddings: Float32Array, labels: Int32Array): ShardStats {
    const centres = this.ensureUsable('partialStats');
    const local = this.localLabels(labels, embeddings);
    const sample = this.sample(local);
    const margins = elasticMargins(this.config.margin, labels.length, this.steps);
    const opts = { ...this.baseOptions(margins), classIndex: sample.classIndex, stats: true };
    const r = this.loss(centres, embeddings, sample.labels, opts, false);
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
    const centres = this.ensureUsable('finishStep');
    const p = this.pending;
    if (!p) throw new ArgumentError('Expected a partialStats() call before finishStep() but received none');
    for (const key of ['lse', 'targetPm1'] as const) {
      if (!(merged?.[key] instanceof Float32Array) || merged[key].length !== p.labels.length) {
        expected(`Float32Array of length ${p.labels.length}`, `merged.${key}`, merged?.[key]);
      }
    }
    const lr = stepLr(opts, this.config);
    const o: NativeLossOptions = {
      ...this.baseOptions(p.margins),
      classIndex: p.classIndex,
      lseIn: merged.lse,
      targetPm1In: merged.targetPm1,
      sgd: this.sgd(lr),
    };
    const r = this.loss(centres, p.embeddings, p.labels, o, true);
    this.pending = null;
    this.steps++;
    return { gradEmbeddings: r.gradEmbeddings as Float32Array };
  }

  // ---- State -----------------------------------------------------------------

  /** A copy of this head's centres (localClasses×dim). */
  getWeights(): Float32Array {
    return this.ensureUsable('getWeights').getWeights();
  }

  /** Replaces the centres (copied in). The momentum buffer is kept, as an optimizer's state would be. */
  setWeights(weights: Float32Array): void {
    const centres = this.ensureUsable('setWeights');
    const n = this.localClasses * this.dim;
    if (!(weights instanceof Float32Array) || weights.length !== n) expected(`Float32Array of length ${n}`, 'weights', weights);
    validateFinite(weights, 'weights');
    centres.setWeights(weights);
  }

  /** A copy of the momentum buffer, or null when momentum is 0. */
  getMomentum(): Float32Array | null {
    return this.ensureUsable('getMomentum').getMomentum();
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
    writeCheckpoint(file, this.ensureUsable('save'), this.config, this.steps, hooks);
  }

  /** Loads a head saved by {@link save}; checks the header, dtypes, shapes and size. */
  static load(file: string, options: { backend?: 'auto' | BackendName } = {}): MarginHead {
    const { header, config, steps } = readCheckpoint(file);
    let head: MarginHead;
    try {
      // The centres are read in below: the constructor leaves them zero (any init in the config is not used).
      const headOptions: MarginHeadOptions = { ...config, backend: options.backend ?? config.backend, init: undefined };
      LOADING.add(headOptions);
      head = new MarginHead(headOptions);
    } catch (err) {
      // A configuration the constructor refuses is a corrupted checkpoint (an allocation failure is not).
      if (err instanceof ArgumentError) throw new CheckpointError(`Corrupted checkpoint ${file}: metadata.config is invalid: ${err.message}`);
      throw err;
    }
    // Non-finite centres or momentum would poison every later step: the storage refuses them.
    head.ensureUsable('load').readCheckpoint(file, header);
    head.steps = steps;
    return head;
  }

  /** Releases the centres and the momentum (device memory too); any later call throws. */
  dispose(): void {
    if (this.running && this.centres?.releaseWaitsForCall) {
      this.disposeWhenSettled = true; // the running call still uses the storage's buffers
      return;
    }
    this.centres?.release();
    this.centres = null;
    this.pending = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  get disposed(): boolean {
    return this.centres === null;
  }

  /** Device bytes this head holds (0 on the CPU backend). */
  get deviceBytes(): number {
    return this.centres ? this.centres.deviceBytes : 0;
  }

  // ---- Internals -----------------------------------------------------------

  /** The centres, for a call that may run now: refused after dispose() and while an asynchronous call runs. */
  private ensureUsable(what: string): CentresStorage {
    if (this.centres === null || this.disposeWhenSettled) throw new HeadDisposedError(what);
    if (this.running) throw new HeadBusyError(what, this.running);
    return this.centres;
  }

  /** An asynchronous call has settled: the head takes calls again (or is released, when dispose() came meanwhile). */
  private settled(): void {
    this.running = null;
    if (this.disposeWhenSettled) this.dispose();
  }

  /** The fused loss on the head's centres, failures as typed errors. */
  private loss(centres: CentresStorage, embeddings: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult {
    return callNative(() => centres.loss(embeddings, labels, opts, withGrad));
  }

  /** {@link loss} on the thread pool. */
  private lossAsync(centres: CentresStorage, embeddings: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult> {
    return callNativeAsync(() => centres.lossAsync(embeddings, labels, opts, withGrad));
  }

  private ensureUnsharded(what: string): void {
    if (this.config.shard) {
      throw new Error(`MarginHead.${what}: a sharded head steps in two phases, partialStats() then finishStep()`);
    }
  }

  private checkPredict(embeddings: Float32Array, k: number): void {
    const kMax = Math.min(this.localClasses, MAX_TOP_K);
    if (!Number.isInteger(k) || k < 1 || k > kMax) expected(`an integer in [1, ${kMax}] (at most min(classes, ${MAX_TOP_K}))`, 'k', k);
    if (!(embeddings instanceof Float32Array) || embeddings.length % this.dim !== 0 || embeddings.length === 0) {
      expected(`a non-empty Float32Array whose length is a multiple of dim = ${this.dim}`, 'embeddings', embeddings);
    }
    validateFinite(embeddings, 'embeddings', this.dim);
  }

  /** Shard-local class indices → global ones. */
  private globalClasses(r: { classes: Int32Array; scores: Float32Array }) {
    if (this.offset) for (let i = 0; i < r.classes.length; i++) if (r.classes[i] >= 0) r.classes[i] += this.offset;
    return r;
  }

  /** Global labels → this shard's labels: local index, −2 (another shard's class) or −1. */
  private localLabels(labels: Int32Array, embeddings: Float32Array): Int32Array {
    validateBatch(embeddings, labels, this.dim, this.classes); // global labels: any shard's class
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
    return {
      lr,
      momentum: o.momentum ?? 0,
      weightDecay: o.weightDecay ?? 0,
      // bf16 centres: the update's stochastic rounding is keyed by (seed, step, global element).
      roundSeed: this.config.seed,
      roundStep: this.steps,
      rowOffset: this.offset,
    };
  }

  private prepareStep(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number }) {
    const lr = stepLr(opts, this.config);
    validateBatch(embeddings, labels, this.dim, this.localClasses);
    const sample = this.sample(labels);
    const margins = elasticMargins(this.config.margin, labels.length, this.steps);
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
