// bench/train_step.mjs — where a training step's time goes (the training
// application's backbone on the tfjs wasm backend, the fused head): per batch,
// CPU milliseconds of
//   load      read + decode + resize the batch's images from disk (data.loadBatch)
//   cached    the same batch from the decoded-image cache (train/src/data/decoded-cache.ts, what
//             the training loop does after the first epoch)
//   augment   random affine warp of every image (train/src/data/augment.ts; --rotate 10 etc.)
//   forward   backbone forward, training mode (batch-norm statistics)
//   fwd+bwd   forward and backward of the backbone (tf.variableGrads) with the head as its loss
//   head      the fused head step alone (MarginHead.step: loss, gradient, centre update)
//   update    the backbone's SGD update (momentum, weight decay)
// CPU time (process.cpuUsage, user + system) rather than wall time: the
// machine is shared, and this process is single-threaded (no --workers here),
// so its CPU time is the step's cost however busy the cores are.
// Needs the training package built (npx tsc -p train/tsconfig.json).
// The backbone's batch norm is the training loop's (train/src/model/sync-batch-norm.ts, closed
// form); --bn-ab instead times fwd+bwd with tfjs's own batch norm and with the
// closed form, interleaved in this process, and their largest gradient difference.
// Run: node bench/train_step.mjs [--data DIR] [--sizes 32,48] [--widths 16,32,64] [--batch 32] [--reps 8] [--bn-ab]
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
const require = createRequire(import.meta.url);
const { MarginHead } = require('../dist/index.js');
const { marginLoss } = require('../dist/tfjs.js');
const { setupTf } = require('../train/dist/model/tf.js');
const { buildBackbone } = require('../train/dist/model/backbone.js');
const { scanImageFolder, loadBatch, subset } = require('../train/dist/data/datasets.js');
const { drawAffine, warpAffine } = require('../train/dist/data/augment.js');
const { DecodedCache } = require('../train/dist/data/decoded-cache.js');
const { batchNormInTraining } = require('../train/dist/model/sync-batch-norm.js');
const { BackboneSgd } = require('../train/dist/model/optimizer.js');
const { Rng } = require('../train/dist/data/rng.js');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const dataDir = arg('data', '../shared/data/omniglot_background');
const sizes = arg('sizes', '32').split(',').map(Number);
const widths = arg('widths', '16,32,64').split(',').map(Number);
const bs = Number(arg('batch', '32'));
const reps = Number(arg('reps', '8'));
const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? 'unknown CPU';
const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
console.log(`${cpu}; load average ${load} at the start; batch ${bs}, widths ${widths.join('/')}, dim 512; CPU ms per batch (median of ${reps})`);

const tf = await setupTf('wasm');
const src = scanImageFolder(dataDir);
const samples = subset(src, src.classes);
const cpuMs = (f) => {
  const t = process.cpuUsage();
  const r = f();
  const d = process.cpuUsage(t);
  return [(d.user + d.system) / 1000, r];
};
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

if (process.argv.includes('--bn-ab')) {
  for (const size of sizes) bnAb(size);
  process.exit(0);
}

/** fwd+bwd CPU ms with tfjs's batch norm (A) and the closed form (B), interleaved; the largest gradient difference relative to the largest gradient. */
function bnAb(size) {
  const mk = (closed) => {
    const model = buildBackbone(tf, { height: size, width: size, channels: 1, dim: 512, widths, blocks: 1, dropout: 0 }, 0);
    if (closed) batchNormInTraining(tf, model);
    const head = new MarginHead({ classes: 180, dim: 512, margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, scale: 64, seed: 0, backend: 'cpu', optimizer: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 } });
    return { model, loss: marginLoss(head, tf, { lr: 0 }), vars: model.trainableWeights.map((w) => w.read()) };
  };
  const A = mk(false);
  const B = mk(true);
  const x = tf.randomNormal([bs, size, size, 1]);
  const labels = Int32Array.from({ length: bs }, (_, i) => i % 180);
  const step = (m) => {
    const [ms, g] = cpuMs(() => {
      const { value, grads } = tf.variableGrads(() => m.loss(m.model.apply(x, { training: true }), labels), m.vars);
      const out = m.vars.map((v) => Float32Array.from(grads[v.name].dataSync()));
      tf.dispose([value, ...Object.values(grads)]);
      return out;
    });
    return [ms, g];
  };
  step(A);
  step(B);
  const ta = [];
  const tb = [];
  let diff = 0;
  let scale = 0;
  for (let r = 0; r < reps; r++) {
    const [a, ga] = step(A);
    const [b, gb] = step(B);
    ta.push(a);
    tb.push(b);
    ga.forEach((g, i) => g.forEach((v, j) => ((diff = Math.max(diff, Math.abs(v - gb[i][j]))), (scale = Math.max(scale, Math.abs(v))))));
  }
  console.log(
    `${size}×${size} fwd+bwd CPU ms, interleaved (median of ${reps}): tfjs batch norm ${median(ta).toFixed(1)}, closed form ${median(tb).toFixed(1)} ` +
      `(${(median(ta) / median(tb)).toFixed(2)}×); largest gradient difference ${(diff / scale).toExponential(1)} of the largest gradient`,
  );
}

for (const size of sizes) {
  const shape = { height: size, width: size, channels: 1 };
  const model = buildBackbone(tf, { ...shape, dim: 512, widths, blocks: 1, dropout: 0 }, 0);
  batchNormInTraining(tf, model);
  const classes = src.classes.length;
  const head = new MarginHead({ classes, dim: 512, margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, scale: 64, seed: 0, backend: 'cpu', optimizer: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 } });
  const loss = marginLoss(head, tf, { lr: 0.01 });
  const opt = new BackboneSgd(tf, model.trainableWeights, { momentum: 0.9, weightDecay: 5e-4 });
  const rng = new Rng(1);
  const ranges = { rotate: 10, scale: 0.1, shear: 10, shift: size / 16 };
  const cache = new DecodedCache(src, shape);
  const t = { load: [], cached: [], augment: [], forward: [], 'fwd+bwd': [], head: [], update: [] };
  for (let r = 0; r < reps + 1; r++) {
    const rows = Array.from({ length: bs }, () => samples[rng.int(samples.length)]);
    const [tl] = cpuMs(() => loadBatch(src, rows, shape, 'stop'));
    cache.load(rows, 'stop');
    const [tc, batch] = cpuMs(() => cache.load(rows, 'stop'));
    const per = size * size;
    const scratch = new Float32Array(per);
    const [ta] = cpuMs(() => {
      for (let i = 0; i < bs; i++) warpAffine(batch.data, i * per, size, size, 1, drawAffine(ranges, rng), scratch);
    });
    const x = tf.tensor4d(batch.data, [bs, size, size, 1]);
    const [tf1, emb] = cpuMs(() => tf.tidy(() => Float32Array.from(model.apply(x, { training: true }).dataSync())));
    const [th] = cpuMs(() => head.step(emb, batch.labels, { lr: 0.01 }));
    const [tfb, grads] = cpuMs(() => {
      const { value, grads } = tf.variableGrads(() => loss(model.apply(x, { training: true }), batch.labels), opt.variables);
      value.dataSync();
      value.dispose();
      for (const g of Object.values(grads)) g.dataSync();
      return grads;
    });
    const [tu] = cpuMs(() => opt.step(grads, 0.01));
    tf.dispose(Object.values(grads));
    x.dispose();
    if (r === 0) continue; // warm-up
    t.load.push(tl);
    t.cached.push(tc);
    t.augment.push(ta);
    t.forward.push(tf1);
    t['fwd+bwd'].push(tfb - th); // the head ran inside; its own row below
    t.head.push(th);
    t.update.push(tu);
  }
  const row = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
  const rest = row.augment + row['fwd+bwd'] + row.head + row.update;
  const [disk, mem] = [rest + row.load, rest + row.cached];
  console.log(
    `${size}×${size}: ` +
      Object.entries(row)
        .map(([k, v]) => `${k} ${v.toFixed(1)}`)
        .join(', ') +
      ` | step from disk ${disk.toFixed(1)} ms = ${((1000 * bs) / disk).toFixed(1)} img/s per core, from the cache ${mem.toFixed(1)} ms = ${((1000 * bs) / mem).toFixed(1)} img/s;` +
      ` backbone fwd+bwd ${((100 * row['fwd+bwd']) / mem).toFixed(0)} % of the cached step`,
  );
  opt.dispose();
  model.dispose();
  head.dispose();
}
