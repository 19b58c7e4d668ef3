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

/** Whether a process with this id runs now (an id we may not signal counts as alive). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temporaries of earlier saves in `dir` whose name matches
 * `pattern` (group 1: the writer's pid) and whose writer is dead or is this
 * process (saves are synchronous here, so none of ours is in progress). A
 * temporary of a live process is another save in progress: left alone.
 */
export function removeStaleTemporaries(dir: string, pattern: RegExp): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = pattern.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && processAlive(pid)) continue;
    fs.rmSync(path.join(dir, name), { recursive: true, force: true });
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** A save that failed: the message names the target file, not the temporary. */
function saveError(file: string, err: unknown): CheckpointError {
  // Node's message ends with ", <syscall> '<temporary path>'": keep the reason only.
  const reason = (err as Error).message.replace(/, \w+ '[^']*'( -> '[^']*')?$/, '');
  return new CheckpointError(`Cannot save checkpoint ${file}: ${reason}`);
}

/**
 * Writes `tensors` (in this order) and `metadata` as one safetensors file,
 * atomically: a temporary beside it, flushed, then renamed over it.
 */
export function saveSafetensors(
  file: string,
  tensors: Record<string, TensorEntry>,
  metadata: Record<string, string>,
  hooks: SaveHooks = {},
): void {
  checkSaveTarget(file);
  const header = encodeHeader(tensors, metadata);
  const dir = path.dirname(path.resolve(file));
  const base = path.basename(file);
  // Temporaries are `.<name>.<pid>.<time>.tmp`: the pid says whether their writer still runs.
  removeStaleTemporaries(dir, new RegExp(`^\\.${escapeRegExp(base)}\\.(\\d+)\\.\\d+\\.tmp$`));
  const tmp = path.join(dir, `.${base}.${process.pid}.${Date.now()}.tmp`);
  writeTemporary(file, tmp, header, tensors, hooks);
  renameDurably(file, tmp, dir);
}

/** A save target must be a file path, not a folder. */
function checkSaveTarget(file: string): void {
  if (typeof file !== 'string' || file === '' || file.endsWith('/') || file.endsWith(path.sep)) {
    throw new CheckpointError(`Cannot save checkpoint ${JSON.stringify(file)}: expected a file path`);
  }
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
    throw new CheckpointError(`Cannot save checkpoint ${file}: it is a directory`);
  }
}

/** The 8-byte header length and the JSON header, padded with spaces to a multiple of 8 bytes. */
function encodeHeader(tensors: Record<string, TensorEntry>, metadata: Record<string, string>): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
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
  return Buffer.concat([prefix, headerBytes]);
}

/** Writes the header and the tensors' bytes to `tmp` and flushes it; removes it on failure. */
function writeTemporary(file: string, tmp: string, header: Buffer, tensors: Record<string, TensorEntry>, hooks: SaveHooks): void {
  let fd: number;
  try {
    fd = fs.openSync(tmp, 'w');
  } catch (err) {
    throw saveError(file, err);
  }
  let ok = false;
  try {
    let written = fs.writeSync(fd, header);
    for (const t of Object.values(tensors)) {
      for (const view of chunksOf(t.data)) {
        let done = 0;
        while (done < view.length) done += fs.writeSync(fd, view, done, view.length - done);
        written += view.length;
        hooks.afterChunk?.(written);
      }
    }
    fs.fsyncSync(fd);
    ok = true;
  } catch (err) {
    // A write error names the target; anything else (a test hook) passes as it is.
    throw (err as NodeJS.ErrnoException).code ? saveError(file, err) : err;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(tmp, { force: true });
  }
}

/** Renames the flushed temporary over `file` and makes the rename itself durable. */
function renameDurably(file: string, tmp: string, dir: string): void {
  try {
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw saveError(file, err);
  }
  try {
    const dfd = fs.openSync(dir, 'r');
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
  } catch {
    /* directories cannot be opened for fsync on every platform */
  }
}

/** Throws CheckpointError at the first non-finite element of a[lo, hi); `base` is a[0]'s index in the tensor. */
export function checkChunkFinite(file: string, name: string, a: Float32Array | Int32Array, lo: number, hi: number, base = 0): void {
  for (let i = lo; i < hi; i++) {
    if (!Number.isFinite(a[i])) throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' holds ${a[i]} at element ${base + i}`);
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
    const prefix = Buffer.alloc(Math.min(8, size));
    fs.readSync(fd, prefix, 0, prefix.length, 0);
    const hlen = headerLength(file, prefix, size);
    const bytes = Buffer.alloc(8 + hlen);
    fs.readSync(fd, bytes, 0, bytes.length, 0);
    return parseHeader(file, bytes, size);
  } finally {
    fs.closeSync(fd);
  }
}

/** The header length the 8-byte prefix declares, checked against the file size. */
function headerLength(file: string, prefix: Uint8Array, size: number): number {
  if (size < 8 || prefix.length < 8) throw new CheckpointError(`Not a safetensors file: ${file} is ${size} bytes, shorter than the 8-byte header length`);
  const hlen = Number(Buffer.from(prefix.buffer, prefix.byteOffset, 8).readBigUInt64LE());
  if (hlen < 2 || hlen > MAX_HEADER || 8 + hlen > size) {
    throw new CheckpointError(`Not a safetensors file: ${file} declares a ${hlen}-byte header but the file is ${size} bytes`);
  }
  return hlen;
}

/**
 * Parses and checks a header: `bytes` starts with the file's first 8 + header
 * length bytes (more is ignored), `size` is the whole file's size. Pure (no
 * I/O), so the fuzz target calls it directly.
 */
export function parseHeader(file: string, bytes: Uint8Array, size: number): SafetensorsHeader {
  const hlen = headerLength(file, bytes, size);
  if (bytes.length < 8 + hlen) throw new CheckpointError(`Truncated checkpoint ${file}: the header is cut short`);
  const hbuf = Buffer.from(bytes.buffer, bytes.byteOffset + 8, hlen);
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
  for (const [name, v] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      out.metadata = checkMetadata(file, v);
      continue;
    }
    out.tensors[name] = checkEntry(file, name, v);
  }
  const maxEnd = checkLayout(file, out.tensors);
  if (out.dataStart + maxEnd !== size) {
    throw new CheckpointError(
      `Truncated or corrupted checkpoint ${file}: the header describes ${out.dataStart + maxEnd} bytes, which do not match the file's ${size}`,
    );
  }
  return out;
}

/** One tensor's entry: dtype, a shape of non-negative integers, and offsets that match it. */
function checkEntry(file: string, name: string, v: unknown): SafetensorsHeader['tensors'][string] {
  const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e?.dtype !== 'string' || !Array.isArray(e.shape) || !Array.isArray(e.data_offsets) || e.data_offsets.length !== 2) {
    throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' has no valid dtype, shape and data_offsets`);
  }
  const [begin, end] = e.data_offsets as number[];
  const shape = e.shape as number[];
  if (!shape.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' has shape ${JSON.stringify(shape)}, not a list of non-negative integers`);
  }
  const width = e.dtype === 'F32' || e.dtype === 'I32' ? 4 : e.dtype === 'BF16' || e.dtype === 'F16' ? 2 : 0;
  const count = shape.reduce((a, b) => a * b, 1);
  if (Number.isSafeInteger(begin) && Number.isSafeInteger(end) && begin >= 0 && end < begin) {
    throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' has data_offsets [${begin}, ${end}] out of order (end before begin)`);
  }
  if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || (width && end - begin !== count * width)) {
    throw new CheckpointError(
      `Corrupted checkpoint ${file}: tensor '${name}' (${e.dtype} ${JSON.stringify(shape)}) has data_offsets [${begin}, ${end}] that do not match its shape`,
    );
  }
  return { dtype: e.dtype, shape, begin, end };
}

/** __metadata__ must be an object of strings (the format's rule; the head reads its fields as strings). */
function checkMetadata(file: string, v: unknown): Record<string, string> {
  if (v === null || typeof v !== 'object' || Array.isArray(v) || !Object.values(v).every((x) => typeof x === 'string')) {
    throw new CheckpointError(`Corrupted checkpoint ${file}: __metadata__ is not an object of strings`);
  }
  return v as Record<string, string>;
}

/**
 * The tensors' byte ranges, sorted, must tile the data section from 0 with no
 * overlap and no gap (as the safetensors format requires); returns its end.
 */
function checkLayout(file: string, tensors: SafetensorsHeader['tensors']): number {
  const ranges = Object.entries(tensors).sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let end = 0;
  let prev = '';
  for (const [name, t] of ranges) {
    if (t.begin < end) {
      throw new CheckpointError(`Corrupted checkpoint ${file}: tensor '${name}' [${t.begin}, ${t.end}] overlaps tensor '${prev}' (which ends at ${end})`);
    }
    if (t.begin > end) {
      const after = prev ? `after tensor '${prev}'` : 'at the start of the data';
      throw new CheckpointError(`Corrupted checkpoint ${file}: a gap of ${t.begin - end} bytes ${after}, before tensor '${name}' at ${t.begin}`);
    }
    end = t.end;
    prev = name;
  }
  return end;
}

/** Reads one F32/I32 tensor straight into `into` (which must have the right length). */
export function readTensor(
  file: string,
  header: SafetensorsHeader,
  name: string,
  into: Float32Array | Int32Array,
  { finite = false }: { finite?: boolean } = {},
): void {
  const per = into.BYTES_PER_ELEMENT;
  readTensorChunks(file, header, name, into.byteLength, CHUNK, (b, e) => bytesOf(into, b, e),
    finite ? (b, chunk) => checkChunkFinite(file, name, into, b / per, (b + chunk.length) / per) : undefined);
}

/**
 * Reads one tensor of `byteLength` bytes in chunks of at most `chunkBytes`:
 * `view(begin, end)` gives the buffer for bytes [begin, end), and `done`, if
 * given, is called once it is filled (a device-resident destination copies
 * it on, reusing one bounded host buffer; a check can look at it first).
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
