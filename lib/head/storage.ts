/**
 * Where MarginHead keeps its centres (and the SGD momentum): one interface,
 * one class per kind of storage, and the one place that picks the class.
 *
 *   host-centres.ts     HostF32Centres: fp32 in addon memory (the CPU backend)
 *   bf16-centres.ts     HostBf16Centres: bf16 values in a Uint16Array (CPU, weightsDtype 'bfloat16')
 *   device-centres.ts   DeviceCentres: fp32 or bf16 rows in CUDA device memory
 *   create-centres.ts   createCentres: picks the class for a head's backend and dtype
 *
 * MarginHead validates every argument and runs one call at a time; a storage
 * runs the fused loss and top-k on its centres and moves them in and out
 * (getWeights/setWeights, checkpoints). A storage's native failures are raw
 * (MarginHead turns them into typed errors), except where it says otherwise.
 */
import type { NativeLossOptions, NativeLossResult } from '../native';
import type { SafetensorsHeader, StreamedTensor } from '../io/safetensors';
import type { BackendName } from '../types';

/** The tensors a storage holds, named as a checkpoint names them. */
export type CentresTensor = 'weight' | 'momentum';

/** What a head's storage holds: its rows, their width, and how they are stored and first filled. */
export interface CentresLayout {
  /** Rows (the head's local classes). */
  rows: number;
  dim: number;
  /** The global class of row 0 (a shard's offset): the 'normal' draw is keyed by the global element index. */
  offset: number;
  /** Seed of the 'normal' draw. */
  seed: number;
  backend: BackendName;
  dtype: 'float32' | 'bfloat16';
  /** Whether an SGD momentum buffer is kept beside the centres. */
  withMomentum: boolean;
}

/**
 * How a new storage fills the centres: drawn ('normal'), copied (a
 * Float32Array; finite, checked by the caller), or left zero for a checkpoint
 * to be read in ({@link CentresStorage.readCheckpoint}; no draw wasted).
 */
export type CentresInit = 'normal' | Float32Array | 'from-checkpoint';

/** The 'normal' initialisation: N(0, NORMAL_INIT_STD²), drawn with this counter (and the head's seed). */
export const NORMAL_INIT_STD = 0.01;
export const INIT_COUNTER = 0x1417;

export type TopK = { classes: Int32Array; scores: Float32Array };

export interface CentresStorage {
  /** Whether a momentum buffer is kept (the optimizer's momentum > 0). */
  readonly hasMomentum: boolean;
  /** Device bytes held between steps (0 for host storage). */
  readonly deviceBytes: number;
  /**
   * Whether releasing must wait for a running asynchronous call: host arrays
   * stay alive while a call holds them, device buffers are freed explicitly.
   */
  readonly releaseWaitsForCall: boolean;

  /** The fused loss on these centres; with opts.sgd, their update in place (and the momentum's). */
  loss(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): NativeLossResult;
  /** {@link loss} on the libuv thread pool. */
  lossAsync(x: Float32Array, labels: Int32Array, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult>;
  /** The k best classes (local indices) by cosine per row. */
  topk(x: Float32Array, k: number, threads: number): TopK;
  topkAsync(x: Float32Array, k: number, threads: number): Promise<TopK>;

  /** A full fp32 copy of the centres. */
  getWeights(): Float32Array;
  /** Replaces the centres (finite values of the right length: checked by the caller; the storage checks its own range). */
  setWeights(values: Float32Array): void;
  /** A copy of the momentum, or null when none is kept. */
  getMomentum(): Float32Array | null;

  /** The tensors as a checkpoint writes them (F32 [rows, dim]), produced without a second full host copy where possible. */
  checkpointTensors(): Partial<Record<CentresTensor, Float32Array | StreamedTensor>>;
  /** Reads 'weight' (and 'momentum', when kept) from a checkpoint whose header was checked; non-finite values are refused. */
  readCheckpoint(file: string, header: SafetensorsHeader): void;

  /** Releases what the storage holds (device memory now); any later use of a device storage throws. */
  release(): void;
}
