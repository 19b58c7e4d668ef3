/**
 * Gallery files: L2-normalised embeddings (N×dim, F32) in the safetensors
 * format, one tensor `embeddings`, with the image paths, their identity
 * labels and the model that computed them in the header's metadata:
 *   format "margin-softmax/gallery", version "1", paths (JSON array),
 *   labels (JSON array of identity names), model (JSON: run folder, epoch,
 *   configuration fingerprint).
 * The reader checks the header against the file and reads the tensor in
 * chunks (a 10⁶ × 512 gallery is 2 GB, beyond one Buffer read).
 */
import * as fs from 'fs';
import * as path from 'path';
import { CheckpointError } from 'margin-softmax';

export const GALLERY_FORMAT = 'margin-softmax/gallery';

export interface GalleryModel {
  run: string;
  epoch: number;
  fingerprint: Record<string, unknown>;
}

export interface Gallery {
  /** N×dim, each row of unit length. */
  embeddings: Float32Array;
  dim: number;
  paths: string[];
  labels: string[];
  model: GalleryModel;
}

/** Writes a gallery atomically (a temporary file in the same folder, then a rename). */
export function writeGallery(file: string, g: Gallery): void {
  const n = g.paths.length;
  if (g.labels.length !== n || g.embeddings.length !== n * g.dim) {
    throw new CheckpointError(`Expected ${n} labels and ${n}×${g.dim} embeddings for ${n} paths but received ${g.labels.length} labels and ${g.embeddings.length} values`);
  }
  const header = {
    embeddings: { dtype: 'F32', shape: [n, g.dim], data_offsets: [0, 4 * n * g.dim] },
    __metadata__: { format: GALLERY_FORMAT, version: '1', paths: JSON.stringify(g.paths), labels: JSON.stringify(g.labels), model: JSON.stringify(g.model) },
  };
  let json = JSON.stringify(header);
  // Pad the header with spaces to a multiple of 8 bytes, so the data is aligned.
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8);
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, head);
    const bytes = new Uint8Array(g.embeddings.buffer, g.embeddings.byteOffset, g.embeddings.byteLength);
    for (let off = 0; off < bytes.length; off += 1 << 26) fs.writeSync(fd, bytes.subarray(off, Math.min(bytes.length, off + (1 << 26))));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

function bad(file: string, what: string): never {
  throw new CheckpointError(`${file} is not a margin-softmax gallery: ${what}`);
}

export function readGallery(file: string): Gallery {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw new CheckpointError(`Cannot open gallery ${file}: ${(err as Error).message}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) bad(file, `${size} bytes, shorter than a safetensors header`);
    const len8 = Buffer.alloc(8);
    fs.readSync(fd, len8, 0, 8, 0);
    const len = Number(len8.readBigUInt64LE(0));
    if (len > size - 8) bad(file, `header length ${len} beyond the file's ${size} bytes`);
    const hbuf = Buffer.alloc(len);
    fs.readSync(fd, hbuf, 0, len, 8);
    let header: Record<string, any>;
    try {
      header = JSON.parse(hbuf.toString('utf8'));
    } catch {
      bad(file, 'the header is not JSON');
    }
    const meta = header.__metadata__ ?? {};
    if (meta.format !== GALLERY_FORMAT) bad(file, `metadata.format is ${JSON.stringify(meta.format)} (expected ${JSON.stringify(GALLERY_FORMAT)})`);
    const t = header.embeddings;
    if (!t || t.dtype !== 'F32' || !Array.isArray(t.shape) || t.shape.length !== 2) bad(file, `expected an F32 tensor 'embeddings' of shape [N, dim]`);
    const [n, dim] = t.shape as number[];
    const bytes = 4 * n * dim;
    if (t.data_offsets?.[0] !== 0 || t.data_offsets?.[1] !== bytes || 8 + len + bytes !== size) bad(file, `the tensor's ${bytes} bytes do not match the file's ${size - 8 - len}`);
    let paths: string[], labels: string[], model: GalleryModel;
    try {
      paths = JSON.parse(meta.paths);
      labels = JSON.parse(meta.labels);
      model = JSON.parse(meta.model);
    } catch {
      bad(file, 'metadata paths, labels or model is not JSON');
    }
    if (!Array.isArray(paths) || !Array.isArray(labels) || paths.length !== n || labels.length !== n) bad(file, `expected ${n} paths and labels in the metadata`);
    const embeddings = new Float32Array(n * dim);
    const out = new Uint8Array(embeddings.buffer);
    for (let off = 0; off < bytes; off += 1 << 26) fs.readSync(fd, out, off, Math.min(1 << 26, bytes - off), 8 + len + off);
    for (let i = 0; i < embeddings.length; i++) if (!Number.isFinite(embeddings[i])) bad(file, `non-finite value at row ${Math.floor(i / dim)}`);
    return { embeddings, dim, paths, labels, model };
  } finally {
    fs.closeSync(fd);
  }
}
