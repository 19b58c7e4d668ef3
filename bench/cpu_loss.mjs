#!/usr/bin/env node
// cpu_loss.mjs — the fused adaptive-margin loss on the CPU backend, N = 128,
// d = 512, C ∈ {10⁴, 10⁵, 10⁶}, s = 64, forward and forward + backward, against
// two yardsticks measured in the same run:
//   - the machine's arithmetic peaks (register-only loops in the addon on all
//     threads: fp32 FMA, and where the CPU has them VDPBF16PS and AMX TDPBF16PS),
//     measured before and after the loss rows (the better of the two is kept:
//     other load only lowers it);
//   - the GEMM ceiling (the same products with the project's own kernel and
//     blocking, no epilogue: the fp32 kernel for fp32 rows, the row's bf16 path
//     for bf16 rows), its calls alternating with the loss's calls.
// Rows: fp32 and weightsDtype 'bfloat16' (the bf16 product path 'auto' runs,
// deviceInfo().cpu.matrix, and the best bf16 instructions of deviceInfo().cpu.matrixPaths
// where 'auto' runs another path), fresh outputs and options.out; peak RSS and the memory beyond inputs and
// outputs (one child process per row, so each peak is clean); and the tile
// workspace's effect (the default, 128 MiB, vs 0 = always recompute) at C = 10⁵
// and (128 vs 64 MiB) at C = 10⁶; and
// each path's error against the float64 reference (bench/cpu_paths_error.mjs,
// at C = --error-classes, 10⁴ by default: the reference is O(N·d·C) in
// JavaScript; the kernels and blocking do not depend on C).
//
//   npm run bench:cpu
//   node bench/cpu_loss.mjs --reps=9 --sizes=10000,100000 --threads=2 [--no-bf16] [--error-classes=10000]
//
// Prints a Markdown table and writes bench/results/cpu.json.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathErrors } from './cpu_paths_error.mjs';
import {
  MARGIN, RESULTS_DIR, SCALE, fmtBytes, fmtC, fmtGflops, fmtTime, loadAddon, loadPackage, machineDescription, runChild,
  cliOption,
} from './common.mjs';

const argv = process.argv.slice(2);
const N = 128;
const d = 512;
const sizes = cliOption('sizes', '10000,100000,1000000').split(',').map(Number);
const reps = Number(cliOption('reps', 7));
const threads = cliOption('threads', null);
const outFile = path.resolve(cliOption('out', path.join(RESULTS_DIR, 'cpu.json')));
const withBf16 = !argv.includes('--no-bf16');
const errorClasses = Number(cliOption('error-classes', 10000));
// Targets, forward + backward at default settings, as fractions of the peak of
// the path's own instructions: fp32 of the fp32 FMA peak, bf16 of the bf16 peak.
const TARGETS = {
  fp32: { 100000: 0.85, 1000000: 0.7 },
  bf16: { 100000: 0.7, 1000000: 0.55 },
  gemm: 0.9,  // the GEMM ceiling (the products alone) of each path, of that path's peak
};
const TARGET_EXTRA_BYTES = 150 * 1024 * 1024; // extra memory at C = 10⁶

const t0 = Date.now();
const log = (...a) => console.error(`[${((Date.now() - t0) / 1e3).toFixed(0).padStart(4)} s]`, ...a);
const pkg = loadPackage();
const machine = machineDescription(pkg);
log(`fused cpu loss: ${machine.cpuModel}, ${machine.logicalCores} cores, ${machine.fused.simd} × ${threads ?? machine.fused.threads} threads, bf16 path ${machine.fused.matrix}, flags ${machine.cpuFlags}, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);

// ---------------------------------------------------------------- peaks
const addon = loadAddon();
const PEAK_KINDS = [['fp32', 0], ['avx512-bf16', 1], ['amx-bf16', 2]];
function measurePeaks() {
  const r = {};
  for (const [name, code] of PEAK_KINDS) {
    const g = addon._peakGflops(code, threads ? Number(threads) : 0, -1);
    r[name] = g > 0 ? g : null;
  }
  return { gflops: r, loadAverage: os.loadavg() };
}
const peaksBefore = measurePeaks();
log(`peaks (GFLOP/s, all threads): ${PEAK_KINDS.map(([n]) => `${n} ${peaksBefore.gflops[n] == null ? 'not on this CPU' : fmtGflops(peaksBefore.gflops[n])}`).join(', ')}`);

const runs = [];
const isBf16 = (r) => r.options?.weightsDtype === 'bfloat16';
const baseOptions = threads ? { threads: Number(threads) } : {};
const plan = [];
for (const C of sizes) for (const mode of ['fwd', 'fwdbwd']) plan.push({ C, mode, options: { ...baseOptions }, variant: 'default workspace (128 MiB)' });
if (sizes.includes(100000)) plan.push({ C: 100000, mode: 'fwdbwd', options: { ...baseOptions, workspaceBytes: 0 }, variant: 'workspaceBytes: 0 (recompute every tile)' });
// Where the default workspace holds only part of the tiles, what half of it costs (memory for speed).
const WS_SMALL = 64 << 20;
if (sizes.includes(1000000)) plan.push({ C: 1000000, mode: 'fwdbwd', options: { ...baseOptions, workspaceBytes: WS_SMALL }, variant: 'workspaceBytes: 64 MiB' });
for (const C of sizes) plan.push({ C, mode: 'fwdbwd', options: { ...baseOptions, reuseOut: true }, variant: 'outputs reused (options.out)' });
// The bf16 paths timed: the one 'auto' runs, then the best bf16 instructions where 'auto' runs another.
const bf16Paths = [...new Set([machine.fused.matrix, machine.fused.matrixPaths[0]])];
if (withBf16) {
  for (const matrix of bf16Paths) {
    const bf16 = { ...baseOptions, weightsDtype: 'bfloat16', matrix };
    const auto = matrix === machine.fused.matrix;
    if (auto) for (const C of sizes) plan.push({ C, mode: 'fwd', options: { ...bf16 }, variant: `bf16 (${matrix})` });
    for (const C of sizes) plan.push({ C, mode: 'fwdbwd', options: { ...bf16 }, variant: `bf16 (${matrix})` });
    for (const C of sizes) plan.push({ C, mode: 'fwdbwd', options: { ...bf16, reuseOut: true }, variant: `bf16 (${matrix}), outputs reused` });
  }
}

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

const peaksAfter = measurePeaks();
const peaks = {};
for (const [name] of PEAK_KINDS) {
  const a = peaksBefore.gflops[name], b = peaksAfter.gflops[name];
  peaks[name] = a == null && b == null ? null : Math.max(a ?? 0, b ?? 0);
}
log(`peaks after the rows: ${PEAK_KINDS.map(([n]) => `${n} ${peaksAfter.gflops[n] == null ? '–' : fmtGflops(peaksAfter.gflops[n])}`).join(', ')}`);
log(`error against float64 at C = ${fmtC(errorClasses)} (every path of this CPU)…`);
const errors = pathErrors(pkg, errorClasses);
const errorOf = (r) => errors.find((e) => e.path === (isBf16(r) ? `bf16 ${r.options.matrix}` : `fp32 ${r.options?.simd ?? machine.fused.simd}`));
const fmtErr = (e) => (e ? `${e.lossRelErr.toExponential(1)} / ${e.gradEmbeddingsRelMaxErr.toExponential(1)} / ${e.gradWeightsRelMaxErr.toExponential(1)}` : '–');
const pct = (x) => (x == null || !Number.isFinite(x) ? '–' : `${(100 * x).toFixed(0)} %`);
const bf16Peak = peaks['amx-bf16'] ?? peaks['avx512-bf16'];
for (const r of runs) {
  if (r.status !== 'ok') continue;
  r.fractionOfFp32Peak = r.gflops / peaks.fp32;
  // A bf16 row on 'none' runs fp32 FMAs: its own peak is the fp32 one.
  if (isBf16(r) && bf16Peak && r.options.matrix !== 'none') r.fractionOfBf16Peak = r.gflops / bf16Peak;
  // The ceiling runs the row's own products: a fraction of the peak of their instructions.
  const ownPeak = isBf16(r) && r.options.matrix !== 'none' ? peaks[r.options.matrix] : peaks.fp32;
  // The ceiling's fastest call beside its median: a burst of other work on the
  // shared host can halve the median of a few calls, not their best.
  if (ownPeak) {
    r.ceiling.fractionOfOwnPeak = r.ceiling.gflops / ownPeak;
    r.ceiling.bestFractionOfOwnPeak = r.ceiling.gflopsBest / ownPeak;
  }
}

// ---------------------------------------------------------------- report
const L = [];
L.push(`## Fused CPU loss (adaptive margin, N = ${N}, d = ${d}, s = ${SCALE})`, '');
L.push(`${machine.cpuModel}, ${machine.logicalCores} logical cores, ${machine.fused.simd} (width ${machine.fused.simdWidth}) × ${threads ?? machine.fused.threads} threads; Node ${machine.node}. ` +
  `Median [min–max] of ${reps} calls after 2 warm-up calls; GFLOP/s count 2·N·d·C (forward) and 3·2·N·d·C (forward + backward). ` +
  `The ceiling is _productsSeconds: the same products with the same kernel, blocking and threads and no epilogue (bf16 rows: on their bf16 path, operands packed before its clock starts), its calls alternating with the loss's; ` +
  `loss / ceiling is the median over those adjacent pairs of ceiling time / loss time (the fraction of attainable GEMM speed the fused loss keeps). ` +
  `Load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} at the end (a shared machine: other work was running).`, '');
L.push(`CPU flags: ${machine.cpuFlags}. bf16 product paths: ${machine.fused.matrixPaths.join(', ')}; 'auto' (deviceInfo().cpu.matrix) runs ${machine.fused.matrix}.`, '');
L.push('Peaks (register-only loops on all threads, the better of a run before and one after the rows; load average then ' +
  `${peaksBefore.loadAverage[0].toFixed(1)} and ${peaksAfter.loadAverage[0].toFixed(1)}):`, '');
L.push('| peak | GFLOP/s | × fp32 peak |', '|---|---|---|');
for (const [name] of PEAK_KINDS) {
  L.push(`| ${name === 'fp32' ? `fp32 FMA (${machine.fused.simd})` : name === 'avx512-bf16' ? 'bf16 VDPBF16PS (AVX512-BF16)' : 'bf16 TDPBF16PS (AMX-BF16)'} | ` +
    `${peaks[name] == null ? 'not on this CPU / OS' : fmtGflops(peaks[name])} | ${peaks[name] == null ? '–' : (peaks[name] / peaks.fp32).toFixed(2)} |`);
}
L.push('');
L.push(`Error against float64: loss relative error / dX / dW largest element error relative to the largest element, on one problem at C = ${fmtC(errorClasses)} with the path's kernels (bf16 paths against the reference on the bf16 centres; bench/cpu_paths_error.mjs):`, '');
L.push('| path | loss / dX / dW |', '|---|---|');
for (const e of errors) L.push(`| ${e.path} | ${fmtErr(e)} |`);
L.push('');
L.push('| C | pass | variant | time | GFLOP/s | of fp32 peak | of bf16 peak | ceiling time | ceiling GFLOP/s | ceiling of its peak | loss / ceiling | peak RSS | extra beyond inputs + outputs | error vs float64 (loss / dX / dW) |');
L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of runs) {
  const wb = r.options?.workspaceBytes;
  const ws = r.options?.reuseOut ? 'outputs reused' : wb === undefined ? 'default' : `workspace ${wb === 0 ? '0' : fmtBytes(wb)}`;
  const variant = isBf16(r) ? `bf16 ${r.options.matrix}, ${ws}` : ws;
  if (r.status !== 'ok') {
    L.push(`| ${r.C.toLocaleString('en-US')} | ${r.mode === 'fwd' ? 'forward' : 'forward + backward'} | ${variant} | ${r.status} | | | | | | | | | | |`);
    continue;
  }
  L.push(`| ${r.C.toLocaleString('en-US')} | ${r.mode === 'fwd' ? 'forward' : 'forward + backward'} | ${variant} | ` +
    `${fmtTime(r.medianS)} [${fmtTime(r.minS)}–${fmtTime(r.maxS)}] | ${fmtGflops(r.gflops)} (best ${fmtGflops(r.gflopsBest)}) | ` +
    `${pct(r.fractionOfFp32Peak)} | ${pct(r.fractionOfBf16Peak)} | ` +
    `${fmtTime(r.ceiling.medianS)} [${fmtTime(r.ceiling.minS)}–${fmtTime(r.ceiling.maxS)}] | ${fmtGflops(r.ceiling.gflops)} (best ${fmtGflops(r.ceiling.gflopsBest)}) | ` +
    `${pct(r.ceiling.fractionOfOwnPeak)} (best ${pct(r.ceiling.bestFractionOfOwnPeak)}) | ${(100 * r.fractionOfCeilingPaired).toFixed(0)} % | ` +
    `${fmtBytes(r.peakRssBytes)} | ${fmtBytes(r.extraBytes)} | ${fmtErr(errorOf(r))} |`);
}
L.push('');

// ws: the row's workspaceBytes (undefined: the default); bf16: the matrix path of the row, or false for fp32.
const find = (C, mode, ws = undefined, reuse = false, bf16 = false) =>
  runs.find((r) => r.C === C && r.mode === mode && r.options?.workspaceBytes === ws && !!r.options?.reuseOut === reuse &&
    (bf16 ? isBf16(r) && r.options.matrix === bf16 : !isBf16(r)) && r.status === 'ok');
const summary = { peaks };
const at1e5 = find(100000, 'fwdbwd');
// The GEMM core: the ceiling rows (forward + backward, default settings) of each path against its own peak.
for (const matrix of [false, ...bf16Paths.filter((m) => m !== 'none')]) {
  const cells = sizes.map((C) => find(C, 'fwdbwd', undefined, false, matrix)).filter((r) => r?.ceiling.fractionOfOwnPeak);
  if (!cells.length) continue;
  const name = matrix ? `bf16 (${matrix})` : `fp32 (${machine.fused.simd})`;
  const best = Math.max(...cells.map((r) => r.ceiling.fractionOfOwnPeak));
  summary[`gemmCeilingFractionOfPeak_${matrix || 'fp32'}`] = Object.fromEntries(cells.map((r) => [r.C, r.ceiling.fractionOfOwnPeak]));
  L.push(`- GEMM ceiling, ${name}, forward + backward: ${cells.map((r) => `C = ${fmtC(r.C)} ${fmtGflops(r.ceiling.gflops)} GFLOP/s (${pct(r.ceiling.fractionOfOwnPeak)} of its peak)`).join(', ')} (target ≥ ${pct(TARGETS.gemm)}: ${best >= TARGETS.gemm ? 'met' : 'not met'} on this run).`);
}
for (const C of [100000, 1000000]) {
  for (const reuse of [false, true]) {
    const r = find(C, 'fwdbwd', undefined, reuse);
    if (!r) continue;
    const key = `fp32FractionOfPeak_${C}${reuse ? '_outReused' : ''}`;
    summary[key] = r.fractionOfFp32Peak;
    const target = TARGETS.fp32[C];
    L.push(`- fp32, C = ${fmtC(C)}, forward + backward${reuse ? ' (options.out)' : ''}: ${fmtGflops(r.gflops)} GFLOP/s = ${pct(r.fractionOfFp32Peak)} of the fp32 peak (target ≥ ${pct(target)}: ${r.fractionOfFp32Peak >= target ? 'met' : 'not met'} on this run), ${pct(r.fractionOfCeilingPaired)} of the GEMM ceiling.`);
  }
}
for (const matrix of bf16Paths) {
  for (const C of sizes) {
    for (const reuse of [false, true]) {
      const f = find(C, 'fwdbwd', undefined, reuse), b = find(C, 'fwdbwd', undefined, reuse, matrix);
      if (!f || !b) continue;
      summary[`bf16Speedup_${matrix}_${C}${reuse ? '_outReused' : ''}`] = f.medianS / b.medianS;
      const target = TARGETS.bf16[C];
      const verdict = target && b.fractionOfBf16Peak ? ` (target ≥ ${pct(target)}: ${b.fractionOfBf16Peak >= target ? 'met' : 'not met'} on this run)` : '';
      L.push(`- bf16 (${matrix}${matrix === machine.fused.matrix ? ", 'auto'" : ''}), C = ${fmtC(C)}, forward + backward${reuse ? ' (options.out)' : ''}: ${fmtTime(b.medianS)} vs ${fmtTime(f.medianS)} fp32 = ${(f.medianS / b.medianS).toFixed(2)}× (${pct(b.fractionOfFp32Peak)} of the fp32 peak${b.fractionOfBf16Peak ? `, ${pct(b.fractionOfBf16Peak)} of the bf16 peak${verdict}` : ''}${bf16Peak ? `; the bf16 peak is ${(bf16Peak / peaks.fp32).toFixed(2)}× the fp32 peak on this CPU` : ''}).`);
    }
  }
}
const ws0 = find(100000, 'fwdbwd', 0);
if (at1e5 && ws0) {
  summary.workspaceSpeedup = ws0.medianS / at1e5.medianS;
  L.push(`- Tile workspace at C = 10⁵, forward + backward: default ${fmtTime(at1e5.medianS)}, 0 bytes (recompute) ${fmtTime(ws0.medianS)}: the workspace saves ${(100 * (1 - at1e5.medianS / ws0.medianS)).toFixed(0)} % (peak RSS ${fmtBytes(at1e5.peakRssBytes)} vs ${fmtBytes(ws0.peakRssBytes)}, extra ${fmtBytes(at1e5.extraBytes)} vs ${fmtBytes(ws0.extraBytes)}).`);
}
const at1e6 = find(1000000, 'fwdbwd');  // the default row (128 MiB workspace, fresh outputs)
const wsSmall = find(1000000, 'fwdbwd', WS_SMALL);
if (at1e6 && wsSmall) {
  summary.workspace64MiBSlowdown_1000000 = wsSmall.medianS / at1e6.medianS;
  L.push(`- Tile workspace at C = 10⁶, forward + backward: default (128 MiB) ${fmtTime(at1e6.medianS)}, 64 MiB ${fmtTime(wsSmall.medianS)} (${(wsSmall.medianS / at1e6.medianS).toFixed(2)}× the default's time; extra memory ${fmtBytes(at1e6.extraBytes)} vs ${fmtBytes(wsSmall.extraBytes)}).`);
}
for (const C of sizes) {
  const fresh = find(C, 'fwdbwd');
  const reused = find(C, 'fwdbwd', undefined, true);
  if (fresh && reused) {
    summary[`reuseOutSpeedup_${C}`] = fresh.medianS / reused.medianS;
    L.push(`- C = ${fmtC(C)}, forward + backward with the outputs reused (options.out): ${fmtTime(reused.medianS)} (${fmtGflops(reused.gflops)} GFLOP/s) vs ${fmtTime(fresh.medianS)} with fresh output arrays per call.`);
  }
}
if (at1e6) {
  summary.peakRssAt1e6 = at1e6.peakRssBytes;
  summary.extraAt1e6 = at1e6.extraBytes;
  summary.targetExtraMet = at1e6.extraBytes <= TARGET_EXTRA_BYTES;
  L.push(`- C = 10⁶, forward + backward: peak RSS ${fmtBytes(at1e6.peakRssBytes)} with ${fmtBytes(at1e6.inputBytes)} of inputs and ${fmtBytes(at1e6.outputBytes)} of outputs; extra beyond them ${fmtBytes(at1e6.extraBytes)} (target ≤ 150 MiB: ${summary.targetExtraMet ? 'met' : 'not met'}).`);
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
  peaks: { best: peaks, before: peaksBefore, after: peaksAfter },
  summary,
  errors,
  runs,
  markdown: md,
}, null, 2) + '\n');
log(`wrote ${path.relative(process.cwd(), outFile)}`);
