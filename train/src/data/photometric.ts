/**
 * Random photometric augmentation of training images (in place, after
 * resizing and the geometric augmentation), on the [−1, 1] intensity scale
 * of ./images (toTensorData): per image a contrast factor about the image's
 * own mean, a brightness offset, and a linear lighting ramp across the image
 * in a random direction (one side lit, the other shaded), then clamped to
 * [−1, 1], the range a real image can take.
 *
 * Faces of one person photographed on different days differ most in their
 * lighting (ORL: a face lit from one side, the same face washed out), which
 * the geometric warp does not touch; these three are the cheapest models of
 * it. Ranges are fractions of the full intensity range (brightness 0.2: an
 * offset of up to ±20 % of black-to-white).
 *
 * When any range is non-zero, each image draws four numbers from the
 * caller's RNG in a fixed order (contrast, brightness, ramp amplitude, ramp
 * direction), so a seed gives the same augmented batch; with every range 0
 * nothing is drawn and the RNG stream is that of a run without it.
 */
import { ArgumentError } from 'margin-softmax';
import type { Rng } from './rng';

export interface PhotometricRanges {
  /** Contrast factor drawn uniformly in [1 − contrast, 1 + contrast], about the image's mean. */
  contrast: number;
  /** Offset drawn uniformly in ±brightness of the intensity range. */
  brightness: number;
  /** Lighting ramp: from −a to +a across the image along a random direction, a drawn in ±ramp of the range. */
  ramp: number;
}

export function checkPhotometricRanges(r: PhotometricRanges): void {
  const ok = (v: number, max: number) => Number.isFinite(v) && v >= 0 && v <= max;
  if (!ok(r.contrast, 0.9)) throw new ArgumentError(`Expected --contrast in [0, 0.9] but received ${r.contrast}`);
  if (!ok(r.brightness, 1)) throw new ArgumentError(`Expected --brightness in [0, 1] but received ${r.brightness}`);
  if (!ok(r.ramp, 1)) throw new ArgumentError(`Expected --lighting-ramp in [0, 1] but received ${r.ramp}`);
}

export function isPhotometric(r: PhotometricRanges): boolean {
  return r.contrast > 0 || r.brightness > 0 || r.ramp > 0;
}

/** Applies one image's draw of `r` to the H×W×C image at `offset` of `data`, in place. */
export function jitterPhotometric(data: Float32Array, offset: number, h: number, w: number, ch: number, r: PhotometricRanges, rng: Rng): void {
  const u = () => 2 * rng.next() - 1;
  const contrast = 1 + u() * r.contrast;
  // The [−1, 1] scale spans the range twice over a unit fraction.
  const brightness = 2 * u() * r.brightness;
  const amplitude = 2 * u() * r.ramp;
  const angle = Math.PI * rng.next();
  const size = h * w * ch;
  let mean = 0;
  for (let k = 0; k < size; k++) mean += data[offset + k];
  mean /= size;
  // The ramp's projection of a pixel, normalised so that the image's farthest
  // corners along the direction sit at ±1.
  const cy = (h - 1) / 2;
  const cx = (w - 1) / 2;
  const dy = Math.sin(angle);
  const dx = Math.cos(angle);
  const reach = Math.abs(dx) * cx + Math.abs(dy) * cy || 1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const light = brightness + (amplitude * ((x - cx) * dx + (y - cy) * dy)) / reach;
      const p = offset + (y * w + x) * ch;
      for (let k = 0; k < ch; k++) {
        const v = mean + contrast * (data[p + k] - mean) + light;
        data[p + k] = v < -1 ? -1 : v > 1 ? 1 : v;
      }
    }
  }
}
