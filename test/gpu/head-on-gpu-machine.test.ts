/**
 * MarginHead on a machine where CUDA is usable. The head runs on the CPU
 * backend in this version; with `backend` left at its default 'auto' it must
 * still construct and step on a GPU machine (not resolve 'auto' to 'cuda' and
 * then refuse it). Skipped without a usable GPU unless REQUIRE_CUDA=1.
 */
import { describe, expect, test } from 'vitest';
import { MarginHead, backends } from '../../lib/index';
import { randomProblem } from './gpu-helpers';

const REQUIRE = process.env.REQUIRE_CUDA === '1';
const suite = backends().includes('cuda') || REQUIRE ? describe : describe.skip;

suite('MarginHead on a GPU machine', () => {
  test("backend 'auto' constructs and steps", () => {
    const p = randomProblem(16, 200, 32, 5);
    const head = new MarginHead({ classes: 200, dim: 32, margin: { kind: 'adaptive' } });
    const r = head.step(p.embeddings, p.labels);
    expect(Number.isFinite(r.loss)).toBe(true);
  });
});
