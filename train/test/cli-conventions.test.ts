/**
 * Command-line conventions: --version, per-command --help, exit code 2 for
 * every usage error and no stack trace for a user's mistake (through the
 * built bin, as a user runs it), bench outside a checkout, a progress bar
 * that fits the terminal, progress during compare, and compare's tables
 * printed once.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, afterEach, describe, expect, test, vi } from 'vitest';
import { benchScript, main, report } from '../src/commands/main';
import { runCompare } from '../src/commands/compare';
import { DEFAULT_CONFIG } from '../src/run/config';
import { ProgressBar } from '../src/run/progress';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-cli-conv-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

/** Runs main() with stdout captured; a thrown error goes through report() as the bin does. */
async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((out += String(chunk)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((err += String(chunk)), true));
  try {
    const code = await main(args).catch(report);
    return { code, out, err };
  } finally {
    vi.restoreAllMocks();
  }
}

describe('--version and --help', () => {
  test('--version prints the package and library versions', async () => {
    const own = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag]);
      expect(r.code).toBe(0);
      expect(r.out).toMatch(new RegExp(`^margin-softmax-train ${own.version.replace(/\./g, '\\.')} \\(margin-softmax \\d+\\.\\d+\\.\\d+, node v`));
    }
  });

  test('each command has its own help: train, eval, compare, bench', async () => {
    const train = await cli(['train', '--help']);
    expect(train.code).toBe(0);
    expect(train.out).toMatch(/^Usage: margin-softmax train/);
    expect(train.out).toContain('--margin KIND');
    expect(train.out).not.toContain('--checkpoint');
    const ev = await cli(['eval', '-h']);
    expect(ev.out).toMatch(/^Usage: margin-softmax eval/);
    expect(ev.out).toContain('--checkpoint DIR');
    expect(ev.out).not.toContain('--margin KIND');
    expect((await cli(['help', 'compare'])).out).toMatch(/^Usage: margin-softmax compare[\s\S]*--losses LIST/);
    expect((await cli(['bench', '--help'])).out).toMatch(/^Usage: margin-softmax bench/);
    const top = await cli(['--help']);
    expect(top.code).toBe(0);
    expect(top.out).toContain("Run 'margin-softmax COMMAND --help'");
  });
});

describe('usage errors exit with code 2, other user errors with 1, neither with a stack trace', () => {
  test.each([
    [[], /Usage: margin-softmax COMMAND/],
    [['fit'], /Unknown command "fit"/],
    [['help', 'fit'], /Unknown command "fit"/],
    [['train', '--epoch', '3'], /Unknown option '--epoch'/],
    [['train', '--epochs', 'x'], /Expected an integer ≥ 1 for --epochs but received "x"/],
    [['train', '--checkpoint', 'runs/a'], /--checkpoint is not an option of train/],
    [['train', '--losses', 'softmax'], /--losses is not an option of train/],
    [['eval', '--checkpoint', 'runs/a', '--margin', 'arcface'], /--margin is not an option of eval/],
    [['eval', '--checkpoint', 'runs/a', '--tf-backend', 'webgl'], /Expected --tf-backend wasm or cpu but received "webgl"/],
    [['eval', '--checkpoint', 'runs/a', '--on-bad-image', 'ignore'], /Expected --on-bad-image skip or stop/],
    [['eval'], /eval needs --checkpoint/],
    [['compare', '--losses', 'sphereface'], /Expected a loss kind \(one of .*\) in --losses entry "sphereface"/],
    [['compare', '--seeds', '0,x'], /Expected a number for --seeds but received "x"/],
  ])('%j', async (args, message) => {
    const r = await cli(args as string[]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  test('a missing data folder or checkpoint: code 1, the message only', async () => {
    const r1 = await cli(['train', '--data', path.join(tmp, 'missing'), '--out', path.join(tmp, 'r')]);
    expect([r1.code, r1.err]).toEqual([1, expect.stringMatching(/^margin-softmax: error: Data folder not found: .*missing\n$/)]);
    const r2 = await cli(['eval', '--checkpoint', path.join(tmp, 'no-run')]);
    expect(r2.code).toBe(1);
    expect(r2.err).not.toMatch(/\n\s+at /);
  });

  const BIN = path.resolve(__dirname, '..', 'dist', 'cli.js');
  test.skipIf(!fs.existsSync(BIN))('the built bin: the same codes and messages, no stack trace', () => {
    for (const [args, code] of [[['fit'], 2], [['train', '--epochs', '0'], 2], [['train', '--data', path.join(tmp, 'missing')], 1]] as const) {
      const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, MS_DEBUG: '' } });
      expect({ args, status: r.status }).toEqual({ args, status: code });
      expect(r.stderr).toMatch(/^margin-softmax: error: /);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    const v = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8' });
    expect([v.status, v.stdout]).toEqual([0, expect.stringMatching(/^margin-softmax-train /)]);
  });
});

test('bench: runs bench/run.mjs of a checkout, and where the library is installed (no bench/) says what it needs', () => {
  const checkout = path.resolve(__dirname, '..', '..');
  expect(benchScript(checkout)).toBe(path.join(checkout, 'bench', 'run.mjs'));
  expect(benchScript(tmp)).toBeNull();
});

describe('progress bar', () => {
  function tty(columns: number | undefined) {
    const writes: string[] = [];
    const stream = { isTTY: true, columns, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream;
    return { stream, writes };
  }
  const stats = { loss: 12.3456, acc: 0.5, imgPerSec: 75.2 };

  test.each([30, 60, 80])('fits a terminal of %i columns (the line stays under the width)', (columns) => {
    const { stream, writes } = tty(columns);
    const bar = new ProgressBar('[12/21] elastic-arc seed 2 · epoch 3/10', 1000, stream);
    bar.update(500, stats, true);
    bar.update(1000, stats, true);
    const lines = writes.filter((w) => w.startsWith('\r')).map((w) => w.replace('\r\x1b[K', ''));
    expect(lines).toHaveLength(2);
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(columns - 1);
  });

  test('a wide terminal gets the whole line, with the full 24-character bar', () => {
    const { stream, writes } = tty(200);
    new ProgressBar('epoch 1/3', 100, stream).update(50, stats, true);
    expect(writes[0]).toMatch(/epoch 1\/3 \[={11}> {12}\] 50\/100 loss 12\.3456 acc 50\.0% 75\.2 img\/s ETA/);
  });
});

test('compare shows a progress bar per run and prints its tables once', async () => {
  const out = path.join(tmp, 'compare');
  const base = { ...DEFAULT_CONFIG, epochs: 1, dim: 16, widths: [8], mnistPerClass: 12, mnistEvalPerClass: 8, out };
  let err = '';
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((err += String(chunk)), true));
  await runCompare({ datasets: [null], losses: [{ kind: 'softmax' }], seeds: [0], base, out, progress: true, log: () => {} });
  vi.restoreAllMocks();
  expect(err).toMatch(/\[1\/1\] softmax seed 0 · epoch 1\/1 \[[=> ]+\] \d+\/\d+ loss /);

  let stdout = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((stdout += String(chunk)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  const code = await main(['compare', '--out', out, '--losses', 'softmax', '--seeds', '0', '--epochs', '1', '--dim', '16', '--widths', '8', '--mnist-per-class', '12', '--mnist-eval-per-class', '8', '--quiet']);
  vi.restoreAllMocks();
  expect(code).toBe(0);
  // stdout is the comparison (the text of compare.md), once, and nothing else.
  expect(stdout.trim()).toBe(fs.readFileSync(path.join(out, 'compare.md'), 'utf8').trim());
}, 120_000);
