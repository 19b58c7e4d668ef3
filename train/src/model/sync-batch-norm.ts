/**
 * Synchronised batch norm for the backbone replicas (../run/replicas): every
 * replica normalises its share of the batch with the mean and variance of the
 * WHOLE batch, so a step of N replicas is the one-model step (up to the order
 * of fp32 sums), not N half-batch normalisations.
 *
 * Why: with per-share statistics the replicated step is a different
 * function of the weights (each share's rows normalised among themselves):
 * on a 16-row batch split in two, the weight gradients differed from the
 * one-model step by about 70 % of their size (train/test/replica-step.test.ts),
 * and a 20-epoch Omniglot run with two replicas learned more slowly and
 * diverged where the one-model run did not.
 *
 * How: each tfjs BatchNormalization layer of a replica's model gets a
 * training-mode `call` that, per channel c over the N rows (× positions) of
 * all replicas,
 *   forward:  μ = Σx / N, σ² = Σ(x − μ)² / N (two exchanges: the sums of every
 *             replica, added in replica order in float64, so every replica gets
 *             the same μ and σ²), y = γ·x̂ + β with x̂ = (x − μ)/√(σ² + ε);
 *             the moving statistics updated with μ and σ² (tfjs's rule, biased σ²);
 *   backward: dx = γ/√(σ² + ε) · (dy − mean(dy) − x̂·mean(dy·x̂)), the means over
 *             the whole batch (one exchange of Σdy and Σdy·x̂); dγ = Σdy·x̂ and
 *             dβ = Σdy over this replica's rows (the replicas' weight gradients
 *             are summed afterwards, as for every other weight).
 * Inference (training false) uses tfjs's own layer unchanged. One model
 * without replicas trains through the same closed form on its own batch:
 * the forward takes two reductions and the backward one where tfjs's
 * moments, fused batch norm and their registered gradients take about three
 * times as many passes over the activations; measured 1.26–1.35× less CPU
 * time for the backbone's forward and backward at 32×32 (bench/train_step.mjs
 * --bn-ab), gradients equal up to fp32 rounding.
 *
 * The exchange: a SharedArrayBuffer holding, per replica, its arrival count
 * and two slots (double-buffered by the exchange's parity: a replica can be at
 * most one exchange ahead of another, because it waits for all of them at each).
 */
import type * as TF from '@tensorflow/tfjs';
import type { Tf } from './tf';

const HEADER_SLOTS = 4; // step, active replicas, spare ×2
const H_STEP = 0;
const H_ACTIVE = 1;
/** Exchanges per step at most (3 per batch-norm layer): arrival targets are step × this + exchange. */
const PER_STEP = 1 << 14;

export interface ExchangeSpec {
  replicas: number;
  /** Longest vector exchanged: 2 × the widest batch-norm layer + 1. */
  maxLen: number;
}

export function exchangeBytes(spec: ExchangeSpec): number {
  return 8 * Math.ceil(((HEADER_SLOTS + spec.replicas) * 4) / 8) + 8 * 2 * spec.replicas * spec.maxLen;
}

/** One replica's end of the all-reduce (sum) that the synchronised batch-norm layers use. */
export class ReplicaExchange {
  private readonly header: Int32Array;
  private readonly arrived: Int32Array;
  private readonly slots: Float64Array;
  private exchanges = 0;
  private step = 0;
  private active = 1;

  constructor(
    private readonly spec: ExchangeSpec,
    sab: SharedArrayBuffer,
    /** This replica's index (0: the main thread). */
    readonly index: number,
    private readonly timeoutMs = 10 * 60 * 1000,
  ) {
    this.header = new Int32Array(sab, 0, HEADER_SLOTS);
    this.arrived = new Int32Array(sab, HEADER_SLOTS * 4, spec.replicas);
    const at = 8 * Math.ceil(((HEADER_SLOTS + spec.replicas) * 4) / 8);
    this.slots = new Float64Array(sab, at, 2 * spec.replicas * spec.maxLen);
  }

  /** Main thread, before it starts the workers on a step: the step number and how many replicas take part. */
  announce(step: number, active: number): void {
    Atomics.store(this.header, H_STEP, step);
    Atomics.store(this.header, H_ACTIVE, active);
    this.begin();
  }

  /** Every replica at the start of its step: read what the main thread announced. */
  begin(): void {
    this.step = Atomics.load(this.header, H_STEP);
    this.active = Atomics.load(this.header, H_ACTIVE);
    this.exchanges = 0;
  }

  /** Replicas taking part in this step (1: no exchange, tfjs's own batch norm). */
  get activeReplicas(): number {
    return this.active;
  }

  /** The element-wise sum of `local` over the active replicas, added in replica order (the same bits on every replica). */
  allSum(local: Float32Array | Float64Array): Float64Array {
    const { maxLen } = this.spec;
    if (local.length > maxLen) throw new Error(`batch-norm exchange of ${local.length} values exceeds its buffer of ${maxLen}`);
    const e = this.exchanges++;
    if (e + 1 >= PER_STEP) throw new Error(`more than ${PER_STEP} batch-norm exchanges in one step`);
    const target = ((this.step % 100000) * PER_STEP + e + 1) | 0;
    const parity = e & 1;
    const slot = (k: number) => (parity * this.spec.replicas + k) * maxLen;
    this.slots.set(local, slot(this.index));
    Atomics.store(this.arrived, this.index, target);
    Atomics.notify(this.arrived, this.index);
    const deadline = Date.now() + this.timeoutMs;
    for (let k = 0; k < this.active; k++) {
      for (;;) {
        const v = Atomics.load(this.arrived, k);
        if (v === target || (v - target) > 0) break;
        if (Date.now() > deadline) throw new Error(`A backbone replica did not reach batch-norm exchange ${e} within ${this.timeoutMs / 1000} s`);
        Atomics.wait(this.arrived, k, v, 1000);
      }
    }
    const out = new Float64Array(local.length);
    for (let k = 0; k < this.active; k++) {
      const s = slot(k);
      for (let j = 0; j < local.length; j++) out[j] += this.slots[s + j];
    }
    return out;
  }
}

/** The fields of tfjs's BatchNormalization layer that the synchronised call reads. */
interface BnLayer {
  getClassName(): string;
  call(inputs: TF.Tensor | TF.Tensor[], kwargs: { training?: boolean }): TF.Tensor;
  axis: number;
  momentum: number;
  epsilon: number;
  gamma: TF.LayerVariable;
  beta: TF.LayerVariable;
  movingMean: TF.LayerVariable;
  movingVariance: TF.LayerVariable;
}

/** Longest vector a model's batch-norm layers exchange. */
export function exchangeLength(model: TF.LayersModel): number {
  let c = 0;
  for (const l of model.layers) if (l.getClassName() === 'BatchNormalization') c = Math.max(c, (l as unknown as BnLayer).gamma.shape[0] as number);
  return 2 * c + 1;
}

/** A model's own batch as the only replica (no exchange). */
const LOCAL = { activeReplicas: 1, allSum: (local: Float32Array | Float64Array) => Float64Array.from(local) };

/**
 * Makes every BatchNormalization layer of `model` normalise over all active
 * replicas of `exchange` in training mode; with no exchange, over this
 * model's batch alone, through the same closed-form step (fewer passes over
 * the activations than tfjs's moments, fused batch norm and their gradients).
 */
export function batchNormInTraining(tf: Tf, model: TF.LayersModel, exchange: ReplicaExchange | null = null): void {
  const ex = exchange ?? LOCAL;
  for (const layer of model.layers) {
    if (layer.getClassName() !== 'BatchNormalization') continue;
    const bn = layer as unknown as BnLayer;
    const own = bn.call.bind(bn);
    bn.call = (inputs, kwargs) => {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      if (!kwargs?.training) return own(inputs, kwargs);
      if (!(bn.axis === -1 || bn.axis === x.rank - 1)) throw new Error(`synchronised batch norm supports the last axis only (layer ${layer.name})`);
      return syncForward(tf, bn, x, ex);
    };
  }
}

function syncForward(tf: Tf, bn: BnLayer, x: TF.Tensor, exchange: Pick<ReplicaExchange, 'allSum'>): TF.Tensor {
  const axes = Array.from({ length: x.rank - 1 }, (_, i) => i);
  const channels = x.shape[x.rank - 1] as number;
  const localCount = x.size / channels;
  const eps = bn.epsilon;
  const f = tf.customGrad((xIn: TF.Tensor | TF.GradSaveFunc, gamma: TF.Tensor | TF.GradSaveFunc, beta: TF.Tensor | TF.GradSaveFunc, save: TF.Tensor | TF.GradSaveFunc) => {
    const xt = xIn as TF.Tensor;
    const local = new Float64Array(channels + 1);
    local.set(tf.sum(xt, axes).dataSync() as Float32Array);
    local[channels] = localCount;
    const sums = exchange.allSum(local);
    const count = sums[channels];
    const mean = tf.tensor1d(Float32Array.from(sums.subarray(0, channels), (s) => s / count));
    const centred = tf.sub(xt, mean);
    const sq = exchange.allSum(tf.sum(tf.square(centred), axes).dataSync() as Float32Array);
    const variance = tf.tensor1d(Float32Array.from(sq, (s) => s / count));
    const invStd = tf.rsqrt(tf.add(variance, eps));
    const xhat = tf.mul(centred, invStd);
    const y = tf.add(tf.mul(xhat, gamma as TF.Tensor), beta as TF.Tensor);
    tf.tidy(() => {
      const decay = 1 - bn.momentum;
      for (const [v, stat] of [
        [bn.movingMean, mean],
        [bn.movingVariance, variance],
      ] as const) {
        const old = v.read();
        v.write(tf.sub(old, tf.mul(tf.sub(old, stat), decay)));
      }
    });
    (save as TF.GradSaveFunc)([xhat, invStd, gamma as TF.Tensor]);
    return {
      value: y,
      gradFunc: (dy: TF.Tensor, saved: TF.Tensor[]) => {
        const [xh, is, g] = saved;
        const sumDy = tf.sum(dy, axes);
        const sumDyXhat = tf.sum(tf.mul(dy, xh), axes);
        const local2 = new Float64Array(2 * channels);
        local2.set(sumDy.dataSync() as Float32Array);
        local2.set(sumDyXhat.dataSync() as Float32Array, channels);
        const all = exchange.allSum(local2);
        const meanDy = tf.tensor1d(Float32Array.from(all.subarray(0, channels), (s) => s / count));
        const meanDyXhat = tf.tensor1d(Float32Array.from(all.subarray(channels), (s) => s / count));
        const dx = tf.mul(tf.mul(g, is), tf.sub(tf.sub(dy, meanDy), tf.mul(xh, meanDyXhat)));
        return [dx, sumDyXhat, sumDy];
      },
    };
  });
  return f(x, bn.gamma.read(), bn.beta.read()) as TF.Tensor;
}
