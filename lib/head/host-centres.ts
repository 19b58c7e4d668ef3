/**
 * MarginHead's centres in host memory, for the CPU backend: HostCentresBase
 * holds what every host storage shares (the fp32 momentum, the calls into the
 * addon's loss and top-k, which read the centres in place), and
 * HostF32Centres stores the centres in fp32. The bf16 storage is in
 * bf16-centres.ts.
 */
import { callNative } from '../loss';
import { native, type HostCentres, type NativeLossOptions, type NativeLossResult } from '../native';
import { readTensor, type SafetensorsHeader, type StreamedTensor } from '../io/safetensors';
import { INIT_COUNTER, NORMAL_INIT_STD, type CentresInit, type CentresLayout, type CentresStorage, type CentresTensor, type TopK } from './storage';

export abstract class HostCentresBase<V extends HostCentres> implements CentresStorage {
  readonly deviceBytes = 0;
  /** A running call holds its own reference to the arrays: dropping them is safe at any time. */
  readonly releaseWaitsForCall = false;

  protected constructor(
    protected readonly values: V,
    private readonly momentum: Float32Array | null,
    protected readonly dim: number,
  ) {}

  get hasMomentum(): boolean {
    return this.momentum !== null;
  }

  loss(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult {
    return native.loss(x, this.values, labels, this.dim, this.withMomentumBuffer(opts), withGrad);
  }

  lossAsync(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult> {
    return native.lossAsync(x, this.values, labels, this.dim, this.withMomentumBuffer(opts), withGrad);
  }

  topk(x: Float32Array, k: number, threads: number): TopK {
    return native.topk(x, this.values, this.dim, k, threads);
  }

  topkAsync(x: Float32Array, k: number, threads: number): Promise<TopK> {
    return native.topkAsync(x, this.values, this.dim, k, threads);
  }

  getMomentum(): Float32Array | null {
    return this.momentum ? this.momentum.slice() : null;
  }

  checkpointTensors(): Partial<Record<CentresTensor, Float32Array | StreamedTensor>> {
    const tensors: Partial<Record<CentresTensor, Float32Array | StreamedTensor>> = { weight: this.weightData() };
    if (this.momentum) tensors.momentum = this.momentum;
    return tensors;
  }

  readCheckpoint(file: string, header: SafetensorsHeader): void {
    this.readWeights(file, header);
    if (this.momentum) readTensor(file, header, 'momentum', this.momentum, { finite: true });
  }

  /** Nothing to free by hand: the arrays go with their last reference (a running call's included). */
  release(): void {}

  abstract getWeights(): Float32Array;
  abstract setWeights(values: Float32Array): void;
  /** The centres as a checkpoint's F32 'weight'. */
  protected abstract weightData(): Float32Array | StreamedTensor;
  /** Reads the checkpoint's 'weight' into the centres (non-finite values refused). */
  protected abstract readWeights(file: string, header: SafetensorsHeader): void;

  /** The fused SGD update reads and writes this storage's momentum. */
  private withMomentumBuffer(opts: NativeLossOptions): NativeLossOptions {
    return opts.sgd ? { ...opts, sgd: { ...opts.sgd, momentumBuffer: this.momentum ?? undefined } } : opts;
  }
}

/** fp32 centres in addon memory (huge-page backed when large; an async step pins them instead of copying). */
export class HostF32Centres extends HostCentresBase<Float32Array> {
  static create(layout: CentresLayout, init: CentresInit): HostF32Centres {
    // An allocation failure is a NativeError with the bytes asked for.
    const values = callNative(() => initialValues(layout, init));
    return new HostF32Centres(values, hostMomentum(layout), layout.dim);
  }

  getWeights(): Float32Array {
    return this.values.slice();
  }

  setWeights(values: Float32Array): void {
    this.values.set(values);
  }

  protected weightData(): Float32Array {
    return this.values;
  }

  protected readWeights(file: string, header: SafetensorsHeader): void {
    readTensor(file, header, 'weight', this.values, { finite: true });
  }
}

/** The momentum buffer (zeroed, in addon memory) when the layout keeps one; an allocation failure is a NativeError. */
export function hostMomentum(layout: CentresLayout): Float32Array | null {
  return layout.withMomentum ? callNative(() => native.zeros(layout.rows * layout.dim)) : null;
}

/** The fp32 centres: drawn, copied from init, or zero (to be read from a checkpoint). */
function initialValues(layout: CentresLayout, init: CentresInit): Float32Array {
  const n = layout.rows * layout.dim;
  if (init === 'normal') {
    // Keyed by the global element index, so shards draw exactly the rows the unsharded head would.
    return native.gaussian(0, NORMAL_INIT_STD, layout.seed, INIT_COUNTER, n, layout.offset * layout.dim);
  }
  const values = native.zeros(n);
  if (init instanceof Float32Array) values.set(init);
  return values;
}
