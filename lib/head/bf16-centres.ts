/**
 * MarginHead's centres in bf16 on the CPU (weightsDtype 'bfloat16'): C×d
 * bf16 values in a Uint16Array (the upper halves of fp32 values, as the
 * addon reads them), half the memory of fp32. Nothing the head does to them
 * makes an fp32 copy of all of them, except getWeights (which returns one):
 * they are drawn in place (native _gaussianBf16), copied in rounded to the
 * nearest bf16, and widened (exactly) a bounded chunk at a time for checkpoints.
 * The update (fused into the loss, native/cpu/sgd_cpu.cc) rounds
 * stochastically; see docs/head.md, "bf16 centres". The momentum stays fp32.
 */
import { expected } from '../errors';
import { callNative } from '../loss';
import { native } from '../native';
import { CheckpointError, checkChunkFinite, readTensorChunks, type SafetensorsHeader, type StreamedTensor } from '../io/safetensors';
import { HostCentresBase, hostMomentum } from './host-centres';
import { INIT_COUNTER, NORMAL_INIT_STD, type CentresInit, type CentresLayout } from './storage';

/** bf16 centres on the host (weightsDtype 'bfloat16', CPU backend). */
export class HostBf16Centres extends HostCentresBase<Uint16Array> {
  static create(layout: CentresLayout, init: CentresInit): HostBf16Centres {
    // An allocation failure is a NativeError with the bytes asked for.
    const values = callNative(() => initialBf16(layout, init));
    return new HostBf16Centres(values, hostMomentum(layout), layout.dim);
  }

  getWeights(): Float32Array {
    return widenBf16(this.values);
  }

  setWeights(values: Float32Array): void {
    checkBf16Range(values, 'weights');
    copyInBf16(this.values, values);
  }

  protected weightData(): StreamedTensor {
    return streamedBf16(this.values);
  }

  protected readWeights(file: string, header: SafetensorsHeader): void {
    readTensorBf16(file, header, 'weight', this.values);
  }
}

/** The fp32 values HostF32Centres would start from, rounded to the nearest bf16, a chunk at a time (no fp32 copy of all). */
function initialBf16(layout: CentresLayout, init: CentresInit): Uint16Array {
  const w = zerosBf16(layout.rows * layout.dim);
  if (init instanceof Float32Array) {
    checkBf16Range(init, 'init');
    copyInBf16(w, init);
  } else if (init === 'normal') {
    native._gaussianBf16(w, 0, NORMAL_INIT_STD, layout.seed, INIT_COUNTER, layout.offset * layout.dim);
  }
  return w;
}

/** Elements per host chunk (16 MiB of fp32). */
const CHUNK_ELEMENTS = 4 * 1024 * 1024;

/** `n` bf16 zeros, in addon memory (an async step pins it instead of copying it). */
export function zerosBf16(n: number): Uint16Array {
  return native._zerosBf16(n);
}

/** dst ← src rounded to the nearest bf16 (src finite: the caller checks). */
export function copyInBf16(dst: Uint16Array, src: Float32Array): void {
  native._toBf16(src, dst, 0);
}

/** The values widened to fp32 (exact), one full copy. */
export function widenBf16(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let s = 0; s < src.length; s += CHUNK_ELEMENTS) out.set(native._fromBf16(src, s, Math.min(CHUNK_ELEMENTS, src.length - s)), s);
  return out;
}

/** The values widened to F32 for a checkpoint, a chunk at a time. */
export function streamedBf16(src: Uint16Array): StreamedTensor {
  return {
    byteLength: src.length * 4,
    *chunks() {
      for (let s = 0; s < src.length; s += CHUNK_ELEMENTS) {
        const chunk = native._fromBf16(src, s, Math.min(CHUNK_ELEMENTS, src.length - s));
        yield new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      }
    },
  };
}

/**
 * Reads an F32 tensor of the checkpoint into bf16 storage, rounded to the
 * nearest bf16 (values saved from bf16 centres come back bit for bit).
 * Non-finite values are refused, as for fp32 centres.
 */
export function readTensorBf16(file: string, header: SafetensorsHeader, name: string, dst: Uint16Array): void {
  const buf = new Float32Array(Math.min(CHUNK_ELEMENTS, dst.length));
  readTensorChunks(
    file,
    header,
    name,
    dst.length * 4,
    buf.byteLength,
    (b, e) => new Uint8Array(buf.buffer, 0, e - b),
    (b, chunk) => {
      const values = new Float32Array(chunk.buffer, chunk.byteOffset, chunk.byteLength / 4);
      checkChunkFinite(file, name, values, 0, values.length, b / 4);
      const at = firstBeyondBf16(values);
      if (at >= 0) throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' holds ${values[at]} at element ${b / 4 + at}, beyond bf16's range`);
      native._toBf16(values, dst, b / 4);
    },
  );
}

/** The smallest magnitude that rounds to infinity in bf16 (round to nearest even): (2 − 2⁻⁸)·2¹²⁷. */
export const BF16_OVERFLOW = 2 ** 127 * (2 - 2 ** -8);

/** Index of the first value whose bf16 rounding would be infinite, or −1. */
export function firstBeyondBf16(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i]) < BF16_OVERFLOW)) return i;
  return -1;
}

/** bf16 centres: a value that would round to infinity is refused, not stored. */
export function checkBf16Range(values: Float32Array, what: string): void {
  const at = firstBeyondBf16(values);
  if (at >= 0) expected(`a value within bf16's range (|v| < 3.3961775e38: the centres are bf16)`, `${what}[${at}]`, values[at]);
}
