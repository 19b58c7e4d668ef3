/**
 * The top-k classes by cosine per row on the wasm backend (MarginHead.predict):
 * the CPU backend's streaming top-k (native/cpu/topk_cpu.cc) in the module,
 * with the addon's contract (NativeAddon.topk). The centres live in the
 * module's memory (a wasm MarginHead's storage) or are copied in.
 */
import { TOPK_SLOTS, STATUS, slotIndex } from './abi';
import { statusError, checkFits, type WasmResidentCentres } from './loss';
import { allocArray, copyIn, copyOutF32, freeAll, view, type WasmBlock } from './memory';
import { withInstance } from './module';

const S = slotIndex(TOPK_SLOTS);

export function wasmTopk(x: Float32Array, w: Float32Array | WasmResidentCentres, dim: number, k: number): { classes: Int32Array; scores: Float32Array } {
  const n = x.length / dim;
  const resident = !(w instanceof Float32Array);
  const c = resident ? w.rows : w.length / dim;
  return withInstance((m) => {
    checkFits((resident ? 0 : c * dim * 4) + n * dim * 12 + n * k * 8 * 2 + 16 * 256 * dim * 4, { n, c, d: dim });
    const blocks: WasmBlock[] = [];
    try {
      const argsPtr = allocArray(m, Float64Array, TOPK_SLOTS.length, 'the call arguments', blocks);
      const wPtr = resident ? w.ptr : copyIn(m, w, 'the centres', blocks);
      const xPtr = copyIn(m, x, 'the embeddings', blocks);
      const classes = allocArray(m, Int32Array, n * k, 'the top-k classes', blocks);
      const scores = allocArray(m, Float32Array, n * k, 'the top-k scores', blocks);
      const a = view(m, Float64Array, argsPtr, TOPK_SLOTS.length);
      a[S.x] = xPtr;
      a[resident && w.bf16 ? S.wBf16 : S.w] = wPtr;
      a[S.n] = n;
      a[S.c] = c;
      a[S.d] = dim;
      a[S.k] = k;
      a[S.classes] = classes;
      a[S.scores] = scores;
      const status = m.ms_wasm_topk(argsPtr);
      if (status !== STATUS.ok) throw statusError(m, status);
      return { classes: view(m, Int32Array, classes, n * k).slice(), scores: copyOutF32(m, scores, n * k) };
    } finally {
      freeAll(m, blocks);
    }
  });
}
