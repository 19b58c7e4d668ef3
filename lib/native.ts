/** The compiled addon and the contract of its functions (see native/addon.cc). */
import type { MarginKind } from './types';

export interface NativeLossOptions {
  kind: number;
  scale: number;
  m1: number;
  m2: number;
  m3: number;
  fallback: boolean;
  rowMargins?: Float32Array;
  gradFilter: number;
  /** MarginHead: problem class j is row classIndex[j] of the weights. */
  classIndex?: Int32Array;
  /** MarginHead (sharded): per-row log-sum-exp merged over all shards. */
  lseIn?: Float32Array;
  /** MarginHead (sharded): per-row p_target − 1 merged over all shards (see mergeStats). */
  targetPm1In?: Float32Array;
  /** Return the per-row partial statistics (rowMax, rowSumExp, rowTarget). */
  stats?: boolean;
  /** Fused SGD update of the weights (in place) instead of returning gradWeights. */
  sgd?: { lr: number; momentum: number; weightDecay: number; momentumBuffer?: Float32Array };
  weightsBf16: boolean;
  threads: number;
  workspaceBytes: number;
  simd: number;
  backend: 'cpu' | 'cuda';
  /** Caller-provided output arrays (lengths checked in TypeScript). */
  outPerSample?: Float32Array;
  outGradEmbeddings?: Float32Array;
  outGradWeights?: Float32Array;
}

export interface NativeLossResult {
  loss: number;
  perSample: Float32Array;
  /** cos θ_y per row (NaN where ignored or, sharded, where the target is not local). */
  targetCos: Float32Array;
  validRows: number;
  skippedBlocks: number;
  totalBlocks: number;
  gradEmbeddings?: Float32Array;
  gradWeights?: Float32Array;
  rowMax?: Float32Array;
  rowSumExp?: Float32Array;
  rowSumExpOther?: Float32Array;
  rowTarget?: Float32Array;
}

export interface NativeAddon {
  loss(x: Float32Array, w: Float32Array, labels: Int32Array, dim: number, opts: NativeLossOptions, withGrad: boolean): NativeLossResult;
  lossAsync(x: Float32Array, w: Float32Array, labels: Int32Array, dim: number, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult>;
  /** n draws of mean + sigma·N(0,1), draw i keyed by (seed, counter, start + i). */
  gaussian(mean: number, sigma: number, seed: number, counter: number, n: number, start?: number): Float32Array;
  /** A zeroed Float32Array (huge-page backed when large). */
  zeros(n: number): Float32Array;
  targetLogit(params: Partial<NativeLossOptions>, cos: number, rowMargin: number): { z: number; dz: number };
  /** Seconds for the three products alone (the GEMM ceiling); see native/cpu/gemm_ceiling.cc. */
  productsSeconds(x: Float32Array, w: Float32Array, dim: number, threads: number, simd: number, backward: boolean): number;
  topk(x: Float32Array, w: Float32Array, dim: number, k: number, threads: number): { classes: Int32Array; scores: Float32Array };
  /** topk on the libuv thread pool. */
  topkAsync(x: Float32Array, w: Float32Array, dim: number, k: number, threads: number): Promise<{ classes: Int32Array; scores: Float32Array }>;
  /** Bytes the addon's large allocations hold now (big_alloc minus big_free). */
  liveNativeBytes(): number;
  info(simd?: number): {
    cpu: { threads: number; simd: 'avx512' | 'avx2' | 'portable'; simdWidth: number };
    cuda: { compiled: boolean; usable: boolean; reason?: string; [key: string]: unknown };
  };
}

/** Integer codes of the margin kinds; must match ms::MarginKind in native/margin_math.h. */
export const MARGIN_KIND_CODES: Record<MarginKind, number> = {
  softmax: 0,
  arcface: 1,
  cosface: 2,
  combined: 3,
  adaptive: 4,
  'elastic-arc': 5,
  'elastic-cos': 6,
  cvm: 7,
};

export const SIMD_CODES = { auto: -1, portable: 4, avx2: 8, avx512: 16 } as const;

// eslint-disable-next-line @typescript-eslint/no-var-requires
export const native: NativeAddon = require('bindings')('margin_softmax');
