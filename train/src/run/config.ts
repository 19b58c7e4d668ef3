/**
 * Training configuration: defaults, margin parsing, and the fingerprint that
 * ties a checkpoint to the configuration that produced it.
 */
import type { AffineRanges } from '../data/augment';
import type { PhotometricRanges } from '../data/photometric';
import { MARGIN_KINDS, MARGIN_KIND_NAMES, type Margin, type MarginKind } from 'margin-softmax';
import type { BackboneConfig } from '../model/backbone';
import { mnistSource, scanImageFolder, type BadImagePolicy, type DataSource } from '../data/datasets';
import type { TfBackendName } from '../model/tf';
import { MARGIN_PRESETS } from './margin-presets';

/** The run configuration; the backbone fields (size, channels, dim, widths, blocks, dropout) come from BackboneConfig. */
export interface TrainConfig extends BackboneConfig {
  /** Data folder (ImageFolder), or null for the embedded MNIST default. */
  data: string | null;
  /** Output folder of the run. */
  out: string;
  seed: number;
  /** Seed of the identity split (kept apart from `seed` so `compare` can vary the seed on one split). */
  splitSeed: number;
  /** Held-out identities: a count, or a fraction of all identities when `valClasses` is null. */
  valClasses: number | null;
  valFraction: number;
  /** Hold out whole groups instead (the first path component of an identity: Omniglot's alphabets); empty = the seeded split. */
  valGroups: string[];
  /** MNIST default: images per training digit. */
  mnistPerClass: number;
  /** MNIST default: images per held-out digit. */
  mnistEvalPerClass: number;

  margin: Margin;
  scale: number;

  epochs: number;
  batchSize: number;
  lr: number;
  /** Epochs (1-based: "at the start of epoch e") where the learning rate is multiplied by lrFactor. */
  lrSteps: number[];
  lrFactor: number;
  momentum: number;
  weightDecay: number;
  /** The head's learning rate = lr × headLrMult (same schedule). */
  headLrMult: number;
  /** Probability of a horizontal flip per training image. */
  flip: number;
  /** Random translation of each training image by up to ±shift pixels (0 = none). */
  shift: number;
  /** Random affine augmentation (../data/augment): rotation ±rotate°, scale 1 ± scaleJitter, shear ±shear° (0 = none; with any of them, the shift is continuous). */
  rotate: number;
  scaleJitter: number;
  shear: number;
  /** Random photometric augmentation (../data/photometric): contrast 1 ± contrast, brightness ± and a lighting ramp ± these fractions of the intensity range (0 = none). */
  contrast: number;
  brightness: number;
  lightingRamp: number;

  /** Test-time flip averaging in evaluation. */
  evalFlip: boolean;
  /** A run folder whose checkpoint's backbone starts this run (fine-tuning); the head starts afresh. */
  initFrom: string | null;
  /** Evaluate on the held-out identities after every epoch (and before training). */
  evalEvery: number;
  evalSeed: number;
  /** θ_y rows recorded per epoch (all training rows of the epoch up to this many). */
  thetaSamples: number;

  tfBackend: TfBackendName;
  /** The margin head's backend: 'auto' (CUDA where a device is usable, else the CPU), 'cpu' or 'cuda'. */
  backend: 'auto' | 'cpu' | 'cuda';
  onBadImage: BadImagePolicy;
  /** Head CPU threads (0 = all). */
  threads: number;
  /** Backbone replicas (the main thread's and worker threads'), each on a share of every batch; 1 = the whole batch on one model. */
  workers: number;
  /** 'mpi': one rank of `mpirun -np K`; data-parallel backbone, head sharded over the ranks. */
  distributed: 'none' | 'mpi';
}

/** Each kind's CLI parameters and their defaults: the paper's parameters (./margin-presets). */
export const MARGIN_DEFAULTS = Object.fromEntries(MARGIN_KIND_NAMES.map((k) => [k, { ...MARGIN_PRESETS[k].paper }])) as Record<MarginKind, Record<string, number>>;

export const DEFAULT_CONFIG: TrainConfig = {
  data: null,
  out: 'runs/default',
  seed: 0,
  splitSeed: 0,
  valClasses: null,
  valFraction: 0.25,
  valGroups: [],
  mnistPerClass: 300,
  mnistEvalPerClass: 100,
  height: 32,
  width: 32,
  channels: 1,
  dim: 512,
  widths: [16, 32, 64],
  blocks: 1,
  dropout: 0,
  margin: { kind: 'adaptive', m1: MARGIN_PRESETS.adaptive.paper.m1, m2: MARGIN_PRESETS.adaptive.paper.m2 },
  scale: 64,
  epochs: 10,
  batchSize: 32,
  lr: 0.1,
  lrSteps: [6, 9],
  lrFactor: 0.1,
  momentum: 0.9,
  weightDecay: 5e-4,
  headLrMult: 1,
  flip: 0.5,
  shift: 0,
  rotate: 0,
  scaleJitter: 0,
  shear: 0,
  contrast: 0,
  brightness: 0,
  lightingRamp: 0,
  evalFlip: false,
  initFrom: null,
  evalEvery: 1,
  evalSeed: 0,
  thetaSamples: 4096,
  tfBackend: 'wasm',
  backend: 'auto',
  onBadImage: 'stop',
  threads: 0,
  workers: 1,
  distributed: 'none',
};

/** A margin from its kind and (optional) parameters; missing ones take MARGIN_DEFAULTS. */
export function makeMargin(kind: string, params: Record<string, number | undefined> = {}, seed = 0): Margin {
  if (!(MARGIN_KIND_NAMES as string[]).includes(kind)) throw new Error(`Expected --margin one of ${MARGIN_KIND_NAMES.join(', ')} but received ${JSON.stringify(kind)}`);
  const k = kind as MarginKind;
  const out: Record<string, number | string> = { kind: k };
  for (const [name, def] of Object.entries(MARGIN_DEFAULTS[k])) {
    const v = params[name];
    out[name] = v === undefined ? def : v;
  }
  for (const [name, v] of Object.entries(params)) {
    if (v !== undefined && !(name in MARGIN_DEFAULTS[k])) {
      throw new Error(`--${name} does not apply to --margin ${k} (its parameters: ${Object.keys(MARGIN_DEFAULTS[k]).join(', ') || 'none'})`);
    }
  }
  if (MARGIN_KINDS[k].rowMargins) out.seed = seed;
  return out as unknown as Margin;
}

/**
 * The --margin kinds for the help text, one line each: the name, the loss,
 * and the defaults of its parameters.
 */
export function marginKindsHelp(indent: string): string {
  return MARGIN_KIND_NAMES.map((k) => {
    const defaults = Object.entries(MARGIN_DEFAULTS[k]).map(([name, v]) => `${name} ${v}`);
    return `${indent}${k.padEnd(12)} ${MARGIN_KINDS[k].help}${defaults.length ? ` — ${defaults.join(', ')}` : ''}`;
  }).join('\n');
}

/** "adaptive(m1=0.03, m2=0.5)". */
export function marginLabel(m: Margin): string {
  const params = Object.entries(m)
    .filter(([k]) => k !== 'kind' && k !== 'seed' && k !== 'counter')
    .map(([k, v]) => `${k}=${v}`);
  return params.length ? `${m.kind}(${params.join(', ')})` : m.kind;
}

/** The data set a configuration names: its --data ImageFolder, or the embedded MNIST default. */
export function openSource(cfg: Pick<TrainConfig, 'data' | 'mnistPerClass' | 'mnistEvalPerClass'>): DataSource {
  return cfg.data ? scanImageFolder(cfg.data) : mnistSource({ perClass: cfg.mnistPerClass, evalPerClass: cfg.mnistEvalPerClass });
}

/** The random affine augmentation's ranges (../data/augment). */
export function affineOf(cfg: TrainConfig): AffineRanges {
  return { rotate: cfg.rotate ?? 0, scale: cfg.scaleJitter ?? 0, shear: cfg.shear ?? 0, shift: cfg.shift };
}

/**
 * Whether `value` is option `key`'s default. A saved configuration lacks the
 * options added after it was written, and such a run had their defaults: code
 * that compares saved configurations treats an absent option as this.
 */
export function isDefaultOption(key: string, value: unknown): boolean {
  const defaults = DEFAULT_CONFIG as unknown as Record<string, unknown>;
  return key in defaults && JSON.stringify(value) === JSON.stringify(defaults[key]);
}

/** The random photometric augmentation's ranges (../data/photometric); 0 in a run configured before it existed. */
export function photometricOf(cfg: TrainConfig): PhotometricRanges {
  return { contrast: cfg.contrast ?? 0, brightness: cfg.brightness ?? 0, ramp: cfg.lightingRamp ?? 0 };
}

export function backboneOf(cfg: TrainConfig): BackboneConfig {
  return { height: cfg.height, width: cfg.width, channels: cfg.channels, dim: cfg.dim, widths: cfg.widths, blocks: cfg.blocks, dropout: cfg.dropout };
}

/**
 * The fields that must match between a checkpoint and a run that resumes or
 * evaluates it: architecture, input, classes and the loss.
 */
export function modelFingerprint(cfg: TrainConfig, trainClasses: number): Record<string, unknown> {
  return {
    height: cfg.height,
    width: cfg.width,
    channels: cfg.channels,
    dim: cfg.dim,
    widths: cfg.widths,
    blocks: cfg.blocks,
    dropout: cfg.dropout,
    classes: trainClasses,
    margin: MARGIN_KINDS[cfg.margin.kind].rowMargins ? { ...cfg.margin, counter: undefined } : cfg.margin,
    scale: cfg.scale,
  };
}

/** Differences between two fingerprints, as "dim: 512 (checkpoint) vs 256 (now)". */
export function fingerprintDiff(saved: Record<string, unknown>, now: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const k of new Set([...Object.keys(saved), ...Object.keys(now)])) {
    const a = JSON.stringify(saved[k]);
    const b = JSON.stringify(now[k]);
    if (a !== b) out.push(`${k}: ${a} (checkpoint) vs ${b} (now)`);
  }
  return out;
}
