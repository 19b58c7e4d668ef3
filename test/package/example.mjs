// Run by scripts/test-package.sh inside a fresh project where the packed
// tarball was installed with `npm install`: the library's loss, and a tiny tfjs
// model trained for a few steps through margin-softmax/tfjs. EXPECT_ADDON says
// which binary must have been loaded: 'prebuilds' (nothing compiled at
// install) or 'build' (built from source); EXPECT_CUDA=0 that it has no CUDA.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { deviceInfo, lossAndGrad, MarginHead } from 'margin-softmax';
import { marginLoss } from 'margin-softmax/tfjs';

const require = createRequire(import.meta.url);
const pkgDir = path.dirname(require.resolve('margin-softmax/package.json'));
const addon = path.relative(pkgDir, require('node-gyp-build').resolve(pkgDir));
const expectAddon = process.env.EXPECT_ADDON ?? 'prebuilds';
assert.ok(addon.startsWith(expectAddon + path.sep), `expected the addon from ${expectAddon}/ but node-gyp-build resolves ${addon}`);
const info = deviceInfo();
if (process.env.EXPECT_CUDA === '0') assert.equal(info.cuda.compiled, false, 'a CPU-only build must not carry the CUDA backend');

// Deterministic inputs (a small LCG): N rows of dimension D, C classes.
const N = 16, C = 40, D = 8;
let s = 12345;
const rand = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
const embeddings = Float32Array.from({ length: N * D }, rand);
const weights = Float32Array.from({ length: C * D }, rand);
const labels = Int32Array.from({ length: N }, (_, i) => (i * 7) % C);

const r = lossAndGrad({ embeddings, weights, labels, dim: D }, { margin: { kind: 'adaptive' }, scale: 16 });
assert.ok(Number.isFinite(r.loss) && r.loss > 0, `loss ${r.loss}`);
assert.equal(r.gradEmbeddings.length, N * D);
assert.equal(r.gradWeights.length, C * D);
assert.ok(r.gradWeights.some((g) => g !== 0), 'the gradient with respect to the weights is all zeros');

// A one-layer tfjs model trained through the head: the loss must fall.
console.warn = () => {}; // tfjs's "install tfjs-node" banner
await tf.setBackend('cpu');
const model = tf.sequential({ layers: [tf.layers.dense({ inputShape: [D], units: D, kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) })] });
const head = new MarginHead({ classes: C, dim: D, margin: { kind: 'arcface', m: 0.2 }, scale: 16, optimizer: { lr: 0.5 }, seed: 1 });
const loss = marginLoss(head, tf);
const optimizer = tf.train.sgd(0.5);
const x = tf.tensor2d(embeddings, [N, D]);
const losses = [];
for (let step = 0; step < 30; step++) {
  const l = optimizer.minimize(() => loss(model.apply(x), labels), true);
  losses.push(l.dataSync()[0]);
  l.dispose();
}
assert.ok(losses.every(Number.isFinite), `non-finite loss in ${losses}`);
assert.ok(losses.at(-1) < 0.5 * losses[0], `the loss did not fall: ${losses[0]} → ${losses.at(-1)}`);
console.log(JSON.stringify({ addon, cuda: info.cuda.compiled, simd: info.cpu.simd, lossAndGrad: r.loss, trainLoss: [losses[0], losses.at(-1)] }));
