/**
 * MarginHead's centres on the CUDA device (native/cuda/head_cuda.h): the
 * centres (fp32, or bf16 rows), their norms and the momentum stay in device
 * memory between steps; a step uploads only the batch, and the SGD update is
 * applied inside the dŴ kernel. MarginHead (margin-head.ts) validates; this
 * is its CentresStorage on the CUDA backend (see storage.ts).
 *
 * Host transfers (init, getWeights/setWeights, save/load) move whole rows in
 * chunks of at most HOST_CHUNK_BYTES, so save and load never hold a second full
 * copy of the centres on the host.
 */
import { native, type NativeLossOptions, type NativeLossResult } from '../native';
import { callNative, callNativeAsync } from '../loss';
import { checkChunkFinite, readTensorChunks, type SafetensorsHeader, type StreamedTensor } from '../io/safetensors';
import { checkBf16Range } from './bf16-centres';
import { INIT_COUNTER, NORMAL_INIT_STD, type CentresInit, type CentresLayout, type CentresStorage, type CentresTensor, type TopK } from './storage';

/** Host bytes one chunk of a device ↔ host transfer may use. */
export const HOST_CHUNK_BYTES = 16 * 1024 * 1024;

type Handle = object;

/** The device head's functions; present only in an addon built with CUDA. */
interface DeviceHeadAddon {
  headCreate(classes: number, dim: number, bf16: boolean, withMomentum: boolean): Handle;
  headFree(h: Handle): void;
  headSetRows(h: Handle, which: number, row0: number, rows: Float32Array, dim: number): void;
  headGetRows(h: Handle, which: number, row0: number, out: Float32Array, dim: number): void;
  headLoss(h: Handle, x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult;
  headLossAsync(h: Handle, x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult>;
  headTopk(h: Handle, x: Float32Array, k: number, dim: number): { classes: Int32Array; scores: Float32Array };
  headTopkAsync(h: Handle, x: Float32Array, k: number, dim: number): Promise<{ classes: Int32Array; scores: Float32Array }>;
  headBytes(h: Handle): number;
}

const addon = native as unknown as Partial<DeviceHeadAddon>;

/** The most classes per row `predict` returns on the device. */
export const DEVICE_MAX_TOPK = 32;

/** Whether this addon has the device head (built with CUDA); usability is resolveBackend's question. */
export function deviceHeadCompiled(): boolean {
  return typeof addon.headCreate === 'function';
}

/** Which rows a transfer moves: the centres or the momentum. */
export type Rows = 0 | 1;
export const CENTRES: Rows = 0;
export const MOMENTUM: Rows = 1;

/**
 * The device storage. Its native failures are already typed errors (NativeError,
 * ArgumentError); a call after release() throws.
 */
export class DeviceCentres implements CentresStorage {
  private handle: Handle | null;
  private readonly dev: DeviceHeadAddon;
  /** The running call uses the device buffers: they are freed once it settles. */
  readonly releaseWaitsForCall = true;

  /** Allocates zeroed centres (and momentum); device out-of-memory is a NativeError naming the bytes. */
  constructor(
    readonly rows: number,
    readonly dim: number,
    private readonly bf16: boolean,
    readonly hasMomentum: boolean,
  ) {
    this.dev = addon as DeviceHeadAddon;
    this.handle = callNative(() => this.dev.headCreate(rows, dim, bf16, hasMomentum));
  }

  /** The device centres, initialised as the CPU storage's would be (the same values; rounded to bf16 when so stored). */
  static create(layout: CentresLayout, init: CentresInit): DeviceCentres {
    const dev = new DeviceCentres(layout.rows, layout.dim, layout.dtype === 'bfloat16', layout.withMomentum);
    try {
      if (init instanceof Float32Array) {
        dev.setWeights(init, 'init');
      } else if (init === 'normal') {
        // Drawn chunk by chunk, keyed by the global element index as on the CPU.
        dev.fillRows(CENTRES, (row0, chunk) => {
          chunk.set(native.gaussian(0, NORMAL_INIT_STD, layout.seed, INIT_COUNTER, chunk.length, (layout.offset + row0) * layout.dim));
        });
      }
    } catch (err) {
      dev.release();
      throw err;
    }
    return dev;
  }

  /** Device bytes held between steps. */
  get deviceBytes(): number {
    return this.handle ? this.dev.headBytes(this.handle) : 0;
  }

  get freed(): boolean {
    return this.handle === null;
  }

  loss(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult {
    return callNative(() => this.dev.headLoss(this.live(), x, labels, opts, withGrad));
  }

  lossAsync(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult> {
    return callNativeAsync(() => this.dev.headLossAsync(this.live(), x, labels, opts, withGrad));
  }

  /** `threads` is the CPU's: the device ignores it. */
  topk(x: Float32Array, k: number, _threads: number): TopK {
    return callNative(() => this.dev.headTopk(this.live(), x, k, this.dim));
  }

  topkAsync(x: Float32Array, k: number, _threads: number): Promise<TopK> {
    return callNativeAsync(() => this.dev.headTopkAsync(this.live(), x, k, this.dim));
  }

  getWeights(): Float32Array {
    return this.getAll(CENTRES);
  }

  /** bf16 rows: a value beyond bf16's range is refused (named as `what`), not stored. */
  setWeights(values: Float32Array, what = 'weights'): void {
    if (this.bf16) checkBf16Range(values, what);
    this.setAll(CENTRES, values);
  }

  getMomentum(): Float32Array | null {
    return this.hasMomentum ? this.getAll(MOMENTUM) : null;
  }

  checkpointTensors(): Partial<Record<CentresTensor, StreamedTensor>> {
    const tensors: Partial<Record<CentresTensor, StreamedTensor>> = { weight: this.streamed(CENTRES) };
    if (this.hasMomentum) tensors.momentum = this.streamed(MOMENTUM);
    return tensors;
  }

  readCheckpoint(file: string, header: SafetensorsHeader): void {
    this.readTensor(file, header, 'weight', CENTRES);
    if (this.hasMomentum) this.readTensor(file, header, 'momentum', MOMENTUM);
  }

  /** Rows per host chunk. */
  get chunkRows(): number {
    return Math.max(1, Math.floor(HOST_CHUNK_BYTES / (4 * this.dim)));
  }

  /** Fills rows [0, rows) chunk by chunk: `fill(row0, chunk)` writes rows row0.. into chunk (one reused buffer). */
  fillRows(which: Rows, fill: (row0: number, chunk: Float32Array) => void): void {
    const per = this.chunkRows;
    const buf = new Float32Array(Math.min(per, this.rows) * this.dim);
    for (let r0 = 0; r0 < this.rows; r0 += per) {
      const chunk = buf.subarray(0, Math.min(per, this.rows - r0) * this.dim);
      fill(r0, chunk);
      this.setRows(which, r0, chunk);
    }
  }

  setRows(which: Rows, row0: number, rows: Float32Array): void {
    callNative(() => this.dev.headSetRows(this.live(), which, row0, rows, this.dim));
  }

  /** Copies all rows in from a host array, chunk by chunk (no staging copy). */
  setAll(which: Rows, data: Float32Array): void {
    const per = this.chunkRows;
    for (let r0 = 0; r0 < this.rows; r0 += per) {
      const r1 = Math.min(this.rows, r0 + per);
      this.setRows(which, r0, data.subarray(r0 * this.dim, r1 * this.dim));
    }
  }

  /** A full host copy (getWeights, getMomentum). */
  getAll(which: Rows): Float32Array {
    const out = new Float32Array(this.rows * this.dim);
    const per = this.chunkRows;
    for (let r0 = 0; r0 < this.rows; r0 += per) {
      const r1 = Math.min(this.rows, r0 + per);
      this.getRows(which, r0, out.subarray(r0 * this.dim, r1 * this.dim));
    }
    return out;
  }

  /** The rows as a tensor for saveSafetensors, downloaded through one bounded host buffer. */
  streamed(which: Rows): StreamedTensor {
    const self = this;
    return {
      byteLength: this.rows * this.dim * 4,
      *chunks() {
        const per = self.chunkRows;
        const buf = new Float32Array(Math.min(per, self.rows) * self.dim);
        for (let r0 = 0; r0 < self.rows; r0 += per) {
          const chunk = buf.subarray(0, Math.min(per, self.rows - r0) * self.dim);
          self.getRows(which, r0, chunk);
          yield new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        }
      },
    };
  }

  /** Frees the device memory now (a head that is only garbage-collected frees it in the finaliser). */
  release(): void {
    if (this.handle) this.dev.headFree(this.handle);
    this.handle = null;
  }

  /** One checkpoint tensor, uploaded through one bounded host buffer; non-finite values would poison every later step. */
  private readTensor(file: string, header: SafetensorsHeader, name: string, which: Rows): void {
    const rowBytes = 4 * this.dim;
    const buf = new Float32Array(this.chunkRows * this.dim);
    readTensorChunks(
      file,
      header,
      name,
      this.rows * rowBytes,
      this.chunkRows * rowBytes,
      (b, e) => new Uint8Array(buf.buffer, 0, e - b),
      (b, chunk) => {
        const rows = new Float32Array(chunk.buffer, chunk.byteOffset, chunk.byteLength / 4);
        checkChunkFinite(file, name, rows, 0, rows.length, b / 4);
        this.setRows(which, b / rowBytes, rows);
      },
    );
  }

  private getRows(which: Rows, row0: number, out: Float32Array): void {
    callNative(() => this.dev.headGetRows(this.live(), which, row0, out, this.dim));
  }

  private live(): Handle {
    if (!this.handle) throw new Error('MarginHead: the head has been disposed');
    return this.handle;
  }
}
