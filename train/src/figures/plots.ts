/**
 * Plots as SVG files, drawn by vega-lite (compiled to vega, rendered
 * headless with renderer 'none'): training curves, ROC curves, and the
 * distribution of the target angle θ_y over training.
 */
import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { pathToFileURL } from 'url';

export type VlSpec = Record<string, unknown>;

/**
 * vega and vega-lite are ES modules with top-level await: CommonJS cannot
 * require() them, and TypeScript's commonjs output turns import() into
 * require(). They run in a short-lived child `node` (an ES module script):
 * one process renders a list of specs.
 */
const RENDER_SCRIPT = (vegaUrl: string, vlUrl: string) => `
import * as vega from ${JSON.stringify(vegaUrl)};
import * as vl from ${JSON.stringify(vlUrl)};
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => (input += d));
process.stdin.on('end', async () => {
  const out = [];
  for (const spec of JSON.parse(input)) {
    const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
    out.push(await view.toSVG());
    view.finalize();
  }
  process.stdout.write(JSON.stringify(out));
});
`;

export function renderSvgs(specs: VlSpec[]): string[] {
  if (!specs.length) return [];
  const full = specs.map((s) => ({ $schema: 'https://vega.github.io/schema/vega-lite/v6.json', background: 'white', ...s }));
  const script = RENDER_SCRIPT(pathToFileURL(require.resolve('vega')).href, pathToFileURL(require.resolve('vega-lite')).href);
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { input: JSON.stringify(full), maxBuffer: 1 << 28, encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`rendering plots with vega-lite failed: ${r.stderr.trim().split('\n').slice(-3).join(' ')}`);
  return JSON.parse(r.stdout) as string[];
}

export async function renderSvg(spec: VlSpec): Promise<string> {
  return renderSvgs([spec])[0];
}

/** Renders and writes several plots at once (one child process). */
export function writeSvgs(files: { file: string; spec: VlSpec }[]): string[] {
  const svgs = renderSvgs(files.map((f) => f.spec));
  files.forEach((f, i) => {
    fs.mkdirSync(path.dirname(f.file), { recursive: true });
    fs.writeFileSync(f.file, svgs[i]);
  });
  return files.map((f) => f.file);
}

export async function writeSvg(file: string, spec: VlSpec): Promise<string> {
  return writeSvgs([{ file, spec }])[0];
}

export interface EpochMetrics {
  epoch: number;
  lr?: number;
  loss?: number;
  trainAcc?: number;
  valAcc?: number;
  valStd?: number;
  tar1e2?: number | null;
  rank1?: number;
}

export function trainingCurvesSpec(rows: EpochMetrics[], title: string): VlSpec {
  const long: { epoch: number; metric: string; value: number }[] = [];
  const add = (epoch: number, metric: string, v: number | null | undefined) => {
    if (typeof v === 'number' && Number.isFinite(v)) long.push({ epoch, metric, value: v });
  };
  for (const r of rows) {
    add(r.epoch, 'training loss', r.loss);
    add(r.epoch, 'training accuracy (margined logits)', r.trainAcc);
    add(r.epoch, 'verification accuracy (held-out ids)', r.valAcc);
    add(r.epoch, 'TAR @ FAR=1e-2', r.tar1e2);
    add(r.epoch, 'Rank-1 identification', r.rank1);
    add(r.epoch, 'learning rate', r.lr);
  }
  return {
    title,
    data: { values: long },
    facet: {
      field: 'metric',
      type: 'nominal',
      title: null,
      sort: ['training loss', 'training accuracy (margined logits)', 'learning rate', 'verification accuracy (held-out ids)', 'TAR @ FAR=1e-2', 'Rank-1 identification'],
    },
    columns: 3,
    spec: {
      width: 220,
      height: 150,
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'epoch', type: 'quantitative', title: 'epoch (0 = before training)', axis: { tickMinStep: 1 } },
        y: { field: 'value', type: 'quantitative', title: null, scale: { zero: false } },
      },
    },
    resolve: { scale: { y: 'independent' } },
  };
}

export function rocSpec(curves: { label: string; far: number[]; tar: number[] }[], title: string): VlSpec {
  const values: { far: number; tar: number; model: string }[] = [];
  for (const c of curves) {
    c.far.forEach((f, i) => {
      if (f > 0) values.push({ far: f, tar: c.tar[i], model: c.label });
    });
  }
  return {
    title,
    width: 380,
    height: 300,
    data: { values },
    mark: { type: 'line', interpolate: 'step-after' },
    encoding: {
      x: { field: 'far', type: 'quantitative', scale: { type: 'log' }, title: 'false accept rate (impostor pairs accepted)' },
      y: { field: 'tar', type: 'quantitative', scale: { domain: [0, 1] }, title: 'true accept rate (genuine pairs accepted)' },
      color: { field: 'model', type: 'nominal', title: null, legend: { orient: 'bottom-right', labelLimit: 400 } },
    },
  };
}

/** θ_y histograms (1 row per epoch × bin) and per-epoch percentiles. */
export function thetaSpec(epochs: { epoch: number; theta: number[] }[], title: string, binDeg = 3): VlSpec {
  const hist: { epoch: number; theta: number; fraction: number }[] = [];
  const pct: { epoch: number; p10: number; p50: number; p90: number; mean: number }[] = [];
  for (const e of epochs) {
    if (!e.theta.length) continue;
    const bins = new Array(Math.ceil(180 / binDeg)).fill(0);
    for (const t of e.theta) bins[Math.min(bins.length - 1, Math.max(0, Math.floor(t / binDeg)))]++;
    bins.forEach((c, i) => hist.push({ epoch: e.epoch, theta: (i + 0.5) * binDeg, fraction: c / e.theta.length }));
    const s = e.theta.slice().sort((a, b) => a - b);
    const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
    pct.push({ epoch: e.epoch, p10: q(0.1), p50: q(0.5), p90: q(0.9), mean: s.reduce((a, b) => a + b, 0) / s.length });
  }
  return {
    title: { text: [title, 'left: distribution of θ_y per epoch; right: median and 10–90 % band'], anchor: 'start' },
    hconcat: [
      {
        width: 380,
        height: 260,
        data: { values: hist },
        mark: { type: 'line' },
        encoding: {
          x: { field: 'theta', type: 'quantitative', title: 'θ_y (degrees) between embedding and its class centre', scale: { domain: [0, 180] } },
          y: { field: 'fraction', type: 'quantitative', title: `fraction of training rows per ${binDeg}° bin` },
          color: { field: 'epoch', type: 'quantitative', scale: { scheme: 'viridis' }, title: 'epoch' },
          detail: { field: 'epoch', type: 'nominal' },
        },
      },
      {
        width: 260,
        height: 260,
        data: { values: pct },
        layer: [
          { mark: { type: 'area', opacity: 0.25 }, encoding: { x: { field: 'epoch', type: 'quantitative', axis: { tickMinStep: 1 } }, y: { field: 'p10', type: 'quantitative', title: 'θ_y (degrees)', scale: { domain: [0, 180] } }, y2: { field: 'p90' } } },
          { mark: { type: 'line', point: true }, encoding: { x: { field: 'epoch', type: 'quantitative' }, y: { field: 'p50', type: 'quantitative' } } },
        ],
      },
    ],
  };
}

/** Grouped bars of the compare table (mean ± std over seeds). */
export function compareSpec(rows: { loss: string; dataset: string; mean: number; std: number }[], title: string): VlSpec {
  return {
    title,
    data: { values: rows.map((r) => ({ ...r, lo: r.mean - r.std, hi: r.mean + r.std })) },
    facet: { column: { field: 'dataset', type: 'nominal', title: null } },
    spec: {
      width: 260,
      height: 220,
      layer: [
        {
          mark: { type: 'point', filled: true, size: 80 },
          encoding: {
            y: { field: 'loss', type: 'nominal', sort: null, title: null, axis: { labelLimit: 400 } },
            x: { field: 'mean', type: 'quantitative', title: 'verification accuracy (%)', scale: { zero: false } },
            color: { field: 'loss', type: 'nominal', legend: null },
          },
        },
        { mark: { type: 'rule' }, encoding: { y: { field: 'loss', type: 'nominal', sort: null }, x: { field: 'lo', type: 'quantitative' }, x2: { field: 'hi' } } },
      ],
    },
    resolve: { scale: { x: 'independent' } },
  };
}
