/**
 * The face-verification protocol on embeddings (LFW style), and Rank-1
 * identification. Pure functions on Float32Array embeddings: no tfjs.
 *
 * Pairs: every genuine pair (two images of one identity) and an equal number
 * of impostor pairs drawn with a fixed seed. Folds split by identity: the
 * held-out identities are shuffled (seeded) and dealt round-robin into K =
 * min(10, #identities) folds; a genuine pair belongs to its identity's fold,
 * and each fold gets as many impostor pairs as it has genuine pairs, whose
 * first image is from that fold's identities and second from any other
 * held-out identity. Per fold the threshold maximising accuracy on the other
 * K−1 folds is applied to it; the report is mean ± std (population std, as
 * LFW's evaluation code) of the K fold accuracies.
 *
 * TAR at FAR = f: over all pairs, the threshold is the smallest score that
 * lets at most ⌊f·I⌋ of the I impostor pairs through (I is reported with it);
 * TAR is the fraction of genuine pairs above it. When ⌊f·I⌋ < 1 the FAR
 * cannot be resolved and TAR is reported as null.
 */
import { DataError } from '../data/datasets';
import { Rng, subSeed } from '../data/rng';

export interface Pairs {
  a: Int32Array;
  b: Int32Array;
  /** 1 = genuine (same identity), 0 = impostor. */
  same: Uint8Array;
  fold: Int32Array;
  folds: number;
}

export interface TarAtFar {
  far: number;
  /** null when the impostor set is too small to resolve this FAR. */
  tar: number | null;
  threshold: number | null;
  impostorPairs: number;
  /** ⌊far·impostorPairs⌋: how many false accepts the operating point rests on. */
  falseAcceptsAllowed: number;
}

export interface VerificationResult {
  identities: number;
  images: number;
  genuinePairs: number;
  impostorPairs: number;
  folds: number;
  accuracy: { mean: number; std: number; perFold: number[]; thresholds: number[] };
  tar: TarAtFar[];
  auc: number;
  /** ROC points (FAR ascending), at most ~400. */
  roc: { far: number[]; tar: number[] };
  rank1: { accuracy: number; probes: number; gallery: number };
}

/** L2-normalises each row in place (a zero row stays zero). */
export function l2normalize(emb: Float32Array, dim: number): Float32Array {
  for (let i = 0; i < emb.length; i += dim) {
    let s = 0;
    for (let k = 0; k < dim; k++) s += emb[i + k] * emb[i + k];
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let k = 0; k < dim; k++) emb[i + k] *= inv;
  }
  return emb;
}

function dot(e: Float32Array, dim: number, i: number, j: number): number {
  let s = 0;
  const a = i * dim;
  const b = j * dim;
  for (let k = 0; k < dim; k++) s += e[a + k] * e[b + k];
  return s;
}

export function makePairs(labels: Int32Array, seed: number, maxFolds = 10): Pairs {
  const ids = [...new Set(labels)].sort((x, y) => x - y);
  if (ids.length < 2) throw new Error(`Verification needs at least 2 identities, found ${ids.length}`);
  const K = Math.min(maxFolds, ids.length);
  const rng = new Rng(subSeed(seed, 'pairs'));
  const order = rng.shuffle(ids.slice());
  const foldOf = new Map<number, number>();
  order.forEach((id, r) => foldOf.set(id, r % K));
  const byId = new Map<number, number[]>();
  labels.forEach((l, i) => {
    const list = byId.get(l);
    if (list) list.push(i);
    else byId.set(l, [i]);
  });
  const A: number[] = [];
  const B: number[] = [];
  const S: number[] = [];
  const F: number[] = [];
  const genuinePerFold = new Array(K).fill(0);
  for (const id of ids) {
    const imgs = byId.get(id) as number[];
    const f = foldOf.get(id) as number;
    for (let x = 0; x < imgs.length; x++) {
      for (let y = x + 1; y < imgs.length; y++) {
        A.push(imgs[x]);
        B.push(imgs[y]);
        S.push(1);
        F.push(f);
        genuinePerFold[f]++;
      }
    }
  }
  if (A.length === 0) {
    // Accuracy and AUC over no genuine pair are not computable: refuse rather than report 0 %.
    throw new DataError(
      `Verification needs genuine pairs (two images of one identity) but the ${ids.length} held-out identities have one image each (${labels.length} images): hold out identities with at least 2 images`,
    );
  }
  const n = labels.length;
  const seen = new Set<number>();
  for (let f = 0; f < K; f++) {
    const inFold: number[] = [];
    for (const id of ids) if (foldOf.get(id) === f) inFold.push(...(byId.get(id) as number[]));
    // Possible impostor pairs with the first image in this fold.
    let possible = 0;
    for (const i of inFold) possible += n - (byId.get(labels[i]) as number[]).length;
    const want = Math.min(genuinePerFold[f], possible);
    let got = 0;
    let tries = 0;
    while (got < want && tries < want * 50 + 1000) {
      tries++;
      const i = inFold[rng.int(inFold.length)];
      const j = rng.int(n);
      if (labels[j] === labels[i]) continue;
      const key = i < j ? i * n + j : j * n + i;
      if (seen.has(key)) continue;
      seen.add(key);
      A.push(i);
      B.push(j);
      S.push(0);
      F.push(f);
      got++;
    }
  }
  return { a: Int32Array.from(A), b: Int32Array.from(B), same: Uint8Array.from(S), fold: Int32Array.from(F), folds: K };
}

/** Cosine scores of the pairs (embeddings must be L2-normalised). */
export function pairScores(emb: Float32Array, dim: number, pairs: Pairs): Float32Array {
  const s = new Float32Array(pairs.a.length);
  for (let p = 0; p < s.length; p++) s[p] = dot(emb, dim, pairs.a[p], pairs.b[p]);
  return s;
}

/** The threshold (a midpoint between sorted scores) maximising accuracy of `score > t ⇔ same`. */
export function bestThreshold(scores: ArrayLike<number>, same: ArrayLike<number>, idx: number[]): number {
  const order = idx.slice().sort((x, y) => scores[x] - scores[y]);
  let pos = 0;
  for (const i of order) pos += same[i];
  // Threshold below everything: all accepted → correct = #genuine.
  let correct = pos;
  let best = correct;
  let bestT = order.length ? scores[order[0]] - 1e-6 : 0;
  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    correct += same[i] ? -1 : 1; // pair k now rejected
    // Ties: only cut between distinct scores.
    if (k + 1 < order.length && scores[order[k + 1]] === scores[i]) continue;
    if (correct > best) {
      best = correct;
      bestT = k + 1 < order.length ? (scores[i] + scores[order[k + 1]]) / 2 : scores[i] + 1e-6;
    }
  }
  return bestT;
}

export function tarAtFar(scores: Float32Array, same: Uint8Array, far: number): TarAtFar {
  const imp: number[] = [];
  const gen: number[] = [];
  for (let i = 0; i < scores.length; i++) (same[i] ? gen : imp).push(scores[i]);
  imp.sort((x, y) => y - x); // descending
  const allowed = Math.floor(far * imp.length + 1e-9);
  if (allowed < 1 || gen.length === 0) return { far, tar: null, threshold: null, impostorPairs: imp.length, falseAcceptsAllowed: allowed };
  // Accept score > t; t = the allowed-th highest impostor score lets exactly the `allowed` higher ones through (ties excluded).
  const t = imp[allowed];
  const threshold = t === undefined ? -Infinity : t;
  let acc = 0;
  for (const g of gen) if (g > threshold) acc++;
  return { far, tar: acc / gen.length, threshold: Number.isFinite(threshold) ? threshold : null, impostorPairs: imp.length, falseAcceptsAllowed: allowed };
}

export function roc(scores: Float32Array, same: Uint8Array, maxPoints = 400): { far: number[]; tar: number[]; auc: number } {
  const idx = Array.from(scores.keys()).sort((x, y) => scores[y] - scores[x]);
  let P = 0;
  for (const s of same) P += s;
  const N = same.length - P;
  const far = [0];
  const tar = [0];
  let tp = 0;
  let fp = 0;
  for (let k = 0; k < idx.length; k++) {
    if (same[idx[k]]) tp++;
    else fp++;
    if (k + 1 < idx.length && scores[idx[k + 1]] === scores[idx[k]]) continue;
    far.push(N ? fp / N : 0);
    tar.push(P ? tp / P : 0);
  }
  let auc = 0;
  for (let k = 1; k < far.length; k++) auc += ((far[k] - far[k - 1]) * (tar[k] + tar[k - 1])) / 2;
  if (far.length > maxPoints) {
    const step = far.length / maxPoints;
    const f2: number[] = [];
    const t2: number[] = [];
    for (let k = 0; k < maxPoints; k++) {
      const j = Math.floor(k * step);
      f2.push(far[j]);
      t2.push(tar[j]);
    }
    f2.push(far[far.length - 1]);
    t2.push(tar[tar.length - 1]);
    return { far: f2, tar: t2, auc };
  }
  return { far, tar, auc };
}

/** Rank-1: per identity one gallery image (chosen with the seed), the rest are probes. */
export function rank1(emb: Float32Array, dim: number, labels: Int32Array, seed: number): { accuracy: number; probes: number; gallery: number } {
  const rng = new Rng(subSeed(seed, 'gallery'));
  const byId = new Map<number, number[]>();
  labels.forEach((l, i) => {
    const list = byId.get(l);
    if (list) list.push(i);
    else byId.set(l, [i]);
  });
  const ids = [...byId.keys()].sort((x, y) => x - y);
  const gallery = new Map<number, number>();
  for (const id of ids) {
    const imgs = byId.get(id) as number[];
    gallery.set(id, imgs[rng.int(imgs.length)]);
  }
  const galleryIdx = new Set(gallery.values());
  let probes = 0;
  let hit = 0;
  for (let i = 0; i < labels.length; i++) {
    if (galleryIdx.has(i)) continue;
    probes++;
    let best = -Infinity;
    let bestId = -1;
    for (const id of ids) {
      const s = dot(emb, dim, i, gallery.get(id) as number);
      if (s > best) {
        best = s;
        bestId = id;
      }
    }
    if (bestId === labels[i]) hit++;
  }
  return { accuracy: probes ? hit / probes : 0, probes, gallery: ids.length };
}

export interface VerifyOptions {
  seed?: number;
  folds?: number;
  fars?: number[];
}

/** The whole protocol on L2-normalised embeddings (N×dim) with identity labels. */
export function verify(emb: Float32Array, dim: number, labels: Int32Array, opts: VerifyOptions = {}): VerificationResult {
  const seed = opts.seed ?? 0;
  const pairs = makePairs(labels, seed, opts.folds ?? 10);
  const scores = pairScores(emb, dim, pairs);
  const perFold: number[] = [];
  const thresholds: number[] = [];
  for (let f = 0; f < pairs.folds; f++) {
    const train: number[] = [];
    const test: number[] = [];
    for (let p = 0; p < scores.length; p++) (pairs.fold[p] === f ? test : train).push(p);
    const t = bestThreshold(scores, pairs.same, train);
    let correct = 0;
    for (const p of test) if (scores[p] > t === (pairs.same[p] === 1)) correct++;
    perFold.push(test.length ? correct / test.length : 0);
    thresholds.push(t);
  }
  const mean = perFold.reduce((a, b) => a + b, 0) / perFold.length;
  const std = Math.sqrt(perFold.reduce((a, b) => a + (b - mean) ** 2, 0) / perFold.length);
  let genuine = 0;
  for (const s of pairs.same) genuine += s;
  const r = roc(scores, pairs.same);
  return {
    identities: new Set(labels).size,
    images: labels.length,
    genuinePairs: genuine,
    impostorPairs: pairs.same.length - genuine,
    folds: pairs.folds,
    accuracy: { mean, std, perFold, thresholds },
    tar: (opts.fars ?? [1e-1, 1e-2]).map((f) => tarAtFar(scores, pairs.same, f)),
    auc: r.auc,
    roc: { far: r.far, tar: r.tar },
    rank1: rank1(emb, dim, labels, seed),
  };
}

/** "98.50 ± 1.20" (percent). */
export function pct(mean: number, std?: number, digits = 2): string {
  return std === undefined ? (100 * mean).toFixed(digits) : `${(100 * mean).toFixed(digits)} ± ${(100 * std).toFixed(digits)}`;
}

/** A short text report of a verification result. */
export function formatVerification(r: VerificationResult, title = 'verification'): string {
  const lines = [
    `${title}: ${r.identities} held-out identities, ${r.images} images, ${r.genuinePairs} genuine + ${r.impostorPairs} impostor pairs, ${r.folds} folds by identity`,
    `  accuracy        ${pct(r.accuracy.mean, r.accuracy.std)} %  (mean ± std over folds; threshold from the other folds)`,
  ];
  for (const t of r.tar) {
    lines.push(
      `  TAR @ FAR=${t.far.toExponential(0)}  ${t.tar === null ? 'n/a' : pct(t.tar)}${t.tar === null ? '' : ' %'}  (on ${t.impostorPairs} impostor pairs: ${t.falseAcceptsAllowed} false accepts allowed)`,
    );
  }
  lines.push(`  ROC AUC         ${r.auc.toFixed(4)}`);
  lines.push(`  Rank-1          ${pct(r.rank1.accuracy)} %  (${r.rank1.gallery} gallery images, one per identity; ${r.rank1.probes} probes)`);
  return lines.join('\n');
}
