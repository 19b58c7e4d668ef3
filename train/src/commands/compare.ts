/**
 * The `compare` command as a function (the CLI parses the arguments and calls
 * it; tests call it directly): one run per data set × loss × seed, summarised
 * in Table-3 shaped comparison tables (and Table 2 for a sweep, ./sweep).
 */
import * as fs from 'fs';
import * as path from 'path';
import { MARGIN_KINDS, MARGIN_KIND_NAMES, type Margin } from 'margin-softmax';
import { readCheckpointState } from '../run/checkpoint';
import { isDefaultOption, makeMargin, marginLabel, type TrainConfig } from '../run/config';
import { MARGIN_PRESETS } from '../run/margin-presets';
import { train, type TrainResult } from '../run/train';
import { compareSpec, writeSvg } from '../figures/plots';
import { clock } from '../run/progress';
import type { VerificationResult } from '../eval/protocol';
import { formatSweep, lossFolder, meanStd } from './sweep';

/**
 * compare's default losses: the kinds ../run/margin-presets marks for it, the
 * baselines in the library's table order and then the proposed loss, each
 * with its paper's parameters.
 */
export const COMPARE_LOSSES: Margin[] = (['baseline', 'proposed'] as const).flatMap((role) =>
  MARGIN_KIND_NAMES.filter((k) => MARGIN_PRESETS[k].compare === role).map((k) => makeMargin(k)),
);

export interface CompareOptions {
  /** Data folders; null = the embedded default. */
  datasets: (string | null)[];
  losses: Margin[];
  seeds: number[];
  /** Shared training configuration (margin, data, out and seed are set per run). */
  base: TrainConfig;
  out: string;
  /**
   * Reuse the runs already in `out` whose config.json equals this run's
   * configuration: a finished one is read back, an interrupted one continues
   * from its checkpoint. Any other run is trained afresh. Default false.
   */
  resume?: boolean;
  verbose?: boolean;
  /** A progress bar per run and epoch on stderr (labelled with the run). Default false. */
  progress?: boolean;
  log?: (msg: string) => void;
}

/**
 * Whether the run folder holds a checkpoint of exactly this configuration
 * (every field of cfg, `out` aside, equal to the saved config.json): only such
 * a run can be continued and give what a fresh run of cfg would.
 */
export function resumableRun(cfg: TrainConfig): boolean {
  const file = path.join(cfg.out, 'config.json');
  if (!fs.existsSync(file) || !readCheckpointState(path.resolve(cfg.out))) return false;
  let saved: Record<string, unknown>;
  try {
    saved = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return false;
  }
  // The head's backend is where the run computes, not what it computes: a run may resume on another.
  // An option absent from the saved file did not exist when it was written: the run had its default.
  const same = (k: string, v: unknown) => (k in saved ? JSON.stringify(saved[k]) === JSON.stringify(v) : isDefaultOption(k, v));
  return Object.entries(cfg).every(([k, v]) => k === 'out' || k === 'backend' || same(k, v));
}

export interface CompareCell {
  loss: string;
  /** The loss with its parameters (absent for the untrained row and in older compare.json files). */
  margin?: Margin;
  dataset: string;
  seeds: number[];
  accuracy: number[];
  tar1e2: (number | null)[];
  /** Median target angle θ_y (degrees) over the last epoch's training batches (absent for the untrained row). */
  thetaP50?: (number | null)[];
  rank1: number[];
  mean: number;
  std: number;
  /** The evaluation's sizes (identities, pairs, folds), from the cell's last run. */
  meta?: Record<string, unknown>;
}

export interface CompareOutput {
  cells: CompareCell[];
  untrained: CompareCell[];
  text: string;
  json: Record<string, unknown>;
  wallSeconds: number;
}

function datasetName(d: string | null): string {
  return d ? path.basename(path.resolve(d)) : 'mnist (embedded)';
}

/** A loss's cell while its seeds run. */
type CellOfSeeds = CompareCell & { thetaP50: (number | null)[] };

/** What the runs of one compare share: its options, its clock, its log and the count of runs so far. */
interface CompareProgress {
  o: CompareOptions;
  t0: number;
  log: (msg: string) => void;
  done: number;
  total: number;
  /** Where the margin head ran, over all runs. */
  headBackends: Set<string>;
}

export async function runCompare(o: CompareOptions): Promise<CompareOutput> {
  const t0 = Date.now();
  const log = o.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const run: CompareProgress = { o, t0, log, done: 0, total: o.datasets.length * o.losses.length * o.seeds.length, headBackends: new Set() };
  const cells: CompareCell[] = [];
  const untrained: CompareCell[] = [];
  for (const data of o.datasets) {
    const d = await compareDataset(run, data);
    cells.push(...d.cells);
    if (d.untrained) untrained.push(d.untrained);
  }
  const text = `${formatCompare(cells, untrained, o)}
margin head backend: ${[...run.headBackends].join(', ') || 'none (every run was read back)'}`;
  const json = {
    headBackends: [...run.headBackends],
    protocol: 'verification accuracy on held-out identities (10 folds by identity, threshold from the other folds), mean ± sample std over seeds',
    datasets: o.datasets.map(datasetName),
    seeds: o.seeds,
    base: { ...o.base, margin: undefined, data: undefined, out: undefined },
    cells,
    untrained,
    wallSeconds: (Date.now() - t0) / 1000,
  };
  await writeCompareFiles(o, text, json, [...untrained, ...cells]);
  return { cells, untrained, text, json, wallSeconds: (Date.now() - t0) / 1000 };
}

/** Every loss × seed on one data set: a cell per loss, and the untrained backbone's row (from the first loss's runs). */
async function compareDataset(run: CompareProgress, data: string | null): Promise<{ cells: CompareCell[]; untrained?: CompareCell }> {
  const dataset = datasetName(data);
  const before = { accuracy: [] as number[], tar1e2: [] as (number | null)[], rank1: [] as number[] };
  const cells: CompareCell[] = [];
  for (const margin of run.o.losses) {
    const cell: CellOfSeeds = { loss: marginLabel(margin), margin, dataset, seeds: [], accuracy: [], tar1e2: [], rank1: [], thetaP50: [], mean: 0, std: 0 };
    for (const seed of run.o.seeds) {
      const { result, after } = await trainForCompare(run, data, margin, seed);
      addRun(cell, seed, result, after);
      if (margin === run.o.losses[0] && result.before) {
        before.accuracy.push(result.before.accuracy.mean);
        before.tar1e2.push(tarAt1e2(result.before));
        before.rank1.push(result.before.rank1.accuracy);
      }
    }
    Object.assign(cell, meanStd(cell.accuracy));
    cells.push(cell);
  }
  if (!before.accuracy.length) return { cells };
  const untrained = { loss: 'untrained backbone', dataset, seeds: run.o.seeds.slice(0, before.accuracy.length), ...before, ...meanStd(before.accuracy) };
  return { cells, untrained };
}

/** TAR at FAR = 1e−2, or null where the evaluation has no such point. */
function tarAt1e2(v: VerificationResult): number | null {
  return v.tar.find((t) => t.far === 0.01)?.tar ?? null;
}

/** One run of a compare (trained, continued or read back), logged; it must have evaluated the trained model. */
async function trainForCompare(run: CompareProgress, data: string | null, margin: Margin, seed: number): Promise<{ result: TrainResult; after: VerificationResult }> {
  const o = run.o;
  const dataset = datasetName(data);
  const m = MARGIN_KINDS[margin.kind].rowMargins ? { ...margin, seed } : margin;
  const cfg: TrainConfig = {
    ...o.base,
    data,
    seed,
    margin: m,
    out: path.join(o.out, dataset.replace(/[^A-Za-z0-9_.-]+/g, '_'), lossFolder(margin), `seed${seed}`),
  };
  run.done++;
  const resume = (o.resume ?? false) && resumableRun(cfg);
  if (!resume) fs.rmSync(cfg.out, { recursive: true, force: true });
  run.log(`[${run.done}/${run.total}] ${dataset} · ${marginLabel(margin)} · seed ${seed} (elapsed ${clock((Date.now() - run.t0) / 1000)})${resume ? ' · resuming the saved run' : ''}`);
  const r: TrainResult = await train(cfg, {
    verbose: o.verbose ?? false,
    progress: o.progress ?? o.verbose ?? false,
    progressLabel: `[${run.done}/${run.total}] ${margin.kind} seed ${seed} · `,
    plots: true,
    resume,
    log: o.verbose ? undefined : () => {},
  });
  if (!r.after) throw new Error(`compare: run ${cfg.out} produced no evaluation (is --eval-every 0?)`);
  run.headBackends.add(r.headBackend);
  const speed = r.imgPerSec ? `${r.imgPerSec.toFixed(1)} img/s` : 'no epochs left to train';
  run.log(`   verification ${(100 * r.after.accuracy.mean).toFixed(2)}% (untrained ${(100 * (r.before?.accuracy.mean ?? NaN)).toFixed(2)}%), ${speed}, ${clock(r.wallSeconds)}`);
  return { result: r, after: r.after };
}

/** A run's figures appended to its loss's cell. */
function addRun(cell: CellOfSeeds, seed: number, r: TrainResult, after: VerificationResult): void {
  cell.seeds.push(seed);
  cell.accuracy.push(after.accuracy.mean);
  cell.tar1e2.push(tarAt1e2(after));
  cell.thetaP50.push(r.epochs.filter((e) => e.theta).at(-1)?.theta?.p50 ?? null);
  cell.rank1.push(after.rank1.accuracy);
  cell.meta = { identities: { train: r.split.trainClasses.length, heldOut: r.split.valClasses.length }, genuinePairs: after.genuinePairs, impostorPairs: after.impostorPairs, folds: after.folds };
}

/** compare.json, compare.md and compare.svg in the compare's folder. */
async function writeCompareFiles(o: CompareOptions, text: string, json: Record<string, unknown>, rows: CompareCell[]): Promise<void> {
  fs.mkdirSync(o.out, { recursive: true });
  fs.writeFileSync(path.join(o.out, 'compare.json'), JSON.stringify(json, null, 2));
  fs.writeFileSync(path.join(o.out, 'compare.md'), text + '\n');
  await writeSvg(
    path.join(o.out, 'compare.svg'),
    compareSpec(
      rows.map((c) => ({ loss: c.loss, dataset: c.dataset, mean: 100 * c.mean, std: 100 * c.std })),
      `verification accuracy, mean ± std over ${o.seeds.length} seed(s)`,
    ),
  );
}

export function formatCompare(cells: CompareCell[], untrained: CompareCell[], o: Pick<CompareOptions, 'seeds' | 'base'>): string {
  const datasets = [...new Set(cells.map((c) => c.dataset))];
  const losses = [...new Set(cells.map((c) => c.loss))];
  const fmt = (c: CompareCell | undefined, pick: (c: CompareCell) => (number | null)[] | undefined, unit: number) => {
    if (!c) return '—';
    const v = (pick(c) ?? []).filter((x): x is number => x !== null);
    if (!v.length) return 'n/a';
    const { mean, std } = meanStd(v);
    return `${(unit * mean).toFixed(2)} ± ${(unit * std).toFixed(2)}`;
  };
  const table = (title: string, pick: (c: CompareCell) => (number | null)[] | undefined, unit = 100, withUntrained = true) => {
    const header = `| loss | ${datasets.join(' | ')} |`;
    const sep = `|---|${datasets.map(() => '---:').join('|')}|`;
    const rows = [...untrained.length && withUntrained ? ['untrained backbone'] : [], ...losses].map((l) => {
      const src = l === 'untrained backbone' ? untrained : cells;
      return `| ${l} | ${datasets.map((d) => fmt(src.find((c) => c.loss === l && c.dataset === d), pick, unit)).join(' | ')} |`;
    });
    return [`${title}`, '', header, sep, ...rows].join('\n');
  };
  const parts = [
    table(`Verification accuracy (%) on held-out identities, mean ± std over seeds ${o.seeds.join(', ')} (${o.base.epochs} epochs each)`, (c) => c.accuracy),
    '',
    table('TAR (%) at FAR = 1e-2', (c) => c.tar1e2),
    '',
    table('Rank-1 identification (%)', (c) => c.rank1),
  ];
  // The paper's argument is about where θ_y lies: the median on the training
  // batches of the last epoch (against the centres before each step's update).
  if (cells.some((c) => c.thetaP50?.some((t) => t !== null))) {
    parts.push('', table('Median target angle θ_y (degrees), last epoch, training batches', (c) => c.thetaP50, 1, false));
  }
  const paired = pairedTable(cells, datasets, losses);
  if (paired) parts.push('', paired);
  const sweep = formatSweep(cells);
  if (sweep) parts.push('', sweep);
  return parts.join('\n');
}

/**
 * The adaptive loss minus each other loss, seed by seed: runs with the same
 * seed share the backbone's initialisation, the head's and the batch order
 * (the identity split is --split-seed's, the same for every seed), so the
 * per-seed difference removes the part of the spread between seeds that every
 * loss shares. Null when there is no adaptive row or fewer than two seeds.
 */
export function pairedTable(cells: CompareCell[], datasets: string[], losses: string[]): string | null {
  // With several adaptive rows (a sweep), the paper's setting is the reference where present.
  const paper = marginLabel(COMPARE_LOSSES.find((m) => m.kind === 'adaptive') as Margin);
  const ref = losses.find((l) => l === paper) ?? losses.find((l) => l.startsWith('adaptive'));
  if (!ref || cells.every((c) => c.seeds.length < 2)) return null;
  const diff = (other: string, d: string): string => {
    const a = cells.find((c) => c.loss === ref && c.dataset === d);
    const b = cells.find((c) => c.loss === other && c.dataset === d);
    if (!a || !b) return '—';
    const deltas: number[] = [];
    a.seeds.forEach((s, k) => {
      const j = b.seeds.indexOf(s);
      if (j >= 0) deltas.push(a.accuracy[k] - b.accuracy[j]);
    });
    if (deltas.length < 2) return 'n/a';
    const { mean, std } = meanStd(deltas);
    const wins = deltas.filter((x) => x > 0).length;
    const shown = (100 * Math.abs(mean)).toFixed(2);
    const sign = mean < 0 && shown !== '0.00' ? '−' : '+';
    return `${sign}${shown} ± ${(100 * std).toFixed(2)} (${wins}/${deltas.length})`;
  };
  const rows = losses.filter((l) => l !== ref).map((l) => `| ${l} | ${datasets.map((d) => diff(l, d)).join(' | ')} |`);
  return [
    `Paired by seed: verification accuracy of ${ref} minus each loss (points; mean ± std of the per-seed differences; seeds won)`,
    '',
    `| versus | ${datasets.join(' | ')} |`,
    `|---|${datasets.map(() => '---:').join('|')}|`,
    ...rows,
  ].join('\n');
}
