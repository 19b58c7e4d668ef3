/**
 * The options of train, eval and compare: one table (OPTIONS) parsed by
 * node's util.parseArgs, checked per command, and turned into a TrainConfig
 * (configFromArgs) or eval's and compare's own arguments. Every error here
 * is a UsageError.
 */
import * as os from 'os';
import { parseArgs } from 'util';
import type { Margin } from 'margin-softmax';
import { DEFAULT_CONFIG, makeMargin, type TrainConfig } from '../run/config';
import type { Command } from './help';

const OPTIONS = {
  data: { type: 'string', multiple: true },
  out: { type: 'string' },
  resume: { type: 'boolean' },
  overwrite: { type: 'boolean' },
  'init-from': { type: 'string' },
  checkpoint: { type: 'string', multiple: true },
  'all-identities': { type: 'boolean' },
  'val-classes': { type: 'string' },
  'val-fraction': { type: 'string' },
  'split-seed': { type: 'string' },
  'val-groups': { type: 'string' },
  size: { type: 'string' },
  channels: { type: 'string' },
  'on-bad-image': { type: 'string' },
  'mnist-per-class': { type: 'string' },
  'mnist-eval-per-class': { type: 'string' },
  dim: { type: 'string' },
  widths: { type: 'string' },
  blocks: { type: 'string' },
  dropout: { type: 'string' },
  margin: { type: 'string' },
  m: { type: 'string' },
  m1: { type: 'string' },
  m2: { type: 'string' },
  m3: { type: 'string' },
  sigma: { type: 'string' },
  scale: { type: 'string' },
  epochs: { type: 'string' },
  'batch-size': { type: 'string' },
  lr: { type: 'string' },
  'lr-steps': { type: 'string' },
  'lr-factor': { type: 'string' },
  momentum: { type: 'string' },
  'weight-decay': { type: 'string' },
  'head-lr-mult': { type: 'string' },
  flip: { type: 'string' },
  shift: { type: 'string' },
  rotate: { type: 'string' },
  'scale-jitter': { type: 'string' },
  shear: { type: 'string' },
  contrast: { type: 'string' },
  brightness: { type: 'string' },
  'lighting-ramp': { type: 'string' },
  seed: { type: 'string' },
  'tf-backend': { type: 'string' },
  backend: { type: 'string' },
  threads: { type: 'string' },
  workers: { type: 'string' },
  distributed: { type: 'string' },
  'eval-every': { type: 'string' },
  'eval-flip': { type: 'boolean' },
  'eval-seed': { type: 'string' },
  'theta-samples': { type: 'string' },
  'no-plots': { type: 'boolean' },
  quiet: { type: 'boolean' },
  json: { type: 'string' },
  losses: { type: 'string' },
  seeds: { type: 'string' },
  'n-way': { type: 'string' },
  'k-shot': { type: 'string' },
  episodes: { type: 'string' },
  queries: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export type Values = ReturnType<typeof parse>['values'];

export function parse(args: string[]) {
  return parseArgs({ args, options: OPTIONS, allowPositionals: false, strict: true });
}

/** A command line the commands cannot run: reported with the hint to --help, exit code 2. */
export class UsageError extends Error {}

function num(v: string | undefined, name: string, check: (x: number) => boolean = Number.isFinite, what = 'a number'): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === '' || !check(x)) throw new UsageError(`Expected ${what} for --${name} but received ${JSON.stringify(v)}`);
  return x;
}
export const int = (v: string | undefined, name: string, min = 0) => num(v, name, (x) => Number.isSafeInteger(x) && x >= min, `an integer ≥ ${min}`);
export const list = (v: string | undefined, name: string): number[] | undefined =>
  v === undefined ? undefined : v.trim() === '' ? [] : v.split(',').map((s) => num(s.trim(), name) as number);

/** Runs a parser whose errors are usage errors. */
export function usage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function marginFrom(v: Values, seed: number): Margin {
  const params = { m: num(v.m, 'm'), m1: num(v.m1, 'm1'), m2: num(v.m2, 'm2'), m3: num(v.m3, 'm3'), sigma: num(v.sigma, 'sigma') };
  try {
    return makeMargin(v.margin ?? 'adaptive', params, seed);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function badImagePolicyFrom(v: Values): 'skip' | 'stop' | undefined {
  const p = v['on-bad-image'];
  if (p !== undefined && p !== 'skip' && p !== 'stop') throw new UsageError(`Expected --on-bad-image skip or stop but received ${JSON.stringify(p)}`);
  return p;
}

function headBackendFrom(v: Values): 'auto' | 'cpu' | 'cuda' | undefined {
  const b = v.backend;
  if (b !== undefined && b !== 'auto' && b !== 'cpu' && b !== 'cuda') throw new UsageError(`Expected --backend auto, cpu or cuda but received ${JSON.stringify(b)}`);
  return b;
}

export function tfBackendFrom(v: Values): 'wasm' | 'cpu' | undefined {
  const b = v['tf-backend'];
  if (b !== undefined && b !== 'wasm' && b !== 'cpu') throw new UsageError(`Expected --tf-backend wasm or cpu but received ${JSON.stringify(b)}`);
  return b;
}

/**
 * --workers auto (the default): two backbone replicas where the process may
 * use two CPUs or more, one with --distributed mpi (one backbone per rank).
 * Measured on a quiet 2-core Intel Xeon (Emerald Rapids), Omniglot at 32×32,
 * batch 32, one epoch each, interleaved (2026-12-07): 98.9 and 101.9 img/s with
 * two replicas against 82.2 and 83.2 with one. On a machine that other work
 * keeps busy one replica was faster (pass --workers 1); more than two replicas
 * were not measured.
 */
export function autoWorkers(distributed: TrainConfig['distributed']): number {
  if (distributed === 'mpi') return 1;
  return Math.min(2, os.availableParallelism());
}

export function configFromArgs(v: Values, command: 'train' | 'compare'): TrainConfig {
  const c: TrainConfig = { ...DEFAULT_CONFIG };
  if (v.data && v.data.length > 1 && command === 'train') throw new UsageError('train takes one --data folder');
  c.data = v.data?.[0] ?? null;
  c.out = v.out ?? (command === 'compare' ? 'runs/compare' : 'runs/default');
  c.seed = int(v.seed, 'seed') ?? c.seed;
  c.splitSeed = int(v['split-seed'], 'split-seed') ?? c.splitSeed;
  c.valGroups = v['val-groups'] !== undefined ? v['val-groups'].split(',').map((g) => g.trim()).filter(Boolean) : c.valGroups;
  c.valClasses = int(v['val-classes'], 'val-classes', 2) ?? null;
  c.valFraction = num(v['val-fraction'], 'val-fraction', (x) => x > 0 && x < 1, 'a fraction in (0, 1)') ?? c.valFraction;
  c.mnistPerClass = int(v['mnist-per-class'], 'mnist-per-class', 1) ?? c.mnistPerClass;
  c.mnistEvalPerClass = int(v['mnist-eval-per-class'], 'mnist-eval-per-class', 2) ?? c.mnistEvalPerClass;
  if (v.size !== undefined) {
    const m = /^(\d+)(?:x(\d+))?$/i.exec(v.size.trim());
    if (!m) throw new UsageError(`Expected --size N or HxW (e.g. 32 or 40x32) but received ${JSON.stringify(v.size)}`);
    c.height = Number(m[1]);
    c.width = Number(m[2] ?? m[1]);
    if (c.height < 8 || c.width < 8) throw new UsageError(`--size must be at least 8x8`);
  }
  c.channels = int(v.channels, 'channels', 1) ?? c.channels;
  if (c.channels !== 1 && c.channels !== 3) throw new UsageError(`Expected --channels 1 or 3 but received ${c.channels}`);
  c.onBadImage = badImagePolicyFrom(v) ?? c.onBadImage;
  c.dim = int(v.dim, 'dim', 1) ?? c.dim;
  c.widths = list(v.widths, 'widths') ?? c.widths;
  c.blocks = int(v.blocks, 'blocks', 1) ?? c.blocks;
  c.dropout = num(v.dropout, 'dropout', (x) => x >= 0 && x < 1, 'a number in [0, 1)') ?? c.dropout;
  c.margin = marginFrom(v, c.seed);
  c.scale = num(v.scale, 'scale', (x) => x > 0, 'a positive number') ?? c.scale;
  c.epochs = int(v.epochs, 'epochs', 1) ?? c.epochs;
  c.batchSize = int(v['batch-size'], 'batch-size', 2) ?? c.batchSize;
  c.lr = num(v.lr, 'lr', (x) => x > 0, 'a positive number') ?? c.lr;
  c.lrSteps = list(v['lr-steps'], 'lr-steps') ?? (v.epochs !== undefined ? defaultSteps(c.epochs) : c.lrSteps);
  c.lrFactor = num(v['lr-factor'], 'lr-factor', (x) => x > 0, 'a positive number') ?? c.lrFactor;
  c.momentum = num(v.momentum, 'momentum', (x) => x >= 0 && x < 1, 'a number in [0, 1)') ?? c.momentum;
  c.weightDecay = num(v['weight-decay'], 'weight-decay', (x) => x >= 0, 'a number ≥ 0') ?? c.weightDecay;
  c.headLrMult = num(v['head-lr-mult'], 'head-lr-mult', (x) => x >= 0, 'a number ≥ 0') ?? c.headLrMult;
  c.flip = num(v.flip, 'flip', (x) => x >= 0 && x <= 1, 'a probability in [0, 1]') ?? c.flip;
  c.shift = int(v.shift, 'shift') ?? c.shift;
  c.rotate = num(v.rotate, 'rotate', (x) => x >= 0 && x <= 180, 'degrees in [0, 180]') ?? c.rotate;
  c.scaleJitter = num(v['scale-jitter'], 'scale-jitter', (x) => x >= 0 && x <= 0.9, 'a fraction in [0, 0.9]') ?? c.scaleJitter;
  c.shear = num(v.shear, 'shear', (x) => x >= 0 && x <= 60, 'degrees in [0, 60]') ?? c.shear;
  c.contrast = num(v.contrast, 'contrast', (x) => x >= 0 && x <= 0.9, 'a fraction in [0, 0.9]') ?? c.contrast;
  c.brightness = num(v.brightness, 'brightness', (x) => x >= 0 && x <= 1, 'a fraction in [0, 1]') ?? c.brightness;
  c.lightingRamp = num(v['lighting-ramp'], 'lighting-ramp', (x) => x >= 0 && x <= 1, 'a fraction in [0, 1]') ?? c.lightingRamp;
  c.tfBackend = tfBackendFrom(v) ?? c.tfBackend;
  c.backend = headBackendFrom(v) ?? c.backend;
  c.threads = int(v.threads, 'threads') ?? c.threads;
  if (v.distributed !== undefined && v.distributed !== 'mpi' && v.distributed !== 'none') {
    throw new UsageError(`Expected mpi or none for --distributed but received ${JSON.stringify(v.distributed)}`);
  }
  c.distributed = (v.distributed as TrainConfig['distributed'] | undefined) ?? c.distributed;
  c.workers = v.workers === undefined || v.workers === 'auto' ? autoWorkers(c.distributed) : int(v.workers, 'workers', 1)!;
  c.evalEvery = int(v['eval-every'], 'eval-every') ?? c.evalEvery;
  c.evalFlip = v['eval-flip'] ?? c.evalFlip;
  if (v['init-from'] !== undefined && v['init-from'].trim() === '') throw new UsageError('Expected a run folder for --init-from but received an empty string');
  c.initFrom = v['init-from'] ?? c.initFrom;
  c.evalSeed = int(v['eval-seed'], 'eval-seed') ?? c.evalSeed;
  c.thetaSamples = int(v['theta-samples'], 'theta-samples') ?? c.thetaSamples;
  return c;
}

/** eval's N-way K-shot options: --n-way N turns it on (--k-shot 1, --episodes 1000, --queries 1 by default). */
export function oneShotFrom(v: Values): { ways: number; shots: number; episodes: number; queries: number } | undefined {
  const ways = int(v['n-way'], 'n-way', 2);
  if (ways === undefined) {
    for (const k of ['k-shot', 'episodes', 'queries'] as const) if (v[k] !== undefined) throw new UsageError(`--${k} needs --n-way N`);
    return undefined;
  }
  return { ways, shots: int(v['k-shot'], 'k-shot', 1) ?? 1, episodes: int(v.episodes, 'episodes', 1) ?? 1000, queries: int(v.queries, 'queries', 1) ?? 1 };
}

/** The schedule's shape for a given length: ×0.1 at 60 % and 90 % of the epochs (as 6, 9 of 10). */
export function defaultSteps(epochs: number): number[] {
  const a = Math.max(2, Math.round(epochs * 0.6));
  const b = Math.max(a + 1, Math.round(epochs * 0.9));
  return [a, b].filter((e) => e <= epochs);
}

/** Options that only some commands read: any other command refuses them (exit code 2). */
const ONLY_FOR: Partial<Record<keyof typeof OPTIONS, Command[]>> = {
  checkpoint: ['eval'],
  'all-identities': ['eval'],
  'init-from': ['train'],
  losses: ['compare'],
  seeds: ['compare'],
  backend: ['train', 'compare'],
  'n-way': ['eval'],
  'k-shot': ['eval'],
  episodes: ['eval'],
  queries: ['eval'],
};
const EVAL_OPTIONS = new Set(['checkpoint', 'data', 'all-identities', 'eval-flip', 'eval-seed', 'size', 'dim', 'channels', 'tf-backend', 'on-bad-image', 'json', 'quiet', 'help', 'n-way', 'k-shot', 'episodes', 'queries']);

export function checkOptionsOf(command: Command, values: Values): void {
  for (const name of Object.keys(values) as (keyof typeof OPTIONS)[]) {
    const only = ONLY_FOR[name];
    if ((only && !only.includes(command)) || (command === 'eval' && !EVAL_OPTIONS.has(name))) {
      throw new UsageError(`--${name} is not an option of ${command} (see 'margin-softmax ${command} --help')`);
    }
  }
}

export function parseValues(rest: string[]): Values {
  try {
    return parse(rest).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** --size N or HxW: the image size the checkpoint must have been trained at. */
export function expectedSizeFrom(values: Values): { height?: number; width?: number } {
  if (values.size === undefined) return {};
  const m = /^(\d+)(?:x(\d+))?$/i.exec(values.size.trim());
  if (!m) throw new UsageError(`Expected --size N or HxW but received ${JSON.stringify(values.size)}`);
  return { height: Number(m[1]), width: Number(m[2] ?? m[1]) };
}
