#!/usr/bin/env node
/**
 * margin-softmax command line: train, eval, compare, bench.
 *   margin-softmax train [--data DIR] [--out runs/NAME] [--margin adaptive --m1 0.03 --m2 0.5] …
 *   margin-softmax eval --checkpoint runs/NAME [--data DIR]
 *   margin-softmax compare [--data DIR]… [--losses softmax,arcface,…] [--seeds 0,1,2]
 *   margin-softmax bench [args for bench/run.mjs]
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import { ArgumentError, CheckpointError } from 'margin-softmax';
import { CheckpointMismatchError } from './checkpoint';
import { COMPARE_LOSSES, runCompare, runEval } from './commands';
import { DEFAULT_CONFIG, makeMargin, marginKindsHelp, marginLabel, type TrainConfig } from './config';
import { DataError } from './data';
import { ImageError } from './images';
import { train } from './loop';
import { formatVerification } from './protocol';
import { parseLosses } from './sweep';
import { isToolCommand, parseToolArgs, runTool, TOOL_COMMANDS } from './tools';
import type { Margin } from 'margin-softmax';

const COMMANDS = `Commands:
  train     train the ResNet with a margin loss (default: the embedded MNIST digits)
  eval      verification (and Rank-1) of a trained run's checkpoint on held-out identities
  compare   one run per loss and seed, summarised in a Table-3 shaped comparison
  bench     the library's benchmark suite (needs a checkout of the margin-softmax repository)
  figures   the paper's Figures 1 and 2 (margin function; two-class boundaries) as SVG
  embed     L2-normalised embeddings of an ImageFolder into a safetensors gallery
  verify    cosine of two images; same identity above the run's threshold
  identify  the closest identities of images in a gallery written by embed

Run 'margin-softmax COMMAND --help' for the options of a command.
Options of every command: --help, -h; without a command: --version, -V.`;

const USAGE = `margin-softmax — train and evaluate face-recognition models with fused margin softmax losses

Usage: margin-softmax COMMAND [options]

${COMMANDS}
`;

const DATA_HELP = `Data:
  --data DIR             ImageFolder root: one sub-folder of images (PGM, PNG, JPEG) per identity.
                         Without --data: the embedded MNIST default (digits as identities, 7/8/9 held out).
  --val-classes N        identities held out for verification (default: 25 % of them)
  --split-seed N         seed of the identity split (default 0)
  --val-groups A,B       hold out every identity under these top folders instead (Omniglot: whole alphabets)
  --size 32 | HxW        input size after resizing (default 32x32)
  --channels 1|3         greyscale or colour input (default 1)
  --on-bad-image stop|skip   an unreadable image stops the run (default) or is skipped with a warning
  --mnist-per-class N    embedded default: images per training digit (default 300)`;

const MODEL_HELP = `Model and loss:
  --dim N                embedding size (default 512)
  --widths 16,32,64      ResNet stage widths; --blocks N blocks per stage (default 1); --dropout P
  --margin KIND          the loss (default ${DEFAULT_CONFIG.margin.kind}), one of (with its parameters' defaults):
${marginKindsHelp('                           ')}
  --m, --m1, --m2, --m3, --sigma   the kind's parameters (the elastic kinds draw their margins with --seed)
  --scale S              logit scale (default 64)`;

const OPTIM_HELP = `Optimisation:
  --epochs N (10)  --batch-size N (32)  --lr X (0.1)  --lr-steps 6,9  --lr-factor 0.1
  --momentum 0.9  --weight-decay 5e-4  --head-lr-mult 1
  --flip 0.5             probability of a horizontal flip of a training image; --shift N: random ±N px translation
  --rotate D, --scale-jitter S, --shear D   random affine augmentation: rotation ±D°, scale 1 ± S, shear ±D°
  --seed N               initialisation, shuffling and augmentation seed (default 0)
  --tf-backend wasm|cpu  tfjs backend (default wasm: the fastest that installs from npm alone)
  --backend auto|cpu|cuda   the margin head's backend (default auto: CUDA where a device is usable)
  --threads N            CPU threads of the margin head (default all)
  --workers N            backbone replicas, each on a share of every batch (N − 1 worker threads; default 1);
                         the head steps on the whole batch and batch norm is synchronised over the replicas,
                         so the step is the one-model step (up to the order of fp32 sums)
  --distributed mpi      run as one rank of \`mpirun -np K\`: the backbone data-parallel,
                         the head sharded over the ranks (needs the addon built with MPI)`;

const RUNS_HELP = `Runs:
  --out DIR              run folder: config.json, metrics.jsonl, theta.jsonl, eval.json, checkpoint/, plots/
  --resume               continue from DIR/checkpoint (same options)
  --overwrite            start afresh in a DIR that already holds a run
  --eval-every N         verification every N epochs (default 1; 0 = never)
  --eval-flip            test-time flip averaging of embeddings
  --eval-seed N          seed of the impostor pairs and the gallery choice (default 0)
  --no-plots             skip the SVG plots
  --quiet                no progress bar
  --json FILE|-          write the final result as JSON`;

const HELP: Record<Command, string> = {
  train: `Usage: margin-softmax train [--data DIR] [--out runs/NAME] [options]

Trains the backbone with the fused margin head; prints the verification of the
last epoch (stdout) and writes the run folder.

${DATA_HELP}

${MODEL_HELP}

${OPTIM_HELP}

${RUNS_HELP}
`,
  eval: `Usage: margin-softmax eval --checkpoint runs/NAME [--data DIR] [options]

Evaluates a run's checkpoint: the LFW-style verification protocol and Rank-1 on
the identities it held out (or on every identity of --data with --all-identities).

  --checkpoint DIR       run folder (or its checkpoint/ folder) written by train
  --data DIR             ImageFolder to evaluate on (default: the run's own data)
  --all-identities       every identity of --data, not only the held-out ones
  --eval-flip            test-time flip averaging of embeddings
  --eval-seed N          seed of the impostor pairs and the gallery choice (default 0)
  --size, --dim, --channels   expected by the checkpoint (checked against it)
  --tf-backend wasm|cpu  tfjs backend (default wasm)
  --on-bad-image stop|skip
  --json FILE|-          write the result as JSON
  --n-way N              also N-way K-shot classification by nearest prototype on the same embeddings
  --k-shot K, --episodes E, --queries Q   with --n-way (defaults 1, 1000, 1)
`,
  compare: `Usage: margin-softmax compare [--data DIR]... [--losses LIST] [--seeds 0,1,2] [--out runs/compare] [options]

Trains one run per data set × loss × seed (a progress bar per run on stderr) and
prints the comparison tables once, at the end (stdout; also DIR/compare.md,
compare.json, compare.svg).

compare:
  --losses LIST          comma-separated kinds (default: ${COMPARE_LOSSES.map((m) => m.kind).join(',')},
                         with the paper's parameters); --seeds 0,1,2. An entry may set parameters, kind:name=value…
                         (arcface:m=0.4), and list alternatives with | for a sweep, every combination trained:
                         'adaptive:m1=0.01|0.03|0.05:m2=0.45|0.5|0.55' (the m1 = 0 baseline of each m2 is added)
                         prints the table m1 × m2 and the per-seed differences against m1 = 0
  --resume               reuse the runs in --out whose config.json matches (finished: read back; interrupted:
                         continued from the checkpoint); the others are trained afresh

${DATA_HELP.replace('Data:', 'Data (each --data is one column):')}

${MODEL_HELP}

${OPTIM_HELP}

${RUNS_HELP}
`,
  bench: `Usage: margin-softmax bench [--quick] [arguments of bench/run.mjs]

Runs the library's benchmark suite (bench/run.mjs of the margin-softmax
repository: the fused loss against the same loss in plain tfjs). The suite is
not part of the npm packages: run it from a checkout (git clone, npm ci, then
npm run bench or this command there).
`,
};

type Command = 'train' | 'eval' | 'compare' | 'bench';
const COMMAND_NAMES: Command[] = ['train', 'eval', 'compare', 'bench'];

const OPTIONS = {
  data: { type: 'string', multiple: true },
  out: { type: 'string' },
  resume: { type: 'boolean' },
  overwrite: { type: 'boolean' },
  checkpoint: { type: 'string' },
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

type Values = ReturnType<typeof parse>['values'];

export function parse(args: string[]) {
  return parseArgs({ args, options: OPTIONS, allowPositionals: false, strict: true });
}

class UsageError extends Error {}

function num(v: string | undefined, name: string, check: (x: number) => boolean = Number.isFinite, what = 'a number'): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === '' || !check(x)) throw new UsageError(`Expected ${what} for --${name} but received ${JSON.stringify(v)}`);
  return x;
}
const int = (v: string | undefined, name: string, min = 0) => num(v, name, (x) => Number.isSafeInteger(x) && x >= min, `an integer ≥ ${min}`);
const list = (v: string | undefined, name: string): number[] | undefined =>
  v === undefined ? undefined : v.trim() === '' ? [] : v.split(',').map((s) => num(s.trim(), name) as number);

/** Runs a parser whose errors are usage errors. */
function usage<T>(parse: () => T): T {
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

function badImagePolicyFrom(v: Values): 'skip' | 'stop' | undefined {
  const p = v['on-bad-image'];
  if (p !== undefined && p !== 'skip' && p !== 'stop') throw new UsageError(`Expected --on-bad-image skip or stop but received ${JSON.stringify(p)}`);
  return p;
}

function headBackendFrom(v: Values): 'auto' | 'cpu' | 'cuda' | undefined {
  const b = v.backend;
  if (b !== undefined && b !== 'auto' && b !== 'cpu' && b !== 'cuda') throw new UsageError(`Expected --backend auto, cpu or cuda but received ${JSON.stringify(b)}`);
  return b;
}

function tfBackendFrom(v: Values): 'wasm' | 'cpu' | undefined {
  const b = v['tf-backend'];
  if (b !== undefined && b !== 'wasm' && b !== 'cpu') throw new UsageError(`Expected --tf-backend wasm or cpu but received ${JSON.stringify(b)}`);
  return b;
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
  c.tfBackend = tfBackendFrom(v) ?? c.tfBackend;
  c.backend = headBackendFrom(v) ?? c.backend;
  c.threads = int(v.threads, 'threads') ?? c.threads;
  c.workers = int(v.workers, 'workers', 1) ?? c.workers;
  if (v.distributed !== undefined && v.distributed !== 'mpi' && v.distributed !== 'none') {
    throw new UsageError(`Expected mpi or none for --distributed but received ${JSON.stringify(v.distributed)}`);
  }
  c.distributed = (v.distributed as TrainConfig['distributed'] | undefined) ?? c.distributed;
  c.evalEvery = int(v['eval-every'], 'eval-every') ?? c.evalEvery;
  c.evalFlip = v['eval-flip'] ?? c.evalFlip;
  c.evalSeed = int(v['eval-seed'], 'eval-seed') ?? c.evalSeed;
  c.thetaSamples = int(v['theta-samples'], 'theta-samples') ?? c.thetaSamples;
  return c;
}

/** eval's N-way K-shot options: --n-way N turns it on (--k-shot 1, --episodes 1000, --queries 1 by default). */
function oneShotFrom(v: Values): { ways: number; shots: number; episodes: number; queries: number } | undefined {
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

function writeJson(target: string | undefined, value: unknown): void {
  if (!target) return;
  const text = JSON.stringify(value, null, 2);
  if (target === '-') process.stdout.write(text + '\n');
  else fs.writeFileSync(target, text + '\n');
}

/** Options that only some commands read: any other command refuses them (exit code 2). */
const ONLY_FOR: Partial<Record<keyof typeof OPTIONS, Command[]>> = {
  checkpoint: ['eval'],
  'all-identities': ['eval'],
  losses: ['compare'],
  seeds: ['compare'],
  backend: ['train', 'compare'],
  'n-way': ['eval'],
  'k-shot': ['eval'],
  episodes: ['eval'],
  queries: ['eval'],
};
const EVAL_OPTIONS = new Set(['checkpoint', 'data', 'all-identities', 'eval-flip', 'eval-seed', 'size', 'dim', 'channels', 'tf-backend', 'on-bad-image', 'json', 'quiet', 'help', 'n-way', 'k-shot', 'episodes', 'queries']);

function checkOptionsOf(command: Command, values: Values): void {
  for (const name of Object.keys(values) as (keyof typeof OPTIONS)[]) {
    const only = ONLY_FOR[name];
    if ((only && !only.includes(command)) || (command === 'eval' && !EVAL_OPTIONS.has(name))) {
      throw new UsageError(`--${name} is not an option of ${command} (see 'margin-softmax ${command} --help')`);
    }
  }
}

function versions(): string {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const own = require(path.join(__dirname, '..', 'package.json')) as { name: string; version: string };
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const lib = require('margin-softmax/package.json') as { version: string };
  return `${own.name} ${own.version} (margin-softmax ${lib.version}, node ${process.version})`;
}

/** bench/run.mjs of the library's checkout, or null where the library is an installed package (bench/ is not shipped). */
export function benchScript(libraryRoot: string): string | null {
  const script = path.join(libraryRoot, 'bench', 'run.mjs');
  return fs.existsSync(script) ? script : null;
}

function libraryRoot(): string {
  return path.dirname(require.resolve('margin-softmax/package.json'));
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const answered = answerVersionOrHelp(command, rest);
  if (answered !== null) return answered;
  if (isToolCommand(command)) return runTool(usage(() => parseToolArgs(command, rest)));
  if (!(COMMAND_NAMES as string[]).includes(command)) {
    throw new UsageError(`Unknown command ${JSON.stringify(command)}: expected ${[...COMMAND_NAMES, ...TOOL_COMMANDS].join(', ')}`);
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(HELP[command as Command]);
    return 0;
  }
  if (command === 'bench') return runBench(rest);
  const values = parseValues(rest);
  checkOptionsOf(command as Command, values);
  if (command === 'train') return trainCommand(values);
  if (command === 'eval') return evalCommand(values);
  return compareCommand(values);
}

/** --version, `help [topic]` and the bare usage: the exit code, or null for any other command. */
function answerVersionOrHelp(command: string | undefined, rest: string[]): number | Promise<number> | null {
  if (command === '--version' || command === '-V') {
    process.stdout.write(versions() + '\n');
    return 0;
  }
  if (command === 'help' && rest.length && isToolCommand(rest[0])) return runTool({ command: 'help', of: rest[0] });
  if (command === 'help' && rest.length) {
    const topic = rest[0] as Command;
    if (!COMMAND_NAMES.includes(topic)) throw new UsageError(`Unknown command ${JSON.stringify(rest[0])}: expected ${[...COMMAND_NAMES, ...TOOL_COMMANDS].join(', ')}`);
    process.stdout.write(HELP[topic]);
    return 0;
  }
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    (command ? process.stdout : process.stderr).write(USAGE);
    return command ? 0 : 2;
  }
  return null;
}

/** `bench`: the repository's bench/run.mjs with the remaining arguments (not part of the npm package). */
function runBench(rest: string[]): number {
  const script = benchScript(libraryRoot());
  if (!script) {
    process.stderr.write(
      `margin-softmax: bench needs a checkout of the margin-softmax repository: its bench/ folder is not part of the npm package ` +
        `(looked in ${libraryRoot()}). Clone the repository, run npm ci there, then npm run bench.\n`,
    );
    return 1;
  }
  const r = spawnSync(process.execPath, [script, ...rest], { stdio: 'inherit' });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

function parseValues(rest: string[]): Values {
  try {
    return parse(rest).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function trainCommand(values: Values): Promise<number> {
  const cfg = configFromArgs(values, 'train');
  // The final verification goes to stdout here, once (the loop's log would repeat it on stderr).
  const r = await train(cfg, { verbose: !values.quiet, handleSignals: true, resume: values.resume, overwrite: values.overwrite, plots: !values['no-plots'], logResult: false });
  if (r.after) process.stdout.write(formatVerification(r.after, `${marginLabel(cfg.margin)} after epoch ${r.epochs[r.epochs.length - 1]?.epoch}`) + '\n');
  if (r.before && r.after) {
    process.stdout.write(`untrained backbone: ${(100 * r.before.accuracy.mean).toFixed(2)} % → trained: ${(100 * r.after.accuracy.mean).toFixed(2)} %; training ${r.imgPerSec.toFixed(1)} img/s (head on ${r.headBackend}); wall ${r.wallSeconds.toFixed(0)} s\n`);
  }
  writeJson(values.json, { out: r.out, headBackend: r.headBackend, stopped: r.stopped, imgPerSec: r.imgPerSec, wallSeconds: r.wallSeconds, before: r.before, after: r.after, epochs: r.epochs });
  return r.stopped ? 130 : 0;
}

/** --size N or HxW: the image size the checkpoint must have been trained at. */
function expectedSizeFrom(values: Values): { height?: number; width?: number } {
  if (values.size === undefined) return {};
  const m = /^(\d+)(?:x(\d+))?$/i.exec(values.size.trim());
  if (!m) throw new UsageError(`Expected --size N or HxW but received ${JSON.stringify(values.size)}`);
  return { height: Number(m[1]), width: Number(m[2] ?? m[1]) };
}

async function evalCommand(values: Values): Promise<number> {
  if (!values.checkpoint) throw new UsageError('eval needs --checkpoint runs/NAME');
  const expectSize = expectedSizeFrom(values);
  const out = await runEval({
    checkpoint: values.checkpoint,
    data: values.data?.[0],
    allIdentities: values['all-identities'],
    flip: values['eval-flip'],
    seed: int(values['eval-seed'], 'eval-seed'),
    tfBackend: tfBackendFrom(values),
    onBadImage: badImagePolicyFrom(values),
    expect: { ...expectSize, dim: int(values.dim, 'dim', 1), channels: int(values.channels, 'channels', 1) },
    oneShot: oneShotFrom(values),
  });
  process.stdout.write(out.text + '\n');
  writeJson(values.json, { checkpoint: path.resolve(values.checkpoint), epoch: out.epoch, identities: out.identities, result: out.result, oneShot: out.oneShot });
  return 0;
}

async function compareCommand(values: Values): Promise<number> {
  const base = configFromArgs(values, 'compare');
  const seeds = list(values.seeds, 'seeds') ?? [0, 1, 2];
  const losses = values.losses !== undefined ? usage(() => parseLosses(values.losses as string)) : COMPARE_LOSSES;
  const datasets = values.data && values.data.length ? values.data : [null];
  const r = await runCompare({ datasets, losses, seeds, base, out: base.out, resume: values.resume ?? false, verbose: false, progress: !values.quiet });
  process.stdout.write(r.text + '\n');
  writeJson(values.json, r.json);
  return 0;
}

function marginOrUsage(kind: string): Margin {
  try {
    return makeMargin(kind, {}, 0);
  } catch (err) {
    throw new UsageError(`--losses: ${(err as Error).message.replace('--margin ', '')}`);
  }
}

function report(err: unknown): number {
  const known = err instanceof UsageError || err instanceof DataError || err instanceof ImageError || err instanceof CheckpointMismatchError || err instanceof CheckpointError || err instanceof ArgumentError;
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`margin-softmax: error: ${msg}\n`);
  if (err instanceof UsageError) process.stderr.write(`Run 'margin-softmax COMMAND --help' for the options of a command.\n`);
  if (!known && err instanceof Error && process.env.MS_DEBUG) process.stderr.write(`${err.stack}\n`);
  return err instanceof UsageError ? 2 : 1;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.exitCode = report(err);
    },
  );
}

export { UsageError, report };
