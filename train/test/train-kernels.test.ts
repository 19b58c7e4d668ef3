/**
 * The wasm kernels that train/src/model/wasm-kernels.ts adds or replaces (conv
 * weight and input gradients, transposed matmuls, transpose) against tfjs's
 * own pure-JS 'cpu' backend on the same inputs.
 */
import { beforeAll, describe, expect, test } from 'vitest';
import type { Tensor4D } from '@tensorflow/tfjs';
import { setupTf, type Tf } from '../src/model/tf';
import { permute } from '../src/model/wasm-kernels';

let tf: Tf;
beforeAll(async () => {
  tf = await setupTf('wasm');
  expect(tf.getBackend()).toBe('wasm');
});

function rand(n: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

async function onBoth(f: () => Float32Array | Int32Array): Promise<{ wasm: number[]; cpu: number[] }> {
  await tf.setBackend('wasm');
  const wasm = Array.from(f());
  await tf.setBackend('cpu');
  const cpu = Array.from(f());
  await tf.setBackend('wasm');
  return { wasm, cpu };
}

function maxRelErr(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  let e = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    e = Math.max(e, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return e / Math.max(m, 1e-12);
}

describe('wasm conv gradients match the cpu backend', () => {
  const cases: [number[], number[], number, 'same' | 'valid'][] = [
    [[2, 9, 8, 3], [3, 3, 3, 4], 1, 'same'],
    [[2, 8, 8, 3], [3, 3, 3, 5], 2, 'same'],
    [[2, 9, 9, 2], [3, 3, 2, 4], 2, 'same'],
    [[2, 8, 8, 3], [1, 1, 3, 5], 2, 'same'],
    [[3, 7, 9, 2], [3, 3, 2, 4], 2, 'valid'],
  ];
  for (const [xs, fs, s, pad] of cases) {
    test(`x ${xs} filter ${fs} stride ${s} ${pad}`, async () => {
      const outShape = tf.tidy(() => tf.conv2d(tf.zeros(xs as [number, number, number, number]) as Tensor4D, tf.zeros(fs as [number, number, number, number]) as Tensor4D, s, pad).shape);
      const xd = rand(xs.reduce((a, b) => a * b), 1);
      const fd = rand(fs.reduce((a, b) => a * b), 2);
      const dd = rand(outShape.reduce((a, b) => a * b), 3);
      const x4 = () => tf.tensor4d(xd, xs as [number, number, number, number]);
      const f4 = () => tf.tensor4d(fd, fs as [number, number, number, number]);
      const dy = () => tf.tensor(dd, outShape);
      const dW = await onBoth(() => tf.tidy(() => tf.grad((w: any) => tf.sum(tf.mul(tf.conv2d(x4(), w, s, pad), dy())))(f4()).dataSync() as Float32Array));
      const dX = await onBoth(() => tf.tidy(() => tf.grad((x: any) => tf.sum(tf.mul(tf.conv2d(x, f4(), s, pad), dy())))(x4()).dataSync() as Float32Array));
      expect(maxRelErr(dW.wasm, dW.cpu)).toBeLessThan(1e-5);
      expect(maxRelErr(dX.wasm, dX.cpu)).toBeLessThan(1e-5);
    });
  }
});

describe('wasm transposes match the cpu backend', () => {
  test('batched matmul with transposed operands', async () => {
    const a = rand(2 * 5 * 7, 4);
    const b = rand(2 * 5 * 7, 5);
    for (const [ta, tb, bs] of [[true, false, [2, 5, 7]], [false, true, [2, 5, 7]], [true, true, [2, 7, 5]]] as const) {
      const r = await onBoth(() => tf.tidy(() => tf.matMul(tf.tensor3d(a, [2, 5, 7]), tf.tensor3d(b, bs as unknown as [number, number, number]), ta, tb).dataSync() as Float32Array));
      expect(maxRelErr(r.wasm, r.cpu)).toBeLessThan(1e-6);
    }
  });
  test('transpose of float and int tensors, any permutation', async () => {
    const a = rand(2 * 3 * 4 * 5, 6);
    for (const perm of [[1, 0, 2, 3], [3, 1, 0, 2], [0, 1, 3, 2], [3, 2, 1, 0]]) {
      const r = await onBoth(() => tf.tidy(() => tf.transpose(tf.tensor4d(a, [2, 3, 4, 5]), perm).dataSync() as Float32Array));
      expect(r.wasm).toEqual(r.cpu);
    }
    const r = await onBoth(() => tf.tidy(() => tf.transpose(tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3], 'int32')).dataSync() as Int32Array));
    expect(r.wasm).toEqual([1, 4, 2, 5, 3, 6]);
    expect(r.cpu).toEqual([1, 4, 2, 5, 3, 6]);
  });
  test('permute() on plain arrays', () => {
    const dst = new Array(6).fill(0);
    permute([0, 1, 2, 3, 4, 5], dst, [2, 3], [1, 0]);
    expect(dst).toEqual([0, 3, 1, 4, 2, 5]);
  });
});

test('the batch-norm gradient without tile() equals autodiff of the formula', async () => {
  // FusedBatchNorm's gradient is replaced by setupTf; check it against the gradient of the same
  // normalisation written with elementary ops (whose gradients are tfjs's own).
  const xs: [number, number, number, number] = [4, 3, 3, 5];
  const x = rand(4 * 3 * 3 * 5, 7);
  const g = rand(5, 8).map((v) => v + 1);
  const b = rand(5, 9);
  const dy = rand(4 * 3 * 3 * 5, 10);
  const run = (fused: boolean) =>
    tf.tidy(() => {
      const f = (xx: any, gg: any, bb: any) => {
        const { mean, variance } = tf.moments(xx, [0, 1, 2]);
        const y = fused
          ? tf.batchNorm(xx, mean, variance, bb, gg, 1e-3)
          : tf.add(tf.mul(tf.div(tf.sub(xx, mean), tf.sqrt(tf.add(variance, 1e-3))), gg), bb);
        return tf.sum(tf.mul(y, tf.tensor4d(dy, xs)));
      };
      const grads = tf.grads(f)([tf.tensor4d(x, xs), tf.tensor1d(g), tf.tensor1d(b)]);
      return grads.map((t) => Array.from(t.dataSync()));
    });
  const fused = run(true);
  const plain = run(false);
  for (let i = 0; i < 3; i++) expect(maxRelErr(fused[i], plain[i])).toBeLessThan(1e-4);
});
