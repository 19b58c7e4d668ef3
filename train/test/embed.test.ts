/**
 * Using a trained model: a tiny run (one epoch on eight ORL people), then
 * embed → gallery file, verify a pair, identify probes against the gallery,
 * through the API and the command line; the streamed top-k identities equal
 * a brute-force search; bad galleries and arguments are refused clearly.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CheckpointError } from 'margin-softmax';
import { main } from '../src/commands/main';
import { UsageError } from '../src/commands/options';
import { CheckpointMismatchError } from '../src/run/checkpoint';
import { DEFAULT_CONFIG, makeMargin, type TrainConfig } from '../src/run/config';
import { embedFolder, identify, openModel, embedFiles, runThreshold, topIdentities, verifyPair } from '../src/eval/embed';
import { readGallery, writeGallery, type Gallery } from '../src/eval/gallery';
import { train } from '../src/run/train';
import { Rng } from '../src/data/rng';

const ORL = path.resolve(__dirname, '..', '..', '..', 'shared', 'data', 'orl_faces');
const haveOrl = fs.existsSync(ORL);
if (!haveOrl) console.warn(`skipping the embed/verify/identify end-to-end test: ${ORL} not found`);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-embed-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A scratch ImageFolder (in the temporary folder) with some of ORL's people and images. */
function linkFolder(dir: string, people: string[], images: number[]): string {
  for (const p of people) {
    fs.mkdirSync(path.join(dir, p), { recursive: true });
    for (const i of images) fs.copyFileSync(path.join(ORL, p, `${i}.pgm`), path.join(dir, p, `${i}.pgm`));
  }
  return dir;
}

/** Brute force: every gallery row scored, the best row per identity, sorted. */
function bruteForce(g: Gallery, probe: Float32Array, k: number): { identity: string; score: number }[] {
  const best = new Map<string, number>();
  for (let r = 0; r < g.paths.length; r++) {
    let s = 0;
    for (let d = 0; d < g.dim; d++) s += probe[d] * g.embeddings[r * g.dim + d];
    if (!(best.get(g.labels[r])! >= s)) best.set(g.labels[r], s);
  }
  return [...best.entries()].map(([identity, score]) => ({ identity, score })).sort((a, b) => b.score - a.score).slice(0, k);
}

/** A standard normal draw (Box–Muller). */
const normal = (rng: Rng) => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());

function unitRows(rng: Rng, n: number, dim: number): Float32Array {
  const e = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += (e[i * dim + d] = normal(rng)) ** 2;
    for (let d = 0; d < dim; d++) e[i * dim + d] /= Math.sqrt(s);
  }
  return e;
}

describe('top-k identities over a gallery (no model)', () => {
  test('equal a brute-force search, also when one identity holds many of the closest images', () => {
    const rng = new Rng(7);
    const dim = 16;
    const G = 300;
    const emb = unitRows(rng, G, dim);
    // Identity "crowd" holds 60 images, 40 others hold 6 each.
    const labels = Array.from({ length: G }, (_, i) => (i < 60 ? 'crowd' : `id${i % 40}`));
    const g: Gallery = { embeddings: emb, dim, paths: labels.map((_, i) => `img${i}`), labels, model: { run: 'r', epoch: 1, fingerprint: {} } };
    // Probes near crowd images: the top rows are crowd's, the other identities must still come out.
    const probes = new Float32Array(5 * dim);
    for (let p = 0; p < 5; p++) for (let d = 0; d < dim; d++) probes[p * dim + d] = emb[p * dim + d] + 0.05 * normal(rng);
    const top = topIdentities(g, probes, 4);
    for (let p = 0; p < 5; p++) {
      const probe = probes.slice(p * dim, (p + 1) * dim);
      const n = Math.hypot(...probe);
      const expected = bruteForce(g, probe.map((x) => x / n), 4);
      expect(top[p].map((m) => m.identity)).toEqual(expected.map((m) => m.identity));
      top[p].forEach((m, j) => expect(m.score).toBeCloseTo(expected[j].score, 5));
      expect(top[p][0].identity).toBe('crowd');
    }
    // Searched in chunks of 37 rows (merged across chunks): the same answer.
    expect(topIdentities(g, probes, 4, { chunkRows: 37 })).toEqual(top);
    expect(topIdentities(g, probes, 4, { chunkRows: 1 })).toEqual(top);
    // k beyond the identities: all of them, once each.
    expect(topIdentities(g, probes.slice(0, dim), 100)[0]).toHaveLength(41);
    expect(topIdentities(g, probes.slice(0, dim), 100, { chunkRows: 50 })[0]).toHaveLength(41);
  });

  test('a gallery of 300,000 identities (no argument-list limits on the way)', () => {
    const G = 300_000;
    const emb = new Float32Array(2 * G);
    for (let i = 0; i < G; i++) {
      emb[2 * i] = Math.cos(i * 1e-5);
      emb[2 * i + 1] = Math.sin(i * 1e-5);
    }
    const labels = Array.from({ length: G }, (_, i) => `id${i}`);
    const g: Gallery = { embeddings: emb, dim: 2, paths: labels, labels, model: { run: 'r', epoch: 1, fingerprint: {} } };
    const probe = Float32Array.from([Math.cos(1.234567), Math.sin(1.234567)]);
    const [m] = topIdentities(g, probe, 3);
    // Rows i ≈ 123457 are the closest angles (fp32 cosines do not resolve 1e−5 rad steps near 1: a few rows tie).
    expect(new Set(m.map((x) => x.identity)).size).toBe(3);
    for (const x of m) {
      expect(Math.abs(Number(x.identity.slice(2)) - 123457)).toBeLessThan(100);
      expect(x.score).toBeGreaterThan(0.9999);
    }
  });

  test('bad arguments are refused', () => {
    const g: Gallery = { embeddings: new Float32Array(4), dim: 2, paths: ['a', 'b'], labels: ['x', 'y'], model: { run: 'r', epoch: 1, fingerprint: {} } };
    expect(() => topIdentities(g, new Float32Array(3), 1)).toThrow(/Expected probes of dim 2 but received 3 values/);
    expect(() => topIdentities(g, new Float32Array(2), 0)).toThrow(/Expected an integer k ≥ 1/);
    expect(() => topIdentities(g, new Float32Array(2), 1, { chunkRows: 0 })).toThrow(/Expected an integer ≥ 1 for chunkRows/);
  });
});

describe('gallery files', () => {
  test('round trip, and corrupted or foreign files are refused', () => {
    const file = path.join(tmp, 'g.safetensors');
    const g: Gallery = { embeddings: Float32Array.from([1, 0, 0, 1, 0.6, 0.8]), dim: 2, paths: ['a/1.png', 'a/2.png', 'b é/1.png'], labels: ['a', 'a', 'b é'], model: { run: '/r', epoch: 3, fingerprint: { dim: 2 } } };
    writeGallery(file, g);
    const back = readGallery(file);
    expect(back).toEqual(g);
    // The data start 8-byte aligned.
    const buf = fs.readFileSync(file);
    expect((8 + Number(buf.readBigUInt64LE(0))) % 8).toBe(0);
    fs.writeFileSync(path.join(tmp, 'short'), buf.subarray(0, buf.length - 4));
    expect(() => readGallery(path.join(tmp, 'short'))).toThrow(/do not match the file/);
    expect(() => readGallery(path.join(tmp, 'missing'))).toThrow(CheckpointError);
    const head = path.join(tmp, 'checkpoint-like.safetensors');
    const json = JSON.stringify({ weight: { dtype: 'F32', shape: [1, 1], data_offsets: [0, 4] }, __metadata__: { format: 'margin-softmax/head' } });
    const h = Buffer.alloc(8);
    h.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(head, Buffer.concat([h, Buffer.from(json), Buffer.alloc(4)]));
    expect(() => readGallery(head)).toThrow(/not a margin-softmax gallery: metadata.format is "margin-softmax\/head"/);
    expect(() => writeGallery(file, { ...g, labels: ['a'] })).toThrow(/Expected 3 labels/);
  });
});

describe.skipIf(!haveOrl)('embed, verify, identify with a checkpoint trained for one epoch on ORL', () => {
  const people = ['s1', 's2', 's3', 's4', 's5', 's6', 's7', 's8'];
  const run = path.join(tmp, 'run');
  const galleryDir = path.join(tmp, 'gallery');
  const galleryFile = path.join(tmp, 'gallery.safetensors');
  const probe = (p: string) => path.join(ORL, p, '10.pgm');

  beforeAll(async () => {
    const data = linkFolder(path.join(tmp, 'orl8'), people, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const cfg: TrainConfig = { ...DEFAULT_CONFIG, data, out: run, epochs: 1, lrSteps: [], dim: 32, widths: [8, 16], valClasses: 3, margin: makeMargin('adaptive'), batchSize: 16 };
    await train(cfg, { verbose: false, plots: false });
    // Gallery: images 1–9 of every person; image 10 is the probe.
    linkFolder(galleryDir, people, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  }, 240_000);

  test('embed writes unit-length embeddings with their paths and identities', async () => {
    const r = await embedFolder({ checkpoint: run, data: galleryDir, out: galleryFile });
    expect(r).toMatchObject({ images: 72, identities: 8, dim: 32, skipped: 0 });
    const g = readGallery(galleryFile);
    expect(g.paths).toHaveLength(72);
    expect(g.labels.slice(0, 9)).toEqual(Array(9).fill('s1'));
    expect(g.paths[0]).toBe(path.join(galleryDir, 's1', '1.pgm'));
    expect(g.model.run).toBe(path.resolve(run));
    for (let i = 0; i < 72; i++) expect(Math.hypot(...g.embeddings.subarray(i * 32, (i + 1) * 32))).toBeCloseTo(1, 5);
    // The same as embedding the files directly.
    const m = await openModel(run);
    try {
      const direct = embedFiles(m, [g.paths[5]]);
      for (let d = 0; d < 32; d++) expect(direct.embeddings[d]).toBeCloseTo(g.embeddings[5 * 32 + d], 5);
    } finally {
      m.dispose();
    }
  });

  test('verify: the cosine of the two embeddings against the run’s own threshold', async () => {
    const threshold = runThreshold(run)!;
    const ev = JSON.parse(fs.readFileSync(path.join(run, 'eval.json'), 'utf8'));
    const t = ev.after.accuracy.thresholds as number[];
    expect(threshold).toBeCloseTo(t.reduce((a, b) => a + b, 0) / t.length, 12);
    const g = readGallery(galleryFile);
    const a = g.paths.indexOf(path.join(galleryDir, 's2', '1.pgm'));
    const b = g.paths.indexOf(path.join(galleryDir, 's5', '3.pgm'));
    let dot = 0;
    for (let d = 0; d < 32; d++) dot += g.embeddings[a * 32 + d] * g.embeddings[b * 32 + d];
    const r = await verifyPair({ checkpoint: run, images: [g.paths[a], g.paths[b]] });
    expect(r.cosine).toBeCloseTo(dot, 5);
    expect(r.threshold).toBe(threshold);
    expect(r.same).toBe(r.cosine > threshold);
    const given = await verifyPair({ checkpoint: run, images: [g.paths[a], g.paths[a]], threshold: 0.99 });
    expect(given).toMatchObject({ threshold: 0.99, same: true, thresholdFrom: 'given' });
    expect(given.cosine).toBeCloseTo(1, 5);
  });

  test('identify: top-k identities equal a brute-force search of the gallery', async () => {
    const probes = people.map(probe);
    const r = await identify({ checkpoint: run, gallery: galleryFile, images: probes, top: 3 });
    const g = readGallery(galleryFile);
    const m = await openModel(run);
    const e = embedFiles(m, probes).embeddings;
    m.dispose();
    r.forEach((p, i) => {
      expect(p.image).toBe(probes[i]);
      const expected = bruteForce(g, e.subarray(i * 32, (i + 1) * 32), 3);
      expect(p.matches.map((x) => x.identity)).toEqual(expected.map((x) => x.identity));
      p.matches.forEach((x, j) => expect(x.score).toBeCloseTo(expected[j].score, 5));
      expect(g.labels[g.paths.indexOf(p.matches[0].path)]).toBe(p.matches[0].identity);
    });
    console.log(`identify after 1 epoch: top-1 correct for ${r.filter((p, i) => p.matches[0].identity === people[i]).length}/${people.length} probes`);
  });

  test('the command line: embed, verify, identify with --json', async () => {
    const out: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
    try {
      const file = path.join(tmp, 'cli.safetensors');
      expect(await main(['embed', '--checkpoint', run, '--data', galleryDir, '--out', file])).toBe(0);
      expect(out.join('')).toContain(`${file}: 72 images of 8 identities, dim 32`);
      out.length = 0;
      expect(await main(['verify', '--checkpoint', run, probe('s1'), probe('s2'), '--json', '-'])).toBe(0);
      const v = JSON.parse(out.join(''));
      expect(v.thresholdFrom).toBe('run');
      expect(v.same).toBe(v.cosine > v.threshold);
      out.length = 0;
      expect(await main(['identify', '--checkpoint', run, '--gallery', file, '--top', '2', probe('s3')])).toBe(0);
      const lines = out.join('').trim().split('\n');
      expect(lines[0]).toBe(probe('s3'));
      expect(lines.slice(1).map((l) => l.trim().split(/\s+/)[0])).toEqual(['1.', '2.']);
    } finally {
      process.stdout.write = write;
    }
  });

  test('errors: usage, missing images, a gallery of another model, a run without evaluation', async () => {
    await expect(main(['verify', '--checkpoint', run, probe('s1')])).rejects.toThrow(UsageError);
    await expect(main(['verify', probe('s1'), probe('s2')])).rejects.toThrow(/verify needs --checkpoint/);
    await expect(main(['identify', '--checkpoint', run, probe('s1')])).rejects.toThrow(/identify needs --gallery/);
    await expect(main(['identify', '--checkpoint', run, '--gallery', galleryFile, '--top', '0', probe('s1')])).rejects.toThrow(/Expected an integer ≥ 1 for --top but received "0"/);
    await expect(main(['verify', '--checkpoint', run, probe('s1'), path.join(tmp, 'nope.pgm')])).rejects.toThrow(/Image not found: .*nope.pgm/);
    await expect(main(['embed', '--checkpoint', path.join(tmp, 'no-run'), '--data', galleryDir, '--out', path.join(tmp, 'x.safetensors')])).rejects.toThrow(CheckpointMismatchError);
    // A gallery embedded by another model is refused.
    const g = readGallery(galleryFile);
    const foreign = path.join(tmp, 'foreign.safetensors');
    writeGallery(foreign, { ...g, model: { ...g.model, epoch: g.model.epoch + 1 } });
    await expect(identify({ checkpoint: run, gallery: foreign, images: [probe('s1')] })).rejects.toThrow(/was embedded by .* not by the checkpoint/);
    // Without eval.json there is no threshold unless one is given.
    const copy = path.join(tmp, 'run-noeval');
    fs.cpSync(run, copy, { recursive: true });
    fs.rmSync(path.join(copy, 'eval.json'));
    await expect(verifyPair({ checkpoint: copy, images: [probe('s1'), probe('s2')] })).rejects.toThrow(/has no evaluation \(eval.json\)/);
    await expect(verifyPair({ checkpoint: copy, images: [probe('s1'), probe('s2')], threshold: 2 })).rejects.toThrow(/cosine threshold in \[-1, 1\]/);
  });
});
