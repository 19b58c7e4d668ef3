/**
 * Partial FC class sampling: every class present in the batch (a positive)
 * is kept, and uniformly drawn other classes fill the set up to ⌈r·C⌉.
 * Deterministic in (seed, step). Labels are remapped to positions in the
 * sorted class index; −1 (ignored) and −2 (another shard's class) pass through.
 */

/** A small counter-seeded generator (SplitMix32-style mixing of a Weyl sequence). */
export function seededUniform(seed: number, stream: number): () => number {
  let state = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul((seed / 4294967296) >>> 0, 0x85ebca77) ^ Math.imul(stream >>> 0, 0xc2b2ae3d)) >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    z = (z ^ (z >>> 15)) >>> 0;
    return z / 4294967296;
  };
}

export function classSample(
  labels: Int32Array,
  classes: number,
  rate: number,
  seed: number,
  step: number,
): { labels: Int32Array; classIndex: Int32Array } {
  const want = Math.min(classes, Math.ceil(rate * classes));
  const isPositive = new Uint8Array(classes);
  let positives = 0;
  for (const y of labels) {
    if (y >= 0 && !isPositive[y]) {
      isPositive[y] = 1;
      positives++;
    }
  }
  const selected = new Uint8Array(isPositive);
  const extra = Math.max(0, want - positives);
  if (extra > 0) {
    // Partial Fisher–Yates over the non-positive classes.
    const pool = new Int32Array(classes - positives);
    for (let j = 0, q = 0; j < classes; j++) if (!isPositive[j]) pool[q++] = j;
    const rand = seededUniform(seed, step);
    for (let q = 0; q < extra; q++) {
      const pick = q + Math.floor(rand() * (pool.length - q));
      const t = pool[pick];
      pool[pick] = pool[q];
      pool[q] = t;
      selected[t] = 1;
    }
  }
  const classIndex = new Int32Array(positives + extra);
  const position = new Int32Array(classes).fill(-1);
  for (let j = 0, q = 0; j < classes; j++) {
    if (selected[j]) {
      position[j] = q;
      classIndex[q++] = j;
    }
  }
  const remapped = new Int32Array(labels.length);
  for (let i = 0; i < labels.length; i++) remapped[i] = labels[i] >= 0 ? position[labels[i]] : labels[i];
  return { labels: remapped, classIndex };
}
