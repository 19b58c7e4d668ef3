/**
 * `mpirun -np 2 margin-softmax train --distributed mpi`: one model trained by
 * two processes (data-parallel backbone, head sharded over the ranks) on the
 * embedded MNIST digits. Needs mpirun, an addon built with MPI and the
 * compiled CLI (train/dist); skipped otherwise, unless
 * MARGIN_SOFTMAX_REQUIRE_MPI=1 (CI, once it has installed Open MPI).
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { deviceInfo, MarginHead } from 'margin-softmax';
import { describe, expect, test } from 'vitest';
import { configFromArgs, parse, UsageError } from '../src/commands/options';
import { whyNotHosts } from '../../test/hosts/netns-probe';

const CLI = path.join(__dirname, '..', 'dist', 'cli.js');
const HARNESS = path.join(__dirname, '..', '..', 'test', 'hosts', 'netns-mpirun.sh');
const TRAIN = ['train', '--distributed', 'mpi', '--mnist-per-class', '20', '--mnist-eval-per-class', '4', '--dim', '16', '--widths', '8,16', '--no-plots'];

function whyNot(): string | null {
  if (spawnSync('mpirun', ['--version']).status !== 0) return 'mpirun is not on the PATH';
  if (!deviceInfo().mpi.compiled) return deviceInfo().mpi.reason ?? 'the addon was built without MPI';
  if (!fs.existsSync(CLI)) return 'train/dist is not built (npm run build:ts)';
  return null;
}
const skipReason = whyNot();
// Separate hosts: network namespaces (test/hosts/netns-mpirun.sh), root only.
const hostsSkipReason = skipReason ?? whyNotHosts();

if (hostsSkipReason && process.env.MARGIN_SOFTMAX_REQUIRE_MPI === '1') throw new Error(`MARGIN_SOFTMAX_REQUIRE_MPI=1 but ${hostsSkipReason}`);
if (skipReason) console.warn(`train/test/mpi-train.test.ts skipped: ${skipReason}`);
else if (hostsSkipReason) console.warn(`train/test/mpi-train.test.ts: the separate-hosts run is skipped: ${hostsSkipReason}`);

/** The newest complete generation (step-S with a manifest) in a head-shards folder: its step and files. */
function newestShards(dir: string): { step: number; files: string[] } {
  const steps = fs.readdirSync(dir).filter((f) => /^step-\d+$/.test(f) && fs.existsSync(path.join(dir, f, 'manifest.json'))).map((f) => Number(f.slice(5)));
  const step = Math.max(...steps);
  return { step, files: fs.readdirSync(path.join(dir, `step-${step}`)).sort() };
}

/**
 * The training CLI as one job of 2 ranks, each alone on its host (own
 * network namespace and folder under `hosts`, TCP only; --out is relative,
 * so each rank's run folder is on its host). `interruptAfter`: send SIGINT
 * to mpirun once that text appears in the output (Ctrl-C).
 */
function trainOnHosts(hosts: string, args: string[], interruptAfter?: RegExp): Promise<{ status: number | null; output: string }> {
  // Ctrl-C reaches the ranks as SIGTERM after odls_base_sigkill_timeout seconds; they then have as long to stop.
  const cmd = ['bash', HARNESS, '2', hosts, '-np', '2', '--mca', 'odls_base_sigkill_timeout', '10', '--', process.execPath, CLI, ...TRAIN, '--out', 'run', ...args];
  return new Promise((resolve) => {
    const child = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let sent = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 200_000);
    const take = (b: Buffer) => {
      output += b.toString();
      if (interruptAfter && !sent && interruptAfter.test(output)) {
        sent = true;
        child.kill('SIGINT');
      }
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, output });
    });
  });
}

test('--distributed takes mpi or none', () => {
  expect(configFromArgs(parse(['--distributed', 'mpi']).values, 'train').distributed).toBe('mpi');
  expect(() => configFromArgs(parse(['--distributed', 'nccl']).values, 'train')).toThrow(UsageError);
});

describe.skipIf(skipReason !== null)('mpirun -np 2 margin-softmax train --distributed mpi', () => {
  test('trains 2 epochs; rank 0 alone writes the run folder and prints the result; each rank writes its head shard', () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-mpi-train-'));
    const r = spawnSync('mpirun', [
      '--allow-run-as-root', '--oversubscribe', '-np', '2', '--mca', 'btl', 'self,vader',
      '--mca', 'btl_vader_single_copy_mechanism', 'none', '--mca', 'oob_tcp_if_include', 'lo',
      process.execPath, CLI, 'train', '--distributed', 'mpi', '--out', out, '--epochs', '2',
      '--mnist-per-class', '20', '--mnist-eval-per-class', '4', '--dim', '16', '--widths', '8,16', '--no-plots',
    ], { encoding: 'utf8', timeout: 240_000, killSignal: 'SIGKILL' });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    // The final result on stdout once (rank 0), not once per rank.
    expect(r.stdout.match(/after epoch 2/g)).toHaveLength(1);
    const epochs = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(epochs.map((e) => e.epoch)).toEqual([0, 1, 2]);
    for (const e of epochs.slice(1)) expect(Number.isFinite(e.loss)).toBe(true);
    // Both ranks' shards of the head, tiling the training identities.
    const shards = path.join(out, 'head-shards');
    const gen = path.join(shards, `step-${newestShards(shards).step}`);
    const manifest = JSON.parse(fs.readFileSync(path.join(gen, 'manifest.json'), 'utf8'));
    expect(manifest.ranks).toBe(2);
    expect(manifest.shards[0].count + manifest.shards[1].count).toBe(manifest.classes);
    const steps = manifest.shards.map((s: { file: string }) => MarginHead.load(path.join(gen, s.file)).stepCount);
    expect(steps[0]).toBe(steps[1]);
    expect(steps[0]).toBeGreaterThan(0);
    expect(fs.existsSync(path.join(out, 'checkpoint', 'head.safetensors'))).toBe(false);
  });
});

describe.skipIf(hostsSkipReason !== null)('margin-softmax train --distributed mpi on 2 hosts that share nothing but TCP', () => {
  test('trains into per-host folders, stops on Ctrl-C (SIGINT to mpirun) on every rank where it is, and resumes from there', async () => {
    const hosts = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ms-hosts-train-')), 'hosts');
    const h0 = path.join(hosts, 'h0', 'run');
    const h1 = path.join(hosts, 'h1', 'run');
    const first = await trainOnHosts(hosts, ['--epochs', '1']);
    expect(first.status, first.output).toBe(0);
    // Rank 0's host holds the run checkpoint and its shard; rank 1's host its shard alone.
    expect(fs.existsSync(path.join(h0, 'checkpoint', 'state.json'))).toBe(true);
    expect(fs.existsSync(path.join(h1, 'checkpoint'))).toBe(false);
    expect(newestShards(path.join(h0, 'head-shards')).files).toEqual(['manifest.json', 'shard-0-of-2.safetensors']);
    expect(newestShards(path.join(h1, 'head-shards')).files).toEqual(['manifest.json', 'shard-1-of-2.safetensors']);

    const perEpoch = JSON.parse(fs.readFileSync(path.join(h0, 'checkpoint', 'state.json'), 'utf8')).step;

    // Resumed for up to 200 epochs, Ctrl-C once epoch 2 is done: every rank
    // stops after the same batch and saves where it stopped. (The ranks see
    // the signal odls_base_sigkill_timeout = 10 s later; 200 epochs take
    // minutes, so the stop always lands within the run, however fast it is.)
    const stopped = await trainOnHosts(hosts, ['--epochs', '200', '--resume'], /epoch 2\/200: loss/);
    expect(stopped.output).toMatch(/Stopped during epoch \d+ after batch \d+ of \d+: every rank saved where it stopped|Stopped after epoch \d+, its checkpoint saved/);
    expect(stopped.output).not.toMatch(/after epoch 200/);
    const state = JSON.parse(fs.readFileSync(path.join(h0, 'checkpoint', 'state.json'), 'utf8'));
    expect(state.epoch).toBeGreaterThanOrEqual(2);
    expect(state.epoch).toBeLessThan(200);
    // The head generation named by the run checkpoint is on both hosts, with each rank's place in the epoch.
    for (const [dir, rank] of [[h0, 0], [h1, 1]] as const) {
      const gen = path.join(dir, 'head-shards', `step-${state.step}`);
      expect(fs.existsSync(path.join(gen, `shard-${rank}-of-2.safetensors`))).toBe(true);
      if (state.batchesDone) expect(JSON.parse(fs.readFileSync(path.join(gen, `place-rank-${rank}-of-2.json`), 'utf8')).batchesDone).toBe(state.batchesDone);
    }
    expect(state.step).toBe(state.epoch * perEpoch + (state.batchesDone ?? 0));

    // Resumed again to the end of the epoch it stopped in: exactly the batches not yet run.
    const resumed = await trainOnHosts(hosts, ['--epochs', String(state.epoch + 1), '--resume']);
    expect(resumed.status, resumed.output).toBe(0);
    expect(resumed.output.match(/after epoch \d+/g)).toEqual([`after epoch ${state.epoch + 1}`]);
    const epochs = fs.readFileSync(path.join(h0, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).epoch);
    expect(epochs).toEqual(Array.from({ length: state.epoch + 2 }, (_, e) => e));
    const last = JSON.parse(fs.readFileSync(path.join(h0, 'checkpoint', 'state.json'), 'utf8'));
    expect(last.step).toBe((state.epoch + 1) * perEpoch);
    expect(last.batchesDone).toBeUndefined();
    const heads = [0, 1].map((r) => MarginHead.load(path.join([h0, h1][r], 'head-shards', `step-${last.step}`, `shard-${r}-of-2.safetensors`)));
    expect(heads[0].stepCount).toBe(last.step);
    expect(heads[1].stepCount).toBe(last.step);
  }, 600_000);
});
