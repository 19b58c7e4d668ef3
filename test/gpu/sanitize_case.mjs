// A tiny CUDA-backend call for compute-sanitizer (memcheck, racecheck), run by
// scripts/check_gpu.sh: several row and class tiles, an odd d, two output
// slices, an ignored row, a label −2 (MarginHead), bf16 and gradient filtering.
// Uses the addon directly (no TypeScript transpiler under the sanitizer).
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const native = require('node-gyp-build')(new URL('../..', import.meta.url).pathname);

function problem(n, c, d, seed) {
  let a = seed >>> 0;
  const r = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
  const x = Float32Array.from({ length: n * d }, r);
  const w = Float32Array.from({ length: c * d }, r);
  const labels = Int32Array.from({ length: n }, (_, i) => (i === 3 ? -1 : i === 5 ? -2 : (i * 7919) % c));
  return { x, w, labels, d };
}

const base = { kind: 4, scale: 64, m1: 0.03, m2: 0.5, m3: 0, fallback: true, threads: 0, workspaceBytes: 1 << 20, simd: -1, backend: 'cuda' };
const cases = [
  [problem(150, 300, 513, 1), { ...base, gradFilter: 0, weightsBf16: false }],
  [problem(40, 700, 64, 2), { ...base, gradFilter: 1e-3, weightsBf16: true }],
];
if (!native.info().cuda.usable) {
  console.error('CUDA not usable:', native.info().cuda.reason);
  process.exit(2);
}
for (const [p, opts] of cases) {
  const r = native.loss(p.x, p.w, p.labels, p.d, opts, true);
  if (!Number.isFinite(r.loss)) throw new Error(`non-finite loss ${r.loss}`);
  console.log(`loss ${r.loss.toFixed(6)} skipped ${r.skippedBlocks}/${r.totalBlocks}`);
}
