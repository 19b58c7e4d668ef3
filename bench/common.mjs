// common.mjs — shared by the benchmark scripts: deterministic inputs, statistics,
// flop counts, the machine description, and running one measurement in a child
// process (bench/worker.mjs) so that each peak RSS is clean.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BENCH_DIR, '..');
export const RESULTS_DIR = path.join(BENCH_DIR, 'results');
export const require = createRequire(path.join(ROOT, 'package.json'));

/** `--name=value` from the command line, else `dflt`. */
export function cliOption(name, dflt) {
  const a = process.argv.slice(2).find((s) => s.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
}

export const MARGIN = Object.freeze({ kind: 'adaptive', m1: 0.03, m2: 0.5 });
export const SCALE = 64;
export const MiB = 1024 * 1024;

/** The compiled package (dist/) with a readable error when it is missing. */
export function loadPackage() {
  try {
    return require(path.join(ROOT, 'dist', 'index.js'));
  } catch (err) {
    throw new Error(
      `Could not load the compiled package from dist/ (${err.message.split('\n')[0]}).\n` +
        'Build it first: npx cmake-js compile && npx tsc -p tsconfig.json',
    );
  }
}

/** The raw addon (for _productsSeconds, the GEMM ceiling). */
export function loadAddon() {
  return require('node-gyp-build')(ROOT);
}

// ---------------------------------------------------------------- inputs
/** xorshift128 seeded by splitmix32: fast, deterministic, the same on every run. */
function rng(seed) {
  let s = seed >>> 0;
  const next32 = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = next32(), b = next32(), c = next32(), d = next32();
  return () => {
    const t = a ^ (a << 11);
    a = b; b = c; c = d;
    d = (d ^ (d >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return d;
  };
}

/** Fills a Float32Array with uniform values in [−1, 1). */
function fillUniform(arr, seed) {
  const next = rng(seed);
  const k = 2 / 4294967296;
  for (let i = 0; i < arr.length; i++) arr[i] = next() * k - 1;
  return arr;
}

/**
 * The benchmark inputs: X (N×d), W (C×d) uniform in [−1, 1), labels uniform in [0, C).
 * The same (N, d, C, seed) gives the same arrays in every process.
 */
export function makeInputs(N, d, C, seed = 1) {
  const embeddings = fillUniform(new Float32Array(N * d), seed * 3 + 1);
  const weights = fillUniform(new Float32Array(C * d), seed * 3 + 2);
  const next = rng(seed * 3 + 3);
  const labels = new Int32Array(N);
  for (let i = 0; i < N; i++) labels[i] = next() % C;
  return { embeddings, weights, labels, dim: d };
}

// ---------------------------------------------------------------- figures
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Flops counted for one call: 2·N·d·C for the forward, 3·2·N·d·C for forward + backward. */
export function flops(mode, N, d, C) {
  return (mode === 'fwd' ? 2 : 6) * N * d * C;
}

export function summarize(times, flopCount) {
  if (!times.length) return null;
  const med = median(times);
  const min = Math.min(...times);
  const max = Math.max(...times);
  return {
    runs: times.length,
    times,
    medianS: med,
    minS: min,
    maxS: max,
    gflops: flopCount / med / 1e9,
    gflopsBest: flopCount / min / 1e9,
  };
}

export function fmtTime(s) {
  if (s == null || !Number.isFinite(s)) return '–';
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toPrecision(3)} ms`;
  return `${s.toPrecision(3)} s`;
}

export function fmtBytes(b) {
  if (b == null || !Number.isFinite(b)) return '–';
  if (Math.abs(b) >= 1024 * MiB) return `${(b / 1024 / MiB).toFixed(2)} GiB`;
  return `${(b / MiB).toFixed(b >= 100 * MiB ? 0 : 1)} MiB`;
}

export function fmtGflops(g) {
  if (g == null || !Number.isFinite(g)) return '–';
  return g >= 10 ? g.toFixed(0) : g >= 1 ? g.toFixed(1) : g.toFixed(2);
}

const SUPERSCRIPT = '⁰¹²³⁴⁵⁶⁷⁸⁹';
/** 10³, 10⁴, … for powers of ten, else the number with separators. */
export const fmtC = (C) => {
  const e = Math.log10(C);
  return Number.isInteger(e) && e > 1 ? `10${[...String(e)].map((c) => SUPERSCRIPT[c]).join('')}` : C.toLocaleString('en-US');
};

/** A result's status in a few words, for table cells that have little room. */
export function shortStatus(status) {
  if (!status) return 'not run';
  if (status === 'ok') return 'ok';
  if (status.includes('memory')) return status.includes('would') ? 'skipped: would exceed memory' : 'out of memory';
  if (status.includes('quick-mode')) return 'skipped (quick-mode time limit)';
  if (status.includes('budget') || status.includes('timed out')) return 'over budget';
  return status.split(':')[0];
}

// ---------------------------------------------------------------- machine
function tfjsVersions() {
  const v = (name) => {
    try {
      return require(`${name}/package.json`).version;
    } catch {
      return null;
    }
  };
  return { tfjs: v('@tensorflow/tfjs'), 'tfjs-backend-wasm': v('@tensorflow/tfjs-backend-wasm') };
}

/** CPU model, cores, SIMD (from deviceInfo()), Node and tfjs versions, GPU if any. */
export function machineDescription(pkg) {
  const cpus = os.cpus();
  const info = pkg.deviceInfo();
  const cuda = info.cuda;
  let cpuFlags = '';
  try {
    const txt = require('node:fs').readFileSync('/proc/cpuinfo', 'utf8');
    const flags = (txt.match(/^flags\s*:\s*(.*)$/m) || [])[1] || '';
    const have = new Set(flags.split(' '));
    cpuFlags = ['avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_bf16']
      .filter((f) => have.has(f)).join(' ');
  } catch {}
  return {
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    logicalCores: cpus.length,
    cpuFlags,
    totalMemoryBytes: os.totalmem(),
    freeMemoryBytesAtStart: os.freemem(),
    loadAverageAtStart: os.loadavg(),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    ...tfjsVersions(),
    fused: { threads: info.cpu.threads, simd: info.cpu.simd, simdWidth: info.cpu.simdWidth, matrix: info.cpu.matrix, matrixPaths: info.cpu.matrixPaths },
    backends: pkg.backends(),
    gpu: cuda.usable
      ? { name: cuda.name, computeCapability: cuda.computeCapability, totalMemoryBytes: cuda.totalMemory, driverVersion: cuda.driverVersion, runtimeVersion: cuda.runtimeVersion }
      : null,
    cuda: { compiled: cuda.compiled, usable: cuda.usable, reason: cuda.reason ?? null },
  };
}

// ---------------------------------------------------------------- children
const RESULT_MARK = '@@BENCH_RESULT ';

/** What worker.mjs prints as its result line. */
export function emitResult(obj) {
  process.stdout.write(`\n${RESULT_MARK}${JSON.stringify(obj)}\n`);
}

function classifyFailure(code, signal, stderr) {
  const tail = stderr.split('\n').filter(Boolean).slice(-6).join('\n');
  if (signal === 'SIGKILL') return { status: 'out of memory', message: `killed by SIGKILL (the kernel's OOM killer, or the time limit)\n${tail}` };
  if (/heap out of memory|Out of memory|OOM|allocation failed|Cannot enlarge memory|could not allocate memory/i.test(stderr)) {
    return { status: 'out of memory', message: tail };
  }
  return { status: 'error', message: `exit code ${code}${signal ? `, signal ${signal}` : ''}\n${tail}` };
}

/**
 * Runs bench/worker.mjs with one job in a fresh process and resolves with its
 * result object; a child that dies without a result gives {status: 'out of memory' |
 * 'error' | 'timed out'}. timeoutS kills the child (SIGKILL) when exceeded.
 */
export function runChild(job, { timeoutS = 600, echo = false } = {}) {
  return new Promise((resolve) => {
    const args = ['--expose-gc', path.join(BENCH_DIR, 'worker.mjs'), JSON.stringify(job)];
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timedOut = false;
    child.stdout.on('data', (b) => {
      out += b;
      if (echo) process.stderr.write(b);
    });
    child.stderr.on('data', (b) => {
      err += b;
      if (echo) process.stderr.write(b);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith(RESULT_MARK));
      if (line) return resolve(JSON.parse(line.slice(RESULT_MARK.length)));
      if (timedOut) return resolve({ ...job, status: 'timed out', message: `killed after ${timeoutS} s` });
      resolve({ ...job, ...classifyFailure(code, signal, err + out) });
    });
  });
}
