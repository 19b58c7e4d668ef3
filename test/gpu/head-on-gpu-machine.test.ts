/**
 * MarginHead on a machine where CUDA is usable: with `backend` left at its
 * default 'auto' the head is placed on the device, constructs and steps.
 * Skipped without a usable GPU unless REQUIRE_CUDA=1.
 */
import { describe, expect, test } from 'vitest';
import { MarginHead, backends } from '../../lib/index';
import { randomProblem } from './gpu-helpers';

const REQUIRE = process.env.REQUIRE_CUDA === '1';
const suite = backends().includes('cuda') || REQUIRE ? describe : describe.skip;

suite('MarginHead on a GPU machine', () => {
  test("backend 'auto' puts the head on CUDA; it constructs and steps", () => {
    const p = randomProblem(16, 200, 32, 5);
    const head = new MarginHead({ classes: 200, dim: 32, margin: { kind: 'adaptive' } });
    expect(head.backend).toBe('cuda');
    const r = head.step(p.embeddings, p.labels);
    expect(Number.isFinite(r.loss)).toBe(true);
    head.dispose();
  });
});
