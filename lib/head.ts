/**
 * MarginHead: a stateful loss head that owns the class centres (and the SGD
 * momentum), computes the fused loss, updates the centres inside the
 * backward pass, samples classes (Partial FC), shards classes across
 * devices or processes, predicts top-k classes and checkpoints to safetensors.
 */
import { ArgumentError, BackendUnavailableError, HeadBusyError, HeadDisposedError, expected, type HeadAsyncCall } from './errors';
import { DEFAULT_SCALE, callNative, callNativeAsync, elasticMargins, nativeOptions, resolveBackend } from './loss';
import { native, type HostCentres, type NativeLossOptions, type NativeLossResult } from './native';
import { copyInBf16, firstBeyondBf16, readTensorBf16, streamedBf16, widenBf16, zerosBf16 } from './bf16-centres';
import { CENTRES, DeviceCentres, MOMENTUM, deviceHeadCompiled } from './head-cuda';
import { CheckpointError, checkChunkFinite, readHeader, readTensor, readTensorChunks, saveSafetensors, type SafetensorsHeader, type SaveHooks, type TensorEntry } from './safetensors';
import { classSample } from './sampling';
import type { ShardStats, MergedStats } from './shard';
import type { BackendName, Margin } from './types';
import { checkFloat32, rejectUnknownKeys, validateBatch, validateFinite, validateMargin, validateOptions } from './validate';

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
   * 'auto' (default: CUDA where usable, else the CPU), 'cpu' or 'cuda'. On CUDA the
   * centres and the momentum live in device memory (see README, "MarginHead on CUDA").
   */
  backend?: 'auto' | BackendName;
  /**
   * Centre storage and compute. 'bfloat16': the head stores its centres in bf16
   * (half the memory: 1 GB at 10⁶ × 512) on both backends, the loss runs on bf16
   * operands (LossOptions.weightsDtype), and each SGD update is computed in fp32
   * and rounded stochastically to bf16 (unbiased, so small steps do not vanish;
   * keyed by seed, step and element, so deterministic). The momentum stays fp32.
   * getWeights() and checkpoints give the values widened to fp32. See the README,
   * "MarginHead in bf16". Default 'float32'.
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

const HEAD_OPTION_NAMES = [
  'classes', 'dim', 'margin', 'scale', 'backend', 'weightsDtype', 'gradFilter', 'init', 'seed', 'optimizer', 'sampleRate', 'shard', 'threads', 'workspaceBytes',
] as const;
const STEP_OPTION_NAMES = ['lr'] as const;

const NORMAL_INIT_STD = 0.01;
const INIT_COUNTER = 0x1417;
const FORMAT = 'margin-softmax/head';
const FORMAT_VERSION = '1';

/**
 * How the constructor fills the centres: drawn ('normal'), copied (a Float32Array), or
 * left zero for {@link MarginHead.load} to fill from the checkpoint (no draw wasted).
 */
type CentresInit = 'normal' | Float32Array | 'from-checkpoint';

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
  private readonly config: Required<Omit<MarginHeadOptions, 'init' | 'shard' | 'threads' | 'workspaceBytes'>> &
    Pick<MarginHeadOptions, 'shard' | 'threads' | 'workspaceBytes'>;
  /** CPU: the centres, fp32, or bf16 values when weightsDtype is 'bfloat16' (see bf16-centres.ts). */
  private weights: HostCentres | null;
  private momentum: Float32Array | null;
  /** backend 'cuda': the centres and momentum on the device (weights and momentum stay null). */
  private device: DeviceCentres | null = null;
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
    this.backend = headBackend(o.backend);
    this.config = {
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
    const init: CentresInit = LOADING.has(options) ? 'from-checkpoint' : (o.init ?? 'normal');
    if (this.backend === 'cuda') {
      this.weights = null;
      this.momentum = null;
      this.device = this.initDevice(init);
      return;
    }
    // An allocation failure is a NativeError with the bytes asked for.
    this.weights = callNative(() => this.initHostCentres(init));
    this.momentum = (this.config.optimizer.momentum ?? 0) > 0 ? callNative(() => native.zeros(this.localClasses * this.dim)) : null;
  }

  // ---- Training ----------------------------------------------------------

  /** Loss and gradients with the fused kernels, and the SGD update of the centres (in place). */
  step(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): StepResult {
    this.ensureUsable('step');
    this.ensureUnsharded('step');
    const call = this.prepareStep(embeddings, labels, opts);
    const r = this.loss(embeddings, call.labels, call.opts, true);
    this.steps++;
    return this.stepResult(r, call.margins);
  }

  /** {@link step} off the event loop. The head refuses other calls until it settles. */
  async stepAsync(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): Promise<StepResult> {
    this.ensureUsable('stepAsync');
    this.ensureUnsharded('stepAsync');
    const call = this.prepareStep(embeddings, labels, opts);
    this.running = 'stepAsync';
    let r: NativeLossResult;
    try {
      r = await this.lossAsync(embeddings, call.labels, call.opts, true);
    } finally {
      this.settled();
    }
    this.steps++;
    return this.stepResult(r, call.margins);
  }

  /** Loss (with the margin) and top-1 accuracy (plain cosine, no margin) on all classes; no update. */
  evaluate(embeddings: Float32Array, labels: Int32Array): { loss: number; accuracy: number } {
    this.ensureUsable('evaluate');
    this.ensureUnsharded('evaluate');
    validateBatch(embeddings, labels, this.dim, this.localClasses);
    const margins = elasticMargins(this.config.margin, labels.length);
    const r = this.loss(embeddings, labels, this.baseOptions(margins), false);
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
    this.ensureUsable('predict');
    this.checkPredict(embeddings, k);
    const r = callNative(() =>
      this.device ? this.device.topk(embeddings, k) : native.topk(embeddings, this.weights as HostCentres, this.dim, k, this.config.threads ?? 0),
    );
    return this.globalClasses(r);
  }

  /** {@link predict} on the libuv thread pool: the event loop stays free. The head refuses other calls until it settles. */
  async predictAsync(embeddings: Float32Array, k: number): Promise<{ classes: Int32Array; scores: Float32Array }> {
    this.ensureUsable('predictAsync');
    this.checkPredict(embeddings, k);
    this.running = 'predictAsync';
    let r: { classes: Int32Array; scores: Float32Array };
    try {
      r = await (this.device
        ? this.device.topkAsync(embeddings, k)
        : callNativeAsync(() => native.topkAsync(embeddings, this.weights as HostCentres, this.dim, k, this.config.threads ?? 0)));
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
    this.ensureUsable('partialStats');
    const local = this.localLabels(labels, embeddings);
    const sample = this.sample(local);
    const margins = elasticMargins(this.config.margin, labels.length);
    const opts = { ...this.baseOptions(margins), classIndex: sample.classIndex, stats: true };
    const r = this.loss(embeddings, sample.labels, opts, false);
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
    const lr = this.checkStepOptions(opts);
    const o: NativeLossOptions = {
      ...this.baseOptions(p.margins),
      classIndex: p.classIndex,
      lseIn: merged.lse,
      targetPm1In: merged.targetPm1,
      sgd: this.sgd(lr),
    };
    const r = this.loss(p.embeddings, p.labels, o, true);
    this.pending = null;
    this.steps++;
    return { gradEmbeddings: r.gradEmbeddings as Float32Array };
  }

  // ---- State -----------------------------------------------------------------

  /** A copy of this head's centres (localClasses×dim). */
  getWeights(): Float32Array {
    this.ensureUsable('getWeights');
    if (this.device) return this.device.getAll(CENTRES);
    const w = this.weights as HostCentres;
    return w instanceof Uint16Array ? widenBf16(w) : w.slice();
  }

  /** Replaces the centres (copied in). The momentum buffer is kept, as an optimizer's state would be. */
  setWeights(weights: Float32Array): void {
    this.ensureUsable('setWeights');
    const n = this.localClasses * this.dim;
    if (!(weights instanceof Float32Array) || weights.length !== n) expected(`Float32Array of length ${n}`, 'weights', weights);
    validateFinite(weights, 'weights');
    this.checkBf16Range(weights, 'weights');
    const w = this.weights;
    if (this.device) this.device.setAll(CENTRES, weights);
    else if (w instanceof Uint16Array) copyInBf16(w, weights);
    else (w as Float32Array).set(weights);
  }

  /** A copy of the momentum buffer, or null when momentum is 0. */
  getMomentum(): Float32Array | null {
    this.ensureUsable('getMomentum');
    if (this.device) return this.device.hasMomentum ? this.device.getAll(MOMENTUM) : null;
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
    const shape = [this.localClasses, this.dim];
    const dev = this.device;
    const tensors: Record<string, TensorEntry> = {
      weight: { dtype: 'F32', shape, data: dev ? dev.streamed(CENTRES) : this.hostWeightsData() },
    };
    if (dev?.hasMomentum) tensors.momentum = { dtype: 'F32', shape, data: dev.streamed(MOMENTUM) };
    else if (this.momentum) tensors.momentum = { dtype: 'F32', shape, data: this.momentum };
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
    const config = checkpointConfig(file, header);
    const steps = parseSteps(file, header.metadata.steps);
    checkCheckpointTensors(file, header, config);
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
    // Non-finite centres or momentum would poison every later step.
    if (head.device) {
      head.loadDeviceTensor(file, header, 'weight', CENTRES);
      if (head.device.hasMomentum) head.loadDeviceTensor(file, header, 'momentum', MOMENTUM);
    } else {
      const w = head.weights as HostCentres;
      if (w instanceof Uint16Array) readTensorBf16(file, header, 'weight', w);
      else readTensor(file, header, 'weight', w, { finite: true });
      if (head.momentum) readTensor(file, header, 'momentum', head.momentum, { finite: true });
    }
    head.steps = steps;
    return head;
  }

  /** Releases the centres and the momentum (device memory too); any later call throws. */
  dispose(): void {
    if (this.running && this.device) {
      this.disposeWhenSettled = true; // the running call still uses the device buffers
      return;
    }
    this.device?.free();
    this.device = null;
    this.weights = null;
    this.momentum = null;
    this.pending = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  get disposed(): boolean {
    return this.weights === null && this.device === null;
  }

  /** Device bytes this head holds (0 on the CPU backend). */
  get deviceBytes(): number {
    return this.device ? this.device.bytes : 0;
  }

  // ---- Internals -----------------------------------------------------------

  private ensureUsable(what: string): void {
    if (this.disposed || this.disposeWhenSettled) throw new HeadDisposedError(what);
    if (this.running) throw new HeadBusyError(what, this.running);
  }

  /** An asynchronous call has settled: the head takes calls again (or is released, when dispose() came meanwhile). */
  private settled(): void {
    this.running = null;
    if (this.disposeWhenSettled) this.dispose();
  }

  /** The fused loss on this head's centres (on the device or on the host), failures as typed errors. */
  private loss(embeddings: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult {
    return callNative(() =>
      this.device
        ? this.device.loss(embeddings, labels, opts, withGrad)
        : native.loss(embeddings, this.weights as HostCentres, labels, this.dim, opts, withGrad),
    );
  }

  /** {@link loss} on the thread pool. */
  private lossAsync(embeddings: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult> {
    return callNativeAsync(() =>
      this.device
        ? this.device.lossAsync(embeddings, labels, opts, withGrad)
        : native.lossAsync(embeddings, this.weights as HostCentres, labels, this.dim, opts, withGrad),
    );
  }

  /** The host centres: copied from init, drawn, or zero (to be read from a checkpoint). */
  private initHostCentres(init: CentresInit): HostCentres {
    if (this.config.weightsDtype === 'bfloat16') return this.initHostCentresBf16(init);
    const n = this.localClasses * this.dim;
    if (init === 'normal') {
      // Keyed by the global element index, so shards draw exactly the rows
      // the unsharded head would.
      return native.gaussian(0, NORMAL_INIT_STD, this.config.seed, INIT_COUNTER, n, this.offset * this.dim);
    }
    const weights = native.zeros(n);
    if (init instanceof Float32Array) weights.set(init);
    return weights;
  }

  /** bf16 host centres: the fp32 values initHostCentres would hold, rounded to the nearest bf16, a chunk at a time. */
  private initHostCentresBf16(init: CentresInit): Uint16Array {
    const w = zerosBf16(this.localClasses * this.dim);
    if (init instanceof Float32Array) {
      this.checkBf16Range(init, 'init');
      copyInBf16(w, init);
    } else if (init === 'normal') {
      native._gaussianBf16(w, 0, NORMAL_INIT_STD, this.config.seed, INIT_COUNTER, this.offset * this.dim);
    }
    return w;
  }

  /** bf16 centres: a value that would round to infinity is refused, not stored. */
  private checkBf16Range(values: Float32Array, what: string): void {
    if (this.config.weightsDtype !== 'bfloat16') return;
    const at = firstBeyondBf16(values);
    if (at >= 0) expected(`a value within bf16's range (|v| < 3.3961775e38: the centres are bf16)`, `${what}[${at}]`, values[at]);
  }

  /** The host centres as a checkpoint holds them: F32 (bf16 values widened, a chunk at a time). */
  private hostWeightsData(): Float32Array | ReturnType<typeof streamedBf16> {
    const w = this.weights as HostCentres;
    return w instanceof Uint16Array ? streamedBf16(w) : w;
  }

  /** The device centres, initialised as the CPU head's would be (the same values; rounded to bf16 when so stored). */
  private initDevice(init: CentresInit): DeviceCentres {
    const c = this.config;
    const dev = new DeviceCentres(this.localClasses, this.dim, c.weightsDtype === 'bfloat16', (c.optimizer.momentum ?? 0) > 0);
    try {
      if (init instanceof Float32Array) {
        this.checkBf16Range(init, 'init');
        dev.setAll(CENTRES, init);
      } else if (init === 'normal') {
        // Drawn chunk by chunk, keyed by the global element index as on the CPU.
        dev.fillRows(CENTRES, (row0, chunk) => {
          chunk.set(native.gaussian(0, NORMAL_INIT_STD, c.seed, INIT_COUNTER, chunk.length, (this.offset + row0) * this.dim));
        });
      }
    } catch (err) {
      dev.free();
      throw err;
    }
    return dev;
  }

  private loadDeviceTensor(file: string, header: SafetensorsHeader, name: string, which: typeof CENTRES): void {
    const dev = this.device as DeviceCentres;
    const rowBytes = 4 * this.dim;
    const buf = new Float32Array(dev.chunkRows * this.dim);
    readTensorChunks(
      file,
      header,
      name,
      this.localClasses * rowBytes,
      dev.chunkRows * rowBytes,
      (b, e) => new Uint8Array(buf.buffer, 0, e - b),
      (b, chunk) => {
        const rows = new Float32Array(chunk.buffer, chunk.byteOffset, chunk.byteLength / 4);
        checkChunkFinite(file, name, rows, 0, rows.length, b / 4); // non-finite values would poison every later step
        dev.setRows(which, b / rowBytes, rows);
      },
    );
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

  private checkStepOptions(opts: { lr?: number }): number {
    if (opts === null || typeof opts !== 'object') expected('an options object { lr? }', 'step options', opts);
    rejectUnknownKeys(opts, STEP_OPTION_NAMES, 'step options');
    return this.checkLr(opts.lr);
  }

  private checkLr(lr: number | undefined): number {
    if (lr === undefined) return this.config.optimizer.lr;
    return checkFloat32(lr, 'lr', {});
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
      momentumBuffer: this.momentum ?? undefined,
      // bf16 centres: the update's stochastic rounding is keyed by (seed, step, global element).
      roundSeed: this.config.seed,
      roundStep: this.steps,
      rowOffset: this.offset,
    };
  }

  private prepareStep(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number }) {
    const lr = this.checkStepOptions(opts);
    validateBatch(embeddings, labels, this.dim, this.localClasses);
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

/** The head configuration in a checkpoint's metadata (format checked; its values are the constructor's to check). */
function checkpointConfig(file: string, header: SafetensorsHeader): MarginHeadOptions {
  if (header.metadata.format !== FORMAT) {
    throw new CheckpointError(`Checkpoint ${file} is not a margin-softmax head (metadata.format = ${JSON.stringify(header.metadata.format)})`);
  }
  let config: MarginHeadOptions;
  try {
    config = JSON.parse(header.metadata.config);
  } catch {
    throw new CheckpointError(`Corrupted checkpoint ${file}: metadata.config is not valid JSON`);
  }
  if (config === null || typeof config !== 'object') throw new CheckpointError(`Corrupted checkpoint ${file}: metadata.config is not an object`);
  return config;
}

/** 'weight' and (with momentum) 'momentum', F32 [local classes, dim], and no other tensor. */
function checkCheckpointTensors(file: string, header: SafetensorsHeader, config: MarginHeadOptions): void {
  const local = config.shard ? config.shard.count : config.classes;
  const withMomentum = (config.optimizer?.momentum ?? 0) > 0;
  for (const name of Object.keys(header.tensors)) {
    if (name !== 'weight' && !(name === 'momentum' && withMomentum)) {
      const why = name === 'momentum' ? 'its configuration has no momentum' : `a head checkpoint holds only 'weight'${withMomentum ? " and 'momentum'" : ''}`;
      throw new CheckpointError(`Checkpoint ${file} has an unexpected tensor '${name}' (${why})`);
    }
  }
  for (const name of ['weight', 'momentum']) {
    const t = header.tensors[name];
    if (!t) {
      if (name === 'weight' || withMomentum) throw new CheckpointError(`Checkpoint ${file} has no tensor '${name}'`);
      continue;
    }
    if (t.dtype !== 'F32') throw new CheckpointError(`Checkpoint ${file}: expected dtype F32 for '${name}' but found ${t.dtype}`);
    if (t.shape.length !== 2 || t.shape[0] !== local || t.shape[1] !== config.dim) {
      throw new CheckpointError(`Checkpoint ${file}: expected shape [${local}, ${config.dim}] for '${name}' but found ${JSON.stringify(t.shape)}`);
    }
  }
}

/** metadata.steps: absent (0), or the decimal digits of a non-negative safe integer. */
function parseSteps(file: string, text: string | undefined): number {
  if (text === undefined) return 0;
  const n = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new CheckpointError(`Corrupted checkpoint ${file}: metadata.steps = ${JSON.stringify(text)} is not a non-negative integer step count`);
  }
  return n;
}

/** 'auto' picks CUDA where it is usable (an addon built with CUDA has the device head); 'cuda' demands it. */
function headBackend(requested: MarginHeadOptions['backend']): BackendName {
  const b = resolveBackend(requested);
  if (b === 'wasm') throw new BackendUnavailableError("Expected backend 'cpu' or 'cuda' for a MarginHead but received 'wasm' (the head runs on the native addon)");
  if (b === 'cuda' && !deviceHeadCompiled()) throw new BackendUnavailableError('Expected an addon with the CUDA device head but this one has none');
  return b;
}

function validateHeadOptions(o: MarginHeadOptions): void {
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
  const opt = o.optimizer;
  if (opt !== undefined) {
    if (typeof opt !== 'object' || opt === null) expected('an object { lr, momentum?, weightDecay? }', 'optimizer', opt);
    rejectUnknownKeys(opt, ['lr', 'momentum', 'weightDecay'], 'optimizer');
    checkFloat32(opt.lr, 'optimizer.lr', {});
    if (opt.momentum !== undefined) checkFloat32(opt.momentum, 'optimizer.momentum', { below: 1 });
    if (opt.weightDecay !== undefined) checkFloat32(opt.weightDecay, 'optimizer.weightDecay', {});
  }
  const s = o.shard;
  if (s !== undefined) {
    if (typeof s !== 'object' || s === null) expected('an object { offset, count, total }', 'shard', s);
    rejectUnknownKeys(s, ['offset', 'count', 'total'], 'shard');
    if (s.total !== o.classes) expected(`shard.total equal to classes = ${o.classes}`, 'shard.total', s.total);
    if (!Number.isSafeInteger(s.offset) || s.offset < 0) expected('a non-negative integer', 'shard.offset', s.offset);
    if (!Number.isSafeInteger(s.count) || s.count < 1 || s.offset + s.count > s.total) {
      expected(`an integer in [1, ${s.total - s.offset}]`, 'shard.count', s.count);
    }
  }
  const local = s ? s.count : o.classes;
  if (o.init !== undefined && o.init !== 'normal') {
    if (!(o.init instanceof Float32Array) || o.init.length !== local * o.dim) {
      expected(`'normal' or a Float32Array of length ${local * o.dim}`, 'init', o.init);
    }
    validateFinite(o.init, 'init');
  }
}
