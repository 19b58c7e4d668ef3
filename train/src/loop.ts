/**
 * The training loop: a small ResNet (tfjs) trained with the MarginHead as its
 * loss (lib/tfjs.ts marginLoss), SGD with momentum and weight decay, a step
 * learning-rate schedule, horizontal-flip augmentation, streaming batches
 * from disk, per-epoch verification on held-out identities, JSONL metrics,
 * checkpoints every epoch, --resume, and a clean stop on Ctrl-C.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { ArgumentError, MarginHead, mpiCommunicator, ShardedMarginHead, type Communicator, type StepResult } from 'margin-softmax';
import { marginLoss, type MarginLossFn } from 'margin-softmax/tfjs';
import {
  checkFingerprint,
  CheckpointMismatchError,
  loadBackbone,
  loadHead,
  loadOptimizerState,
  readCheckpointState,
  saveCheckpoint,
  type CheckpointState,
} from './checkpoint';
import { backboneOf, marginLabel, modelFingerprint, type TrainConfig } from './config';
import { averageGradients, broadcastVariables, shareOf } from './distributed';
import { DecodedCache } from './decoded-cache';
import { splitByGroups } from './group-split';
import { DataError, mnistSource, scanImageFolder, splitByIdentity, subset, type DataSource, type LoadedBatch, type Sample, type Split } from './data';
import { evaluateVerification } from './evaluate';
import { flipHorizontal, shiftImage } from './images';
import { checkAffineRanges, drawAffine, isAffine, warpAffine, type AffineRanges } from './augment';
import { buildBackbone, countParams } from './model';
import { BackboneSgd } from './optimizer';
import { rocSpec, thetaSpec, trainingCurvesSpec, writeSvgs, type EpochMetrics, type VlSpec } from './plots';
import { clock, ProgressBar } from './progress';
import { formatVerification, type VerificationResult } from './protocol';
import { BackboneReplicas } from './replicas';
import { batchNormInTraining } from './sync-batch-norm';
import { Rng, subSeed } from './rng';
import { setupTf, type Tf } from './tf';

export interface EpochRecord {
  epoch: number;
  lr: number | null;
  loss: number | null;
  trainAcc: number | null;
  images: number;
  imgPerSec: number | null;
  trainSeconds: number;
  /** Of trainSeconds, the time in the head's fused step (forward, backward and update of the centres). */
  headSeconds?: number;
  theta: { mean: number; p10: number; p50: number; p90: number } | null;
  val: {
    accuracy: number;
    std: number;
    tar1e1: number | null;
    tar1e2: number | null;
    auc: number;
    rank1: number;
    genuinePairs: number;
    impostorPairs: number;
    folds: number;
  } | null;
}

export interface TrainResult {
  out: string;
  config: TrainConfig;
  split: Split;
  epochs: EpochRecord[];
  /** Verification of the untrained backbone (epoch 0), when evaluated. */
  before: VerificationResult | null;
  /** Verification after the last completed epoch. */
  after: VerificationResult | null;
  stopped: boolean;
  /** Mean training speed over this process's epochs (images/s, training batches only). */
  imgPerSec: number;
  /** The head's share of that training time (0 when no epoch ran). */
  headShare: number;
  wallSeconds: number;
  params: number;
  /** The backend the margin head ran on ('cpu' or 'cuda'). */
  headBackend: 'cpu' | 'cuda';
}

export interface TrainHooks {
  /** Progress bar and messages on stderr. Default true. */
  verbose?: boolean;
  /** Install a SIGINT handler for a clean stop. Default false (the CLI sets it). */
  handleSignals?: boolean;
  /** Resume from <out>/checkpoint. */
  resume?: boolean;
  /** Start afresh in an <out> that already holds a run (its checkpoint, metrics and plots are replaced). */
  overwrite?: boolean;
  /** A progress bar per epoch on stderr. Default: verbose. */
  progress?: boolean;
  /** Put before the progress bar's "epoch i/n" (compare: which run this is). */
  progressLabel?: string;
  /** Log the final verification (the CLI prints it on stdout instead). Default true. */
  logResult?: boolean;
  /** Write SVG plots at the end. Default true. */
  plots?: boolean;
  /** Stop after this many training batches in total (tests of the stop path). */
  stopAfterBatches?: number;
  log?: (msg: string) => void;
}

export function openSource(cfg: Pick<TrainConfig, 'data' | 'mnistPerClass' | 'mnistEvalPerClass'>): DataSource {
  return cfg.data ? scanImageFolder(cfg.data) : mnistSource({ perClass: cfg.mnistPerClass, evalPerClass: cfg.mnistEvalPerClass });
}

function valRecord(r: VerificationResult | null): EpochRecord['val'] {
  if (!r) return null;
  return {
    accuracy: r.accuracy.mean,
    std: r.accuracy.std,
    tar1e1: r.tar.find((t) => t.far === 0.1)?.tar ?? null,
    tar1e2: r.tar.find((t) => t.far === 0.01)?.tar ?? null,
    auc: r.auc,
    rank1: r.rank1.accuracy,
    genuinePairs: r.genuinePairs,
    impostorPairs: r.impostorPairs,
    folds: r.folds,
  };
}

function lrAt(cfg: TrainConfig, epoch: number): number {
  let lr = cfg.lr;
  for (const s of cfg.lrSteps) if (epoch >= s) lr *= cfg.lrFactor;
  return lr;
}

function readJsonl<T>(file: string): T[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as T);
}

function writeJsonl(file: string, rows: unknown[]): void {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
}

type ThetaRow = { epoch: number; theta: number[] };

/** What a run knows before the model exists: options, logging, the run folder and the data. */
interface RunContext {
  cfg: TrainConfig;
  hooks: TrainHooks;
  t0: number;
  verbose: boolean;
  /** --distributed mpi: this process is one rank; rank 0 alone logs, evaluates and writes the run folder. */
  comm: Communicator | null;
  isRoot: boolean;
  log: (msg: string) => void;
  /** Logs a message once (bad images are met again every epoch). */
  warn: (msg: string) => void;
  out: string;
  files: { metrics: string; theta: string; eval: string };
  src: DataSource;
  split: Split;
  trainSamples: Sample[];
  /** The training images decoded once, kept between epochs. */
  cache: DecodedCache;
  fingerprint: Record<string, unknown>;
}

/** The loss the backbone trains against: the MarginHead through the tfjs adapter, and what its steps report. */
interface HeadLoss {
  fn: MarginLossFn<TF.Scalar>;
  /** The head's learning rate, read by the adapter at every step (the schedule sets it per epoch). */
  lr: number;
  /** The last step's result (accuracy). */
  last: StepResult | null;
  theta: ThetaReservoir;
  /** Seconds spent in head.step() so far (the head's share of a step). */
  headSeconds: number;
}

/** The state the steps of `train` pass on: the context, the model, the head, the history and the counters. */
interface RunState extends RunContext {
  tf: Tf;
  /** The checkpoint resumed from, or null for a fresh run. */
  resumed: CheckpointState | null;
  model: TF.LayersModel;
  head: MarginHead;
  /** The head sharded over the MPI ranks (null without --distributed). */
  sharded: ShardedMarginHead | null;
  optimizer: BackboneSgd;
  /** The backbone's worker replicas (--workers > 1), or null: the whole batch on the main thread's model. */
  replicas: BackboneReplicas | null;
  params: number;
  loss: HeadLoss;
  records: EpochRecord[];
  thetas: ThetaRow[];
  before: VerificationResult | null;
  after: VerificationResult | null;
  evaluate: () => VerificationResult | null;
  /** Set by Ctrl-C (or hooks.stopAfterBatches): stop after the batch in flight. */
  stopRequested: boolean;
  stopped: boolean;
  /** Images found unreadable (--on-bad-image skip): left out of the later epochs. */
  badRefs: Set<string>;
  batchesRun: number;
  totalImages: number;
  totalSeconds: number;
  totalHeadSeconds: number;
}

/** One epoch's running sums (the loss and accuracy weighted by the rows of each batch). */
interface EpochTally {
  lossSum: number;
  accSum: number;
  rows: number;
  images: number;
  seconds: number;
  headSeconds: number;
}

/**
 * A uniform sample of θ_y (degrees) over an epoch's training rows, at most
 * `capacity` of them (reservoir sampling), from each step's own target
 * cosines (computed in the fused forward against the centres before the
 * update): no copy of the centres per step.
 */
class ThetaReservoir {
  samples: number[] = [];
  private seen = 0;
  constructor(
    private readonly capacity: number,
    private readonly rng: Rng,
  ) {}

  reset(): void {
    this.samples = [];
    this.seen = 0;
  }

  add(targetCos: Float32Array): void {
    if (this.capacity <= 0) return;
    for (let i = 0; i < targetCos.length; i++) {
      const c = targetCos[i];
      if (Number.isNaN(c)) continue;
      const theta = (Math.acos(Math.max(-1, Math.min(1, c))) * 180) / Math.PI;
      this.seen++;
      if (this.samples.length < this.capacity) this.samples.push(theta);
      else {
        const j = this.rng.int(this.seen);
        if (j < this.capacity) this.samples[j] = theta;
      }
    }
  }
}

export async function train(cfg: TrainConfig, hooks: TrainHooks = {}): Promise<TrainResult> {
  const ctx = openRun(cfg, hooks);
  const resumed = prepareRunFolder(ctx);
  const tf = await setupTf(cfg.tfBackend);
  const { model, head, sharded } = await buildModelAndHead(ctx, tf, resumed);
  writeRunConfig(ctx, head);
  const optimizer = makeOptimizer(ctx, tf, model, resumed);
  let replicas: BackboneReplicas | null = null;
  try {
    replicas = await startReplicas(ctx, tf, model);
    // Replicas patch it with their exchange; one model normalises its own batch through the same closed form.
    if (!replicas) batchNormInTraining(tf, model);
    const run = newRunState(ctx, tf, resumed, { model, head, sharded, optimizer, replicas });
    logRunHeader(run);
    run.evaluate = verificationOf(run);
    run.before = evaluateBefore(run);
    await trainWithCtrlC(run);
    return resultOf(run);
  } finally {
    await replicas?.close();
    optimizer.dispose();
    model.dispose();
    head.dispose();
  }
}

function newRunState(
  ctx: RunContext,
  tf: Tf,
  resumed: CheckpointState | null,
  parts: Pick<RunState, 'model' | 'head' | 'sharded' | 'optimizer' | 'replicas'>,
): RunState {
  return {
    ...ctx,
    ...parts,
    tf,
    resumed,
    params: countParams(parts.model),
    loss: makeHeadLoss(ctx, tf, parts.head, parts.sharded, parts.replicas),
    ...restoreHistory(ctx, resumed),
    before: null,
    after: null,
    evaluate: () => null,
    stopRequested: false,
    stopped: false,
    badRefs: new Set<string>(),
    batchesRun: 0,
    totalImages: 0,
    totalSeconds: 0,
    totalHeadSeconds: 0,
  };
}

/** The epochs and the end of the run, with Ctrl-C handled (hooks.handleSignals) meanwhile. */
async function trainWithCtrlC(run: RunState): Promise<void> {
  const onSigint = stopOnCtrlC(run);
  if (run.hooks.handleSignals) process.on('SIGINT', onSigint);
  try {
    await trainEpochs(run);
    await finishRun(run);
  } finally {
    if (run.hooks.handleSignals) process.removeListener('SIGINT', onSigint);
  }
}

/** Options, logging, the data and its identity split. */
function openRun(cfg: TrainConfig, hooks: TrainHooks): RunContext {
  const t0 = Date.now();
  const verbose = hooks.verbose ?? true;
  // --distributed mpi: this process is one rank; rank 0 alone logs, evaluates
  // and writes the run folder, every rank writes its shard of the head.
  const comm = cfg.distributed === 'mpi' ? mpiCommunicator() : null;
  const isRoot = !comm || comm.rank === 0;
  if (comm && hooks.resume) throw new CheckpointMismatchError('--resume is not supported with --distributed mpi in this version');
  checkAffineRanges(affineOf(cfg));
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
  const cache = new DecodedCache(src, { height: cfg.height, width: cfg.width, channels: cfg.channels });
  return { cfg, hooks, t0, verbose, comm, isRoot, log, warn, out, files, src, split, trainSamples, cache, fingerprint };
}

/** Creates (or clears, --overwrite) the run folder; returns the checkpoint to resume, checked against this run. */
function prepareRunFolder(ctx: RunContext): CheckpointState | null {
  const { hooks, out, comm } = ctx;
  fs.mkdirSync(out, { recursive: true });
  if (hooks.overwrite && !hooks.resume && ctx.isRoot) {
    for (const f of ['checkpoint', 'metrics.jsonl', 'theta.jsonl', 'eval.json', 'plots']) fs.rmSync(path.join(out, f), { recursive: true, force: true });
  }
  comm?.barrier(); // the other ranks look at the folder once rank 0 has cleared it
  const existing = readCheckpointState(out);
  if (hooks.resume) {
    if (!existing) throw new CheckpointMismatchError(`Nothing to resume: ${path.join(out, 'checkpoint')} holds no checkpoint`);
    checkResumable(ctx, existing);
    return existing;
  }
  if (existing) {
    throw new CheckpointMismatchError(`${out} already holds a checkpoint (epoch ${existing.epoch}): pass --resume to continue it, --overwrite to start afresh, or choose another --out`);
  }
  return null;
}

/** A checkpoint can be resumed only with the same model, data and identity split. */
function checkResumable(ctx: RunContext, existing: CheckpointState): void {
  const { out, src, split } = ctx;
  checkFingerprint(existing, ctx.fingerprint, path.join(out, 'checkpoint'));
  if (existing.dataId !== src.id) {
    throw new CheckpointMismatchError(`Checkpoint in ${out} was trained on ${existing.dataId}, not ${src.id}`);
  }
  if (JSON.stringify(existing.trainClasses) !== JSON.stringify(split.trainClasses)) {
    throw new CheckpointMismatchError(`Checkpoint in ${out} used another identity split (different --split-seed, --val-classes or data)`);
  }
}

/** The backbone and the head: loaded from the checkpoint, or initialised from the seed. */
async function buildModelAndHead(
  ctx: RunContext,
  tf: Tf,
  resumed: CheckpointState | null,
): Promise<{ model: TF.LayersModel; head: MarginHead; sharded: ShardedMarginHead | null }> {
  const { cfg, split, out, comm } = ctx;
  if (resumed) {
    const model = await loadBackbone(tf, out);
    const head = loadHead(out, cfg.backend);
    if (head.classes !== split.trainClasses.length || head.dim !== cfg.dim) {
      throw new CheckpointMismatchError(`Head checkpoint has ${head.classes} classes × ${head.dim}, expected ${split.trainClasses.length} × ${cfg.dim}`);
    }
    return { model, head, sharded: null };
  }
  const model = buildBackbone(tf, backboneOf(cfg), cfg.seed);
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
  if (!comm) return { model, head: new MarginHead(headOptions), sharded: null };
  const sharded = new ShardedMarginHead({ ...headOptions, comm });
  return { model, head: sharded.shard, sharded };
}

/** config.json records the backend the head really runs on beside the requested one. */
function writeRunConfig(ctx: RunContext, head: MarginHead): void {
  const { cfg, out, split, src } = ctx;
  if (ctx.isRoot) fs.writeFileSync(path.join(out, 'config.json'), JSON.stringify({ ...cfg, out, split, dataId: src.id, headBackend: head.backend }, null, 2));
}

/** The backbone's SGD, with its momentum restored on --resume (and the replicas made equal over MPI ranks). */
function makeOptimizer(ctx: RunContext, tf: Tf, model: TF.LayersModel, resumed: CheckpointState | null): BackboneSgd {
  const { cfg, comm, out } = ctx;
  const optimizer = new BackboneSgd(tf, model.trainableWeights, { momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  if (comm) broadcastVariables(tf, comm, optimizer.variables);
  if (resumed) {
    const named = loadOptimizerState(tf, out);
    optimizer.setState(named);
    tf.dispose(Object.values(named));
  }
  return optimizer;
}

function logRunHeader(run: RunState): void {
  const { cfg, src, split } = run;
  run.log(
    `margin-softmax train: ${src.name}: ${split.trainClasses.length} training identities (${run.trainSamples.length} images), ` +
      `${split.valClasses.length} held-out identities for verification; ResNet widths ${cfg.widths.join('/')}×${cfg.blocks} ` +
      `(${(run.params / 1e6).toFixed(2)} M params), input ${cfg.height}×${cfg.width}×${cfg.channels}, dim ${cfg.dim}; ` +
      `loss ${marginLabel(cfg.margin)} s=${cfg.scale}; head backend ${run.head.backend}; tfjs backend ${run.tf.getBackend()}; out ${run.out}`,
  );
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
function verificationOf(run: RunState): () => VerificationResult | null {
  const { cfg } = run;
  const opts = { height: cfg.height, width: cfg.width, channels: cfg.channels, batchSize: 64, flip: cfg.evalFlip, onBadImage: cfg.onBadImage, warn: run.warn, seed: cfg.evalSeed };
  return () => (run.isRoot ? evaluateVerification(run.tf, run.model, run.src, run.split.valClasses, opts) : null);
}

/** Epoch 0: the untrained backbone's verification (a resumed run reads it from eval.json). */
function evaluateBefore(run: RunState): VerificationResult | null {
  if (run.resumed) return fs.existsSync(run.files.eval) ? ((JSON.parse(fs.readFileSync(run.files.eval, 'utf8')).before as VerificationResult) ?? null) : null;
  if (!(run.cfg.evalEvery > 0 && run.isRoot)) return null;
  const before = run.evaluate() as VerificationResult;
  run.log(formatVerification(before, 'epoch 0 (untrained backbone)'));
  const r: EpochRecord = { epoch: 0, lr: null, loss: null, trainAcc: null, images: 0, imgPerSec: null, trainSeconds: 0, theta: null, val: valRecord(before) };
  run.records.push(r);
  fs.appendFileSync(run.files.metrics, JSON.stringify(r) + '\n');
  return before;
}

/**
 * The adapter calls head.step() once per forward pass, with the scheduled
 * learning rate; each step's result gives the accuracy and θ_y (against the
 * centres before the update). Distributed: each rank passes its rows, the
 * head gathers the global batch.
 */
function makeHeadLoss(ctx: RunContext, tf: Tf, head: MarginHead, sharded: ShardedMarginHead | null, replicas: BackboneReplicas | null): HeadLoss {
  const { cfg } = ctx;
  const loss: HeadLoss = {
    fn: null as unknown as MarginLossFn<TF.Scalar>,
    lr: cfg.lr * cfg.headLrMult,
    last: null,
    theta: new ThetaReservoir(cfg.thetaSamples, new Rng(subSeed(cfg.seed, 'theta'))),
    headSeconds: 0,
  };
  const base: Pick<MarginHead, 'step'> = sharded ? { step: sharded.stepLocal.bind(sharded) } : head;
  const timed: Pick<MarginHead, 'step'> = {
    step: (emb, labels, options) => {
      const t = performance.now();
      try {
        return base.step(emb, labels, options);
      } finally {
        loss.headSeconds += (performance.now() - t) / 1000;
      }
    },
  };
  // With worker replicas the head steps on the whole batch: the replicas' embeddings gathered around this thread's.
  const lossHead = replicas ? replicas.gatheringHead(timed) : timed;
  loss.fn = marginLoss(lossHead, tf, {
    lr: () => loss.lr,
    onStep: (r) => {
      loss.last = r;
      loss.theta.add(r.targetCos);
    },
  });
  return loss;
}

/** Ctrl-C: stop after the batch in flight, keeping the last checkpoint; a second Ctrl-C exits at once. */
function stopOnCtrlC(run: RunState): () => void {
  return () => {
    if (run.stopRequested) {
      process.stderr.write('\nSecond Ctrl-C: exiting now (the last checkpoint is intact).\n');
      process.exit(130);
    }
    run.stopRequested = true;
    process.stderr.write('\nCtrl-C: stopping after this batch; the last checkpoint is kept (Ctrl-C again to exit at once).\n');
  };
}

/** The epochs from the one after the checkpoint to cfg.epochs, or until a stop. */
async function trainEpochs(run: RunState): Promise<void> {
  const startEpoch = run.resumed ? run.resumed.epoch : 0;
  for (let epoch = startEpoch + 1; epoch <= run.cfg.epochs; epoch++) {
    const lr = lrAt(run.cfg, epoch);
    const tally = await trainEpoch(run, epoch, lr);
    if (run.stopRequested) {
      run.stopped = true;
      logStop(run, epoch);
      return;
    }
    await finishEpoch(run, epoch, lr, tally);
    if (run.stopRequested) {
      run.stopped = true;
      return;
    }
  }
}

/** One pass over the training images in this epoch's shuffled order, batch by batch. */
async function trainEpoch(run: RunState, epoch: number, lr: number): Promise<EpochTally> {
  const { cfg, hooks } = run;
  const bs = cfg.batchSize;
  run.loss.lr = lr * cfg.headLrMult;
  const rng = new Rng(subSeed(cfg.seed, `epoch${epoch}`));
  const order = rng.shuffle(run.trainSamples.filter((s) => !run.badRefs.has(s.ref)));
  // A batch of one would give batch norm a zero variance: fold a single leftover image away.
  const nBatches = Math.max(1, Math.floor(order.length / bs) + (order.length % bs >= 2 ? 1 : 0));
  const total = nBatches * bs > order.length ? order.length : nBatches * bs;
  const bar = new ProgressBar(`${hooks.progressLabel ?? ''}epoch ${epoch}/${cfg.epochs}`, total, process.stderr, hooks.progress ?? run.verbose);
  run.loss.theta.reset();
  const tally: EpochTally = { lossSum: 0, accSum: 0, rows: 0, images: 0, seconds: 0, headSeconds: 0 };
  const headAtStart = run.loss.headSeconds;
  for (let b = 0; b < nBatches; b++) {
    const tb = Date.now();
    const batch = nextBatch(run, order.slice(b * bs, Math.min(order.length, (b + 1) * bs)), rng);
    if (!batch) continue;
    const n = batch.labels.length;
    const loss = trainStep(run, batch, lr);
    const acc = run.loss.last?.accuracy ?? 0;
    tally.lossSum += loss * n;
    tally.accSum += acc * n;
    // Distributed: every rank stepped an equal share, so the batch had n × K images.
    tally.rows += n;
    tally.images += run.comm ? n * run.comm.size : n;
    tally.seconds += (Date.now() - tb) / 1000;
    run.batchesRun++;
    bar.update(tally.images, { loss: tally.lossSum / tally.rows, acc: tally.accSum / tally.rows, imgPerSec: tally.images / Math.max(tally.seconds, 1e-9) });
    if (!Number.isFinite(loss)) throw new Error(`The loss became ${loss} at epoch ${epoch}, batch ${b + 1}: lower --lr or --scale`);
    if (hooks.stopAfterBatches !== undefined && run.batchesRun >= hooks.stopAfterBatches) run.stopRequested = true;
    // Let the event loop run (a Ctrl-C is delivered there).
    await new Promise((resolve) => setImmediate(resolve));
    if (run.stopRequested) break;
  }
  bar.end();
  tally.headSeconds = run.loss.headSeconds - headAtStart;
  return tally;
}

/**
 * This rank's share of the batch `rows`, decoded (from disk the first time)
 * and augmented (affine or shift, then flip, image by image, in the epoch's
 * RNG order); null when fewer than two images remain (unreadable ones skipped).
 */
function nextBatch(run: RunState, rows: Sample[], rng: Rng): LoadedBatch | null {
  const { cfg, comm } = run;
  const batch = run.cache.load(comm ? shareOf(rows, comm.rank, comm.size) : rows, cfg.onBadImage, run.warn);
  for (const s of batch.skipped) run.badRefs.add(s.ref);
  const n = batch.labels.length;
  if (n < 2) return null;
  const per = cfg.height * cfg.width * cfg.channels;
  const affine = affineOf(cfg);
  const scratch = isAffine(affine) ? new Float32Array(per) : null;
  for (let i = 0; i < n; i++) {
    if (scratch) warpAffine(batch.data, i * per, cfg.height, cfg.width, cfg.channels, drawAffine(affine, rng), scratch);
    else if (cfg.shift > 0) {
      const dy = rng.int(2 * cfg.shift + 1) - cfg.shift;
      const dx = rng.int(2 * cfg.shift + 1) - cfg.shift;
      shiftImage(batch.data, i * per, cfg.height, cfg.width, cfg.channels, dy, dx);
    }
    if (rng.next() < cfg.flip) flipHorizontal(batch.data, i * per, cfg.height, cfg.width, cfg.channels);
  }
  return batch;
}

function affineOf(cfg: TrainConfig): AffineRanges {
  return { rotate: cfg.rotate ?? 0, scale: cfg.scaleJitter ?? 0, shear: cfg.shear ?? 0, shift: cfg.shift };
}

/** One SGD step of the backbone and the head on a batch; returns the batch's loss. */
function trainStep(run: RunState, batch: LoadedBatch, lr: number): number {
  if (run.replicas) return replicatedStep(run, run.replicas, batch, lr);
  const { tf, cfg, comm, optimizer } = run;
  const n = batch.labels.length;
  return tf.tidy(() => {
    const x = tf.tensor4d(batch.data, [n, cfg.height, cfg.width, cfg.channels]);
    const { value, grads } = tf.variableGrads(() => run.loss.fn(run.model.apply(x, { training: true }) as TF.Tensor2D, batch.labels), optimizer.variables);
    optimizer.step(comm ? averageGradients(tf, comm, grads) : grads, lr);
    return value.dataSync()[0];
  });
}

/**
 * The step with worker replicas (see ./replicas): this thread's model runs
 * the first share of the batch, the head the whole batch, the gradients are
 * summed over the replicas before the one update.
 */
function replicatedStep(run: RunState, replicas: BackboneReplicas, batch: LoadedBatch, lr: number): number {
  const { tf, cfg, optimizer } = run;
  const n0 = replicas.scatter(batch.data, batch.labels.length);
  const loss = tf.tidy(() => {
    const x = tf.tensor4d(batch.data.subarray(0, n0 * cfg.height * cfg.width * cfg.channels), [n0, cfg.height, cfg.width, cfg.channels]);
    const { value, grads } = tf.variableGrads(() => run.loss.fn(run.model.apply(x, { training: true }) as TF.Tensor2D, batch.labels), optimizer.variables);
    optimizer.step(replicas.reduce(grads), lr);
    return value.dataSync()[0];
  });
  replicas.publishWeights();
  return loss;
}

/** --workers N: N − 1 worker replicas beside this thread's model. */
async function startReplicas(ctx: RunContext, tf: Tf, model: TF.LayersModel): Promise<BackboneReplicas | null> {
  const { cfg } = ctx;
  if (cfg.workers === 1) return null;
  return BackboneReplicas.start(tf, model, cfg.workers, { backbone: backboneOf(cfg), seed: cfg.seed, tfBackend: cfg.tfBackend, maxRows: cfg.batchSize });
}

function logStop(run: RunState, epoch: number): void {
  const st = readCheckpointState(run.out);
  run.log(
    st
      ? `Stopped during epoch ${epoch}; the checkpoint of epoch ${st.epoch} in ${path.join(run.out, 'checkpoint')} is kept: continue with --resume.`
      : `Stopped during epoch ${epoch}, before the first checkpoint: nothing saved.`,
  );
}

/** After a completed epoch: verification (every --eval-every epochs and at the last), the metrics, the log line, the checkpoint. */
async function finishEpoch(run: RunState, epoch: number, lr: number, tally: EpochTally): Promise<void> {
  const { cfg } = run;
  run.totalImages += tally.images;
  run.totalSeconds += tally.seconds;
  let val: VerificationResult | null = null;
  if (cfg.evalEvery > 0 && (epoch % cfg.evalEvery === 0 || epoch === cfg.epochs)) val = run.evaluate();
  if (val) run.after = val;
  const theta = run.loss.theta.samples;
  const rec = epochRecord(epoch, lr, tally, theta, val);
  run.totalHeadSeconds += tally.headSeconds;
  run.records.push(rec);
  if (run.isRoot) {
    fs.appendFileSync(run.files.metrics, JSON.stringify(rec) + '\n');
    fs.appendFileSync(run.files.theta, JSON.stringify({ epoch, theta: theta.map((t) => Math.round(t * 10) / 10) }) + '\n');
  }
  run.thetas.push({ epoch, theta });
  run.log(epochLine(rec, cfg.epochs));
  await saveEpochCheckpoint(run, epoch, lr, val);
}

function epochRecord(epoch: number, lr: number, tally: EpochTally, theta: number[], val: VerificationResult | null): EpochRecord {
  const th = theta.slice().sort((a, b) => a - b);
  const q = (p: number) => th[Math.min(th.length - 1, Math.floor(p * th.length))];
  return {
    epoch,
    lr,
    loss: tally.lossSum / tally.rows,
    trainAcc: tally.accSum / tally.rows,
    images: tally.images,
    imgPerSec: tally.images / tally.seconds,
    trainSeconds: tally.seconds,
    headSeconds: tally.headSeconds,
    theta: th.length ? { mean: th.reduce((a, c) => a + c, 0) / th.length, p10: q(0.1), p50: q(0.5), p90: q(0.9) } : null,
    val: valRecord(val),
  };
}

function epochLine(rec: EpochRecord, epochs: number): string {
  return (
    `epoch ${rec.epoch}/${epochs}: loss ${rec.loss?.toFixed(4)} train acc ${(100 * (rec.trainAcc ?? 0)).toFixed(1)}% ` +
    `${rec.imgPerSec?.toFixed(1)} img/s (head ${((100 * (rec.headSeconds ?? 0)) / rec.trainSeconds).toFixed(0)} % of the step) lr ${(rec.lr as number).toPrecision(3)}` +
    (rec.theta ? ` θ_y median ${rec.theta.p50.toFixed(1)}°` : '') +
    (rec.val ? ` | verification ${(100 * rec.val.accuracy).toFixed(2)} ± ${(100 * rec.val.std).toFixed(2)}%, rank-1 ${(100 * rec.val.rank1).toFixed(1)}%` : '')
  );
}

/** The checkpoint of a completed epoch (rank 0 writes it; with a sharded head every rank adds its shard) and eval.json. */
async function saveEpochCheckpoint(run: RunState, epoch: number, lr: number, val: VerificationResult | null): Promise<void> {
  const { split, sharded } = run;
  const state: CheckpointState = {
    format: 'margin-softmax/run',
    version: 1,
    epoch,
    step: run.head.stepCount,
    fingerprint: run.fingerprint,
    trainClasses: split.trainClasses,
    valClasses: split.valClasses,
    dataId: run.src.id,
    lr,
    savedAt: new Date().toISOString(),
  };
  if (run.isRoot) {
    await saveCheckpoint(run.tf, run.out, { model: run.model, head: sharded ? null : run.head, optimizer: run.optimizer, state });
    fs.writeFileSync(run.files.eval, JSON.stringify({ epoch, before: run.before, after: val ?? run.after }, null, 2));
  }
  if (sharded) {
    run.comm?.barrier(); // rank 0 has put the new checkpoint folder in place
    sharded.save(path.join(run.out, 'checkpoint', 'head-shards'));
  }
}

/** The final verification (read back from eval.json when this process evaluated none) and the plots. */
async function finishRun(run: RunState): Promise<void> {
  const { hooks } = run;
  if (!run.stopped && !run.after && run.isRoot && fs.existsSync(run.files.eval)) {
    run.after = (JSON.parse(fs.readFileSync(run.files.eval, 'utf8')).after as VerificationResult) ?? null;
  }
  if (!run.stopped && run.after && (hooks.logResult ?? true)) run.log(formatVerification(run.after, `after epoch ${run.cfg.epochs}`));
  if ((hooks.plots ?? true) && run.isRoot) {
    const files = await writePlots(run.out, run.records, run.thetas, run.before, run.after, `${run.src.name}, ${marginLabel(run.cfg.margin)}`);
    run.log(`plots: ${files.join(', ')}`);
  }
}

function resultOf(run: RunState): TrainResult {
  const wallSeconds = (Date.now() - run.t0) / 1000;
  const imgPerSec = run.totalSeconds ? run.totalImages / run.totalSeconds : 0;
  const headShare = run.totalSeconds ? run.totalHeadSeconds / run.totalSeconds : 0;
  const speed = run.totalSeconds ? `${imgPerSec.toFixed(1)} img/s while training, the head ${(100 * headShare).toFixed(0)} % of it` : '- img/s while training';
  run.log(`done in ${clock(wallSeconds)} (${speed}); run folder ${run.out}`);
  return {
    out: run.out,
    config: run.cfg,
    split: run.split,
    epochs: run.records,
    before: run.before,
    after: run.after,
    stopped: run.stopped,
    imgPerSec,
    headShare,
    wallSeconds,
    params: run.params,
    headBackend: run.head.backend,
  };
}

export async function writePlots(
  out: string,
  records: EpochRecord[],
  thetas: { epoch: number; theta: number[] }[],
  before: VerificationResult | null,
  after: VerificationResult | null,
  title: string,
): Promise<string[]> {
  const dir = path.join(out, 'plots');
  const plots: { file: string; spec: VlSpec }[] = [];
  const rows: EpochMetrics[] = records.map((r) => ({
    epoch: r.epoch,
    lr: r.lr ?? undefined,
    loss: r.loss ?? undefined,
    trainAcc: r.trainAcc ?? undefined,
    valAcc: r.val?.accuracy,
    tar1e2: r.val?.tar1e2,
    rank1: r.val?.rank1,
  }));
  plots.push({ file: path.join(dir, 'training.svg'), spec: trainingCurvesSpec(rows, `training: ${title}`) });
  const curves = [];
  if (before) curves.push({ label: `untrained (acc ${(100 * before.accuracy.mean).toFixed(1)}%)`, far: before.roc.far, tar: before.roc.tar });
  if (after) curves.push({ label: `trained (acc ${(100 * after.accuracy.mean).toFixed(1)}%)`, far: after.roc.far, tar: after.roc.tar });
  if (curves.length) plots.push({ file: path.join(dir, 'roc.svg'), spec: rocSpec(curves, `ROC on held-out identities: ${title}`) });
  if (thetas.some((t) => t.theta.length)) plots.push({ file: path.join(dir, 'theta.svg'), spec: thetaSpec(thetas, `target angle θ_y over training: ${title}`) });
  const files = writeSvgs(plots);
  return files;
}
