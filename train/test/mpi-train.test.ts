/**
 * `mpirun -np 2 margin-softmax train --distributed mpi`: one model trained by
 * two processes (data-parallel backbone, head sharded over the ranks) on the
 * embedded MNIST digits. Needs mpirun, an addon built with MPI and the
 * compiled CLI (train/dist); skipped otherwise, unless
 * MARGIN_SOFTMAX_REQUIRE_MPI=1 (CI, once it has installed Open MPI).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { deviceInfo, MarginHead } from 'margin-softmax';
import { describe, expect, test } from 'vitest';
import { configFromArgs, parse, UsageError } from '../src/commands/options';

const CLI = path.join(__dirname, '..', 'dist', 'cli.js');

function whyNot(): string | null {
  if (spawnSync('mpirun', ['--version']).status !== 0) return 'mpirun is not on the PATH';
  if (!deviceInfo().mpi.compiled) return deviceInfo().mpi.reason ?? 'the addon was built without MPI';
  if (!fs.existsSync(CLI)) return 'train/dist is not built (npm run build:ts)';
  return null;
}
const skipReason = whyNot();
if (skipReason && process.env.MARGIN_SOFTMAX_REQUIRE_MPI === '1') throw new Error(`MARGIN_SOFTMAX_REQUIRE_MPI=1 but ${skipReason}`);
if (skipReason) console.warn(`train/test/mpi-train.test.ts skipped: ${skipReason}`);

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
    const shards = path.join(out, 'checkpoint', 'head-shards');
    const manifest = JSON.parse(fs.readFileSync(path.join(shards, 'manifest.json'), 'utf8'));
    expect(manifest.ranks).toBe(2);
    expect(manifest.shards[0].count + manifest.shards[1].count).toBe(manifest.classes);
    const steps = manifest.shards.map((s: { file: string }) => MarginHead.load(path.join(shards, s.file)).stepCount);
    expect(steps[0]).toBe(steps[1]);
    expect(steps[0]).toBeGreaterThan(0);
    expect(fs.existsSync(path.join(out, 'checkpoint', 'head.safetensors'))).toBe(false);
  });
});
