/**
 * Kernels that make the tfjs wasm backend usable for training a conv net.
 *
 * Measured on this 2-core machine (tfjs 4.22, wasm + SIMD, single thread in
 * Node), the backend's XNNPACK kernels (Conv2D, non-transposed MatMul) run
 * at several GFLOP/s, while Transpose, BatchMatMul with transposeA/transposeB
 * and Conv2DBackpropInput are naive loops, one to two orders of magnitude
 * slower, and Conv2DBackpropFilter does not exist. Here:
 *
 *  - Transpose: a JavaScript permutation on the wasm heap.
 *  - BatchMatMul with a transposed operand: the operand is transposed in
 *    JavaScript, then the XNNPACK product runs untransposed.
 *  - Conv2DBackpropFilter: dW = im2col(x)ᵀ · dy, the im2col matrix built
 *    already transposed in JavaScript, one XNNPACK product.
 *  - Conv2DBackpropInput: dx = col2im(dy · Wᵀ), one XNNPACK product, the
 *    scatter-add in JavaScript.
 *
 * NHWC, dilation 1 (what the backbone uses); other cases fall back to the
 * backend's own kernel, or throw for Conv2DBackpropFilter.
 */
import type * as TF from '@tensorflow/tfjs';

/** The tfjs module (`import * as tf from '@tensorflow/tfjs'`). */
export type Tf = typeof TF;

interface TensorInfo {
  dataId: object;
  shape: number[];
  dtype: string;
}
interface WasmBackend {
  makeOutput(shape: number[], dtype: string): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array;
  disposeData(id: object): void;
}
type KernelFunc = (args: { inputs: Record<string, TensorInfo>; backend: WasmBackend; attrs: Record<string, unknown> }) => TensorInfo;

let registered = false;

/** The backend's own kernels the replacements call (or fall back to). */
interface Originals {
  matmul: KernelFunc;
  transpose: KernelFunc;
  backpropInput: KernelFunc;
}

/** Replaces the wasm backend's Transpose, BatchMatMul and Conv2D gradient kernels (once per process). */
export function registerWasmKernels(tf: Tf): void {
  if (registered) return;
  registered = true;
  const original = (name: string): KernelFunc => {
    const k = tf.getKernel(name, 'wasm');
    if (!k) throw new Error(`tfjs-backend-wasm has no ${name} kernel`);
    return k.kernelFunc as unknown as KernelFunc;
  };
  const originals: Originals = { matmul: original('BatchMatMul'), transpose: original('Transpose'), backpropInput: original('Conv2DBackpropInput') };
  register(tf, 'Transpose', transposeKernel(originals));
  register(tf, 'BatchMatMul', batchMatMulKernel(originals));
  register(tf, 'Conv2DBackpropFilter', backpropFilterKernel(tf, originals));
  register(tf, 'Conv2DBackpropInput', backpropInputKernel(tf, originals));
}

/**
 * Registers kernelFunc for `name` on wasm, keeping the original setupFunc (the
 * backend runs it at initialisation: the original kernelFunc that we call needs it).
 */
function register(tf: Tf, name: string, kernelFunc: KernelFunc): void {
  const old = tf.getKernel(name, 'wasm');
  if (old) tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc: kernelFunc as never, setupFunc: old?.setupFunc });
}

/** A float32 copy of t with its last two axes swapped. */
function transposeLast2(backend: WasmBackend, t: TensorInfo): TensorInfo {
  const r = t.shape.length;
  const rows = t.shape[r - 2];
  const cols = t.shape[r - 1];
  const batch = t.shape.slice(0, r - 2).reduce((a, b) => a * b, 1);
  const out = backend.makeOutput([...t.shape.slice(0, r - 2), cols, rows], 'float32');
  const src = backend.typedArrayFromHeap(t);
  const dst = backend.typedArrayFromHeap(out);
  for (let b = 0; b < batch; b++) transpose2d(src, b * rows * cols, dst, b * rows * cols, rows, cols);
  return out;
}

/** The untransposed XNNPACK product a·b (2-D or batched). */
function product(originals: Originals, backend: WasmBackend, a: TensorInfo, b: TensorInfo): TensorInfo {
  return originals.matmul({ inputs: { a, b }, backend, attrs: { transposeA: false, transposeB: false } });
}

/** Transpose of float32 and int32 tensors as a JavaScript permutation on the heap. */
function transposeKernel(originals: Originals): KernelFunc {
  return (args) => {
    const { inputs, backend, attrs } = args;
    const x = inputs.x;
    if (x.dtype !== 'float32' && x.dtype !== 'int32') return originals.transpose(args);
    const perm = attrs.perm as number[];
    const shape = x.shape;
    const outShape = perm.map((p) => shape[p]);
    const out = backend.makeOutput(outShape, x.dtype);
    permute(heap(backend, x), heap(backend, out), shape, perm);
    return out;
  };
}

/** BatchMatMul with a transposed operand: that operand transposed in JavaScript, then the untransposed product. */
function batchMatMulKernel(originals: Originals): KernelFunc {
  return (args) => {
    const { inputs, backend, attrs } = args;
    let { a, b } = inputs;
    const ta = attrs.transposeA as boolean;
    const tb = attrs.transposeB as boolean;
    if ((!ta && !tb) || a.dtype !== 'float32' || b.dtype !== 'float32') return originals.matmul(args);
    const tmp: TensorInfo[] = [];
    if (ta) tmp.push((a = transposeLast2(backend, a)));
    if (tb) tmp.push((b = transposeLast2(backend, b)));
    const out = originals.matmul({ inputs: { a, b }, backend, attrs: { ...attrs, transposeA: false, transposeB: false } });
    for (const t of tmp) backend.disposeData(t.dataId);
    return out;
  };
}

/** A convolution's sizes (NHWC, dilation 1): M = N·Ho·Wo output positions, Kc = kh·kw·Ci taps. */
interface ConvGeometry {
  N: number;
  H: number;
  W: number;
  Ci: number;
  Ho: number;
  Wo: number;
  Co: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  top: number;
  left: number;
  M: number;
  Kc: number;
}

function convGeometry(tf: Tf, inputShape: number[], filterShape: number[], attrs: Record<string, unknown>): ConvGeometry {
  const info = tf.backend_util.computeConv2DInfo(
    inputShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides as number,
    1,
    attrs.pad as 'same',
    attrs.dimRoundingMode as 'floor',
  );
  const { batchSize: N, inHeight: H, inWidth: W, inChannels: Ci, outHeight: Ho, outWidth: Wo, outChannels: Co } = info;
  const { filterHeight: kh, filterWidth: kw, strideHeight: sh, strideWidth: sw } = info;
  return { N, H, W, Ci, Ho, Wo, Co, kh, kw, sh, sw, top: info.padInfo.top, left: info.padInfo.left, M: N * Ho * Wo, Kc: kh * kw * Ci };
}

/** dW = im2col(x)ᵀ · dy: the im2col matrix built already transposed, one XNNPACK product. */
function backpropFilterKernel(tf: Tf, originals: Originals): KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const { x, dy } = inputs;
    if (((attrs.dataFormat as string) ?? 'NHWC') !== 'NHWC') throw new Error('Conv2DBackpropFilter (wasm): only NHWC is supported');
    const g = convGeometry(tf, x.shape, attrs.filterShape as number[], attrs);
    const colT = backend.makeOutput([g.Kc, g.M], 'float32');
    im2colT(backend.typedArrayFromHeap(x), backend.typedArrayFromHeap(colT), g);
    const prod = product(originals, backend, colT, { ...dy, shape: [g.M, g.Co] });
    backend.disposeData(colT.dataId);
    return { ...prod, shape: [g.kh, g.kw, g.Ci, g.Co] };
  };
}

/** dx = col2im(dy · Wᵀ): one XNNPACK product, the scatter-add in JavaScript. */
function backpropInputKernel(tf: Tf, originals: Originals): KernelFunc {
  return (args) => {
    const { inputs, backend, attrs } = args;
    const { dy, filter } = inputs;
    if (((attrs.dataFormat as string) ?? 'NHWC') !== 'NHWC') return originals.backpropInput(args);
    const g = convGeometry(tf, attrs.inputShape as number[], filter.shape, attrs);
    const wT = transposeLast2(backend, { ...filter, shape: [g.Kc, g.Co] }); // Wᵀ: [Co, Kc]
    const cols = product(originals, backend, { ...dy, shape: [g.M, g.Co] }, wT);
    backend.disposeData(wT.dataId);
    const dx = backend.makeOutput([g.N, g.H, g.W, g.Ci], 'float32');
    const d = backend.typedArrayFromHeap(dx);
    d.fill(0);
    col2im(backend.typedArrayFromHeap({ ...cols, shape: [g.M, g.Kc] }), d, g);
    backend.disposeData(cols.dataId);
    return dx;
  };
}

function heap(backend: WasmBackend, t: TensorInfo): Float32Array | Int32Array {
  const f = backend.typedArrayFromHeap(t);
  return t.dtype === 'int32' ? new Int32Array(f.buffer, f.byteOffset, f.length) : f;
}

function transpose2d(src: Float32Array, so: number, dst: Float32Array, dOff: number, rows: number, cols: number): void {
  const B = 32;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) {
        const s = so + r * cols;
        for (let c = c0; c < c1; c++) dst[dOff + c * rows + r] = src[s + c];
      }
    }
  }
}

/** dst = src permuted by perm (numpy's transpose semantics). */
export function permute(src: ArrayLike<number>, dst: { [i: number]: number; length: number }, shape: number[], perm: number[]): void {
  const r = shape.length;
  const inStrides = new Array(r).fill(1);
  for (let i = r - 2; i >= 0; i--) inStrides[i] = inStrides[i + 1] * shape[i + 1];
  const outShape = perm.map((p) => shape[p]);
  const strides = perm.map((p) => inStrides[p]); // input stride of each output axis
  const total = dst.length;
  if (total === 0) return;
  const last = r - 1;
  const idx = new Array(r).fill(0);
  let base = 0;
  const n = outShape[last];
  const s = strides[last];
  for (let o = 0; o < total; o += n) {
    for (let k = 0; k < n; k++) dst[o + k] = src[base + k * s];
    // Advance the outer index.
    for (let ax = last - 1; ax >= 0; ax--) {
      idx[ax]++;
      base += strides[ax];
      if (idx[ax] < outShape[ax]) break;
      base -= strides[ax] * outShape[ax];
      idx[ax] = 0;
    }
  }
}

/**
 * colT[((i·kw + j)·Ci + c)·M + m] = x[n, oh·sh + i − top, ow·sw + j − left, c] (0 outside),
 * m = (n·Ho + oh)·Wo + ow. Written row by row of colT (contiguous stores).
 */
function im2colT(x: Float32Array, colT: Float32Array, g: ConvGeometry): void {
  const { N, H, W, Ci, Ho, Wo, kh, kw, sh, sw, top, left, M } = g;
  const step = sw * Ci;
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const tap = (i * kw + j) * Ci;
      // Output columns whose input column lies inside the image.
      let owLo = 0;
      while (owLo < Wo && owLo * sw + j - left < 0) owLo++;
      let owHi = Wo;
      while (owHi > owLo && (owHi - 1) * sw + j - left >= W) owHi--;
      for (let c = 0; c < Ci; c++) {
        const base = (tap + c) * M;
        for (let n = 0; n < N; n++) {
          for (let oh = 0; oh < Ho; oh++) {
            const ih = oh * sh + i - top;
            const d = base + (n * Ho + oh) * Wo;
            if (ih < 0 || ih >= H) {
              colT.fill(0, d, d + Wo);
              continue;
            }
            for (let ow = 0; ow < owLo; ow++) colT[d + ow] = 0;
            for (let ow = owHi; ow < Wo; ow++) colT[d + ow] = 0;
            let src = ((n * H + ih) * W + owLo * sw + j - left) * Ci + c;
            for (let ow = owLo; ow < owHi; ow++, src += step) colT[d + ow] = x[src];
          }
        }
      }
    }
  }
}

/** dx[n, oh·sh + i − top, ow·sw + j − left, c] += cols[m, (i·kw + j)·Ci + c]. */
function col2im(cols: Float32Array, dx: Float32Array, g: ConvGeometry): void {
  const { N, H, W, Ci, Ho, Wo, kh, kw, sh, sw, top, left, Kc } = g;
  for (let n = 0; n < N; n++) {
    for (let oh = 0; oh < Ho; oh++) {
      for (let ow = 0; ow < Wo; ow++) {
        const m = (n * Ho + oh) * Wo + ow;
        const cm = m * Kc;
        for (let i = 0; i < kh; i++) {
          const ih = oh * sh + i - top;
          if (ih < 0 || ih >= H) continue;
          const row = (n * H + ih) * W;
          for (let j = 0; j < kw; j++) {
            const iw = ow * sw + j - left;
            if (iw < 0 || iw >= W) continue;
            const d = (row + iw) * Ci;
            const s = cm + (i * kw + j) * Ci;
            for (let c = 0; c < Ci; c++) dx[d + c] += cols[s + c];
          }
        }
      }
    }
  }
}
