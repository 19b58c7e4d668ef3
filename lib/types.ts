/**
 * Public types of margin-softmax. The typings are the documentation: every
 * field says what it means, its unit and its default.
 */
import type { MpiInfo } from './sharded/comm';
import type { MarginKindName, MarginOf } from './margins';

/** Plain normalised softmax: z_j = s·cos θ_j for every class. */
export type SoftmaxMargin = MarginOf<'softmax'>;
/** ArcFace: z_y = s·cos(θ_y + m). */
export type ArcFaceMargin = MarginOf<'arcface'>;
/** CosFace: z_y = s·(cos θ_y − m). */
export type CosFaceMargin = MarginOf<'cosface'>;
/** Combined margin (InsightFace): z_y = s·(cos(m1·θ_y + m2) − m3). */
export type CombinedMargin = MarginOf<'combined'>;
/**
 * Adaptive angular margin (the headline loss): z_y = s·cos(θ_y + f(θ_y)),
 * f(θ) = m1·(1 − cos²θ) + m2. Defaults m1 = 0.03, m2 = 0.5.
 * m1 = 0 is ArcFace with m = m2; m1 = m2 = 0 is softmax.
 */
export type AdaptiveMargin = MarginOf<'adaptive'>;
/**
 * ElasticFace-Arc: ArcFace with a per-row margin m_i ~ N(m, sigma²), drawn by a
 * counter-based generator keyed by (seed, counter, row): every backend draws the
 * same values. `counter` defaults to a per-seed call counter kept by the process
 * (0, 1, 2, … for successive calls with that seed); pass it to make a call reproducible.
 */
export type ElasticArcMargin = MarginOf<'elastic-arc'>;
/** ElasticFace-Cos: CosFace with a per-row margin m_i ~ N(m, sigma²) (see {@link ElasticArcMargin}). */
export type ElasticCosMargin = MarginOf<'elastic-cos'>;
/** CVM: z_y = s·(cos θ_y − m1·(1 − cos²θ_y)), z_j = s·(cos θ_j + m2·cos²θ_j) for j ≠ y. */
export type CvmMargin = MarginOf<'cvm'>;

/** Every margin kind's object (lib/margins.ts's table); the named types above are its members. */
export type Margin = { [K in MarginKindName]: MarginOf<K> }[MarginKindName];

export type MarginKind = Margin['kind'];
/**
 * 'cpu': the native addon's CPU backend; 'cuda': its GPU backend; 'wasm': the
 * CPU backend's code compiled to WebAssembly (no native binary needed; one
 * thread; fp32 products; at most 4 GiB of memory).
 */
export type BackendName = 'cpu' | 'cuda' | 'wasm';

export interface LossInput {
  /** N×d embeddings, row-major (one sample per row). Read without copying. */
  embeddings: Float32Array;
  /** C×d class centres, row-major (one class per row). Read without copying. */
  weights: Float32Array;
  /** N labels in [0, C); −1 marks a row to ignore (no loss, no gradient, not counted in the mean). */
  labels: Int32Array;
  /** Embedding dimension d (> 0, divides weights.length and embeddings.length). */
  dim: number;
}

export interface LossOptions {
  margin: Margin;
  /** Scale s of the logits, in (0, MAX_PARAMETER = 1e4] (beyond, the float32 loss overflows). Default 64. */
  scale?: number;
  /**
   * 'auto' (default) picks 'cuda' when a GPU is usable, else 'cpu', else
   * 'wasm' (where the native addon does not load). 'wasm' runs on the calling
   * thread, also for the async calls; it ignores threads, simd and matrix.
   */
  backend?: 'auto' | BackendName;
  /**
   * Angular kinds only: where the margined angle exceeds π use the monotonic
   * fallback z_y = s·(cos θ_y − m3 − m2·sin m2) (derivative s). Default true.
   */
  fallback?: boolean;
  /**
   * Gradient filtering: skip the backward work of a class block whose every
   * softmax probability is below this value and that holds no target.
   * 0 (default) = exact gradients. See docs/cpu.md for the measured error.
   */
  gradFilter?: number;
  /**
   * Class-centre precision. 'bfloat16': the centres are rounded to bf16 as they
   * are read, and the cosine tiles and both gradient products take bf16 operands
   * (X̂, the centres, the softmax gradient) with fp32 accumulation: tensor cores on
   * CUDA; AMX, AVX512-BF16 or (aarch64) BFDOT on the CPU where they are faster than fp32
   * FMAs (`deviceInfo().cpu.matrix`, forced by `matrix`), else the same rounding with the fp32 kernels. Norms, the
   * target cosine (so the margin) and the chain rule stay fp32. Error bound: docs/cpu.md,
   * "bf16 on the CPU". Default 'float32'.
   */
  weightsDtype?: 'float32' | 'bfloat16';
  /**
   * CPU, weightsDtype 'bfloat16' only: the bf16 product path. 'auto' (default) is
   * `deviceInfo().cpu.matrix`; a path the CPU lacks falls back to the best one below
   * it (amx-bf16 → avx512-bf16 → none; neon-bf16 → none), as `simd` does.
   */
  matrix?: 'auto' | CpuMatrixPath;
  /**
   * CPU threads (default: all hardware threads), at most MAX_THREADS = 256: the
   * pool keeps every thread it starts. Results are bit-identical for a fixed thread count.
   */
  threads?: number;
  /**
   * CPU: bytes of cosine tiles kept from the forward pass for the backward pass
   * (tiles beyond it are recomputed). Default 128 MiB; 0 always recomputes.
   */
  workspaceBytes?: number;
  /** CPU instruction set: 'auto' (default, the best the CPU has), 'avx512', 'avx2', 'neon' (aarch64) or 'portable'. */
  simd?: 'auto' | 'avx512' | 'avx2' | 'neon' | 'portable';
  /**
   * Write the results into these arrays instead of new ones (every entry is
   * overwritten; the result object returns the same arrays). A training loop
   * that reuses a C×d gradWeights saves allocating and page-faulting it per call.
   */
  out?: { perSample?: Float32Array; gradEmbeddings?: Float32Array; gradWeights?: Float32Array };
}

export interface ForwardResult {
  /** Mean loss over the non-ignored rows (0 when every row is ignored). */
  loss: number;
  /** Per-row loss LSE_i − z_{i,y_i}; 0 for ignored rows. */
  perSample: Float32Array;
  /**
   * cos θ_y per row: the target cosine before the margin (x̂·ŵ_y, with the
   * bf16-rounded centre when weightsDtype is 'bfloat16'); NaN for ignored rows.
   * θ_y = acos(targetCos) is the angle the margin losses act on.
   */
  targetCos: Float32Array;
  /** Elastic kinds only: the margin m_i drawn for each row. */
  margins?: Float32Array;
  /** Number of rows that count in the mean. */
  validRows: number;
  /** Backend that computed the result. */
  backend: BackendName;
}

export interface LossAndGradResult extends ForwardResult {
  /** dLoss/dEmbeddings, N×d (through the L2 normalisation). */
  gradEmbeddings: Float32Array;
  /** dLoss/dWeights, C×d (through the L2 normalisation). */
  gradWeights: Float32Array;
  /**
   * Blocks skipped by gradient filtering, and the total number of blocks: class
   * blocks on the CPU; (128-class × 32-row) tiles on CUDA.
   */
  skippedBlocks: number;
  totalBlocks: number;
}

/** The CPU's bf16 product paths, best first: AMX tiles, AVX512-BF16 dot products, none (rounded operands, fp32 kernels). */
export type CpuMatrixPath = 'amx-bf16' | 'avx512-bf16' | 'neon-bf16' | 'none';

export interface CpuInfo {
  threads: number;
  simd: 'avx512' | 'avx2' | 'neon' | 'portable';
  /** Floats per vector register (16, 8 or 4). */
  simdWidth: number;
  /**
   * The path weightsDtype 'bfloat16' uses here with `matrix: 'auto'`: the best of `matrixPaths`, except
   * 'none' on Intel cores whose VDPBF16PS runs at half the fp32 FMA rate (Sapphire and Emerald Rapids
   * without AMX), where fp32 FMAs on the widened bf16 values are faster.
   */
  matrix: CpuMatrixPath;
  /** Every bf16 product path this CPU can run, the best instructions first, 'none' last ('amx-bf16' needs AMX-BF16 and the OS's tile permission). */
  matrixPaths: CpuMatrixPath[];
  /** The native addon loaded (the other fields describe the CPU only then). */
  usable: boolean;
  /** Why the native addon did not load, when it did not. */
  reason?: string;
}

/** The wasm backend (lib/wasm/): whether its module loads here, and what it runs with. */
export interface WasmInfo {
  usable: boolean;
  /** Why the module did not load, when it did not. */
  reason?: string;
  /** Threads a call uses (the module is single-threaded). */
  threads: 1;
  simd: 'simd128';
  /** Bytes the module's memory can grow to (wasm32: 4 GiB); a call that cannot fit is refused. */
  memoryLimitBytes: number;
}

export interface CudaInfo {
  /** The addon was compiled with the CUDA backend. */
  compiled: boolean;
  /** A device is usable now. */
  usable: boolean;
  /** Why CUDA is not usable, when it is not. */
  reason?: string;
  name?: string;
  computeCapability?: string;
  totalMemory?: number;
  freeMemory?: number;
  driverVersion?: number;
  runtimeVersion?: number;
  multiprocessors?: number;
  /** Device bytes held by MarginHeads on CUDA (centres, norms, momentum) in this process. */
  headBytes?: number;
}

export interface DeviceInfo {
  /** The backend 'auto' resolves to ('none': neither the native addon nor the wasm module loads). */
  backend: BackendName | 'none';
  cpu: CpuInfo;
  cuda: CudaInfo;
  wasm: WasmInfo;
  /** The MPI collectives (lib/sharded/comm.ts): compiled in or not, and why not. */
  mpi: MpiInfo;
}
