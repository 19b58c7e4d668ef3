/**
 * The decoded-image cache (../src/decoded-cache): the same bits as
 * loadBatch, each image decoded once, nothing cached past the budget, and an
 * unreadable image skipped (policy 'skip') or stopping the run ('stop') each
 * time it is met, never cached.
 */
import { expect, test } from 'vitest';
import { DataError, loadBatch, mnistSource, type DataSource, type Sample } from '../src/data/datasets';
import { DecodedCache } from '../src/data/decoded-cache';
import { ImageError } from '../src/data/images';

const shape = { height: 12, width: 12, channels: 1 };

/** The embedded MNIST digits, counting reads; `bad` refs throw ImageError. */
function counting(bad = new Set<string>()): { src: DataSource; reads: Map<string, number> } {
  const base = mnistSource({ perClass: 3, evalPerClass: 1 });
  const reads = new Map<string, number>();
  const src: DataSource = {
    ...base,
    read: (s: Sample) => {
      reads.set(s.ref, (reads.get(s.ref) ?? 0) + 1);
      if (bad.has(s.ref)) throw new ImageError(s.ref, 'not an image');
      return base.read(s);
    },
  };
  return { src, reads };
}

test('a cached batch has loadBatch’s bits and labels, and each image is decoded once', () => {
  const { src, reads } = counting();
  const rows = src.samples.slice(0, 10);
  const cache = new DecodedCache(src, shape);
  const want = loadBatch(src, rows, shape, 'stop');
  reads.clear();
  const first = cache.load(rows, 'stop');
  const again = cache.load(rows.slice().reverse(), 'stop');
  expect(first.data).toEqual(want.data);
  expect(first.labels).toEqual(want.labels);
  expect([...reads.values()]).toEqual(rows.map(() => 1));
  const reversed = loadBatch(src, rows.slice().reverse(), shape, 'stop');
  expect(again.data).toEqual(reversed.data);
  expect(again.labels).toEqual(reversed.labels);
  expect(cache.cachedImages).toBe(10);
});

test('past the memory budget images are read from disk again (same bits)', () => {
  const { src, reads } = counting();
  const rows = src.samples.slice(0, 6);
  const cache = new DecodedCache(src, shape, 4 * 12 * 12 * 2); // two images
  cache.load(rows, 'stop');
  const b = cache.load(rows, 'stop');
  expect(b.data).toEqual(loadBatch(src, rows, shape, 'stop').data);
  expect(cache.cachedImages).toBe(2);
  expect(reads.get(rows[0].ref)).toBe(2); // the cache read, loadBatch above read again
  expect(reads.get(rows[5].ref)).toBe(3);
});

test('an unreadable image is skipped with a warning each time (skip) or stops the run (stop), never cached', () => {
  const base = mnistSource({ perClass: 3, evalPerClass: 1 });
  const badRef = base.samples[2].ref;
  const { src, reads } = counting(new Set([badRef]));
  const rows = src.samples.slice(0, 5);
  const cache = new DecodedCache(src, shape);
  const warnings: string[] = [];
  for (let k = 0; k < 2; k++) {
    const b = cache.load(rows, 'skip', (m) => warnings.push(m));
    expect(b.labels.length).toBe(4);
    expect(b.skipped.map((s) => s.ref)).toEqual([badRef]);
    expect(b.data).toEqual(loadBatch(src, rows.filter((s) => s.ref !== badRef), shape, 'stop').data);
  }
  expect(warnings.length).toBe(2);
  expect(() => cache.load(rows, 'stop')).toThrow(DataError);
  expect(reads.get(badRef)).toBe(3);
  expect(cache.cachedImages).toBe(4);
});
