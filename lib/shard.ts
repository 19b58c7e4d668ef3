/**
 * Class sharding: each shard computes per-row partial statistics over its
 * own classes; mergeStats combines them (the online log-sum-exp merge of
 * docs/numerics.md §4, in shard order, so every process that merges
 * the same list gets bit-identical results). Moving the statistics between
 * processes (an all-gather) and summing the embeddings' gradient shares
 * (an all-reduce) is the caller's job.
 */
import { expected } from './errors';

/** One shard's partial statistics for N rows. */
export interface ShardStats {
  /** Running max of the shard's logits per row. */
  max: Float32Array;
  /** Σ exp(z − max) over the shard's classes per row. */
  sumExp: Float32Array;
  /** The same sum without the row's target class (= sumExp where the target is in another shard). */
  sumExpOther: Float32Array;
  /** The (margined) target logit where the row's label is in this shard, else NaN. */
  target: Float32Array;
  /** cos θ_y per row where the row's label is in this shard, else NaN. */
  targetCos?: Float32Array;
}

export interface MergedStats {
  /** Per-row log-sum-exp over all classes. */
  lse: Float32Array;
  /** Per-row p_target − 1, formed without cancellation (see target_terms in native/margin_math.h). */
  targetPm1: Float32Array;
  /** Per-row loss (0 for ignored rows). */
  perSample: Float32Array;
  /** Mean loss over rows with a target. */
  loss: number;
  /** Fraction of rows whose margined target logit is the largest logit. */
  accuracy: number;
  validRows: number;
}

export function mergeStats(parts: ShardStats[]): MergedStats {
  if (!Array.isArray(parts) || parts.length === 0) expected('a non-empty array of shard stats', 'mergeStats', parts);
  const n = parts[0].max.length;
  parts.forEach((p, k) => {
    for (const key of ['max', 'sumExp', 'sumExpOther', 'target'] as const) {
      if (!(p?.[key] instanceof Float32Array) || p[key].length !== n) expected(`Float32Array of length ${n}`, `parts[${k}].${key}`, p?.[key]);
    }
  });
  const lse = new Float32Array(n);
  const targetPm1 = new Float32Array(n);
  const perSample = new Float32Array(n);
  let total = 0;
  let valid = 0;
  let hits = 0;
  for (let i = 0; i < n; i++) {
    // Online LSE merge in float32 steps, the formula of lse_merge in
    // native/margin_math.h, carrying the target-free sum o beside l. Math.exp
    // may differ from expf in the last bit: sharded and unsharded runs agree to
    // rounding; processes merging the same list agree bit for bit.
    let m = -Infinity;
    let l = 0;
    let o = 0;
    let target = NaN;
    let mx = -Infinity;
    for (const p of parts) {
      const bm = p.max[i];
      const bl = p.sumExp[i];
      const bo = p.sumExpOther[i];
      if (!Number.isNaN(p.target[i])) target = p.target[i];
      if (bl === 0) continue;
      mx = Math.max(mx, bm);
      if (l === 0) {
        m = bm;
        l = bl;
        o = bo;
        continue;
      }
      const nm = Math.max(m, bm);
      const ea = Math.fround(Math.exp(m - nm));
      const eb = Math.fround(Math.exp(bm - nm));
      l = Math.fround(Math.fround(l * ea) + Math.fround(bl * eb));
      o = Math.fround(Math.fround(o * ea) + Math.fround(bo * eb));
      m = nm;
    }
    lse[i] = m + Math.log(l);
    if (!Number.isNaN(target)) {
      // target_terms: loss = log1p(q), p_y − 1 = −q/(1+q), q = o / exp(z_y − m).
      const dz = target - m;
      let loss: number;
      if (dz > -600) {
        const q = o / Math.exp(dz);
        loss = Math.log1p(q);
        targetPm1[i] = -q / (1 + q);
      } else {
        const full = m + Math.log(l);
        loss = full - target;
        targetPm1[i] = Math.exp(target - full) - 1;
      }
      perSample[i] = loss;
      total += perSample[i];
      valid++;
      if (target >= mx) hits++;
    }
  }
  return { lse, targetPm1, perSample, loss: valid ? total / valid : 0, accuracy: valid ? hits / valid : 0, validRows: valid };
}
