/**
 * A run's metrics: the record of each epoch (metrics.jsonl), the sample of
 * target angles θ_y (theta.jsonl), the log line of an epoch, and the plots
 * drawn from them at the end of a run.
 */
import * as fs from 'fs';
import * as path from 'path';
import { rocSpec, thetaSpec, trainingCurvesSpec, writeSvgs, type EpochMetrics, type VlSpec } from '../figures/plots';
import type { VerificationResult } from '../eval/protocol';
import type { Rng } from '../data/rng';

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

/** One epoch's sample of θ_y (degrees), as theta.jsonl holds it. */
export type ThetaRow = { epoch: number; theta: number[] };

/** One epoch's running sums (the loss and accuracy weighted by the rows of each batch). */
export interface EpochTally {
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
export class ThetaReservoir {
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

export function valRecord(r: VerificationResult | null): EpochRecord['val'] {
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

export function epochRecord(epoch: number, lr: number, tally: EpochTally, theta: number[], val: VerificationResult | null): EpochRecord {
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

export function epochLine(rec: EpochRecord, epochs: number): string {
  return (
    `epoch ${rec.epoch}/${epochs}: loss ${rec.loss?.toFixed(4)} train acc ${(100 * (rec.trainAcc ?? 0)).toFixed(1)}% ` +
    `${rec.imgPerSec?.toFixed(1)} img/s (head ${((100 * (rec.headSeconds ?? 0)) / rec.trainSeconds).toFixed(0)} % of the step) lr ${(rec.lr as number).toPrecision(3)}` +
    (rec.theta ? ` θ_y median ${rec.theta.p50.toFixed(1)}°` : '') +
    (rec.val ? ` | verification ${(100 * rec.val.accuracy).toFixed(2)} ± ${(100 * rec.val.std).toFixed(2)}%, rank-1 ${(100 * rec.val.rank1).toFixed(1)}%` : '')
  );
}

export function readJsonl<T>(file: string): T[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as T);
}

export function writeJsonl(file: string, rows: unknown[]): void {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
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
