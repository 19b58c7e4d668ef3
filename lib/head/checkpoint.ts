/**
 * MarginHead's checkpoint format: one safetensors file holding 'weight'
 * [local classes, dim] F32, 'momentum' (same shape, when the optimizer's
 * momentum is > 0) and, in the header's metadata, format
 * 'margin-softmax/head', its version, the head's configuration (JSON, with
 * the defaults filled in) and the number of steps taken. Writing is atomic
 * (lib/io/safetensors.ts); reading checks the header, the configuration's
 * framing, the step count and every tensor's name, dtype and shape before a
 * byte of data is read.
 */
import { CheckpointError, readHeader, saveSafetensors, type SafetensorsHeader, type SaveHooks, type TensorEntry } from '../io/safetensors';
import type { HeadConfig, MarginHeadOptions } from './options';
import type { CentresStorage } from './storage';

export const FORMAT = 'margin-softmax/head';
export const FORMAT_VERSION = '1';

/** Writes the storage's tensors and the configuration to `file` (atomically). */
export function writeCheckpoint(file: string, centres: CentresStorage, config: HeadConfig, steps: number, hooks?: SaveHooks): void {
  const shape = [config.shard ? config.shard.count : config.classes, config.dim];
  const tensors: Record<string, TensorEntry> = {};
  for (const [name, data] of Object.entries(centres.checkpointTensors())) tensors[name] = { dtype: 'F32', shape, data };
  const metadata = {
    format: FORMAT,
    version: FORMAT_VERSION,
    config: JSON.stringify(config),
    steps: String(steps),
  };
  saveSafetensors(file, tensors, metadata, hooks);
}

/** A checkpoint's header, the head configuration it holds (its values are the constructor's to check) and its step count. */
export function readCheckpoint(file: string): { header: SafetensorsHeader; config: MarginHeadOptions; steps: number } {
  const header = readHeader(file);
  const config = checkpointConfig(file, header);
  const steps = parseSteps(file, header.metadata.steps);
  checkCheckpointTensors(file, header, config);
  return { header, config, steps };
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
