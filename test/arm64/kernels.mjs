/**
 * The CPU kernels of the addon this Node loads, against the float64 reference
 * (test/reference.mjs) and against central finite differences of the addon's
 * own loss: for every SIMD level and every bf16 matrix path the CPU offers.
 * A plain ES module (no vitest), so that it runs where the test runner does
 * not: the aarch64 prebuilt under qemu-aarch64 with an arm64 Node (.ci/run,
 * scripts/test-arm64.sh), where a vitest run would take far too long.
 *
 *   node test/arm64/kernels.mjs                       # the addon 'margin-softmax' resolves to
 *   EXPECT_ARCH=arm64 EXPECT_SIMD=neon EXPECT_MATRIX=neon-bf16 node test/arm64/kernels.mjs
 *
 * ONLY=fp32 or ONLY=bf16 runs one half (ONLY=all or unset: both).
 * EXPECT_*: what deviceInfo() must report (so that an emulator without BF16,
 * or a binary without the NEON kernels, fails instead of passing on less).
 * The tolerances are those of test/cpu-backend.test.ts (fp32) and
 * test/bf16-cpu.test.ts (bf16), where they are derived.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { deviceInfo, forward, lossAndGrad } from 'margin-softmax';
import { randomProblem, referenceLoss, relMaxErr, roundBf16, allFinite } from '../reference.mjs';

const require = createRequire(import.meta.url);
const pkgDir = path.dirname(require.resolve('margin-softmax/package.json'));
const addon = path.relative(pkgDir, require('node-gyp-build').resolve(pkgDir));
const binding = require('node-gyp-build')(pkgDir);
const SIMD_CODES = { portable: 4, neon: 5, avx2: 8, avx512: 16 }; // lib/native.ts
const info = deviceInfo().cpu;
console.log(`${process.arch}: ${addon}; simd ${info.simd} (width ${info.simdWidth}), matrix ${info.matrix}`);
const expectEnv = (name, got) => {
  if (process.env[name]) assert.equal(got, process.env[name], `${name}`);
};
expectEnv('EXPECT_ARCH', process.arch);
expectEnv('EXPECT_SIMD', info.simd);
expectEnv('EXPECT_MATRIX', info.matrix);
if (process.env.EXPECT_ADDON) assert.ok(addon.startsWith(process.env.EXPECT_ADDON + path.sep), `addon ${addon}`);

const LOSS_TOL = 5e-5; // fp32 vs float64: relative, of max(1, |loss|)
const GRAD_TOL = 1e-4; // relative to the largest gradient element
const U = 2 ** -8; // bf16 unit roundoff
const S = 64;
const MARGINS = [
  { kind: 'adaptive' },
  { kind: 'arcface', m: 0.5 },
  { kind: 'cosface', m: 0.35 },
  { kind: 'combined', m1: 0.9, m2: 0.4, m3: 0.15 },
  { kind: 'cvm', m1: 0.3, m2: 0.2 },
];
// Shapes chosen for the edges of the kernels: rows not a multiple of the
// register tile (8 fp32, 4 bf16), classes not a multiple of 12 or 16 columns,
// d not a multiple of 4, and one d > the k block (512) so the GEMM accumulates
// over two k blocks.
const SHAPES = [
  [13, 301, 37],
  [40, 1000, 64],
  [9, 150, 520],
];
const simdLevels = [...new Set(['portable', info.simd])];
const matrixPaths = [...info.matrixPaths].reverse(); // 'none' first, then the bf16 instructions the CPU has
let checks = 0;

function checkFp32(simd, p, margin) {
  const r = lossAndGrad(p, { backend: 'cpu', margin, scale: S, simd, threads: 2 });
  const ref = referenceLoss(p, { margin, scale: S, rowMargins: r.margins });
  assert.ok(allFinite(r.perSample) && allFinite(r.gradEmbeddings) && allFinite(r.gradWeights), 'non-finite output');
  assert.ok(Math.abs(r.loss - ref.loss) <= LOSS_TOL * Math.max(1, Math.abs(ref.loss)), `loss ${r.loss} vs ${ref.loss}`);
  for (let i = 0; i < ref.perSample.length; i++)
    assert.ok(Math.abs(r.perSample[i] - ref.perSample[i]) <= LOSS_TOL * Math.max(1, Math.abs(ref.perSample[i])), `perSample[${i}]`);
  const ex = relMaxErr(r.gradEmbeddings, ref.gradEmbeddings), ew = relMaxErr(r.gradWeights, ref.gradWeights);
  assert.ok(ex <= GRAD_TOL && ew <= GRAD_TOL, `gradient errors ${ex}, ${ew}`);
  checks++;
  return r;
}

/**
 * Central differences of the addon's own fp32 loss along a random direction v
 * of the embeddings and of the weights, against ⟨grad, v⟩. The tolerance is
 * the same difference taken on the float64 reference (its truncation error at
 * this h) plus the fp32 loss error LOSS_TOL·max(1,|L|) divided by h (the
 * rounding error of the quotient), plus GRAD_TOL of the directional derivative.
 */
function checkFiniteDifferences(simd, p, margin) {
  const h = 1e-2;
  const r = lossAndGrad(p, { backend: 'cpu', margin, scale: 16, simd, threads: 2 });
  for (const which of ['embeddings', 'weights']) {
    const base = p[which];
    let seed = 7;
    const v = Float32Array.from(base, () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1);
    const moved = (t) => ({ ...p, [which]: Float32Array.from(base, (b, k) => b + t * v[k]) });
    const grad = which === 'embeddings' ? r.gradEmbeddings : r.gradWeights;
    let dir = 0;
    for (let k = 0; k < v.length; k++) dir += grad[k] * v[k];
    const nat = (t) => forward(moved(t), { backend: 'cpu', margin, scale: 16, simd, threads: 2 }).loss;
    const ref = (t) => referenceLoss(moved(t), { margin, scale: 16 }, false).loss;
    const fd = (nat(h) - nat(-h)) / (2 * h);
    const refRes = referenceLoss(p, { margin, scale: 16 });
    const refGrad = which === 'embeddings' ? refRes.gradEmbeddings : refRes.gradWeights;
    let refDir = 0;
    for (let k = 0; k < v.length; k++) refDir += refGrad[k] * v[k];
    const truncation = Math.abs((ref(h) - ref(-h)) / (2 * h) - refDir);
    const tol = truncation + (LOSS_TOL * Math.max(1, Math.abs(r.loss))) / h + GRAD_TOL * Math.abs(refDir);
    assert.ok(Math.abs(fd - dir) <= tol, `${which}: finite difference ${fd} vs ⟨grad, v⟩ ${dir} (tolerance ${tol})`);
    checks++;
  }
}

function checkBf16(matrix, p, margin, d) {
  const opts = { backend: 'cpu', margin, scale: S, weightsDtype: 'bfloat16', matrix, threads: 2 };
  const r = lossAndGrad(p, opts);
  const ref = referenceLoss({ ...p, weights: roundBf16(p.weights) }, { margin });
  const m2 = margin.kind === 'cvm' ? Math.abs(margin.m2 ?? 0) : 0;
  const typical = (S * U) / Math.sqrt(3 * d);
  let worst = 0;
  for (let i = 0; i < ref.perSample.length; i++) worst = Math.max(worst, Math.abs(r.perSample[i] - ref.perSample[i]));
  assert.ok(worst <= S * U * (1 + 2 * m2) && worst <= 3 * typical, `bf16 perSample error ${worst}`);
  assert.ok(Math.abs(r.loss - ref.loss) <= 3 * typical, `bf16 loss ${r.loss} vs ${ref.loss}`);
  const ex = relMaxErr(r.gradEmbeddings, ref.gradEmbeddings), ew = relMaxErr(r.gradWeights, ref.gradWeights);
  assert.ok(ex <= 4 * U && ew <= 4 * U, `bf16 gradient errors ${ex}, ${ew}`);
  if (matrix !== 'none') {
    // The same products as the rounded-operand fp32 kernels, up to fp32 summation order.
    const b = lossAndGrad(p, { ...opts, matrix: 'none' });
    assert.ok(Math.abs(r.loss - b.loss) <= 1e-6 * b.loss, `${matrix} loss ${r.loss} vs none ${b.loss}`);
    assert.ok(relMaxErr(r.gradEmbeddings, b.gradEmbeddings) < U / 8 && relMaxErr(r.gradWeights, b.gradWeights) < U / 8,
      `${matrix} gradients differ from the rounded-operand fp32 ones`);
  }
  checks++;
}

const t0 = Date.now();
for (const simd of process.env.ONLY === 'bf16' ? [] : simdLevels) {
  assert.equal(binding.info(SIMD_CODES[simd]).cpu.simd, simd, `the addon runs simd '${simd}'`);
  for (const [n, c, d] of SHAPES) {
    const p = randomProblem(n, c, d, 11 + n);
    for (const margin of MARGINS) checkFp32(simd, p, margin);
  }
  checkFiniteDifferences(simd, randomProblem(12, 90, 20, 5), { kind: 'arcface', m: 0.5 });
  checkFiniteDifferences(simd, randomProblem(12, 90, 20, 6), { kind: 'cvm', m1: 0.3, m2: 0.2 });
  console.log(`simd '${simd}': float64 reference and finite differences pass (${((Date.now() - t0) / 1e3).toFixed(1)} s)`);
}
for (const matrix of process.env.ONLY === 'fp32' ? [] : matrixPaths) {
  for (const [n, c, d] of SHAPES) {
    const p = randomProblem(n, c, d, 31 + n);
    for (const margin of [MARGINS[0], MARGINS[1], MARGINS[4]]) checkBf16(matrix, p, margin, d);
  }
  console.log(`matrix '${matrix}': bf16 error bounds pass (${((Date.now() - t0) / 1e3).toFixed(1)} s)`);
}
console.log(`${checks} checks passed in ${((Date.now() - t0) / 1e3).toFixed(1)} s`);
