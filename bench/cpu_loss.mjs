#!/usr/bin/env node
// cpu_loss.mjs — issue #2's CPU figure: the fused adaptive-margin loss on the CPU
// backend, N = 128, d = 512, C ∈ {10⁴, 10⁵, 10⁶}, s = 64, forward and forward +
// backward, against the GEMM ceiling (the same products with the project's own
// kernel and blocking, no epilogue) measured in the same process, its calls
// alternating with the loss's calls. Also: peak RSS and the memory beyond inputs and
// outputs (one child process per size and pass, so each peak is clean), and the tile
// workspace's effect (default 64 MiB vs 0 = always recompute) at C = 10⁵, and the
// effect of reusing the output arrays (options.out) instead of fresh ones per call.
//
//   npm run bench:cpu
//   node bench/cpu_loss.mjs --reps=9 --sizes=10000,100000 --threads=2
//
// Prints a Markdown table and writes bench/results/cpu.json.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  MARGIN, MiB, RESULTS_DIR, SCALE, fmtBytes, fmtC, fmtGflops, fmtTime, loadPackage, machineDescription, runChild,
} from './common.mjs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const a = argv.find((s) => s.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const N = 128;
const d = 512;
const sizes = opt('sizes', '10000,100000,1000000').split(',').map(Number);
const reps = Number(opt('reps', 7));
const threads = opt('threads', null);
const outFile = path.resolve(opt('out', path.join(RESULTS_DIR, 'cpu.json')));
const TARGET_GFLOPS = 100; // issue #2: forward + backward at C = 10⁵
const TARGET_EXTRA_BYTES = 100e6; // issue #2: extra memory at C = 10⁶

const t0 = Date.now();
const log = (...a) => console.error(`[${((Date.now() - t0) / 1e3).toFixed(0).padStart(4)} s]`, ...a);
const pkg = loadPackage();
const machine = machineDescription(pkg);
log(`fused cpu loss: ${machine.cpuModel}, ${machine.logicalCores} cores, ${machine.fused.simd} × ${threads ?? machine.fused.threads} threads, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);

const runs = [];
const baseOptions = threads ? { threads: Number(threads) } : {};
const plan = [];
for (const C of sizes) for (const mode of ['fwd', 'fwdbwd']) plan.push({ C, mode, options: { ...baseOptions }, variant: 'default workspace (64 MiB)' });
if (sizes.includes(100000)) plan.push({ C: 100000, mode: 'fwdbwd', options: { ...baseOptions, workspaceBytes: 0 }, variant: 'workspaceBytes: 0 (recompute every tile)' });
for (const C of sizes) plan.push({ C, mode: 'fwdbwd', options: { ...baseOptions, reuseOut: true }, variant: 'outputs reused (options.out)' });

for (const p of plan) {
  const job = { kind: 'time', impl: 'fused', backend: 'cpu', mode: p.mode, N, d, C: p.C, seed: 1, warmup: 2, reps, minReps: reps, ceiling: true, options: p.options };
  const r = await runChild(job, { timeoutS: 900 });
  delete r.kind;
  r.variant = p.variant;
  runs.push(r);
  if (r.status !== 'ok') {
    log(`C=${fmtC(p.C)} ${p.mode} ${p.variant}: ${r.status} ${r.message ?? ''}`);
    continue;
  }
  log(`C=${fmtC(p.C)} ${p.mode} ${p.variant}: ${fmtTime(r.medianS)} [${fmtTime(r.minS)}–${fmtTime(r.maxS)}] ${fmtGflops(r.gflops)} GFLOP/s; ceiling ${fmtTime(r.ceiling.medianS)} ${fmtGflops(r.ceiling.gflops)} GFLOP/s; peak RSS ${fmtBytes(r.peakRssBytes)}, extra ${fmtBytes(r.extraBytes)}`);
}

// ---------------------------------------------------------------- report
const L = [];
L.push(`## Fused CPU loss (adaptive margin, N = ${N}, d = ${d}, s = ${SCALE})`, '');
L.push(`${machine.cpuModel}, ${machine.logicalCores} logical cores, ${machine.fused.simd} (width ${machine.fused.simdWidth}) × ${threads ?? machine.fused.threads} threads; Node ${machine.node}. ` +
  `Median [min–max] of ${reps} calls after 2 warm-up calls; GFLOP/s count 2·N·d·C (forward) and 3·2·N·d·C (forward + backward). ` +
  `The ceiling is productsSeconds: the same products with the same kernel, blocking and threads and no epilogue, its calls alternating with the loss's; ` +
  `loss / ceiling is the median over those adjacent pairs of ceiling time / loss time (the fraction of attainable GEMM speed the fused loss keeps). ` +
  `Load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} at the end (a shared machine: other work was running).`, '');
L.push('| C | pass | variant | time | GFLOP/s | ceiling time | ceiling GFLOP/s | loss / ceiling | peak RSS | extra beyond inputs + outputs |');
L.push('|---|---|---|---|---|---|---|---|---|---|');
for (const r of runs) {
  const ws = r.options?.reuseOut ? 'outputs reused' : r.options?.workspaceBytes === 0 ? 'workspace 0' : 'default';
  if (r.status !== 'ok') {
    L.push(`| ${r.C.toLocaleString('en-US')} | ${r.mode === 'fwd' ? 'forward' : 'forward + backward'} | ${ws} | ${r.status} | | | | | | |`);
    continue;
  }
  L.push(`| ${r.C.toLocaleString('en-US')} | ${r.mode === 'fwd' ? 'forward' : 'forward + backward'} | ${ws} | ` +
    `${fmtTime(r.medianS)} [${fmtTime(r.minS)}–${fmtTime(r.maxS)}] | ${fmtGflops(r.gflops)} (best ${fmtGflops(r.gflopsBest)}) | ` +
    `${fmtTime(r.ceiling.medianS)} [${fmtTime(r.ceiling.minS)}–${fmtTime(r.ceiling.maxS)}] | ${fmtGflops(r.ceiling.gflops)} | ${(100 * r.fractionOfCeilingPaired).toFixed(0)} % | ` +
    `${fmtBytes(r.peakRssBytes)} | ${fmtBytes(r.extraBytes)} |`);
}
L.push('');

const find = (C, mode, ws0 = false, reuse = false) =>
  runs.find((r) => r.C === C && r.mode === mode && (r.options?.workspaceBytes === 0) === ws0 && !!r.options?.reuseOut === reuse && r.status === 'ok');
const summary = {};
const at1e5 = find(100000, 'fwdbwd');
if (at1e5) {
  summary.gflopsAt1e5 = at1e5.gflops;
  summary.targetGflopsMet = at1e5.gflops >= TARGET_GFLOPS;
  L.push(`- Target (issue #2): forward + backward at C = 10⁵ ≥ ${TARGET_GFLOPS} GFLOP/s: ${fmtGflops(at1e5.gflops)} GFLOP/s median (${fmtGflops(at1e5.gflopsBest)} best) — ${summary.targetGflopsMet ? 'met' : 'not met'} on this run; the ceiling beside it: ${fmtGflops(at1e5.ceiling.gflops)} GFLOP/s.`);
}
const ws0 = find(100000, 'fwdbwd', true);
if (at1e5 && ws0) {
  summary.workspaceSpeedup = ws0.medianS / at1e5.medianS;
  L.push(`- Tile workspace at C = 10⁵, forward + backward: default ${fmtTime(at1e5.medianS)}, 0 bytes (recompute) ${fmtTime(ws0.medianS)}: the workspace saves ${(100 * (1 - at1e5.medianS / ws0.medianS)).toFixed(0)} % (peak RSS ${fmtBytes(at1e5.peakRssBytes)} vs ${fmtBytes(ws0.peakRssBytes)}, extra ${fmtBytes(at1e5.extraBytes)} vs ${fmtBytes(ws0.extraBytes)}).`);
}
for (const C of sizes) {
  const fresh = find(C, 'fwdbwd');
  const reused = find(C, 'fwdbwd', false, true);
  if (fresh && reused) {
    summary[`reuseOutSpeedup_${C}`] = fresh.medianS / reused.medianS;
    L.push(`- C = ${fmtC(C)}, forward + backward with the outputs reused (options.out): ${fmtTime(reused.medianS)} (${fmtGflops(reused.gflops)} GFLOP/s) vs ${fmtTime(fresh.medianS)} with fresh output arrays per call.`);
  }
}
const at1e6 = find(1000000, 'fwdbwd');
if (at1e6) {
  summary.peakRssAt1e6 = at1e6.peakRssBytes;
  summary.extraAt1e6 = at1e6.extraBytes;
  summary.targetExtraMet = at1e6.extraBytes < TARGET_EXTRA_BYTES;
  L.push(`- C = 10⁶, forward + backward: peak RSS ${fmtBytes(at1e6.peakRssBytes)} with ${fmtBytes(at1e6.inputBytes)} of inputs and ${fmtBytes(at1e6.outputBytes)} of outputs; extra beyond them ${fmtBytes(at1e6.extraBytes)} (${(at1e6.extraBytes / 1e6).toFixed(0)} MB; target < 100 MB: ${summary.targetExtraMet ? 'met' : 'not met'}).`);
}
const fwd1e6 = find(1000000, 'fwd');
if (fwd1e6) L.push(`- C = 10⁶, forward: peak RSS ${fmtBytes(fwd1e6.peakRssBytes)}, extra ${fmtBytes(fwd1e6.extraBytes)}.`);
L.push('', 'Extra = peak RSS − RSS once the inputs were made − output bytes (the Node process itself, about 45 MiB, is in neither). Reproduce: `npm run bench:cpu`.', '');
const md = L.join('\n');
console.log(md);

fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, JSON.stringify({
  generatedAt: new Date().toISOString(),
  command: `node bench/cpu_loss.mjs ${argv.join(' ')}`.trim(),
  config: { N, d, sizes, reps, warmup: 2, margin: MARGIN, scale: SCALE, threads: threads ? Number(threads) : 'all',
    flops: '2·N·d·C forward, 3·2·N·d·C forward + backward' },
  machine: { ...machine, loadAverageAtEnd: os.loadavg() },
  summary,
  runs,
  markdown: md,
}, null, 2) + '\n');
log(`wrote ${path.relative(process.cwd(), outFile)}`);
