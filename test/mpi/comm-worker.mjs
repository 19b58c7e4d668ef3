// One rank of the collectives job of test/mpi.test.ts:
//   mpirun -np K node test/mpi/comm-worker.mjs OUT_DIR
// Runs every collective, sync and async, on each element type, with inputs
// that depend on the rank, and writes what it received to OUT_DIR/comm-R.json
// for the test to check against the values it expects.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mpiCommunicator } from '../../dist/index.js';

const comm = mpiCommunicator({ timeoutMs: 30_000 });
const { rank, size } = comm;
const out = { rank, size };
const types = { f32: Float32Array, f64: Float64Array, i32: Int32Array };
const list = (a) => Array.from(a);

for (const [name, T] of Object.entries(types)) {
  out[`gather-${name}`] = list(comm.allGather(T.from([rank, 10 * rank + 1])));
  out[`gatherAsync-${name}`] = list(await comm.allGatherAsync(T.from([rank + 100])));
  out[`sum-${name}`] = list(comm.allReduceSum(T.from([rank + 1, 2 * rank])));
  out[`sumAsync-${name}`] = list(await comm.allReduceSumAsync(T.from([rank + 1])));
  out[`bcast-${name}`] = list(comm.broadcast(T.from([rank * 3 + 7, -rank]), size - 1));
  out[`bcastAsync-${name}`] = list(await comm.broadcastAsync(T.from([rank * 5 + 2]), 0));
}
comm.barrier();
await comm.barrierAsync();

// Async collectives queued back to back complete in call order on every rank.
const queued = await Promise.all([comm.allReduceSumAsync(Float32Array.from([1])), comm.allGatherAsync(Int32Array.from([rank]))]);
out.queued = queued.map(list);

// A synchronous collective while an async one is in flight would be out of order.
const pending = comm.allReduceSumAsync(new Float32Array(4));
try {
  comm.barrier();
  out.busy = 'no error';
} catch (err) {
  out.busy = `${err.name} ${err.kind}`;
}
await pending;

try {
  comm.broadcast(new Float32Array(1), size);
  out.badRoot = 'no error';
} catch (err) {
  out.badRoot = `${err.name}: ${err.message}`;
}

// A buffer of 3·2²⁰ floats: the sum of the ranks' values, element-wise.
const big = new Float32Array(3 << 20).fill(rank + 1);
comm.allReduceSum(big);
out.bigOk = big.every((v) => v === (size * (size + 1)) / 2);

fs.writeFileSync(path.join(process.argv[2], `comm-${rank}.json`), JSON.stringify(out));
