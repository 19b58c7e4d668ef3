/**
 * What a training run carries from step to step, in four parts: the context
 * (options, logging, rank, run folder), the data, the model (backbone,
 * optimizer, margin head and the loss through it) and the progress (history,
 * counters, the stop flags). Each is built once by ./setup; the epochs
 * (./epochs) change the progress only.
 */
import type * as TF from '@tensorflow/tfjs';
import type { Communicator, MarginHead, ShardedMarginHead } from 'margin-softmax';
import type { DataSource, Sample, Split } from '../data/datasets';
import type { BackboneSgd } from '../model/optimizer';
import type { Tf } from '../model/tf';
import type { VerificationResult } from '../eval/protocol';
import type { CheckpointState } from './checkpoint';
import type { TrainConfig } from './config';
import type { HeadLoss } from './head-loss';
import type { EpochRecord, ThetaRow } from './metrics';
import type { BackboneReplicas } from './replicas';

export interface TrainHooks {
  /** Progress bar and messages on stderr. Default true. */
  verbose?: boolean;
  /** Install a SIGINT handler for a clean stop. Default false (the CLI sets it). */
  handleSignals?: boolean;
  /** Resume from <out>/checkpoint. */
  resume?: boolean;
  /** Start afresh in an <out> that already holds a run (its checkpoint, metrics and plots are replaced). */
  overwrite?: boolean;
  /** A progress bar per epoch on stderr. Default: verbose. */
  progress?: boolean;
  /** Put before the progress bar's "epoch i/n" (compare: which run this is). */
  progressLabel?: string;
  /** Log the final verification (the CLI prints it on stdout instead). Default true. */
  logResult?: boolean;
  /** Write SVG plots at the end. Default true. */
  plots?: boolean;
  /** Stop after this many training batches in total (tests of the stop path). */
  stopAfterBatches?: number;
  log?: (msg: string) => void;
}

/** The run's options, logging, rank and folder: fixed once the run is open. */
export interface RunContext {
  cfg: TrainConfig;
  hooks: TrainHooks;
  t0: number;
  verbose: boolean;
  /** --distributed mpi: this process is one rank; rank 0 alone logs, evaluates and writes the run folder. */
  comm: Communicator | null;
  isRoot: boolean;
  log: (msg: string) => void;
  /** Logs a message once (bad images are met again every epoch). */
  warn: (msg: string) => void;
  out: string;
  files: { metrics: string; theta: string; eval: string };
  /** What a checkpoint must match to be resumed or evaluated (./config modelFingerprint). */
  fingerprint: Record<string, unknown>;
}

/** The data set, its identity split and the training images. */
export interface RunData {
  src: DataSource;
  split: Split;
  trainSamples: Sample[];
  /** Images found unreadable (--on-bad-image skip): left out of the later epochs. */
  badRefs: Set<string>;
}

/** The backbone, its optimizer, the margin head and the loss the backbone trains against. */
export interface RunModel {
  tf: Tf;
  backbone: TF.LayersModel;
  head: MarginHead;
  /** The head sharded over the MPI ranks (null without --distributed). */
  sharded: ShardedMarginHead | null;
  optimizer: BackboneSgd;
  /** The backbone's worker replicas (--workers > 1), or null: the whole batch on the main thread's model. */
  replicas: BackboneReplicas | null;
  params: number;
  loss: HeadLoss;
  /** Verification on the held-out identities (rank 0 only; null on the other ranks). */
  evaluate: () => VerificationResult | null;
}

/** What the run has done so far: the epochs' records, the verifications, the counters and the stop flags. */
export interface RunProgress {
  /** The checkpoint resumed from, or null for a fresh run. */
  resumed: CheckpointState | null;
  records: EpochRecord[];
  thetas: ThetaRow[];
  before: VerificationResult | null;
  after: VerificationResult | null;
  /** Set by Ctrl-C (or hooks.stopAfterBatches): stop after the batch in flight. */
  stopRequested: boolean;
  stopped: boolean;
  batchesRun: number;
  totalImages: number;
  totalSeconds: number;
  totalHeadSeconds: number;
}

export interface RunState {
  ctx: RunContext;
  data: RunData;
  model: RunModel;
  progress: RunProgress;
}
