// One rank of a multi-process job started by test/mpi.test.ts with mpirun:
//   mpirun -np K node test/mpi/sharded-worker.mjs '<job JSON>'
// Reads the batches the test wrote (x.bin, y.bin in job.dir), runs the
// sharded head over the MPI communicator, and writes what the test compares:
// out-R.json (per-step loss, accuracy) and grad-S-R.bin (this rank's dLoss/dX
// per step); optionally loads from / saves to a sharded checkpoint (paths
// relative to the rank's working folder: its own host's folder under
// test/hosts/netns-mpirun.sh).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mpiCommunicator, ShardedMarginHead } from '../../dist/index.js';

const job = JSON.parse(process.argv[2]);
const comm = mpiCommunicator({ timeoutMs: job.timeoutMs ?? 60_000 });
const { N, dim } = job;

const read = (file, Type) => {
  const b = fs.readFileSync(path.join(job.dir, file));
  return new Type(b.buffer, b.byteOffset, b.length / Type.BYTES_PER_ELEMENT).slice();
};
const x = read('x.bin', Float32Array);
const y = read('y.bin', Int32Array);

// Fault injection: this rank stops at its `fault.call`-th all-gather, counted
// from the start (in a step: after phase 1 has run locally) or, with
// fault.phase 'save', from the start of the save (call 1: its shard is
// written, the manifests are not).
let phase = 'run';
const faulty = job.fault && job.fault.rank === comm.rank ? wrapWithFault(comm, job.fault) : comm;

const head = job.loadFrom
  ? ShardedMarginHead.load(job.loadFrom, { comm: faulty })
  : new ShardedMarginHead({ ...job.head, comm: faulty });

const out = { rank: comm.rank, size: comm.size, offset: head.offset, count: head.localClasses, steps: [] };
for (let s = job.firstStep ?? 0; s < job.steps; s++) {
  const xs = x.subarray(s * N * dim, (s + 1) * N * dim);
  const ys = y.subarray(s * N, (s + 1) * N);
  let r;
  if (job.local) {
    // Data parallel: this rank's rows only (N / K each, in rank order).
    const rows = N / comm.size;
    r = head.stepLocal(xs.slice(comm.rank * rows * dim, (comm.rank + 1) * rows * dim), ys.slice(comm.rank * rows, (comm.rank + 1) * rows));
  } else if (job.async) {
    r = await head.stepAsync(xs, ys);
  } else {
    r = head.step(xs, ys);
  }
  fs.writeFileSync(path.join(job.dir, `grad-${s}-${comm.rank}.bin`), Buffer.from(r.gradEmbeddings.buffer));
  out.steps.push({ loss: r.loss, accuracy: r.accuracy, traffic: r.traffic });
}
if (job.predictK) {
  const p = head.predict(x.subarray(0, N * dim), job.predictK);
  out.predict = Array.from(p.classes);
}
phase = 'save';
if (job.saveTo) head.save(job.saveTo);
fs.writeFileSync(path.join(job.dir, `out-${comm.rank}.json`), JSON.stringify(out));
console.log(`rank ${comm.rank} done`);

function wrapWithFault(c, fault) {
  let calls = 0;
  const w = Object.create(c);
  w.allGather = (a) => {
    if ((fault.phase ?? 'run') === phase && ++calls === fault.call) {
      if (fault.mode === 'kill') process.kill(process.pid, 'SIGKILL');
      // 'stall': never reach the collective (a hung or mismatched rank).
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 120_000);
    }
    return c.allGather(a);
  };
  return w;
}
