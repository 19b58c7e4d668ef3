/**
 * One step of two backbone replicas (--workers 2: this thread's model and a
 * worker thread's, each on half the batch, the head on the whole batch)
 * against one step of one model on the same batch, with the same initial
 * weights and head.
 *
 * Without batch norm a row's embedding does not depend on the other rows, so
 * the two steps are the same sum: the weight gradients may differ only by
 * the order of the fp32 additions over the batch (bound below).
 * With batch norm the replicas exchange each layer's sums (synchronised
 * batch norm, ../src/sync-batch-norm), so every share is normalised with the
 * whole batch's statistics: the same bound holds for the gradients, the loss
 * and the moving statistics.
 *
 * The worker runs the compiled script (train/dist/replica-worker.js): these
 * tests need `npm run build:ts`.
 */
import { beforeAll, describe, expect, test } from 'vitest';
import type * as TF from '@tensorflow/tfjs';
import { MarginHead } from 'margin-softmax';
import { marginLoss } from 'margin-softmax/tfjs';
import { buildBackbone, type BackboneConfig } from '../src/model/backbone';
import { BackboneReplicas } from '../src/run/replicas';
import { Rng } from '../src/data/rng';
import { setupTf, type Tf } from '../src/model/tf';

const U = 2 ** -24; // fp32 unit roundoff
const ROWS = 16;
const CLASSES = 5;
const SEED = 3;
const LR = 0.05;

let tf: Tf;
beforeAll(async () => {
  tf = await setupTf('wasm');
});

function backbone(batchNorm: boolean): BackboneConfig {
  return { height: 10, width: 10, channels: 1, dim: 12, widths: [4, 6], blocks: 1, dropout: 0, batchNorm };
}

function batch(cfg: BackboneConfig): { data: Float32Array; labels: Int32Array } {
  const rng = new Rng(11);
  const data = Float32Array.from({ length: ROWS * cfg.height * cfg.width }, () => rng.next() * 2 - 1);
  const labels = Int32Array.from({ length: ROWS }, (_, i) => i % CLASSES);
  return { data, labels };
}

function newHead(cfg: BackboneConfig): MarginHead {
  return new MarginHead({
    classes: CLASSES,
    dim: cfg.dim,
    margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 },
    scale: 16,
    seed: SEED,
    backend: 'cpu',
    threads: 1,
    optimizer: { lr: LR, momentum: 0.9, weightDecay: 5e-4 },
  });
}

interface StepOut {
  loss: number;
  /** Weight gradients by weight name (without the model's numeric suffix), trainable weights only. */
  grads: Map<string, Float32Array>;
  /** Values of the non-trainable weights (moving statistics) after the step. */
  moving: Map<string, Float32Array>;
}

const key = (w: TF.LayerVariable) => w.originalName ?? w.name;

function movingOf(model: TF.LayersModel): Map<string, Float32Array> {
  return new Map(model.nonTrainableWeights.map((w) => [key(w), Float32Array.from(w.read().dataSync() as Float32Array)]));
}

function gradsOf(model: TF.LayersModel, grads: TF.NamedTensorMap): Map<string, Float32Array> {
  return new Map(model.trainableWeights.map((w) => [key(w), Float32Array.from(grads[(w.read() as TF.Variable).name].dataSync() as Float32Array)]));
}

/** One model, the whole batch through it at once. */
function oneModelStep(cfg: BackboneConfig): StepOut {
  const { data, labels } = batch(cfg);
  const model = buildBackbone(tf, cfg, SEED);
  const head = newHead(cfg);
  try {
    const loss = marginLoss(head, tf, { lr: LR });
    const vars = model.trainableWeights.map((w) => w.read() as TF.Variable);
    let out: StepOut | null = null;
    tf.tidy(() => {
      const x = tf.tensor4d(data, [ROWS, cfg.height, cfg.width, cfg.channels]);
      const { value, grads } = tf.variableGrads(() => loss(model.apply(x, { training: true }) as TF.Tensor2D, labels), vars);
      out = { loss: value.dataSync()[0], grads: gradsOf(model, grads), moving: movingOf(model) };
    });
    return out as unknown as StepOut;
  } finally {
    model.dispose();
    head.dispose();
  }
}

/** Two replicas: this thread's model on the first half, a worker's on the second, the head on the whole batch. */
async function replicatedStep(cfg: BackboneConfig): Promise<StepOut> {
  const { data, labels } = batch(cfg);
  const model = buildBackbone(tf, cfg, SEED);
  const head = newHead(cfg);
  const replicas = await BackboneReplicas.start(tf, model, 2, { backbone: cfg, seed: SEED, tfBackend: 'wasm', maxRows: ROWS });
  try {
    const n0 = replicas.scatter(data, ROWS);
    expect(n0).toBe(ROWS / 2);
    const loss = marginLoss(replicas.gatheringHead(head), tf, { lr: LR });
    const vars = model.trainableWeights.map((w) => w.read() as TF.Variable);
    let out: StepOut | null = null;
    tf.tidy(() => {
      const x = tf.tensor4d(data.subarray(0, n0 * cfg.height * cfg.width), [n0, cfg.height, cfg.width, cfg.channels]);
      const { value, grads } = tf.variableGrads(() => loss(model.apply(x, { training: true }) as TF.Tensor2D, labels), vars);
      const summed = replicas.reduce(grads);
      out = { loss: value.dataSync()[0], grads: gradsOf(model, summed), moving: movingOf(model) };
    });
    return out as unknown as StepOut;
  } finally {
    await replicas.close();
    model.dispose();
    head.dispose();
  }
}

/** max |a − b| over all elements, and max |a| + |b| (the scale the rounding error is relative to). */
function maxDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { diff: number; scale: number; worst: string } {
  let diff = 0;
  let scale = 0;
  let worst = '';
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [name, x] of a) {
    const y = b.get(name)!;
    expect(y.length).toBe(x.length);
    for (let j = 0; j < x.length; j++) {
      expect(Number.isFinite(x[j]) && Number.isFinite(y[j])).toBe(true);
      const d = Math.abs(x[j] - y[j]);
      if (d > diff) [diff, worst] = [d, name];
      scale = Math.max(scale, Math.abs(x[j]) + Math.abs(y[j]));
    }
  }
  return { diff, scale, worst };
}

/**
 * A weight gradient sums K = rows × output positions products; fp32 in two
 * different orders differs by at most 2(K − 1)·u·Σ|terms|. Σ|terms| is not
 * observable; it is taken as max(|a| + |b|) over the tensor's elements, which
 * holds where the terms do not cancel by orders of magnitude. Measured here:
 * 6.6e-7 (no batch norm) and 1.2e-5 (batch norm) against bounds of 7.7e-4 and
 * 1.6e-3; the same step with each half normalised on its own statistics
 * differed by 4.5 (gradients of size 8), so the check cannot pass by accident.
 */
function reorderTolerance(cfg: BackboneConfig, scale: number): number {
  const k = ROWS * cfg.height * cfg.width;
  return 2 * (k - 1) * U * scale;
}

describe.each([false, true])('batch norm %s', (batchNorm) => {
  const cfg = backbone(batchNorm);
  let one: StepOut;
  let two: StepOut;
  beforeAll(async () => {
    one = oneModelStep(cfg);
    two = await replicatedStep(cfg);
  }, 120_000);

  test('the loss of two replicas is the one-model loss', () => {
    expect(Number.isFinite(one.loss)).toBe(true);
    expect(Math.abs(two.loss - one.loss)).toBeLessThanOrEqual(reorderTolerance(cfg, Math.abs(one.loss)));
  });

  test('the weight gradients of two replicas are the one-model gradients (fp32 reordering only)', () => {
    const g = maxDiff(two.grads, one.grads);
    expect(g.scale).toBeGreaterThan(0);
    expect(g.diff, `gradient of ${g.worst}`).toBeLessThanOrEqual(reorderTolerance(cfg, g.scale));
  });

  test('the moving statistics after the step are the one-model ones', () => {
    expect(two.moving.size).toBe(batchNorm ? one.moving.size : 0);
    if (!batchNorm) return;
    const m = maxDiff(two.moving, one.moving);
    expect(m.diff, `moving statistic ${m.worst}`).toBeLessThanOrEqual(reorderTolerance(cfg, m.scale));
  });
});
