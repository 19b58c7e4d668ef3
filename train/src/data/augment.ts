/**
 * Random affine augmentation of training images (in place, after resizing):
 * rotation, isotropic scale, shear and translation drawn per image, applied
 * about the image centre with bilinear sampling; a sample outside the image
 * repeats the nearest edge pixel (the paper-white of a character, the
 * background of a face). This is the augmentation of the one-shot
 * literature (Koch et al. 2015: rotation, shear, scale, translation), and,
 * with a horizontal flip where mirror images are the same identity (faces,
 * not characters), of face recognition.
 *
 * The draws come from the caller's RNG in a fixed order per image (rotation,
 * scale, shear, dy, dx), so a seed gives the same augmented batch.
 */
import { ArgumentError } from 'margin-softmax';
import type { Rng } from './rng';

export interface AffineRanges {
  /** Rotation drawn uniformly in ±rotate degrees. */
  rotate: number;
  /** Scale drawn uniformly in [1 − scale, 1 + scale]. */
  scale: number;
  /** Shear (x by y) drawn uniformly in ±shear degrees. */
  shear: number;
  /** Translation drawn uniformly in ±shift pixels, each axis (continuous). */
  shift: number;
}

export function checkAffineRanges(r: AffineRanges): void {
  const ok = (v: number, max: number) => Number.isFinite(v) && v >= 0 && v <= max;
  if (!ok(r.rotate, 180)) throw new ArgumentError(`Expected --rotate in [0, 180] degrees but received ${r.rotate}`);
  if (!ok(r.scale, 0.9)) throw new ArgumentError(`Expected --scale-jitter in [0, 0.9] but received ${r.scale}`);
  if (!ok(r.shear, 60)) throw new ArgumentError(`Expected --shear in [0, 60] degrees but received ${r.shear}`);
  if (!ok(r.shift, 1e6)) throw new ArgumentError(`Expected --shift ≥ 0 pixels but received ${r.shift}`);
}

/** True when the ranges change anything (rotation, scale or shear; a pure integer shift has its own, exact path). */
export function isAffine(r: AffineRanges): boolean {
  return r.rotate > 0 || r.scale > 0 || r.shear > 0;
}

/**
 * The 2×2 map from output to input coordinates (about the centre) and the
 * input offset of the output centre, for one image's draw.
 */
export function drawAffine(r: AffineRanges, rng: Rng): { m: [number, number, number, number]; ty: number; tx: number } {
  const u = () => 2 * rng.next() - 1;
  const rot = (u() * r.rotate * Math.PI) / 180;
  const s = 1 + u() * r.scale;
  const sh = Math.tan((u() * r.shear * Math.PI) / 180);
  const ty = u() * r.shift;
  const tx = u() * r.shift;
  // Forward map A = R(rot) · S(s) · Shear(sh) on (x, y); the sampler needs A⁻¹.
  const c = Math.cos(rot);
  const n = Math.sin(rot);
  // A = [[c, −n], [n, c]] · s · [[1, sh], [0, 1]] = s·[[c, c·sh − n], [n, n·sh + c]]
  const a = s * c;
  const b = s * (c * sh - n);
  const d = s * n;
  const e = s * (n * sh + c);
  const det = a * e - b * d;
  return { m: [e / det, -b / det, -d / det, a / det], ty, tx };
}

/** Applies one drawn affine map to the H×W×C image at `offset` of `data`, in place (`scratch`: at least H·W·C floats). */
export function warpAffine(
  data: Float32Array,
  offset: number,
  h: number,
  w: number,
  ch: number,
  t: { m: [number, number, number, number]; ty: number; tx: number },
  scratch: Float32Array,
): void {
  if (h < 2 || w < 2) return;
  const size = h * w * ch;
  scratch.set(data.subarray(offset, offset + size));
  const [ixx, ixy, iyx, iyy] = t.m;
  const cy = (h - 1) / 2;
  const cx = (w - 1) / 2;
  for (let y = 0; y < h; y++) {
    const oy = y - cy - t.ty;
    for (let x = 0; x < w; x++) {
      const ox = x - cx - t.tx;
      // Input coordinates of output pixel (x, y), clamped to the image (edge repeat).
      const sx = Math.min(w - 1, Math.max(0, ixx * ox + ixy * oy + cx));
      const sy = Math.min(h - 1, Math.max(0, iyx * ox + iyy * oy + cy));
      const x0 = Math.min(w - 2, Math.floor(sx));
      const y0 = Math.min(h - 2, Math.floor(sy));
      const fx = sx - x0;
      const fy = sy - y0;
      const p00 = (y0 * w + x0) * ch;
      const p01 = p00 + ch;
      const p10 = p00 + w * ch;
      const p11 = p10 + ch;
      const d = offset + (y * w + x) * ch;
      for (let k = 0; k < ch; k++) {
        const top = scratch[p00 + k] + fx * (scratch[p01 + k] - scratch[p00 + k]);
        const bottom = scratch[p10 + k] + fx * (scratch[p11 + k] - scratch[p10 + k]);
        data[d + k] = top + fy * (bottom - top);
      }
    }
  }
}
