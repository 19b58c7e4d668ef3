// RSS of a process whose worker_threads use the addon and are terminated in
// the middle of their calls, cycle after cycle: each cycle starts a worker
// that builds a MarginHead (C = 50,000, d = 128: 25.6 MB of centres and as
// much momentum, the addon's own memory) and a stepAsync, and terminates it
// once the call is running. The RSS after the warm-up cycles and the slope
// over the rest say whether a dead worker's native memory comes back. A
// measurement, not a test (RSS depends on malloc arenas and V8's heap); the
// test suite checks the addon's live-bytes counter (test/stress.test.ts).
//   node --expose-gc bench/worker_teardown_rss.mjs [cycles]
import { Worker } from 'node:worker_threads';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const dist = path.resolve(here, '../dist/index.js');
const { native } = require(path.resolve(here, '../dist/native.js'));
const job = path.resolve(here, '../test/stress/worker-job.mjs');

const cycles = Number(process.argv[2] ?? 200);
const warmup = 20;

function cycle(op) {
  return new Promise((resolve, reject) => {
    const w = new Worker(job, { workerData: { dist, op, backend: 'cpu', exit: false, dir: os.tmpdir(), classes: 50_000, dim: 128 } });
    w.on('message', (m) => {
      if (m === 'ready') w.postMessage('go');
      if (m === 'started') w.terminate().then(resolve, reject);
    });
    w.on('error', reject);
  });
}

const ops = ['stepAsync', 'lossAndGradAsync', 'predictAsync', 'forwardAsync'];
const samples = [];
for (let k = 0; k < cycles; k++) {
  await cycle(ops[k % ops.length]);
  if (k + 1 >= warmup && (k + 1) % 10 === 0) {
    globalThis.gc?.();
    samples.push([k + 1, process.memoryUsage().rss, native._liveNativeBytes()]);
  }
}
const n = samples.length;
const mx = samples.reduce((a, s) => a + s[0], 0) / n;
const my = samples.reduce((a, s) => a + s[1], 0) / n;
const slope = samples.reduce((a, s) => a + (s[0] - mx) * (s[1] - my), 0) / samples.reduce((a, s) => a + (s[0] - mx) ** 2, 0);
const mb = (b) => (b / 2 ** 20).toFixed(1);
console.log(`${new Date().toISOString().slice(0, 10)}, CPU: ${os.cpus()[0]?.model ?? 'unknown'}; ${cycles} workers terminated mid-call (${warmup} warm-up), each with ${mb(2 * 50_000 * 128 * 4)} MB of centres + momentum`);
console.log(`RSS ${mb(Math.min(...samples.map((s) => s[1])))}–${mb(Math.max(...samples.map((s) => s[1])))} MB; slope ${(slope / 1024).toFixed(1)} KiB/worker; addon live bytes at the samples: ${[...new Set(samples.map((s) => s[2]))].join(', ')}`);
