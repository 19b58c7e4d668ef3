/**
 * A backbone replica in a worker thread (see ./replicas): it loads the main
 * thread's weights after each update; on each step it runs the forward pass
 * on its share of the batch, hands its embeddings over, backpropagates the rows of
 * dLoss/dEmbeddings it gets back, and writes its weight gradients and its
 * batch-norm moving statistics to shared memory.
 */
import { parentPort, workerData, type MessagePort } from 'worker_threads';
import type * as TF from '@tensorflow/tfjs';
import { buildBackbone } from '../model/backbone';
import { bump, CMD, CTRL, replicaBuffers, waitFor, type ReplicaBuffers, type ReplicaSpec } from './replicas';
import { setupTf, type Tf } from '../model/tf';

interface Data {
  spec: ReplicaSpec;
  sab: SharedArrayBuffer;
  weights: SharedArrayBuffer;
  errors: MessagePort;
}

/** The worker waits for the main thread as long as a run may pause between steps (an evaluation, a checkpoint). */
const IDLE_TIMEOUT_MS = 24 * 3600 * 1000;

class Replica {
  private go = 0;
  private readonly weights: Float32Array;
  constructor(
    private readonly tf: Tf,
    private readonly model: TF.LayersModel,
    private readonly spec: ReplicaSpec,
    private readonly buf: ReplicaBuffers,
    weights: SharedArrayBuffer,
  ) {
    this.weights = new Float32Array(weights);
  }

  /** Serves steps until told to exit. */
  serve(errors: MessagePort): void {
    for (;;) {
      this.awaitGo();
      const cmd = Atomics.load(this.buf.ctrl, CTRL.cmd);
      if (cmd === CMD.exit) return;
      try {
        if (cmd === CMD.load) this.loadWeights();
        else this.step();
        bump(this.buf.ctrl, CTRL.done);
      } catch (err) {
        errors.postMessage(err instanceof Error ? err.stack ?? err.message : String(err));
        Atomics.store(this.buf.ctrl, CTRL.failed, 1);
        bump(this.buf.ctrl, CTRL.done);
      }
    }
  }

  private awaitGo(): void {
    this.go++;
    waitFor(this.buf.ctrl, CTRL.go, this.go, IDLE_TIMEOUT_MS, 'the main thread');
  }

  private step(): void {
    const { tf, spec, buf } = this;
    const { height, width, channels, dim } = spec.backbone;
    const n = Atomics.load(buf.ctrl, CTRL.rows);
    tf.tidy(() => {
      const x = tf.tensor4d(buf.input.slice(0, n * height * width * channels), [n, height, width, channels]);
      // The loss of this share is the main thread's: a customGrad that hands
      // the embeddings over and returns the gradient it gets back.
      const handOver = tf.customGrad((e: TF.Tensor | TF.GradSaveFunc, save: TF.Tensor | TF.GradSaveFunc) => {
        buf.emb.set((e as TF.Tensor).dataSync() as Float32Array);
        bump(buf.ctrl, CTRL.done);
        this.awaitGo();
        const g = tf.tensor2d(buf.gradEmb.slice(0, n * dim), [n, dim]);
        (save as TF.GradSaveFunc)([g]);
        return { value: tf.scalar(0), gradFunc: (dy: TF.Tensor, saved: TF.Tensor[]) => tf.mul(dy, saved[0]) };
      });
      const vars = this.model.weights.filter((w, i) => spec.trainable[i]).map((w) => w.read() as TF.Variable);
      const { grads } = tf.variableGrads(() => handOver(this.model.apply(x, { training: true }) as TF.Tensor) as TF.Scalar, vars);
      this.writeParams(grads);
    });
  }

  private loadWeights(): void {
    let at = 0;
    this.tf.tidy(() => {
      this.model.weights.forEach((w, i) => {
        const size = this.spec.weightSizes[i];
        const v = w.read() as TF.Variable;
        v.assign(this.tf.tensor(this.weights.slice(at, at + size), v.shape, 'float32'));
        at += size;
      });
    });
  }

  /** The gradients of the trainable weights and the values of the others (moving statistics), in model.weights order. */
  private writeParams(grads: TF.NamedTensorMap): void {
    let at = 0;
    this.model.weights.forEach((w, i) => {
      const v = w.read() as TF.Variable;
      const t = this.spec.trainable[i] ? grads[v.name] : v;
      if (!t) throw new Error(`no gradient for ${v.name}`);
      this.buf.params.set(t.dataSync() as Float32Array, at);
      at += this.spec.weightSizes[i];
    });
  }
}

async function main(): Promise<void> {
  const data = workerData as Data;
  const { spec } = data;
  const tf = await setupTf(spec.tfBackend);
  const model = buildBackbone(tf, spec.backbone, spec.seed);
  const sizes = model.weights.map((w) => w.read().size);
  if (sizes.join(',') !== spec.weightSizes.join(',')) throw new Error(`replica weights [${sizes}] differ from the main model's [${spec.weightSizes}]`);
  const replica = new Replica(tf, model, spec, replicaBuffers(spec, data.sab), data.weights);
  parentPort?.postMessage({ ready: true });
  replica.serve(data.errors);
}

main().then(
  () => process.exit(0),
  (err: Error) => parentPort?.postMessage({ error: err.stack ?? err.message }),
);
