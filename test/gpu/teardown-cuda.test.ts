/**
 * Workers that use the CUDA backend (the device head included), ended before,
 * during and after their calls: the process lives on and its own results do
 * not change (test/stress/teardown-harness.mjs, in a child process). Under
 * the emulation the device is the CPU, so the sizes are small; on a GPU they
 * are the same, which keeps the case quick there too.
 *
 * Skipped where `backends()` has no 'cuda', unless REQUIRE_CUDA=1.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { MarginHead, backends } from '../../lib/index';
import { randomProblem } from './gpu-helpers';
import { expectCleanTeardown } from '../stress/harness';

const REQUIRE = process.env.REQUIRE_CUDA === '1';
const suite = backends().includes('cuda') || REQUIRE ? describe : describe.skip;

suite('worker teardown on the CUDA backend', () => {
  test('predictAsync on a device head runs off the event loop and equals predict', async () => {
    const p = randomProblem(12, 700, 32, 5);
    const head = new MarginHead({ classes: 700, dim: 32, margin: { kind: 'arcface', m: 0.5 }, backend: 'cuda', seed: 3 });
    const want = head.predict(p.embeddings, 4);
    const got = await head.predictAsync(p.embeddings, 4);
    expect(Array.from(got.classes)).toEqual(Array.from(want.classes));
    expect(Array.from(got.scores)).toEqual(Array.from(want.scores));
    head.dispose();
  });

  test('workers terminated or exiting around lossAndGradAsync, forwardAsync, stepAsync, predictAsync and save', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-teardown-cuda-'));
    try {
      await expectCleanTeardown({ backend: 'cuda', rounds: 1, dir, classes: 1500, dim: 32 }, 900_000);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 960_000);
});
