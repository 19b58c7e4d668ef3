/**
 * Image decoding (PGM/PPM, PNG, JPEG: greyscale or colour), resizing and
 * normalisation to [−1, 1] for the backbone.
 */
import * as fs from 'fs';
import * as zlib from 'zlib';

export interface RawImage {
  width: number;
  height: number;
  /** 1 (grey) or 3 (RGB). */
  channels: number;
  /** Row-major, channels interleaved, 0…255. */
  data: Uint8Array;
}

export class ImageError extends Error {
  constructor(readonly file: string, message: string) {
    super(`Cannot read image ${file}: ${message}`);
    this.name = 'ImageError';
  }
}

/**
 * Default largest image, in pixels, that is decoded (4096 × 4096): far above
 * the training sizes (faces of ~100 × 100 to a few hundred pixels a side),
 * and it bounds the decoder's memory (≤ 64 MB RGBA) whatever a header claims.
 */
export const MAX_IMAGE_PIXELS = 4096 * 4096;

export interface DecodeOptions {
  /** Largest width × height decoded; larger images are refused from their header, before decoding. Default MAX_IMAGE_PIXELS. */
  maxPixels?: number;
}

export const IMAGE_EXTENSIONS = ['.pgm', '.pnm', '.ppm', '.png', '.jpg', '.jpeg'];

export function isImageFile(name: string): boolean {
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((e) => lower.endsWith(e));
}

/** Decodes by content (magic bytes), not by extension. */
export function decodeImage(buf: Uint8Array, file = '<buffer>', opts: DecodeOptions = {}): RawImage {
  const maxPixels = opts.maxPixels ?? MAX_IMAGE_PIXELS;
  if (buf.length < 4) throw new ImageError(file, `file too short (${buf.length} bytes)`);
  const checkSize = (width: number, height: number) => {
    if (!(width > 0 && height > 0)) throw new ImageError(file, `bad image size ${width}×${height}`);
    if (width * height > maxPixels) {
      throw new ImageError(file, `${width}×${height} = ${width * height} pixels is more than the ${maxPixels} allowed (maxPixels)`);
    }
  };
  try {
    if (buf[0] === 0x50 && buf[1] >= 0x31 && buf[1] <= 0x36) return decodePnm(buf, file, checkSize);
    if (buf[0] === 0x89 && buf[1] === 0x50 && buf[2] === 0x4e && buf[3] === 0x47) return decodePng(buf, file, checkSize);
    if (buf[0] === 0xff && buf[1] === 0xd8) return decodeJpeg(buf, file, checkSize, maxPixels);
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw new ImageError(file, (err as Error).message);
  }
  throw new ImageError(file, 'not a PGM/PPM, PNG or JPEG file (unknown signature)');
}

export function readImage(file: string, opts: DecodeOptions = {}): RawImage {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    throw new ImageError(file, (err as Error).message);
  }
  return decodeImage(buf, file, opts);
}

type SizeCheck = (width: number, height: number) => void;

// ---- PNM (P1–P6) ----------------------------------------------------------------

function decodePnm(buf: Uint8Array, file: string, checkSize: SizeCheck): RawImage {
  const kind = buf[1] - 0x30; // 1..6
  let pos = 2;
  const token = (): number => {
    for (;;) {
      while (pos < buf.length && isSpace(buf[pos])) pos++;
      if (buf[pos] === 0x23) {
        while (pos < buf.length && buf[pos] !== 0x0a && buf[pos] !== 0x0d) pos++;
        continue;
      }
      break;
    }
    const start = pos;
    while (pos < buf.length && buf[pos] >= 0x30 && buf[pos] <= 0x39) pos++;
    if (pos === start) throw new ImageError(file, `malformed PNM header at byte ${start}`);
    return Number(Buffer.from(buf.subarray(start, pos)).toString('ascii'));
  };
  if (kind === 1 || kind === 4) throw new ImageError(file, 'PBM bitmaps (P1/P4) are not supported');
  const width = token();
  const height = token();
  const maxval = token();
  if (!(width > 0 && height > 0)) throw new ImageError(file, `bad PNM size ${width}×${height}`);
  checkSize(width, height);
  if (!(maxval > 0 && maxval < 65536)) throw new ImageError(file, `bad PNM maxval ${maxval}`);
  const channels = kind === 3 || kind === 6 ? 3 : 1;
  const n = width * height * channels;
  const data = new Uint8Array(n);
  const scale = maxval === 255 ? 1 : 255 / maxval;
  if (kind === 5 || kind === 6) {
    pos++; // the single whitespace after maxval
    const bytes = maxval < 256 ? 1 : 2;
    if (buf.length < pos + n * bytes) throw new ImageError(file, `truncated: expected ${n * bytes} bytes of pixels after the header, found ${buf.length - pos}`);
    for (let i = 0; i < n; i++) {
      const v = bytes === 1 ? buf[pos + i] : (buf[pos + 2 * i] << 8) | buf[pos + 2 * i + 1];
      data[i] = Math.min(255, Math.round(v * scale));
    }
  } else {
    for (let i = 0; i < n; i++) {
      let v: number;
      try {
        v = token();
      } catch {
        throw new ImageError(file, `truncated: expected ${n} samples, found ${i}`);
      }
      data[i] = Math.min(255, Math.round(v * scale));
    }
  }
  return { width, height, channels, data };
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0b || c === 0x0c;
}

// ---- PNG, JPEG ---------------------------------------------------------------------

interface PngSync {
  sync: { read(buf: Buffer, opts?: object): { width: number; height: number; data: Buffer; colorType?: number; alpha?: boolean } };
}

/** Channels of each PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA). */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
/** Adam7 passes: x0, y0, dx, dy. */
const ADAM7 = [
  [0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2],
];

/**
 * Checks a PNG before decoding it: the size from IHDR (against maxPixels),
 * every chunk within the file, an IEND, and compressed data that inflates to
 * exactly the bytes the size needs (a truncated stream, or one holding fewer
 * rows than the header claims, would otherwise decode "fine").
 */
function checkPng(buf: Uint8Array, file: string, checkSize: SizeCheck): void {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 8;
  const idat: Uint8Array[] = [];
  let header: { width: number; height: number; bits: number; channels: number; interlace: number } | null = null;
  let ended = false;
  while (pos + 8 <= buf.length && !ended) {
    const len = view.getUint32(pos);
    const type = String.fromCharCode(buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]);
    if (pos + 12 + len > buf.length) throw new ImageError(file, `truncated: chunk ${type} of ${len} bytes at byte ${pos} runs past the end of the file (${buf.length} bytes)`);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (!header && type !== 'IHDR') throw new ImageError(file, 'corrupt PNG: the first chunk is not IHDR');
    if (type === 'IHDR') {
      if (len !== 13) throw new ImageError(file, 'corrupt PNG: IHDR is not 13 bytes');
      const width = view.getUint32(pos + 8);
      const height = view.getUint32(pos + 12);
      checkSize(width, height);
      const channels = PNG_CHANNELS[data[9]];
      if (!channels || ![1, 2, 4, 8, 16].includes(data[8])) throw new ImageError(file, `corrupt PNG: colour type ${data[9]} with bit depth ${data[8]}`);
      header = { width, height, bits: data[8] * channels, channels, interlace: data[12] };
    } else if (type === 'IDAT') {
      idat.push(data);
    } else if (type === 'IEND') {
      ended = true;
    }
    pos += 12 + len;
  }
  if (!header) throw new ImageError(file, 'truncated: no IHDR chunk');
  if (!ended) throw new ImageError(file, `truncated: no IEND chunk (the file ends at byte ${buf.length})`);
  const rowBytes = (w: number) => Math.ceil((w * header!.bits) / 8);
  const { width: W, height: H } = header;
  let expected = 0;
  if (header.interlace === 1) {
    for (const [x0, y0, dx, dy] of ADAM7) {
      const pw = Math.ceil((W - x0) / dx);
      const ph = Math.ceil((H - y0) / dy);
      if (pw > 0 && ph > 0) expected += ph * (1 + rowBytes(pw));
    }
  } else {
    expected = H * (1 + rowBytes(W));
  }
  let raw: Buffer;
  try {
    raw = zlib.inflateSync(Buffer.concat(idat), { maxOutputLength: expected + 1 });
  } catch (err) {
    throw new ImageError(file, `truncated or corrupt image data (${(err as Error).message})`);
  }
  if (raw.length !== expected) {
    throw new ImageError(file, `truncated: the image data holds ${raw.length} bytes where ${W}×${H} needs ${expected}${raw.length < expected ? ` (about ${Math.floor(raw.length / (1 + rowBytes(W)))} of ${H} rows)` : ''}`);
  }
}

function decodePng(buf: Uint8Array, file: string, checkSize: SizeCheck): RawImage {
  checkPng(buf, file, checkSize);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { PNG } = require('pngjs') as { PNG: PngSync };
  const png = PNG.sync.read(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
  const { width, height, data } = png; // RGBA, 8 bits (16-bit images are scaled down)
  // colorType 0 / 4: grey (+alpha).
  const grey = png.colorType === 0 || png.colorType === 4;
  const channels = grey ? 1 : 3;
  const out = new Uint8Array(width * height * channels);
  for (let i = 0, p = 0; i < width * height; i++, p += 4) {
    // Composite over white: transparent background reads as paper.
    const a = data[p + 3] / 255;
    if (grey) out[i] = Math.round(data[p] * a + 255 * (1 - a));
    else for (let c = 0; c < 3; c++) out[3 * i + c] = Math.round(data[p + c] * a + 255 * (1 - a));
  }
  return { width, height, channels, data: out };
}

/**
 * Checks a JPEG before decoding it: the frame size from its SOF marker
 * (against maxPixels), every segment within the file, and an EOI marker after
 * the scan data (jpeg-js fills a truncated scan in silently).
 */
function checkJpeg(buf: Uint8Array, file: string, checkSize: SizeCheck): void {
  let pos = 2;
  let sized = false;
  for (;;) {
    if (pos >= buf.length) throw new ImageError(file, `truncated: no EOI marker (the file ends at byte ${buf.length})`);
    if (buf[pos] !== 0xff) throw new ImageError(file, `corrupt JPEG: expected a marker at byte ${pos}`);
    while (pos < buf.length && buf[pos] === 0xff) pos++; // fill bytes
    if (pos >= buf.length) continue;
    const m = buf[pos++];
    if (m === 0xd9) break; // EOI
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd8)) continue; // no payload
    if (pos + 2 > buf.length) continue;
    const len = (buf[pos] << 8) | buf[pos + 1];
    if (len < 2 || pos + len > buf.length) throw new ImageError(file, `truncated: marker 0x${m.toString(16)} of ${len} bytes at byte ${pos - 2} runs past the end of the file`);
    const isSof = m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
    if (isSof) {
      if (len < 8) throw new ImageError(file, 'corrupt JPEG: short SOF segment');
      checkSize((buf[pos + 5] << 8) | buf[pos + 6], (buf[pos + 3] << 8) | buf[pos + 4]);
      sized = true;
    }
    pos += len;
    if (m === 0xda) {
      // Entropy-coded data: up to the next marker that is not a stuffed 0x00 or a restart.
      while (pos + 1 < buf.length && !(buf[pos] === 0xff && buf[pos + 1] !== 0x00 && !(buf[pos + 1] >= 0xd0 && buf[pos + 1] <= 0xd7))) pos++;
      if (pos + 1 >= buf.length) throw new ImageError(file, `truncated: the scan data runs to the end of the file with no EOI marker`);
    }
  }
  if (!sized) throw new ImageError(file, 'corrupt JPEG: no SOF marker (frame size)');
}

function decodeJpeg(buf: Uint8Array, file: string, checkSize: SizeCheck, maxPixels: number): RawImage {
  checkJpeg(buf, file, checkSize);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const jpeg = require('jpeg-js') as {
    decode(b: Uint8Array, o: object): { width: number; height: number; data: Uint8Array };
  };
  const img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 256, maxResolutionInMP: maxPixels / 1e6 });
  const { width, height, data } = img;
  let grey = true;
  for (let p = 0; p < data.length && grey; p += 4) if (data[p] !== data[p + 1] || data[p] !== data[p + 2]) grey = false;
  const channels = grey ? 1 : 3;
  const out = new Uint8Array(width * height * channels);
  for (let i = 0, p = 0; i < width * height; i++, p += 4) {
    if (grey) out[i] = data[p];
    else for (let c = 0; c < 3; c++) out[3 * i + c] = data[p + c];
  }
  return { width, height, channels, data: out };
}

// ---- Resize and normalise ------------------------------------------------------------

/**
 * Resamples to outH×outW with `channels` output channels (colour → grey by
 * ITU-R 601 luma, grey → colour by replication), antialiased (a triangle
 * filter widened by the downscale factor, as PIL's bilinear resize), and
 * maps 0…255 to [−1, 1]: (v − 127.5) / 127.5. Output is H×W×C row-major.
 */
export function toTensorData(img: RawImage, outH: number, outW: number, channels: number, out?: Float32Array, offset = 0): Float32Array {
  const { width: w, height: h } = img;
  const plane = new Float32Array(w * h * channels);
  const src = img.data;
  if (img.channels === channels) {
    for (let i = 0; i < plane.length; i++) plane[i] = src[i];
  } else if (img.channels === 3 && channels === 1) {
    for (let i = 0; i < w * h; i++) plane[i] = 0.299 * src[3 * i] + 0.587 * src[3 * i + 1] + 0.114 * src[3 * i + 2];
  } else if (img.channels === 1 && channels === 3) {
    for (let i = 0; i < w * h; i++) plane[3 * i] = plane[3 * i + 1] = plane[3 * i + 2] = src[i];
  } else {
    throw new Error(`cannot convert ${img.channels} channels to ${channels}`);
  }
  const dst = out ?? new Float32Array(outH * outW * channels);
  // Horizontal pass: h × outW × C, then vertical: outH × outW × C.
  const wx = weights(w, outW);
  const wy = weights(h, outH);
  const tmp = new Float32Array(h * outW * channels);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < outW; x++) {
      const { start, k } = wx[x];
      for (let c = 0; c < channels; c++) {
        let s = 0;
        for (let t = 0; t < k.length; t++) s += k[t] * plane[(y * w + start + t) * channels + c];
        tmp[(y * outW + x) * channels + c] = s;
      }
    }
  }
  for (let y = 0; y < outH; y++) {
    const { start, k } = wy[y];
    for (let x = 0; x < outW; x++) {
      for (let c = 0; c < channels; c++) {
        let s = 0;
        for (let t = 0; t < k.length; t++) s += k[t] * tmp[((start + t) * outW + x) * channels + c];
        dst[offset + (y * outW + x) * channels + c] = s / 127.5 - 1;
      }
    }
  }
  return dst;
}

interface Taps {
  start: number;
  k: Float32Array;
}

const weightCache = new Map<string, Taps[]>();

/** Triangle-filter taps for resampling n → m samples (normalised to sum 1). */
function weights(n: number, m: number): Taps[] {
  const key = `${n}:${m}`;
  const hit = weightCache.get(key);
  if (hit) return hit;
  const scale = n / m;
  const support = Math.max(1, scale);
  const taps: Taps[] = [];
  for (let i = 0; i < m; i++) {
    const centre = (i + 0.5) * scale;
    const lo = Math.max(0, Math.floor(centre - support));
    const hi = Math.min(n - 1, Math.ceil(centre + support));
    const k: number[] = [];
    let sum = 0;
    for (let j = lo; j <= hi; j++) {
      const v = Math.max(0, 1 - Math.abs(j + 0.5 - centre) / support);
      k.push(v);
      sum += v;
    }
    // Trim zero taps at both ends.
    let a = 0;
    let b = k.length - 1;
    while (a < b && k[a] === 0) a++;
    while (b > a && k[b] === 0) b--;
    const kk = new Float32Array(k.slice(a, b + 1).map((v) => v / sum));
    taps.push({ start: lo + a, k: kk });
  }
  weightCache.set(key, taps);
  return taps;
}

/** Mirrors an H×W×C image left–right in place (horizontal-flip augmentation). */
export function flipHorizontal(data: Float32Array, offset: number, h: number, w: number, c: number): void {
  for (let y = 0; y < h; y++) {
    const row = offset + y * w * c;
    for (let x = 0; x < w >> 1; x++) {
      const a = row + x * c;
      const b = row + (w - 1 - x) * c;
      for (let k = 0; k < c; k++) {
        const t = data[a + k];
        data[a + k] = data[b + k];
        data[b + k] = t;
      }
    }
  }
}

/**
 * Translates an H×W×C image in place by (dy, dx) pixels (augmentation);
 * the uncovered border repeats the nearest edge pixel.
 */
export function shiftImage(data: Float32Array, offset: number, h: number, w: number, c: number, dy: number, dx: number): void {
  if (!dy && !dx) return;
  const src = data.slice(offset, offset + h * w * c);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(h - 1, Math.max(0, y - dy));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(w - 1, Math.max(0, x - dx));
      const d = offset + (y * w + x) * c;
      const s0 = (sy * w + sx) * c;
      for (let k = 0; k < c; k++) data[d + k] = src[s0 + k];
    }
  }
}
