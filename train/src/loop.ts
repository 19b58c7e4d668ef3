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
import { MarginHead, mpiCommunicator, ShardedMarginHead, type StepResult } from 'margin-softmax';
import { marginLoss } from 'margin-softmax/tfjs';
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
import { DataError, loadBatch, mnistSource, scanImageFolder, splitByIdentity, subset, type DataSource, type Split } from './data';
import { evaluateVerification } from './evaluate';
import { flipHorizontal, shiftImage } from './images';
import { buildBackbone, countParams } from './model';
import { BackboneSgd } from './optimizer';
import { rocSpec, thetaSpec, trainingCurvesSpec, writeSvgs, type EpochMetrics, type VlSpec } from './plots';
import { clock, ProgressBar } from './progress';
import { formatVerification, type VerificationResult } from './protocol';
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

export async function train(cfg: TrainConfig, hooks: TrainHooks = {}): Promise<TrainResult> {
  const t0 = Date.now();
  const verbose = hooks.verbose ?? true;
  // --distributed mpi: this process is one rank; rank 0 alone logs, evaluates
  // and writes the run folder, every rank writes its shard of the head.
  const comm = cfg.distributed === 'mpi' ? mpiCommunicator() : null;
  const isRoot = !comm || comm.rank === 0;
  if (comm && hooks.resume) throw new CheckpointMismatchError('--resume is not supported with --distributed mpi in this version');
  const log = !isRoot ? () => {} : hooks.log ?? ((m: string) => verbose && process.stderr.write(`${m}\n`));
  const out = path.resolve(cfg.out);

  const src = openSource(cfg);
  const split = splitByIdentity(src, { count: cfg.valClasses ?? undefined, fraction: cfg.valFraction }, cfg.splitSeed);
  const trainSamples = subset(src, split.trainClasses);
  if (trainSamples.length < 2) throw new DataError(`Only ${trainSamples.length} training images in ${src.name}`);
  const fingerprint = modelFingerprint(cfg, split.trainClasses.length);

  // ---- Run folder, resume --------------------------------------------------------
  let state: CheckpointState | null = null;
  fs.mkdirSync(out, { recursive: true });
  if (hooks.overwrite && !hooks.resume && isRoot) {
    for (const f of ['checkpoint', 'metrics.jsonl', 'theta.jsonl', 'eval.json', 'plots']) fs.rmSync(path.join(out, f), { recursive: true, force: true });
  }
  comm?.barrier(); // the other ranks look at the folder once rank 0 has cleared it
  const existing = readCheckpointState(out);
  if (hooks.resume) {
    if (!existing) throw new CheckpointMismatchError(`Nothing to resume: ${path.join(out, 'checkpoint')} holds no checkpoint`);
    checkFingerprint(existing, fingerprint, path.join(out, 'checkpoint'));
    if (existing.dataId !== src.id) {
      throw new CheckpointMismatchError(`Checkpoint in ${out} was trained on ${existing.dataId}, not ${src.id}`);
    }
    if (JSON.stringify(existing.trainClasses) !== JSON.stringify(split.trainClasses)) {
      throw new CheckpointMismatchError(`Checkpoint in ${out} used another identity split (different --split-seed, --val-classes or data)`);
    }
    state = existing;
  } else if (existing) {
    throw new CheckpointMismatchError(`${out} already holds a checkpoint (epoch ${existing.epoch}): pass --resume to continue it, --overwrite to start afresh, or choose another --out`);
  }

  const tf = await setupTf(cfg.tfBackend);
  const shape = { height: cfg.height, width: cfg.width, channels: cfg.channels };
  let model: TF.LayersModel;
  let head: MarginHead;
  let sharded: ShardedMarginHead | null = null;
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
  if (state) {
    model = await loadBackbone(tf, out);
    head = loadHead(out, cfg.backend);
    if (head.classes !== split.trainClasses.length || head.dim !== cfg.dim) {
      throw new CheckpointMismatchError(`Head checkpoint has ${head.classes} classes × ${head.dim}, expected ${split.trainClasses.length} × ${cfg.dim}`);
    }
  } else {
    model = buildBackbone(tf, backboneOf(cfg), cfg.seed);
    if (comm) {
      sharded = new ShardedMarginHead({ ...headOptions, comm });
      head = sharded.shard;
    } else {
      head = new MarginHead(headOptions);
    }
  }
  // config.json records the backend the head really runs on beside the requested one.
  if (isRoot) fs.writeFileSync(path.join(out, 'config.json'), JSON.stringify({ ...cfg, out, split, dataId: src.id, headBackend: head.backend }, null, 2));
  const optimizer = new BackboneSgd(tf, model.trainableWeights, { momentum: cfg.momentum, weightDecay: cfg.weightDecay });
  if (comm) broadcastVariables(tf, comm, optimizer.variables);
  if (state) {
    const named = loadOptimizerState(tf, out);
    optimizer.setState(named);
    tf.dispose(Object.values(named));
  }
  const params = countParams(model);
  log(
    `margin-softmax train: ${src.name}: ${split.trainClasses.length} training identities (${trainSamples.length} images), ` +
      `${split.valClasses.length} held-out identities for verification; ResNet widths ${cfg.widths.join('/')}×${cfg.blocks} ` +
      `(${(params / 1e6).toFixed(2)} M params), input ${cfg.height}×${cfg.width}×${cfg.channels}, dim ${cfg.dim}; ` +
      `loss ${marginLabel(cfg.margin)} s=${cfg.scale}; head backend ${head.backend}; tfjs backend ${tf.getBackend()}; out ${out}`,
  );

  const metricsFile = path.join(out, 'metrics.jsonl');
  const thetaFile = path.join(out, 'theta.jsonl');
  const startEpoch = state ? state.epoch : 0;
  const records: EpochRecord[] = readJsonl<EpochRecord>(metricsFile).filter((r) => state && r.epoch <= startEpoch);
  const thetas: { epoch: number; theta: number[] }[] = readJsonl<{ epoch: number; theta: number[] }>(thetaFile).filter((r) => state && r.epoch <= startEpoch);
  if (isRoot) {
    writeJsonl(metricsFile, records);
    writeJsonl(thetaFile, thetas);
  }

  const warned = new Set<string>();
  const warn = (m: string) => {
    if (!warned.has(m)) {
      warned.add(m);
      log(m);
    }
  };
  const evalOpts = { ...shape, batchSize: 64, flip: cfg.evalFlip, onBadImage: cfg.onBadImage, warn, seed: cfg.evalSeed };
  const evaluate = () => (isRoot ? evaluateVerification(tf, model, src, split.valClasses, evalOpts) : null);

  let before: VerificationResult | null = null;
  let after: VerificationResult | null = null;
  const evalFile = path.join(out, 'eval.json');
  if (state && fs.existsSync(evalFile)) before = (JSON.parse(fs.readFileSync(evalFile, 'utf8')).before as VerificationResult) ?? null;
  if (!state && cfg.evalEvery > 0 && isRoot) {
    before = evaluateVerification(tf, model, src, split.valClasses, evalOpts);
    log(formatVerification(before, 'epoch 0 (untrained backbone)'));
    const r: EpochRecord = { epoch: 0, lr: null, loss: null, trainAcc: null, images: 0, imgPerSec: null, trainSeconds: 0, theta: null, val: valRecord(before) };
    records.push(r);
    fs.appendFileSync(metricsFile, JSON.stringify(r) + '\n');
  }

  // ---- The loss: MarginHead through the tfjs adapter -----------------------------
  let headLr = cfg.lr * cfg.headLrMult;
  let last: StepResult | null = null;
  const thetaRng = new Rng(subSeed(cfg.seed, 'theta'));
  let epochTheta: number[] = [];
  let thetaSeen = 0;
  // θ_y from the step's own target cosines (computed in the fused forward
  // against the centres before the update): no copy of the centres per step.
  const recordTheta = (targetCos: Float32Array) => {
    if (cfg.thetaSamples <= 0) return;
    for (let i = 0; i < targetCos.length; i++) {
      const c = targetCos[i];
      if (Number.isNaN(c)) continue;
      const theta = (Math.acos(Math.max(-1, Math.min(1, c))) * 180) / Math.PI;
      thetaSeen++;
      if (epochTheta.length < cfg.thetaSamples) epochTheta.push(theta);
      else {
        const j = thetaRng.int(thetaSeen);
        if (j < cfg.thetaSamples) epochTheta[j] = theta;
      }
    }
  };
  // The adapter calls head.step() once per forward pass, with the scheduled
  // learning rate; each step's result gives the accuracy and θ_y (against the
  // centres before the update).
  // Distributed: each rank passes its rows, the head gathers the global batch.
  const lossHead = sharded ? { step: sharded.stepLocal.bind(sharded) } : head;
  const lossFn = marginLoss(lossHead, tf, {
    lr: () => headLr,
    onStep: (r) => {
      last = r;
      recordTheta(r.targetCos);
    },
  });

  // ---- Ctrl-C ------------------------------------------------------------------------
  let stopRequested = false;
  const onSigint = () => {
    if (stopRequested) {
      process.stderr.write('\nSecond Ctrl-C: exiting now (the last checkpoint is intact).\n');
      process.exit(130);
    }
    stopRequested = true;
    process.stderr.write('\nCtrl-C: stopping after this batch; the last checkpoint is kept (Ctrl-C again to exit at once).\n');
  };
  if (hooks.handleSignals) process.on('SIGINT', onSigint);

  const bs = cfg.batchSize;
  const per = cfg.height * cfg.width * cfg.channels;
  let totalImages = 0;
  let totalSeconds = 0;
  let batchesRun = 0;
  let stopped = false;
  const badRefs = new Set<string>();
  try {
    for (let epoch = startEpoch + 1; epoch <= cfg.epochs; epoch++) {
      const lr = lrAt(cfg, epoch);
      headLr = lr * cfg.headLrMult;
      const rng = new Rng(subSeed(cfg.seed, `epoch${epoch}`));
      const order = rng.shuffle(trainSamples.filter((s) => !badRefs.has(s.ref)));
      // A batch of one would give batch norm a zero variance: fold a single leftover image away.
      const nBatches = Math.max(1, Math.floor(order.length / bs) + (order.length % bs >= 2 ? 1 : 0));
      const bar = new ProgressBar(`${hooks.progressLabel ?? ''}epoch ${epoch}/${cfg.epochs}`, nBatches * bs > order.length ? order.length : nBatches * bs, process.stderr, hooks.progress ?? verbose);
      epochTheta = [];
      thetaSeen = 0;
      let lossSum = 0;
      let accSum = 0;
      let rows = 0;
      let images = 0;
      let seconds = 0;
      for (let b = 0; b < nBatches; b++) {
        const tb = Date.now();
        const globalRows = order.slice(b * bs, Math.min(order.length, (b + 1) * bs));
        const batch = loadBatch(src, comm ? shareOf(globalRows, comm.rank, comm.size) : globalRows, shape, cfg.onBadImage, warn);
        for (const s of batch.skipped) badRefs.add(s.ref);
        const n = batch.labels.length;
        if (n < 2) continue;
        for (let i = 0; i < n; i++) {
          if (cfg.shift > 0) {
            const dy = rng.int(2 * cfg.shift + 1) - cfg.shift;
            const dx = rng.int(2 * cfg.shift + 1) - cfg.shift;
            shiftImage(batch.data, i * per, cfg.height, cfg.width, cfg.channels, dy, dx);
          }
          if (rng.next() < cfg.flip) flipHorizontal(batch.data, i * per, cfg.height, cfg.width, cfg.channels);
        }
        const loss = tf.tidy(() => {
          const x = tf.tensor4d(batch.data, [n, cfg.height, cfg.width, cfg.channels]);
          const { value, grads } = tf.variableGrads(
            () => lossFn(model.apply(x, { training: true }) as TF.Tensor2D, batch.labels),
            optimizer.variables,
          );
          optimizer.step(comm ? averageGradients(tf, comm, grads) : grads, lr);
          return value.dataSync()[0];
        });
        const acc = (last as StepResult | null)?.accuracy ?? 0;
        lossSum += loss * n;
        accSum += acc * n;
        // Distributed: every rank stepped an equal share, so the batch had n × K images.
        rows += n;
        images += comm ? n * comm.size : n;
        seconds += (Date.now() - tb) / 1000;
        batchesRun++;
        bar.update(images, { loss: lossSum / rows, acc: accSum / rows, imgPerSec: images / Math.max(seconds, 1e-9) });
        if (!Number.isFinite(loss)) throw new Error(`The loss became ${loss} at epoch ${epoch}, batch ${b + 1}: lower --lr or --scale`);
        if (hooks.stopAfterBatches !== undefined && batchesRun >= hooks.stopAfterBatches) stopRequested = true;
        // Let the event loop run (a Ctrl-C is delivered there).
        await new Promise((resolve) => setImmediate(resolve));
        if (stopRequested) break;
      }
      bar.end();
      if (stopRequested) {
        stopped = true;
        const st = readCheckpointState(out);
        log(
          st
            ? `Stopped during epoch ${epoch}; the checkpoint of epoch ${st.epoch} in ${path.join(out, 'checkpoint')} is kept: continue with --resume.`
            : `Stopped during epoch ${epoch}, before the first checkpoint: nothing saved.`,
        );
        break;
      }
      totalImages += images;
      totalSeconds += seconds;
      let val: VerificationResult | null = null;
      if (cfg.evalEvery > 0 && (epoch % cfg.evalEvery === 0 || epoch === cfg.epochs)) val = evaluate();
      if (val) after = val;
      const th = epochTheta.slice().sort((a, b) => a - b);
      const q = (p: number) => th[Math.min(th.length - 1, Math.floor(p * th.length))];
      const rec: EpochRecord = {
        epoch,
        lr,
        loss: lossSum / rows,
        trainAcc: accSum / rows,
        images,
        imgPerSec: images / seconds,
        trainSeconds: seconds,
        theta: th.length ? { mean: th.reduce((a, c) => a + c, 0) / th.length, p10: q(0.1), p50: q(0.5), p90: q(0.9) } : null,
        val: valRecord(val),
      };
      records.push(rec);
      if (isRoot) {
        fs.appendFileSync(metricsFile, JSON.stringify(rec) + '\n');
        fs.appendFileSync(thetaFile, JSON.stringify({ epoch, theta: epochTheta.map((t) => Math.round(t * 10) / 10) }) + '\n');
      }
      thetas.push({ epoch, theta: epochTheta });
      log(
        `epoch ${epoch}/${cfg.epochs}: loss ${rec.loss?.toFixed(4)} train acc ${(100 * (rec.trainAcc ?? 0)).toFixed(1)}% ` +
          `${rec.imgPerSec?.toFixed(1)} img/s lr ${lr.toPrecision(3)}` +
          (rec.theta ? ` θ_y median ${rec.theta.p50.toFixed(1)}°` : '') +
          (rec.val ? ` | verification ${(100 * rec.val.accuracy).toFixed(2)} ± ${(100 * rec.val.std).toFixed(2)}%, rank-1 ${(100 * rec.val.rank1).toFixed(1)}%` : ''),
      );
      const newState: CheckpointState = {
        format: 'margin-softmax/run',
        version: 1,
        epoch,
        step: head.stepCount,
        fingerprint,
        trainClasses: split.trainClasses,
        valClasses: split.valClasses,
        dataId: src.id,
        lr,
        savedAt: new Date().toISOString(),
      };
      if (isRoot) {
        await saveCheckpoint(tf, out, { model, head: sharded ? null : head, optimizer, state: newState });
        fs.writeFileSync(evalFile, JSON.stringify({ epoch, before, after: val ?? after }, null, 2));
      }
      if (sharded) {
        comm?.barrier(); // rank 0 has put the new checkpoint folder in place
        sharded.save(path.join(out, 'checkpoint', 'head-shards'));
      }
      if (stopRequested) {
        stopped = true;
        break;
      }
    }
    if (!stopped && !after && isRoot && fs.existsSync(evalFile)) after = (JSON.parse(fs.readFileSync(evalFile, 'utf8')).after as VerificationResult) ?? null;
    if (!stopped && after && (hooks.logResult ?? true)) log(formatVerification(after, `after epoch ${cfg.epochs}`));
    if ((hooks.plots ?? true) && isRoot) {
      const files = await writePlots(out, records, thetas, before, after, `${src.name}, ${marginLabel(cfg.margin)}`);
      log(`plots: ${files.join(', ')}`);
    }
  } finally {
    if (hooks.handleSignals) process.removeListener('SIGINT', onSigint);
    optimizer.dispose();
    model.dispose();
    head.dispose();
  }
  const wallSeconds = (Date.now() - t0) / 1000;
  const headBackend = head.backend;
  log(`done in ${clock(wallSeconds)} (${totalSeconds ? (totalImages / totalSeconds).toFixed(1) : '-'} img/s while training); run folder ${out}`);
  return {
    out,
    config: cfg,
    split,
    epochs: records,
    before,
    after,
    stopped,
    imgPerSec: totalSeconds ? totalImages / totalSeconds : 0,
    wallSeconds,
    params,
    headBackend,
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
