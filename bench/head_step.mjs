// bench/head_step.mjs — MarginHead step time and memory (docs/benchmarks.md, MarginHead.step).
// N = 128, d = 512, adaptive margin, SGD momentum 0.9; C from the command line
// (default 1e5 and 1e6). For each size the fp32 head and the bf16 head
// (weightsDtype 'bfloat16': bf16 centres, stochastic rounding) run one after
// the other in this process (--dtypes float32 or bfloat16 for one of them);
// peak RSS is read from /proc (VmHWM) so it includes the centres and momentum.
// Each step is followed by lossAndGrad on the same centres (getWeights(): for
// the bf16 head the bf16 values widened, with weightsDtype 'bfloat16', so the
// same product path), with options.out reused, and the report gives the median
// of the per-round ratios step / lossAndGrad: what the fused SGD update costs
// beyond the gradient it replaces.
// With --checkpoint DIR it also times save/load of the largest head.
// Run: node --expose-gc bench/head_step.mjs [C ...] [--dtypes float32,bfloat16] [--checkpoint DIR]
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
const require = createRequire(import.meta.url);
const { MarginHead, lossAndGrad, allocFloat32 } = require('../dist/index.js');
const { native } = require('../dist/native.js');

const args = process.argv.slice(2);
const sizes = args.filter((a) => /^\d/.test(a)).map(Number);
const ckIdx = args.indexOf('--checkpoint');
const ckDir = ckIdx >= 0 ? args[ckIdx + 1] : null;
const dtIdx = args.indexOf('--dtypes');
const dtypes = dtIdx >= 0 ? args[dtIdx + 1].split(',') : ['float32', 'bfloat16'];
const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? 'unknown CPU';
console.log(`${cpu}, ${native.info().cpu.threads} threads, bf16 path ${native.info().cpu.matrix}`);
const N = 128, d = 512, reps = 5;
const hwm = () => Number(fs.readFileSync('/proc/self/status', 'utf8').match(/VmHWM:\s+(\d+)/)[1]) * 1024;
const gib = (b) => (b / 2 ** 30).toFixed(2) + ' GiB';

for (const C of sizes.length ? sizes : [1e5, 1e6]) for (const weightsDtype of dtypes) {
  const head = new MarginHead({ classes: C, dim: d, margin: { kind: 'adaptive' }, weightsDtype, optimizer: { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 }, seed: 1 });
  const x = native.gaussian(0, 1, 2, 0, N * d);
  const y = new Int32Array(N).map((_, i) => (i * 7919) % C);
  head.step(x, y); // warm-up (touches the momentum buffer)
  const w = head.getWeights();
  const lossOptions = {
    margin: { kind: 'adaptive' },
    weightsDtype,
    out: { perSample: new Float32Array(N), gradEmbeddings: new Float32Array(N * d), gradWeights: allocFloat32(C * d) },
  };
  const input = { embeddings: x, weights: w, labels: y, dim: d };
  lossAndGrad(input, lossOptions); // warm-up (touches gradWeights)
  const times = [];
  const ratios = [];
  const ms = (t) => Number(process.hrtime.bigint() - t) / 1e6;
  for (let r = 0; r < reps; r++) {
    let t = process.hrtime.bigint();
    head.step(x, y);
    const step = ms(t);
    t = process.hrtime.bigint();
    lossAndGrad(input, lossOptions);
    const loss = ms(t);
    times.push(step);
    ratios.push(step / loss);
  }
  times.sort((a, b) => a - b);
  ratios.sort((a, b) => a - b);
  const med = times[Math.floor(reps / 2)];
  const ratio = ratios[Math.floor(reps / 2)];
  const state = C * d * (weightsDtype === 'bfloat16' ? 2 : 4) + C * d * 4;
  console.log(`C=${C} ${weightsDtype}: step median ${med.toFixed(0)} ms [${times[0].toFixed(0)}–${times[reps - 1].toFixed(0)}] ` +
    `(${(6 * N * d * C / med / 1e6).toFixed(0)} GFLOP/s), step / lossAndGrad ${ratio.toFixed(2)} [${ratios[0].toFixed(2)}–${ratios[reps - 1].toFixed(2)}], ` +
    `centres+momentum ${gib(state)}, peak RSS so far ${gib(hwm())}`);
  if (ckDir && C === Math.max(...(sizes.length ? sizes : [1e5, 1e6]))) {
    fs.mkdirSync(ckDir, { recursive: true });
    const file = path.join(ckDir, `head-${C}-${weightsDtype}.safetensors`);
    const before = hwm();
    let t = Date.now();
    head.save(file);
    const tSave = Date.now() - t;
    const afterSave = hwm();
    head.dispose();
    // Run with --expose-gc: release the disposed head's memory before loading
    // (N-API finalizers of external buffers run on a later tick).
    globalThis.gc?.();
    await new Promise((r) => setImmediate(r));
    globalThis.gc?.();
    await new Promise((r) => setTimeout(r, 100));
    const rssBeforeLoad = process.memoryUsage().rss;
    t = Date.now();
    const back = MarginHead.load(file);
    const tLoad = Date.now() - t;
    const rssAfterLoad = process.memoryUsage().rss;
    console.log(`  save ${tSave} ms (peak RSS ${gib(before)} before → ${gib(afterSave)} after: no second copy), ` +
      `load ${tLoad} ms (RSS ${gib(rssBeforeLoad)} → ${gib(rssAfterLoad)}), file ${gib(fs.statSync(file).size)}`);
    back.dispose();
    fs.rmSync(file);
  } else {
    // Free this head before the next size, so the next peak RSS is its own.
    head.dispose();
    globalThis.gc?.();
    await new Promise((r) => setTimeout(r, 100));
  }
}
