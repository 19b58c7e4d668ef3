/**
 * The `eval` command as a function (the CLI parses the arguments and calls
 * it; tests call it directly): a run's checkpoint evaluated on its held-out
 * identities (or every identity of another data set), verification and Rank-1,
 * optionally N-way K-shot classification on the same embeddings.
 *
 * Several checkpoints are evaluated as an ensemble: each model's L2-normalised
 * embedding, concatenated and normalised again, so that the cosine of two
 * images is the mean of the members' cosines. The members must have been
 * trained on the same data and input shape and hold out the same identities
 * (runs of one recipe with different --seed); each member's own figure is
 * reported beside the ensemble's.
 */
import { CheckpointMismatchError } from '../run/checkpoint';
import { openSource, type TrainConfig } from '../run/config';
import { DataError, type DataSource } from '../data/datasets';
import { loadModel, readRun, type RunInfo } from '../eval/embed';
import { embed } from '../eval/evaluate';
import { nWayKShot, formatOneShot, type OneShotOptions, type OneShotResult } from '../eval/oneshot';
import { formatVerification, l2normalize, verify, type VerificationResult } from '../eval/protocol';
import type { TfBackendName } from '../model/tf';

export interface EvalOptions {
  /** The run folder (holding config.json and checkpoint/); several: their ensemble. */
  checkpoint: string | string[];
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
  /** The checkpoint's epoch (an ensemble: its first member's). */
  epoch: number;
  /** An ensemble's members, in order: each one's own verification on the same pairs. */
  members?: { run: string; epoch: number; result: VerificationResult }[];
}

/** One model's L2-normalised embeddings of the evaluated images, with their labels. */
type Embeddings = ReturnType<typeof embed>;

/** An ensemble's members must embed the same images the same way and hold out the same identities. */
function checkEnsemble(infos: RunInfo[]): void {
  const [first, ...rest] = infos;
  for (const other of rest) {
    for (const k of ['height', 'width', 'channels'] as const) {
      if (other.cfg[k] !== first.cfg[k]) {
        throw new CheckpointMismatchError(`The checkpoints of an ensemble must share the input shape: ${k} is ${first.cfg[k]} in ${first.run} but ${other.cfg[k]} in ${other.run}`);
      }
    }
    const same = other.state.dataId === first.state.dataId && other.state.valClasses.join('\n') === first.state.valClasses.join('\n');
    if (!same) {
      throw new CheckpointMismatchError(`The checkpoints of an ensemble must be trained on the same data with the same held-out identities: ${other.run} differs from ${first.run} (use one --split-seed)`);
    }
  }
}

export async function runEval(o: EvalOptions): Promise<EvalOutput> {
  const runs = Array.isArray(o.checkpoint) ? o.checkpoint : [o.checkpoint];
  if (!runs.length) throw new CheckpointMismatchError('Expected at least one checkpoint for eval but received none');
  const infos = runs.map((r) => readRun(r));
  for (const { run, cfg } of infos) {
    for (const [k, v] of Object.entries(o.expect ?? {})) {
      if (v !== undefined && (cfg as unknown as Record<string, unknown>)[k] !== v) {
        throw new CheckpointMismatchError(`Checkpoint ${run} comes from another configuration: ${k} is ${(cfg as unknown as Record<string, unknown>)[k]} there, ${v} on the command line`);
      }
    }
  }
  checkEnsemble(infos);
  const { run, cfg, state } = infos[0];
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
  const seed = o.seed ?? cfg.evalSeed;
  // Each member's L2-normalised embeddings of the same images, in the same order.
  const parts: Embeddings[] = [];
  for (const info of infos) {
    const { tf, model } = await loadModel(info, o);
    try {
      parts.push(embed(tf, model, src, identities, {
        height: cfg.height,
        width: cfg.width,
        channels: cfg.channels,
        batchSize: 64,
        flip: o.flip ?? info.cfg.evalFlip,
        onBadImage: o.onBadImage ?? info.cfg.onBadImage,
        warn: o.log,
      }));
    } finally {
      model.dispose();
    }
  }
  const { emb, labels, dim } = parts.length === 1 ? parts[0] : concatenate(parts);
  const result = verify(emb, dim, labels, { seed });
  const members = parts.length > 1
    ? parts.map((p, k) => ({ run: infos[k].run, epoch: infos[k].state.epoch, result: verify(p.emb, p.dim, p.labels, { seed }) }))
    : undefined;
  const what = members ? `ensemble of ${members.length} checkpoints` : `checkpoint ${run} (epoch ${state.epoch})`;
  let text = formatVerification(result, `${what} on ${src.name}`);
  if (members) {
    text += '\nmembers (each alone, same pairs):';
    for (const m of members) text += `\n  ${m.run} (epoch ${m.epoch}): ${(100 * m.result.accuracy.mean).toFixed(2)} %`;
  }
  const oneShot = o.oneShot ? nWayKShot(emb, dim, labels, { ...o.oneShot, seed }) : undefined;
  if (oneShot) text += '\n' + formatOneShot(oneShot, seed);
  return { result, oneShot, identities, text, epoch: state.epoch, members };
}

/** The members' embeddings side by side, normalised: the cosine of two rows is the mean of the members' cosines. */
function concatenate(parts: Embeddings[]): Embeddings {
  const n = parts[0].labels.length;
  const dim = parts.reduce((a, p) => a + p.dim, 0);
  const emb = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    let off = i * dim;
    for (const p of parts) {
      emb.set(p.emb.subarray(i * p.dim, (i + 1) * p.dim), off);
      off += p.dim;
    }
  }
  return { emb: l2normalize(emb, dim), labels: parts[0].labels, dim };
}
