#!/usr/bin/env node
// cpu_paths_error.mjs — the error of every CPU kernel path this machine has
// against the float64 reference (test/reference.mjs), on one problem of the
// benchmark's shape: N = 128, d = 512, C = 10⁴ (default), adaptive margin, s = 64.
// fp32 paths (simd avx512 / avx2 / portable) against the reference on the
// centres as given; bf16 paths (matrix amx-bf16 / avx512-bf16 / none) against
// the reference on the bf16-rounded centres (the centres are bf16 by
// definition there; what remains is the rounding of X̂ and G, see docs/cpu.md's
// "bf16 on the CPU"). Reports the loss's relative error and the largest
// element error of dX and dW relative to the largest element (relMaxErr).
// The timing figures are bench/cpu_loss.mjs's; this only measures accuracy.
//
//   node bench/cpu_paths_error.mjs [--classes=10000]
import { MARGIN, SCALE, loadPackage, machineDescription } from './common.mjs';
import { randomProblem, referenceLoss, relMaxErr, roundBf16 } from '../test/reference.mjs';

const argv = process.argv.slice(2);
const C = Number((argv.find((a) => a.startsWith('--classes=')) ?? '--classes=10000').slice(10));
const N = 128;
const d = 512;
const pkg = loadPackage();
const machine = machineDescription(pkg);
const info = pkg.deviceInfo().cpu;
console.log(`${machine.cpuModel}: simd ${info.simd}, bf16 path ${info.matrix}; N=${N} d=${d} C=${C}, adaptive, s=${SCALE}`);

const p = randomProblem(N, C, d, 1);
const wBf16 = roundBf16(p.weights);
const refFp32 = referenceLoss(p, { margin: MARGIN, scale: SCALE });
const refBf16 = referenceLoss({ ...p, weights: wBf16 }, { margin: MARGIN, scale: SCALE });

// This CPU's best path and every path below it (each can be forced).
const SIMD = ['avx512', 'avx2', 'portable'];
const MATRIX = ['amx-bf16', 'avx512-bf16', 'none'];
const simdLevels = SIMD.slice(SIMD.indexOf(info.simd));
const matrixPaths = MATRIX.slice(MATRIX.indexOf(info.matrix));
const rows = [
  ...simdLevels.map((simd) => ({ path: `fp32 ${simd}`, ref: refFp32, input: p, opts: { simd } })),
  ...matrixPaths.map((matrix) => ({ path: `bf16 ${matrix}`, ref: refBf16, input: { ...p, weights: wBf16 }, opts: { weightsDtype: 'bfloat16', matrix } })),
];
console.log('| path | loss rel. error | dX rel. max error | dW rel. max error |');
console.log('|---|---|---|---|');
for (const row of rows) {
  const r = pkg.lossAndGrad(row.input, { margin: MARGIN, scale: SCALE, backend: 'cpu', ...row.opts });
  const lossErr = Math.abs(r.loss - row.ref.loss) / Math.abs(row.ref.loss);
  const dx = relMaxErr(r.gradEmbeddings, row.ref.gradEmbeddings);
  const dw = relMaxErr(r.gradWeights, row.ref.gradWeights);
  console.log(`| ${row.path} | ${lossErr.toExponential(1)} | ${dx.toExponential(1)} | ${dw.toExponential(1)} |`);
}
