// gpu_bench.mjs — the CUDA backend at the face-recognition shape:
// N = 512, d = 512, C ∈ {100000, 1000000}, adaptive margin (m1 = 0.03, m2 = 0.5), s = 64.
//
// Two views, printed as one JSON object (and written to --json FILE):
//  api      the package's call as a user makes it (the addon's loss(), host
//           arrays in and out): forward, forward+backward, and backward as
//           their difference; medians over --iters runs after --warmup runs.
//           Includes the host→device copy of W (C·d·4 bytes) and, with
//           gradients, the device→host copy of dW in every call.
//           Peak device memory: nvidia-smi sampled every 20 ms (MiB), above
//           the level before the first call.
//  head     MarginHead.step on the device: the native calls MarginHead makes
//           (lib/head/device-centres.ts), without its TypeScript argument checks:
//           centres and momentum resident, SGD (μ = 0.9, λ = 5e-4) fused into
//           dŴ, X up and dX down per step. Median step time, the head's
//           resident device bytes (exact) and the sampled peak above idle.
//  kernels  the kernels alone on device-resident data (the ms_cuda_bench
//           program, when --native PATH is given): forward, backward,
//           forward+backward, effective TFLOP/s and peak device memory (exact).
// Effective TFLOP/s counts the useful work 3·2·N·d·C (one product forward,
// two backward) over the forward+backward time.
//
//   node --expose-gc bench/gpu_bench.mjs [--c 100000,1000000] [--iters 20] [--warmup 3]
//                                        [--bf16] [--native build/ms_cuda_bench] [--json out.json] [--no-head]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(ROOT, 'package.json'));

function arg(name, dflt) {
  const k = process.argv.indexOf(`--${name}`);
  if (k < 0) return dflt;
  const v = process.argv[k + 1];
  return v === undefined || v.startsWith('--') ? true : v;
}
const N = Number(arg('n', 512));
const D = Number(arg('d', 512));
const CS = String(arg('c', '100000,1000000')).split(',').map(Number);
const ITERS = Math.max(1, Number(arg('iters', 20)));
const WARMUP = Math.max(0, Number(arg('warmup', 3)));
const BF16 = arg('bf16', false) === true;
const NATIVE = arg('native', '');
const JSON_OUT = arg('json', '');

const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]);
};

function fill(n, seed) {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let k = 0; k < n; k++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[k] = (s >>> 0) / 4294967296 - 0.5;
  }
  return a;
}

/** Samples the GPU's used memory (MiB) every 20 ms with nvidia-smi, when it exists. */
function memorySampler() {
  let max = 0;
  let last = 0;
  let proc;
  try {
    proc = spawn('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-lms', '20'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    proc.on('error', () => {});
    proc.stdout.on('data', (b) => {
      for (const line of String(b).split('\n')) {
        const v = Number(line.trim());
        if (line.trim() && Number.isFinite(v)) {
          last = v;
          max = Math.max(max, v);
        }
      }
    });
  } catch {
    proc = undefined;
  }
  return {
    reset() {
      max = last;
    },
    peak: () => max,
    now: () => last,
    stop: () => proc && proc.kill(),
  };
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const native = require('node-gyp-build')(ROOT);
// The paper's adaptive margin (m1 = 0.03, m2 = 0.5: the kind's defaults) as the addon takes it
// (nativeMarginParams: the package's table of kinds, dist/margins.js, internal).
const { nativeMarginParams } = require(path.join(ROOT, 'dist', 'margins.js'));
const MARGIN = { kind: 'adaptive', m1: 0.03, m2: 0.5 };
const info = native.info();
const out = { device: info.cuda, n: N, d: D, margin: MARGIN, scale: 64, operands: BF16 ? 'bf16' : 'tf32', api: [], head: [], kernels: [] };
if (!info.cuda.usable) {
  out.error = `CUDA not usable: ${info.cuda.reason}`;
  console.log(JSON.stringify(out, null, 1));
  if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 1));
  process.exit(1);
}

const opts = {
  ...nativeMarginParams(MARGIN), scale: 64, fallback: true, gradFilter: 0, weightsBf16: BF16,
  threads: 0, workspaceBytes: 64 << 20, simd: -1, backend: 'cuda',
};
const mem = memorySampler();
await sleep(300);
for (const C of CS) {
  const x = fill(N * D, 1);
  const w = fill(C * D, 2);
  const labels = new Int32Array(N);
  for (let i = 0; i < N; i++) labels[i] = (i * 2654435761) % C;
  // Output arrays reused across calls (options.out), as a training loop would:
  // no 2 GB of fresh pages to fault in per call.
  const outs = {
    outPerSample: new Float32Array(N),
    outGradEmbeddings: new Float32Array(N * D),
    outGradWeights: new Float32Array(C * D),
  };
  const gradOpts = { ...opts, ...outs };
  const fwdOpts = { ...opts, outPerSample: outs.outPerSample };
  global.gc?.();
  await sleep(100);
  const base = mem.now();
  mem.reset();
  for (let k = 0; k < WARMUP; k++) {
    native.loss(x, w, labels, D, fwdOpts, false);
    native.loss(x, w, labels, D, gradOpts, true);
  }
  const tf = [];
  const tfb = [];
  let loss = 0;
  for (let k = 0; k < ITERS; k++) {
    let t0 = performance.now();
    native.loss(x, w, labels, D, fwdOpts, false);
    tf.push(performance.now() - t0);
    t0 = performance.now();
    const r = native.loss(x, w, labels, D, gradOpts, true);
    tfb.push(performance.now() - t0);
    loss = r.loss;
  }
  await sleep(100);
  const fb = median(tfb);
  const row = {
    c: C,
    forward_ms: +median(tf).toFixed(3),
    backward_ms: +(fb - median(tf)).toFixed(3),
    fwd_bwd_ms: +fb.toFixed(3),
    tflops_fwd_bwd: +((6 * N * D * C) / (fb * 1e-3) / 1e12).toFixed(3),
    peak_device_mib_above_idle: base ? mem.peak() - base : null,
    loss,
    note: 'API level: includes copying W to the device and dW back (into reused arrays) in every call',
  };
  out.api.push(row);
  console.error(JSON.stringify(row));
}

/** MarginHead.step at C classes on the device (see the header). */
async function benchHead(C) {
  const x = fill(N * D, 1);
  const labels = new Int32Array(N);
  for (let i = 0; i < N; i++) labels[i] = (i * 2654435761) % C;
  global.gc?.();
  await sleep(100);
  const base = mem.now();
  mem.reset();
  const h = native.headCreate(C, D, BF16, true);
  try {
    const rowsPer = Math.max(1, Math.floor((16 << 20) / (4 * D))); // lib/head/device-centres.ts's chunk
    for (let r0 = 0; r0 < C; r0 += rowsPer) native.headSetRows(h, 0, r0, fill(Math.min(rowsPer, C - r0) * D, 3 + r0), D);
    const stepOpts = { ...opts, stats: true, sgd: { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 } };
    for (let k = 0; k < WARMUP; k++) native.headLoss(h, x, labels, stepOpts, true);
    const ts = [];
    let loss = 0;
    for (let k = 0; k < ITERS; k++) {
      const t0 = performance.now();
      loss = native.headLoss(h, x, labels, stepOpts, true).loss;
      ts.push(performance.now() - t0);
    }
    await sleep(100);
    const ms = median(ts);
    return {
      c: C,
      step_ms: +ms.toFixed(3),
      tflops_step: +((6 * N * D * C) / (ms * 1e-3) / 1e12).toFixed(3),
      resident_device_bytes: native.headBytes(h),
      peak_device_mib_above_idle: base ? mem.peak() - base : null,
      loss,
    };
  } finally {
    native.headFree(h);
  }
}
if (typeof native.headCreate === 'function' && arg('no-head', false) !== true) {
  for (const C of CS) {
    try {
      const row = await benchHead(C);
      out.head.push(row);
      console.error(JSON.stringify(row));
    } catch (e) {
      out.head.push({ c: C, error: String(e?.message ?? e) });
    }
  }
}
mem.stop();

if (NATIVE && fs.existsSync(NATIVE)) {
  for (const extra of [[], ['--bf16']]) {
    const r = spawnSync(NATIVE, ['--n', String(N), '--d', String(D), '--c', CS.join(','), '--iters', String(ITERS), '--warmup', String(WARMUP), ...extra], {
      encoding: 'utf8',
    });
    for (const line of (r.stdout || '').split('\n')) {
      if (line.startsWith('{')) out.kernels.push(JSON.parse(line));
    }
    if (r.status !== 0) out.kernels_error = (r.stderr || '').slice(-2000);
  }
}
console.log(JSON.stringify(out, null, 1));
if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 1));
