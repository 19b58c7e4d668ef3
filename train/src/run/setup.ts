/**
 * A run's setup, in the order train() calls it: the options, the data and its
 * identity split (openRun); the run folder, cleared (--overwrite) or checked
 * for a checkpoint to resume (prepareRunFolder); the backbone and the margin
 * head, loaded or initialised (buildModelAndHead); config.json; the
 * optimizer; the worker replicas; and the run state over them (assembleRun),
 * with the history a resumed run keeps.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { ArgumentError, MarginHead, mpiCommunicator, ShardedMarginHead } from 'margin-softmax';
import { checkAffineRanges } from '../data/augment';
import { checkPhotometricRanges } from '../data/photometric';
import { DataError, splitByIdentity, subset } from '../data/datasets';
import { DecodedCache } from '../data/decoded-cache';
import { splitByGroups } from '../data/group-split';
import { evaluateVerification } from '../eval/evaluate';
import { buildBackbone, countParams } from '../model/backbone';
import { BackboneSgd } from '../model/optimizer';
import type { Tf } from '../model/tf';
import { checkFingerprint, CheckpointMismatchError, loadBackbone, loadHead, loadInitialBackbone, loadOptimizerState, readCheckpointState, type CheckpointState } from './checkpoint';
import { affineOf, backboneOf, marginLabel, modelFingerprint, openSource, photometricOf, type TrainConfig } from './config';
import { agreeOnResume, broadcastVariables, headShardsDir, loadShardedHead } from './distributed';
import { makeHeadLoss } from './head-loss';
import { readJsonl, writeJsonl, type EpochRecord, type ThetaRow } from './metrics';
import { BackboneReplicas } from './replicas';
import type { RunContext, RunData, RunModel, RunState, TrainHooks } from './state';

/** Options, logging, the data and its identity split. */
export function openRun(cfg: TrainConfig, hooks: TrainHooks): { ctx: RunContext; data: RunData } {
  const t0 = Date.now();
  const verbose = hooks.verbose ?? true;
  // --distributed mpi: this process is one rank; rank 0 alone logs, evaluates
  // and writes the run folder, every rank writes its shard of the head.
  const comm = cfg.distributed === 'mpi' ? mpiCommunicator() : null;
  const isRoot = !comm || comm.rank === 0;
  checkAffineRanges(affineOf(cfg));
  checkPhotometricRanges(photometricOf(cfg));
  if (!(Number.isSafeInteger(cfg.workers) && cfg.workers >= 1)) throw new ArgumentError(`Expected an integer ≥ 1 for workers but received ${cfg.workers}`);
  // MPI ranks are the data-parallel replicas already.
  if (comm && cfg.workers > 1) throw new ArgumentError(`Expected --workers 1 with --distributed mpi (one backbone per rank) but received --workers ${cfg.workers}`);
  const log = !isRoot ? () => {} : hooks.log ?? ((m: string) => verbose && process.stderr.write(`${m}\n`));
  const out = path.resolve(cfg.out);
  const src = openSource(cfg);
  const split = cfg.valGroups?.length ? splitByGroups(src, cfg.valGroups) : splitByIdentity(src, { count: cfg.valClasses ?? undefined, fraction: cfg.valFraction }, cfg.splitSeed);
  const trainSamples = subset(src, split.trainClasses);
  if (trainSamples.length < 2) throw new DataError(`Only ${trainSamples.length} training images in ${src.name}`);
  const warned = new Set<string>();
  const warn = (m: string) => {
    if (!warned.has(m)) {
      warned.add(m);
      log(m);
    }
  };
  const files = { metrics: path.join(out, 'metrics.jsonl'), theta: path.join(out, 'theta.jsonl'), eval: path.join(out, 'eval.json') };
  const fingerprint = modelFingerprint(cfg, split.trainClasses.length);
  return {
    ctx: { cfg, hooks, t0, verbose, comm, isRoot, log, warn, out, files, fingerprint },
    data: { src, split, trainSamples, cache: new DecodedCache(src, { height: cfg.height, width: cfg.width, channels: cfg.channels }), badRefs: new Set<string>() },
  };
}

/** Creates (or clears, --overwrite) the run folder; returns the checkpoint to resume, checked against this run. */
export function prepareRunFolder(ctx: RunContext, data: RunData): CheckpointState | null {
  const { hooks, out, comm } = ctx;
  fs.mkdirSync(out, { recursive: true });
  if (hooks.overwrite && !hooks.resume) {
    if (ctx.isRoot) for (const f of ['checkpoint', 'metrics.jsonl', 'theta.jsonl', 'eval.json', 'plots']) fs.rmSync(path.join(out, f), { recursive: true, force: true });
    fs.rmSync(headShardsDir(out), { recursive: true, force: true });
  }
  comm?.barrier(); // the other ranks look at the folder once rank 0 has cleared it
  if (!comm) return resumeDecision(ctx, data);
  // Distributed: rank 0 decides from its run checkpoint, the other ranks get the epoch and the head's step.
  let state: CheckpointState | null = null;
  const point = agreeOnResume(comm, () => {
    state = resumeDecision(ctx, data);
    return state && { epoch: state.epoch, step: state.step, batchesDone: state.batchesDone ?? 0 };
  });
  // The rest of the state is rank 0's business.
  return state ?? (point && ({ format: 'margin-softmax/run', version: 1, ...point } as CheckpointState));
}

function resumeDecision(ctx: RunContext, data: RunData): CheckpointState | null {
  const { hooks, out } = ctx;
  const existing = readCheckpointState(out);
  if (hooks.resume) {
    if (!existing) throw new CheckpointMismatchError(`Nothing to resume: ${path.join(out, 'checkpoint')} holds no checkpoint`);
    checkResumable(ctx, data, existing);
    return existing;
  }
  if (existing) {
    throw new CheckpointMismatchError(`${out} already holds a checkpoint (epoch ${existing.epoch}): pass --resume to continue it, --overwrite to start afresh, or choose another --out`);
  }
  return null;
}

/** A checkpoint can be resumed only with the same model, data and identity split. */
function checkResumable(ctx: RunContext, data: RunData, existing: CheckpointState): void {
  const { out } = ctx;
  const { src, split } = data;
  checkFingerprint(existing, ctx.fingerprint, path.join(out, 'checkpoint'));
  if (existing.dataId !== src.id) {
    throw new CheckpointMismatchError(`Checkpoint in ${out} was trained on ${existing.dataId}, not ${src.id}`);
  }
  if (JSON.stringify(existing.trainClasses) !== JSON.stringify(split.trainClasses)) {
    throw new CheckpointMismatchError(`Checkpoint in ${out} used another identity split (different --split-seed, --val-classes or data)`);
  }
}

/** The backbone and the head: loaded from the checkpoint, or initialised from the seed. */
export async function buildModelAndHead(
  ctx: RunContext,
  data: RunData,
  tf: Tf,
  resumed: CheckpointState | null,
): Promise<{ backbone: TF.LayersModel; head: MarginHead; sharded: ShardedMarginHead | null }> {
  const { cfg, out, comm } = ctx;
  const { split } = data;
  if (resumed && comm) {
    // Rank 0's backbone reaches the others in makeOptimizer; each rank reads its head shards.
    const backbone = ctx.isRoot ? await loadBackbone(tf, out) : buildBackbone(tf, backboneOf(cfg), cfg.seed);
    const sharded = loadShardedHead(out, comm, resumed.step);
    return { backbone, head: sharded.shard, sharded };
  }
  if (resumed) {
    const backbone = await loadBackbone(tf, out);
    const head = loadHead(out, cfg.backend);
    if (head.classes !== split.trainClasses.length || head.dim !== cfg.dim) {
      throw new CheckpointMismatchError(`Head checkpoint has ${head.classes} classes × ${head.dim}, expected ${split.trainClasses.length} × ${cfg.dim}`);
    }
    return { backbone, head, sharded: null };
  }
  // --init-from: rank 0 loads the other run's backbone; the other ranks get it in makeOptimizer.
  const backbone = cfg.initFrom && ctx.isRoot ? await loadInitialBackbone(tf, cfg.initFrom, backboneOf(cfg)) : buildBackbone(tf, backboneOf(cfg), cfg.seed);
  const headOptions = {
    classes: split.trainClasses.length,
    dim: cfg.dim,
    margin: cfg.margin,
    scale: cfg.scale,
    seed: cfg.seed,
    threads: cfg.threads || undefined,
    backend: cfg.backend,
    optimizer: { lr: cfg.lr * cfg.headLrMult, momentum: cfg.momentum, weightDecay: cfg.weightDecay },
  };
  if (!comm) return { backbone, head: new MarginHead(headOptions), sharded: null };
  const sharded = new ShardedMarginHead({ ...headOptions, comm });
  return { backbone, head: sharded.shard, sharded };
}

/** config.json records the backend the head really runs on beside the requested one. */
export function writeRunConfig(ctx: RunContext, data: RunData, head: MarginHead): void {
  const { cfg, out } = ctx;
  const { split, src } = data;
  if (ctx.isRoot) fs.writeFileSync(path.join(out, 'config.json'), JSON.stringify({ ...cfg, out, split, dataId: src.id, headBackend: head.backend }, null, 2));
}

/**
 * The backbone's SGD, with its momentum restored on --resume. Over MPI ranks
 * rank 0's weights (batch-norm statistics included) and momentum are copied
 * to the others, so the replicas start equal.
 */
export function makeOptimizer(ctx: RunContext, tf: Tf, backbone: TF.LayersModel, resumed: CheckpointState | null): BackboneSgd {
  const { cfg, comm, out } = ctx;
  const optimizer = new BackboneSgd(tf, backbone.trainableWeights, { momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  if (resumed && ctx.isRoot) {
    const named = loadOptimizerState(tf, out);
    optimizer.setState(named);
    tf.dispose(Object.values(named));
  }
  if (comm) {
    broadcastVariables(tf, comm, backbone.weights.map((w) => w.read() as TF.Variable));
    if (resumed) broadcastVariables(tf, comm, optimizer.state().map((st) => st.tensor as TF.Variable));
  }
  return optimizer;
}

/** --workers N: N − 1 worker replicas beside this thread's model. */
export async function startReplicas(ctx: RunContext, tf: Tf, backbone: TF.LayersModel): Promise<BackboneReplicas | null> {
  const { cfg } = ctx;
  if (cfg.workers === 1) return null;
  return BackboneReplicas.start(tf, backbone, cfg.workers, { backbone: backboneOf(cfg), seed: cfg.seed, tfBackend: cfg.tfBackend, maxRows: cfg.batchSize });
}

/** The run state over the built parts: the loss through the head, the verification, and the history a resumed run keeps. */
export function assembleRun(
  ctx: RunContext,
  data: RunData,
  tf: Tf,
  resumed: CheckpointState | null,
  parts: Pick<RunModel, 'backbone' | 'head' | 'sharded' | 'optimizer' | 'replicas'>,
): RunState {
  const model: RunModel = {
    ...parts,
    tf,
    params: countParams(parts.backbone),
    loss: makeHeadLoss(ctx.cfg, tf, parts.head, parts.sharded, parts.replicas),
    evaluate: () => null,
  };
  model.evaluate = verificationOf(ctx, data, model);
  const progress = {
    resumed,
    ...restoreHistory(ctx, resumed),
    before: null,
    after: null,
    stopRequested: false,
    stopped: false,
    batchesRun: 0,
    totalImages: 0,
    totalSeconds: 0,
    totalHeadSeconds: 0,
  };
  return { ctx, data, model, progress };
}

/** The metrics and θ rows of the epochs a resumed run keeps (none for a fresh run), written back as the files' content. */
function restoreHistory(ctx: RunContext, resumed: CheckpointState | null): { records: EpochRecord[]; thetas: ThetaRow[] } {
  const startEpoch = resumed ? resumed.epoch : 0;
  const records = readJsonl<EpochRecord>(ctx.files.metrics).filter((r) => resumed && r.epoch <= startEpoch);
  const thetas = readJsonl<ThetaRow>(ctx.files.theta).filter((r) => resumed && r.epoch <= startEpoch);
  if (ctx.isRoot) {
    writeJsonl(ctx.files.metrics, records);
    writeJsonl(ctx.files.theta, thetas);
  }
  return { records, thetas };
}

/** Verification on the held-out identities (rank 0 only; null on the other ranks). */
function verificationOf(ctx: RunContext, data: RunData, model: RunModel): () => ReturnType<RunModel['evaluate']> {
  const { cfg } = ctx;
  const opts = { height: cfg.height, width: cfg.width, channels: cfg.channels, batchSize: 64, flip: cfg.evalFlip, onBadImage: cfg.onBadImage, warn: ctx.warn, seed: cfg.evalSeed };
  return () => (ctx.isRoot ? evaluateVerification(model.tf, model.backbone, data.src, data.split.valClasses, opts) : null);
}

export function logRunHeader(run: RunState): void {
  const { cfg } = run.ctx;
  const { src, split } = run.data;
  run.ctx.log(
    `margin-softmax train: ${src.name}: ${split.trainClasses.length} training identities (${run.data.trainSamples.length} images), ` +
      `${split.valClasses.length} held-out identities for verification; ResNet widths ${cfg.widths.join('/')}×${cfg.blocks} ` +
      `(${(run.model.params / 1e6).toFixed(2)} M params), input ${cfg.height}×${cfg.width}×${cfg.channels}, dim ${cfg.dim}; ` +
      `loss ${marginLabel(cfg.margin)} s=${cfg.scale}; head backend ${run.model.head.backend}; tfjs backend ${run.model.tf.getBackend()}; out ${run.ctx.out}`,
  );
}
