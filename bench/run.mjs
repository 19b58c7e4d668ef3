#!/usr/bin/env node
// run.mjs — the benchmark suite: the fused loss on every backend this
// machine has against the same loss written naively in tfjs (cpu and wasm backends),
// N = 128, d = 512, C ∈ {10³, 10⁴, 10⁵, 10⁶}, adaptive margin, s = 64, forward alone
// and forward + backward, with the GEMM ceiling of the same products in the same run.
//
//   npm run bench            # everything (about 10 minutes on 2 cores)
//   npm run bench:quick      # C ∈ {10³, 10⁴, 10⁵}, tighter budgets, under 2 minutes
//   node bench/run.mjs --sizes=1000,10000 --impls=fused-cpu,naive-tfjs-wasm --budget=30
//
// Options: --quick, --sizes=a,b,…, --impls=id,… (fused-cpu, fused-cuda, fused-wasm, naive-tfjs-cpu,
// naive-tfjs-wasm), --budget=S (per call, default 60; 10 with --quick), --cell-budget=S
// (timed seconds per implementation × size × pass, default 120; 10 with --quick),
// --reps=K (default 5), --out=DIR (default bench/results), --no-plots, --verbose,
// --deadline=S (with --quick, default 90: start no naive cell predicted to end after S seconds),
// --from=FILE (rewrite the Markdown table and the plots from a bench JSON; measures nothing).
//
// Each implementation × size × pass runs in its own child process (bench/worker.mjs), so
// every peak RSS is that run's alone. Before any timing, every implementation's loss
// and gradients are compared with the fused CPU result at the smallest size; a mismatch
// aborts with the numbers. A size that would take longer than the budget per call
// (predicted linearly in C from the largest size measured, × 1.5) or that follows an
// out-of-memory is recorded with that status, not with a number.
//
// Writes <out>/bench.json (every figure and the machine), <out>/bench.md (tables),
// <out>/time-vs-classes.svg and <out>/memory-vs-classes.svg; with --quick the names
// end in -quick (bench-quick.json, …) so that a quick run never replaces a full one.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  MARGIN, MiB, RESULTS_DIR, SCALE, fmtBytes, fmtC, fmtGflops, fmtTime, loadPackage, machineDescription, runChild, shortStatus,
  cliOption,
} from './common.mjs';

// ---------------------------------------------------------------- options
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const fromFile = cliOption('from', null); // re-render the table and plots from a bench JSON, no measuring
const fromDoc = fromFile ? JSON.parse(fs.readFileSync(fromFile, 'utf8')) : null;
const quick = fromDoc ? fromDoc.quick : flag('quick');
const verbose = flag('verbose');
const N = 128;
const d = 512;
const sizes = fromDoc ? fromDoc.config.sizes : cliOption('sizes', quick ? '1000,10000,100000' : '1000,10000,100000,1000000').split(',').map(Number).sort((a, b) => a - b);
const runBudgetS = Number(cliOption('budget', quick ? 10 : 60));
const cellBudgetS = Number(cliOption('cell-budget', quick ? 10 : 120));
const reps = fromDoc ? fromDoc.config.reps : Number(cliOption('reps', 5));
const deadlineS = Number(cliOption('deadline', quick ? 90 : Infinity)); // quick: start no naive cell that would end after this
const outDir = path.resolve(cliOption('out', fromFile ? path.dirname(fromFile) : RESULTS_DIR));
const suffix = quick ? '-quick' : '';
const MODES = ['fwd', 'fwdbwd'];
const MODE_LABEL = { fwd: 'forward', fwdbwd: 'forward + backward' };
const CHECK_TOL = { loss: 1e-4, forwardLoss: 1e-4, perSample: 1e-3, gradEmbeddings: 2e-3, gradWeights: 2e-3 };

// Linear prediction of a larger size from the largest one measured, with this margin
// (the naive versions grow faster than linearly once their N×C tensors leave the caches).
const PREDICTION_MARGIN = 1.5;

const t0 = Date.now();
const elapsed = () => (Date.now() - t0) / 1e3;
const log = (...a) => console.error(`[${elapsed().toFixed(0).padStart(4)} s]`, ...a);

const pkg = loadPackage();
const machine = machineDescription(pkg);
const available = pkg.backends();

const ALL_IMPLS = [
  { id: 'fused-cpu', label: 'fused cpu', impl: 'fused', backend: 'cpu', ceiling: true, warmup: 2, minReps: reps },
  { id: 'fused-cuda', label: 'fused cuda', impl: 'fused', backend: 'cuda', warmup: 2, minReps: reps },
  // The CPU backend's code compiled to WebAssembly (lib/wasm/): one thread, SIMD128.
  { id: 'fused-wasm', label: 'fused wasm', impl: 'fused', backend: 'wasm', warmup: 2, minReps: reps },
  { id: 'naive-tfjs-cpu', label: 'naive tfjs cpu', impl: 'naive', backend: 'cpu', warmup: 1, minReps: quick ? 1 : 3 },
  { id: 'naive-tfjs-wasm', label: 'naive tfjs wasm', impl: 'naive', backend: 'wasm', warmup: 1, minReps: quick ? 1 : 3 },
];
const wanted = cliOption('impls', null)?.split(',');
const impls = fromDoc
  ? ALL_IMPLS.filter((m) => fromDoc.results.some((r) => r.id === m.id))
  : ALL_IMPLS.filter((m) => (m.impl === 'naive' || available.includes(m.backend)) && (!wanted || wanted.includes(m.id)));
if (!impls.length) throw new Error(`no implementation selected (available: ${ALL_IMPLS.map((m) => m.id).join(', ')})`);

if (!fromDoc) log(`margin-softmax bench${quick ? ' --quick' : ''}: N=${N} d=${d} C∈{${sizes.join(', ')}}, ${impls.map((m) => m.id).join(', ')}`);
if (!fromDoc) log(`machine: ${machine.cpuModel}, ${machine.logicalCores} logical cores, fused ${machine.fused.simd} × ${machine.fused.threads} threads, load ${machine.loadAverageAtStart.map((x) => x.toFixed(1)).join(' ')}`);

// ---------------------------------------------------------------- correctness first
const checks = fromDoc ? fromDoc.checks : [];
if (!fromDoc) {
  // At the smallest size (at most 10³, so that the check stays cheap whatever --sizes says).
  const C = Math.min(sizes[0], 1000);
  for (const m of impls) {
    log(`check ${m.id} at C=${C}`);
    const r = await runChild({ kind: 'check', impl: m.impl, backend: m.backend, N, d, C }, { timeoutS: 300, echo: verbose });
    const failed = r.status !== 'ok' ? [`status ${r.status}: ${r.message ?? ''}`] : Object.entries(r.errors).filter(([k, v]) => !(v <= CHECK_TOL[k])).map(([k, v]) => `${k}: relative error ${v.toExponential(2)} > ${CHECK_TOL[k]}`);
    checks.push({ id: m.id, label: m.label, C, against: r.against, loss: r.loss, refLoss: r.refLoss, errors: r.errors, tolerances: CHECK_TOL, passed: failed.length === 0, failures: failed, wasmSimd: r.wasmSimd, wasmThreads: r.wasmThreads });
    if (r.wasmSimd !== undefined) machine.tfjsWasm = { simd: r.wasmSimd, threads: r.wasmThreads };
  }
  const bad = checks.filter((c) => !c.passed);
  for (const c of checks) log(`  ${c.passed ? 'ok  ' : 'FAIL'} ${c.id.padEnd(16)} vs ${c.against}: loss ${c.loss} (ref ${c.refLoss}); ${Object.entries(c.errors ?? {}).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(', ')}`);
  if (bad.length) {
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `bench${suffix}.json`);
    fs.writeFileSync(file, JSON.stringify({ status: 'aborted: correctness check failed', machine, checks }, null, 2));
    console.error(`\nCorrectness check failed; no timing was done. Numbers in ${file}:`);
    for (const c of bad) console.error(`  ${c.id} (C=${c.C}, against ${c.against}):\n    ${c.failures.join('\n    ')}`);
    process.exit(1);
  }
}

// ---------------------------------------------------------------- timing
const results = fromDoc ? fromDoc.results : [];
const lastOk = new Map(); // id/mode → the result of the largest size measured so far
const stopped = new Map(); // id/mode → why larger sizes are not attempted

function predictSkip(m, mode, C) {
  const key = `${m.id}/${mode}`;
  if (stopped.has(key)) return stopped.get(key);
  const prev = lastOk.get(key);
  if (!prev) return null;
  const ratio = C / prev.C;
  const perCall = prev.medianS * ratio * PREDICTION_MARGIN;
  if (perCall > runBudgetS) {
    const why = `skipped: would exceed budget (predicted ${perCall.toFixed(0)} s per call > ${runBudgetS} s)`;
    stopped.set(key, `skipped: would exceed budget (C = ${fmtC(C)} already would)`);
    return why;
  }
  const predictedPeak = prev.rssBaselineBytes + (prev.inputBytes + prev.outputBytes + Math.max(prev.extraBytes, 0)) * ratio;
  if (predictedPeak > 0.8 * os.totalmem()) return `skipped: would exceed memory (predicted peak ${fmtBytes(predictedPeak)})`;
  return null;
}

function predictCellS(m, mode, C) {
  const prev = lastOk.get(`${m.id}/${mode}`);
  const setup = 1 + (C * d * 4) / (400 * MiB); // process start + input generation
  if (!prev) return setup + 2;
  const perCall = prev.medianS * (C / prev.C) * PREDICTION_MARGIN;
  const n = Math.max(m.minReps, Math.min(reps, Math.floor(cellBudgetS / Math.max(perCall, 1e-9))));
  return setup + (m.warmup + n) * perCall * (m.ceiling ? 2 : 1);
}

for (const C of fromDoc ? [] : sizes) {
  for (const m of impls) {
    for (const mode of MODES) {
      const base = { id: m.id, label: m.label, impl: m.impl, backend: m.backend, mode, N, d, C };
      let skip = predictSkip(m, mode, C);
      if (!skip && m.impl === 'naive' && elapsed() + predictCellS(m, mode, C) > deadlineS) skip = `skipped: quick-mode time limit (${deadlineS} s)`;
      if (skip) {
        log(`${m.id} ${mode} C=${fmtC(C)}: ${skip}`);
        results.push({ ...base, status: skip });
        continue;
      }
      const job = { kind: 'time', ...base, seed: 1, warmup: m.warmup, reps, minReps: m.minReps, cellBudgetS, runBudgetS, ceiling: !!m.ceiling };
      const timeoutS = 60 + (C * d * 4) / (20 * MiB) + 3 * runBudgetS + 2 * cellBudgetS;
      const r = await runChild(job, { timeoutS, echo: verbose });
      delete r.kind;
      results.push(r);
      const key = `${m.id}/${mode}`;
      if (r.status === 'ok') {
        lastOk.set(key, r);
        log(`${m.id} ${mode} C=${fmtC(C)}: ${fmtTime(r.medianS)} [${fmtTime(r.minS)}–${fmtTime(r.maxS)}] n=${r.runs}, ${fmtGflops(r.gflops)} GFLOP/s, peak RSS ${fmtBytes(r.peakRssBytes)}` + (r.ceiling ? `; ceiling ${fmtTime(r.ceiling.medianS)} (${fmtGflops(r.ceiling.gflops)} GFLOP/s)` : ''));
      } else {
        log(`${m.id} ${mode} C=${fmtC(C)}: ${r.status}${r.message ? ` — ${r.message.split('\n')[0]}` : ''}`);
        if (r.status === 'out of memory') stopped.set(key, `skipped: out of memory (C = ${fmtC(C)} already was)`);
        else if (r.status.startsWith('skipped: exceeded budget') || r.status === 'timed out') stopped.set(key, `skipped: would exceed budget (C = ${fmtC(C)} already did)`);
      }
    }
  }
}

// ---------------------------------------------------------------- derived figures
const find = (id, mode, C) => results.find((r) => r.id === id && r.mode === mode && r.C === C);
const speedups = [];
for (const C of sizes) {
  for (const mode of MODES) {
    for (const f of impls.filter((m) => m.impl === 'fused')) {
      const fr = find(f.id, mode, C);
      for (const n of impls.filter((m) => m.impl === 'naive')) {
        const nr = find(n.id, mode, C);
        const ok = fr?.status === 'ok' && nr?.status === 'ok';
        speedups.push({
          C, mode, fused: f.id, naive: n.id,
          speedup: ok ? nr.medianS / fr.medianS : null,
          // The least favourable pairing of the two ranges.
          speedupWorstCase: ok ? nr.minS / fr.maxS : null,
          status: ok ? 'ok' : `${nr?.status !== 'ok' ? `${n.id}: ${nr?.status ?? 'not run'}` : `${f.id}: ${fr?.status ?? 'not run'}`}`,
        });
      }
    }
  }
}

const doc = fromDoc ?? {
  generatedAt: new Date().toISOString(),
  command: `node bench/run.mjs ${argv.join(' ')}`.trim(),
  quick,
  config: { N, d, sizes, margin: MARGIN, scale: SCALE, reps, runBudgetS, cellBudgetS, deadlineS: Number.isFinite(deadlineS) ? deadlineS : null,
    flops: '2·N·d·C for the forward, 3·2·N·d·C for forward + backward (the same count for every implementation)',
    timing: 'wall time of one synchronous call (outputs read back as typed arrays), after warm-up; median, min, max of the timed runs',
    memory: 'peak RSS of a child process that ran only that implementation, size and pass (inputs included); extra = peak − RSS after the inputs were made − output bytes',
    ceiling: '_productsSeconds: the same products (X̂·Wᵀ, and for the backward Gᵀ·X̂ and G·W) with the project\'s GEMM kernel, blocking and threads, no epilogue, in the fused cpu process right after its timed runs',
  },
  machine: { ...machine, loadAverageAtEnd: os.loadavg() },
  checks,
  results,
  speedups,
  wallSeconds: elapsed(),
};
fs.mkdirSync(outDir, { recursive: true });
const jsonFile = path.join(outDir, `bench${suffix}.json`);
if (!fromDoc) fs.writeFileSync(jsonFile, JSON.stringify(doc, null, 2) + '\n');

// ---------------------------------------------------------------- markdown
function cellText(r) {
  if (!r) return 'not run';
  if (r.status !== 'ok') return r.status;
  const few = r.runs < reps ? ` (n=${r.runs})` : '';
  return `${fmtTime(r.medianS)} [${fmtTime(r.minS)}–${fmtTime(r.maxS)}]${few} · ${fmtGflops(r.gflops)} GFLOP/s`;
}

function markdown(doc) {
  return [...introLines(doc), ...timeTable(), ...speedupTable(doc), ...memoryTable(), ...closingLines(doc)].join('\n');
}

/** Title, setup, machine and the correctness figures. */
function introLines(doc) {
  const mc = doc.machine;
  return [
    `# margin-softmax benchmark${doc.quick ? ' (quick)' : ''}`, '',
    `N = ${N}, d = ${d}, adaptive margin (m1 = ${MARGIN.m1}, m2 = ${MARGIN.m2}), s = ${SCALE}. ` +
      `Median [min–max] of ${reps} timed calls after warm-up (fewer where marked n, for slow naive sizes), ` +
      `GFLOP/s counting 2·N·d·C (forward) and 3·2·N·d·C (forward + backward) for every implementation.`, '',
    `Machine: ${mc.cpuModel}, ${mc.logicalCores} logical cores (${mc.cpuFlags}), ${fmtBytes(mc.totalMemoryBytes)}; ` +
      `fused CPU: ${mc.fused.simd} × ${mc.fused.threads} threads; Node ${mc.node}, tfjs ${mc.tfjs}` +
      (mc.tfjsWasm ? ` (wasm: SIMD ${mc.tfjsWasm.simd ? 'on' : 'off'}, threads ${mc.tfjsWasm.threads ? 'on' : 'off'})` : '') +
      `; GPU: ${mc.gpu ? `${mc.gpu.name} (${fmtBytes(mc.gpu.totalMemoryBytes)})` : `none (${mc.cuda.reason ?? 'not usable'})`}. ` +
      `Load average ${mc.loadAverageAtStart.map((x) => x.toFixed(1)).join(' ')} at start, ${mc.loadAverageAtEnd.map((x) => x.toFixed(1)).join(' ')} at end. ${doc.generatedAt}.`, '',
    'Correctness at C = ' + doc.checks[0]?.C + ' before timing (relative errors, max |a − b| / max |ref|): ' +
      doc.checks.map((c) => `${c.id} vs ${c.against}: ${Object.entries(c.errors).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(', ')}`).join('; ') + '.', '',
  ];
}

/** A row per size and pass: one column per implementation (and the GEMM ceiling after the fused CPU). */
function timeTable() {
  const cols = impls.map((m) => ({ title: m.label, get: (C, mode) => cellText(find(m.id, mode, C)) }));
  if (impls.some((m) => m.ceiling)) cols.splice(1, 0, { title: 'GEMM ceiling cpu', get: ceilingText });
  const L = ['## Time per call', ''];
  L.push(`| C | pass | ${cols.map((c) => c.title).join(' | ')} |`, `|---|---|${cols.map(() => '---').join('|')}|`);
  for (const C of sizes) for (const mode of MODES) L.push(`| ${C.toLocaleString('en-US')} | ${MODE_LABEL[mode]} | ${cols.map((c) => c.get(C, mode)).join(' | ')} |`);
  L.push('');
  return L;
}

function ceilingText(C, mode) {
  const r = find('fused-cpu', mode, C);
  return r?.ceiling ? `${fmtTime(r.ceiling.medianS)} [${fmtTime(r.ceiling.minS)}–${fmtTime(r.ceiling.maxS)}] · ${fmtGflops(r.ceiling.gflops)} GFLOP/s` : '–';
}

/** Each fused implementation against each naive one, and the fused CPU as a fraction of its GEMM ceiling. */
function speedupTable(doc) {
  const fusedImpls = impls.filter((m) => m.impl === 'fused');
  const naiveImpls = impls.filter((m) => m.impl === 'naive');
  if (!fusedImpls.length) return [];
  const pairs = [];
  for (const f of fusedImpls) for (const n of naiveImpls) pairs.push({ f, n });
  const ceilCol = impls.some((m) => m.ceiling);
  const L = ['## Speed-up of the fused loss (median over median, same run)', ''];
  L.push(`| C | pass | ${pairs.map(({ f, n }) => `${f.label} vs ${n.label}`).join(' | ')}${ceilCol ? ' | fused cpu / GEMM ceiling |' : ' |'}`,
    `|---|---|${pairs.map(() => '---').join('|')}${ceilCol ? '|---|' : '|'}`);
  for (const C of sizes) {
    for (const mode of MODES) {
      const cells = pairs.map(({ f, n }) => speedupText(doc.speedups.find((x) => x.C === C && x.mode === mode && x.fused === f.id && x.naive === n.id), f, n));
      const fr = find('fused-cpu', mode, C);
      const ceil = ceilCol ? ` | ${fr?.fractionOfCeilingPaired != null ? `${(100 * fr.fractionOfCeilingPaired).toFixed(0)} %` : '–'} |` : ' |';
      L.push(`| ${C.toLocaleString('en-US')} | ${MODE_LABEL[mode]} | ${cells.join(' | ')}${ceil}`);
    }
  }
  L.push('', "(≥: the slowest fused call against the fastest naive call.) The last column is the ceiling's time over the fused loss's time (median over adjacent pairs of calls, which alternate in one process): the fraction of attainable GEMM speed the fusion keeps.", '');
  return L;
}

function speedupText(s, f, n) {
  if (!s) return '–';
  if (s.speedup == null) return `– (${s.status.startsWith(n.id) ? n.label : f.label}: ${shortStatus(s.status.replace(/^[^:]+: /, ''))})`;
  return `${s.speedup.toFixed(s.speedup >= 100 ? 0 : 1)}× (≥ ${s.speedupWorstCase.toFixed(s.speedupWorstCase >= 100 ? 0 : 1)}×)`;
}

/** Peak RSS (and the extra beyond inputs and outputs) per implementation, size and pass. */
function memoryTable() {
  const L = ['## Peak memory (RSS of a process running only that implementation, size and pass)', ''];
  L.push(`| C | pass | inputs + outputs | ${impls.map((m) => m.label).join(' | ')} |`, `|---|---|---|${impls.map(() => '---').join('|')}|`);
  for (const C of sizes) {
    for (const mode of MODES) {
      const io = 4 * (N * d + C * d + N) + (mode === 'fwdbwd' ? 4 * (N * d + C * d) : 0) + 4 * N;
      const cells = impls.map((m) => memoryText(find(m.id, mode, C)));
      L.push(`| ${C.toLocaleString('en-US')} | ${MODE_LABEL[mode]} | ${fmtBytes(io)} | ${cells.join(' | ')} |`);
    }
  }
  L.push('', 'Extra = peak RSS − RSS once the inputs were made − output bytes (the Node process itself is in the peak, about 45 MiB, and in neither term of the extra).', '');
  return L;
}

function memoryText(r) {
  if (r?.status === 'out of memory' && r.peakRssBytes) {
    return `out of memory (peak RSS ${fmtBytes(r.peakRssBytes)}${r.wasmHeapBytes ? `, wasm heap ${fmtBytes(r.wasmHeapBytes)} of its 4 GiB limit` : ''})`;
  }
  if (!r || r.status !== 'ok') return r?.status ?? 'not run';
  let s = `${fmtBytes(r.peakRssBytes)} (extra ${fmtBytes(r.extraBytes)})`;
  if (r.deviceMemoryBytes) s += `; device ${fmtBytes(r.deviceMemoryBytes.peakUsedSampled)}`;
  return s;
}

/** The timed runs' notes and how to reproduce. */
function closingLines(doc) {
  const L = [];
  const notes = doc.results.filter((r) => r.note).map((r) => `- ${r.label}, ${MODE_LABEL[r.mode]}, C = ${r.C.toLocaleString('en-US')}: ${r.note}`);
  if (notes.length) L.push('Notes:', ...notes, '');
  L.push(`Reproduce: \`${doc.quick ? 'npm run bench:quick' : 'npm run bench'}\` (${doc.wallSeconds.toFixed(0)} s here). Every figure is in \`${path.basename(jsonFile)}\`.`, '');
  return L;
}

const md = markdown(doc);
const mdFile = path.join(outDir, `bench${suffix}.md`);
fs.writeFileSync(mdFile, md);
console.log(md);

if (!flag('no-plots')) {
  const { renderPlots } = await import('./plot.mjs');
  const files = await renderPlots(doc, outDir, suffix);
  log(`plots: ${files.map((f) => path.relative(process.cwd(), f)).join(', ')}`);
}
log(`wrote ${path.relative(process.cwd(), jsonFile)}, ${path.relative(process.cwd(), mdFile)}`);
