/**
 * Random photometric augmentation (../src/data/photometric): each of the
 * three changes alone against its closed form (contrast scales deviations
 * from the image's mean, brightness adds one offset, the lighting ramp adds
 * a plane through zero at the centre), results clamped to [−1, 1], four
 * draws per image from the caller's RNG, and bad ranges refused.
 */
import { expect, test } from 'vitest';
import { ArgumentError } from 'margin-softmax';
import { checkPhotometricRanges, isPhotometric, jitterPhotometric, type PhotometricRanges } from '../src/data/photometric';
import { Rng } from '../src/data/rng';

const H = 6;
const W = 9;
const C = 1;
const SIZE = H * W * C;
/** Values in [−0.5, 0.5): no change below reaches the clamp. */
function image(seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: SIZE }, () => rng.next() - 0.5);
}
const none: PhotometricRanges = { contrast: 0, brightness: 0, ramp: 0 };
const meanOf = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0) / a.length;

test('contrast alone scales every deviation from the mean by one factor in its range', () => {
  for (let seed = 0; seed < 20; seed++) {
    const a = image(seed);
    const b = Float32Array.from(a);
    jitterPhotometric(b, 0, H, W, C, { ...none, contrast: 0.3 }, new Rng(100 + seed));
    const m = meanOf(a);
    const factor = (b[0] - m) / (a[0] - m);
    expect(factor).toBeGreaterThanOrEqual(0.7 - 1e-5);
    expect(factor).toBeLessThanOrEqual(1.3 + 1e-5);
    for (let k = 0; k < SIZE; k++) expect(b[k] - m).toBeCloseTo(factor * (a[k] - m), 5);
  }
});

test('brightness alone adds one offset within ±2·brightness on the [−1, 1] scale', () => {
  const offsets: number[] = [];
  for (let seed = 0; seed < 40; seed++) {
    const a = image(seed);
    const b = Float32Array.from(a);
    jitterPhotometric(b, 0, H, W, C, { ...none, brightness: 0.2 }, new Rng(200 + seed));
    const d = b[0] - a[0];
    for (let k = 0; k < SIZE; k++) expect(b[k] - a[k]).toBeCloseTo(d, 5);
    expect(Math.abs(d)).toBeLessThanOrEqual(0.4 + 1e-6);
    offsets.push(d);
  }
  // Both signs are drawn.
  expect(Math.min(...offsets)).toBeLessThan(0);
  expect(Math.max(...offsets)).toBeGreaterThan(0);
});

test('the lighting ramp alone adds a plane that is zero at the centre and within ±2·ramp', () => {
  for (let seed = 0; seed < 20; seed++) {
    const a = image(seed);
    const b = Float32Array.from(a);
    jitterPhotometric(b, 0, H, W, C, { ...none, ramp: 0.25 }, new Rng(300 + seed));
    const d = (y: number, x: number) => b[y * W + x] - a[y * W + x];
    // A plane: equal steps along each axis.
    for (let y = 0; y < H; y++) for (let x = 1; x < W; x++) expect(d(y, x) - d(y, x - 1)).toBeCloseTo(d(0, 1) - d(0, 0), 5);
    for (let y = 1; y < H; y++) for (let x = 0; x < W; x++) expect(d(y, x) - d(y - 1, x)).toBeCloseTo(d(1, 0) - d(0, 0), 5);
    // Point-symmetric about the centre, so its mean is zero; its extremes at the corners.
    expect(d(0, 0) + d(H - 1, W - 1)).toBeCloseTo(0, 5);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) expect(Math.abs(d(y, x))).toBeLessThanOrEqual(0.5 + 1e-5);
  }
});

test('results are clamped to [−1, 1], at an offset into a batch, leaving the other images alone', () => {
  const batch = new Float32Array(3 * SIZE).fill(0.9);
  for (let k = 0; k < SIZE; k++) batch[SIZE + k] = k % 2 ? 0.95 : -0.95;
  const before = Float32Array.from(batch);
  const rng = new Rng(7);
  for (let i = 0; i < 200; i++) {
    const img = Float32Array.from(before.subarray(SIZE, 2 * SIZE));
    batch.set(img, SIZE);
    jitterPhotometric(batch, SIZE, H, W, C, { contrast: 0.9, brightness: 1, ramp: 1 }, rng);
    for (let k = SIZE; k < 2 * SIZE; k++) {
      expect(batch[k]).toBeGreaterThanOrEqual(-1);
      expect(batch[k]).toBeLessThanOrEqual(1);
    }
  }
  expect(batch.subarray(0, SIZE)).toEqual(before.subarray(0, SIZE));
  expect(batch.subarray(2 * SIZE)).toEqual(before.subarray(2 * SIZE));
});

test('each image takes four draws from the RNG, so a seed repeats the batch', () => {
  const r = { contrast: 0.2, brightness: 0.1, ramp: 0.1 };
  const a = image(1);
  const b = Float32Array.from(a);
  const c = Float32Array.from(a);
  const rb = new Rng(5);
  const rc = new Rng(5);
  jitterPhotometric(b, 0, H, W, C, r, rb);
  jitterPhotometric(c, 0, H, W, C, r, rc);
  expect(b).toEqual(c);
  const rd = new Rng(5);
  for (let i = 0; i < 4; i++) rd.next();
  expect(rb.state).toBe(rd.state);
});

test('zero ranges change nothing; ranges outside their bounds are refused with a typed error', () => {
  expect(isPhotometric(none)).toBe(false);
  expect(isPhotometric({ ...none, ramp: 0.1 })).toBe(true);
  const ok = { contrast: 0.3, brightness: 0.2, ramp: 0.3 };
  for (const bad of [{ contrast: -0.1 }, { contrast: 1 }, { brightness: 1.5 }, { ramp: NaN }, { brightness: -1 }]) {
    expect(() => checkPhotometricRanges({ ...ok, ...bad })).toThrow(ArgumentError);
  }
  expect(() => checkPhotometricRanges(ok)).not.toThrow();
});
