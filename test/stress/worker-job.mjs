// worker-job.mjs — the body of a worker_threads Worker for the teardown
// harness: loads the library, runs one operation, and reports each stage to
// the parent ('ready', 'started', 'done'), which terminates it at one of them.
// With `exit` set, the worker calls process.exit() itself right after
// starting the operation (an async call, or a save, still in flight).
import { parentPort, workerData } from 'node:worker_threads';
import * as path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const ms = require(workerData.dist);
const { op, backend, exit, dir } = workerData;
const C = workerData.classes;
const D = workerData.dim;
const N = 64;

function problem() {
  const weights = ms.allocFloat32(C * D);
  for (let k = 0; k < weights.length; k++) weights[k] = Math.sin(k * 0.37);
  const embeddings = new Float32Array(N * D);
  for (let k = 0; k < embeddings.length; k++) embeddings[k] = Math.cos(k * 0.11);
  const labels = new Int32Array(N).map((_, i) => (i * 7919) % C);
  return { embeddings, weights, labels, dim: D };
}

const options = { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, backend };
const p = problem();
let head = null;
if (op === 'stepAsync' || op === 'predictAsync' || op === 'save') {
  head = new ms.MarginHead({ classes: C, dim: D, margin: options.margin, backend, optimizer: { lr: 0.1, momentum: 0.9 }, seed: 1 });
}

function start() {
  switch (op) {
    case 'lossAndGradAsync':
      return ms.lossAndGradAsync(p, options);
    case 'forwardAsync':
      return ms.forwardAsync(p, options);
    case 'stepAsync':
      return head.stepAsync(p.embeddings, p.labels);
    case 'predictAsync':
      return head.predictAsync(p.embeddings, 5);
    case 'save': {
      // Synchronous: the worker is terminated before, after, or (with exit) right after it.
      head.save(path.join(dir, `head-${process.pid}-${Math.random().toString(36).slice(2)}.safetensors`));
      return Promise.resolve();
    }
    default:
      throw new Error(`unknown op ${op}`);
  }
}

parentPort.postMessage('ready');
parentPort.once('message', () => {
  const running = start();
  parentPort.postMessage('started');
  if (exit) process.exit(0);
  running.then(
    () => parentPort.postMessage('done'),
    (err) => parentPort.postMessage(`failed: ${err && err.message}`),
  );
});
