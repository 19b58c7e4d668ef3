/**
 * The loss the backbone trains against: the MarginHead through the tfjs
 * adapter (margin-softmax/tfjs marginLoss), timed, and what its steps report
 * (the accuracy, and θ_y into the epoch's reservoir).
 */
import type * as TF from '@tensorflow/tfjs';
import type { MarginHead, ShardedMarginHead, StepResult } from 'margin-softmax';
import { marginLoss, type MarginLossFn } from 'margin-softmax/tfjs';
import { Rng, subSeed } from '../data/rng';
import type { Tf } from '../model/tf';
import type { TrainConfig } from './config';
import { ThetaReservoir } from './metrics';
import type { BackboneReplicas } from './replicas';

export interface HeadLoss {
  fn: MarginLossFn<TF.Scalar>;
  /** The head's learning rate, read by the adapter at every step (the schedule sets it per epoch). */
  lr: number;
  /** The last step's result (accuracy). */
  last: StepResult | null;
  theta: ThetaReservoir;
  /** Seconds spent in head.step() so far (the head's share of a step). */
  headSeconds: number;
}

/**
 * The adapter calls head.step() once per forward pass, with the scheduled
 * learning rate; each step's result gives the accuracy and θ_y (against the
 * centres before the update). Distributed: each rank passes its rows, the
 * head gathers the global batch.
 */
export function makeHeadLoss(cfg: TrainConfig, tf: Tf, head: MarginHead, sharded: ShardedMarginHead | null, replicas: BackboneReplicas | null): HeadLoss {
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
