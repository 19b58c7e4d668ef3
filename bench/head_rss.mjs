// RSS of a small MarginHead over many steps: the slope (bytes per step) of a
// least-squares line through per-window RSS samples after a warm-up. A
// measurement, not a test: RSS depends on what else runs (malloc arenas, V8
// heap growth), so the test suite checks the addon's own allocation counter
// instead (test/head.test.ts). Run: node --expose-gc bench/head_rss.mjs [steps]
import { createRequire } from 'node:module';
import * as os from 'node:os';
const require = createRequire(import.meta.url);
const { MarginHead } = require('../dist/index.js');

const steps = Number(process.argv[2] ?? 200_000);
const warmup = 20_000;
const windows = 20;
const head = new MarginHead({ classes: 64, dim: 16, margin: { kind: 'adaptive' }, sampleRate: 0.5, optimizer: { lr: 0.01, momentum: 0.9 } });
const x = Float32Array.from({ length: 8 * 16 }, (_, i) => Math.sin(i));
const y = Int32Array.from({ length: 8 }, (_, i) => (i * 7) % 64);
for (let i = 0; i < warmup; i++) head.step(x, y);
const per = Math.floor(steps / windows);
const samples = [];
for (let w = 0; w < windows; w++) {
  for (let i = 0; i < per; i++) head.step(x, y);
  globalThis.gc?.();
  samples.push([(w + 1) * per, process.memoryUsage().rss]);
}
const n = samples.length;
const mx = samples.reduce((a, s) => a + s[0], 0) / n;
const my = samples.reduce((a, s) => a + s[1], 0) / n;
const slope = samples.reduce((a, s) => a + (s[0] - mx) * (s[1] - my), 0) / samples.reduce((a, s) => a + (s[0] - mx) ** 2, 0);
const mb = (b) => (b / 2 ** 20).toFixed(1);
console.log(`CPU: ${os.cpus()[0]?.model ?? 'unknown'}; ${steps} steps after ${warmup} warm-up, ${windows} windows`);
console.log(`RSS ${mb(Math.min(...samples.map((s) => s[1])))}–${mb(Math.max(...samples.map((s) => s[1])))} MB; slope ${slope.toFixed(3)} bytes/step`);
