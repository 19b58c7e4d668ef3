/**
 * Collectives between processes for the sharded head: all-gather, all-reduce
 * (sum), broadcast and barrier on typed arrays, synchronous and async (on the
 * libuv pool). The engine is MPI where the addon was built with it (see
 * `mpiInfo()`); run the processes with `mpirun -np K node …`.
 *
 * Every rank must issue the same collectives in the same order. A collective
 * that does not complete within `timeoutMs` (a peer died, or called something
 * else) throws a CommError of kind 'timeout'; the communicator is then
 * unusable, and the process aborts the whole job when it exits, so that no
 * peer waits forever. A process that exits with a non-zero code also aborts
 * the job.
 *
 * NCCL (device buffers) would sit behind the same Communicator interface; it
 * is not built in this version.
 */
import * as fs from 'node:fs';
import { inspect } from 'node:util';
import { expected } from '../errors';
import { native } from '../native';

export type CommArray = Float32Array | Float64Array | Int32Array;

export type CommErrorKind = 'unavailable' | 'timeout' | 'broken' | 'busy' | 'mpi';

/** A collective failed: no engine, a timeout (a peer died or is out of step), or an MPI error. */
export class CommError extends Error {
  readonly code = 'ERR_MARGIN_SOFTMAX_COMM';
  readonly kind: CommErrorKind;
  constructor(kind: CommErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CommError';
    this.kind = kind;
  }
}

export interface MpiInfo {
  /** The addon was built with MPI. */
  compiled: boolean;
  engine?: 'mpi';
  /** The MPI library's version string. */
  library?: string;
  /** MPI has been initialised in this process (by mpiCommunicator()). */
  initialized?: boolean;
  /** Why there are no MPI collectives, when there are none. */
  reason?: string;
}

export interface Communicator {
  readonly engine: 'mpi' | 'local';
  readonly rank: number;
  readonly size: number;
  /** Every rank's `send`, concatenated in rank order (size × send.length). */
  allGather<T extends CommArray>(send: T): T;
  allGatherAsync<T extends CommArray>(send: T): Promise<T>;
  /** Element-wise sum over ranks, in place; returns `buf`. */
  allReduceSum<T extends CommArray>(buf: T): T;
  allReduceSumAsync<T extends CommArray>(buf: T): Promise<T>;
  /** `root`'s buffer copied into every rank's `buf` (in place); returns `buf`. */
  broadcast<T extends CommArray>(buf: T, root?: number): T;
  broadcastAsync<T extends CommArray>(buf: T, root?: number): Promise<T>;
  barrier(): void;
  barrierAsync(): Promise<void>;
}

interface CommNatives {
  _commInfo(): MpiInfo;
  _commInit(timeoutS: number): { rank: number; size: number };
  _commSetTimeout(timeoutS: number): void;
  _commAllGather(send: CommArray, recv: CommArray, async: boolean): Promise<void> | undefined;
  _commAllReduce(buf: CommArray, async: boolean): Promise<void> | undefined;
  _commBroadcast(buf: CommArray, root: number, async: boolean): Promise<void> | undefined;
  _commBarrier(async: boolean): Promise<void> | undefined;
  _commShutdown(abortCode: number): void;
}

const natives = native as unknown as CommNatives;

/** Whether the addon has MPI collectives, and if not, why. */
export function mpiInfo(): MpiInfo {
  return natives._commInfo();
}

export interface MpiCommunicatorOptions {
  /**
   * Longest wait for one collective, in ms. Default 600 000 (10 min). The
   * wait includes the slowest peer's compute before it reaches the
   * collective, so keep it well above a step's time.
   */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 600_000;

function toCommError(err: unknown): never {
  const e = err as { code?: string; kind?: CommErrorKind; message?: string };
  if (e?.code === 'ERR_MARGIN_SOFTMAX_COMM') throw new CommError(e.kind ?? 'mpi', e.message ?? String(err), { cause: err });
  throw err;
}

function checkArray(a: unknown, what: string): asserts a is CommArray {
  if (!(a instanceof Float32Array || a instanceof Float64Array || a instanceof Int32Array)) {
    expected('a Float32Array, Float64Array or Int32Array', what, a);
  }
}

function checkTimeout(ms: unknown): number {
  if (ms === undefined) return DEFAULT_TIMEOUT_MS;
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0) expected('a positive number of milliseconds', 'timeoutMs', ms);
  return ms;
}

class MpiCommunicator implements Communicator {
  readonly engine = 'mpi' as const;
  /** Async collectives run one after another, in the order they were called. */
  private queue: Promise<unknown> = Promise.resolve();
  private inFlight = 0;

  constructor(
    readonly rank: number,
    readonly size: number,
  ) {}

  allGather<T extends CommArray>(send: T): T {
    const recv = this.gatherTarget(send);
    this.sync(() => natives._commAllGather(send, recv, false));
    return recv;
  }

  async allGatherAsync<T extends CommArray>(send: T): Promise<T> {
    const recv = this.gatherTarget(send);
    await this.enqueue(() => natives._commAllGather(send, recv, true) as Promise<void>);
    return recv;
  }

  allReduceSum<T extends CommArray>(buf: T): T {
    checkArray(buf, 'allReduceSum buffer');
    this.sync(() => natives._commAllReduce(buf, false));
    return buf;
  }

  async allReduceSumAsync<T extends CommArray>(buf: T): Promise<T> {
    checkArray(buf, 'allReduceSum buffer');
    await this.enqueue(() => natives._commAllReduce(buf, true) as Promise<void>);
    return buf;
  }

  broadcast<T extends CommArray>(buf: T, root = 0): T {
    this.checkBroadcast(buf, root);
    this.sync(() => natives._commBroadcast(buf, root, false));
    return buf;
  }

  async broadcastAsync<T extends CommArray>(buf: T, root = 0): Promise<T> {
    this.checkBroadcast(buf, root);
    await this.enqueue(() => natives._commBroadcast(buf, root, true) as Promise<void>);
    return buf;
  }

  barrier(): void {
    this.sync(() => natives._commBarrier(false));
  }

  async barrierAsync(): Promise<void> {
    return this.enqueue(() => natives._commBarrier(true) as Promise<void>);
  }

  private gatherTarget<T extends CommArray>(send: T): T {
    checkArray(send, 'allGather input');
    const Ctor = send.constructor as new (n: number) => T;
    return new Ctor(send.length * this.size);
  }

  private checkBroadcast(buf: CommArray, root: number): void {
    checkArray(buf, 'broadcast buffer');
    if (!Number.isInteger(root) || root < 0 || root >= this.size) expected(`an integer rank in [0, ${this.size - 1}]`, 'root', root);
  }

  private sync(call: () => unknown): void {
    // A synchronous collective overtaking a queued async one would put this
    // rank's collectives out of the order of its peers'.
    if (this.inFlight > 0) throw new CommError('busy', 'Expected no async collective in flight for a synchronous collective but one is still running (await it first)');
    try {
      call();
    } catch (err) {
      toCommError(err);
    }
  }

  private enqueue<R>(call: () => Promise<R>): Promise<R> {
    this.inFlight++;
    const run = this.queue.then(call, call);
    this.queue = run.catch(() => undefined);
    return run.then(
      (v) => {
        this.inFlight--;
        return v;
      },
      (err) => {
        this.inFlight--;
        return toCommError(err);
      },
    );
  }
}

let world: MpiCommunicator | null = null;

/**
 * The MPI world communicator of this process (MPI is initialised on the first
 * call). Without mpirun it is a world of one. Throws CommError 'unavailable'
 * where the addon was built without MPI.
 */
export function mpiCommunicator(options: MpiCommunicatorOptions = {}): Communicator {
  if (options === null || typeof options !== 'object') expected('an options object { timeoutMs? }', 'mpiCommunicator options', options);
  const timeoutS = checkTimeout(options.timeoutMs) / 1000;
  if (world) {
    try {
      natives._commSetTimeout(timeoutS);
    } catch (err) {
      toCommError(err);
    }
    return world;
  }
  let r: { rank: number; size: number };
  try {
    r = natives._commInit(timeoutS);
  } catch (err) {
    toCommError(err);
  }
  // Finalise on a clean exit; abort every rank on a failing one (a peer
  // blocked in a collective with this process would otherwise wait forever).
  // Node emits 'exit' before it prints an uncaught exception, and the abort
  // would kill the process before the message is out: print it first.
  let fatal: unknown = null;
  process.on('uncaughtExceptionMonitor', (err) => {
    fatal = err;
  });
  process.once('exit', (code) => {
    if (code !== 0 && fatal !== null) fs.writeSync(2, `${inspect(fatal)}\n`);
    natives._commShutdown(code);
  });
  world = new MpiCommunicator(r.rank, r.size);
  return world;
}

/**
 * A world of one process: every collective is the identity (all-gather
 * returns a copy). For running sharded code in a single process.
 */
export function localCommunicator(): Communicator {
  const same = <T extends CommArray>(buf: T, what: string): T => {
    checkArray(buf, what);
    return buf;
  };
  return {
    engine: 'local',
    rank: 0,
    size: 1,
    allGather: (send) => same(send, 'allGather input').slice() as typeof send,
    allGatherAsync: async (send) => same(send, 'allGather input').slice() as typeof send,
    allReduceSum: (buf) => same(buf, 'allReduceSum buffer'),
    allReduceSumAsync: async (buf) => same(buf, 'allReduceSum buffer'),
    broadcast: (buf, root = 0) => {
      if (root !== 0) expected('rank 0 (a world of one)', 'root', root);
      return same(buf, 'broadcast buffer');
    },
    broadcastAsync: async (buf, root = 0) => {
      if (root !== 0) expected('rank 0 (a world of one)', 'root', root);
      return same(buf, 'broadcast buffer');
    },
    barrier: () => undefined,
    barrierAsync: async () => undefined,
  };
}
