/**
 * Checkpoints of a run, one folder `<out>/checkpoint/`:
 *   model.json + weights.bin   the backbone, tfjs's own layers-model format,
 *                              written and read through file IOHandlers
 *   head.safetensors           MarginHead.save (centres, momentum, config)
 *   optimizer.json + .bin      the backbone's momentum buffers (tfjs weight format)
 *   state.json                 epoch, step, configuration fingerprint, split
 * A checkpoint is written to a temporary folder and swapped in by rename, so
 * an interrupted save leaves the previous checkpoint whole.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { MarginHead, removeStaleTemporaries } from 'margin-softmax';
import { fingerprintDiff } from './config';
import type { BackboneConfig } from '../model/backbone';
import type { BackboneSgd } from '../model/optimizer';
import type { Tf } from '../model/tf';

export class CheckpointMismatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointMismatchError';
  }
}

export interface CheckpointState {
  format: 'margin-softmax/run';
  version: 1;
  /** Completed epochs. */
  epoch: number;
  /** Batches of the next epoch already run: a distributed run stopped within it (absent: none). */
  batchesDone?: number;
  step: number;
  fingerprint: Record<string, unknown>;
  trainClasses: string[];
  valClasses: string[];
  dataId: string;
  /** Learning rate of the last completed epoch. */
  lr: number;
  savedAt: string;
}

function joinWeightData(tf: Tf, data: TF.io.WeightData | undefined): ArrayBuffer {
  if (!data) return new ArrayBuffer(0);
  return Array.isArray(data) ? tf.io.CompositeArrayBuffer.join(data) : (data as ArrayBuffer);
}

function writeFileSync(file: string, data: string | Uint8Array): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, data as never);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** An IOHandler that writes model.json + weights.bin into `dir` (tfjs's layers-model format). */
export function fileSaveHandler(tf: Tf, dir: string, metadata: Record<string, unknown> = {}): TF.io.IOHandler {
  return tf.io.withSaveHandler(async (artifacts) => {
    fs.mkdirSync(dir, { recursive: true });
    const weights = new Uint8Array(joinWeightData(tf, artifacts.weightData));
    writeFileSync(path.join(dir, 'weights.bin'), weights);
    const modelJson = {
      modelTopology: artifacts.modelTopology,
      format: artifacts.format ?? 'layers-model',
      generatedBy: artifacts.generatedBy,
      convertedBy: artifacts.convertedBy ?? null,
      weightsManifest: [{ paths: ['weights.bin'], weights: artifacts.weightSpecs }],
      userDefinedMetadata: { ...(artifacts.userDefinedMetadata ?? {}), ...metadata },
    };
    writeFileSync(path.join(dir, 'model.json'), JSON.stringify(modelJson));
    return {
      modelArtifactsInfo: {
        dateSaved: new Date(),
        modelTopologyType: 'JSON',
        modelTopologyBytes: JSON.stringify(artifacts.modelTopology).length,
        weightSpecsBytes: JSON.stringify(artifacts.weightSpecs).length,
        weightDataBytes: weights.byteLength,
      },
    };
  });
}

/** An IOHandler that reads model.json + the weight files it lists from `dir`. */
export function fileLoadHandler(dir: string): TF.io.IOHandler {
  return {
    load: async () => {
      const file = path.join(dir, 'model.json');
      if (!fs.existsSync(file)) throw new CheckpointMismatchError(`No backbone checkpoint: ${file} does not exist`);
      const json = JSON.parse(fs.readFileSync(file, 'utf8'));
      const specs: TF.io.WeightsManifestEntry[] = [];
      const buffers: Buffer[] = [];
      for (const group of json.weightsManifest as TF.io.WeightsManifestConfig[number][]) {
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
        specs.push(...group.weights);
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: json.modelTopology,
        format: json.format,
        generatedBy: json.generatedBy,
        convertedBy: json.convertedBy,
        weightSpecs: specs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
        userDefinedMetadata: json.userDefinedMetadata,
      };
    },
  };
}

export function checkpointDir(out: string): string {
  return path.join(out, 'checkpoint');
}

/**
 * Removes the `checkpoint.tmp-<pid>` folders of runs that were killed mid-save
 * (each can be as large as a whole checkpoint), never one whose process still runs.
 */
function removeStaleCheckpointFolders(out: string): void {
  removeStaleTemporaries(out, /^checkpoint\.tmp-(\d+)$/);
}

export async function saveCheckpoint(
  tf: Tf,
  out: string,
  // head: null where the head is sharded over ranks (each rank saves its shard).
  parts: { model: TF.LayersModel; head: MarginHead | null; optimizer: BackboneSgd; state: CheckpointState },
): Promise<void> {
  const final = checkpointDir(out);
  const tmp = `${final}.tmp-${process.pid}`;
  removeStaleCheckpointFolders(out); // ours included
  fs.mkdirSync(tmp, { recursive: true });
  await parts.model.save(fileSaveHandler(tf, tmp, { marginSoftmax: { fingerprint: parts.state.fingerprint, epoch: parts.state.epoch } }));
  parts.head?.save(path.join(tmp, 'head.safetensors'));
  const enc = await tf.io.encodeWeights(parts.optimizer.state());
  writeFileSync(path.join(tmp, 'optimizer.bin'), new Uint8Array(joinWeightData(tf, enc.data)));
  writeFileSync(path.join(tmp, 'optimizer.json'), JSON.stringify({ weights: enc.specs }));
  writeFileSync(path.join(tmp, 'state.json'), JSON.stringify(parts.state, null, 2));
  const old = `${final}.old`;
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(final)) fs.renameSync(final, old);
  fs.renameSync(tmp, final);
  fs.rmSync(old, { recursive: true, force: true });
}

/** Reads state.json (after recovering from a save interrupted between its two renames). */
export function readCheckpointState(out: string): CheckpointState | null {
  const final = checkpointDir(out);
  const old = `${final}.old`;
  removeStaleCheckpointFolders(out);
  if (!fs.existsSync(final) && fs.existsSync(old)) fs.renameSync(old, final);
  const file = path.join(final, 'state.json');
  if (!fs.existsSync(file)) return null;
  const s = JSON.parse(fs.readFileSync(file, 'utf8')) as CheckpointState;
  if (s.format !== 'margin-softmax/run') throw new CheckpointMismatchError(`${file} is not a margin-softmax run checkpoint`);
  return s;
}

/** Refuses a checkpoint whose fingerprint differs from the configuration now. */
export function checkFingerprint(state: CheckpointState, now: Record<string, unknown>, where: string): void {
  const diff = fingerprintDiff(state.fingerprint, now);
  if (diff.length) {
    throw new CheckpointMismatchError(
      `Checkpoint ${where} comes from another configuration:\n  ${diff.join('\n  ')}\n` +
        `Use the same options as the run that wrote it, or another --out folder.`,
    );
  }
}

export async function loadBackbone(tf: Tf, out: string): Promise<TF.LayersModel> {
  return tf.loadLayersModel(fileLoadHandler(checkpointDir(out)));
}

/**
 * The backbone of another run's checkpoint, to start this run from (--init-from):
 * refused unless its architecture (input size, channels, widths, blocks,
 * dropout, embedding size) is this run's. Reads that folder and changes nothing in it.
 */
export async function loadInitialBackbone(tf: Tf, dir: string, backbone: BackboneConfig): Promise<TF.LayersModel> {
  const file = path.join(checkpointDir(dir), 'state.json');
  if (!fs.existsSync(file)) throw new CheckpointMismatchError(`Nothing to start from: ${checkpointDir(dir)} holds no run checkpoint (--init-from takes the folder of a finished or saved run)`);
  const state = JSON.parse(fs.readFileSync(file, 'utf8')) as CheckpointState;
  if (state.format !== 'margin-softmax/run') throw new CheckpointMismatchError(`${file} is not a margin-softmax run checkpoint`);
  const saved: Record<string, unknown> = {};
  const now: Record<string, unknown> = {};
  for (const k of Object.keys(backbone) as (keyof BackboneConfig)[]) {
    saved[k] = state.fingerprint[k];
    now[k] = backbone[k];
  }
  const diff = fingerprintDiff(saved, now);
  if (diff.length) {
    throw new CheckpointMismatchError(
      `The backbone in ${checkpointDir(dir)} has another architecture than this run's:\n  ${diff.join('\n  ')}\n` + `Pass the options of the run that wrote it (--size, --channels, --widths, --blocks, --dropout, --dim).`,
    );
  }
  return loadBackbone(tf, dir);
}

export function loadHead(out: string, backend: 'auto' | 'cpu' | 'cuda' = 'auto'): MarginHead {
  return MarginHead.load(path.join(checkpointDir(out), 'head.safetensors'), { backend });
}

export function loadOptimizerState(tf: Tf, out: string): TF.NamedTensorMap {
  const dir = checkpointDir(out);
  const specs = JSON.parse(fs.readFileSync(path.join(dir, 'optimizer.json'), 'utf8')).weights;
  const buf = fs.readFileSync(path.join(dir, 'optimizer.bin'));
  return tf.io.decodeWeights(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength), specs);
}
