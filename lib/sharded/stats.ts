/**
 * Class sharding: each shard computes per-row partial statistics over its
 * own classes; mergeStats combines them (the online log-sum-exp merge of
 * docs/numerics.md §4, in shard order, so every process that merges
 * the same list gets bit-identical results). Moving the statistics between
 * processes (an all-gather) and summing the embeddings' gradient shares
 * (an all-reduce) is the caller's job.
 */
import { expected } from '../errors';

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
    const row = mergeRow(parts, i);
    lse[i] = row.max + Math.log(row.sumExp);
    if (Number.isNaN(row.target)) continue;
    const terms = targetTerms(row);
    perSample[i] = terms.loss;
    targetPm1[i] = terms.targetPm1;
    total += perSample[i];
    valid++;
    if (row.target >= row.max) hits++;
  }
  return { lse, targetPm1, perSample, loss: valid ? total / valid : 0, accuracy: valid ? hits / valid : 0, validRows: valid };
}

/** One row over all shards: the largest logit, Σ exp(z − max), the same without the target, and the target logit (NaN: none). */
interface MergedRow {
  max: number;
  sumExp: number;
  sumExpOther: number;
  target: number;
}

/**
 * Online LSE merge of row i in float32 steps, the formula of lse_merge in
 * native/margin_math.h, carrying the target-free sum beside the full one.
 * Math.exp may differ from expf in the last bit: sharded and unsharded runs
 * agree to rounding; processes merging the same list agree bit for bit.
 */
function mergeRow(parts: ShardStats[], i: number): MergedRow {
  const row: MergedRow = { max: -Infinity, sumExp: 0, sumExpOther: 0, target: NaN };
  for (const p of parts) {
    if (!Number.isNaN(p.target[i])) row.target = p.target[i];
    const partSum = p.sumExp[i];
    if (partSum === 0) continue; // a shard with no class of this row
    const partMax = p.max[i];
    if (row.sumExp === 0) {
      row.max = partMax;
      row.sumExp = partSum;
      row.sumExpOther = p.sumExpOther[i];
      continue;
    }
    const max = Math.max(row.max, partMax);
    const rescaleRow = Math.fround(Math.exp(row.max - max));
    const rescalePart = Math.fround(Math.exp(partMax - max));
    row.sumExp = Math.fround(Math.fround(row.sumExp * rescaleRow) + Math.fround(partSum * rescalePart));
    row.sumExpOther = Math.fround(Math.fround(row.sumExpOther * rescaleRow) + Math.fround(p.sumExpOther[i] * rescalePart));
    row.max = max;
  }
  return row;
}

/**
 * target_terms of native/margin_math.h: loss = log1p(q), p_y − 1 = −q/(1+q),
 * q = Σexp(others) / exp(z_y − max); far below the max, from the full LSE.
 */
function targetTerms(row: MergedRow): { loss: number; targetPm1: number } {
  const dz = row.target - row.max;
  if (dz > -600) {
    const q = row.sumExpOther / Math.exp(dz);
    return { loss: Math.log1p(q), targetPm1: -q / (1 + q) };
  }
  const full = row.max + Math.log(row.sumExp);
  return { loss: full - row.target, targetPm1: Math.exp(row.target - full) - 1 };
}
