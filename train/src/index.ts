/**
 * The training package's API: train and evaluate, use a trained model
 * (embeddings, pair verification, identification against a gallery,
 * N-way K-shot evaluation), compare losses and sweep their parameters, and
 * draw the paper's figures.
 */
export { train, type TrainResult, type TrainHooks } from './run/train';
export { DEFAULT_CONFIG, makeMargin, marginLabel, type TrainConfig } from './run/config';
export { runEval, type EvalOptions, type EvalOutput } from './commands/eval';
export { runCompare, COMPARE_LOSSES, type CompareOptions, type CompareOutput, type CompareCell } from './commands/compare';
export { parseLosses, parseLossEntry, formatSweep, type SweepCell } from './commands/sweep';
export {
  openModel,
  readRun,
  loadModel,
  type RunInfo,
  embedFiles,
  embedFolder,
  verifyPair,
  identify,
  topIdentities,
  runThreshold,
  type TrainedModel,
  type EmbedFilesOptions,
  type EmbedFolderOptions,
  type VerifyPairOptions,
  type VerifyPairResult,
  type IdentifyOptions,
  type Match,
} from './eval/embed';
export { readGallery, writeGallery, GALLERY_FORMAT, type Gallery, type GalleryModel } from './eval/gallery';
export { figure1Data, figure2Data, writeFigures, type Figure1Data, type BoundaryRow } from './figures/figures';
export { targetLogits, otherLogits, marginedAngles } from './figures/margin-math';
export { verify, type VerificationResult } from './eval/protocol';
export { nWayKShot, formatOneShot, type OneShotOptions, type OneShotResult } from './eval/oneshot';
