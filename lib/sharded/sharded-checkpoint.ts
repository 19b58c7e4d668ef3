/**
 * Checkpoints of the sharded head for ranks that share no file system.
 *
 * Layout, in the folder each rank is given (a local path on its host; the
 * same folder when the ranks do share one):
 *
 *   <dir>/step-<S>/shard-<R>-of-<K>.safetensors   rank R's classes at step S
 *   <dir>/step-<S>/manifest.json                  which shard covers which classes
 *
 * A save is a generation: every rank writes its shard; once every rank has
 * (one all-gather), every rank writes the same manifest beside its shard;
 * once every rank has (a second all-gather), every rank removes its
 * generations older than the newest `keep`. A rank that dies at any point
 * leaves the previous generation complete on every host: its files are only
 * removed after the new manifest is everywhere.
 *
 * Loading, with any number of ranks: each rank looks for generations under
 * the paths it is given (its local folder, and copies of other hosts'
 * folders where the ranks count changed); the ranks agree on the newest
 * generation that every one of them has a manifest of, and each reads the
 * shards that overlap its new slice, or says which it is missing and where
 * it looked. A folder holding a manifest.json directly (the one-folder
 * layout) is read as one generation.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Communicator } from './comm';
import { expected } from '../errors';
import { MarginHead } from '../head/margin-head';
import { CheckpointError, readHeader, saveSafetensors, type SafetensorsHeader, type TensorEntry } from '../io/safetensors';

const MANIFEST = 'manifest.json';
const MANIFEST_FORMAT = 'margin-softmax/sharded-head';
/** Version 2 adds the step folders; the manifest's fields are those of version 1. */
const MANIFEST_VERSIONS = ['1', '2'];
const GENERATION = /^step-(\d+)$/;

export interface ManifestShard {
  rank: number;
  file: string;
  offset: number;
  count: number;
}

export interface Manifest {
  format: string;
  version: string;
  classes: number;
  dim: number;
  ranks: number;
  steps: number;
  momentum: boolean;
  shards: ManifestShard[];
}

/** The ranks of one sharded head, as the checkpoint code needs them. */
export interface ShardOwner {
  readonly comm: Communicator;
  readonly classes: number;
  readonly dim: number;
  readonly local: MarginHead;
}

/** The contiguous slice of `classes` that `rank` of `size` owns (sizes differ by at most one). */
export function shardRange(classes: number, size: number, rank: number): { offset: number; count: number } {
  const offset = Math.floor((rank * classes) / size);
  return { offset, count: Math.floor(((rank + 1) * classes) / size) - offset };
}

export function shardFile(rank: number, size: number): string {
  return `shard-${rank}-of-${size}.safetensors`;
}

export function generationDir(dir: string, step: number): string {
  return path.join(dir, `step-${step}`);
}

/**
 * Shares one rank's failure with all: every rank throws the same
 * CheckpointError, naming the first rank that failed and its reason (so the
 * reason is printed whichever rank's output comes first when the job ends).
 */
export function agreeOrThrow(comm: Communicator, failure: string, what: string): void {
  const text = new TextEncoder().encode(failure);
  const lengths = comm.allGather(new Int32Array([text.length]));
  const bad = Array.from(lengths).findIndex((n) => n !== 0);
  if (bad < 0) return;
  const width = Math.max(...lengths);
  const mine = new Int32Array(width);
  mine.set(text);
  const all = comm.allGather(mine);
  const reason = new TextDecoder().decode(Uint8Array.from(all.subarray(bad * width, bad * width + lengths[bad])));
  throw new CheckpointError(`Rank ${bad} of ${comm.size} could not ${what}: ${reason}`);
}

function attempt(fn: () => void): string {
  try {
    fn();
    return '';
  } catch (err) {
    return (err as Error).message;
  }
}

/** The collective save described at the top of this file. */
export function saveShards(owner: ShardOwner, dir: string, keep: number): void {
  if (typeof dir !== 'string' || dir === '') expected('a folder path', 'dir', dir);
  if (!Number.isInteger(keep) || keep < 1) expected('an integer ≥ 1 (generations kept)', 'keep', keep);
  const { comm } = owner;
  const manifest = manifestOf(owner);
  const gen = generationDir(dir, manifest.steps);
  let failure = attempt(() => {
    fs.mkdirSync(gen, { recursive: true });
    owner.local.save(path.join(gen, shardFile(comm.rank, comm.size)));
  });
  agreeOrThrow(comm, failure, 'save its shard');
  failure = attempt(() => writeManifest(gen, manifest));
  agreeOrThrow(comm, failure, 'write the manifest');
  // Every host holds the new generation whole: the old ones can go.
  for (const g of listGenerations(dir).slice(keep)) {
    if (g.step !== manifest.steps) fs.rmSync(g.dir, { recursive: true, force: true });
  }
}

function manifestOf(owner: ShardOwner): Manifest {
  const { comm } = owner;
  const shards: ManifestShard[] = [];
  for (let r = 0; r < comm.size; r++) shards.push({ rank: r, file: shardFile(r, comm.size), ...shardRange(owner.classes, comm.size, r) });
  return {
    format: MANIFEST_FORMAT,
    version: '2',
    classes: owner.classes,
    dim: owner.dim,
    ranks: comm.size,
    steps: owner.local.stepCount,
    momentum: owner.local.getMomentum() !== null,
    shards,
  };
}

function writeManifest(dir: string, m: Manifest): void {
  const file = path.join(dir, MANIFEST);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(m, null, 2) + '\n');
  fs.renameSync(tmp, file);
}

/** The generations under `dir` that have a manifest, newest first. */
function listGenerations(dir: string): { step: number; dir: string }[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: { step: number; dir: string }[] = [];
  for (const name of names) {
    const m = GENERATION.exec(name);
    if (m && fs.existsSync(path.join(dir, name, MANIFEST))) out.push({ step: Number(m[1]), dir: path.join(dir, name) });
  }
  if (fs.existsSync(path.join(dir, MANIFEST))) {
    const step = readManifest(dir).steps;
    if (!out.some((g) => g.step === step)) out.push({ step, dir });
  }
  return out.sort((a, b) => b.step - a.step);
}

/**
 * Collective: reads this rank's slice of a checkpoint from `paths` (see the
 * top of this file). `step` picks a generation; by default the newest that
 * every rank has a manifest of.
 */
export function loadShard(paths: string[], comm: Communicator, step: number | undefined): { manifest: Manifest; local: MarginHead } {
  let gens: { step: number; dir: string }[] = [];
  agreeOrThrow(comm, attempt(() => (gens = paths.flatMap(listGenerations))), 'list its checkpoint folders');
  const want = step ?? agreedStep(gens, comm, paths);
  const folders = gens.filter((g) => g.step === want).map((g) => g.dir);
  let failure = folders.length ? '' : `no manifest of step ${want} under ${paths.map((p) => path.resolve(p)).join(', ')} (host ${os.hostname()})`;
  let manifest: Manifest | null = null;
  if (!failure) failure = attempt(() => (manifest = readManifest(folders[0])));
  agreeOrThrow(comm, failure, 'read the manifest');
  const m = manifest as unknown as Manifest;
  if (m.classes < comm.size) {
    throw new CheckpointError(`Checkpoint ${folders[0]} has ${m.classes} classes: it cannot be split over ${comm.size} ranks (at least one class per rank)`);
  }
  const range = shardRange(m.classes, comm.size, comm.rank);
  const needed = m.shards.filter((s) => s.offset < range.offset + range.count && s.offset + s.count > range.offset);
  const found = new Map<number, string>();
  const missing: string[] = [];
  for (const s of needed) {
    const file = folders.map((f) => path.join(f, s.file)).find((f) => fs.existsSync(f));
    if (file) found.set(s.rank, file);
    else missing.push(`${s.file} (classes [${s.offset}, ${s.offset + s.count}), written by rank ${s.rank})`);
  }
  if (missing.length) {
    const where = folders.map((f) => path.resolve(f)).join(', ');
    failure = `rank ${comm.rank} (host ${os.hostname()}) needs ${missing.join(', ')} of step ${want} for its classes [${range.offset}, ${range.offset + range.count}) but found none in ${where}: copy it there from the host that wrote it, or pass the folder that holds it`;
  }
  agreeOrThrow(comm, failure, 'find the shards it needs');
  let local: MarginHead | null = null;
  failure = attempt(() => {
    local = m.ranks === comm.size ? loadOwnShard(found.get(comm.rank) as string, range) : loadResharded(found, m, range);
  });
  agreeOrThrow(comm, failure, 'load its shards');
  return { manifest: m, local: local as unknown as MarginHead };
}

/** The newest step whose manifest every rank has (all-gather of each rank's steps). */
function agreedStep(gens: { step: number }[], comm: Communicator, paths: string[]): number {
  const mine = [...new Set(gens.map((g) => g.step))];
  const counts = comm.allGather(new Int32Array([mine.length]));
  const width = Math.max(...counts);
  const padded = new Float64Array(width).fill(-1);
  padded.set(mine);
  const all = comm.allGather(padded);
  const perRank = Array.from({ length: comm.size }, (_, r) => new Set(Array.from(all.subarray(r * width, (r + 1) * width)).filter((s) => s >= 0)));
  const empty = perRank.findIndex((s) => s.size === 0);
  if (empty >= 0) {
    const where = empty === comm.rank ? ` under ${paths.map((p) => path.resolve(p)).join(', ')} (host ${os.hostname()})` : '';
    throw new CheckpointError(`Rank ${empty} of ${comm.size} found no sharded checkpoint (no manifest.json)${where}`);
  }
  const common = [...perRank[0]].filter((s) => perRank.every((p) => p.has(s)));
  if (common.length === 0) {
    throw new CheckpointError(`The ranks hold no checkpoint step in common (rank ${comm.rank} has steps ${[...perRank[comm.rank]].join(', ')}): give each rank the same generation`);
  }
  return Math.max(...common);
}

export function readManifest(dir: string): Manifest {
  const file = path.join(dir, MANIFEST);
  let m: Manifest;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CheckpointError(`Cannot read the sharded checkpoint's manifest ${file}: ${(err as Error).message}`);
  }
  if (m?.format !== MANIFEST_FORMAT) throw new CheckpointError(`${file} is not a margin-softmax sharded head manifest (format = ${JSON.stringify(m?.format)})`);
  if (!MANIFEST_VERSIONS.includes(m.version)) throw new CheckpointError(`${file}: manifest version ${JSON.stringify(m.version)} is not supported (expected one of ${MANIFEST_VERSIONS.join(', ')})`);
  if (!Number.isSafeInteger(m.classes) || !Number.isSafeInteger(m.dim) || !Number.isSafeInteger(m.steps) || !Array.isArray(m.shards) || m.shards.length !== m.ranks) {
    throw new CheckpointError(`Corrupted manifest ${file}: expected classes, dim, steps, ranks and one shard entry per rank`);
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

function loadOwnShard(file: string, range: { offset: number; count: number }): MarginHead {
  const h = MarginHead.load(file);
  if (h.offset !== range.offset || h.localClasses !== range.count) {
    h.dispose();
    throw new CheckpointError(`${file} holds classes [${h.offset}, ${h.offset + h.localClasses}) but this rank owns [${range.offset}, ${range.offset + range.count})`);
  }
  return h;
}

/**
 * This rank's new slice assembled from the overlapping rows of the old
 * shards (`files`: old rank → file). The rows go into a temporary
 * single-shard checkpoint that MarginHead.load reads, so the one loader
 * checks the configuration and restores the centres, the momentum and the
 * step count.
 */
function loadResharded(files: Map<number, string>, m: Manifest, range: { offset: number; count: number }): MarginHead {
  const d = m.dim;
  const weight = new Float32Array(range.count * d);
  const momentum = m.momentum ? new Float32Array(range.count * d) : null;
  let config: Record<string, unknown> | null = null;
  for (const s of m.shards) {
    const lo = Math.max(s.offset, range.offset);
    const hi = Math.min(s.offset + s.count, range.offset + range.count);
    if (lo >= hi) continue;
    const file = files.get(s.rank) as string;
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
