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
// The timing figures are bench/cpu_loss.mjs's (which imports pathErrors for its
// error column); this only measures accuracy.
//
//   node bench/cpu_paths_error.mjs [--classes=10000]
import { fileURLToPath } from 'node:url';
import { MARGIN, SCALE, loadPackage, machineDescription } from './common.mjs';
import { randomProblem, referenceLoss, relMaxErr, roundBf16 } from '../test/reference.mjs';

const N = 128;
const d = 512;

/**
 * Every CPU path of this machine against float64 at N = 128, d = 512, C = classes:
 * [{ path, simd?, matrix?, lossRelErr, gradEmbeddingsRelMaxErr, gradWeightsRelMaxErr }].
 */
export function pathErrors(pkg, classes) {
  const info = pkg.deviceInfo().cpu;
  const p = randomProblem(N, classes, d, 1);
  const wBf16 = roundBf16(p.weights);
  const refFp32 = referenceLoss(p, { margin: MARGIN, scale: SCALE });
  const refBf16 = referenceLoss({ ...p, weights: wBf16 }, { margin: MARGIN, scale: SCALE });
  // This CPU's best path and every path below it (each can be forced).
  const SIMD = ['avx512', 'avx2', 'portable'];
  const rows = [
    ...SIMD.slice(SIMD.indexOf(info.simd)).map((simd) => ({ path: `fp32 ${simd}`, simd, ref: refFp32, input: p, opts: { simd } })),
    ...info.matrixPaths.map((matrix) => ({
      path: `bf16 ${matrix}`, matrix, ref: refBf16, input: { ...p, weights: wBf16 }, opts: { weightsDtype: 'bfloat16', matrix },
    })),
  ];
  return rows.map((row) => {
    const r = pkg.lossAndGrad(row.input, { margin: MARGIN, scale: SCALE, backend: 'cpu', ...row.opts });
    return {
      path: row.path,
      ...(row.simd ? { simd: row.simd } : { matrix: row.matrix }),
      classes,
      lossRelErr: Math.abs(r.loss - row.ref.loss) / Math.abs(row.ref.loss),
      gradEmbeddingsRelMaxErr: relMaxErr(r.gradEmbeddings, row.ref.gradEmbeddings),
      gradWeightsRelMaxErr: relMaxErr(r.gradWeights, row.ref.gradWeights),
    };
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const argv = process.argv.slice(2);
  const C = Number((argv.find((a) => a.startsWith('--classes=')) ?? '--classes=10000').slice(10));
  const pkg = loadPackage();
  const machine = machineDescription(pkg);
  const info = pkg.deviceInfo().cpu;
  console.log(`${machine.cpuModel}: simd ${info.simd}, bf16 paths ${info.matrixPaths.join(', ')} ('auto': ${info.matrix}); N=${N} d=${d} C=${C}, adaptive, s=${SCALE}`);
  console.log('| path | loss rel. error | dX rel. max error | dW rel. max error |');
  console.log('|---|---|---|---|');
  for (const e of pathErrors(pkg, C)) {
    console.log(`| ${e.path} | ${e.lossRelErr.toExponential(1)} | ${e.gradEmbeddingsRelMaxErr.toExponential(1)} | ${e.gradWeightsRelMaxErr.toExponential(1)} |`);
  }
}
