/**
 * The verification protocol on synthetic embeddings with known answers:
 * perfectly separable identities give 100 % accuracy, TAR 1 and Rank-1 1;
 * random embeddings give chance (~50 %); the pairs follow the protocol
 * (all genuine pairs, as many impostors, folds by identity, fixed seed).
 */
import { describe, expect, test } from 'vitest';
import { bestThreshold, formatVerification, l2normalize, makePairs, rank1, roc, tarAtFar, verify } from '../src/eval/protocol';
import { Rng } from '../src/data/rng';

function gaussian(rng: Rng): number {
  const u = Math.max(rng.next(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
}

/** `ids` identities × `per` images; each identity a random direction, images = direction + noise. */
function synthetic(ids: number, per: number, dim: number, noise: number, seed: number) {
  const rng = new Rng(seed);
  const emb = new Float32Array(ids * per * dim);
  const labels = new Int32Array(ids * per);
  for (let c = 0; c < ids; c++) {
    const centre = Array.from({ length: dim }, () => gaussian(rng));
    for (let k = 0; k < per; k++) {
      const i = c * per + k;
      labels[i] = c;
      for (let d = 0; d < dim; d++) emb[i * dim + d] = centre[d] + noise * gaussian(rng);
    }
  }
  return { emb: l2normalize(emb, dim), labels, dim };
}

describe('pairs', () => {
  const labels = Int32Array.from([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10]);
  const p = makePairs(labels, 0);
  const genuine = (n: number) => (n * (n - 1)) / 2;

  test('every genuine pair, as many impostor pairs, none repeated', () => {
    const g = Array.from(p.same).filter((s) => s === 1).length;
    expect(g).toBe(genuine(3) + genuine(2) + genuine(4) + genuine(2) + genuine(3) + 5 * genuine(2) + genuine(3));
    expect(p.same.length - g).toBe(g);
    const keys = new Set<string>();
    for (let i = 0; i < p.a.length; i++) {
      const same = labels[p.a[i]] === labels[p.b[i]];
      expect(same).toBe(p.same[i] === 1);
      expect(p.a[i]).not.toBe(p.b[i]);
      const key = [Math.min(p.a[i], p.b[i]), Math.max(p.a[i], p.b[i])].join(',');
      expect(keys.has(key)).toBe(false);
      keys.add(key);
    }
  });

  test('10 folds split by identity, each with as many impostors as genuine pairs', () => {
    expect(p.folds).toBe(10);
    const foldOfId = new Map<number, number>();
    for (let i = 0; i < p.a.length; i++) {
      if (!p.same[i]) continue;
      const id = labels[p.a[i]];
      if (foldOfId.has(id)) expect(foldOfId.get(id)).toBe(p.fold[i]);
      foldOfId.set(id, p.fold[i]);
    }
    expect(foldOfId.size).toBe(11);
    for (let f = 0; f < 10; f++) {
      const inFold = Array.from(p.fold.keys()).filter((i) => p.fold[i] === f);
      const g = inFold.filter((i) => p.same[i]).length;
      expect(g).toBeGreaterThan(0);
      expect(inFold.length - g).toBe(g);
      // An impostor pair's first image belongs to an identity of its fold.
      for (const i of inFold) if (!p.same[i]) expect(foldOfId.get(labels[p.a[i]])).toBe(f);
    }
  });

  test('fixed seed → the same pairs; another seed → other impostors', () => {
    expect(makePairs(labels, 0)).toEqual(p);
    const q = makePairs(labels, 1);
    expect(Array.from(q.b)).not.toEqual(Array.from(p.b));
  });

  test('fewer identities than 10 → one fold per identity', () => {
    expect(makePairs(Int32Array.from([0, 0, 1, 1, 2, 2]), 0).folds).toBe(3);
    expect(() => makePairs(Int32Array.from([0, 0, 0]), 0)).toThrow(/at least 2 identities/);
  });
});

describe('known answers', () => {
  test('perfectly separable embeddings: 100 % accuracy, TAR 1 at both FARs, Rank-1 1, AUC 1', () => {
    const { emb, labels, dim } = synthetic(20, 6, 32, 0.05, 1);
    const r = verify(emb, dim, labels, { seed: 0 });
    expect(r.genuinePairs).toBe(20 * 15);
    expect(r.impostorPairs).toBe(20 * 15);
    expect(r.folds).toBe(10);
    expect(r.accuracy.mean).toBe(1);
    expect(r.accuracy.std).toBe(0);
    expect(r.accuracy.perFold).toEqual(new Array(10).fill(1));
    expect(r.tar.map((t) => t.far)).toEqual([0.1, 0.01]);
    expect(r.tar.map((t) => t.tar)).toEqual([1, 1]);
    expect(r.tar[1].falseAcceptsAllowed).toBe(3); // ⌊0.01 · 300⌋
    expect(r.auc).toBe(1);
    expect(r.rank1).toEqual({ accuracy: 1, probes: 20 * 5, gallery: 20 });
    expect(formatVerification(r)).toMatch(/100\.00 ± 0\.00 %/);
  });

  test('random embeddings: chance level', () => {
    const rng = new Rng(5);
    const ids = 40;
    const per = 8;
    const dim = 64;
    const emb = l2normalize(Float32Array.from({ length: ids * per * dim }, () => gaussian(rng)), dim);
    const labels = Int32Array.from({ length: ids * per }, (_, i) => Math.floor(i / per));
    const r = verify(emb, dim, labels, { seed: 0 });
    expect(r.accuracy.mean).toBeGreaterThan(0.44);
    expect(r.accuracy.mean).toBeLessThan(0.56);
    expect(Math.abs(r.auc - 0.5)).toBeLessThan(0.05);
    expect(r.tar[0].tar as number).toBeLessThan(0.2);
    expect(r.rank1.accuracy).toBeLessThan(0.1);
  });

  test('a weak but real signal lands in between', () => {
    const { emb, labels, dim } = synthetic(30, 6, 64, 1.5, 2);
    const r = verify(emb, dim, labels);
    expect(r.accuracy.mean).toBeGreaterThan(0.6);
    expect(r.accuracy.mean).toBeLessThan(0.99);
  });
});

describe('pieces', () => {
  test('bestThreshold separates when it can, midway between the classes', () => {
    const scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9];
    const same = [0, 0, 0, 1, 1, 1];
    expect(bestThreshold(scores, same, [0, 1, 2, 3, 4, 5])).toBeCloseTo(0.5, 12);
    // With an outlier the best threshold still misclassifies only it.
    const t = bestThreshold([0.1, 0.95, 0.3, 0.7, 0.8, 0.9], same, [0, 1, 2, 3, 4, 5]);
    expect(t).toBeGreaterThan(0.3);
    expect(t).toBeLessThan(0.7);
  });

  test('tarAtFar: hand-computed operating points; too few impostors → null', () => {
    // 10 impostors 0.00 … 0.09 (plus 0.5 as the top one), 4 genuine.
    const imp = [0.5, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09];
    const gen = [0.6, 0.45, 0.2, 0.05];
    const scores = Float32Array.from([...imp, ...gen]);
    const same = Uint8Array.from([...imp.map(() => 0), ...gen.map(() => 1)]);
    const r = tarAtFar(scores, same, 0.1); // 1 false accept allowed: threshold = the 2nd highest impostor (0.09)
    expect(r.falseAcceptsAllowed).toBe(1);
    expect(r.threshold).toBeCloseTo(0.09, 6);
    expect(r.tar).toBe(3 / 4);
    expect(tarAtFar(scores, same, 0.01)).toMatchObject({ tar: null, impostorPairs: 10, falseAcceptsAllowed: 0 });
  });

  test('roc runs from (0, 0) to (1, 1) and its AUC is the ranking probability', () => {
    const scores = Float32Array.from([0.9, 0.8, 0.7, 0.6]);
    const same = Uint8Array.from([1, 0, 1, 0]);
    const r = roc(scores, same);
    expect([r.far[0], r.tar[0]]).toEqual([0, 0]);
    expect([r.far[r.far.length - 1], r.tar[r.tar.length - 1]]).toEqual([1, 1]);
    expect(r.auc).toBeCloseTo(0.75, 12); // 3 of the 4 genuine/impostor orderings are right
  });

  test('rank1: one gallery image per identity, nearest wins', () => {
    // Two identities on two axes; one probe of identity 1 points at identity 0.
    const emb = Float32Array.from([1, 0, 1, 0, 0, 1, 0, 1, 1, 0.1]);
    const labels = Int32Array.from([0, 0, 1, 1, 1]);
    l2normalize(emb, 2);
    const r = rank1(emb, 2, labels, 0);
    expect(r.gallery).toBe(2);
    expect(r.probes).toBe(3);
    expect([2 / 3, 1]).toContain(r.accuracy);
  });

  test('l2normalize gives unit rows and leaves zero rows at zero', () => {
    const e = l2normalize(Float32Array.from([3, 4, 0, 0]), 2);
    expect(Array.from(e)).toEqual([0.6000000238418579, 0.800000011920929, 0, 0]);
  });
});
