/**
 * Decoded, resized training images kept in memory between epochs: reading,
 * decoding (PNG/PGM/JPEG) and resizing an image costs about as much as a
 * seventh of its step on the backbone at 32×32 (bench/train_step.mjs), and
 * every epoch repeated it for every image. The cache holds what
 * data.loadBatch produces (the same bits), keyed by the image and the input
 * shape, up to a memory budget; past it, images are read from disk as before.
 * Unreadable images are never cached (loadBatch's policy and warning apply
 * each time they are met).
 */
import { loadBatch, type BadImagePolicy, type DataSource, type LoadedBatch, type Sample } from './datasets';

/** Default budget: the Omniglot background set at 64×64 is 79 MB, ORL at 112×92 16 MB. */
export const DEFAULT_CACHE_BYTES = 1 << 30;

interface Shape {
  height: number;
  width: number;
  channels: number;
}

export class DecodedCache {
  private readonly images = new Map<string, Float32Array>();
  private bytes = 0;
  constructor(
    private readonly src: DataSource,
    private readonly shape: Shape,
    private readonly budgetBytes = DEFAULT_CACHE_BYTES,
  ) {}

  /** What loadBatch(src, samples, shape, policy, warn) returns, from memory where the image was decoded before. */
  load(samples: Sample[], policy: BadImagePolicy, warn: (msg: string) => void = () => {}): LoadedBatch {
    const per = this.shape.height * this.shape.width * this.shape.channels;
    const misses = samples.filter((s) => !this.images.has(s.ref));
    const fresh = misses.length ? loadBatch(this.src, misses, this.shape, policy, warn) : null;
    const bad = new Set(fresh?.skipped.map((s) => s.ref));
    const decoded = new Map<string, Float32Array>();
    if (fresh) {
      let k = 0;
      for (const s of misses) {
        if (bad.has(s.ref)) continue;
        const img = fresh.data.slice(k * per, (k + 1) * per);
        decoded.set(s.ref, img);
        if (this.bytes + 4 * per <= this.budgetBytes) {
          this.images.set(s.ref, img);
          this.bytes += 4 * per;
        }
        k++;
      }
    }
    const kept = samples.filter((s) => !bad.has(s.ref));
    const data = new Float32Array(kept.length * per);
    kept.forEach((s, i) => data.set(this.images.get(s.ref) ?? (decoded.get(s.ref) as Float32Array), i * per));
    return { data, labels: Int32Array.from(kept.map((s) => s.label)), skipped: fresh?.skipped ?? [] };
  }

  get cachedImages(): number {
    return this.images.size;
  }
}
