/**
 * The `eval` command as a function (the CLI parses the arguments and calls
 * it; tests call it directly): a run's checkpoint evaluated on its held-out
 * identities (or every identity of another data set), verification and Rank-1,
 * optionally N-way K-shot classification on the same embeddings.
 */
import { CheckpointMismatchError } from '../run/checkpoint';
import { openSource, type TrainConfig } from '../run/config';
import { DataError, type DataSource } from '../data/datasets';
import { loadModel, readRun } from '../eval/embed';
import { embed } from '../eval/evaluate';
import { nWayKShot, formatOneShot, type OneShotOptions, type OneShotResult } from '../eval/oneshot';
import { formatVerification, verify, type VerificationResult } from '../eval/protocol';
import type { TfBackendName } from '../model/tf';

export interface EvalOptions {
  /** The run folder (holding config.json and checkpoint/). */
  checkpoint: string;
  /** Data folder; default: the data the run was trained on. '' or null = the embedded default. */
  data?: string | null;
  /** Evaluate every identity of --data (for a data set other than the training one). */
  allIdentities?: boolean;
  flip?: boolean;
  seed?: number;
  tfBackend?: TfBackendName;
  onBadImage?: 'skip' | 'stop';
  /** Options given on the command line that must agree with the checkpoint. */
  expect?: Partial<Pick<TrainConfig, 'height' | 'width' | 'channels' | 'dim'>>;
  /** Also N-way K-shot classification on the same embeddings (seed: `seed`). */
  oneShot?: Omit<OneShotOptions, 'seed'>;
  log?: (msg: string) => void;
}

export interface EvalOutput {
  result: VerificationResult;
  oneShot?: OneShotResult;
  identities: string[];
  text: string;
  epoch: number;
}

export async function runEval(o: EvalOptions): Promise<EvalOutput> {
  const info = readRun(o.checkpoint);
  const { run, cfg, state } = info;
  for (const [k, v] of Object.entries(o.expect ?? {})) {
    if (v !== undefined && (cfg as unknown as Record<string, unknown>)[k] !== v) {
      throw new CheckpointMismatchError(`Checkpoint ${run} comes from another configuration: ${k} is ${(cfg as unknown as Record<string, unknown>)[k]} there, ${v} on the command line`);
    }
  }
  const dataDir = o.data === undefined ? cfg.data : o.data || null;
  const src: DataSource = openSource({ data: dataDir, mnistPerClass: cfg.mnistPerClass, mnistEvalPerClass: cfg.mnistEvalPerClass });
  let identities: string[];
  const have = new Set(src.classes);
  if (!o.allIdentities && src.id === state.dataId) {
    const missing = state.valClasses.filter((c) => !have.has(c));
    if (missing.length) throw new DataError(`The held-out identities of the run are missing from ${src.name}: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`);
    identities = state.valClasses;
  } else {
    identities = src.classes.filter((c) => src.samples.some((s) => src.classes[s.label] === c));
    const seen = new Set(state.trainClasses);
    const overlap = src.id === state.dataId ? identities.filter((c) => seen.has(c)) : [];
    if (overlap.length) (o.log ?? console.error)(`warning: ${overlap.length} of the ${identities.length} identities were training identities of this checkpoint`);
  }
  const { tf, model } = await loadModel(info, o);
  try {
    const seed = o.seed ?? cfg.evalSeed;
    const { emb, labels, dim } = embed(tf, model, src, identities, {
      height: cfg.height,
      width: cfg.width,
      channels: cfg.channels,
      batchSize: 64,
      flip: o.flip ?? cfg.evalFlip,
      onBadImage: o.onBadImage ?? cfg.onBadImage,
      warn: o.log,
    });
    const result = verify(emb, dim, labels, { seed });
    let text = formatVerification(result, `checkpoint ${run} (epoch ${state.epoch}) on ${src.name}`);
    const oneShot = o.oneShot ? nWayKShot(emb, dim, labels, { ...o.oneShot, seed }) : undefined;
    if (oneShot) text += '\n' + formatOneShot(oneShot, seed);
    return { result, oneShot, identities, text, epoch: state.epoch };
  } finally {
    model.dispose();
  }
}
