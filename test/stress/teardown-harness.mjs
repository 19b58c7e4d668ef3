// teardown-harness.mjs — ends workers that use the addon at every point of
// their work, in a process of its own (an abort here must not take the test
// runner with it), then checks that this process still computes the same
// results and that the native memory the workers held has returned.
//
//   node test/stress/teardown-harness.mjs '{"backend":"cpu","rounds":2,"dir":"/tmp/x"}'
//
// Prints one JSON line: every scenario with what the worker reported last,
// the main thread's results before and after, and the addon's live bytes.
import { Worker } from 'node:worker_threads';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '../../dist/index.js');
const require = createRequire(import.meta.url);
const ms = require(dist);
const { native } = require(path.resolve(here, '../../dist/native.js'));

const cfg = JSON.parse(process.argv[2] ?? '{}');
const backend = cfg.backend ?? 'cpu';
const rounds = cfg.rounds ?? 1;
const classes = cfg.classes ?? 50_000;
const dim = cfg.dim ?? 128;
const OPS = ['lossAndGradAsync', 'forwardAsync', 'stepAsync', 'predictAsync', 'save'];
// 'racing': terminated right after being told to start, wherever it then is.
const STAGES = ['ready', 'racing', 'started', 'done'];

/** The main thread's own call, before and after: its bits must not change. */
function reference() {
  const d = 64;
  const c = 3000;
  const weights = new Float32Array(c * d).map((_, k) => Math.sin(k * 0.013));
  const embeddings = new Float32Array(32 * d).map((_, k) => Math.cos(k * 0.7));
  const labels = new Int32Array(32).map((_, i) => (i * 97) % c);
  const r = ms.lossAndGrad({ embeddings, weights, labels, dim: d }, { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, backend });
  return { loss: r.loss, gradEmbeddings: Array.from(r.gradEmbeddings.slice(0, 16)) };
}

/** One worker: runs `op`, and is ended at `stage` (or ends itself with process.exit when `exit`). */
function scenario(op, stage, exit) {
  return new Promise((resolve, reject) => {
    const w = new Worker(path.join(here, 'worker-job.mjs'), { workerData: { dist, op, backend, exit, dir: cfg.dir, classes, dim } });
    let last = 'created';
    let ended = false;
    const end = (how) => {
      if (ended) return;
      ended = true;
      // What the addon holds with this worker alive (its centres, its call's copies).
      liveDuring = Math.max(liveDuring, native._liveNativeBytes());
      w.terminate().then(() => resolve({ op, stage, exit, last, how }), reject);
    };
    w.on('message', (m) => {
      last = m;
      if (m === 'ready') {
        w.postMessage('go');
        if (stage === 'racing') end('terminate');
      }
      if (!exit && (m === stage || (stage === 'done' && m.startsWith('failed')))) end('terminate');
    });
    w.on('error', (err) => reject(err));
    w.on('exit', (code) => {
      if (!ended) {
        ended = true;
        resolve({ op, stage, exit, last, how: `exit ${code}` });
      }
    });
  });
}

let liveDuring = 0;
const before = reference();
const liveBefore = native._liveNativeBytes();
const results = [];
for (let round = 0; round < rounds; round++) {
  // One at a time: every operation, ended before, during and after its call.
  for (const op of OPS) {
    for (const stage of STAGES) results.push(await scenario(op, stage, false));
    results.push(await scenario(op, 'started', true));
  }
  // Several at once, ended together mid-call, while this thread computes too.
  const together = OPS.map((op, k) => scenario(op, k % 2 ? 'started' : 'ready', k === 2));
  const mainDuring = reference();
  results.push(...(await Promise.all(together)));
  results.push({ op: 'main', stage: 'during-workers', exit: false, last: JSON.stringify(mainDuring) === JSON.stringify(before) ? 'same' : 'different', how: 'main' });
}
for (let k = 0; k < 4; k++) {
  global.gc?.();
  await new Promise((r) => setImmediate(r));
}
const liveAfter = native._liveNativeBytes();
// Every checkpoint a worker finished is whole: it loads.
let savedLoaded = 0;
for (const f of fs.readdirSync(cfg.dir)) {
  if (!f.endsWith('.safetensors')) continue;
  ms.MarginHead.load(path.join(cfg.dir, f), { backend }).dispose();
  savedLoaded++;
}
const after = reference();
const asyncAfter = await ms.lossAndGradAsync(
  {
    embeddings: new Float32Array(32 * 64).map((_, k) => Math.cos(k * 0.7)),
    weights: new Float32Array(3000 * 64).map((_, k) => Math.sin(k * 0.013)),
    labels: new Int32Array(32).map((_, i) => (i * 97) % 3000),
    dim: 64,
  },
  { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, backend },
);
console.log(
  JSON.stringify({
    results,
    sameAfter: JSON.stringify(after) === JSON.stringify(before),
    asyncSame: asyncAfter.loss === before.loss,
    liveBefore,
    liveDuring,
    liveAfter,
    savedLoaded,
  }),
);
