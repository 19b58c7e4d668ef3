/**
 * Data-parallel backbone replicas in worker threads (--workers N): the
 * backbone is the step's cost, and the tfjs wasm backend runs on one core in
 * Node, so N replicas each run the forward and backward pass on a share of
 * the batch. Replica 0 is the main thread's model; replicas 1…N−1 live in
 * worker threads (./replica-worker).
 *
 * One step:
 *   1. the main thread writes shares 1…N−1 of the (augmented) batch to
 *      shared memory and starts the workers; it runs its own share's forward;
 *   2. the head (MarginHead, exact as with one replica) steps on the whole
 *      batch: the embeddings of every share in batch order; each replica gets
 *      its rows of dLoss/dEmbeddings and backpropagates them;
 *   3. the weight gradients are summed in replica order (a fixed order: a seed
 *      gives the same run), the batch-norm moving statistics averaged over
 *      the replicas, and the main thread's optimizer (momentum and weight
 *      decay, once) updates its model; the workers load its weights at the
 *      start of the next step.
 * What differs from one replica: each batch-norm layer normalises a share
 * with that share's statistics (as data-parallel training without SyncBN).
 *
 * The threads meet through SharedArrayBuffers and Atomics.wait (the step is
 * synchronous on both sides: the head's loss is computed inside tfjs's
 * forward pass, which cannot await).
 */
import * as fs from 'fs';
import * as path from 'path';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'worker_threads';
import type * as TF from '@tensorflow/tfjs';
import type { MarginHead, StepResult } from 'margin-softmax';
import type { BackboneConfig } from '../model/backbone';
import type { Tf, TfBackendName } from '../model/tf';

/** Slots of a replica's control array (Int32Array over shared memory). */
export const CTRL = {
  /** Bumped by the main thread: a new command. */
  go: 0,
  /** Bumped by the worker: its embeddings are written, then its gradients. */
  done: 1,
  cmd: 2,
  /** Rows of this replica's share. */
  rows: 3,
  /** Set by the worker when a step failed (the message follows on the error port). */
  failed: 4,
} as const;
export const CMD = { step: 1, load: 2, exit: 3 } as const;
const CTRL_SLOTS = 8;

/** What a worker needs to build its replica and find its buffers. */
export interface ReplicaSpec {
  backbone: BackboneConfig;
  seed: number;
  tfBackend: TfBackendName;
  maxRows: number;
  /** Sizes of model.weights, in order (trainable first as tfjs lists them). */
  weightSizes: number[];
  /** Which of model.weights are trainable (get gradients). */
  trainable: boolean[];
}

/** One replica's shared buffers (the layout both sides compute from the spec). */
export interface ReplicaBuffers {
  ctrl: Int32Array;
  input: Float32Array;
  emb: Float32Array;
  gradEmb: Float32Array;
  /** Gradients of the trainable weights, then the non-trainable weights' values (batch-norm moving statistics), packed in model.weights order. */
  params: Float32Array;
}

export function replicaBuffers(spec: ReplicaSpec, sab: SharedArrayBuffer): ReplicaBuffers {
  const per = spec.backbone.height * spec.backbone.width * spec.backbone.channels;
  const floats = [spec.maxRows * per, spec.maxRows * spec.backbone.dim, spec.maxRows * spec.backbone.dim, sum(spec.weightSizes)];
  let at = CTRL_SLOTS * 4;
  const views = floats.map((n) => {
    const v = new Float32Array(sab, at, n);
    at += n * 4;
    return v;
  });
  return { ctrl: new Int32Array(sab, 0, CTRL_SLOTS), input: views[0], emb: views[1], gradEmb: views[2], params: views[3] };
}

export function replicaBytes(spec: ReplicaSpec): number {
  const per = spec.backbone.height * spec.backbone.width * spec.backbone.channels;
  return CTRL_SLOTS * 4 + 4 * (spec.maxRows * per + 2 * spec.maxRows * spec.backbone.dim + sum(spec.weightSizes));
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

/** Waits until ctrl[slot] reaches `target` (a worker that died or hung for `timeoutMs` is an error, not a hang). */
export function waitFor(ctrl: Int32Array, slot: number, target: number, timeoutMs: number, what: string): void {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = Atomics.load(ctrl, slot);
    if (v >= target) return;
    if (Date.now() > deadline) throw new Error(`A backbone replica did not answer within ${timeoutMs / 1000} s (${what})`);
    Atomics.wait(ctrl, slot, v, 1000);
  }
}

export function bump(ctrl: Int32Array, slot: number): void {
  Atomics.add(ctrl, slot, 1);
  Atomics.notify(ctrl, slot);
}

/** The compiled worker script (train/dist), also when the sources run under a test runner. */
function workerScript(): string {
  const candidates = [path.join(__dirname, 'replica-worker.js'), path.join(__dirname, '..', '..', 'dist', 'run', 'replica-worker.js')];
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) throw new Error(`--workers > 1 needs the compiled worker script (${candidates[1]}): run npm run build:ts`);
  return found;
}

/** A step's rows per replica: equal shares (the first ones one row more), each at least 2 (batch norm), so fewer replicas for a small batch. */
export function sharesOf(rows: number, replicas: number): number[] {
  const m = Math.max(1, Math.min(replicas, Math.floor(rows / 2)));
  const base = Math.floor(rows / m);
  return Array.from({ length: m }, (_, k) => base + (k < rows % m ? 1 : 0));
}

const STEP_TIMEOUT_MS = 10 * 60 * 1000;

interface Remote {
  worker: Worker;
  buf: ReplicaBuffers;
  errors: MessagePort;
  /** The `done` count the main thread has seen. */
  done: number;
  /** A load of the published weights is outstanding. */
  loading: boolean;
}

export class BackboneReplicas {
  private remotes: Remote[] = [];
  /** The main thread's weights, read by every worker at the start of a step. */
  private readonly weights: Float32Array;
  private readonly weightsSab: SharedArrayBuffer;
  /** The shares of the step in flight (replica 0 first). */
  private shares: number[] = [];

  private constructor(
    private readonly tf: Tf,
    private readonly model: TF.LayersModel,
    private readonly spec: ReplicaSpec,
  ) {
    this.weightsSab = new SharedArrayBuffer(4 * sum(spec.weightSizes));
    this.weights = new Float32Array(this.weightsSab);
  }

  /** Starts `count − 1` worker replicas of `model` (its current weights). */
  static async start(tf: Tf, model: TF.LayersModel, count: number, opts: { backbone: BackboneConfig; seed: number; tfBackend: TfBackendName; maxRows: number }): Promise<BackboneReplicas> {
    const spec: ReplicaSpec = {
      ...opts,
      weightSizes: model.weights.map((w) => w.read().size),
      trainable: model.weights.map((w) => w.trainable),
    };
    const r = new BackboneReplicas(tf, model, spec);
    try {
      for (let k = 1; k < count; k++) r.remotes.push(await r.spawn());
      r.publishWeights();
    } catch (err) {
      await r.close();
      throw err;
    }
    return r;
  }

  get count(): number {
    return this.remotes.length + 1;
  }

  private async spawn(): Promise<Remote> {
    const sab = new SharedArrayBuffer(replicaBytes(this.spec));
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(workerScript(), { workerData: { spec: this.spec, sab, weights: this.weightsSab, errors: port2 }, transferList: [port2] });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', (m: { ready?: boolean; error?: string }) => (m.ready ? resolve() : reject(new Error(`A backbone replica failed to start: ${m.error}`))));
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`A backbone replica exited with code ${code} while starting`)));
    });
    worker.removeAllListeners('exit');
    worker.removeAllListeners('error');
    worker.on('error', () => {}); // reported through the failed flag and the error port
    worker.unref(); // never what keeps the process alive (close() ends it)
    return { worker, buf: replicaBuffers(this.spec, sab), errors: port1, done: 0, loading: false };
  }

  /**
   * Hands shares 1… of the batch (rows × H×W×C in `data`) to the workers and
   * starts their forward pass; returns replica 0's rows (the first ones).
   */
  scatter(data: Float32Array, rows: number): number {
    this.shares = sharesOf(rows, this.count);
    const per = data.length / rows;
    let at = this.shares[0];
    this.shares.slice(1).forEach((n, i) => {
      const { buf } = this.remotes[i];
      buf.input.set(data.subarray(at * per, (at + n) * per));
      Atomics.store(buf.ctrl, CTRL.rows, n);
      this.command(this.remotes[i], CMD.step);
      at += n;
    });
    return this.shares[0];
  }

  /**
   * The head as the main replica's loss sees it: its own embeddings in, the
   * whole batch's step (every share's embeddings in batch order), its own
   * rows of the gradient out, the other rows sent to their workers.
   */
  gatheringHead(head: Pick<MarginHead, 'step'>): Pick<MarginHead, 'step'> {
    return {
      step: (emb0: Float32Array, labels: Int32Array, options?: { lr?: number }): StepResult => {
        const d = this.spec.backbone.dim;
        const all = new Float32Array(labels.length * d);
        all.set(emb0);
        let at = this.shares[0];
        this.forEachActive((r, n) => {
          this.awaitDone(r, 'its embeddings');
          all.set(r.buf.emb.subarray(0, n * d), at * d);
          at += n;
        });
        const result = head.step(all, labels, options);
        at = this.shares[0];
        this.forEachActive((r, n) => {
          r.buf.gradEmb.set(result.gradEmbeddings.subarray(at * d, (at + n) * d));
          bump(r.buf.ctrl, CTRL.go);
          at += n;
        });
        return { ...result, gradEmbeddings: result.gradEmbeddings.subarray(0, this.shares[0] * d) };
      },
    };
  }

  /**
   * The weight gradients of the whole batch: replica 0's (`grads`) plus the
   * workers', summed in replica order; the batch-norm moving statistics of
   * the main model set to the mean over the replicas.
   */
  reduce(grads: TF.NamedTensorMap): TF.NamedTensorMap {
    const tf = this.tf;
    const active = this.remotes.slice(0, this.shares.length - 1);
    for (const r of active) this.awaitDone(r, 'its gradients');
    const out: TF.NamedTensorMap = {};
    let at = 0;
    this.model.weights.forEach((w, i) => {
      const size = this.spec.weightSizes[i];
      const v = w.read() as TF.Variable;
      const acc = Float32Array.from((this.spec.trainable[i] ? grads[v.name] : v).dataSync() as Float32Array);
      for (const r of active) addInto(acc, r.buf.params.subarray(at, at + size));
      if (this.spec.trainable[i]) out[v.name] = tf.tensor(acc, v.shape, 'float32');
      else {
        const scale = 1 / (active.length + 1);
        for (let j = 0; j < size; j++) acc[j] *= scale;
        v.assign(tf.tensor(acc, v.shape, 'float32'));
      }
      at += size;
    });
    return out;
  }

  /**
   * The main model's weights (after the update) into shared memory; the
   * workers load them at once, while this thread reads the next batch.
   */
  publishWeights(): void {
    for (const r of this.remotes) this.settle(r);
    let at = 0;
    for (const w of this.model.weights) {
      const data = w.read().dataSync() as Float32Array;
      this.weights.set(data, at);
      at += data.length;
    }
    for (const r of this.remotes) this.command(r, CMD.load);
  }

  /** Waits until the worker has loaded the weights last published (before they change, or before its next step). */
  private settle(r: Remote): void {
    if (r.loading) this.awaitDone(r, 'its weights');
    r.loading = false;
  }

  private command(r: Remote, cmd: number): void {
    this.settle(r);
    r.loading = cmd === CMD.load;
    Atomics.store(r.buf.ctrl, CTRL.cmd, cmd);
    bump(r.buf.ctrl, CTRL.go);
  }

  private forEachActive(f: (r: Remote, rows: number) => void): void {
    this.shares.slice(1).forEach((n, i) => f(this.remotes[i], n));
  }

  private awaitDone(r: Remote, what: string): void {
    r.done++;
    waitFor(r.buf.ctrl, CTRL.done, r.done, STEP_TIMEOUT_MS, what);
    if (Atomics.load(r.buf.ctrl, CTRL.failed)) {
      const msg = receiveMessageOnPort(r.errors)?.message as string | undefined;
      throw new Error(`A backbone replica failed: ${msg ?? 'no message'}`);
    }
  }

  async close(): Promise<void> {
    for (const r of this.remotes) {
      Atomics.store(r.buf.ctrl, CTRL.cmd, CMD.exit);
      bump(r.buf.ctrl, CTRL.go);
    }
    await Promise.all(this.remotes.map((r) => r.worker.terminate()));
    for (const r of this.remotes) r.errors.close();
    this.remotes = [];
  }
}

function addInto(acc: Float32Array, x: Float32Array): void {
  for (let j = 0; j < acc.length; j++) acc[j] += x[j];
}
