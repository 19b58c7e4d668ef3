/**
 * The target logit z_y(cos θ_y) of a margin kind, and its derivative
 * dz_y/dcos θ_y, evaluated point by point by native/margin_math.h's
 * target_logit: the function the CPU and CUDA kernels call, so a plot or a
 * check of the margin reads the kernels' own formula, not a copy of it.
 */
import { expected } from './errors';
import { DEFAULT_SCALE } from './loss';
import { MARGIN_KINDS, nativeMarginParams } from './margins';
import { native } from './native';
import type { Margin } from './types';
import { checkFloat32, rejectUnknownKeys, validateMargin } from './validate';

export interface TargetLogitOptions {
  /** Logit scale s. Default 64 (as the loss's). */
  scale?: number;
  /** The monotonic fallback where the margined angle passes π (angular kinds). Default true (as the loss's). */
  fallback?: boolean;
  /**
   * The row's margin m_i of the elastic kinds (the loss draws it from N(m, sigma²)).
   * Default: the margin's m. The other kinds have none and do not read it.
   */
  rowMargin?: number;
}

const OPTION_NAMES = ['scale', 'fallback', 'rowMargin'] as const;

/**
 * z_y and dz_y/dcos θ_y at one cosine in [−1, 1], as the loss computes them
 * (in fp32). Angular kinds clamp cos θ to [−1 + 10⁻⁷, 1 − 10⁻⁷] first.
 */
export function targetLogit(margin: Margin, cosTheta: number, options: TargetLogitOptions = {}): { z: number; dz: number } {
  validateMargin(margin);
  if (typeof cosTheta !== 'number' || !(cosTheta >= -1 && cosTheta <= 1)) expected('a number in [-1, 1]', 'cosTheta', cosTheta);
  if (options === null || typeof options !== 'object') expected('an options object { scale?, fallback?, rowMargin? }', 'targetLogit options', options);
  rejectUnknownKeys(options, OPTION_NAMES, 'targetLogit options');
  const scale = options.scale === undefined ? DEFAULT_SCALE : checkFloat32(options.scale, 'options.scale', { min: 0, minExclusive: true });
  if (options.fallback !== undefined && typeof options.fallback !== 'boolean') expected('a boolean', 'options.fallback', options.fallback);
  const rowMargin = options.rowMargin ?? meanRowMargin(margin);
  if (typeof rowMargin !== 'number' || !Number.isFinite(rowMargin)) expected('a finite number', 'options.rowMargin', rowMargin);
  return native._targetLogit({ ...nativeMarginParams(margin), scale, fallback: options.fallback ?? true }, cosTheta, rowMargin);
}

/** The elastic kinds' mean margin m; 0 for the kinds without row margins. */
function meanRowMargin(margin: Margin): number {
  return MARGIN_KINDS[margin.kind].rowMargins ? (margin as Extract<Margin, { seed: number }>).m : 0;
}
