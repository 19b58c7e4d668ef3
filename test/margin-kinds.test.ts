// The table of margin kinds (lib/margins.ts) against the native one
// (native/margin_math.h's MS_MARGIN_KINDS, read through the addon's
// _marginKinds()), and what is derived from it: the public types (checked by
// the type-check of the tests, `tsc -p tsconfig.test.json`), the validation,
// the native parameters and the training app's help text.
import { describe, expect, test } from 'vitest';
import { ArgumentError, forward } from '../lib/index';
import { MARGIN_KINDS, MARGIN_KIND_NAMES, isOptionalParam, marginParams, nativeMarginParams } from '../lib/margins';
import { native } from '../lib/native';
import type { AdaptiveMargin, ArcFaceMargin, CombinedMargin, CosFaceMargin, CvmMargin, ElasticArcMargin, ElasticCosMargin, Margin, SoftmaxMargin } from '../lib/types';
import { marginKindsHelp, MARGIN_DEFAULTS } from '../train/src/run/config';
import { typical } from './helpers';
import { PAPER } from './margin-cases';
import { randomProblem } from './reference.mjs';

// The public margin types keep the shapes they had as hand-written interfaces.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const shapes: [
  Equal<SoftmaxMargin, { kind: 'softmax' }>,
  Equal<ArcFaceMargin, { kind: 'arcface'; m: number }>,
  Equal<CosFaceMargin, { kind: 'cosface'; m: number }>,
  Equal<CombinedMargin, { kind: 'combined'; m1: number; m2: number; m3: number }>,
  Equal<AdaptiveMargin, { kind: 'adaptive'; m1?: number; m2?: number }>,
  Equal<ElasticArcMargin, { kind: 'elastic-arc'; m: number; sigma: number; seed: number; counter?: number }>,
  Equal<ElasticCosMargin, { kind: 'elastic-cos'; m: number; sigma: number; seed: number; counter?: number }>,
  Equal<CvmMargin, { kind: 'cvm'; m1: number; m2: number }>,
  Equal<Margin, SoftmaxMargin | ArcFaceMargin | CosFaceMargin | CombinedMargin | AdaptiveMargin | ElasticArcMargin | ElasticCosMargin | CvmMargin>,
] = [true, true, true, true, true, true, true, true, true];

const SLOTS = ['m1', 'm2', 'm3'] as const;

describe('the TypeScript and the native table of margin kinds agree', () => {
  const rows = native._marginKinds();

  test('the same kinds in the same order, with the same codes and flags', () => {
    expect(shapes.every(Boolean)).toBe(true);
    expect(rows.map((r) => r.name)).toEqual(MARGIN_KIND_NAMES);
    for (const r of rows) {
      const k = MARGIN_KINDS[r.name as keyof typeof MARGIN_KINDS];
      expect({ name: r.name, code: r.code, angular: r.angular, rowMargins: r.rowMargins }).toEqual({ name: r.name, code: k.code, angular: k.angular, rowMargins: k.rowMargins });
    }
    expect(new Set(rows.map((r) => r.code)).size).toBe(rows.length);
  });

  test("each native parameter slot carries the TypeScript parameter the table puts there", () => {
    for (const r of rows) {
      const ts = Object.fromEntries(SLOTS.map((slot) => [slot, marginParams(r.name as keyof typeof MARGIN_KINDS).find(([, p]) => p.slot === slot)?.[0] ?? '']));
      expect(r.slots, r.name).toEqual(ts);
    }
  });

  test('the typical parameters are the same (the native self-test runs the TypeScript tests’ case)', () => {
    for (const r of rows) {
      const p = nativeMarginParams(typical(r.name as keyof typeof MARGIN_KINDS));
      expect(r.typical, r.name).toEqual({ m1: Math.fround(p.m1), m2: Math.fround(p.m2), m3: Math.fround(p.m3) });
    }
  });
});

describe('what the table gives', () => {
  const p = randomProblem(4, 6, 8, 1);

  test('every kind runs at its typical and its paper parameters; each required parameter left out, or a stranger added, is refused', () => {
    for (const kind of MARGIN_KIND_NAMES) {
      const paper = { kind, ...PAPER[kind], ...(MARGIN_KINDS[kind].rowMargins ? { seed: 1 } : {}) } as Margin;
      for (const m of [typical(kind), paper]) expect(Number.isFinite(forward(p, { margin: m, threads: 1 }).loss), JSON.stringify(m)).toBe(true);
      const full = typical(kind) as unknown as Record<string, unknown>;
      for (const [name, spec] of marginParams(kind)) {
        if (isOptionalParam(spec)) continue;
        const { [name]: _left, ...without } = full;
        expect(() => forward(p, { margin: without as unknown as Margin }), `${kind} without ${name}`).toThrow(new ArgumentError(`Expected margin.${name} (a number) for margin kind '${kind}' but received no such field`));
      }
      expect(() => forward(p, { margin: { ...full, q: 1 } as unknown as Margin }), kind).toThrow(/unknown option 'q'/);
    }
  });

  test('the native parameters: each in its slot, defaults where left out, 0 elsewhere', () => {
    expect(nativeMarginParams({ kind: 'adaptive' })).toEqual({ kind: 4, m1: 0.03, m2: 0.5, m3: 0 });
    expect(nativeMarginParams({ kind: 'elastic-cos', m: 0.3, sigma: 0.1, seed: 2 } as Margin)).toEqual({ kind: 6, m1: 0, m2: 0.3, m3: 0 });
    expect(nativeMarginParams({ kind: 'combined', m1: 0.9, m2: 0.4, m3: 0.15 } as Margin)).toEqual({ kind: 3, m1: 0.9, m2: 0.4, m3: 0.15 });
  });

  test('the table is frozen', () => {
    expect(Object.isFrozen(MARGIN_KINDS)).toBe(true);
    expect(Object.isFrozen(MARGIN_KINDS.adaptive.params.m1)).toBe(true);
    expect(() => {
      (MARGIN_KINDS.adaptive.params.m1 as { default: number }).default = 1;
    }).toThrow(TypeError);
  });

  test("the training app's --margin help lists every kind with its defaults", () => {
    const help = marginKindsHelp('  ').split('\n');
    expect(help.length).toBe(MARGIN_KIND_NAMES.length);
    for (const [i, kind] of MARGIN_KIND_NAMES.entries()) {
      expect(help[i].trim().startsWith(`${kind} `)).toBe(true);
      expect(help[i]).toContain(MARGIN_KINDS[kind].help);
      for (const [name, v] of Object.entries(MARGIN_DEFAULTS[kind])) expect(help[i]).toContain(`${name} ${v}`);
    }
    expect(help.find((l) => l.trim().startsWith('combined '))).toContain('— m1 1, m2 0.3, m3 0.2');
  });
});
