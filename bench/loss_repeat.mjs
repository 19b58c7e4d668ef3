// bench/loss_repeat.mjs — the simplest view of the CPU performance figure of docs/benchmarks.md: one process,
// N = 128, d = 512, C = 10⁵ (or argv[2]), adaptive margin, 9 forward + backward
// calls with fresh output arrays, then 9 with the outputs reused (options.out).
//   node bench/loss_repeat.mjs [C]
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const { lossAndGrad } = require('../dist/index.js');
const { native } = require('../dist/native.js');

const N = 128, d = 512, C = Number(process.argv[2] ?? 100000);
const x = native.gaussian(0, 1, 1, 0, N * d);
const w = native.gaussian(0, 1, 2, 0, C * d);
const labels = new Int32Array(N).map((_, i) => (i * 7919) % C);
const out = { gradWeights: new Float32Array(C * d), gradEmbeddings: new Float32Array(N * d), perSample: new Float32Array(N) };
const input = { embeddings: x, weights: w, labels, dim: d };
const flops = 6 * N * d * C;
for (const mode of ['fresh outputs', 'outputs reused']) {
  const opts = { margin: { kind: 'adaptive' }, ...(mode === 'outputs reused' ? { out } : {}) };
  lossAndGrad(input, opts); // warm-up
  const ts = [];
  for (let r = 0; r < 9; r++) {
    const t = process.hrtime.bigint();
    lossAndGrad(input, opts);
    ts.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  ts.sort((a, b) => a - b);
  console.log(`C=${C} ${mode}: median ${ts[4].toFixed(0)} ms (${(flops / ts[4] / 1e6).toFixed(0)} GFLOP/s), ` +
    `min ${ts[0].toFixed(0)} ms (${(flops / ts[0] / 1e6).toFixed(0)}), max ${ts[8].toFixed(0)} ms`);
}
