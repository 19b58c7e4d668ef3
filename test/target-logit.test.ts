/**
 * targetLogit, the public per-kind target logit: it is the kernels' own
 * target_logit (native/margin_math.h, through the addon's _targetLogit) with
 * the margin's native parameters and the loss's defaults, it agrees with the
 * float64 reference, and every bad argument is an ArgumentError.
 */
import { describe, expect, test } from 'vitest';
import { ArgumentError, DEFAULT_SCALE, MARGIN_KIND_NAMES, targetLogit, type Margin } from '../lib/index';
import { nativeMarginParams } from '../lib/margins';
import { native } from '../lib/native';
import { ALL_KINDS, label, typical } from './helpers';
import { targetLogitRef } from './reference.mjs';

const COSINES = [-1, -0.999, -0.6, -0.1, 0, 0.25, 0.7, 0.999, 1].map(Math.fround);

describe('targetLogit', () => {
  test('is the kernels’ target_logit at the margin’s native parameters (bit for bit), defaults scale 64 and fallback on', () => {
    for (const m of ALL_KINDS) {
      const rowMargin = 'sigma' in m ? m.m : 0;
      for (const c of COSINES) {
        const want = native._targetLogit({ ...nativeMarginParams(m), scale: DEFAULT_SCALE, fallback: true }, c, rowMargin);
        expect(targetLogit(m, c), `${label(m)} c=${c}`).toEqual(want);
        const off = native._targetLogit({ ...nativeMarginParams(m), scale: 3, fallback: false }, c, 0.125);
        expect(targetLogit(m, c, { scale: 3, fallback: false, rowMargin: 0.125 }), `${label(m)} c=${c} options`).toEqual(off);
      }
    }
  });

  test('agrees with the float64 reference away from the clamp and the fallback’s kink', () => {
    for (const m of ALL_KINDS) {
      const rowM = 'sigma' in m ? m.m : 0;
      for (const c of [-0.3, 0, 0.4, 0.8].map(Math.fround)) {
        const got = targetLogit(m, c, { scale: 30 });
        const want = targetLogitRef(m, 30, c, { rowM });
        expect(Math.abs(got.z - want.z), `${label(m)} c=${c} z`).toBeLessThan(30 * 2e-6);
        expect(Math.abs(got.dz - want.dz), `${label(m)} c=${c} dz`).toBeLessThan(1e-4 * Math.max(30, Math.abs(want.dz)));
      }
    }
  });

  test('the elastic kinds take the row margin given, and their mean margin m by default', () => {
    const m: Margin = { kind: 'elastic-cos', m: 0.35, sigma: 0.05, seed: 1 };
    expect(targetLogit(m, 0.5, { scale: 1 }).z).toBeCloseTo(0.5 - 0.35, 6);
    expect(targetLogit(m, 0.5, { scale: 1, rowMargin: 0.2 }).z).toBeCloseTo(0.5 - 0.2, 6);
  });

  test('refuses bad arguments with an ArgumentError', () => {
    const m = typical('arcface');
    expect(() => targetLogit(m, 1.5)).toThrow(new ArgumentError('Expected a number in [-1, 1] for cosTheta but received 1.5'));
    expect(() => targetLogit(m, NaN)).toThrow(new ArgumentError('Expected a number in [-1, 1] for cosTheta but received NaN'));
    expect(() => targetLogit(m, '0.5' as unknown as number)).toThrow(ArgumentError);
    expect(() => targetLogit({ kind: 'arcface' } as unknown as Margin, 0.5)).toThrow(/Expected margin\.m \(a number\)/);
    expect(() => targetLogit({ kind: 'nope' } as unknown as Margin, 0.5)).toThrow(ArgumentError);
    expect(() => targetLogit(m, 0.5, { scale: 0 })).toThrow(/for options\.scale/);
    expect(() => targetLogit(m, 0.5, { scale: Infinity })).toThrow(/for options\.scale/);
    expect(() => targetLogit(m, 0.5, { fallback: 1 as unknown as boolean })).toThrow(new ArgumentError('Expected a boolean for options.fallback but received 1'));
    expect(() => targetLogit(m, 0.5, { rowMargin: NaN })).toThrow(new ArgumentError('Expected a finite number for options.rowMargin but received NaN'));
    expect(() => targetLogit(m, 0.5, { scael: 2 } as unknown as object)).toThrow(/unknown option 'scael' \(did you mean 'scale'\?\)/);
    expect(() => targetLogit(m, 0.5, null as unknown as object)).toThrow(ArgumentError);
    expect(MARGIN_KIND_NAMES.every((k) => Number.isFinite(targetLogit(typical(k), 0.5).z))).toBe(true);
  });
});
