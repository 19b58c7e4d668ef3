/**
 * The data loader: PGM / PNG / JPEG decoding on real files from ../shared/data,
 * resizing and normalisation, ImageFolder scanning and its errors, the
 * identity-disjoint split, and the embedded MNIST default.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { DataError, loadBatch, mnistSource, scanImageFolder, splitByIdentity, subset } from '../src/data/datasets';
import { decodeImage, flipHorizontal, ImageError, readImage, toTensorData } from '../src/data/images';

const DATA = path.resolve(__dirname, '..', '..', '..', 'shared', 'data');
const ORL = path.join(DATA, 'orl_faces');
const OMNIGLOT = path.join(DATA, 'omniglot_background');
const haveOrl = fs.existsSync(ORL);
const haveOmniglot = fs.existsSync(OMNIGLOT);
if (!haveOrl) console.warn(`skipping the ORL cases: ${ORL} not found`);
if (!haveOmniglot) console.warn(`skipping the Omniglot cases: ${OMNIGLOT} not found`);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-data-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!haveOrl)('ORL faces (PGM)', () => {
  test('decodes a binary P5 file: size, grey, pixels equal the raw bytes after the header', () => {
    const file = path.join(ORL, 's1', '1.pgm');
    const raw = fs.readFileSync(file);
    const img = readImage(file);
    expect([img.width, img.height, img.channels]).toEqual([92, 112, 1]);
    // Header "P5\n92 112\n255\n" = 14 bytes; the pixels follow.
    expect(raw.subarray(0, 14).toString('ascii')).toBe('P5\n92 112\n255\n');
    expect(Array.from(img.data.subarray(0, 64))).toEqual(Array.from(raw.subarray(14, 14 + 64)));
    expect(img.data[img.data.length - 1]).toBe(raw[raw.length - 1]);
  });

  test('the same image as ASCII P2 and as JPEG decodes to (nearly) the same pixels', () => {
    const img = readImage(path.join(ORL, 's2', '3.pgm'));
    const p2 = `P2\n# written by the test\n${img.width} ${img.height}\n255\n${Array.from(img.data).join(' ')}\n`;
    const fromP2 = decodeImage(Buffer.from(p2, 'ascii'), 'p2');
    expect(fromP2.data).toEqual(img.data);

    // A real JPEG file, encoded from the face with jpeg-js (grey: R = G = B).
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const jpeg = require('jpeg-js');
    const rgba = Buffer.alloc(img.width * img.height * 4);
    for (let i = 0; i < img.width * img.height; i++) rgba.fill(img.data[i], 4 * i, 4 * i + 3), (rgba[4 * i + 3] = 255);
    const file = path.join(tmp, 'face.jpg');
    fs.writeFileSync(file, jpeg.encode({ data: rgba, width: img.width, height: img.height }, 95).data);
    const fromJpeg = readImage(file);
    expect([fromJpeg.width, fromJpeg.height, fromJpeg.channels]).toEqual([92, 112, 1]);
    let err = 0;
    for (let i = 0; i < img.data.length; i++) err += Math.abs(fromJpeg.data[i] - img.data[i]);
    expect(err / img.data.length).toBeLessThan(3);
  });

  test('scan: 40 identities × 10 images; the split is identity-disjoint and seeded', () => {
    const src = scanImageFolder(ORL);
    expect(src.classes.length).toBe(40);
    expect(src.samples.length).toBe(400);
    const a = splitByIdentity(src, { fraction: 0.25 }, 0);
    expect(a.valClasses.length).toBe(10);
    expect(a.trainClasses.length).toBe(30);
    expect(a.trainClasses.filter((c) => a.valClasses.includes(c))).toEqual([]);
    expect(new Set([...a.trainClasses, ...a.valClasses]).size).toBe(40);
    expect(splitByIdentity(src, { fraction: 0.25 }, 0)).toEqual(a);
    expect(splitByIdentity(src, { fraction: 0.25 }, 1).valClasses).not.toEqual(a.valClasses);
    // Relabelled subsets: no held-out image is among the training samples.
    const tr = subset(src, a.trainClasses);
    const va = subset(src, a.valClasses);
    expect(tr.length).toBe(300);
    expect(va.length).toBe(100);
    const trFiles = new Set(tr.map((s) => path.dirname(s.ref)));
    for (const s of va) expect(trFiles.has(path.dirname(s.ref))).toBe(false);
    expect(Math.max(...tr.map((s) => s.label))).toBe(29);
    expect(() => splitByIdentity(src, { count: 39 }, 0)).toThrow(/Cannot hold out 39 of 40/);
  });

  test('a batch is resized and normalised to [-1, 1]', () => {
    const src = scanImageFolder(ORL);
    const b = loadBatch(src, src.samples.slice(0, 3), { height: 40, width: 32, channels: 1 }, 'stop');
    expect(b.data.length).toBe(3 * 40 * 32);
    expect(Array.from(b.labels)).toEqual([0, 0, 0]);
    expect(Math.min(...b.data)).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...b.data)).toBeLessThanOrEqual(1);
    // Mean brightness is preserved by the area-weighted resize.
    const img = readImage(src.samples[0].ref);
    const mean = img.data.reduce((a, v) => a + v, 0) / img.data.length / 127.5 - 1;
    const got = b.data.subarray(0, 40 * 32).reduce((a, v) => a + v, 0) / (40 * 32);
    expect(Math.abs(got - mean)).toBeLessThan(0.02);
  });
});

describe.skipIf(!haveOmniglot)('Omniglot (PNG, nested folders)', () => {
  test('decodes a PNG: 105×105 greyscale, white paper with dark strokes', () => {
    const src = scanImageFolder(OMNIGLOT);
    const img = readImage(src.samples[0].ref);
    expect([img.width, img.height, img.channels]).toEqual([105, 105, 1]);
    const dark = img.data.filter((v) => v < 128).length;
    expect(dark).toBeGreaterThan(20);
    expect(dark).toBeLessThan(105 * 105 * 0.5);
    expect(img.data[0]).toBe(255);
  });
  test('classes are the nested alphabet/character folders', () => {
    const src = scanImageFolder(OMNIGLOT);
    expect(src.classes.length).toBe(242);
    expect(src.samples.length).toBe(4840);
    expect(src.classes).toContain('Greek/character01');
    expect(src.classes.every((c) => c.includes('/'))).toBe(true);
  });
});

describe('decoding, resizing and errors on made-up files', () => {
  test('colour PPM → grey by luma; grey → 3 channels by replication', () => {
    const ppm = Buffer.concat([Buffer.from('P6\n2 1\n255\n'), Buffer.from([255, 0, 0, 0, 0, 255])]);
    const img = decodeImage(ppm, 'x.ppm');
    expect(img.channels).toBe(3);
    const grey = toTensorData(img, 1, 2, 1);
    expect(grey[0]).toBeCloseTo((0.299 * 255) / 127.5 - 1, 5);
    expect(grey[1]).toBeCloseTo((0.114 * 255) / 127.5 - 1, 5);
    const rgb = toTensorData({ width: 1, height: 1, channels: 1, data: Uint8Array.from([255]) }, 2, 2, 3);
    expect(Array.from(rgb)).toEqual(new Array(12).fill(1));
  });

  test('resize: constants stay constant; a fine checkerboard averages to grey (antialiased)', () => {
    const c = toTensorData({ width: 50, height: 30, channels: 1, data: new Uint8Array(1500).fill(0) }, 7, 9, 1);
    expect(Array.from(c).every((v) => v === -1)).toBe(true);
    const board = new Uint8Array(64 * 64).map((_, i) => ((i % 64) + Math.floor(i / 64)) % 2 ? 255 : 0);
    const small = toTensorData({ width: 64, height: 64, channels: 1, data: board }, 8, 8, 1);
    for (const v of small) expect(Math.abs(v)).toBeLessThan(0.05);
  });

  test('flipHorizontal mirrors rows and is its own inverse', () => {
    const a = Float32Array.from([1, 2, 3, 4, 5, 6]); // 2 rows × 3 columns
    flipHorizontal(a, 0, 2, 3, 1);
    expect(Array.from(a)).toEqual([3, 2, 1, 6, 5, 4]);
    flipHorizontal(a, 0, 2, 3, 1);
    expect(Array.from(a)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test('missing folder, empty class, unreadable image (named), skip policy', () => {
    expect(() => scanImageFolder(path.join(tmp, 'nope'))).toThrow(DataError);
    expect(() => scanImageFolder(path.join(tmp, 'nope'))).toThrow(/not found/);
    const root = path.join(tmp, 'set');
    fs.mkdirSync(path.join(root, 'alice'), { recursive: true });
    fs.mkdirSync(path.join(root, 'bob'), { recursive: true });
    const pgm = Buffer.concat([Buffer.from('P5\n2 2\n255\n'), Buffer.from([0, 64, 128, 255])]);
    fs.writeFileSync(path.join(root, 'alice', 'a.pgm'), pgm);
    expect(() => scanImageFolder(root)).toThrow(/Empty class: .*bob/);
    fs.writeFileSync(path.join(root, 'bob', 'b.pgm'), pgm);
    fs.writeFileSync(path.join(root, 'bob', 'broken.png'), Buffer.from('not a png at all'));
    const src = scanImageFolder(root);
    expect(src.classes).toEqual(['alice', 'bob']);
    expect(() => readImage(path.join(root, 'bob', 'broken.png'))).toThrow(ImageError);
    expect(() => loadBatch(src, src.samples, { height: 4, width: 4, channels: 1 }, 'stop')).toThrow(/broken\.png/);
    const warnings: string[] = [];
    const b = loadBatch(src, src.samples, { height: 4, width: 4, channels: 1 }, 'skip', (m) => warnings.push(m));
    expect(b.labels.length).toBe(2);
    expect(b.skipped.map((s) => path.basename(s.ref))).toEqual(['broken.png']);
    expect(warnings.join('\n')).toMatch(/broken\.png/);
    // A truncated PGM names the file too.
    fs.writeFileSync(path.join(root, 'bob', 'short.pgm'), Buffer.from('P5\n4 4\n255\n\x00\x01'));
    expect(() => readImage(path.join(root, 'bob', 'short.pgm'))).toThrow(/short\.pgm.*truncated/);
  });
});

describe('the embedded default: MNIST digits as identities', () => {
  test('training digits from the training file, held-out digits 7, 8, 9 from the test file', () => {
    const src = mnistSource({ perClass: 20, evalPerClass: 10 });
    const split = splitByIdentity(src, {}, 0);
    expect(split.valClasses).toEqual(['7', '8', '9']);
    expect(split.trainClasses).toEqual(['0', '1', '2', '3', '4', '5', '6']);
    expect(subset(src, split.trainClasses).length).toBe(7 * 20);
    expect(subset(src, split.valClasses).length).toBe(3 * 10);
    for (const s of src.samples) expect(s.ref.startsWith(s.label >= 7 ? 'mnist:t10k:' : 'mnist:train:')).toBe(true);
    const img = src.read(src.samples[0]);
    expect([img.width, img.height, img.channels]).toEqual([28, 28, 1]);
    // Inverted to dark strokes on white: the corners are white.
    expect(img.data[0]).toBe(255);
    expect(img.data.filter((v) => v < 128).length).toBeGreaterThan(30);
  });
});
