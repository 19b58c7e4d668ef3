#!/usr/bin/env node
// wasm_loss.mjs — the fused loss on the wasm backend (lib/wasm/: the CPU
// backend's C++ compiled to WebAssembly SIMD128, one thread) beside the native
// CPU backend on one thread (its best SIMD, and its portable 128-bit kernels:
// the same code the module runs) and the naive tfjs loss on tfjs's wasm
// backend (test/naive-tfjs.mjs), N = 128, d = 512, the adaptive margin at
// s = 64, forward and forward + backward.
//
// The machine is shared, so the implementations' calls are interleaved in one
// process, round after round, and the table gives each one's median and the
// median of its per-round ratios to the wasm backend's call of the same round.
//
//   node bench/wasm_loss.mjs [--sizes=10000,100000] [--rounds=7] [--no-naive] [--out=FILE]
//
// Prints a Markdown table and writes bench/results/wasm.json.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MARGIN, RESULTS_DIR, SCALE, fmtC, fmtTime, loadPackage, machineDescription, makeInputs, median, require, cliOption } from './common.mjs';

const argv = process.argv.slice(2);
const N = 128;
const d = 512;
const sizes = cliOption('sizes', '10000').split(',').map(Number);
const rounds = Number(cliOption('rounds', 7));
const withNaive = !argv.includes('--no-naive');
const outFile = path.resolve(cliOption('out', path.join(RESULTS_DIR, 'wasm.json')));

const pkg = loadPackage();
const machine = machineDescription(pkg);
const log = (...a) => console.error(...a);
log(`wasm bench: ${machine.cpuModel}, ${machine.logicalCores} cores, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);

let tf = null;
if (withNaive) {
  const quiet = console.log;
  console.log = () => {};
  tf = require('@tensorflow/tfjs');
  require('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend('wasm'))) throw new Error("tfjs backend 'wasm' failed to initialise");
  await tf.ready();
  console.log = quiet;
  log(`tfjs wasm: SIMD ${tf.env().getBool('WASM_HAS_SIMD_SUPPORT')}, threads ${tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT')}`);
}
const naive = withNaive ? await import('../test/naive-tfjs.mjs') : null;

const opts = { margin: MARGIN, scale: SCALE };
function impls(input) {
  const list = [
    { id: 'fused-wasm', fwd: () => pkg.forward(input, { ...opts, backend: 'wasm' }), fwdbwd: () => pkg.lossAndGrad(input, { ...opts, backend: 'wasm' }) },
  ];
  if (pkg.backends().includes('cpu')) {
    for (const simd of ['auto', 'portable']) {
      const o = { ...opts, backend: 'cpu', threads: 1, simd };
      list.push({ id: `fused-cpu-1t-${simd === 'auto' ? pkg.deviceInfo().cpu.simd : simd}`, fwd: () => pkg.forward(input, o), fwdbwd: () => pkg.lossAndGrad(input, o) });
    }
  }
  if (tf) {
    const C = input.weights.length / d;
    const x = tf.tensor2d(input.embeddings, [N, d]);
    const w = tf.tensor2d(input.weights, [C, d]);
    list.push({
      id: 'naive-tfjs-wasm',
      fwd: () => naive.naiveForward(tf, x, w, input.labels, opts),
      fwdbwd: () => naive.naiveForwardBackward(tf, x, w, input.labels, opts),
      dispose: () => tf.dispose([x, w]),
    });
  }
  return list;
}

const rows = [];
for (const C of sizes) {
  const input = makeInputs(N, d, C, 1);
  const list = impls(input);
  for (const mode of ['fwd', 'fwdbwd']) {
    for (const m of list) m[mode](); // warm-up
    const times = Object.fromEntries(list.map((m) => [m.id, []]));
    for (let r = 0; r < rounds; r++) {
      for (const m of list) {
        const t0 = performance.now();
        m[mode]();
        times[m.id].push((performance.now() - t0) / 1e3);
      }
    }
    const base = times['fused-wasm'];
    for (const m of list) {
      const ratios = times[m.id].map((t, i) => t / base[i]);
      rows.push({ C, mode, id: m.id, medianS: median(times[m.id]), minS: Math.min(...times[m.id]), timeOverWasm: median(ratios), times: times[m.id] });
    }
    log(`C=${fmtC(C)} ${mode}: ${list.map((m) => `${m.id} ${fmtTime(median(times[m.id]))}`).join(', ')}`);
  }
  for (const m of list) m.dispose?.();
}

console.log(`\n| C | pass | implementation | median | time / wasm (median of per-round ratios) |\n|---|---|---|---|---|`);
for (const r of rows) console.log(`| ${fmtC(r.C)} | ${r.mode === 'fwd' ? 'forward' : 'forward + backward'} | ${r.id} | ${fmtTime(r.medianS)} | ${r.timeOverWasm.toFixed(2)} |`);
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, JSON.stringify({ date: new Date().toISOString(), machine, N, d, rounds, margin: MARGIN, scale: SCALE, rows }, null, 2));
log(`wrote ${path.relative(process.cwd(), outFile)}`);
