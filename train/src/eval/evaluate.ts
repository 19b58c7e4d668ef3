/**
 * Embeddings of a set of images with a backbone (inference mode: batch norm
 * uses its moving statistics), optional test-time flip averaging, and the
 * verification protocol of ./protocol on them.
 */
import type * as TF from '@tensorflow/tfjs';
import { flipHorizontal } from '../data/images';
import { loadBatch, subset, type BadImagePolicy, type DataSource, type InputShape } from '../data/datasets';
import { l2normalize, verify, type VerificationResult } from './protocol';
import type { Tf } from '../model/tf';

export interface EmbedOptions extends InputShape {
  batchSize?: number;
  /** Average the embeddings of the image and its mirror image. */
  flip?: boolean;
  onBadImage?: BadImagePolicy;
  warn?: (msg: string) => void;
}

/** L2-normalised embeddings (N×dim) of `classes`' images, with their labels (indices into `classes`). */
export function embed(tf: Tf, model: TF.LayersModel, src: DataSource, classes: string[], o: EmbedOptions): { emb: Float32Array; labels: Int32Array; dim: number } {
  const samples = subset(src, classes);
  const bs = o.batchSize ?? 64;
  const dim = (model.outputs[0].shape[1] as number) ?? 0;
  const chunks: Float32Array[] = [];
  const labels: number[] = [];
  const per = o.height * o.width * o.channels;
  for (let i = 0; i < samples.length; i += bs) {
    const batch = loadBatch(src, samples.slice(i, i + bs), o, o.onBadImage ?? 'stop', o.warn);
    const n = batch.labels.length;
    if (!n) continue;
    const run = (data: Float32Array) =>
      tf.tidy(() => {
        const x = tf.tensor4d(data, [n, o.height, o.width, o.channels]);
        return (model.predict(x) as TF.Tensor).dataSync() as Float32Array;
      });
    const e = Float32Array.from(run(batch.data));
    if (o.flip) {
      const mirrored = batch.data.slice();
      for (let k = 0; k < n; k++) flipHorizontal(mirrored, k * per, o.height, o.width, o.channels);
      // Average of the two L2-normalised embeddings.
      const f = l2normalize(Float32Array.from(run(mirrored)), dim);
      l2normalize(e, dim);
      for (let k = 0; k < e.length; k++) e[k] += f[k];
    }
    chunks.push(e);
    labels.push(...batch.labels);
  }
  const emb = new Float32Array(labels.length * dim);
  let off = 0;
  for (const c of chunks) {
    emb.set(c, off);
    off += c.length;
  }
  return { emb: l2normalize(emb, dim), labels: Int32Array.from(labels), dim };
}

export interface EvaluateOptions extends EmbedOptions {
  seed?: number;
  folds?: number;
}

export function evaluateVerification(tf: Tf, model: TF.LayersModel, src: DataSource, classes: string[], o: EvaluateOptions): VerificationResult {
  const { emb, labels, dim } = embed(tf, model, src, classes, o);
  return verify(emb, dim, labels, { seed: o.seed ?? 0, folds: o.folds ?? 10 });
}
