/**
 * The training CLI with the margin head on CUDA: a tiny run (MNIST default,
 * one epoch, 16-dim embeddings) through `margin-softmax train --backend cuda`.
 * On a GPU, or against the emulated CUDA addon (npm run test:gpu-emu, in CI):
 * the host code, the device head and the CLI together.
 * Skipped where `backends()` has no 'cuda', unless REQUIRE_CUDA=1.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { backends } from '../../lib';
import { main } from '../../train/src/cli';

const REQUIRE = process.env.REQUIRE_CUDA === '1';
const suite = backends().includes('cuda') || REQUIRE ? describe : describe.skip;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-train-cuda-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs `f` with stdout silenced (the CLI prints its final result there). */
async function quietly<T>(f: () => Promise<T>): Promise<T> {
  const write = process.stdout.write;
  process.stdout.write = (() => true) as typeof process.stdout.write;
  try {
    return await f();
  } finally {
    process.stdout.write = write;
  }
}

suite('margin-softmax train --backend cuda', () => {
  test('trains a tiny run with the head on the device and records it', async () => {
    const out = path.join(tmp, 'run');
    const json = path.join(tmp, 'result.json');
    const args = ['train', '--backend', 'cuda', '--out', out, '--epochs', '1', '--dim', '16', '--widths', '8,16', '--quiet', '--no-plots',
      '--mnist-per-class', '8', '--mnist-eval-per-class', '4', '--json', json];
    expect(await quietly(() => main(args))).toBe(0);
    const result = JSON.parse(fs.readFileSync(json, 'utf8'));
    expect(result.headBackend).toBe('cuda');
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).headBackend).toBe('cuda');
    expect(Number.isFinite(result.after.accuracy.mean)).toBe(true);
    // Epoch 0 is the untrained evaluation (no loss); epoch 1 trained on the device.
    const trained = result.epochs.filter((e: { epoch: number }) => e.epoch > 0);
    expect(trained.length).toBe(1);
    expect(Number.isFinite(trained[0].loss)).toBe(true);
    // The saved head loads again, on the CPU too (the checkpoint does not depend on the backend).
    expect(await quietly(() => main(['train', '--backend', 'cpu', '--out', out, '--epochs', '2', '--dim', '16', '--widths', '8,16', '--quiet', '--no-plots',
      '--mnist-per-class', '8', '--mnist-eval-per-class', '4', '--resume', '--json', json]))).toBe(0);
    expect(JSON.parse(fs.readFileSync(json, 'utf8')).headBackend).toBe('cpu');
  });
});
