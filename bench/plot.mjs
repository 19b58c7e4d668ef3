#!/usr/bin/env node
// plot.mjs — draws the benchmark's two figures with Vega-Lite (rendered to SVG by
// Vega in Node, no browser or canvas needed): time per call vs C and peak memory vs C,
// log-log, one line per implementation, one panel per pass.
//
//   node bench/plot.mjs [bench/results/bench.json]   # redraws the plots from a JSON file
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';

const MODE_LABEL = { fwd: 'forward', fwdbwd: 'forward + backward' };
const SUP = { 2: '²', 3: '³', 4: '⁴', 5: '⁵', 6: '⁶', 7: '⁷' };
const pow10 = (C) => {
  const e = Math.log10(C);
  return Number.isInteger(e) && SUP[e] ? `10${SUP[e]}` : C.toLocaleString('en-US');
};
// Axis labels 10³ … 10⁷ for the class counts.
const C_LABELS = "datum.value == 1000 ? '10³' : datum.value == 10000 ? '10⁴' : datum.value == 100000 ? '10⁵' : datum.value == 1000000 ? '10⁶' : datum.value == 10000000 ? '10⁷' : ''";

// One colour per implementation in both figures; dashed lines are references.
const COLORS = {
  'fused-cpu': '#d62728',
  'fused-cuda': '#9467bd',
  'fused-wasm': '#ff7f0e',
  ceiling: '#ff9896',
  'naive-tfjs-cpu': '#1f77b4',
  'naive-tfjs-wasm': '#2ca02c',
  floor: '#7f7f7f',
  device: '#c5b0d5',
};
const CEILING = 'GEMM ceiling cpu (the products alone)';
const FLOOR = 'inputs + outputs (the floor)';

// Decade (time) and power-of-4 (memory) ticks with their units.
const TIME_TICKS = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100, 1000];
const TIME_LABELS = "datum.value < 1e-3 ? format(datum.value * 1e6, '~g') + ' µs' : datum.value < 1 ? format(datum.value * 1e3, '~g') + ' ms' : format(datum.value, '~g') + ' s'";
const MEM_TICKS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536];
const MEM_LABELS = "datum.value < 1024 ? datum.value + ' MiB' : (datum.value / 1024) + ' GiB'";

/** Legend name of an implementation: its label, and where it stops working, if it does. */
function seriesNames(doc) {
  const names = new Map();
  const ids = [...new Set(doc.results.map((r) => r.id))];
  const short = { fwd: 'fwd', fwdbwd: 'fwd+bwd' };
  for (const id of ids) {
    const rs = doc.results.filter((r) => r.id === id).sort((a, b) => a.C - b.C);
    const stops = [];
    for (const mode of ['fwd', 'fwdbwd']) {
      const bad = rs.find((r) => r.mode === mode && r.status !== 'ok' && !r.status.includes('quick-mode'));
      if (!bad) continue;
      const why = bad.status.includes('memory') ? 'out of memory' : bad.status.includes('budget') || bad.status.includes('timed out') ? `> ${doc.config.runBudgetS} s per call` : 'error';
      stops.push({ mode, C: bad.C, why });
    }
    let name = rs[0].label;
    if (stops.length === 2 && stops[0].C === stops[1].C && stops[0].why === stops[1].why) name += `: ${stops[0].why} from C = ${pow10(stops[0].C)}`;
    else if (stops.length) name += `: ${stops.map((s) => `${short[s.mode]} ${s.why} from ${pow10(s.C)}`).join(', ')}`;
    names.set(id, name);
  }
  return names;
}

function timeRows(doc, names) {
  const rows = [];
  for (const r of doc.results) {
    if (r.status !== 'ok') continue;
    rows.push({ key: r.id, series: names.get(r.id), pass: MODE_LABEL[r.mode], C: r.C, t: r.medianS, lo: r.minS, hi: r.maxS, dashed: false });
    if (r.ceiling) rows.push({ key: 'ceiling', series: CEILING, pass: MODE_LABEL[r.mode], C: r.C, t: r.ceiling.medianS, lo: r.ceiling.minS, hi: r.ceiling.maxS, dashed: true });
  }
  return rows;
}

function memoryRows(doc, names) {
  const rows = [];
  const { N, d, sizes } = doc.config;
  for (const r of doc.results) {
    if (r.status === 'out of memory' && r.peakRssBytes) {
      // Where it ran out: a cross at the peak it had reached.
      rows.push({ key: r.id, series: names.get(r.id), pass: MODE_LABEL[r.mode], C: r.C, mib: r.peakRssBytes / 2 ** 20, dashed: false, oom: true });
    }
    if (r.status !== 'ok') continue;
    rows.push({ key: r.id, series: names.get(r.id), pass: MODE_LABEL[r.mode], C: r.C, mib: r.peakRssBytes / 2 ** 20, dashed: false });
    if (r.deviceMemoryBytes?.peakUsedSampled > 0) {
      rows.push({ key: 'device', series: `${r.label}: device memory`, pass: MODE_LABEL[r.mode], C: r.C, mib: r.deviceMemoryBytes.peakUsedSampled / 2 ** 20, dashed: true });
    }
  }
  for (const C of sizes) {
    for (const mode of ['fwd', 'fwdbwd']) {
      const bytes = 4 * (N * d + C * d + 2 * N) + (mode === 'fwdbwd' ? 4 * (N * d + C * d) : 0);
      rows.push({ key: 'floor', series: FLOOR, pass: MODE_LABEL[mode], C, mib: bytes / 2 ** 20, dashed: true });
    }
  }
  return rows;
}

function spec({ title, subtitle, rows, y, yTitle, ticks, tickLabels, withErrorBars }) {
  // Legend order: fused first, then the references, then the naive versions.
  const order = ['fused-cpu', 'fused-cuda', 'fused-wasm', 'ceiling', 'device', 'naive-tfjs-wasm', 'naive-tfjs-cpu', 'floor'];
  const keys = [...new Set(rows.map((r) => r.key))].sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const domain = keys.map((k) => rows.find((r) => r.key === k).series);
  const color = {
    field: 'series', type: 'nominal', title: null,
    scale: { domain, range: keys.map((k) => COLORS[k] ?? '#8c564b') },
    legend: { orient: 'bottom', direction: 'vertical', labelLimit: 1200, labelFontSize: 12, symbolStrokeWidth: 2.5, symbolType: 'stroke' },
  };
  const cs = rows.map((r) => r.C);
  const x = {
    field: 'C', type: 'quantitative', title: 'classes C (log)',
    scale: { type: 'log', domain: [Math.min(...cs) / 1.4, Math.max(...cs) * 1.4], nice: false },
    axis: { values: [...new Set(cs)], labelExpr: C_LABELS, grid: true, labelFontSize: 12 },
  };
  const vs = rows.flatMap((r) => [r[y], r.lo ?? r[y], r.hi ?? r[y]]);
  const lo = Math.min(...vs) / 1.6;
  const hi = Math.max(...vs) * 1.6;
  const yEnc = {
    field: y, type: 'quantitative', title: yTitle, scale: { type: 'log', domain: [lo, hi], nice: false },
    axis: { values: ticks.filter((t) => t >= lo && t <= hi), labelExpr: tickLabels, grid: true, labelFontSize: 11 },
  };
  const layer = [
    {
      transform: [{ filter: '!datum.oom' }],
      mark: { type: 'line', point: { filled: true, size: 45 }, strokeWidth: 2 },
      encoding: {
        x, y: yEnc, color,
        strokeDash: { field: 'dashed', type: 'nominal', scale: { domain: [false, true], range: [[1, 0], [5, 3]] }, legend: null },
        tooltip: [{ field: 'series' }, { field: 'C' }, { field: y }],
      },
    },
  ];
  if (rows.some((r) => r.oom)) {
    layer.push(
      { transform: [{ filter: 'datum.oom' }], mark: { type: 'point', shape: 'cross', filled: true, size: 140, angle: 45 }, encoding: { x, y: yEnc, color } },
      { transform: [{ filter: 'datum.oom' }], mark: { type: 'text', align: 'right', dx: -9, dy: -2, fontSize: 11 }, encoding: { x, y: yEnc, color, text: { value: 'out of memory' } } },
    );
  }
  if (withErrorBars) {
    layer.push({ mark: { type: 'rule', strokeWidth: 1.5 }, encoding: { x, y: { ...yEnc, field: 'lo' }, y2: { field: 'hi' }, color } });
  }
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle, anchor: 'start', fontSize: 15, subtitleFontSize: 11, subtitleColor: '#555' },
    data: { values: rows },
    facet: { column: { field: 'pass', type: 'nominal', title: null, sort: ['forward', 'forward + backward'], header: { labelFontSize: 13, labelFontWeight: 'bold' } } },
    spec: { width: 340, height: 280, layer },
    resolve: { scale: { y: 'shared' } },
    config: { background: 'white', font: 'DejaVu Sans, Helvetica, Arial, sans-serif', view: { stroke: '#ccc' }, axis: { gridColor: '#e4e4e4' } },
  };
}

async function toSvg(vlSpec) {
  const { spec: vgSpec } = vegaLite.compile(vlSpec);
  const view = new vega.View(vega.parse(vgSpec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

/** Writes time-vs-classes<suffix>.svg and memory-vs-classes<suffix>.svg; returns their paths. */
export async function renderPlots(doc, outDir, suffix = '') {
  const names = seriesNames(doc);
  const m = doc.machine;
  const where = `${m.cpuModel}, ${m.logicalCores} cores (fused: ${m.fused.simd} × ${m.fused.threads} threads)${m.gpu ? `, ${m.gpu.name}` : ''}; Node ${m.node}, tfjs ${m.tfjs}`;
  const shape = `N = ${doc.config.N}, d = ${doc.config.d}, adaptive margin, s = ${doc.config.scale}`;
  const files = [];
  const timeFile = path.join(outDir, `time-vs-classes${suffix}.svg`);
  fs.writeFileSync(timeFile, await toSvg(spec({
    title: 'Time per call vs number of classes',
    subtitle: [`${shape}; median of the timed calls, bars min–max`, 'a line ends where the next size would exceed the per-call budget or memory (see the legend)', where],
    rows: timeRows(doc, names), y: 't', yTitle: 'time per call (log)', ticks: TIME_TICKS, tickLabels: TIME_LABELS, withErrorBars: true,
  })));
  files.push(timeFile);
  const memFile = path.join(outDir, `memory-vs-classes${suffix}.svg`);
  fs.writeFileSync(memFile, await toSvg(spec({
    title: 'Peak memory vs number of classes',
    subtitle: [`${shape}; peak RSS of a process running one implementation, size and pass`, '×: the peak when it ran out of memory; a line ends where the next size was skipped', where],
    rows: memoryRows(doc, names), y: 'mib', yTitle: 'peak RSS (log)', ticks: MEM_TICKS, tickLabels: MEM_LABELS, withErrorBars: false,
  })));
  files.push(memFile);
  return files;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const file = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), 'results', 'bench.json'));
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  const suffix = path.basename(file, '.json').replace(/^bench/, '');
  const files = await renderPlots(doc, path.dirname(file), suffix);
  console.log(files.join('\n'));
}
