/**
 * Using a trained model: embeddings of a user's own images (the gallery step
 * of a face-recognition deployment), scoring a pair of images, and
 * identifying probes against a gallery.
 *
 *   embedFolder   ImageFolder → gallery file (./gallery: safetensors, paths and labels in the metadata)
 *   verifyPair    cosine of two images, same/different at the run's verification threshold
 *   identify      top-k identities per probe image, streamed over the gallery by the
 *                 library's top-k (MarginHead.predict over the gallery rows as its
 *                 "classes": no probes × gallery score matrix)
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { ArgumentError, MarginHead } from 'margin-softmax';
import { checkFingerprint, CheckpointMismatchError, checkpointDir, loadBackbone, readCheckpointState, type CheckpointState } from '../run/checkpoint';
import { modelFingerprint, type TrainConfig } from '../run/config';
import { DataError, scanImageFolder, type BadImagePolicy, type DataSource } from '../data/datasets';
import { embed } from './evaluate';
import { readGallery, writeGallery, type Gallery } from './gallery';
import { readImage } from '../data/images';
import type { VerificationResult } from './protocol';
import { setupTf, type Tf, type TfBackendName } from '../model/tf';

/** A run's backbone, ready to embed, with what the run says about it. */
export interface TrainedModel extends RunInfo {
  tf: Tf;
  model: TF.LayersModel;
  dispose(): void;
}

/** What a run folder says about its model, before anything is loaded. */
export interface RunInfo {
  run: string;
  cfg: TrainConfig;
  state: CheckpointState;
  fingerprint: Record<string, unknown>;
}

/** Reads a run folder's config.json and checkpoint state, checking that the two agree. */
export function readRun(checkpoint: string): RunInfo {
  const run = path.resolve(checkpoint);
  const cfgFile = path.join(run, 'config.json');
  if (!fs.existsSync(run)) throw new CheckpointMismatchError(`Checkpoint folder not found: ${run}`);
  if (!fs.existsSync(cfgFile)) throw new CheckpointMismatchError(`${run} is not a margin-softmax run folder (no config.json)`);
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as TrainConfig;
  const state = readCheckpointState(run);
  if (!state) throw new CheckpointMismatchError(`No checkpoint in ${checkpointDir(run)}`);
  // The configuration file and the checkpoint must agree (a checkpoint copied from another run does not).
  const fingerprint = modelFingerprint(cfg, state.trainClasses.length);
  checkFingerprint(state, fingerprint, checkpointDir(run));
  return { run, cfg, state, fingerprint };
}

/** Loads the run's backbone (on its tfjs backend unless told otherwise) and checks its shapes against config.json. */
export async function loadModel(info: RunInfo, o: { tfBackend?: TfBackendName } = {}): Promise<TrainedModel> {
  const { run, cfg } = info;
  const tf = await setupTf(o.tfBackend ?? cfg.tfBackend);
  const model = await loadBackbone(tf, run);
  const inShape = model.inputs[0].shape;
  if (inShape[1] !== cfg.height || inShape[2] !== cfg.width || inShape[3] !== cfg.channels || model.outputs[0].shape[1] !== cfg.dim) {
    model.dispose();
    throw new CheckpointMismatchError(`Backbone in ${checkpointDir(run)} has input ${inShape.slice(1).join('×')} and dim ${model.outputs[0].shape[1]}, but config.json says ${cfg.height}×${cfg.width}×${cfg.channels} and dim ${cfg.dim}`);
  }
  return { ...info, tf, model, dispose: () => model.dispose() };
}

/** readRun, then loadModel. */
export async function openModel(checkpoint: string, o: { tfBackend?: TfBackendName } = {}): Promise<TrainedModel> {
  return loadModel(readRun(checkpoint), o);
}

export interface EmbedFilesOptions {
  /** Average with the mirror image's embedding (default: the run's --eval-flip). */
  flip?: boolean;
  onBadImage?: BadImagePolicy;
  warn?: (msg: string) => void;
}

/**
 * L2-normalised embeddings of image files, in order; with onBadImage 'skip'
 * an unreadable file is left out and `kept` lists the indices of the others.
 */
export function embedFiles(m: TrainedModel, files: string[], o: EmbedFilesOptions = {}): { embeddings: Float32Array; dim: number; kept: number[] } {
  const dim = m.cfg.dim;
  const parts: Float32Array[] = [];
  const kept: number[] = [];
  // Chunks of files as a data source whose classes are the files themselves:
  // the labels evaluate.embed returns are then the indices of the files kept.
  const CHUNK = 256;
  for (let start = 0; start < files.length; start += CHUNK) {
    const chunk = files.slice(start, start + CHUNK);
    const names = chunk.map((_, i) => String(i));
    const src: DataSource = {
      id: 'files',
      name: 'images',
      classes: names,
      samples: chunk.map((ref, label) => ({ label, ref })),
      read: (s) => readImage(s.ref),
    };
    const r = embed(m.tf, m.model, src, names, {
      height: m.cfg.height,
      width: m.cfg.width,
      channels: m.cfg.channels,
      batchSize: 64,
      flip: o.flip ?? m.cfg.evalFlip,
      onBadImage: o.onBadImage ?? 'stop',
      warn: o.warn,
    });
    parts.push(r.emb);
    for (const l of r.labels) kept.push(start + l);
  }
  const embeddings = new Float32Array(kept.length * dim);
  let off = 0;
  for (const p of parts) {
    embeddings.set(p, off);
    off += p.length;
  }
  return { embeddings, dim, kept };
}

export interface EmbedFolderOptions extends EmbedFilesOptions {
  checkpoint: string;
  /** ImageFolder root: one sub-folder of images per identity. */
  data: string;
  /** The gallery file to write (safetensors). */
  out: string;
  tfBackend?: TfBackendName;
}

/** Embeds every image of an ImageFolder and writes the gallery file. */
export async function embedFolder(o: EmbedFolderOptions): Promise<{ file: string; images: number; identities: number; dim: number; skipped: number }> {
  const src = scanImageFolder(o.data);
  const m = await openModel(o.checkpoint, o);
  try {
    const files = src.samples.map((s) => s.ref);
    const r = embedFiles(m, files, o);
    const gallery: Gallery = {
      embeddings: r.embeddings,
      dim: r.dim,
      paths: r.kept.map((i) => files[i]),
      labels: r.kept.map((i) => src.classes[src.samples[i].label]),
      model: { run: m.run, epoch: m.state.epoch, fingerprint: m.fingerprint },
    };
    writeGallery(o.out, gallery);
    return { file: path.resolve(o.out), images: r.kept.length, identities: new Set(gallery.labels).size, dim: r.dim, skipped: files.length - r.kept.length };
  } finally {
    m.dispose();
  }
}

/**
 * The verification threshold of a run: the mean over the folds of the
 * thresholds its last evaluation chose (each on the other folds), from
 * eval.json. Null when the run has no evaluation.
 */
export function runThreshold(run: string): number | null {
  const file = path.join(path.resolve(run), 'eval.json');
  if (!fs.existsSync(file)) return null;
  const ev = JSON.parse(fs.readFileSync(file, 'utf8')) as { after?: VerificationResult | null };
  const t = ev.after?.accuracy?.thresholds;
  if (!Array.isArray(t) || !t.length || !t.every(Number.isFinite)) return null;
  return t.reduce((a, b) => a + b, 0) / t.length;
}

export interface VerifyPairOptions extends EmbedFilesOptions {
  checkpoint: string;
  images: [string, string];
  /** Overrides the run's threshold. */
  threshold?: number;
  tfBackend?: TfBackendName;
}

export interface VerifyPairResult {
  cosine: number;
  threshold: number;
  same: boolean;
  /** 'run' (eval.json of the checkpoint's run) or 'given'. */
  thresholdFrom: 'run' | 'given';
}

export async function verifyPair(o: VerifyPairOptions): Promise<VerifyPairResult> {
  if (!Array.isArray(o.images) || o.images.length !== 2) throw new ArgumentError(`Expected two images for verify but received ${Array.isArray(o.images) ? o.images.length : typeof o.images}`);
  if (o.threshold !== undefined && !(Number.isFinite(o.threshold) && Math.abs(o.threshold) <= 1)) {
    throw new ArgumentError(`Expected a cosine threshold in [-1, 1] but received ${o.threshold}`);
  }
  const threshold = o.threshold ?? runThreshold(o.checkpoint);
  if (threshold === null) {
    throw new CheckpointMismatchError(`${path.resolve(o.checkpoint)} has no evaluation (eval.json) to take a threshold from: give --threshold, or train with --eval-every ≥ 1`);
  }
  const m = await openModel(o.checkpoint, o);
  try {
    const { embeddings: e, dim } = embedFiles(m, o.images, { ...o, onBadImage: 'stop' });
    let cosine = 0;
    for (let k = 0; k < dim; k++) cosine += e[k] * e[dim + k];
    // The protocol accepts a pair when its score is above the threshold.
    return { cosine, threshold, same: cosine > threshold, thresholdFrom: o.threshold === undefined ? 'run' : 'given' };
  } finally {
    m.dispose();
  }
}

export interface Match {
  identity: string;
  /** Cosine of the probe with the identity's closest gallery image. */
  score: number;
  /** That gallery image. */
  path: string;
}

/**
 * The top-k identities of each probe (rows of `probes`, L2-normalised), an
 * identity scored by its closest gallery image. The k best identities are
 * among the (k − 1)·m + 1 best rows, m the most images of one identity, so
 * finding that many rows is exact. The gallery is searched in chunks of
 * `chunkRows` rows, each chunk the "classes" of a MarginHead whose top-k
 * streams over them in blocks: memory beyond the gallery is one chunk's copy
 * and probes × rows candidates, never probes × gallery scores.
 */
export function topIdentities(gallery: Gallery, probes: Float32Array, k: number, o: { threads?: number; chunkRows?: number } = {}): Match[][] {
  const G = gallery.paths.length;
  const dim = gallery.dim;
  if (!G) throw new ArgumentError(`Expected a non-empty gallery but received 0 images`);
  if (probes.length % dim !== 0) throw new ArgumentError(`Expected probes of dim ${dim} but received ${probes.length} values`);
  if (!Number.isInteger(k) || k < 1) throw new ArgumentError(`Expected an integer k ≥ 1 for the number of identities but received ${k}`);
  const chunkRows = o.chunkRows ?? 1 << 16;
  if (!Number.isInteger(chunkRows) || chunkRows < 1) throw new ArgumentError(`Expected an integer ≥ 1 for chunkRows but received ${chunkRows}`);
  const perIdentity = new Map<string, number>();
  let most = 0;
  for (const l of gallery.labels) {
    const c = (perIdentity.get(l) ?? 0) + 1;
    perIdentity.set(l, c);
    if (c > most) most = c;
  }
  const kIds = Math.min(k, perIdentity.size);
  const rows = Math.min(G, (kIds - 1) * most + 1);
  const n = probes.length / dim;
  // Per probe the best `rows` (score, gallery row) found so far, best first.
  const best: { score: number; row: number }[][] = Array.from({ length: n }, () => []);
  for (let start = 0; start < G && n; start += chunkRows) {
    const count = Math.min(chunkRows, G - start);
    const kc = Math.min(rows, count);
    const head = new MarginHead({ classes: count, dim, margin: { kind: 'softmax' }, init: gallery.embeddings.subarray(start * dim, (start + count) * dim), optimizer: { lr: 0 }, threads: o.threads });
    let top: { classes: Int32Array; scores: Float32Array };
    try {
      top = head.predict(probes, kc);
    } finally {
      head.dispose();
    }
    for (let i = 0; i < n; i++) {
      const merged = best[i];
      for (let j = 0; j < kc; j++) {
        const c = top.classes[i * kc + j];
        if (c >= 0) merged.push({ score: top.scores[i * kc + j], row: start + c });
      }
      // Ties by gallery order, so the result does not depend on the chunking.
      merged.sort((a, b) => b.score - a.score || a.row - b.row);
      merged.length = Math.min(merged.length, rows);
    }
  }
  return best.map((cands) => {
    const matches: Match[] = [];
    const seen = new Set<string>();
    for (const { score, row } of cands) {
      const identity = gallery.labels[row];
      if (seen.has(identity)) continue;
      seen.add(identity);
      matches.push({ identity, score, path: gallery.paths[row] });
      if (matches.length === kIds) break;
    }
    return matches;
  });
}

export interface IdentifyOptions extends EmbedFilesOptions {
  checkpoint: string;
  /** Gallery file written by embedFolder (the `embed` command). */
  gallery: string;
  images: string[];
  /** Identities per probe (default 5). */
  top?: number;
  threads?: number;
  tfBackend?: TfBackendName;
}

export async function identify(o: IdentifyOptions): Promise<{ image: string; matches: Match[] }[]> {
  if (!o.images.length) throw new ArgumentError('Expected at least one probe image for identify but received none');
  const gallery = readGallery(o.gallery);
  const m = await openModel(o.checkpoint, o);
  try {
    // A gallery embedded by another model lives in another space: refuse it.
    const same = JSON.stringify(gallery.model.fingerprint) === JSON.stringify(m.fingerprint) && gallery.model.epoch === m.state.epoch;
    if (!same || gallery.dim !== m.cfg.dim) {
      throw new CheckpointMismatchError(
        `Gallery ${path.resolve(o.gallery)} was embedded by ${gallery.model.run} (epoch ${gallery.model.epoch}), not by the checkpoint ${m.run} (epoch ${m.state.epoch}): embed the gallery again with this checkpoint`,
      );
    }
    const probes = embedFiles(m, o.images, { ...o, onBadImage: 'stop' });
    const top = topIdentities(gallery, probes.embeddings, o.top ?? 5, o);
    return o.images.map((image, i) => ({ image, matches: top[i] }));
  } finally {
    m.dispose();
  }
}

/** For the command line: a missing image is a data error, named. */
export function checkImagesExist(files: string[]): void {
  for (const f of files) if (!fs.existsSync(f)) throw new DataError(`Image not found: ${path.resolve(f)}`);
}
