/**
 * ShardedMarginHead: the class centres split across the ranks of a
 * Communicator (model parallel, as insightface's Partial FC over NCCL), each
 * rank owning a contiguous slice of the classes. One step is the two-phase
 * exchange of stats.ts over the collectives:
 *
 *   1. every rank: per-row (max, Σexp, Σexp without target, target logit,
 *      cos θ_y) over its own classes → all-gather (5·N floats per rank);
 *   2. every rank merges the gathered stats in rank order (bit-identical on
 *      every rank), takes its share of dLoss/dX and updates its centres →
 *      all-reduce (sum) of dLoss/dX (N·d floats).
 *
 * Partial FC sampling happens per shard (each rank samples its own classes,
 * positives always kept). Checkpoints (./sharded-checkpoint): one safetensors
 * file per rank, written where the rank runs, and a manifest; a checkpoint
 * loads into any number of ranks.
 */
import * as os from 'node:os';
import type { Communicator } from './comm';
import { ArgumentError, expected } from '../errors';
import { MarginHead, type MarginHeadOptions, type StepResult } from '../head/margin-head';
import { mergeStats, type MergedStats, type ShardStats } from './stats';
import { loadShard, saveShards, shardRange } from './sharded-checkpoint';

export interface ShardedMarginHeadOptions extends Omit<MarginHeadOptions, 'shard' | 'init'> {
  /** The ranks that share the classes (mpiCommunicator(), or localCommunicator() for one process). */
  comm: Communicator;
}

/** What one step moved between ranks, per rank (sent + received), in bytes. */
export interface StepTraffic {
  /** The all-gather of the per-row stats. */
  statsBytes: number;
  /** The all-reduce of dLoss/dX (counted as one buffer sent and one received). */
  gradBytes: number;
}

export interface ShardedStepResult extends StepResult {
  traffic: StepTraffic;
  /**
   * Wall-clock seconds of the step's parts on this rank: phase 1 (local
   * stats), the all-gather (includes waiting for the slowest rank), phase 2
   * (merge, local gradient share, centre update), the all-reduce.
   */
  seconds: { stats: number; allGather: number; finish: number; allReduce: number };
}

/** Per-row stats exchanged in phase 1: max, sumExp, sumExpOther, target, targetCos. */
const STATS_PER_ROW = 5;

export { shardRange };

export class ShardedMarginHead {
  readonly classes: number;
  readonly dim: number;
  readonly rank: number;
  readonly size: number;
  /** First class of this rank's slice, and the slice's length. */
  readonly offset: number;
  readonly localClasses: number;
  private readonly comm: Communicator;
  private local: MarginHead;
  /** A stepAsync() is in flight. */
  private running = false;

  /** `loaded`: used by {@link load}, the shard read from a checkpoint. */
  constructor(options: ShardedMarginHeadOptions, loaded?: MarginHead) {
    const comm = checkComm(options);
    if (!Number.isSafeInteger(options.classes) || options.classes < comm.size) {
      expected(`an integer number of classes ≥ ${comm.size} (at least one per rank)`, 'classes', options.classes);
    }
    const { comm: _comm, ...rest } = options;
    const range = shardRange(options.classes, comm.size, comm.rank);
    this.comm = comm;
    this.local = loaded ?? new MarginHead({ ...rest, shard: { ...range, total: options.classes } });
    this.classes = this.local.classes;
    this.dim = this.local.dim;
    this.rank = comm.rank;
    this.size = comm.size;
    this.offset = range.offset;
    this.localClasses = range.count;
    if (!loaded) warnIfThreadsShareCpus(comm, options.threads);
  }

  /** This rank's shard (a MarginHead over classes [offset, offset + localClasses)). */
  get shard(): MarginHead {
    return this.local;
  }

  get stepCount(): number {
    return this.local.stepCount;
  }

  /**
   * One training step on the global batch (the same embeddings and labels on
   * every rank): loss and accuracy over all classes, the full dLoss/dX (summed
   * over ranks), and this rank's centres updated.
   */
  step(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): ShardedStepResult {
    this.ensureIdle('step');
    this.checkInStep(labels);
    return this.stepChecked(embeddings, labels, opts);
  }

  private stepChecked(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number }): ShardedStepResult {
    const t0 = performance.now();
    const stats = packStats(this.local.partialStats(embeddings, labels));
    const t1 = performance.now();
    const gathered = this.comm.allGather(stats);
    const t2 = performance.now();
    const { merged, parts, gradEmbeddings } = this.finish(gathered, labels.length, opts);
    const t3 = performance.now();
    this.comm.allReduceSum(gradEmbeddings);
    return this.result(merged, parts, gradEmbeddings, [t0, t1, t2, t3, performance.now()]);
  }

  /**
   * {@link step} with the collectives on the libuv pool, issued in call
   * order: while this rank waits for its peers the event loop runs (timers,
   * I/O, a signal handler). The local compute runs on the calling thread.
   * One call at a time: the head refuses other calls until it settles.
   */
  async stepAsync(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): Promise<ShardedStepResult> {
    this.ensureIdle('stepAsync');
    this.running = true;
    try {
      if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
      this.checkAgreement(labels, await this.comm.allGatherAsync(this.stepKey(labels)));
      const t0 = performance.now();
      const stats = packStats(this.local.partialStats(embeddings, labels));
      const t1 = performance.now();
      const gathered = await this.comm.allGatherAsync(stats);
      const t2 = performance.now();
      const { merged, parts, gradEmbeddings } = this.finish(gathered, labels.length, opts);
      const t3 = performance.now();
      await this.comm.allReduceSumAsync(gradEmbeddings);
      return this.result(merged, parts, gradEmbeddings, [t0, t1, t2, t3, performance.now()]);
    } finally {
      this.running = false;
    }
  }

  /** Phase 2 on this rank: merge the gathered stats, this shard's dLoss/dX share and centre update. */
  private finish(gathered: Float32Array, n: number, opts: { lr?: number }) {
    const parts = unpackStats(gathered, this.size, n);
    const merged = mergeStats(parts);
    const { gradEmbeddings } = this.local.finishStep(merged, opts);
    return { merged, parts, gradEmbeddings };
  }

  /** `t`: the times (ms) at the start, after phase 1, the all-gather, phase 2 and the all-reduce. */
  private result(merged: MergedStats, parts: ShardStats[], gradEmbeddings: Float32Array, t: number[]): ShardedStepResult {
    const n = merged.lse.length;
    return {
      loss: merged.loss,
      accuracy: merged.accuracy,
      gradEmbeddings,
      targetCos: mergeTargetCos(parts, n),
      traffic: this.traffic(n),
      seconds: { stats: (t[1] - t[0]) / 1e3, allGather: (t[2] - t[1]) / 1e3, finish: (t[3] - t[2]) / 1e3, allReduce: (t[4] - t[3]) / 1e3 },
    };
  }

  /**
   * A step for a data-parallel backbone: each rank passes its own rows (the
   * same count on every rank); the rows of all ranks are gathered into the
   * global batch (rank order), stepped as {@link step}, and this rank gets
   * back the gradient of its own rows. Loss and accuracy are the global batch's.
   */
  stepLocal(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): ShardedStepResult {
    this.ensureIdle('stepLocal');
    if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
    if (!(embeddings instanceof Float32Array) || embeddings.length !== labels.length * this.dim) {
      expected(`Float32Array of length ${labels.length * this.dim} (labels.length × dim)`, 'embeddings', embeddings);
    }
    this.checkInStep(labels);
    const all = this.comm.allGather(embeddings);
    const allLabels = this.comm.allGather(labels);
    const r = this.stepChecked(all, allLabels, opts);
    const rows = labels.length;
    const mine = r.gradEmbeddings.slice(this.rank * rows * this.dim, (this.rank + 1) * rows * this.dim);
    const gatherBytes = 2 * (this.size - 1) * rows * (this.dim + 1) * 4;
    return {
      ...r,
      gradEmbeddings: mine,
      targetCos: r.targetCos.slice(this.rank * rows, (this.rank + 1) * rows),
      traffic: { ...r.traffic, statsBytes: r.traffic.statsBytes + gatherBytes },
    };
  }

  /** Top-k classes (global ids) by cosine over all shards for each row (N×k, descending). */
  predict(embeddings: Float32Array, k: number): { classes: Int32Array; scores: Float32Array } {
    this.ensureIdle('predict');
    if (!Number.isInteger(k) || k < 1 || k > this.classes) expected(`an integer in [1, ${this.classes}]`, 'k', k);
    const kLocal = Math.min(k, this.localClasses);
    const mine = this.local.predict(embeddings, kLocal);
    const n = mine.classes.length / kLocal;
    // Pad to k per row so every rank gathers the same count.
    const ids = new Int32Array(n * k).fill(-1);
    const scores = new Float32Array(n * k).fill(-Infinity);
    for (let i = 0; i < n; i++) {
      ids.set(mine.classes.subarray(i * kLocal, (i + 1) * kLocal), i * k);
      scores.set(mine.scores.subarray(i * kLocal, (i + 1) * kLocal), i * k);
    }
    return topOfGathered(this.comm.allGather(ids), this.comm.allGather(scores), this.size, n, k);
  }

  /**
   * Writes this rank's shard and the manifest into `dir`/step-S/ (S: the
   * step count), in `dir` as this rank sees it: a folder on the rank's own
   * host, or one shared folder. Collective: every rank calls it; a rank that
   * fails makes every rank throw, and the previous generation stays whole.
   * Keeps the newest `keep` generations (default 2). See ./sharded-checkpoint.
   */
  save(dir: string, options: { keep?: number } = {}): void {
    this.ensureIdle('save');
    saveShards({ comm: this.comm, classes: this.classes, dim: this.dim, local: this.local }, dir, options?.keep ?? 2);
  }

  /**
   * Loads a checkpoint written by {@link save} with any number of ranks.
   * `paths`: the folder(s) where this rank finds the shards it needs (its
   * own host's folder; with another number of ranks, also copies of the
   * other hosts' shards). `step` picks a generation; by default the newest
   * that every rank holds. Collective: every rank calls it.
   */
  static load(paths: string | string[], options: { comm: Communicator; step?: number }): ShardedMarginHead {
    const comm = checkComm(options);
    const list = typeof paths === 'string' ? [paths] : paths;
    if (!Array.isArray(list) || list.length === 0 || list.some((p) => typeof p !== 'string' || p === '')) expected('a folder path or a non-empty array of them', 'paths', paths);
    if (options.step !== undefined && !(Number.isSafeInteger(options.step) && options.step >= 0)) expected('a step count (an integer ≥ 0)', 'step', options.step);
    const { manifest, local } = loadShard(list, comm, options.step);
    // The shard carries its own configuration (margin, optimizer, …) from its
    // checkpoint; the options here only size the slices.
    return new ShardedMarginHead({ classes: manifest.classes, dim: manifest.dim, margin: { kind: 'softmax' }, comm }, local);
  }

  dispose(): void {
    this.local.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- Internals -----------------------------------------------------------

  private ensureIdle(what: string): void {
    if (this.running) throw new ArgumentError(`ShardedMarginHead.${what}: a stepAsync() call is still running on this head (await it first)`);
  }

  /** Every rank must be at the same step with the same batch size: checked with one small all-gather. */
  private checkInStep(labels: Int32Array): void {
    if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
    this.checkAgreement(labels, this.comm.allGather(this.stepKey(labels)));
  }

  private stepKey(labels: Int32Array): Int32Array {
    return new Int32Array([labels.length, this.local.stepCount]);
  }

  private checkAgreement(labels: Int32Array, all: Int32Array): void {
    for (let r = 0; r < this.size; r++) {
      if (all[2 * r] !== labels.length) {
        throw new ArgumentError(`Expected the same batch size on every rank but received ${labels.length} rows on rank ${this.rank} and ${all[2 * r]} on rank ${r}`);
      }
      if (all[2 * r + 1] !== this.local.stepCount) {
        throw new ArgumentError(`Expected every rank at the same step but rank ${this.rank} is at step ${this.local.stepCount} and rank ${r} at ${all[2 * r + 1]}`);
      }
    }
  }

  private traffic(n: number): StepTraffic {
    // All-gather: this rank sends its 5N floats to and receives 5N from each peer.
    // All-reduce: N·d floats, one buffer out and one back (a ring moves
    // 2(K−1)/K of it each way; counted here as one buffer each way).
    const others = this.size - 1;
    return {
      statsBytes: others === 0 ? 0 : 2 * others * STATS_PER_ROW * n * 4,
      gradBytes: others === 0 ? 0 : 2 * n * this.dim * 4,
    };
  }
}

/**
 * A rank whose head runs more threads than the CPUs it may run on is slowed
 * by about that ratio: Open MPI binds each rank of a job of up to 2 ranks to
 * one core by default, so one rank with 2 threads runs them on one core.
 */
function warnIfThreadsShareCpus(comm: Communicator, threads: number | undefined): void {
  if (comm.engine !== 'mpi') return;
  const cpus = os.availableParallelism();
  const want = threads && threads > 0 ? threads : os.cpus().length;
  if (want <= cpus) return;
  process.emitWarning(
    `ShardedMarginHead: rank ${comm.rank} may run on ${cpus} CPU(s) but its head runs ${want} threads, which share them ` +
      `(Open MPI binds each rank of a job of up to 2 ranks to one core): start mpirun with --bind-to none, ` +
      `or give each rank ${want} cores (--map-by slot:PE=${want}), or pass threads: ${cpus}`,
    { code: 'MARGIN_SOFTMAX_CPU_BINDING' },
  );
}

function checkComm(options: { comm?: Communicator }): Communicator {
  if (options === null || typeof options !== 'object') expected('an options object { comm, … }', 'ShardedMarginHead options', options);
  const c = options.comm;
  if (c === null || typeof c !== 'object' || !Number.isInteger(c.rank) || !Number.isInteger(c.size) || typeof c.allGather !== 'function') {
    expected('a Communicator (mpiCommunicator() or localCommunicator())', 'comm', c);
  }
  return c;
}

function packStats(s: ShardStats): Float32Array {
  const n = s.max.length;
  const out = new Float32Array(STATS_PER_ROW * n);
  out.set(s.max, 0);
  out.set(s.sumExp, n);
  out.set(s.sumExpOther, 2 * n);
  out.set(s.target, 3 * n);
  out.set(s.targetCos ?? new Float32Array(n).fill(NaN), 4 * n);
  return out;
}

function unpackStats(all: Float32Array, size: number, n: number): ShardStats[] {
  const parts: ShardStats[] = [];
  for (let r = 0; r < size; r++) {
    const base = r * STATS_PER_ROW * n;
    const at = (k: number) => all.subarray(base + k * n, base + (k + 1) * n);
    parts.push({ max: at(0), sumExp: at(1), sumExpOther: at(2), target: at(3), targetCos: at(4) });
  }
  return parts;
}

/** cos θ_y per row from the shard that owns the row's label (NaN for ignored rows). */
function mergeTargetCos(parts: ShardStats[], n: number): Float32Array {
  const out = new Float32Array(n).fill(NaN);
  for (const p of parts) {
    const c = p.targetCos as Float32Array;
    for (let i = 0; i < n; i++) if (!Number.isNaN(c[i])) out[i] = c[i];
  }
  return out;
}

/** The k best of size×k candidates per row; ties go to the smaller class id, so every rank agrees. */
function topOfGathered(ids: Int32Array, scores: Float32Array, size: number, n: number, k: number) {
  const classes = new Int32Array(n * k);
  const best = new Float32Array(n * k);
  for (let i = 0; i < n; i++) {
    const cand: { id: number; s: number }[] = [];
    for (let r = 0; r < size; r++) {
      for (let j = 0; j < k; j++) {
        const at = (r * n + i) * k + j;
        if (ids[at] >= 0) cand.push({ id: ids[at], s: scores[at] });
      }
    }
    cand.sort((a, b) => b.s - a.s || a.id - b.id);
    for (let j = 0; j < k; j++) {
      classes[i * k + j] = cand[j]?.id ?? -1;
      best[i * k + j] = cand[j]?.s ?? -Infinity;
    }
  }
  return { classes, scores: best };
}
