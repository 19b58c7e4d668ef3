/**
 * train(cfg): a small ResNet (tfjs) trained with the MarginHead as its loss
 * (margin-softmax/tfjs marginLoss), SGD with momentum and weight decay, a step
 * learning-rate schedule, flip and shift augmentation, streaming batches from
 * disk, per-epoch verification on held-out identities, JSONL metrics,
 * checkpoints every epoch, --resume, and a clean stop on Ctrl-C.
 *
 * The run in order: ./setup (options, data, run folder, model and head, the
 * run state of ./state), ./epochs (epoch 0, then each epoch's steps,
 * metrics and checkpoint) under ./ctrl-c, then the end of the run here
 * (the final verification, the plots of ./metrics, the result).
 */
import * as fs from 'fs';
import { formatVerification, type VerificationResult } from '../eval/protocol';
import type { Split } from '../data/datasets';
import { batchNormInTraining } from '../model/sync-batch-norm';
import { setupTf } from '../model/tf';
import { marginLabel, type TrainConfig } from './config';
import { withCtrlC } from './ctrl-c';
import { evaluateBefore, trainEpochs } from './epochs';
import { writePlots, type EpochRecord } from './metrics';
import { clock } from './progress';
import type { BackboneReplicas } from './replicas';
import { assembleRun, buildModelAndHead, logRunHeader, makeOptimizer, openRun, prepareRunFolder, startReplicas, writeRunConfig } from './setup';
import type { RunState, TrainHooks } from './state';

export type { TrainHooks } from './state';
export type { EpochRecord } from './metrics';

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
  /** The backend the margin head ran on ('cpu', 'cuda', or 'wasm' where the native addon did not load). */
  headBackend: 'cpu' | 'cuda' | 'wasm';
}

export async function train(cfg: TrainConfig, hooks: TrainHooks = {}): Promise<TrainResult> {
  const { ctx, data } = openRun(cfg, hooks);
  const resumed = prepareRunFolder(ctx, data);
  const tf = await setupTf(cfg.tfBackend);
  const { backbone, head, sharded } = await buildModelAndHead(ctx, data, tf, resumed);
  writeRunConfig(ctx, data, head);
  const optimizer = makeOptimizer(ctx, tf, backbone, resumed);
  let replicas: BackboneReplicas | null = null;
  try {
    replicas = await startReplicas(ctx, tf, backbone);
    // Replicas patch it with their exchange; one model normalises its own batch through the same closed form.
    if (!replicas) batchNormInTraining(tf, backbone);
    const run = assembleRun(ctx, data, tf, resumed, { backbone, head, sharded, optimizer, replicas });
    logRunHeader(run);
    run.progress.before = evaluateBefore(run);
    await withCtrlC(run, async () => {
      await trainEpochs(run);
      await finishRun(run);
    });
    return resultOf(run);
  } finally {
    await replicas?.close();
    optimizer.dispose();
    backbone.dispose();
    head.dispose();
  }
}

/** The final verification (read back from eval.json when this process evaluated none) and the plots. */
async function finishRun(run: RunState): Promise<void> {
  const { ctx, progress } = run;
  if (!progress.stopped && !progress.after && ctx.isRoot && fs.existsSync(ctx.files.eval)) {
    progress.after = (JSON.parse(fs.readFileSync(ctx.files.eval, 'utf8')).after as VerificationResult) ?? null;
  }
  if (!progress.stopped && progress.after && (ctx.hooks.logResult ?? true)) ctx.log(formatVerification(progress.after, `after epoch ${ctx.cfg.epochs}`));
  if ((ctx.hooks.plots ?? true) && ctx.isRoot) {
    const files = await writePlots(ctx.out, progress.records, progress.thetas, progress.before, progress.after, `${run.data.src.name}, ${marginLabel(ctx.cfg.margin)}`);
    ctx.log(`plots: ${files.join(', ')}`);
  }
}

function resultOf(run: RunState): TrainResult {
  const { ctx, progress } = run;
  const wallSeconds = (Date.now() - ctx.t0) / 1000;
  const imgPerSec = progress.totalSeconds ? progress.totalImages / progress.totalSeconds : 0;
  const headShare = progress.totalSeconds ? progress.totalHeadSeconds / progress.totalSeconds : 0;
  const speed = progress.totalSeconds ? `${imgPerSec.toFixed(1)} img/s while training, the head ${(100 * headShare).toFixed(0)} % of it` : '- img/s while training';
  ctx.log(`done in ${clock(wallSeconds)} (${speed}); run folder ${ctx.out}`);
  return {
    out: ctx.out,
    config: ctx.cfg,
    split: run.data.split,
    epochs: progress.records,
    before: progress.before,
    after: progress.after,
    stopped: progress.stopped,
    imgPerSec,
    headShare,
    wallSeconds,
    params: run.model.params,
    headBackend: run.model.head.backend,
  };
}
