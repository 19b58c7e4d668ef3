/**
 * Training over MPI ranks (`mpirun -np K margin-softmax train --distributed mpi …`):
 * one model, the backbone data-parallel (each rank runs it on its share of
 * every batch; the gradients are averaged over the ranks before each update),
 * the head model-parallel (a ShardedMarginHead: each rank owns a slice of
 * the classes). Batch-norm statistics stay per rank (as without SyncBN).
 */
import type * as TF from '@tensorflow/tfjs';
import type { Communicator } from 'margin-softmax';
import type { Tf } from '../model/tf';

/** Rank `rank`'s share of a global batch: equal shares, the remainder dropped. */
export function shareOf<T>(items: T[], rank: number, size: number): T[] {
  const per = Math.floor(items.length / size);
  return items.slice(rank * per, (rank + 1) * per);
}

/** Rank 0's values of `vars` copied to every rank (the replicas start equal). */
export function broadcastVariables(tf: Tf, comm: Communicator, vars: TF.Variable[]): void {
  const flat = pack(vars.map((v) => v.dataSync() as Float32Array));
  comm.broadcast(flat, 0);
  unpack(flat, vars.map((v) => v.size)).forEach((data, i) => vars[i].assign(tf.tensor(data, vars[i].shape, 'float32')));
}

/** The gradients summed over the ranks and divided by their number (one all-reduce). */
export function averageGradients(tf: Tf, comm: Communicator, grads: TF.NamedTensorMap): TF.NamedTensorMap {
  const names = Object.keys(grads);
  const flat = pack(names.map((n) => grads[n].dataSync() as Float32Array));
  comm.allReduceSum(flat);
  const scale = 1 / comm.size;
  for (let i = 0; i < flat.length; i++) flat[i] *= scale;
  const out: TF.NamedTensorMap = {};
  unpack(flat, names.map((n) => grads[n].size)).forEach((data, i) => (out[names[i]] = tf.tensor(data, grads[names[i]].shape, 'float32')));
  return out;
}

function pack(parts: Float32Array[]): Float32Array {
  const flat = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    flat.set(p, at);
    at += p.length;
  }
  return flat;
}

function unpack(flat: Float32Array, sizes: number[]): Float32Array[] {
  let at = 0;
  return sizes.map((n) => flat.subarray(at, (at += n)));
}
