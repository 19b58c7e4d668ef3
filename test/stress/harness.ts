/** Runs test/stress/teardown-harness.mjs and checks what it printed (shared by the CPU and CUDA suites). */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { expect } from 'vitest';

const HARNESS = path.join(__dirname, 'teardown-harness.mjs');

export interface HarnessConfig {
  backend: 'cpu' | 'cuda';
  rounds: number;
  dir: string;
  classes?: number;
  dim?: number;
}

/** The harness in a child process, without blocking this one's event loop (the test runner's RPC needs it). */
function run(cfg: HarnessConfig, timeoutMs: number): Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', HARNESS, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/**
 * Every scenario ended as planned, the process exited cleanly, the main
 * thread's results did not change, and the addon's live native bytes are
 * back to where they were (after having seen the workers' memory).
 */
export async function expectCleanTeardown(cfg: HarnessConfig, timeoutMs: number): Promise<void> {
  const r = await run(cfg, timeoutMs);
  expect(r.signal, r.stderr).toBeNull();
  expect(r.status, r.stderr).toBe(0);
  const out = JSON.parse(r.stdout.trim().split('\n').pop() as string);
  // Per round: 5 operations × (4 stages + process.exit), 5 workers together, the main thread's check.
  expect(out.results).toHaveLength(cfg.rounds * (5 * 5 + 5 + 1));
  for (const s of out.results) {
    if (s.how === 'main') expect(s.last).toBe('same');
    else if (s.exit) expect(s.how).toBe('exit 0');
    if (s.stage === 'done' && !s.exit) expect(s.last).toBe('done');
  }
  expect(out.sameAfter).toBe(true);
  expect(out.asyncSame).toBe(true);
  expect(out.liveDuring).toBeGreaterThan(0);
  expect(out.liveAfter).toBe(out.liveBefore);
  expect(out.savedLoaded).toBeGreaterThan(0);
}
