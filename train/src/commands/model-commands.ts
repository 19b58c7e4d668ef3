/**
 * The commands that use a trained model or draw the paper's figures:
 *   margin-softmax figures  --out DIR
 *   margin-softmax embed    --checkpoint RUN --data DIR --out FILE.safetensors
 *   margin-softmax verify   --checkpoint RUN [--threshold T] IMAGE IMAGE
 *   margin-softmax identify --checkpoint RUN --gallery FILE.safetensors [--top K] IMAGE...
 * Each parses its own options (parseToolArgs throws ArgumentError for a
 * usage error) and runs with runTool.
 */
import * as fs from 'fs';
import { parseArgs, type ParseArgsConfig } from 'util';
import { ArgumentError } from 'margin-softmax';
import { checkImagesExist, embedFolder, identify, verifyPair } from '../eval/embed';
import { writeFigures } from '../figures/figures';
import type { TfBackendName } from '../model/tf';

const MODEL_NOTE = '  (embed, verify, identify: --eval-flip / --no-flip override the run\'s test-time flip; --tf-backend; --json FILE|-)';

/** Each command's lines of the usage text. */
const TOOL_HELP: Record<ToolCommand, string> = {
  figures: "  margin-softmax figures  --out DIR       the paper's Figures 1 and 2 as SVG (margin function; two-class boundaries)",
  embed: [
    '  margin-softmax embed    --checkpoint RUN --data DIR --out FILE.safetensors [--on-bad-image skip|stop]',
    '                          L2-normalised embeddings of every image of an ImageFolder, paths and identities in the metadata',
  ].join('\n'),
  verify: [
    '  margin-softmax verify   --checkpoint RUN [--threshold T] IMAGE IMAGE',
    "                          cosine of two images; same identity above the threshold of the run's evaluation",
  ].join('\n'),
  identify: [
    '  margin-softmax identify --checkpoint RUN --gallery FILE.safetensors [--top K] IMAGE...',
    '                          the K (default 5) closest identities of each image in a gallery written by embed',
  ].join('\n'),
};

export const TOOLS_USAGE = `\n${Object.values(TOOL_HELP).join('\n')}\n${MODEL_NOTE}\n`;

export const TOOL_COMMANDS = ['figures', 'embed', 'verify', 'identify'] as const;
export type ToolCommand = (typeof TOOL_COMMANDS)[number];

export function isToolCommand(c: string): c is ToolCommand {
  return (TOOL_COMMANDS as readonly string[]).includes(c);
}

interface ModelArgs {
  checkpoint: string;
  flip?: boolean;
  tfBackend?: TfBackendName;
  json?: string;
}

export type ToolArgs =
  | { command: 'help'; of: ToolCommand }
  | { command: 'figures'; out: string }
  | (ModelArgs & { command: 'embed'; data: string; out: string; onBadImage: 'skip' | 'stop' })
  | (ModelArgs & { command: 'verify'; images: [string, string]; threshold?: number })
  | (ModelArgs & { command: 'identify'; gallery: string; images: string[]; top: number; threads?: number });

const MODEL_OPTIONS = {
  checkpoint: { type: 'string' },
  'eval-flip': { type: 'boolean' },
  'no-flip': { type: 'boolean' },
  'tf-backend': { type: 'string' },
  json: { type: 'string' },
} as const;

function parse(command: string, args: string[], options: NonNullable<ParseArgsConfig['options']>, positionals: boolean) {
  try {
    return parseArgs({ args, options, allowPositionals: positionals, strict: true });
  } catch (err) {
    throw new ArgumentError(`${command}: ${(err as Error).message}`);
  }
}

function required(command: string, v: Record<string, unknown>, name: string, what: string): string {
  const x = v[name];
  if (typeof x !== 'string' || x === '') throw new ArgumentError(`${command} needs --${name} ${what}`);
  return x;
}

function modelArgs(command: string, v: Record<string, unknown>): ModelArgs {
  if (v['eval-flip'] && v['no-flip']) throw new ArgumentError(`${command}: give --eval-flip or --no-flip, not both`);
  const backend = v['tf-backend'];
  if (backend !== undefined && backend !== 'wasm' && backend !== 'cpu') throw new ArgumentError(`Expected --tf-backend wasm or cpu but received ${JSON.stringify(backend)}`);
  return {
    checkpoint: required(command, v, 'checkpoint', 'RUN (a run folder written by train)'),
    flip: v['eval-flip'] ? true : v['no-flip'] ? false : undefined,
    tfBackend: backend as TfBackendName | undefined,
    json: v.json as string | undefined,
  };
}

function number(v: unknown, name: string, ok: (x: number) => boolean, what: string): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (String(v).trim() === '' || !ok(x)) throw new ArgumentError(`Expected ${what} for --${name} but received ${JSON.stringify(v)}`);
  return x;
}

export function parseToolArgs(command: ToolCommand, args: string[]): ToolArgs {
  if (args.includes('--help') || args.includes('-h')) return { command: 'help', of: command };
  if (command === 'figures') {
    const { values } = parse(command, args, { out: { type: 'string' } }, false);
    return { command, out: (values.out as string | undefined) ?? 'figures' };
  }
  if (command === 'embed') {
    const { values } = parse(command, args, { ...MODEL_OPTIONS, data: { type: 'string' }, out: { type: 'string' }, 'on-bad-image': { type: 'string' } }, false);
    const policy = values['on-bad-image'] ?? 'stop';
    if (policy !== 'skip' && policy !== 'stop') throw new ArgumentError(`Expected --on-bad-image skip or stop but received ${JSON.stringify(policy)}`);
    return {
      command,
      ...modelArgs(command, values),
      data: required(command, values, 'data', 'DIR (one sub-folder of images per identity)'),
      out: required(command, values, 'out', 'FILE.safetensors'),
      onBadImage: policy,
    };
  }
  if (command === 'verify') {
    const { values, positionals } = parse(command, args, { ...MODEL_OPTIONS, threshold: { type: 'string' } }, true);
    if (positionals.length !== 2) throw new ArgumentError(`Expected two images for verify but received ${positionals.length}`);
    return {
      command,
      ...modelArgs(command, values),
      images: [positionals[0], positionals[1]],
      threshold: number(values.threshold, 'threshold', (x) => Number.isFinite(x) && Math.abs(x) <= 1, 'a cosine in [-1, 1]'),
    };
  }
  const { values, positionals } = parse(command, args, { ...MODEL_OPTIONS, gallery: { type: 'string' }, top: { type: 'string' }, threads: { type: 'string' } }, true);
  if (!positionals.length) throw new ArgumentError('Expected at least one probe image for identify but received none');
  return {
    command,
    ...modelArgs(command, values),
    gallery: required(command, values, 'gallery', 'FILE.safetensors (written by embed)'),
    images: positionals,
    top: number(values.top, 'top', (x) => Number.isSafeInteger(x) && x >= 1, 'an integer ≥ 1') ?? 5,
    threads: number(values.threads, 'threads', (x) => Number.isSafeInteger(x) && x >= 0, 'an integer ≥ 0'),
  };
}

function writeJson(target: string | undefined, value: unknown, write: (s: string) => void): void {
  if (!target) return;
  const text = JSON.stringify(value, null, 2) + '\n';
  if (target === '-') write(text);
  else fs.writeFileSync(target, text);
}

export async function runTool(a: ToolArgs, write: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  if (a.command === 'help') {
    write(`Usage:\n${TOOL_HELP[a.of]}\n${a.of === 'figures' ? '' : MODEL_NOTE + '\n'}`);
    return 0;
  }
  if (a.command === 'figures') {
    write(writeFigures(a.out).join('\n') + '\n');
    return 0;
  }
  const common = { checkpoint: a.checkpoint, flip: a.flip, tfBackend: a.tfBackend, warn: (m: string) => process.stderr.write(`${m}\n`) };
  if (a.command === 'embed') {
    const r = await embedFolder({ ...common, data: a.data, out: a.out, onBadImage: a.onBadImage });
    if (a.json !== '-') write(`${r.file}: ${r.images} images of ${r.identities} identities, dim ${r.dim}${r.skipped ? `, ${r.skipped} unreadable skipped` : ''}\n`);
    writeJson(a.json, r, write);
    return 0;
  }
  checkImagesExist(a.images);
  if (a.command === 'verify') {
    const r = await verifyPair({ ...common, images: a.images, threshold: a.threshold });
    const from = r.thresholdFrom === 'run' ? "the run's evaluation" : '--threshold';
    if (a.json !== '-') write(`cosine ${r.cosine.toFixed(4)}, threshold ${r.threshold.toFixed(4)} (from ${from}): ${r.same ? 'same identity' : 'different identities'}\n`);
    writeJson(a.json, r, write);
    return 0;
  }
  const r = await identify({ ...common, gallery: a.gallery, images: a.images, top: a.top, threads: a.threads });
  if (a.json !== '-') {
    for (const p of r) write(`${p.image}\n${p.matches.map((m, i) => `  ${i + 1}. ${m.identity}  ${m.score.toFixed(4)}  (${m.path})`).join('\n')}\n`);
  }
  writeJson(a.json, r, write);
  return 0;
}
