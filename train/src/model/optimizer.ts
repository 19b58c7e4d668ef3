/**
 * SGD with momentum and weight decay for the backbone, with the same update
 * rule as torch.optim.SGD and as the MarginHead's centres:
 *   g ← ∇ + λ·w (λ only for conv / dense kernels, not batch-norm or bias),
 *   v ← μ·v + g,  w ← w − lr·v.
 * The learning rate is passed per step (the schedule lives in the loop).
 */
import type * as TF from '@tensorflow/tfjs';
import type { Tf } from './tf';

export interface SgdConfig {
  momentum: number;
  weightDecay: number;
}

export class BackboneSgd {
  private readonly velocity: TF.Variable[];
  private readonly decay: boolean[];
  constructor(
    private readonly tf: Tf,
    private readonly weights: TF.LayerVariable[],
    private readonly cfg: SgdConfig,
  ) {
    this.velocity = weights.map((w) => tf.variable(tf.zerosLike(w.read()), false));
    this.decay = weights.map((w) => /kernel/.test(w.originalName ?? w.name));
  }

  /** The variables to differentiate, in the order of `weights`. */
  get variables(): TF.Variable[] {
    return this.weights.map((w) => w.read() as TF.Variable);
  }

  step(grads: TF.NamedTensorMap, lr: number): void {
    const tf = this.tf;
    tf.tidy(() => {
      this.weights.forEach((w, i) => {
        const v = w.read() as TF.Variable;
        let g = grads[v.name];
        if (!g) return;
        if (this.decay[i] && this.cfg.weightDecay > 0) g = tf.add(g, tf.mul(v, this.cfg.weightDecay));
        const nv = this.cfg.momentum > 0 ? tf.add(tf.mul(this.velocity[i], this.cfg.momentum), g) : g;
        if (this.cfg.momentum > 0) this.velocity[i].assign(nv);
        v.assign(tf.sub(v, tf.mul(nv, lr)));
      });
    });
  }

  /** Momentum buffers, named after the weights (for checkpoints). */
  state(): { name: string; tensor: TF.Tensor }[] {
    return this.weights.map((w, i) => ({ name: `${w.originalName ?? w.name}/momentum`, tensor: this.velocity[i] }));
  }

  setState(named: TF.NamedTensorMap): void {
    this.weights.forEach((w, i) => {
      const name = `${w.originalName ?? w.name}/momentum`;
      const t = named[name];
      if (!t) throw new Error(`optimizer state has no '${name}'`);
      if (t.shape.join(',') !== this.velocity[i].shape.join(',')) {
        throw new Error(`optimizer state '${name}' has shape [${t.shape}] but the weight has [${this.velocity[i].shape}]`);
      }
      this.velocity[i].assign(t);
    });
  }

  dispose(): void {
    for (const v of this.velocity) v.dispose();
  }
}
