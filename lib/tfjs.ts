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
 *
 * Options: `lr` (a number, or a function read at every step: a schedule) for
 * the head's centres, and `onStep(result)` called after every step with the
 * StepResult (loss, accuracy, targetCos, …) for logging.
 */
import { expected } from './errors';
import { rejectUnknownKeys } from './validate';
import type { MarginHead, StepResult } from './head/margin-head';

/** What the adapter reads of a tensor (structural: a `tf.Tensor` is one). */
export interface TfTensor {
  shape: number[];
  dtype: string;
  dataSync(): ArrayLike<number>;
}

/**
 * The slice of the tfjs API the adapter uses. The real module
 * (`import * as tf from '@tensorflow/tfjs'`, or tfjs-node) satisfies it as it
 * is; `S` is what its `scalar()` returns (`tf.Scalar`), and so what the loss
 * returns, ready for `optimizer.minimize`. The parameters of `customGrad` and
 * `mul` are left open (`any`) because tfjs declares them with its own Tensor
 * class, which a structural type cannot name without importing tfjs, an
 * optional peer dependency.
 */
export interface TfLike<S extends TfTensor = TfTensor> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  customGrad(f: (...args: any[]) => any): (...args: any[]) => any;
  tensor2d(values: Float32Array, shape: [number, number]): TfTensor;
  scalar(value: number): S;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  mul(a: any, b: any): TfTensor;
}

/** The loss function marginLoss returns: embeddings (N×d) and labels (N) → the scalar loss. */
export type MarginLossFn<S extends TfTensor = TfTensor> = (embeddings: TfTensor, labels: TfTensor | Int32Array) => S;

/** The typed view of TfLike the implementation uses. */
interface TfOps {
  customGrad(
    f: (x: TfTensor, save: (tensors: TfTensor[]) => void) => { value: TfTensor; gradFunc: (dy: TfTensor, saved: TfTensor[]) => TfTensor },
  ): (x: TfTensor) => TfTensor;
  tensor2d(values: Float32Array, shape: [number, number]): TfTensor;
  scalar(value: number): TfTensor;
  mul(a: TfTensor, b: TfTensor): TfTensor;
}

export interface MarginLossOptions {
  /** Learning rate of the head's centres: a number, or a function read at every step. Default: the head's optimizer.lr. */
  lr?: number | (() => number);
  /** Called after every step with its result (the loss, accuracy, per-row cos θ_y, …). */
  onStep?: (result: StepResult) => void;
}

function validateLossOptions(o: unknown): MarginLossOptions {
  if (o === undefined) return {};
  if (typeof o !== 'object' || o === null) expected('an object', 'marginLoss options', o);
  rejectUnknownKeys(o, ['lr', 'onStep'], 'marginLoss options');
  const { lr, onStep } = o as MarginLossOptions;
  if (lr !== undefined && typeof lr !== 'function' && !(typeof lr === 'number' && Number.isFinite(lr) && lr >= 0)) {
    expected('a finite number ≥ 0 or a function', 'options.lr', lr);
  }
  if (onStep !== undefined && typeof onStep !== 'function') expected('a function', 'options.onStep', onStep);
  return { lr, onStep };
}

/** Labels as Int32Array: an Int32Array, or an int32 tensor (a float tensor is refused, not truncated: [0.7, 1.9] is no label). */
function toInt32(labels: TfTensor | Int32Array): Int32Array {
  if (labels instanceof Int32Array) return labels;
  if (labels === null || typeof labels !== 'object' || typeof labels.dataSync !== 'function') expected('an int32 tensor or an Int32Array', 'labels', labels);
  if (labels.dtype !== 'int32') expected('an int32 tensor or an Int32Array', 'labels', labels, `a ${labels.dtype} tensor (cast it with tf.cast(labels, 'int32') if its values are integers)`);
  const data = labels.dataSync();
  return data instanceof Int32Array ? data : Int32Array.from(data);
}

/**
 * The head as a tfjs loss: `marginLoss(head, tf)(embeddings, labels)` returns
 * the loss as a scalar tensor whose gradient is the fused kernel's.
 */
export function marginLoss<S extends TfTensor = TfTensor>(head: Pick<MarginHead, 'step'>, tf?: TfLike<S>, options?: MarginLossOptions): MarginLossFn<S> {
  const { lr, onStep } = validateLossOptions(options);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const tfm = (tf ?? require('@tensorflow/tfjs')) as TfOps;
  return (embeddings: TfTensor, labels: TfTensor | Int32Array): S => {
    const y = toInt32(labels);
    const f = tfm.customGrad((x, save) => {
      const [n, d] = x.shape;
      const data = x.dataSync();
      const emb = data instanceof Float32Array ? data : Float32Array.from(data);
      // A function's value is checked by step() (typed error for a bad rate).
      const r = head.step(emb, y, { lr: typeof lr === 'function' ? lr() : lr });
      onStep?.(r);
      const grad = tfm.tensor2d(r.gradEmbeddings, [n, d]);
      save([grad]);
      return { value: tfm.scalar(r.loss), gradFunc: (dy, saved) => tfm.mul(dy, saved[0]) };
    });
    return f(embeddings) as S;
  };
}
