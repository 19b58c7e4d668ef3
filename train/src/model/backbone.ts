/**
 * A small ResNet backbone for face-recognition embeddings, in tfjs layers.
 *
 *   input H×W×C
 *   stem:   conv3×3(w0) – BN – ReLU
 *   stages: for each width w_k (stride 1 for the first stage, 2 after), `blocks`
 *           basic residual blocks: conv3×3 – BN – ReLU – conv3×3 – BN, plus the
 *           shortcut (identity, or conv1×1 – BN when the shape changes), ReLU
 *   output: BN – Dropout – Flatten – Dense(dim) – BN   (the "BN-Dropout-FC-BN"
 *           embedding layer of ArcFace's backbones; no activation)
 *
 * Every weight is named, so that a checkpoint can be checked against the
 * configuration it is loaded into.
 */
import type * as TF from '@tensorflow/tfjs';
import type { Tf } from './tf';

export interface BackboneConfig {
  /** Input height and width in pixels. */
  height: number;
  width: number;
  /** Input channels: 1 (greyscale) or 3. */
  channels: number;
  /** Embedding size. */
  dim: number;
  /** Channel widths of the stages. */
  widths: number[];
  /** Residual blocks per stage. */
  blocks: number;
  /** Dropout before the embedding layer (0 = none). */
  dropout: number;
}

export const DEFAULT_BACKBONE: Omit<BackboneConfig, 'height' | 'width' | 'channels'> = {
  dim: 512,
  widths: [16, 32, 64],
  blocks: 1,
  dropout: 0,
};

/** BN momentum 0.9 (tfjs's 0.99 lags far behind on runs of a few hundred steps). */
const BN_MOMENTUM = 0.9;
const BN_EPSILON = 1e-5;

export function buildBackbone(tf: Tf, cfg: BackboneConfig, seed = 0): TF.LayersModel {
  checkBackboneConfig(cfg);
  let counter = 0;
  // Seeds start at 1: tfjs treats a seed of 0 as "no seed".
  const init = () => tf.initializers.heNormal({ seed: seed * 1000 + 1 + counter++ });
  const conv = (x: TF.SymbolicTensor, filters: number, kernel: number, stride: number, name: string) =>
    tf.layers
      .conv2d({ filters, kernelSize: kernel, strides: stride, padding: 'same', useBias: false, kernelInitializer: init(), name })
      .apply(x) as TF.SymbolicTensor;
  const bn = (x: TF.SymbolicTensor, name: string) =>
    tf.layers.batchNormalization({ momentum: BN_MOMENTUM, epsilon: BN_EPSILON, name }).apply(x) as TF.SymbolicTensor;
  const relu = (x: TF.SymbolicTensor, name: string) => tf.layers.reLU({ name }).apply(x) as TF.SymbolicTensor;

  const input = tf.input({ shape: [cfg.height, cfg.width, cfg.channels], name: 'image' });
  let x = relu(bn(conv(input, cfg.widths[0], 3, 1, 'stem_conv'), 'stem_bn'), 'stem_relu');
  let channels = cfg.widths[0];
  cfg.widths.forEach((w, s) => {
    for (let b = 0; b < cfg.blocks; b++) {
      const stride = s > 0 && b === 0 ? 2 : 1;
      const p = `s${s + 1}b${b + 1}`;
      let y = relu(bn(conv(x, w, 3, stride, `${p}_conv1`), `${p}_bn1`), `${p}_relu1`);
      y = bn(conv(y, w, 3, 1, `${p}_conv2`), `${p}_bn2`);
      const shortcut = stride !== 1 || channels !== w ? bn(conv(x, w, 1, stride, `${p}_proj`), `${p}_proj_bn`) : x;
      x = relu(tf.layers.add({ name: `${p}_add` }).apply([y, shortcut]) as TF.SymbolicTensor, `${p}_relu2`);
      channels = w;
    }
  });
  x = bn(x, 'out_bn');
  if (cfg.dropout > 0) x = tf.layers.dropout({ rate: cfg.dropout, seed, name: 'out_dropout' }).apply(x) as TF.SymbolicTensor;
  x = tf.layers.flatten({ name: 'out_flatten' }).apply(x) as TF.SymbolicTensor;
  x = tf.layers.dense({ units: cfg.dim, kernelInitializer: tf.initializers.glorotNormal({ seed: seed * 1000 + 1 + counter++ }), name: 'embedding' }).apply(x) as TF.SymbolicTensor;
  x = bn(x, 'embedding_bn');
  return tf.model({ inputs: input, outputs: x, name: 'resnet' });
}

export function checkBackboneConfig(cfg: BackboneConfig): void {
  const posInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
  if (!posInt(cfg.height) || !posInt(cfg.width)) throw new Error(`Expected a positive integer input size but received ${cfg.height}×${cfg.width}`);
  if (cfg.channels !== 1 && cfg.channels !== 3) throw new Error(`Expected 1 or 3 input channels but received ${cfg.channels}`);
  if (!posInt(cfg.dim)) throw new Error(`Expected a positive integer --dim but received ${cfg.dim}`);
  if (!Array.isArray(cfg.widths) || cfg.widths.length === 0 || !cfg.widths.every(posInt)) {
    throw new Error(`Expected --widths as positive integers, e.g. 16,32,64, but received ${cfg.widths}`);
  }
  if (!posInt(cfg.blocks)) throw new Error(`Expected a positive integer --blocks but received ${cfg.blocks}`);
  if (!(cfg.dropout >= 0 && cfg.dropout < 1)) throw new Error(`Expected --dropout in [0, 1) but received ${cfg.dropout}`);
}

/** Trainable parameter count. */
export function countParams(model: TF.LayersModel): number {
  return model.trainableWeights.reduce((n, w) => n + (w.shape as number[]).reduce((a, b) => a * b, 1), 0);
}
