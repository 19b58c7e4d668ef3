/**
 * Loading TensorFlow.js for training in Node, and choosing its backend.
 *
 * Backends that install from the npm registry alone: 'cpu' (pure JavaScript)
 * and 'wasm' (@tensorflow/tfjs-backend-wasm: XNNPACK compiled to WebAssembly
 * with SIMD; single-threaded in Node, see tfjs issue 3830).
 * `@tensorflow/tfjs-node` downloads libtensorflow at install time and cannot
 * be installed without internet access, so it is not used.
 *
 * The wasm backend has no Conv2DBackpropFilter kernel (the weight gradient of
 * a 2-D convolution), so a conv net cannot train on it out of the box. This
 * module registers one for 'wasm', written with the backend's own kernels:
 * for each filter tap (kh, kw) the matching strided window of the padded
 * input, [N·H'·W', Cin], is multiplied by dy, [N·H'·W', Cout], with the
 * XNNPACK matrix product (im2col one tap at a time).
 */
import type * as TF from '@tensorflow/tfjs';

export type TfBackendName = 'cpu' | 'wasm';
export type Tf = typeof TF;

let cached: Tf | null = null;

/** The tfjs module (loaded once, lazily: the rest of the package does not need it). */
export function tfModule(): Tf {
  if (!cached) {
    // Silence tfjs's "use tfjs-node for speed" banner: we say why it is not used above.
    const warn = console.warn;
    const log = console.log;
    console.warn = () => {};
    console.log = () => {};
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      cached = require('@tensorflow/tfjs') as Tf;
    } finally {
      console.warn = warn;
      console.log = log;
    }
  }
  return cached;
}

let wasmRegistered = false;

/** Loads the wasm backend and the missing Conv2DBackpropFilter kernel. */
function registerWasm(tf: Tf): void {
  if (wasmRegistered) return;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  require('@tensorflow/tfjs-backend-wasm');
  if (!tf.getKernel('Conv2DBackpropFilter', 'wasm')) {
    tf.registerKernel({ kernelName: 'Conv2DBackpropFilter', backendName: 'wasm', kernelFunc: conv2DBackpropFilterWasm as never });
  }
  wasmRegistered = true;
}

/**
 * Sets the tfjs backend: 'wasm' (default: the fastest that installs here, see
 * the README's measurements) or 'cpu'. Returns the tfjs module.
 */
export async function setupTf(backend: TfBackendName | 'auto' = 'auto'): Promise<Tf> {
  const tf = tfModule();
  const want: TfBackendName = backend === 'auto' ? 'wasm' : backend;
  if (want !== 'cpu' && want !== 'wasm') throw new Error(`Expected --tf-backend cpu or wasm but received ${JSON.stringify(backend)}`);
  if (want === 'wasm') registerWasm(tf);
  if (tf.getBackend() !== want) {
    const ok = await tf.setBackend(want);
    if (!ok) throw new Error(`tfjs backend '${want}' failed to initialise`);
  }
  await tf.ready();
  return tf;
}

// ---- Conv2DBackpropFilter for the wasm backend ------------------------------

interface TensorInfo {
  dataId: object;
  shape: number[];
  dtype: string;
}
interface KernelArgs {
  inputs: { x: TensorInfo; dy: TensorInfo };
  backend: { disposeData(id: object): void };
  attrs: {
    strides: number | [number, number];
    pad: 'same' | 'valid' | number | number[][];
    dataFormat?: 'NHWC' | 'NCHW';
    dimRoundingMode?: 'floor' | 'round' | 'ceil';
    filterShape: [number, number, number, number];
  };
}

function conv2DBackpropFilterWasm(args: KernelArgs): TensorInfo {
  const tf = tfModule();
  const { inputs, backend, attrs } = args;
  const { x, dy } = inputs;
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs;
  if ((dataFormat ?? 'NHWC') !== 'NHWC') throw new Error('Conv2DBackpropFilter (wasm): only NHWC is supported');
  const info = tf.backend_util.computeConv2DInfo(x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode);
  const kernel = (name: string) => {
    const k = tf.getKernel(name, 'wasm');
    if (!k) throw new Error(`Conv2DBackpropFilter (wasm): kernel ${name} is missing`);
    return k.kernelFunc as unknown as (a: unknown) => TensorInfo;
  };
  const padK = kernel('PadV2');
  const sliceK = kernel('StridedSlice');
  const reshapeK = kernel('Reshape');
  const matmulK = kernel('BatchMatMul');
  const concatK = kernel('Concat');
  const { top, bottom, left, right } = info.padInfo;
  const N = info.batchSize;
  const Ho = info.outHeight;
  const Wo = info.outWidth;
  const Ci = info.inChannels;
  const Co = info.outChannels;
  const sh = info.strideHeight;
  const sw = info.strideWidth;
  const kh = info.filterHeight;
  const kw = info.filterWidth;
  const M = N * Ho * Wo;
  const tmp: TensorInfo[] = [];
  let xp = x;
  if (top || bottom || left || right) {
    xp = padK({ inputs: { x }, backend, attrs: { paddings: [[0, 0], [top, bottom], [left, right], [0, 0]], constantValue: 0 } });
    tmp.push(xp);
  }
  const dy2 = reshapeK({ inputs: { x: dy }, backend, attrs: { shape: [M, Co] } });
  tmp.push(dy2);
  const taps: TensorInfo[] = [];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const win = sliceK({
        inputs: { x: xp },
        backend,
        attrs: {
          begin: [0, i, j, 0],
          end: [N, i + (Ho - 1) * sh + 1, j + (Wo - 1) * sw + 1, Ci],
          strides: [1, sh, sw, 1],
          beginMask: 0,
          endMask: 0,
          ellipsisMask: 0,
          newAxisMask: 0,
          shrinkAxisMask: 0,
        },
      });
      const win2 = reshapeK({ inputs: { x: win }, backend, attrs: { shape: [M, Ci] } });
      tmp.push(win, win2);
      // [Ci, M] · [M, Co] → [Ci, Co]
      const g = matmulK({ inputs: { a: win2, b: dy2 }, backend, attrs: { transposeA: true, transposeB: false } });
      const g2 = reshapeK({ inputs: { x: g }, backend, attrs: { shape: [1, Ci, Co] } });
      tmp.push(g);
      taps.push(g2);
    }
  }
  let out: TensorInfo;
  if (taps.length === 1) {
    out = reshapeK({ inputs: { x: taps[0] }, backend, attrs: { shape: [kh, kw, Ci, Co] } });
  } else {
    const cat = concatK({ inputs: taps, backend, attrs: { axis: 0 } });
    out = reshapeK({ inputs: { x: cat }, backend, attrs: { shape: [kh, kw, Ci, Co] } });
    tmp.push(cat);
  }
  tmp.push(...taps);
  for (const t of tmp) backend.disposeData(t.dataId);
  return out;
}
