/**
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, __metadata__: { string: string } }`
 * (padded with spaces to a multiple of 8 bytes), then the raw little-endian
 * tensor bytes. This is the format PyTorch's `safetensors` reads.
 *
 * Writes go to a temporary file in the same folder, are flushed (fsync) and
 * then renamed over the target, so a crash mid-save leaves the previous file
 * intact. Tensors are written from and read into their typed arrays in
 * chunks: no second full copy is held in memory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A checkpoint file that cannot be read: truncated, corrupted, or of another shape. */
export class CheckpointError extends Error {
  readonly code = 'ERR_MARGIN_SOFTMAX_CHECKPOINT';
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

export interface TensorEntry {
  dtype: 'F32' | 'I32';
  shape: number[];
  data: Float32Array | Int32Array | StreamedTensor;
}

/**
 * A tensor whose bytes are produced a bounded chunk at a time (centres held
 * on a device): `chunks()` yields them in order; each chunk is written before
 * the next is asked for, so one buffer may be reused.
 */
export interface StreamedTensor {
  byteLength: number;
  chunks(): Iterable<Uint8Array>;
}

const CHUNK = 64 * 1024 * 1024;
const MAX_HEADER = 100 * 1024 * 1024;

function bytesOf(a: Float32Array | Int32Array, begin: number, end: number): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset + begin, end - begin);
}

function* chunksOf(data: TensorEntry['data']): Iterable<Uint8Array> {
  if (!ArrayBuffer.isView(data)) {
    yield* data.chunks();
    return;
  }
  for (let b = 0; b < data.byteLength; b += CHUNK) yield bytesOf(data, b, Math.min(data.byteLength, b + CHUNK));
}

/** Test hook: called after each chunk written; throwing simulates a crash mid-save. */
export interface SaveHooks {
  afterChunk?: (bytesWritten: number) => void;
}

export function saveSafetensors(
  file: string,
  tensors: Record<string, TensorEntry>,
  metadata: Record<string, string>,
  hooks: SaveHooks = {},
): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const names = Object.keys(tensors);
  for (const name of names) {
    const t = tensors[name];
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n * 4 !== t.data.byteLength) throw new Error(`tensor ${name}: shape ${JSON.stringify(t.shape)} does not match ${t.data.byteLength} bytes`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  const fd = fs.openSync(tmp, 'w');
  let ok = false;
  try {
    let written = 0;
    written += fs.writeSync(fd, prefix);
    written += fs.writeSync(fd, headerBytes);
    for (const name of names) {
      for (const view of chunksOf(tensors[name].data)) {
        let done = 0;
        while (done < view.length) done += fs.writeSync(fd, view, done, view.length - done);
        written += view.length;
        hooks.afterChunk?.(written);
      }
    }
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(tmp, { force: true });
  }
  fs.renameSync(tmp, file);
  // Make the rename itself durable.
  try {
    const dfd = fs.openSync(dir, 'r');
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
  } catch {
    /* directories cannot be opened for fsync on every platform */
  }
}

export interface SafetensorsHeader {
  metadata: Record<string, string>;
  tensors: Record<string, { dtype: string; shape: number[]; begin: number; end: number }>;
  dataStart: number;
}

/** Reads and checks the header against the file size; throws CheckpointError naming the problem. */
export function readHeader(file: string): SafetensorsHeader {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw new CheckpointError(`Cannot open checkpoint ${file}: ${(err as Error).message}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new CheckpointError(`Not a safetensors file: ${file} is ${size} bytes, shorter than the 8-byte header length`);
    const prefix = Buffer.alloc(8);
    fs.readSync(fd, prefix, 0, 8, 0);
    const hlen = Number(prefix.readBigUInt64LE());
    if (hlen < 2 || hlen > MAX_HEADER || 8 + hlen > size) {
      throw new CheckpointError(`Not a safetensors file: ${file} declares a ${hlen}-byte header but the file is ${size} bytes`);
    }
    const hbuf = Buffer.alloc(hlen);
    fs.readSync(fd, hbuf, 0, hlen, 8);
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(hbuf.toString('utf8'));
    } catch {
      throw new CheckpointError(`Not a safetensors file: the header of ${file} is not valid JSON`);
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new CheckpointError(`Not a safetensors file: the header of ${file} is not a JSON object`);
    }
    const out: SafetensorsHeader = { metadata: {}, tensors: {}, dataStart: 8 + hlen };
    let maxEnd = 0;
    for (const [name, v] of Object.entries(parsed)) {
      if (name === '__metadata__') {
        out.metadata = (v ?? {}) as Record<string, string>;
        continue;
      }
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e?.dtype !== 'string' || !Array.isArray(e.shape) || !Array.isArray(e.data_offsets) || e.data_offsets.length !== 2) {
        throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' has no valid dtype, shape and data_offsets`);
      }
      const [begin, end] = e.data_offsets as number[];
      const shape = e.shape as number[];
      const width = e.dtype === 'F32' || e.dtype === 'I32' ? 4 : e.dtype === 'BF16' || e.dtype === 'F16' ? 2 : 0;
      const count = shape.reduce((a, b) => a * b, 1);
      if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < begin || (width && end - begin !== count * width)) {
        throw new CheckpointError(
          `Corrupted checkpoint ${file}: tensor '${name}' (${e.dtype} ${JSON.stringify(shape)}) has data_offsets [${begin}, ${end}] that do not match its shape`,
        );
      }
      maxEnd = Math.max(maxEnd, end);
      out.tensors[name] = { dtype: e.dtype, shape, begin, end };
    }
    if (out.dataStart + maxEnd !== size) {
      throw new CheckpointError(
        `Truncated or corrupted checkpoint ${file}: the header describes ${out.dataStart + maxEnd} bytes but the file has ${size}`,
      );
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads one F32/I32 tensor straight into `into` (which must have the right length). */
export function readTensor(file: string, header: SafetensorsHeader, name: string, into: Float32Array | Int32Array): void {
  readTensorChunks(file, header, name, into.byteLength, CHUNK, (b, e) => bytesOf(into, b, e));
}

/**
 * Reads one tensor of `byteLength` bytes in chunks of at most `chunkBytes`:
 * `view(begin, end)` gives the buffer for bytes [begin, end), and `done`, if
 * given, is called once it is filled (a device-resident destination copies
 * it on, reusing one bounded host buffer).
 */
export function readTensorChunks(
  file: string,
  header: SafetensorsHeader,
  name: string,
  byteLength: number,
  chunkBytes: number,
  view: (begin: number, end: number) => Uint8Array,
  done?: (begin: number, chunk: Uint8Array) => void,
): void {
  const t = header.tensors[name];
  if (!t) throw new CheckpointError(`Checkpoint ${file} has no tensor '${name}'`);
  if (t.end - t.begin !== byteLength) {
    throw new CheckpointError(`Checkpoint ${file}: tensor '${name}' has ${t.end - t.begin} bytes, expected ${byteLength}`);
  }
  const fd = fs.openSync(file, 'r');
  try {
    for (let b = 0; b < byteLength; b += chunkBytes) {
      const e = Math.min(byteLength, b + chunkBytes);
      const chunk = view(b, e);
      readRange(fd, file, name, header.dataStart + t.begin + b, chunk);
      done?.(b, chunk);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function readRange(fd: number, file: string, name: string, position: number, view: Uint8Array): void {
  let done = 0;
  while (done < view.length) {
    const n = fs.readSync(fd, view, done, view.length - done, position + done);
    if (n === 0) throw new CheckpointError(`Truncated checkpoint ${file} while reading '${name}'`);
    done += n;
  }
}
