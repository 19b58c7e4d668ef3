/**
 * Gallery files: L2-normalised embeddings (N×dim, F32) in the safetensors
 * format, one tensor `embeddings`, with the image paths, their identity
 * labels and the model that computed them in the header's metadata:
 *   format "margin-softmax/gallery", version "1", paths (JSON array),
 *   labels (JSON array of identity names), model (JSON: run folder, epoch,
 *   configuration fingerprint).
 * The library's safetensors reader checks the header against the file and
 * reads the tensor in chunks (a 10⁶ × 512 gallery is 2 GB, beyond one Buffer
 * read).
 */
import * as fs from 'fs';
import * as path from 'path';
import { CheckpointError, readSafetensorsHeader, readSafetensorsTensor, saveSafetensors } from 'margin-softmax';

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

/** Writes a gallery atomically (a temporary file in the same folder, flushed, then a rename). */
export function writeGallery(file: string, g: Gallery): void {
  const n = g.paths.length;
  if (g.labels.length !== n || g.embeddings.length !== n * g.dim) {
    throw new CheckpointError(`Expected ${n} labels and ${n}×${g.dim} embeddings for ${n} paths but received ${g.labels.length} labels and ${g.embeddings.length} values`);
  }
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  saveSafetensors(
    file,
    { embeddings: { dtype: 'F32', shape: [n, g.dim], data: g.embeddings } },
    { format: GALLERY_FORMAT, version: '1', paths: JSON.stringify(g.paths), labels: JSON.stringify(g.labels), model: JSON.stringify(g.model) },
  );
}

function bad(file: string, what: string): never {
  throw new CheckpointError(`${file} is not a margin-softmax gallery: ${what}`);
}

/**
 * Reads a gallery written by {@link writeGallery}. The safetensors layout is
 * checked by the library's reader (its CheckpointError names the problem);
 * this checks what makes it a gallery.
 */
export function readGallery(file: string): Gallery {
  const header = readSafetensorsHeader(file);
  const meta = header.metadata;
  if (meta.format !== GALLERY_FORMAT) bad(file, `metadata.format is ${JSON.stringify(meta.format)} (expected ${JSON.stringify(GALLERY_FORMAT)})`);
  const t = header.tensors.embeddings;
  if (!t || t.dtype !== 'F32' || t.shape.length !== 2) bad(file, `expected an F32 tensor 'embeddings' of shape [N, dim]`);
  const [n, dim] = t.shape;
  const { paths, labels, model } = galleryMetadata(file, meta, n);
  const embeddings = new Float32Array(n * dim);
  readSafetensorsTensor(file, header, 'embeddings', embeddings, { finite: true });
  return { embeddings, dim, paths, labels, model };
}

/** The paths, labels and model of the header's metadata: JSON, one path and label per row. */
function galleryMetadata(file: string, meta: Record<string, string>, n: number): Pick<Gallery, 'paths' | 'labels' | 'model'> {
  let paths: string[], labels: string[], model: GalleryModel;
  try {
    paths = JSON.parse(meta.paths);
    labels = JSON.parse(meta.labels);
    model = JSON.parse(meta.model);
  } catch {
    bad(file, 'metadata paths, labels or model is not JSON');
  }
  if (!Array.isArray(paths) || !Array.isArray(labels) || paths.length !== n || labels.length !== n) bad(file, `expected ${n} paths and labels in the metadata`);
  return { paths, labels, model };
}
