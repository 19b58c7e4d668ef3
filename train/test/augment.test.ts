/**
 * Random affine augmentation (../src/augment): the warp against exact
 * pixel moves (identity, integer shifts, a quarter turn), the draws within
 * their ranges and reproducible for a seed, and bad ranges refused.
 */
import { expect, test } from 'vitest';
import { ArgumentError } from 'margin-softmax';
import { checkAffineRanges, drawAffine, isAffine, warpAffine } from '../src/data/augment';
import { shiftImage } from '../src/data/images';
import { Rng } from '../src/data/rng';

const H = 7;
const W = 7;
const C = 2;
function image(seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: H * W * C }, () => rng.next());
}
const identity = { m: [1, 0, 0, 1] as [number, number, number, number], ty: 0, tx: 0 };
const scratch = new Float32Array(H * W * C);

test('the identity map leaves the image as it is', () => {
  const a = image(1);
  const b = Float32Array.from(a);
  warpAffine(b, 0, H, W, C, identity, scratch);
  expect(b).toEqual(a);
});

test('an integer translation moves pixels as shiftImage does (edge repeated), at an offset into a batch', () => {
  for (const [dy, dx] of [[1, 0], [0, -2], [3, 2]]) {
    const a = new Float32Array(2 * H * W * C);
    a.set(image(2), H * W * C);
    const b = Float32Array.from(a);
    shiftImage(a, H * W * C, H, W, C, dy, dx);
    warpAffine(b, H * W * C, H, W, C, { ...identity, ty: dy, tx: dx }, scratch);
    for (let j = 0; j < a.length; j++) expect(b[j]).toBeCloseTo(a[j], 6);
  }
});

test('a quarter turn about the centre moves pixel (y, x) to (x, H − 1 − y)', () => {
  const a = image(3);
  const b = Float32Array.from(a);
  // Output (x', y') samples input A⁻¹(x', y'); for A = rotation by +90° (x, y) → (−y, x), A⁻¹ = [[0, 1], [−1, 0]].
  warpAffine(b, 0, H, W, C, { m: [0, 1, -1, 0], ty: 0, tx: 0 }, scratch);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++)
      for (let k = 0; k < C; k++) expect(b[(x * W + (W - 1 - y)) * C + k]).toBeCloseTo(a[(y * W + x) * C + k], 6);
});

test('draws stay in their ranges, and a seed repeats them', () => {
  const r = { rotate: 10, scale: 0.1, shear: 5, shift: 2 };
  const draws = (seed: number) => {
    const rng = new Rng(seed);
    return Array.from({ length: 200 }, () => drawAffine(r, rng));
  };
  const d = draws(5);
  expect(draws(5)).toEqual(d);
  expect(draws(6)).not.toEqual(d);
  for (const t of d) {
    expect(Math.abs(t.tx)).toBeLessThanOrEqual(2);
    expect(Math.abs(t.ty)).toBeLessThanOrEqual(2);
    // |det A⁻¹| = 1 / s² with s in [0.9, 1.1] (rotation and shear have determinant 1).
    const det = t.m[0] * t.m[3] - t.m[1] * t.m[2];
    expect(det).toBeGreaterThanOrEqual(1 / 1.1 ** 2 - 1e-9);
    expect(det).toBeLessThanOrEqual(1 / 0.9 ** 2 + 1e-9);
  }
  expect(isAffine({ rotate: 0, scale: 0, shear: 0, shift: 3 })).toBe(false);
  expect(isAffine(r)).toBe(true);
});

test('ranges outside their bounds are refused with a typed error', () => {
  const ok = { rotate: 10, scale: 0.1, shear: 5, shift: 2 };
  for (const bad of [{ rotate: -1 }, { rotate: 200 }, { scale: 1 }, { shear: NaN }, { shift: -1 }]) {
    expect(() => checkAffineRanges({ ...ok, ...bad })).toThrow(ArgumentError);
  }
  expect(() => checkAffineRanges(ok)).not.toThrow();
});
