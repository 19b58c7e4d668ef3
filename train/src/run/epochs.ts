/**
 * The epochs of a run: epoch 0 (the untrained backbone's verification), then
 * each epoch's pass over the shuffled training images (read from disk,
 * augmented, one SGD step of the backbone and the head per batch), and after
 * each completed epoch its verification, metrics and checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { drawAffine, isAffine, warpAffine } from '../data/augment';
import type { LoadedBatch, Sample } from '../data/datasets';
import { flipHorizontal, shiftImage } from '../data/images';
import { isPhotometric, jitterPhotometric } from '../data/photometric';
import { Rng, subSeed } from '../data/rng';
import { formatVerification, type VerificationResult } from '../eval/protocol';
import type { ShardedMarginHead } from 'margin-softmax';
import { CheckpointMismatchError, readCheckpointState, saveCheckpoint, type CheckpointState } from './checkpoint';
import { affineOf, photometricOf, type TrainConfig } from './config';
import { anyRankStops, averageGradients, readRankResume, saveShardedHead, shareOf, writeRankResume } from './distributed';
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
  ctx.log(formatVerification(before, ctx.cfg.initFrom ? `epoch 0 (backbone of ${ctx.cfg.initFrom})` : 'epoch 0 (untrained backbone)'));
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
    const tally = await trainEpoch(run, epoch, lr, epoch === startEpoch + 1 ? progress.resumed : null);
    const sharded = run.model.sharded !== null;
    if (progress.stopRequested && tally.done < tally.batches && sharded) {
      // Distributed: every rank saves where it stopped (its head shard, rank 0 the run checkpoint).
      progress.stopped = true;
      await saveStopCheckpoint(run, epoch, lr, tally);
      return;
    }
    // Distributed, a stop after the epoch's last batch completes the epoch (its checkpoint) first.
    if (progress.stopRequested && !(sharded && tally.done === tally.batches)) {
      progress.stopped = true;
      logStop(run, epoch);
      return;
    }
    await finishEpoch(run, epoch, lr, tally);
    if (progress.stopRequested) {
      progress.stopped = true;
      if (sharded) run.ctx.log(`Stopped after epoch ${epoch}, its checkpoint saved: continue with --resume.`);
      return;
    }
  }
}

/** One pass over the training images in this epoch's shuffled order, batch by batch. */
async function trainEpoch(run: RunState, epoch: number, lr: number, resumed: CheckpointState | null): Promise<EpochTally> {
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
  const tally: EpochTally = { lossSum: 0, accSum: 0, rows: 0, images: 0, seconds: 0, headSeconds: 0, done: 0, batches: nBatches, rngState: rng.state };
  const headAtStart = headLoss.headSeconds;
  // A run stopped within this epoch goes on after the batches it ran, with its RNG where it was.
  const first = resumedWithin(run, resumed, rng);
  tally.done = first;
  for (let b = first; b < nBatches; b++) {
    const tb = Date.now();
    const batch = nextBatch(run, order.slice(b * bs, Math.min(order.length, (b + 1) * bs)), rng);
    tally.done = b + 1;
    tally.rngState = rng.state;
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
    // Distributed: a stop asked on any rank stops every rank after this batch.
    if (comm) progress.stopRequested = anyRankStops(comm, progress.stopRequested);
    if (progress.stopRequested) break;
  }
  bar.end();
  tally.headSeconds = headLoss.headSeconds - headAtStart;
  return tally;
}

/**
 * This rank's share of the batch `rows`, decoded (from disk the first time)
 * and augmented (affine or shift, then flip, then photometric, image by image, in the epoch's
 * RNG order); null when fewer than two images remain (unreadable ones skipped).
 */
function nextBatch(run: RunState, rows: Sample[], rng: Rng): LoadedBatch | null {
  const { cfg, comm } = run.ctx;
  const batch = run.data.cache.load(comm ? shareOf(rows, comm.rank, comm.size) : rows, cfg.onBadImage, run.ctx.warn);
  for (const s of batch.skipped) run.data.badRefs.add(s.ref);
  const n = batch.labels.length;
  if (n < 2) return null;
  const per = cfg.height * cfg.width * cfg.channels;
  const affine = affineOf(cfg);
  const scratch = isAffine(affine) ? new Float32Array(per) : null;
  const photometric = photometricOf(cfg);
  const jitter = isPhotometric(photometric);
  for (let i = 0; i < n; i++) {
    if (scratch) warpAffine(batch.data, i * per, cfg.height, cfg.width, cfg.channels, drawAffine(affine, rng), scratch);
    else if (cfg.shift > 0) {
      const dy = rng.int(2 * cfg.shift + 1) - cfg.shift;
      const dx = rng.int(2 * cfg.shift + 1) - cfg.shift;
      shiftImage(batch.data, i * per, cfg.height, cfg.width, cfg.channels, dy, dx);
    }
    if (rng.next() < cfg.flip) flipHorizontal(batch.data, i * per, cfg.height, cfg.width, cfg.channels);
    if (jitter) jitterPhotometric(batch.data, i * per, cfg.height, cfg.width, cfg.channels, photometric, rng);
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
  // Every rank's head shard first (where it runs), then rank 0's run
  // checkpoint naming that generation: a save cut short leaves a matching pair.
  if (sharded) saveShardedHead(sharded, ctx.out);
  if (ctx.isRoot) {
    await saveCheckpoint(tf, ctx.out, { model: backbone, head: sharded ? null : head, optimizer, state });
    fs.writeFileSync(ctx.files.eval, JSON.stringify({ epoch, before: progress.before, after: val ?? progress.after }, null, 2));
  }
}

/**
 * A distributed run stopped within epoch `epoch`: every rank writes its head
 * shard and its place in the epoch (the augmentation RNG) beside it, then
 * rank 0 the run checkpoint with the batches done; --resume goes on from the
 * next batch. The partial epoch's metrics are not kept.
 */
async function saveStopCheckpoint(run: RunState, epoch: number, lr: number, tally: EpochTally): Promise<void> {
  const { ctx } = run;
  const { tf, backbone, head, optimizer } = run.model;
  const sharded = run.model.sharded as ShardedMarginHead;
  writeRankResume(ctx.out, sharded, { epoch, batchesDone: tally.done, rngState: tally.rngState });
  saveShardedHead(sharded, ctx.out);
  if (ctx.isRoot) {
    const state: CheckpointState = {
      format: 'margin-softmax/run',
      version: 1,
      epoch: epoch - 1,
      batchesDone: tally.done,
      step: head.stepCount,
      fingerprint: ctx.fingerprint,
      trainClasses: run.data.split.trainClasses,
      valClasses: run.data.split.valClasses,
      dataId: run.data.src.id,
      lr,
      savedAt: new Date().toISOString(),
    };
    await saveCheckpoint(tf, ctx.out, { model: backbone, head: null, optimizer, state });
  }
  ctx.log(`Stopped during epoch ${epoch} after batch ${tally.done} of ${tally.batches}: every rank saved where it stopped (${path.join(ctx.out, 'checkpoint')} and each rank's head-shards): continue with --resume.`);
}

/** The first batch to run in this epoch: after those a stopped run had done (its RNG restored), else 0. */
function resumedWithin(run: RunState, resumed: CheckpointState | null, rng: Rng): number {
  const sharded = run.model.sharded;
  if (!resumed?.batchesDone || !sharded) return 0;
  const place = readRankResume(run.ctx.out, sharded, resumed.step);
  if (place.epoch !== resumed.epoch + 1 || place.batchesDone !== resumed.batchesDone) {
    throw new CheckpointMismatchError(`${run.ctx.out}: this rank stopped at epoch ${place.epoch} batch ${place.batchesDone}, rank 0 at epoch ${resumed.epoch + 1} batch ${resumed.batchesDone}`);
  }
  rng.state = place.rngState;
  return place.batchesDone;
}
