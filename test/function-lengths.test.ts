/**
 * Functions stay short: none of the library's, the training package's, the
 * benchmarks' or the native sources' functions is longer than LIMIT lines,
 * except the compute kernels named below (a kernel's body is one loop nest
 * whose parts share registers; splitting it would hide what is fused).
 * scripts/function-lengths.mjs measures; it prints the longest ones.
 */
import { execFileSync } from 'child_process';
import * as path from 'path';
import { expect, test } from 'vitest';

const LIMIT = 80;
/** file:name of the kernels exempt from LIMIT, each with why. */
const KERNELS: Record<string, string> = {
  'native/cuda/backward_dw.cu:backward_dw': 'the dW kernel: tile loads, recomputed cosines, the softmax weights and the MMA in one pipelined loop',
};

interface Fn { file: string; line: number; name: string; lines: number }

/** Every function the script measures (it runs as the command a developer runs). */
function allFunctions(): Fn[] {
  const root = path.join(__dirname, '..');
  const out = execFileSync(process.execPath, [path.join(root, 'scripts/function-lengths.mjs'), '--all', '--json'], { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
  return JSON.parse(out) as Fn[];
}

test(`no function outside the kernels is longer than ${LIMIT} lines`, () => {
  const long = allFunctions().filter((f) => f.lines > LIMIT && !(`${f.file}:${f.name}` in KERNELS));
  expect(long.map((f) => `${f.file}:${f.line} ${f.name} (${f.lines} lines)`)).toEqual([]);
});

test('the measurement sees both languages and every exempt kernel exists', () => {
  const fns = allFunctions();
  expect(fns.some((f) => f.file.endsWith('.ts'))).toBe(true);
  expect(fns.some((f) => f.file.endsWith('.cc'))).toBe(true);
  for (const key of Object.keys(KERNELS)) expect(fns.some((f) => `${f.file}:${f.name}` === key)).toBe(true);
});
