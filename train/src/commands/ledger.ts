/**
 * A comparison that accumulates over days: one JSON file per finished run
 * (loss × seed) in a results folder that is committed (docs/results/NAME/),
 * and a report that merges whatever files exist, says which runs are still
 * missing, and gives each loss's paired differences against a reference loss
 * (ArcFace by default) seed by seed. Runs are trained one at a time by a
 * script (train/examples/compare-omniglot.sh) that skips the runs whose file
 * exists, so an interrupted comparison continues where it stopped.
 *
 *   node train/dist/commands/ledger.js record RUN_DIR [EVAL_JSON] OUT_FILE
 *       RUN_DIR: a train run folder (config.json, metrics.jsonl, eval.json);
 *       EVAL_JSON: `eval --n-way … --json` of its checkpoint (the one-shot result)
 *   node train/dist/commands/ledger.js report DIR --losses arcface,… --seeds 0,1,2 [--reference arcface]
 *       writes DIR/compare.md and prints it
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Margin } from 'margin-softmax';
import { isDefaultOption, marginLabel } from '../run/config';
import { lossFolder, meanStd, parseLosses } from './sweep';

/** One finished run, as committed. */
export interface LedgerEntry {
  format: 'margin-softmax/ledger-run';
  version: 1;
  loss: string;
  margin: Margin;
  seed: number;
  /** The training configuration (without its output folder). */
  config: Record<string, unknown>;
  epochs: number;
  /** Verification on the held-out identities after the last epoch. */
  verification: { accuracy: number; std: number; tar1e2: number | null; rank1: number; auc: number } | null;
  /** N-way K-shot on the held-out identities, where evaluated. */
  oneShot: { ways: number; shots: number; episodes: number; accuracy: number; ci95: number } | null;
  imgPerSec: number | null;
  trainSeconds: number;
  recordedAt: string;
}

/** The file name of a run in the results folder. */
export function entryFile(dir: string, margin: Margin, seed: number): string {
  return path.join(dir, `${lossFolder(margin)}-seed${seed}.json`);
}

/** A finished run folder (and its one-shot evaluation) as a ledger entry. */
export function entryOfRun(runDir: string, evalJson: string | null): LedgerEntry {
  const read = (f: string) => JSON.parse(fs.readFileSync(path.join(runDir, f), 'utf8'));
  const config = read('config.json') as Record<string, unknown> & { margin: Margin; seed: number; epochs: number };
  const rows = fs
    .readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
  const last = rows.filter((r) => r.epoch > 0).at(-1);
  if (!last || last.epoch !== config.epochs) throw new Error(`${runDir} is not a finished run (last epoch ${last?.epoch ?? 0} of ${config.epochs})`);
  const val = last.val;
  const ev = evalJson ? JSON.parse(fs.readFileSync(evalJson, 'utf8')) : null;
  const os = ev?.oneShot;
  const trained = rows.filter((r) => r.epoch > 0);
  const seconds = trained.reduce((a, r) => a + r.trainSeconds, 0);
  const images = trained.reduce((a, r) => a + r.images, 0);
  const { out: _out, ...rest } = config;
  void _out;
  return {
    format: 'margin-softmax/ledger-run',
    version: 1,
    loss: marginLabel(config.margin),
    margin: config.margin,
    seed: config.seed,
    config: rest,
    epochs: config.epochs,
    verification: val ? { accuracy: val.accuracy, std: val.std, tar1e2: val.tar1e2, rank1: val.rank1, auc: val.auc } : null,
    oneShot: os ? { ways: os.ways, shots: os.shots, episodes: os.episodes, accuracy: os.accuracy, ci95: os.ci95 } : null,
    imgPerSec: seconds ? images / seconds : null,
    trainSeconds: seconds,
    recordedAt: new Date().toISOString(),
  };
}

export function readEntries(dir: string): LedgerEntry[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')))
    .filter((e) => e && e.format === 'margin-softmax/ledger-run') as LedgerEntry[];
}

type Metric = { name: string; unit: string; pick: (e: LedgerEntry) => number | null };
const METRICS: Metric[] = [
  { name: 'verification accuracy', unit: '%', pick: (e) => e.verification?.accuracy ?? null },
  { name: '20-way one-shot accuracy', unit: '%', pick: (e) => (e.oneShot && e.oneShot.ways === 20 && e.oneShot.shots === 1 ? e.oneShot.accuracy : null) },
];

const pct = (x: number) => (100 * x).toFixed(2);

/** `values` as "mean ± std" in percent (sign first where `signed`); one value has no spread, so its mean stands alone. */
function meanCell(values: number[], signed = false): string {
  if (!values.length) return '—';
  const { mean, std } = meanStd(values);
  const m = signed ? `${mean < 0 ? '−' : '+'}${pct(Math.abs(mean))}` : pct(mean);
  return values.length > 1 ? `${m} ± ${pct(std)}` : m;
}

// What makes two runs comparable: their configuration less loss, seed and the
// execution options. An option is absent from a configuration written before
// it existed, null where left unset, and at its default otherwise: all three
// mean the default (a run writes every option it has), so none of them enters
// the key and a new option does not part a comparison's old runs from its new
// ones.
const NOT_SETUP = new Set(['margin', 'seed', 'backend', 'workers']);
function setupKey(config: Record<string, unknown>): string {
  const set = Object.entries(config).filter(([k, v]) => !NOT_SETUP.has(k) && v !== null && v !== undefined && !isDefaultOption(k, v));
  return JSON.stringify(set.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * The merged report: per loss the mean ± std over the seeds present, the
 * runs still missing, and each loss minus the reference loss seed by seed
 * (mean ± std of the per-seed differences, seeds won). Entries whose
 * configuration differs from the reference's (other than loss and seed) are
 * listed apart, never merged.
 */
export function ledgerReport(entries: LedgerEntry[], losses: Margin[], seeds: number[], reference: string): string {
  const labels = losses.map(marginLabel);
  const ref = labels.find((l) => l === reference || l.startsWith(`${reference}(`));
  const byLoss = new Map(labels.map((l) => [l, new Map<number, LedgerEntry>()]));
  const recipe = entries.find((e) => e.loss === ref)?.config ?? entries[0]?.config;
  const recipeKey = recipe && setupKey(recipe);
  const foreign: LedgerEntry[] = [];
  for (const e of entries) {
    if (!byLoss.has(e.loss) || !seeds.includes(e.seed)) continue;
    if (recipeKey && setupKey(e.config) !== recipeKey) foreign.push(e);
    else byLoss.get(e.loss)!.set(e.seed, e);
  }
  const lines: string[] = [];
  const missing = labels.flatMap((l) => seeds.filter((s) => !byLoss.get(l)!.has(s)).map((s) => `${l} seed ${s}`));
  lines.push(`Runs present: ${labels.length * seeds.length - missing.length} of ${labels.length * seeds.length} (${labels.length} losses × seeds ${seeds.join(', ')}).`);
  lines.push(missing.length ? `Missing: ${missing.join('; ')}.` : 'Missing: none.');
  if (foreign.length) lines.push(`Left out (another configuration than the reference's runs): ${foreign.map((e) => `${e.loss} seed ${e.seed}`).join('; ')}.`);
  for (const m of METRICS) {
    lines.push('', `${m.name} (${m.unit}) on held-out identities, mean ± std over the seeds present (n)`, '', '| loss | mean ± std | n |', '|---|---:|---:|');
    for (const l of labels) {
      const v = [...byLoss.get(l)!.values()].map(m.pick).filter((x): x is number => x !== null);
      lines.push(`| ${l} | ${meanCell(v)} | ${v.length} |`);
    }
    if (!ref) continue;
    lines.push('', `Paired by seed: ${m.name} of each loss minus ${ref} (points; mean ± std of the per-seed differences; seeds won; n)`, '', '| loss | difference | won | n |', '|---|---:|---:|---:|');
    for (const l of labels.filter((x) => x !== ref)) {
      const d: number[] = [];
      for (const s of seeds) {
        const a = byLoss.get(l)!.get(s);
        const b = byLoss.get(ref)!.get(s);
        const x = a && m.pick(a);
        const y = b && m.pick(b);
        if (typeof x === 'number' && typeof y === 'number') d.push(x - y);
      }
      lines.push(`| ${l} | ${meanCell(d, true)} | ${d.filter((x) => x > 0).length} | ${d.length} |`);
    }
  }
  return lines.join('\n');
}

function main(argv: string[]): void {
  const [cmd, ...rest] = argv;
  if (cmd === 'record') {
    const [runDir, a, b] = rest;
    const [evalJson, outFile] = b ? [a, b] : [null, a];
    if (!runDir || !outFile) throw new Error('usage: ledger record RUN_DIR [EVAL_JSON] OUT_FILE');
    fs.mkdirSync(path.dirname(outFile), { recursive: true });
    fs.writeFileSync(outFile, JSON.stringify(entryOfRun(runDir, evalJson), null, 2) + '\n');
    return;
  }
  if (cmd === 'report') {
    const dir = rest[0];
    const opt = (name: string) => {
      const i = rest.indexOf(`--${name}`);
      return i >= 0 ? rest[i + 1] : undefined;
    };
    if (!dir || !opt('losses') || !opt('seeds')) throw new Error('usage: ledger report DIR --losses a,b,… --seeds 0,1,2 [--reference arcface]');
    const losses = parseLosses(opt('losses') as string);
    const seeds = (opt('seeds') as string).split(',').map(Number);
    const text = ledgerReport(readEntries(dir), losses, seeds, opt('reference') ?? 'arcface');
    fs.writeFileSync(path.join(dir, 'compare.md'), text + '\n');
    process.stdout.write(text + '\n');
    return;
  }
  throw new Error('usage: ledger record … | ledger report …');
}

if (require.main === module) {
  try {
    main(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  }
}
