/**
 * margin-softmax: fused margin-based softmax losses for face recognition.
 *
 * ```ts
 * import { lossAndGrad } from 'margin-softmax';
 * const { loss, gradEmbeddings, gradWeights } = lossAndGrad(
 *   { embeddings, weights, labels, dim: 512 },
 *   { margin: { kind: 'adaptive', m1: 0.03, m2: 0.5 }, scale: 64 });
 * ```
 */
export { lossAndGrad, lossAndGradAsync, forward, forwardAsync, allocFloat32, releaseCachedMemory, backends, deviceInfo, DEFAULT_SCALE, ADAPTIVE_DEFAULTS } from './loss';
export { ArgumentError, BackendUnavailableError, NativeError, HeadBusyError, HeadDisposedError, type HeadAsyncCall } from './errors';
export type * from './types';
export { MARGIN_KINDS, MARGIN_KIND_NAMES, type MarginKindSpec, type MarginParamSpec, type MarginKindName, type MarginOf, type RequiredParamNames, type OptionalParamNames } from './margins';
export { targetLogit, type TargetLogitOptions } from './target-logit';
export { MAX_THREADS, MAX_PARAMETER } from './validate';
export { MarginHead, MAX_TOP_K, type MarginHeadOptions, type StepResult, type SgdOptions, type ShardOptions } from './head/margin-head';
export { mergeStats, type ShardStats, type MergedStats } from './sharded/stats';
export {
  CheckpointError,
  removeStaleTemporaries,
  saveSafetensors,
  readHeader as readSafetensorsHeader,
  readTensor as readSafetensorsTensor,
  type SaveHooks,
  type TensorEntry,
  type StreamedTensor,
  type SafetensorsHeader,
} from './io/safetensors';
export { mpiCommunicator, localCommunicator, mpiInfo, CommError, type Communicator, type CommArray, type CommErrorKind, type MpiInfo, type MpiCommunicatorOptions } from './sharded/comm';
export { ShardedMarginHead, shardRange, type ShardedMarginHeadOptions, type ShardedStepResult, type StepTraffic } from './sharded/sharded-head';
export { initWasm, WASM_MEMORY_LIMIT, WASM_INFO, type WasmSource, type WasmModuleObject } from './wasm';
