/**
 * MarginHead's centres on the wasm backend: fp32 rows (and the SGD momentum)
 * kept in the WebAssembly module's memory, so that a step copies in only the
 * batch and the fused loss updates the centres in place (the CPU backend's
 * block-wise SGD, native/cpu/sgd_cpu.cc, in the module). fp32 only.
 *
 * The centres and momentum take 4·C·d bytes each of the module's 4 GiB; a
 * head that cannot fit is refused when it is made. The calls run on the
 * calling thread; the async ones after the caller's synchronous code, so a
 * dispose() meanwhile waits for them (releaseWaitsForCall).
 */
import { ArgumentError, NativeError } from '../errors';
import { readTensor, type SafetensorsHeader, type StreamedTensor } from '../io/safetensors';
import type { NativeLossOptions, NativeLossResult } from '../native';
import { INIT_COUNTER, NORMAL_INIT_STD, type CentresInit, type CentresLayout, type CentresStorage, type CentresTensor, type TopK } from '../head/storage';
import { wasmLoss } from './loss';
import { alloc, copyOutF32, view, WASM_MEMORY_LIMIT, type WasmBlock } from './memory';
import { wasm, wasmGeneration } from './module';
import { wasmTopk } from './topk';

/** Bytes a head may keep in the module: the rest is the steps' room (the batch, tiles, gradients of a sampled block). */
const HEAD_BYTES_LIMIT = WASM_MEMORY_LIMIT - 512 * 2 ** 20;

const nextTick = () => new Promise((resolve) => setTimeout(resolve, 0));

export class WasmCentres implements CentresStorage {
  readonly deviceBytes = 0;
  /** An async call runs later on this thread and reads the module's memory: release after it. */
  readonly releaseWaitsForCall = true;
  private released = false;

  private constructor(
    private readonly values: WasmBlock,
    private readonly momentum: WasmBlock | null,
    private readonly rows: number,
    private readonly dim: number,
    private readonly generation: number,
  ) {}

  static create(layout: CentresLayout, init: CentresInit): WasmCentres {
    if (layout.dtype !== 'float32') {
      throw new ArgumentError(`Expected weightsDtype 'float32' for a MarginHead on the wasm backend but received '${layout.dtype}' (the module has no bf16 storage)`);
    }
    const n = layout.rows * layout.dim;
    const bytes = n * 4 * (layout.withMomentum ? 2 : 1);
    if (bytes > HEAD_BYTES_LIMIT) {
      const gib = (b: number) => (b / 2 ** 30).toFixed(2);
      throw new ArgumentError(
        `Expected centres${layout.withMomentum ? ' and momentum' : ''} that fit in the wasm backend's memory (at most ${gib(HEAD_BYTES_LIMIT)} GiB of its ${gib(WASM_MEMORY_LIMIT)} GiB) ` +
          `for classes × dim = ${layout.rows} × ${layout.dim} but received ${gib(bytes)} GiB: use the native CPU backend, or fewer classes per head (shards)`,
      );
    }
    const m = wasm();
    const values = alloc(m, n * 4, 'the MarginHead centres');
    let momentum: WasmBlock | null = null;
    try {
      momentum = layout.withMomentum ? alloc(m, n * 4, 'the MarginHead momentum') : null;
    } catch (err) {
      m.ms_wasm_free(values.ptr);
      throw err;
    }
    const c = new WasmCentres(values, momentum, layout.rows, layout.dim, wasmGeneration());
    if (init === 'normal') {
      // The native storage's draw (keyed by the global element index), in place.
      m.ms_wasm_gaussian(values.ptr, n, 0, NORMAL_INIT_STD, layout.seed, INIT_COUNTER, layout.offset * layout.dim);
    } else if (init instanceof Float32Array) {
      c.setWeights(init);
    }
    return c;
  }

  get hasMomentum(): boolean {
    return this.momentum !== null;
  }

  /** The module, after checking that this storage's memory is still there. */
  private module() {
    if (this.released) throw new NativeError('the MarginHead centres on the wasm backend were released');
    if (wasmGeneration() !== this.generation) {
      throw new NativeError('the WebAssembly module was reset after an abort: the centres it held are lost (reload a checkpoint into a new MarginHead)');
    }
    return wasm();
  }

  private resident() {
    this.module();
    return { ptr: this.values.ptr, rows: this.rows, bf16: false, momentumPtr: this.momentum?.ptr ?? 0 };
  }

  loss(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult {
    return wasmLoss(x, this.resident(), labels, this.dim, opts, withGrad);
  }

  async lossAsync(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult> {
    await nextTick();
    return this.loss(x, labels, opts, withGrad);
  }

  topk(x: Float32Array, k: number): TopK {
    return wasmTopk(x, this.resident(), this.dim, k);
  }

  async topkAsync(x: Float32Array, k: number): Promise<TopK> {
    await nextTick();
    return this.topk(x, k);
  }

  getWeights(): Float32Array {
    return copyOutF32(this.module(), this.values.ptr, this.rows * this.dim);
  }

  setWeights(values: Float32Array): void {
    view(this.module(), Float32Array, this.values.ptr, this.rows * this.dim).set(values);
  }

  getMomentum(): Float32Array | null {
    return this.momentum ? copyOutF32(this.module(), this.momentum.ptr, this.rows * this.dim) : null;
  }

  checkpointTensors(): Partial<Record<CentresTensor, Float32Array | StreamedTensor>> {
    const tensors: Partial<Record<CentresTensor, Float32Array | StreamedTensor>> = { weight: this.getWeights() };
    const momentum = this.getMomentum();
    if (momentum) tensors.momentum = momentum;
    return tensors;
  }

  readCheckpoint(file: string, header: SafetensorsHeader): void {
    const n = this.rows * this.dim;
    const weight = new Float32Array(n);
    readTensor(file, header, 'weight', weight, { finite: true });
    this.setWeights(weight);
    if (this.momentum) {
      const momentum = new Float32Array(n);
      readTensor(file, header, 'momentum', momentum, { finite: true });
      view(this.module(), Float32Array, this.momentum.ptr, n).set(momentum);
    }
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    if (wasmGeneration() !== this.generation) return; // the memory went with the old instance
    const m = wasm();
    if (this.momentum) m.ms_wasm_free(this.momentum.ptr);
    m.ms_wasm_free(this.values.ptr);
  }
}
