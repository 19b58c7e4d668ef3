/**
 * Parameter sweeps for `compare`: the --losses list with parameterised and
 * grid entries, the run folder of each loss, and the paper's Table 2 layout
 * (the adaptive loss over m1 × m2, mean ± std over seeds, with the per-seed
 * difference against m1 = 0 at the same m2, which is ArcFace with m = m2).
 *
 *   --losses softmax,arcface:m=0.4,adaptive:m1=0.01|0.03|0.05:m2=0.45|0.5|0.55
 *
 * An entry is `kind[:name=value]...`; a value may list alternatives with `|`,
 * which expands the entry to every combination. An adaptive entry with
 * alternatives (a grid) also gets the m1 = 0 runs of each of its m2 values,
 * the baseline that Table 2's differences need.
 */
import { ArgumentError, MARGIN_KIND_NAMES, type Margin } from 'margin-softmax';
import { MARGIN_DEFAULTS, makeMargin, marginLabel } from '../run/config';

const KINDS: readonly string[] = MARGIN_KIND_NAMES;

function parseValue(text: string, name: string, entry: string): number {
  const x = Number(text);
  if (text.trim() === '' || !Number.isFinite(x) || x < 0) {
    throw new ArgumentError(`Expected a finite number ≥ 0 for ${name} in --losses entry ${JSON.stringify(entry)} but received ${JSON.stringify(text)}`);
  }
  return x;
}

/** Every combination of the listed values, in order (first name slowest). */
function combinations(names: string[], values: number[][]): Record<string, number>[] {
  let out: Record<string, number>[] = [{}];
  names.forEach((name, i) => {
    out = out.flatMap((partial) => values[i].map((v) => ({ ...partial, [name]: v })));
  });
  return out;
}

/** One --losses entry (`adaptive:m1=0.01|0.03:m2=0.5`) → its margins. */
export function parseLossEntry(entry: string): Margin[] {
  const [kind, ...params] = entry.trim().split(':');
  if (!KINDS.includes(kind)) {
    throw new ArgumentError(`Expected a loss kind (one of ${KINDS.join(', ')}) in --losses entry ${JSON.stringify(entry)} but received ${JSON.stringify(kind)}`);
  }
  const allowed = Object.keys(MARGIN_DEFAULTS[kind as Margin['kind']]);
  const names: string[] = [];
  const values: number[][] = [];
  for (const p of params) {
    const eq = p.indexOf('=');
    const name = eq < 0 ? p : p.slice(0, eq);
    if (eq < 0) throw new ArgumentError(`Expected name=value in --losses entry ${JSON.stringify(entry)} but received ${JSON.stringify(p)}`);
    if (!allowed.includes(name)) {
      throw new ArgumentError(`Expected a parameter of ${kind} (${allowed.join(', ') || 'it has none'}) in --losses entry ${JSON.stringify(entry)} but received ${JSON.stringify(name)}`);
    }
    if (names.includes(name)) throw new ArgumentError(`Expected each parameter once in --losses entry ${JSON.stringify(entry)} but ${name} is given twice`);
    names.push(name);
    values.push(p.slice(eq + 1).split('|').map((v) => parseValue(v, name, entry)));
  }
  const combos = combinations(names, values);
  const isGrid = values.some((v) => v.length > 1);
  if (kind === 'adaptive' && isGrid) {
    // The baseline of each m2: m1 = 0 (θ + m2, ArcFace's margin through the adaptive kernel).
    const m1Of = (c: Record<string, number>) => c.m1 ?? MARGIN_DEFAULTS.adaptive.m1;
    const m2Of = (c: Record<string, number>) => c.m2 ?? MARGIN_DEFAULTS.adaptive.m2;
    const m2s = [...new Set(combos.map(m2Of))];
    const missing = m2s.filter((m2) => !combos.some((c) => m1Of(c) === 0 && m2Of(c) === m2));
    combos.unshift(...missing.map((m2) => ({ m1: 0, m2 })));
  }
  return combos.map((c) => makeMargin(kind, c, 0));
}

/** The whole --losses value: comma-separated entries, duplicates dropped (first kept). */
export function parseLosses(text: string): Margin[] {
  const entries = text.split(',').map((e) => e.trim());
  if (entries.some((e) => e === '')) throw new ArgumentError(`Expected comma-separated loss entries for --losses but received ${JSON.stringify(text)}`);
  const seen = new Set<string>();
  const out: Margin[] = [];
  for (const m of entries.flatMap(parseLossEntry)) {
    const label = marginLabel(m);
    if (!seen.has(label)) out.push(m);
    seen.add(label);
  }
  return out;
}

/**
 * The folder of a loss's runs under the data set's folder: the kind alone for
 * the kind's default parameters (the folder older compare runs used, so
 * --resume finds them), the kind and its parameters otherwise.
 */
export function lossFolder(m: Margin): string {
  const defaults = MARGIN_DEFAULTS[m.kind];
  const params = Object.entries(m).filter(([k]) => k in defaults);
  if (params.every(([k, v]) => defaults[k] === v)) return m.kind;
  return [m.kind, ...params.map(([k, v]) => `${k}_${v}`)].join('-');
}

// ---- Table 2 ---------------------------------------------------------------------

/** What the table needs of a compare cell: its margin and the per-seed accuracies. */
export interface SweepCell {
  margin?: Margin;
  dataset: string;
  seeds: number[];
  accuracy: number[];
}

/** Mean and sample std (n − 1; 0 for one value) over seeds. */
export function meanStd(v: number[]): { mean: number; std: number } {
  const mean = v.reduce((a, b) => a + b, 0) / Math.max(1, v.length);
  const std = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0;
  return { mean, std };
}

/** Points (%) with a real minus sign, "−0.00" shown as "+0.00". */
function signed(x: number): string {
  const shown = (100 * Math.abs(x)).toFixed(2);
  return `${x < 0 && shown !== '0.00' ? '−' : '+'}${shown}`;
}

/** a − b seed by seed, over the seeds both have. */
export function pairedDifferences(a: SweepCell, b: SweepCell): number[] {
  const out: number[] = [];
  a.seeds.forEach((s, k) => {
    const j = b.seeds.indexOf(s);
    if (j >= 0) out.push(a.accuracy[k] - b.accuracy[j]);
  });
  return out;
}

/**
 * Table 2 of each data set whose adaptive cells span at least two m1 or two
 * m2 values: verification accuracy (%) with rows m1 and columns m2, then the
 * paired-by-seed difference of each m1 > 0 cell against m1 = 0 of its m2
 * (mean ± std of the per-seed differences, and the seeds won). Null when no
 * data set has such a grid.
 */
export function formatSweep(cells: SweepCell[]): string | null {
  const parts: string[] = [];
  for (const dataset of [...new Set(cells.map((c) => c.dataset))]) {
    const grid = cells.filter((c) => c.dataset === dataset && c.margin?.kind === 'adaptive') as (SweepCell & { margin: { kind: 'adaptive'; m1: number; m2: number } })[];
    const m1s = [...new Set(grid.map((c) => c.margin.m1))].sort((x, y) => x - y);
    const m2s = [...new Set(grid.map((c) => c.margin.m2))].sort((x, y) => x - y);
    if (m1s.length < 2 && m2s.length < 2) continue;
    const at = (m1: number, m2: number) => grid.find((c) => c.margin.m1 === m1 && c.margin.m2 === m2);
    const header = [`| m1 \\ m2 | ${m2s.join(' | ')} |`, `|---:|${m2s.map(() => '---:').join('|')}|`];
    const acc = m1s.map((m1) => {
      const row = m2s.map((m2) => {
        const c = at(m1, m2);
        if (!c || !c.accuracy.length) return '—';
        const { mean, std } = meanStd(c.accuracy);
        return `${(100 * mean).toFixed(2)} ± ${(100 * std).toFixed(2)}`;
      });
      return `| ${m1} | ${row.join(' | ')} |`;
    });
    const seeds = [...new Set(grid.flatMap((c) => c.seeds))].sort((x, y) => x - y);
    parts.push(
      `Adaptive margin sweep on ${dataset}: verification accuracy (%), rows m1, columns m2, mean ± std over seeds ${seeds.join(', ')}`,
      '',
      ...header,
      ...acc,
    );
    const diffRows = m1s
      .filter((m1) => m1 !== 0)
      .map((m1) => {
        const row = m2s.map((m2) => {
          const c = at(m1, m2);
          const base = at(0, m2);
          if (!c || !base) return '—';
          const d = pairedDifferences(c, base);
          if (!d.length) return 'n/a';
          const { mean, std } = meanStd(d);
          return `${signed(mean)} ± ${(100 * std).toFixed(2)} (${d.filter((x) => x > 0).length}/${d.length})`;
        });
        return `| ${m1} | ${row.join(' | ')} |`;
      });
    if (m1s.includes(0) && diffRows.length) {
      parts.push(
        '',
        `Paired by seed on ${dataset}: accuracy minus m1 = 0 at the same m2 (ArcFace with m = m2), points; mean ± std of the per-seed differences (seeds won)`,
        '',
        ...header,
        ...diffRows,
      );
    }
    parts.push('');
  }
  return parts.length ? parts.join('\n').trimEnd() : null;
}
