/**
 * The browser test's page script (bundled by test/wasm-browser.test.ts with
 * esbuild): in a real browser, no Node and no native addon, the library must
 * load, compile its wasm module from a URL (initWasm), compute the loss on the
 * wasm backend as the float64 reference does, and train a tiny tfjs model
 * through a MarginHead and the tfjs adapter. The outcome goes to
 * window.__result for the test to read.
 */
import * as tf from '@tensorflow/tfjs';
import { backends, deviceInfo, initWasm, lossAndGrad, MarginHead } from '../../lib/index';
import { marginLoss } from '../../lib/tfjs';
import { referenceLoss, relMaxErr } from '../reference.mjs';

declare const window: { __result?: unknown; __error?: string };

async function run(): Promise<unknown> {
  await initWasm({ url: '/margin_softmax.wasm' });
  const info = deviceInfo();
  const N = 16, C = 40, D = 8;
  let s = 12345;
  const rand = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const input = {
    embeddings: Float32Array.from({ length: N * D }, rand),
    weights: Float32Array.from({ length: C * D }, rand),
    labels: Int32Array.from({ length: N }, (_, i) => (i * 7) % C),
    dim: D,
  };
  const options = { margin: { kind: 'adaptive' as const, m1: 0.03, m2: 0.5 }, scale: 16 };
  const r = lossAndGrad(input, options);
  const ref = referenceLoss(input, options);

  await tf.setBackend('cpu');
  const model = tf.sequential({ layers: [tf.layers.dense({ inputShape: [D], units: D, kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) })] });
  const head = new MarginHead({ classes: C, dim: D, margin: { kind: 'arcface', m: 0.2 }, scale: 16, optimizer: { lr: 0.5 }, seed: 1 });
  const loss = marginLoss(head, tf);
  const optimizer = tf.train.sgd(0.5);
  const x = tf.tensor2d(input.embeddings, [N, D]);
  const losses: number[] = [];
  for (let step = 0; step < 30; step++) {
    const l = optimizer.minimize(() => loss(model.apply(x) as tf.Tensor2D, input.labels) as tf.Scalar, true) as tf.Scalar;
    losses.push(l.dataSync()[0]);
    l.dispose();
  }
  return {
    backends: backends(),
    backend: info.backend,
    cpuReason: info.cpu.reason,
    lossBackend: r.backend,
    loss: r.loss,
    refLoss: ref.loss,
    gradEmbeddingsErr: relMaxErr(r.gradEmbeddings, ref.gradEmbeddings),
    gradWeightsErr: relMaxErr(r.gradWeights, ref.gradWeights),
    headBackend: head.backend,
    losses,
  };
}

run().then(
  (r) => (window.__result = r),
  (e: Error) => (window.__error = `${e.name}: ${e.message}\n${e.stack}`),
);
