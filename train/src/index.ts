/**
 * The training package's API: train and evaluate, use a trained model
 * (embeddings, pair verification, identification against a gallery,
 * N-way K-shot evaluation), compare losses and sweep their parameters, and
 * draw the paper's figures.
 */
export { train, type TrainResult, type TrainHooks } from './loop';
export { DEFAULT_CONFIG, makeMargin, marginLabel, type TrainConfig } from './config';
export { runEval, runCompare, COMPARE_LOSSES, type EvalOptions, type EvalOutput, type CompareOptions, type CompareOutput, type CompareCell } from './commands';
export { parseLosses, parseLossEntry, formatSweep, type SweepCell } from './sweep';
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
} from './embed';
export { readGallery, writeGallery, GALLERY_FORMAT, type Gallery, type GalleryModel } from './gallery';
export { figure1Data, figure2Data, writeFigures, type Figure1Data, type BoundaryRow } from './figures';
export { targetLogits, otherLogits, marginedAngles } from './margin-math';
export { verify, type VerificationResult } from './protocol';
export { nWayKShot, formatOneShot, type OneShotOptions, type OneShotResult } from './oneshot';
