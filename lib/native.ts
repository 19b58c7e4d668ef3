/** The compiled addon and the contract of its functions (native/addon.cc registers them; native/napi/ holds each operation). */
import * as path from 'path';
import { NativeError } from './errors';
import type { CpuMatrixPath } from './types';

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
  sgd?: {
    lr: number;
    momentum: number;
    weightDecay: number;
    momentumBuffer?: Float32Array;
    /** bf16 centres: the stochastic rounding of the update is keyed by (roundSeed, roundStep) and the global element index. */
    roundSeed?: number;
    roundStep?: number;
    /** The global class of local row 0 (a shard's offset). */
    rowOffset?: number;
  };
  weightsBf16: boolean;
  threads: number;
  workspaceBytes: number;
  simd: number;
  /** MATRIX_CODES: the CPU's bf16 product path (with weightsBf16). */
  matrix: number;
  /** 'wasm' never reaches the addon (lib/wasm/ runs it). */
  backend: 'cpu' | 'cuda' | 'wasm';
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

/** Class centres as the CPU backend reads them: fp32, or bf16 values (the upper halves of fp32) in a Uint16Array (implies weightsBf16). */
export type HostCentres = Float32Array | Uint16Array;

export interface NativeAddon {
  loss(x: Float32Array, w: HostCentres, labels: Int32Array, dim: number, opts: NativeLossOptions, withGrad: boolean): NativeLossResult;
  lossAsync(x: Float32Array, w: HostCentres, labels: Int32Array, dim: number, opts: NativeLossOptions, withGrad: boolean): Promise<NativeLossResult>;
  /** n draws of mean + sigma·N(0,1), draw i keyed by (seed, counter, start + i). */
  gaussian(mean: number, sigma: number, seed: number, counter: number, n: number, start?: number): Float32Array;
  /** A zeroed Float32Array (huge-page backed when large). */
  zeros(n: number): Float32Array;
  /** dst[i] = the draw gaussian(mean, sigma, seed, counter, n, start) gives for i, rounded to bf16 (nearest even). */
  _gaussianBf16(dst: Uint16Array, mean: number, sigma: number, seed: number, counter: number, start: number): void;
  /** A zeroed Uint16Array for bf16 values (huge-page backed when large). */
  _zerosBf16(n: number): Uint16Array;
  /** dst[start + i] = src[i] rounded to bf16 (nearest even); src finite. */
  _toBf16(src: Float32Array, dst: Uint16Array, start: number): void;
  /** src[start, start + n) widened to fp32 (exact). */
  _fromBf16(src: Uint16Array, start: number, n: number): Float32Array;
  /** The native defaults (native/loss_problem.h, native/cpu/loss_cpu.h): lib/loss.ts reads them once. */
  _defaults(): { scale: number; workspaceBytes: number };
  /** Test hook: the target logit of one cosine through native/margin_math.h. */
  _targetLogit(params: Partial<NativeLossOptions>, cos: number, rowMargin: number): { z: number; dz: number };
  /** Benchmark hook: seconds for the three products alone (the GEMM ceiling); see native/cpu/gemm_ceiling.cc. */
  _productsSeconds(x: Float32Array, w: Float32Array, dim: number, threads: number, simd: number, backward: boolean, matrix?: number): number;
  /** Benchmark hook: GFLOP/s of a register-only loop on all threads: kind 0 fp32 FMA, 1 VDPBF16PS, 2 TDPBF16PS; 0 where the CPU lacks it. */
  _peakGflops(kind: 0 | 1 | 2, threads: number, simd: number, seconds?: number): number;
  topk(x: Float32Array, w: HostCentres, dim: number, k: number, threads: number): { classes: Int32Array; scores: Float32Array };
  /** topk on the libuv thread pool. */
  topkAsync(x: Float32Array, w: HostCentres, dim: number, k: number, threads: number): Promise<{ classes: Int32Array; scores: Float32Array }>;
  /** Test hook: bytes the addon's large allocations hold now (big_alloc minus big_free). */
  _liveNativeBytes(): number;
  /** Bytes of freed large blocks the addon keeps for reuse (native/cpu/big_alloc.h). */
  _recycledNativeBytes(): number;
  /** Unmaps the blocks kept for reuse; returns the bytes given back. */
  _releaseRecycled(): number;
  /**
   * The addon's table of margin kinds (native/margin_math.h's MS_MARGIN_KINDS): per ms::MarginParams
   * field m1, m2, m3 the TypeScript parameter it carries ('' where unused) and the typical value.
   */
  _marginKinds(): { name: string; code: number; angular: boolean; rowMargins: boolean; slots: Record<'m1' | 'm2' | 'm3', string>; typical: Record<'m1' | 'm2' | 'm3', number> }[];
  info(simd?: number): {
    cpu: { threads: number; simd: 'avx512' | 'avx2' | 'neon' | 'portable'; simdWidth: number; matrix: CpuMatrixPath; matrixPaths: CpuMatrixPath[] };
    cuda: { compiled: boolean; usable: boolean; reason?: string; [key: string]: unknown };
  };
}

/** Must match the level codes of native/cpu/simd_dispatch.h (ordered: a level the CPU lacks falls back below it). */
export const SIMD_CODES = { auto: -1, portable: 4, neon: 5, avx2: 8, avx512: 16 } as const;
/** Must match ms::MatrixPath in native/cpu/bf16_gemm.h. */
export const MATRIX_CODES = { auto: -1, none: 0, 'avx512-bf16': 1, 'amx-bf16': 2, 'neon-bf16': 3 } as const;

/**
 * The package root (dist/.. or lib/..): node-gyp-build looks there for a
 * source build (build/Release, written by cmake-js or node-gyp) first, then for
 * the prebuilt binary of this platform (prebuilds/<platform>-<arch>/).
 */
function loadAddon(): NativeAddon {
  // Computed here, not at import: in a browser bundle (no Node) the import must succeed.
  const inNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';
  const root = inNode ? path.join(__dirname, '..') : '(no Node.js here)';
  try {
    if (!inNode) throw new Error('native addons load only in Node.js');
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require('node-gyp-build')(root) as NativeAddon;
  } catch (err) {
    const platform = inNode ? `${process.platform}-${process.arch}` : 'this platform';
    throw new NativeError(
      `margin-softmax: no loadable native addon for ${platform} in ${root} ` +
        `(${(err as Error).message.split('\n')[0]}). Build it from source: npm rebuild margin-softmax --build-from-source ` +
        `(needs a C++17 compiler; see docs/packaging.md), or use backend 'wasm' (docs/wasm.md).`,
      { cause: err },
    );
  }
}

/**
 * The addon is loaded on first use, not when the library is imported, so that
 * the library loads (and computes on the wasm backend) where no native binary
 * fits or it fails to load. The outcome of the one attempt is kept.
 */
let loaded: { addon?: NativeAddon; error?: NativeError } | undefined;

function addon(): NativeAddon {
  if (!loaded) {
    try {
      loaded = { addon: loadAddon() };
    } catch (err) {
      loaded = { error: err as NativeError };
    }
  }
  if (loaded.error) throw loaded.error;
  return loaded.addon as NativeAddon;
}

/** Whether the native addon loads here, and why not where it does not (backends(), deviceInfo(), backend 'auto'). */
export function nativeStatus(): { usable: boolean; reason?: string } {
  try {
    addon();
    return { usable: true };
  } catch (err) {
    return { usable: false, reason: (err as Error).message };
  }
}

/**
 * The addon's functions, looked up in the addon on each access: the first
 * access loads it, and throws its NativeError where it cannot be loaded.
 */
export const native: NativeAddon = new Proxy({} as NativeAddon, {
  get: (_target, key) => (addon() as unknown as Record<string | symbol, unknown>)[key],
  has: (_target, key) => key in addon(),
});
