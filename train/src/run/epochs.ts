/**
 * The epochs of a run: epoch 0 (the untrained backbone's verification), then
 * each epoch's pass over the shuffled training images (read from disk,
 * augmented, one SGD step of the backbone and the head per batch), and after
 * each completed epoch its verification, metrics and checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { loadBatch, type LoadedBatch, type Sample } from '../data/datasets';
import { flipHorizontal, shiftImage } from '../data/images';
import { Rng, subSeed } from '../data/rng';
import { formatVerification, type VerificationResult } from '../eval/protocol';
import { readCheckpointState, saveCheckpoint, type CheckpointState } from './checkpoint';
import type { TrainConfig } from './config';
import { averageGradients, shareOf } from './distributed';
import { epochLine, epochRecord, valRecord, type EpochRecord, type EpochTally } from './metrics';
import { ProgressBar } from './progress';
import type { BackboneReplicas } from './replicas';
import type { RunState } from './state';

/** Epoch 0: the untrained backbone's verification (a resumed run reads it from eval.json). */
export function evaluateBefore(run: RunState): VerificationResult | null {
  const { ctx } = run;
  if (run.progress.resumed) return fs.existsSync(ctx.files.eval) ? ((JSON.parse(fs.readFileSync(ctx.files.eval, 'utf8')).before as VerificationResult) ?? null) : null;
  if (!(ctx.cfg.evalEvery > 0 && ctx.isRoot)) return null;
  const before = run.model.evaluate() as VerificationResult;
  ctx.log(formatVerification(before, 'epoch 0 (untrained backbone)'));
  const r: EpochRecord = { epoch: 0, lr: null, loss: null, trainAcc: null, images: 0, imgPerSec: null, trainSeconds: 0, theta: null, val: valRecord(before) };
  run.progress.records.push(r);
  fs.appendFileSync(ctx.files.metrics, JSON.stringify(r) + '\n');
  return before;
}

function lrAt(cfg: TrainConfig, epoch: number): number {
  let lr = cfg.lr;
  for (const s of cfg.lrSteps) if (epoch >= s) lr *= cfg.lrFactor;
  return lr;
}

/** The epochs from the one after the checkpoint to cfg.epochs, or until a stop. */
export async function trainEpochs(run: RunState): Promise<void> {
  const { progress } = run;
  const startEpoch = progress.resumed ? progress.resumed.epoch : 0;
  for (let epoch = startEpoch + 1; epoch <= run.ctx.cfg.epochs; epoch++) {
    const lr = lrAt(run.ctx.cfg, epoch);
    const tally = await trainEpoch(run, epoch, lr);
    if (progress.stopRequested) {
      progress.stopped = true;
      logStop(run, epoch);
      return;
    }
    await finishEpoch(run, epoch, lr, tally);
    if (progress.stopRequested) {
      progress.stopped = true;
      return;
    }
  }
}

/** One pass over the training images in this epoch's shuffled order, batch by batch. */
async function trainEpoch(run: RunState, epoch: number, lr: number): Promise<EpochTally> {
  const { cfg, hooks, comm } = run.ctx;
  const { progress, data } = run;
  const headLoss = run.model.loss;
  const bs = cfg.batchSize;
  headLoss.lr = lr * cfg.headLrMult;
  const rng = new Rng(subSeed(cfg.seed, `epoch${epoch}`));
  const order = rng.shuffle(data.trainSamples.filter((s) => !data.badRefs.has(s.ref)));
  // A batch of one would give batch norm a zero variance: fold a single leftover image away.
  const nBatches = Math.max(1, Math.floor(order.length / bs) + (order.length % bs >= 2 ? 1 : 0));
  const total = nBatches * bs > order.length ? order.length : nBatches * bs;
  const bar = new ProgressBar(`${hooks.progressLabel ?? ''}epoch ${epoch}/${cfg.epochs}`, total, process.stderr, hooks.progress ?? run.ctx.verbose);
  headLoss.theta.reset();
  const tally: EpochTally = { lossSum: 0, accSum: 0, rows: 0, images: 0, seconds: 0, headSeconds: 0 };
  const headAtStart = headLoss.headSeconds;
  for (let b = 0; b < nBatches; b++) {
    const tb = Date.now();
    const batch = nextBatch(run, order.slice(b * bs, Math.min(order.length, (b + 1) * bs)), rng);
    if (!batch) continue;
    const n = batch.labels.length;
    const loss = trainStep(run, batch, lr);
    const acc = headLoss.last?.accuracy ?? 0;
    tally.lossSum += loss * n;
    tally.accSum += acc * n;
    // Distributed: every rank stepped an equal share, so the batch had n × K images.
    tally.rows += n;
    tally.images += comm ? n * comm.size : n;
    tally.seconds += (Date.now() - tb) / 1000;
    progress.batchesRun++;
    bar.update(tally.images, { loss: tally.lossSum / tally.rows, acc: tally.accSum / tally.rows, imgPerSec: tally.images / Math.max(tally.seconds, 1e-9) });
    if (!Number.isFinite(loss)) throw new Error(`The loss became ${loss} at epoch ${epoch}, batch ${b + 1}: lower --lr or --scale`);
    if (hooks.stopAfterBatches !== undefined && progress.batchesRun >= hooks.stopAfterBatches) progress.stopRequested = true;
    // Let the event loop run (a Ctrl-C is delivered there).
    await new Promise((resolve) => setImmediate(resolve));
    if (progress.stopRequested) break;
  }
  bar.end();
  tally.headSeconds = headLoss.headSeconds - headAtStart;
  return tally;
}

/**
 * This rank's share of the batch `rows`, read from disk and augmented (shift,
 * then flip, image by image, in the epoch's RNG order); null when fewer than
 * two images remain (unreadable ones skipped).
 */
function nextBatch(run: RunState, rows: Sample[], rng: Rng): LoadedBatch | null {
  const { cfg, comm } = run.ctx;
  const shape = { height: cfg.height, width: cfg.width, channels: cfg.channels };
  const batch = loadBatch(run.data.src, comm ? shareOf(rows, comm.rank, comm.size) : rows, shape, cfg.onBadImage, run.ctx.warn);
  for (const s of batch.skipped) run.data.badRefs.add(s.ref);
  const n = batch.labels.length;
  if (n < 2) return null;
  const per = cfg.height * cfg.width * cfg.channels;
  for (let i = 0; i < n; i++) {
    if (cfg.shift > 0) {
      const dy = rng.int(2 * cfg.shift + 1) - cfg.shift;
      const dx = rng.int(2 * cfg.shift + 1) - cfg.shift;
      shiftImage(batch.data, i * per, cfg.height, cfg.width, cfg.channels, dy, dx);
    }
    if (rng.next() < cfg.flip) flipHorizontal(batch.data, i * per, cfg.height, cfg.width, cfg.channels);
  }
  return batch;
}

/** One SGD step of the backbone and the head on a batch; returns the batch's loss. */
function trainStep(run: RunState, batch: LoadedBatch, lr: number): number {
  if (run.model.replicas) return replicatedStep(run, run.model.replicas, batch, lr);
  const { cfg, comm } = run.ctx;
  const { tf, optimizer, backbone, loss } = run.model;
  const n = batch.labels.length;
  return tf.tidy(() => {
    const x = tf.tensor4d(batch.data, [n, cfg.height, cfg.width, cfg.channels]);
    const { value, grads } = tf.variableGrads(() => loss.fn(backbone.apply(x, { training: true }) as TF.Tensor2D, batch.labels), optimizer.variables);
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
  const { cfg } = run.ctx;
  const { tf, optimizer, backbone } = run.model;
  const n0 = replicas.scatter(batch.data, batch.labels.length);
  const loss = tf.tidy(() => {
    const x = tf.tensor4d(batch.data.subarray(0, n0 * cfg.height * cfg.width * cfg.channels), [n0, cfg.height, cfg.width, cfg.channels]);
    const { value, grads } = tf.variableGrads(() => run.model.loss.fn(backbone.apply(x, { training: true }) as TF.Tensor2D, batch.labels), optimizer.variables);
    optimizer.step(replicas.reduce(grads), lr);
    return value.dataSync()[0];
  });
  replicas.publishWeights();
  return loss;
}

function logStop(run: RunState, epoch: number): void {
  const { out } = run.ctx;
  const st = readCheckpointState(out);
  run.ctx.log(
    st
      ? `Stopped during epoch ${epoch}; the checkpoint of epoch ${st.epoch} in ${path.join(out, 'checkpoint')} is kept: continue with --resume.`
      : `Stopped during epoch ${epoch}, before the first checkpoint: nothing saved.`,
  );
}

/** After a completed epoch: verification (every --eval-every epochs and at the last), the metrics, the log line, the checkpoint. */
async function finishEpoch(run: RunState, epoch: number, lr: number, tally: EpochTally): Promise<void> {
  const { cfg, files } = run.ctx;
  const { progress } = run;
  progress.totalImages += tally.images;
  progress.totalSeconds += tally.seconds;
  let val: VerificationResult | null = null;
  if (cfg.evalEvery > 0 && (epoch % cfg.evalEvery === 0 || epoch === cfg.epochs)) val = run.model.evaluate();
  if (val) progress.after = val;
  const theta = run.model.loss.theta.samples;
  const rec = epochRecord(epoch, lr, tally, theta, val);
  progress.totalHeadSeconds += tally.headSeconds;
  progress.records.push(rec);
  if (run.ctx.isRoot) {
    fs.appendFileSync(files.metrics, JSON.stringify(rec) + '\n');
    fs.appendFileSync(files.theta, JSON.stringify({ epoch, theta: theta.map((t) => Math.round(t * 10) / 10) }) + '\n');
  }
  progress.thetas.push({ epoch, theta });
  run.ctx.log(epochLine(rec, cfg.epochs));
  await saveEpochCheckpoint(run, epoch, lr, val);
}

/** The checkpoint of a completed epoch (rank 0 writes it; with a sharded head every rank adds its shard) and eval.json. */
async function saveEpochCheckpoint(run: RunState, epoch: number, lr: number, val: VerificationResult | null): Promise<void> {
  const { ctx, progress } = run;
  const { split, src } = run.data;
  const { tf, backbone, head, sharded, optimizer } = run.model;
  const state: CheckpointState = {
    format: 'margin-softmax/run',
    version: 1,
    epoch,
    step: head.stepCount,
    fingerprint: ctx.fingerprint,
    trainClasses: split.trainClasses,
    valClasses: split.valClasses,
    dataId: src.id,
    lr,
    savedAt: new Date().toISOString(),
  };
  if (ctx.isRoot) {
    await saveCheckpoint(tf, ctx.out, { model: backbone, head: sharded ? null : head, optimizer, state });
    fs.writeFileSync(ctx.files.eval, JSON.stringify({ epoch, before: progress.before, after: val ?? progress.after }, null, 2));
  }
  if (sharded) {
    ctx.comm?.barrier(); // rank 0 has put the new checkpoint folder in place
    sharded.save(path.join(ctx.out, 'checkpoint', 'head-shards'));
  }
}
