/**
 * N-way K-shot classification on embeddings (Omniglot's one-shot protocol,
 * on held-out classes): an episode draws N classes, K support and Q query
 * images of each (without replacement); a query is classified by the
 * closest class prototype (the L2-normalised mean of its K support
 * embeddings; the image itself for K = 1) by cosine, and counts as correct
 * only when its own class scores strictly highest (a tie is an error). The
 * report is the mean episode accuracy over many episodes drawn with a fixed
 * seed, with the 95 % confidence interval of that mean, 1.96·s/√episodes
 * (s the sample std of the episode accuracies).
 *
 * Classes are drawn from all the given identities together (for Omniglot:
 * across alphabets, easier than the within-alphabet episodes of Lake et al.).
 */
import { ArgumentError } from 'margin-softmax';
import { Rng, subSeed } from '../data/rng';

export interface OneShotOptions {
  /** N: classes per episode. */
  ways: number;
  /** K: support images per class. */
  shots: number;
  /** Episodes (default 1000). */
  episodes?: number;
  /** Query images per class and episode (default 1). */
  queries?: number;
  seed?: number;
}

export interface OneShotResult {
  ways: number;
  shots: number;
  queries: number;
  episodes: number;
  /** Identities with at least K + Q images, the pool the episodes draw from. */
  eligibleIdentities: number;
  /** Mean episode accuracy. */
  accuracy: number;
  /** Half-width of the 95 % confidence interval of the mean. */
  ci95: number;
  perEpisode: number[];
}

function checkInt(v: number, name: string, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new ArgumentError(`Expected an integer ≥ ${min} for ${name} but received ${v}`);
}

/** N-way K-shot accuracy on L2-normalised embeddings (N×dim rows) with identity labels. */
export function nWayKShot(emb: Float32Array, dim: number, labels: Int32Array, o: OneShotOptions): OneShotResult {
  const episodes = o.episodes ?? 1000;
  const queries = o.queries ?? 1;
  checkInt(o.ways, 'ways (N)', 2);
  checkInt(o.shots, 'shots (K)', 1);
  checkInt(episodes, 'episodes', 1);
  checkInt(queries, 'queries', 1);
  if (emb.length !== labels.length * dim) throw new ArgumentError(`Expected ${labels.length}×${dim} embedding values but received ${emb.length}`);
  const byClass = new Map<number, number[]>();
  labels.forEach((l, i) => {
    const list = byClass.get(l);
    if (list) list.push(i);
    else byClass.set(l, [i]);
  });
  const need = o.shots + queries;
  const eligible = [...byClass.keys()].sort((a, b) => a - b).filter((c) => (byClass.get(c) as number[]).length >= need);
  if (eligible.length < o.ways) {
    throw new ArgumentError(`Expected at least ${o.ways} identities with ≥ ${need} images (K = ${o.shots} support + ${queries} query) for ${o.ways}-way evaluation but found ${eligible.length}`);
  }
  const rng = new Rng(subSeed(o.seed ?? 0, 'n-way-k-shot'));
  const protos = new Float32Array(o.ways * dim);
  const perEpisode: number[] = [];
  for (let e = 0; e < episodes; e++) {
    const classes = rng.shuffle(eligible.slice()).slice(0, o.ways);
    const queryRows: number[][] = [];
    protos.fill(0);
    classes.forEach((c, j) => {
      const imgs = rng.shuffle((byClass.get(c) as number[]).slice());
      for (const i of imgs.slice(0, o.shots)) for (let d = 0; d < dim; d++) protos[j * dim + d] += emb[i * dim + d];
      let s = 0;
      for (let d = 0; d < dim; d++) s += protos[j * dim + d] ** 2;
      const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
      for (let d = 0; d < dim; d++) protos[j * dim + d] *= inv;
      queryRows.push(imgs.slice(o.shots, need));
    });
    let correct = 0;
    queryRows.forEach((rows, own) => {
      for (const q of rows) {
        let ownScore = 0;
        let bestOther = -Infinity;
        for (let j = 0; j < o.ways; j++) {
          let s = 0;
          for (let d = 0; d < dim; d++) s += emb[q * dim + d] * protos[j * dim + d];
          if (j === own) ownScore = s;
          else if (s > bestOther) bestOther = s;
        }
        if (ownScore > bestOther) correct++;
      }
    });
    perEpisode.push(correct / (o.ways * queries));
  }
  const mean = perEpisode.reduce((a, b) => a + b, 0) / episodes;
  const std = episodes > 1 ? Math.sqrt(perEpisode.reduce((a, b) => a + (b - mean) ** 2, 0) / (episodes - 1)) : 0;
  return { ways: o.ways, shots: o.shots, queries, episodes, eligibleIdentities: eligible.length, accuracy: mean, ci95: (1.96 * std) / Math.sqrt(episodes), perEpisode };
}

/** "20-way 1-shot: 85.20 ± 0.71 % (95 % interval, 1000 episodes, seed 0; 61 identities)". */
export function formatOneShot(r: OneShotResult, seed = 0): string {
  return (
    `  ${r.ways}-way ${r.shots}-shot  ${(100 * r.accuracy).toFixed(2)} ± ${(100 * r.ci95).toFixed(2)} %  ` +
    `(mean ± 95 % interval over ${r.episodes} episodes, seed ${seed}; ${r.queries} quer${r.queries === 1 ? 'y' : 'ies'} per class; classes drawn from ${r.eligibleIdentities} held-out identities)`
  );
}
