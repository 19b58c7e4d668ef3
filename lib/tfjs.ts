/**
 * tfjs adapter: the MarginHead as a drop-in tfjs loss.
 *
 * ```ts
 * import * as tf from '@tensorflow/tfjs';
 * import { MarginHead } from 'margin-softmax';
 * import { marginLoss } from 'margin-softmax/tfjs';
 * const loss = marginLoss(head, tf);
 * optimizer.minimize(() => loss(model.apply(x) as tf.Tensor2D, y));
 * ```
 * The forward pass runs head.step(): the fused loss, and the SGD update of
 * the head's centres, exactly once per minimize() call. The gradient handed
 * back to tfjs is the fused kernel's dLoss/dEmbeddings (times dy). Use
 * head.evaluate() for evaluation: calling the loss updates the centres.
 *
 * tfjs is an optional peer dependency: pass your tfjs module (recommended, so
 * the adapter uses the same instance and backend as your model), or it is
 * required as '@tensorflow/tfjs'.
 */
import type { MarginHead } from './head';

/** The slice of the tfjs API the adapter uses (structural, so tfjs stays optional). */
export interface TfTensor {
  shape: number[];
  dtype: string;
  dataSync(): ArrayLike<number>;
}
export interface TfLike {
  customGrad(
    f: (x: TfTensor, save: (tensors: TfTensor[]) => void) => { value: TfTensor; gradFunc: (dy: TfTensor, saved: TfTensor[]) => TfTensor },
  ): (x: TfTensor) => TfTensor;
  tensor2d(values: Float32Array, shape: [number, number]): TfTensor;
  scalar(value: number): TfTensor;
  mul(a: TfTensor, b: TfTensor): TfTensor;
}

export type MarginLossFn<T extends TfTensor = TfTensor> = (embeddings: T, labels: TfTensor | Int32Array) => T;

function toInt32(labels: TfTensor | Int32Array): Int32Array {
  if (labels instanceof Int32Array) return labels;
  const data = labels.dataSync();
  return data instanceof Int32Array ? data : Int32Array.from(data);
}

export function marginLoss<T extends TfTensor = TfTensor>(head: MarginHead, tf?: TfLike): MarginLossFn<T> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const tfm: TfLike = tf ?? require('@tensorflow/tfjs');
  return (embeddings: T, labels: TfTensor | Int32Array): T => {
    const y = toInt32(labels);
    const f = tfm.customGrad((x, save) => {
      const [n, d] = x.shape;
      const data = x.dataSync();
      const emb = data instanceof Float32Array ? data : Float32Array.from(data);
      const r = head.step(emb, y);
      const grad = tfm.tensor2d(r.gradEmbeddings, [n, d]);
      save([grad]);
      return { value: tfm.scalar(r.loss), gradFunc: (dy, saved) => tfm.mul(dy, saved[0]) };
    });
    return f(embeddings) as T;
  };
}
