/**
 * Training over MPI ranks (`mpirun -np K margin-softmax train --distributed mpi …`):
 * one model, the backbone data-parallel (each rank runs it on its share of
 * every batch; the gradients are averaged over the ranks before each update),
 * the head model-parallel (a ShardedMarginHead: each rank owns a slice of
 * the classes). Batch-norm statistics stay per rank (as without SyncBN);
 * a resumed run starts every rank from rank 0's.
 *
 * No folder needs to be shared between the ranks' hosts: rank 0 writes the
 * run folder (backbone, optimizer, metrics, plots) in its --out; every rank
 * writes its shard of the head in its own --out (see headShardsDir). On
 * --resume rank 0 reads the run checkpoint and sends the backbone and the
 * optimizer state to the others; each rank reads the shards it needs from
 * its own folder.
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as TF from '@tensorflow/tfjs';
import { ShardedMarginHead, type Communicator } from 'margin-softmax';
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

/**
 * The head's shards live in `<out>/head-shards` on every rank's host (beside
 * rank 0's run checkpoint, not inside it: each rank writes where it runs, so
 * no folder needs to be shared). state.json names the generation (the head's
 * step count) that goes with the run checkpoint; the shard folder keeps the
 * newest two, so a save interrupted between the two leaves a matching pair.
 */
export function headShardsDir(out: string): string {
  return path.join(out, 'head-shards');
}

export function saveShardedHead(sharded: ShardedMarginHead, out: string): void {
  sharded.save(headShardsDir(out), { keep: 2 });
}

export function loadShardedHead(out: string, comm: Communicator, step: number): ShardedMarginHead {
  return ShardedMarginHead.load(headShardsDir(out), { comm, step });
}

/** What rank 0 found to resume: the completed epochs and the head's step, or null for a fresh run. */
export interface ResumePoint {
  epoch: number;
  step: number;
  /** Batches of epoch `epoch + 1` already run (a run stopped within it), else 0. */
  batchesDone: number;
}

/**
 * Rank 0 decides whether and where the run resumes (it holds the run
 * checkpoint); every rank gets the same answer, or the same failure, with
 * one broadcast.
 */
export function agreeOnResume(comm: Communicator, decide: () => ResumePoint | null): ResumePoint | null {
  const msg = new Float64Array(4);
  let failure: unknown = null;
  if (comm.rank === 0) {
    try {
      const p = decide();
      msg.set(p ? [1, p.epoch, p.step, p.batchesDone] : [0, 0, 0, 0]);
    } catch (err) {
      failure = err;
      msg[0] = -1;
    }
  }
  comm.broadcast(msg, 0);
  if (failure) throw failure;
  if (msg[0] < 0) throw new Error('Rank 0 could not prepare the run folder (its message says why)');
  return msg[0] === 1 ? { epoch: msg[1], step: msg[2], batchesDone: msg[3] } : null;
}

/** Where a rank stopped within an epoch: the batches done and its augmentation RNG (the ranks' differ). */
export interface RankPlace {
  epoch: number;
  batchesDone: number;
  rngState: number;
}

/** Written into the head generation about to be saved (step-S), so it lives and goes with this rank's shard. */
export function writeRankResume(out: string, sharded: ShardedMarginHead, place: RankPlace): void {
  const dir = path.join(headShardsDir(out), `step-${sharded.stepCount}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, `place-rank-${sharded.rank}-of-${sharded.size}.json`), JSON.stringify(place) + '\n');
}

export function readRankResume(out: string, sharded: ShardedMarginHead, step: number): RankPlace {
  const file = path.join(headShardsDir(out), `step-${step}`, `place-rank-${sharded.rank}-of-${sharded.size}.json`);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as RankPlace;
  } catch (err) {
    throw new Error(`Cannot resume within the epoch: ${file} (where this rank stopped) is unreadable: ${(err as Error).message}`);
  }
}

/** Whether any rank asked to stop (one small all-reduce): every rank stops after the same batch. */
export function anyRankStops(comm: Communicator, requested: boolean): boolean {
  return comm.allReduceSum(new Int32Array([requested ? 1 : 0]))[0] > 0;
}
