/**
 * The margin kinds: one table, from which the public margin types
 * (lib/types.ts), the validation (lib/validate.ts), the native kind codes and
 * parameter slots (lib/native.ts, lib/loss.ts) and the help texts are derived.
 *
 * Adding a kind: its math and its row of MS_MARGIN_KINDS in
 * native/margin_math.h, its row here (same name and code; a test checks the
 * two tables agree), its formula in the tests' float64 reference, its cases
 * in test/margin-cases.ts.
 */

/** How one margin parameter is checked and where it travels to the native side. */
export interface MarginParamSpec {
  /** The field of ms::MarginParams it is passed in (none: used in TypeScript only, e.g. the elastic draws). */
  readonly slot?: 'm1' | 'm2' | 'm3';
  /** The value used when the field is absent (makes the field optional). */
  readonly default?: number;
  /** Optional without a default (the elastic kinds' counter). */
  readonly optional?: true;
  /** A non-negative safe integer rather than a float32 parameter in [0, MAX_PARAMETER]. */
  readonly integer?: true;
}

/** One row of the table. */
export interface MarginKindSpec {
  /** ms::MarginKind's integer value (native/margin_math.h). */
  readonly code: number;
  /** One line for help texts: the loss and its target logit. */
  readonly help: string;
  /** The parameters, in the order error messages and help texts list them. */
  readonly params: Readonly<Record<string, MarginParamSpec>>;
  /** ms::is_angular: the target logit is s·cos φ(θ) with a margined angle φ (the π fallback applies). */
  readonly angular: boolean;
  /** ms::has_row_margin: each row draws its own margin m_i ~ N(m, sigma²) (keyed by seed, counter, row). */
  readonly rowMargins: boolean;
}

const ELASTIC_PARAMS = {
  m: { slot: 'm2' },
  sigma: {},
  seed: { integer: true },
  counter: { optional: true, integer: true },
} as const;

export const MARGIN_KINDS = deepFreeze({
  softmax: {
    code: 0,
    help: 'normalised softmax: z = s·cos θ for every class',
    params: {},
    angular: false,
    rowMargins: false,
  },
  arcface: {
    code: 1,
    help: 'ArcFace: z_y = s·cos(θ_y + m)',
    params: { m: { slot: 'm2' } },
    angular: true,
    rowMargins: false,
  },
  cosface: {
    code: 2,
    help: 'CosFace: z_y = s·(cos θ_y − m)',
    params: { m: { slot: 'm2' } },
    angular: false,
    rowMargins: false,
  },
  combined: {
    code: 3,
    help: 'combined margin (InsightFace): z_y = s·(cos(m1·θ_y + m2) − m3)',
    params: { m1: { slot: 'm1' }, m2: { slot: 'm2' }, m3: { slot: 'm3' } },
    angular: true,
    rowMargins: false,
  },
  adaptive: {
    code: 4,
    help: 'adaptive angular margin: z_y = s·cos(θ_y + m1·sin²θ_y + m2)',
    params: { m1: { slot: 'm1', default: 0.03 }, m2: { slot: 'm2', default: 0.5 } },
    angular: true,
    rowMargins: false,
  },
  'elastic-arc': {
    code: 5,
    help: 'ElasticFace-Arc: ArcFace with a per-row margin m_i ~ N(m, sigma²)',
    params: ELASTIC_PARAMS,
    angular: true,
    rowMargins: true,
  },
  'elastic-cos': {
    code: 6,
    help: 'ElasticFace-Cos: CosFace with a per-row margin m_i ~ N(m, sigma²)',
    params: ELASTIC_PARAMS,
    angular: false,
    rowMargins: true,
  },
  cvm: {
    code: 7,
    help: 'CVM: z_y = s·(cos θ_y − m1·sin²θ_y), z_j = s·(cos θ_j + m2·cos²θ_j)',
    params: { m1: { slot: 'm1' }, m2: { slot: 'm2' } },
    angular: false,
    rowMargins: false,
  },
} as const satisfies Record<string, MarginKindSpec>);

/** The kind names, `'softmax' | 'arcface' | …`. */
export type MarginKindName = keyof typeof MARGIN_KINDS;

/** The parameters of kind K that a margin object must give. */
export type RequiredParamNames<K extends MarginKindName> = {
  [N in keyof (typeof MARGIN_KINDS)[K]['params']]: (typeof MARGIN_KINDS)[K]['params'][N] extends { default: number } | { optional: true } ? never : N;
}[keyof (typeof MARGIN_KINDS)[K]['params']];

/** The parameters of kind K that may be left out. */
export type OptionalParamNames<K extends MarginKindName> = Exclude<keyof (typeof MARGIN_KINDS)[K]['params'], RequiredParamNames<K>>;

/**
 * The margin object of kind K: `{ kind: K }` and the kind's parameters as
 * number fields (optional where the table gives a default or marks them
 * optional), flattened into one object type. M is internal.
 */
export type MarginOf<K extends MarginKindName, M = { kind: K } & { [N in RequiredParamNames<K>]: number } & { [N in OptionalParamNames<K>]?: number }> = {
  [F in keyof M]: M[F];
};

/** The kind names in table order (ms::MarginKind's order). */
export const MARGIN_KIND_NAMES = Object.keys(MARGIN_KINDS) as MarginKindName[];

/** A kind's parameters as [name, spec] pairs, in table order. */
export function marginParams(kind: MarginKindName): [string, MarginParamSpec][] {
  return Object.entries(MARGIN_KINDS[kind].params as Readonly<Record<string, MarginParamSpec>>);
}

/** Whether a parameter may be left out (it has a default, or is optional). */
export function isOptionalParam(p: MarginParamSpec): boolean {
  return p.default !== undefined || p.optional === true;
}

/**
 * A margin's (kind code, m1, m2, m3) as ms::MarginParams takes them: each
 * parameter in its slot (its default where absent), the other slots 0.
 */
export function nativeMarginParams(margin: { kind: MarginKindName }): { kind: number; m1: number; m2: number; m3: number } {
  const out = { kind: MARGIN_KINDS[margin.kind].code, m1: 0, m2: 0, m3: 0 };
  const given = margin as unknown as Record<string, number | undefined>;
  for (const [name, p] of marginParams(margin.kind)) {
    if (p.slot) out[p.slot] = given[name] ?? p.default ?? 0;
  }
  return out;
}

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (v && typeof v === 'object' && !Object.isFrozen(v)) deepFreeze(v);
  return Object.freeze(o);
}
