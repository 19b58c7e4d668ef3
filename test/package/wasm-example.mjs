// Run by scripts/test-package-wasm.sh inside a fresh project where the packed
// tarball was installed and no native addon loads (the binary deleted, or
// never built): the library must still load, choose the wasm backend for
// 'auto', say why, compute the loss the float64 reference computes, and train
// a tiny tfjs model through a MarginHead.
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { backends, deviceInfo, lossAndGrad, lossAndGradAsync, MarginHead } from 'margin-softmax';
import { marginLoss } from 'margin-softmax/tfjs';
import { referenceLoss, relMaxErr } from './reference.mjs';

const info = deviceInfo();
assert.equal(info.cpu.usable, false, 'the native addon loaded, but this test runs without it');
assert.match(info.cpu.reason ?? '', /no loadable native addon/);
assert.equal(info.wasm.usable, true, `the wasm module did not load: ${info.wasm.reason}`);
assert.equal(info.backend, 'wasm');
assert.deepEqual(backends(), ['wasm']);
assert.throws(() => lossAndGrad({ embeddings: new Float32Array(8), weights: new Float32Array(8), labels: new Int32Array(1), dim: 8 }, { margin: { kind: 'softmax' }, backend: 'cpu' }), /Expected a loadable native addon for backend 'cpu'/);

// Deterministic inputs (a small LCG): N rows of dimension D, C classes.
const N = 16, C = 40, D = 8;
let s = 12345;
const rand = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
const input = {
  embeddings: Float32Array.from({ length: N * D }, rand),
  weights: Float32Array.from({ length: C * D }, rand),
  labels: Int32Array.from({ length: N }, (_, i) => (i * 7) % C),
  dim: D,
};
const options = { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, scale: 16 };
const r = lossAndGrad(input, options);
assert.equal(r.backend, 'wasm');
const ref = referenceLoss(input, options);
// Tolerances of test/wasm-loss.test.ts (derived there).
assert.ok(Math.abs(r.loss - ref.loss) <= 5e-5 * Math.max(1, ref.loss), `loss ${r.loss} vs reference ${ref.loss}`);
assert.ok(relMaxErr(r.gradEmbeddings, ref.gradEmbeddings) <= 1e-4, 'gradEmbeddings differ from the reference');
assert.ok(relMaxErr(r.gradWeights, ref.gradWeights) <= 1e-4, 'gradWeights differ from the reference');
const a = await lossAndGradAsync(input, options);
assert.equal(a.loss, r.loss);

// A one-layer tfjs model trained through the head on the wasm backend: the loss must fall.
console.warn = () => {}; // tfjs's "install tfjs-node" banner
await tf.setBackend('cpu');
const model = tf.sequential({ layers: [tf.layers.dense({ inputShape: [D], units: D, kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) })] });
const head = new MarginHead({ classes: C, dim: D, margin: { kind: 'arcface', m: 0.2 }, scale: 16, optimizer: { lr: 0.5 }, seed: 1 });
assert.equal(head.backend, 'wasm');
const loss = marginLoss(head, tf);
const optimizer = tf.train.sgd(0.5);
const x = tf.tensor2d(input.embeddings, [N, D]);
const losses = [];
for (let step = 0; step < 30; step++) {
  const l = optimizer.minimize(() => loss(model.apply(x), input.labels), true);
  losses.push(l.dataSync()[0]);
  l.dispose();
}
assert.ok(losses.every(Number.isFinite), `non-finite loss in ${losses}`);
assert.ok(losses.at(-1) < 0.5 * losses[0], `the loss did not fall: ${losses[0]} → ${losses.at(-1)}`);
console.log(JSON.stringify({ backend: info.backend, lossAndGrad: r.loss, reference: ref.loss, trainLoss: [losses[0], losses.at(-1)] }));
