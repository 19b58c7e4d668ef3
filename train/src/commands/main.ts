/**
 * The command line's dispatch: --version and help, then each command with its
 * parsed options (train, eval, compare: ./options; bench: the repository's
 * bench/run.mjs; figures, embed, verify, identify: ./model-commands), and the
 * report of an error (its message on stderr, exit code 2 for a usage error,
 * 1 otherwise).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { ArgumentError, CheckpointError } from 'margin-softmax';
import { DataError } from '../data/datasets';
import { ImageError } from '../data/images';
import { formatVerification } from '../eval/protocol';
import { CheckpointMismatchError } from '../run/checkpoint';
import { marginLabel } from '../run/config';
import { train } from '../run/train';
import { COMPARE_LOSSES, runCompare } from './compare';
import { runEval } from './eval';
import { COMMAND_NAMES, HELP, USAGE, type Command } from './help';
import { isToolCommand, parseToolArgs, runTool, TOOL_COMMANDS } from './model-commands';
import {
  badImagePolicyFrom,
  checkOptionsOf,
  configFromArgs,
  expectedSizeFrom,
  int,
  list,
  oneShotFrom,
  parseValues,
  tfBackendFrom,
  usage,
  UsageError,
  type Values,
} from './options';
import { parseLosses } from './sweep';

function writeJson(target: string | undefined, value: unknown): void {
  if (!target) return;
  const text = JSON.stringify(value, null, 2);
  if (target === '-') process.stdout.write(text + '\n');
  else fs.writeFileSync(target, text + '\n');
}

function versions(): string {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const own = require(path.join(__dirname, '..', '..', 'package.json')) as { name: string; version: string };
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

async function trainCommand(values: Values): Promise<number> {
  const cfg = configFromArgs(values, 'train');
  // The final verification goes to stdout here, once (the loop's log would repeat it on stderr).
  const r = await train(cfg, { verbose: !values.quiet, handleSignals: true, resume: values.resume, overwrite: values.overwrite, plots: !values['no-plots'], logResult: false });
  if (r.after) process.stdout.write(formatVerification(r.after, `${marginLabel(cfg.margin)} after epoch ${r.epochs[r.epochs.length - 1]?.epoch}`) + '\n');
  if (r.before && r.after) {
    process.stdout.write(`${cfg.initFrom ? 'initial' : 'untrained'} backbone: ${(100 * r.before.accuracy.mean).toFixed(2)} % → trained: ${(100 * r.after.accuracy.mean).toFixed(2)} %; training ${r.imgPerSec.toFixed(1)} img/s (head on ${r.headBackend}); wall ${r.wallSeconds.toFixed(0)} s\n`);
  }
  writeJson(values.json, { out: r.out, headBackend: r.headBackend, stopped: r.stopped, imgPerSec: r.imgPerSec, wallSeconds: r.wallSeconds, before: r.before, after: r.after, epochs: r.epochs });
  return r.stopped ? 130 : 0;
}

async function evalCommand(values: Values): Promise<number> {
  if (!values.checkpoint?.length) throw new UsageError('eval needs --checkpoint runs/NAME');
  const checkpoints = values.checkpoint;
  const expectSize = expectedSizeFrom(values);
  const out = await runEval({
    checkpoint: checkpoints,
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
  const members = out.members?.map((m) => ({ checkpoint: m.run, epoch: m.epoch, result: m.result }));
  const checkpoint = checkpoints.length === 1 ? path.resolve(checkpoints[0]) : checkpoints.map((c) => path.resolve(c));
  writeJson(values.json, { checkpoint, epoch: out.epoch, identities: out.identities, result: out.result, oneShot: out.oneShot, members });
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

export function report(err: unknown): number {
  const known = err instanceof UsageError || err instanceof DataError || err instanceof ImageError || err instanceof CheckpointMismatchError || err instanceof CheckpointError || err instanceof ArgumentError;
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`margin-softmax: error: ${msg}\n`);
  if (err instanceof UsageError) process.stderr.write(`Run 'margin-softmax COMMAND --help' for the options of a command.\n`);
  if (!known && err instanceof Error && process.env.MS_DEBUG) process.stderr.write(`${err.stack}\n`);
  return err instanceof UsageError ? 2 : 1;
}
