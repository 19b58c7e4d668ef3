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
 * positives always kept). Checkpoints: one safetensors file per rank plus a
 * manifest.json; a checkpoint loads into any number of ranks.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Communicator } from './comm';
import { ArgumentError, expected } from '../errors';
import { MarginHead, type MarginHeadOptions, type StepResult } from '../head/margin-head';
import { CheckpointError, readHeader, saveSafetensors, type SafetensorsHeader, type TensorEntry } from '../io/safetensors';
import { mergeStats, type ShardStats } from './stats';

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

const MANIFEST = 'manifest.json';
const MANIFEST_FORMAT = 'margin-softmax/sharded-head';
const MANIFEST_VERSION = '1';
/** Per-row stats exchanged in phase 1: max, sumExp, sumExpOther, target, targetCos. */
const STATS_PER_ROW = 5;

interface ManifestShard {
  rank: number;
  file: string;
  offset: number;
  count: number;
}

interface Manifest {
  format: string;
  version: string;
  classes: number;
  dim: number;
  ranks: number;
  steps: number;
  momentum: boolean;
  shards: ManifestShard[];
}

/** The contiguous slice of `classes` that `rank` of `size` owns (sizes differ by at most one). */
export function shardRange(classes: number, size: number, rank: number): { offset: number; count: number } {
  const offset = Math.floor((rank * classes) / size);
  return { offset, count: Math.floor(((rank + 1) * classes) / size) - offset };
}

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
    this.checkInStep(labels);
    return this.stepChecked(embeddings, labels, opts);
  }

  private stepChecked(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number }): ShardedStepResult {
    const n = labels.length;
    const t0 = performance.now();
    const stats = packStats(this.local.partialStats(embeddings, labels));
    const t1 = performance.now();
    const parts = unpackStats(this.comm.allGather(stats), this.size, n);
    const t2 = performance.now();
    const merged = mergeStats(parts);
    const { gradEmbeddings } = this.local.finishStep(merged, opts);
    const t3 = performance.now();
    this.comm.allReduceSum(gradEmbeddings);
    const t4 = performance.now();
    return {
      loss: merged.loss,
      accuracy: merged.accuracy,
      gradEmbeddings,
      targetCos: mergeTargetCos(parts, n),
      traffic: this.traffic(n),
      seconds: { stats: (t1 - t0) / 1e3, allGather: (t2 - t1) / 1e3, finish: (t3 - t2) / 1e3, allReduce: (t4 - t3) / 1e3 },
    };
  }

  /**
   * A step for a data-parallel backbone: each rank passes its own rows (the
   * same count on every rank); the rows of all ranks are gathered into the
   * global batch (rank order), stepped as {@link step}, and this rank gets
   * back the gradient of its own rows. Loss and accuracy are the global batch's.
   */
  stepLocal(embeddings: Float32Array, labels: Int32Array, opts: { lr?: number } = {}): ShardedStepResult {
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
   * Writes `dir`/shard-R-of-K.safetensors on every rank, then rank 0 writes
   * `dir`/manifest.json. Collective: every rank calls it; a rank that fails
   * to write makes every rank throw. `dir` must be the same folder for all
   * ranks (a shared file system across machines).
   */
  save(dir: string): void {
    if (typeof dir !== 'string' || dir === '') expected('a folder path', 'dir', dir);
    const file = shardFile(this.rank, this.size);
    let failure = '';
    try {
      fs.mkdirSync(dir, { recursive: true });
      this.local.save(path.join(dir, file));
    } catch (err) {
      failure = (err as Error).message;
    }
    this.agreeOrThrow(failure, 'save its shard');
    if (this.rank === 0) {
      try {
        writeManifest(dir, this.manifest());
      } catch (err) {
        failure = (err as Error).message;
      }
    }
    this.agreeOrThrow(failure, 'write the manifest');
  }

  /**
   * Loads a checkpoint written by {@link save} with any number of ranks:
   * with the same number each rank reads its own file; otherwise each rank
   * assembles its new slice from the rows of the old shards that overlap it.
   * Collective: every rank calls it.
   */
  static load(dir: string, options: { comm: Communicator }): ShardedMarginHead {
    const comm = checkComm(options);
    const manifest = readManifest(dir);
    if (manifest.classes < comm.size) {
      throw new CheckpointError(`Checkpoint ${dir} has ${manifest.classes} classes: it cannot be split over ${comm.size} ranks (at least one class per rank)`);
    }
    const range = shardRange(manifest.classes, comm.size, comm.rank);
    let local: MarginHead;
    if (manifest.ranks === comm.size) {
      local = MarginHead.load(path.join(dir, manifest.shards[comm.rank].file));
      checkShard(local, range, dir);
    } else {
      local = loadResharded(dir, manifest, range);
    }
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

  /** Every rank must be at the same step with the same batch size: checked with one small all-gather. */
  private checkInStep(labels: Int32Array): void {
    if (!(labels instanceof Int32Array)) expected('Int32Array', 'labels', labels);
    const all = this.comm.allGather(new Int32Array([labels.length, this.local.stepCount]));
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

  /** Shares a failure of one rank with all: every rank throws the same CheckpointError. */
  private agreeOrThrow(failure: string, what: string): void {
    const flags = this.comm.allGather(new Int32Array([failure ? 1 : 0]));
    const bad = Array.from(flags).findIndex((f) => f !== 0);
    if (bad < 0) return;
    const detail = bad === this.rank ? `: ${failure}` : ' (see that rank for the cause)';
    throw new CheckpointError(`Rank ${bad} of ${this.size} could not ${what}${detail}`);
  }

  private manifest(): Manifest {
    const shards: ManifestShard[] = [];
    for (let r = 0; r < this.size; r++) shards.push({ rank: r, file: shardFile(r, this.size), ...shardRange(this.classes, this.size, r) });
    return {
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      classes: this.classes,
      dim: this.dim,
      ranks: this.size,
      steps: this.local.stepCount,
      momentum: this.local.getMomentum() !== null,
      shards,
    };
  }
}

function checkComm(options: { comm?: Communicator }): Communicator {
  if (options === null || typeof options !== 'object') expected('an options object { comm, … }', 'ShardedMarginHead options', options);
  const c = options.comm;
  if (c === null || typeof c !== 'object' || !Number.isInteger(c.rank) || !Number.isInteger(c.size) || typeof c.allGather !== 'function') {
    expected('a Communicator (mpiCommunicator() or localCommunicator())', 'comm', c);
  }
  return c;
}

function shardFile(rank: number, size: number): string {
  return `shard-${rank}-of-${size}.safetensors`;
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

function writeManifest(dir: string, m: Manifest): void {
  const file = path.join(dir, MANIFEST);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(m, null, 2) + '\n');
  fs.renameSync(tmp, file);
}

function readManifest(dir: string): Manifest {
  const file = path.join(dir, MANIFEST);
  let m: Manifest;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CheckpointError(`Cannot read the sharded checkpoint's manifest ${file}: ${(err as Error).message}`);
  }
  if (m?.format !== MANIFEST_FORMAT) throw new CheckpointError(`${file} is not a margin-softmax sharded head manifest (format = ${JSON.stringify(m?.format)})`);
  if (m.version !== MANIFEST_VERSION) throw new CheckpointError(`${file}: manifest version ${JSON.stringify(m.version)} is not supported (expected ${MANIFEST_VERSION})`);
  if (!Number.isSafeInteger(m.classes) || !Number.isSafeInteger(m.dim) || !Array.isArray(m.shards) || m.shards.length !== m.ranks) {
    throw new CheckpointError(`Corrupted manifest ${file}: expected classes, dim, ranks and one shard entry per rank`);
  }
  // The shards must tile [0, classes) in rank order.
  let next = 0;
  m.shards.forEach((s, r) => {
    if (s?.rank !== r || s.offset !== next || !(s.count > 0) || typeof s.file !== 'string' || path.basename(s.file) !== s.file) {
      throw new CheckpointError(`Corrupted manifest ${file}: shard entry ${r} does not continue the class range at ${next}`);
    }
    next += s.count;
  });
  if (next !== m.classes) throw new CheckpointError(`Corrupted manifest ${file}: the shards cover ${next} classes, not ${m.classes}`);
  return m;
}

function checkShard(h: MarginHead, range: { offset: number; count: number }, dir: string): void {
  if (h.offset !== range.offset || h.localClasses !== range.count) {
    throw new CheckpointError(
      `Checkpoint ${dir}: the shard file holds classes [${h.offset}, ${h.offset + h.localClasses}) but this rank owns [${range.offset}, ${range.offset + range.count})`,
    );
  }
}

/**
 * This rank's new slice assembled from the overlapping rows of the old
 * shards. The rows go into a temporary single-shard checkpoint that
 * MarginHead.load reads, so the one loader checks the configuration and
 * restores the centres, the momentum and the step count.
 */
function loadResharded(dir: string, m: Manifest, range: { offset: number; count: number }): MarginHead {
  const d = m.dim;
  const weight = new Float32Array(range.count * d);
  const momentum = m.momentum ? new Float32Array(range.count * d) : null;
  let config: Record<string, unknown> | null = null;
  for (const s of m.shards) {
    const lo = Math.max(s.offset, range.offset);
    const hi = Math.min(s.offset + s.count, range.offset + range.count);
    if (lo >= hi) continue;
    const file = path.join(dir, s.file);
    const header = readHeader(file);
    config ??= shardConfig(file, header);
    for (const [name, into] of [['weight', weight], ['momentum', momentum]] as const) {
      if (!into) continue;
      checkShardTensor(file, header, name, s.count, d);
      readRows(file, header, name, (lo - s.offset) * d, (hi - lo) * d, into, (lo - range.offset) * d);
    }
  }
  const tensors: Record<string, TensorEntry> = { weight: { dtype: 'F32', shape: [range.count, d], data: weight } };
  if (momentum) tensors.momentum = { dtype: 'F32', shape: [range.count, d], data: momentum };
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'margin-softmax-reshard-'));
  const tmp = path.join(tmpDir, 'shard.safetensors');
  try {
    const metadata = {
      format: 'margin-softmax/head',
      version: '1',
      config: JSON.stringify({ ...config, shard: { ...range, total: m.classes } }),
      steps: String(m.steps),
    };
    saveSafetensors(tmp, tensors, metadata);
    return MarginHead.load(tmp);
  } finally {
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
}

function shardConfig(file: string, header: SafetensorsHeader): Record<string, unknown> {
  try {
    return JSON.parse(header.metadata.config);
  } catch {
    throw new CheckpointError(`Corrupted checkpoint ${file}: metadata.config is not valid JSON`);
  }
}

function checkShardTensor(file: string, header: SafetensorsHeader, name: string, rows: number, dim: number): void {
  const t = header.tensors[name];
  if (!t) throw new CheckpointError(`Checkpoint ${file} has no tensor '${name}'`);
  if (t.dtype !== 'F32' || t.shape.length !== 2 || t.shape[0] !== rows || t.shape[1] !== dim) {
    throw new CheckpointError(`Checkpoint ${file}: expected F32 [${rows}, ${dim}] for '${name}' (as the manifest says) but found ${t.dtype} ${JSON.stringify(t.shape)}`);
  }
}

/** Reads `count` floats of tensor `name` starting at element `start` into `into` at `at`. */
function readRows(file: string, header: SafetensorsHeader, name: string, start: number, count: number, into: Float32Array, at: number): void {
  const t = header.tensors[name];
  const view = new Uint8Array(into.buffer, into.byteOffset + at * 4, count * 4);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < view.length) {
      const got = fs.readSync(fd, view, done, view.length - done, header.dataStart + t.begin + start * 4 + done);
      if (got === 0) throw new CheckpointError(`Truncated checkpoint ${file} while reading '${name}'`);
      done += got;
    }
  } finally {
    fs.closeSync(fd);
  }
}

