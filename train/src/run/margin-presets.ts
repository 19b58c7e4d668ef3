/**
 * The training application's settings of each margin kind: the parameters
 * its paper recommends (the defaults of --margin and of `compare`; the
 * integer ones, seed and counter, aside) and whether `compare` trains it by
 * default (a baseline, or the proposed loss, listed after the baselines).
 * The kinds themselves, their parameters and their checks are the library's
 * table (MARGIN_KINDS); the type asks a row of every kind.
 */
import type { MarginKindName } from 'margin-softmax';

export interface MarginPreset {
  /** The paper's parameters. */
  readonly paper: Readonly<Record<string, number>>;
  /** Whether `compare` trains the kind by default. */
  readonly compare: 'baseline' | 'proposed' | null;
}

export const MARGIN_PRESETS: Readonly<Record<MarginKindName, MarginPreset>> = {
  softmax: { paper: {}, compare: 'baseline' },
  arcface: { paper: { m: 0.5 }, compare: 'baseline' },
  cosface: { paper: { m: 0.35 }, compare: 'baseline' },
  combined: { paper: { m1: 1, m2: 0.3, m3: 0.2 }, compare: 'baseline' },
  adaptive: { paper: { m1: 0.03, m2: 0.5 }, compare: 'proposed' },
  'elastic-arc': { paper: { m: 0.5, sigma: 0.05 }, compare: 'baseline' },
  'elastic-cos': { paper: { m: 0.35, sigma: 0.05 }, compare: null },
  cvm: { paper: { m1: 0.3, m2: 0.2 }, compare: 'baseline' },
};
