/**
 * The training app's inputs: images whose headers claim huge sizes or whose
 * data is cut short, symbolic links in the data folder, and a verification
 * with no genuine pair.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { afterAll, describe, expect, test } from 'vitest';
import { DataError, scanImageFolder } from '../src/data/datasets';
import { decodeImage, ImageError, MAX_IMAGE_PIXELS } from '../src/data/images';
import { l2normalize, verify } from '../src/eval/protocol';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { PNG } = require('pngjs');
// eslint-disable-next-line @typescript-eslint/no-var-requires
const jpeg = require('jpeg-js');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-rel-train-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function chunk(type: string, data: Uint8Array): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32 ? zlib.crc32(body) : 0);
  return Buffer.concat([len, body, crc]);
}

/** A greyscale 8-bit PNG whose header says width×height but whose data holds `rows` rows. */
function craftedPng(width: number, height: number, rows: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // grey
  const raw = Buffer.alloc(rows * (1 + width), 0x80);
  for (let r = 0; r < rows; r++) raw[r * (1 + width)] = 0; // filter type 0
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', new Uint8Array(0))]);
}

function realPng(w = 20, h = 12): Buffer {
  const png = new PNG({ width: w, height: h });
  for (let i = 0; i < w * h * 4; i++) png.data[i] = i % 4 === 3 ? 255 : (i * 7) % 256;
  return PNG.sync.write(png);
}

function realJpeg(w = 24, h = 16): Buffer {
  const data = Buffer.alloc(w * h * 4);
  for (let i = 0; i < data.length; i++) data[i] = i % 4 === 3 ? 255 : (i * 13) % 256;
  return jpeg.encode({ width: w, height: h, data }, 90).data;
}

function imageError(buf: Uint8Array, opts = {}): string {
  try {
    decodeImage(buf, 'x.img', opts);
  } catch (e) {
    expect(e).toBeInstanceOf(ImageError);
    return (e as Error).message;
  }
  throw new Error('expected an ImageError');
}

describe('image sizes are capped from the header, before decoding', () => {
  test('a few-hundred-byte PNG claiming 30000 × 30000 is refused without decoding', () => {
    const png = craftedPng(30000, 30000, 1);
    expect(png.length).toBeLessThan(1000);
    expect(imageError(png)).toMatch(/30000×30000 = 900000000 pixels is more than the 16777216 allowed \(maxPixels\)/);
    expect(MAX_IMAGE_PIXELS).toBe(4096 * 4096);
  });

  test('a PNG claiming 8000² with 10 rows of data: over the cap; under a raised cap, the truncation is detected', () => {
    const png = craftedPng(8000, 8000, 10);
    expect(imageError(png)).toMatch(/more than the 16777216 allowed/);
    expect(imageError(png, { maxPixels: 8000 * 8000 })).toMatch(/truncated: the image data holds 80010 bytes where 8000×8000 needs 64008000 \(about 10 of 8000 rows\)/);
  });

  test('a PNG cut short is detected; the whole file decodes', () => {
    const png = realPng();
    expect(decodeImage(png).width).toBe(20);
    expect(imageError(png.subarray(0, png.length - 20))).toMatch(/^Cannot read image x.img: truncated/);
    expect(imageError(craftedPng(64, 64, 63))).toMatch(/truncated: the image data holds 4095 bytes where 64×64 needs 4160/);
  });

  test('a JPEG claiming 30000 × 30000 is refused from its SOF marker; a cut JPEG is detected', () => {
    const jpg = Buffer.from(realJpeg());
    expect(decodeImage(jpg).width).toBe(24);
    // Patch the frame size in SOF0.
    const sof = jpg.indexOf(Buffer.from([0xff, 0xc0]));
    expect(sof).toBeGreaterThan(0);
    const big = Buffer.from(jpg);
    big.writeUInt16BE(30000, sof + 5);
    big.writeUInt16BE(30000, sof + 7);
    expect(imageError(big)).toMatch(/30000×30000 = 900000000 pixels is more than/);
    expect(imageError(jpg.subarray(0, jpg.length - 40))).toMatch(/truncated: the scan data runs to the end of the file with no EOI marker/);
  });

  test('a PGM claiming more pixels than the cap is refused', () => {
    expect(imageError(Buffer.from('P5\n30000 30000\n255\n\0\0\0\0'))).toMatch(/more than the 16777216 allowed/);
  });
});

describe('symbolic links in the data folder', () => {
  test('linked images and linked class folders are followed', () => {
    const root = fs.mkdtempSync(path.join(dir, 'data-'));
    const store = fs.mkdtempSync(path.join(dir, 'store-'));
    fs.writeFileSync(path.join(store, 'a.png'), realPng());
    fs.writeFileSync(path.join(store, 'b.png'), realPng());
    fs.mkdirSync(path.join(root, 'alice'));
    fs.symlinkSync(path.join(store, 'a.png'), path.join(root, 'alice', '1.png'));
    fs.symlinkSync(path.join(store, 'b.png'), path.join(root, 'alice', '2.png'));
    const bobStore = fs.mkdtempSync(path.join(dir, 'bob-'));
    fs.writeFileSync(path.join(bobStore, '1.png'), realPng());
    fs.symlinkSync(bobStore, path.join(root, 'bob'));
    const src = scanImageFolder(root);
    expect(src.classes).toEqual(['alice', 'bob']);
    expect(src.samples.map((s) => s.label)).toEqual([0, 0, 1]);
    expect(src.read(src.samples[2]).width).toBe(20);
  });

  test('a dangling link and a link loop are clear errors, not "Empty class"', () => {
    const root = fs.mkdtempSync(path.join(dir, 'data-'));
    fs.mkdirSync(path.join(root, 'carol'));
    fs.symlinkSync(path.join(root, 'nowhere.png'), path.join(root, 'carol', '1.png'));
    expect(() => scanImageFolder(root)).toThrow(/Broken symbolic link in the data folder: .*carol\/1.png \(ENOENT\)/);
    const loop = fs.mkdtempSync(path.join(dir, 'loop-'));
    fs.mkdirSync(path.join(loop, 'dave'));
    fs.writeFileSync(path.join(loop, 'dave', '1.png'), realPng());
    fs.symlinkSync(loop, path.join(loop, 'dave', 'up'));
    expect(() => scanImageFolder(loop)).toThrow(DataError);
    expect(() => scanImageFolder(loop)).toThrow(/Symbolic link loop or duplicate folder/);
  });
});

describe('verification with no genuine pair', () => {
  test('one image per held-out identity is an error, not "accuracy 0.00 %"', () => {
    const dim = 4;
    const emb = l2normalize(Float32Array.from({ length: 5 * dim }, (_, i) => Math.sin(i + 1)), dim);
    expect(() => verify(emb, dim, Int32Array.from([0, 1, 2, 3, 4]))).toThrow(DataError);
    expect(() => verify(emb, dim, Int32Array.from([0, 1, 2, 3, 4]))).toThrow(/Verification needs genuine pairs .* the 5 held-out identities have one image each/);
    // One identity with two images is enough.
    expect(verify(emb, dim, Int32Array.from([0, 0, 1, 2, 3])).genuinePairs).toBe(1);
  });
});
