/**
 * Loading TensorFlow.js for training in Node, and choosing its backend.
 *
 * Backends that install from the npm registry alone: 'cpu' (pure JavaScript)
 * and 'wasm' (@tensorflow/tfjs-backend-wasm: XNNPACK compiled to WebAssembly
 * with SIMD; single-threaded in Node, see tfjs issue 3830: its threaded
 * build does load in Node 20 when the blob: URLs of its pthread workers are
 * shimmed, but XNNPACK then reports one thread and runs no faster, and the
 * JavaScript kernels of ./wasm-kernels would stay on one core anyway; the
 * second core is used by backbone replicas instead, --workers, ./replicas).
 * `@tensorflow/tfjs-node` downloads libtensorflow at install time and cannot
 * be installed without internet access, so it is not used.
 *
 * Measured on the default backbone (32×32×1 input, widths 16/32/64, dim 512,
 * batch 32; CPU time of one process on this 2-core machine):
 *   wasm (with the kernels below): ≈ 420 ms per training step (≈ 75 img/s),
 *                                  ≈ 640 img/s inference;
 *   cpu:                           ≈ 106 s per training step (0.3 img/s),
 *                                  ≈ 20 img/s inference.
 * So 'wasm' is the default; 'cpu' stays selectable (--tf-backend cpu).
 *
 * The wasm backend cannot train a conv net as it comes: it has no
 * Conv2DBackpropFilter kernel (the weight gradient of a 2-D convolution), and
 * its Conv2DBackpropInput, Transpose and transposed BatchMatMul are naive
 * loops tens of times slower than its XNNPACK forward kernels. setupTf('wasm')
 * registers replacements (see ./wasm-kernels): im2col / col2im and transposes
 * written in JavaScript directly on the wasm heap, around the one fast
 * XNNPACK matrix product. It also replaces tfjs's FusedBatchNorm gradient by
 * the same formula without a full-size tile() (broadcasting instead).
 */
import type * as TF from '@tensorflow/tfjs';
import { registerWasmKernels } from './wasm-kernels';

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
  registerWasmKernels(tf);
  wasmRegistered = true;
}

/**
 * Sets the tfjs backend: 'wasm' (default: the fastest that installs here, see
 * the measurements in train/README.md) or 'cpu'. Returns the tfjs module.
 */
export async function setupTf(backend: TfBackendName | 'auto' = 'auto'): Promise<Tf> {
  const tf = tfModule();
  registerBatchNormGrad(tf);
  const want: TfBackendName = backend === 'auto' ? 'wasm' : backend;
  if (want !== 'cpu' && want !== 'wasm') throw new Error(`Expected --tf-backend cpu or wasm but received ${JSON.stringify(backend)}`);
  if (want === 'wasm') registerWasm(tf);
  if (tf.getBackend() !== want) {
    const warn = console.warn;
    const log = console.log;
    console.warn = () => {};
    console.log = () => {};
    let ok: boolean;
    try {
      ok = await tf.setBackend(want);
    } finally {
      console.warn = warn;
      console.log = log;
    }
    if (!ok) throw new Error(`tfjs backend '${want}' failed to initialise`);
  }
  await tf.ready();
  return tf;
}

let bnGradRegistered = false;

/**
 * tfjs's FusedBatchNorm gradient tiles 1/sqrt(var + eps) to the full input
 * shape before multiplying; broadcasting gives the same values without the
 * N×H×W×C temporary (the wasm Tile kernel is slow). Same formulas otherwise.
 */
function registerBatchNormGrad(tf: Tf): void {
  if (bnGradRegistered) return;
  bnGradRegistered = true;
  type T = TF.Tensor;
  const warn = console.warn;
  console.warn = () => {};
  try {
    tf.registerGradient({
      kernelName: 'FusedBatchNorm',
      inputsToSave: ['x', 'mean', 'variance', 'scale'],
      gradFunc: (dy: T | T[], saved: T[], attrs: TF.NamedAttrMap) => {
        const g = dy as T;
        const eps = (attrs as unknown as { varianceEpsilon: number }).varianceEpsilon;
        const [x, mean, variance, scale] = saved;
        const scaleValue = scale == null ? tf.scalar(1) : scale;
        const axes = tf.backend_util.getReductionAxes(mean.shape, x.shape);
        const reduce = (t: T) => (mean.rank === 1 && axes.length ? tf.sum(t, axes) : t);
        const xMinusMean = tf.sub(x, mean);
        const dyTimesScale = tf.mul(g, scaleValue);
        const rstd = tf.rsqrt(tf.add(variance, tf.scalar(eps)));
        const minusHalfRCube = tf.mul(tf.mul(tf.mul(rstd, rstd), rstd), tf.scalar(-0.5));
        return {
          x: () => tf.reshape(tf.mul(tf.mul(g, rstd), scaleValue), x.shape),
          mean: () => tf.reshape(reduce(tf.mul(tf.mul(rstd, tf.scalar(-1)), dyTimesScale)), mean.shape),
          variance: () => tf.reshape(reduce(tf.mul(tf.mul(minusHalfRCube, xMinusMean), dyTimesScale)), mean.shape),
          scale: () => tf.reshape(reduce(tf.mul(g, tf.mul(xMinusMean, rstd))), mean.shape),
          offset: () => tf.reshape(reduce(g), mean.shape),
        };
      },
    });
  } finally {
    console.warn = warn;
  }
}

