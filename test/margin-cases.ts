/**
 * The tests' parameter sets of each margin kind (not part of the library's
 * table, lib/margins.ts):
 *   TYPICAL: the case the suites run every kind at, every required parameter
 *     given. native/margin_math.h's MS_MARGIN_KINDS rows carry the same values
 *     (the native self-test runs this case); test/margin-kinds.test.ts checks
 *     that the two agree.
 *   PAPER: the parameters each kind's paper recommends (the integer ones, seed
 *     and counter, aside), which is where the training application trains
 *     them: every kind is also checked there.
 */
import type { MarginKindName } from '../lib/margins';

export const TYPICAL: Readonly<Record<MarginKindName, Readonly<Record<string, number>>>> = {
  softmax: {},
  arcface: { m: 0.5 },
  cosface: { m: 0.35 },
  // m1 < 1, so the multiplicative term is exercised too.
  combined: { m1: 0.95, m2: 0.45, m3: 0.1 },
  adaptive: {},
  'elastic-arc': { m: 0.5, sigma: 0.05, seed: 7, counter: 3 },
  'elastic-cos': { m: 0.35, sigma: 0.05, seed: 7, counter: 3 },
  cvm: { m1: 0.3, m2: 0.2 },
};

export const PAPER: Readonly<Record<MarginKindName, Readonly<Record<string, number>>>> = {
  softmax: {},
  arcface: { m: 0.5 },
  cosface: { m: 0.35 },
  combined: { m1: 1, m2: 0.3, m3: 0.2 },
  adaptive: { m1: 0.03, m2: 0.5 },
  'elastic-arc': { m: 0.5, sigma: 0.05 },
  'elastic-cos': { m: 0.35, sigma: 0.05 },
  cvm: { m1: 0.3, m2: 0.2 },
};
