// The sharded head across real processes: mpirun starts 2 or 3 ranks of
// test/mpi/sharded-worker.mjs, and the results are checked here against the
// single-process MarginHead. Every job runs twice: over shared memory and
// loopback ('shm'), and with each rank on a host of its own that shares
// nothing with the others but TCP ('tcp': test/hosts/netns-mpirun.sh, one
// network namespace and working folder per host; needs root).
//
// Needs Open MPI's mpirun on the PATH, an addon built with MPI and the
// compiled library (dist/, from `npm run build:ts`). Where any is missing the
// suite is skipped and says why; MARGIN_SOFTMAX_REQUIRE_MPI=1 (set by CI once
// it has installed Open MPI) turns the skip into a failure.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CommError, deviceInfo, localCommunicator, MarginHead, mergeStats, ShardedMarginHead, shardRange, type MarginHeadOptions } from '../lib/index';
import { rng as seededRandom } from './reference.mjs';
import { whyNotHosts } from './hosts/netns-probe';

const ROOT = path.join(__dirname, '..');
const WORKER = path.join(__dirname, 'mpi', 'sharded-worker.mjs');
const HARNESS = path.join(__dirname, 'hosts', 'netns-mpirun.sh');

function whyNot(): string | null {
  if (spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status !== 0) return 'mpirun is not on the PATH (install Open MPI: apt-get install openmpi-bin libopenmpi-dev)';
  const mpi = deviceInfo().mpi;
  if (!mpi.compiled) return mpi.reason ?? 'the addon was built without MPI';
  if (!fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) return 'dist/ is not built (npm run build:ts)';
  return null;
}


const skipReason = whyNot();
const hostsSkipReason = skipReason ?? whyNotHosts();
if (hostsSkipReason && process.env.MARGIN_SOFTMAX_REQUIRE_MPI === '1') throw new Error(`MARGIN_SOFTMAX_REQUIRE_MPI=1 but ${hostsSkipReason}`);
if (skipReason) console.warn(`test/mpi.test.ts skipped: ${skipReason}`);
else if (hostsSkipReason) console.warn(`test/mpi.test.ts: the separate-hosts jobs are skipped: ${hostsSkipReason}`);

type Transport = 'shm' | 'tcp';
const TRANSPORTS: { transport: Transport; skip: string | null; label: string }[] = [
  { transport: 'shm', skip: skipReason, label: 'mpirun, shared memory' },
  { transport: 'tcp', skip: hostsSkipReason, label: 'one host per rank, TCP only' },
];

/**
 * One MPI job of `np` ranks running `worker` with the job description.
 * 'shm': shared memory (vader) and loopback, every rank in `dir`; 'tcp': rank
 * k alone on host h<k>, in its folder `dir`/hosts/h<k> (hostFolder).
 */
function mpirun(transport: Transport, np: number, dir: string, job: object | string, timeoutMs = 90_000, worker = WORKER) {
  const program = [process.execPath, worker, typeof job === 'string' ? job : JSON.stringify(job)];
  const args =
    transport === 'shm'
      ? ['mpirun', '--allow-run-as-root', '--oversubscribe', '-np', String(np), '--wdir', dir,
         '--mca', 'btl', 'self,vader', '--mca', 'btl_vader_single_copy_mechanism', 'none', '--mca', 'oob_tcp_if_include', 'lo', ...program]
      : ['bash', HARNESS, String(np), path.join(dir, 'hosts'), '-np', String(np), '--', ...program];
  return run(args, timeoutMs);
}

/**
 * A command's status and output. Asynchronous: vitest's worker must keep
 * answering its runner while the jobs run (a long synchronous wait makes
 * vitest report an RPC timeout).
 */
function run(args: string[], timeoutMs: number): Promise<{ status: number | null; signal: NodeJS.Signals | null; output: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, output: `${stdout}\n${stderr}`, stderr });
    });
  });
}

/** Where rank `rank`'s relative paths lead. */
function hostFolder(transport: Transport, dir: string, rank: number): string {
  return transport === 'shm' ? dir : path.join(dir, 'hosts', `h${rank}`);
}

/** The bytes that crossed the hosts' links in the last 'tcp' job in `dir`. */
function linkBytes(dir: string): number {
  const hosts = JSON.parse(fs.readFileSync(path.join(dir, 'hosts', 'traffic.json'), 'utf8')) as { txBytes: number }[];
  return hosts.reduce((a, h) => a + h.txBytes, 0);
}

const C = 203; // not a multiple of 2 or 3: the slices differ in size
const D = 24;
const N = 12;
const STEPS = 3;

const base: MarginHeadOptions = {
  classes: C,
  dim: D,
  margin: { kind: 'arcface', m: 0.5 },
  scale: 32,
  seed: 5,
  optimizer: { lr: 0.5, momentum: 0.9, weightDecay: 1e-4 },
  threads: 1,
};

/** STEPS batches of unit-norm rows; labels spread over the classes, one row ignored per batch. */
function writeBatches(dir: string, steps = STEPS) {
  const rnd = seededRandom(11);
  const x = new Float32Array(steps * N * D);
  for (let i = 0; i < steps * N; i++) {
    let s = 0;
    for (let j = 0; j < D; j++) s += (x[i * D + j] = rnd() - 0.5) ** 2;
    for (let j = 0; j < D; j++) x[i * D + j] /= Math.sqrt(s);
  }
  const y = new Int32Array(steps * N);
  for (let i = 0; i < y.length; i++) y[i] = i % N === 3 ? -1 : Math.floor(rnd() * C);
  fs.writeFileSync(path.join(dir, 'x.bin'), Buffer.from(x.buffer));
  fs.writeFileSync(path.join(dir, 'y.bin'), Buffer.from(y.buffer));
  return { x, y };
}

function batch(data: { x: Float32Array; y: Int32Array }, s: number) {
  return { x: data.x.subarray(s * N * D, (s + 1) * N * D), y: data.y.subarray(s * N, (s + 1) * N) };
}

interface RankOut {
  rank: number;
  offset: number;
  count: number;
  steps: { loss: number; accuracy: number; traffic: { statsBytes: number; gradBytes: number } }[];
  predict?: number[];
}

function readOut(dir: string, rank: number): RankOut {
  return JSON.parse(fs.readFileSync(path.join(dir, `out-${rank}.json`), 'utf8'));
}

function readGrad(dir: string, step: number, rank: number): Float32Array {
  const b = fs.readFileSync(path.join(dir, `grad-${step}-${rank}.bin`));
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4).slice();
}

/** The newest generation (step-S folder) of the sharded checkpoint in `ckpt`. */
function newestGeneration(ckpt: string): string {
  const steps = fs.readdirSync(ckpt).filter((f) => /^step-\d+$/.test(f) && fs.existsSync(path.join(ckpt, f, 'manifest.json')));
  steps.sort((a, b) => Number(b.slice(5)) - Number(a.slice(5)));
  return path.join(ckpt, steps[0]);
}

/** The centres of a sharded checkpoint, concatenated in rank order; shard k read from folders[k] (or the one folder). */
function checkpointWeights(folders: string[]): Float32Array {
  const m = JSON.parse(fs.readFileSync(path.join(newestGeneration(folders[0]), 'manifest.json'), 'utf8'));
  const all = new Float32Array(m.classes * m.dim);
  for (const s of m.shards) {
    const gen = newestGeneration(folders[s.rank] ?? folders[0]);
    all.set(MarginHead.load(path.join(gen, s.file)).getWeights(), s.offset * m.dim);
  }
  return all;
}

/** Every host's files of checkpoint `rel` copied to every host of `dir` (as an operator gathers the shards before changing the rank count). */
function spreadCheckpoint(dir: string, rel: string, from: number, to: number): void {
  for (let a = 0; a < from; a++) {
    for (let b = 0; b < to; b++) if (a !== b) fs.cpSync(path.join(dir, 'hosts', `h${a}`, rel), path.join(dir, 'hosts', `h${b}`, rel), { recursive: true, force: false });
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * fp32 agreement as in the in-process sharding test: the LSE merge order
 * differs (ranks vs threads), so values agree to 1e-4 of the array's scale.
 */
function expectClose(got: Float32Array, want: Float32Array, floor = 0): void {
  expect(maxAbsDiff(got, want)).toBeLessThan(1e-4 * Math.max(floor, maxAbs(want)));
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ms-mpi-'));
}

/** The single-process head over the same batches: per-step loss, accuracy and dX, final centres. */
function reference(data: { x: Float32Array; y: Int32Array }, steps = STEPS, options: Partial<MarginHeadOptions> = {}) {
  const head = new MarginHead({ ...base, ...options });
  const out = [];
  for (let s = 0; s < steps; s++) {
    const b = batch(data, s);
    const r = head.step(b.x, b.y);
    out.push({ loss: r.loss, accuracy: r.accuracy, grad: r.gradEmbeddings });
  }
  return { steps: out, weights: head.getWeights() };
}

function expectMatchesReference(dir: string, np: number, ref: ReturnType<typeof reference>, local = false) {
  for (let r = 0; r < np; r++) {
    const o = readOut(dir, r);
    expect(o.offset).toBe(shardRange(C, np, r).offset);
    o.steps.forEach((s, k) => {
      expect(Math.abs(s.loss - ref.steps[k].loss)).toBeLessThan(1e-5 * Math.abs(ref.steps[k].loss) + 1e-6);
      expect(s.accuracy).toBe(ref.steps[k].accuracy);
      const g = readGrad(dir, k, r);
      const want = local ? ref.steps[k].grad.subarray((r * N * D) / np, ((r + 1) * N * D) / np) : ref.steps[k].grad;
      expectClose(g, want);
    });
  }
}

for (const { transport, skip, label } of TRANSPORTS) {
describe.skipIf(skip !== null)(`collectives over MPI (${label})`, () => {
  it('3 processes: all-gather, all-reduce, broadcast, barrier, sync and async, on f32, f64 and i32', async () => {
    const dir = tmpDir();
    const r = await mpirun(transport, 3, dir, dir, 90_000, path.join(__dirname, 'mpi', 'comm-worker.mjs'));
    expect(r.status, r.output).toBe(0);
    const K = 3;
    for (let rank = 0; rank < K; rank++) {
      const o = JSON.parse(fs.readFileSync(path.join(dir, `comm-${rank}.json`), 'utf8'));
      expect(o.size).toBe(K);
      for (const t of ['f32', 'f64', 'i32']) {
        expect(o[`gather-${t}`]).toEqual([0, 1, 1, 11, 2, 21]);
        expect(o[`gatherAsync-${t}`]).toEqual([100, 101, 102]);
        expect(o[`sum-${t}`]).toEqual([6, 6]);
        expect(o[`sumAsync-${t}`]).toEqual([6]);
        expect(o[`bcast-${t}`]).toEqual([13, -2]);
        expect(o[`bcastAsync-${t}`]).toEqual([2]);
      }
      expect(o.queued).toEqual([[3], [0, 1, 2]]);
      expect(o.busy).toBe('CommError busy');
      expect(o.badRoot).toBe('ArgumentError: Expected an integer rank in [0, 2] for root but received 3');
      expect(o.bigOk).toBe(true);
    }
    // Over separate hosts the collectives crossed the links.
    if (transport === 'tcp') expect(linkBytes(dir)).toBeGreaterThan(0);
  });
});

describe.skipIf(skip !== null)(`sharded head over MPI (${label})`, () => {
  for (const np of [2, 3]) {
    it(`${np} processes equal the single-process head over ${STEPS} steps (loss, accuracy, dX, centres), then save`, async () => {
      const dir = tmpDir();
      const data = writeBatches(dir);
      const r = await mpirun(transport, np, dir, { dir, N, dim: D, steps: STEPS, head: base, saveTo: 'ckpt', predictK: 3 });
      expect(r.status, r.output).toBe(0);
      const ref = reference(data);
      expectMatchesReference(dir, np, ref);
      // The exchange per step: 5 floats per row gathered, N×d floats reduced.
      const t = readOut(dir, 0).steps[0].traffic;
      expect(t).toEqual({ statsBytes: 2 * (np - 1) * 5 * N * 4, gradBytes: 2 * N * D * 4 });
      // Each host holds its own shard (and the manifest) in its own folder.
      const folders = Array.from({ length: np }, (_, k) => path.join(hostFolder(transport, dir, k), 'ckpt'));
      expectClose(checkpointWeights(folders), ref.weights, 1e-2);
      if (transport === 'tcp') {
        for (let k = 0; k < np; k++) {
          const own = fs.readdirSync(newestGeneration(folders[k])).sort();
          expect(own).toEqual(['manifest.json', `shard-${k}-of-${np}.safetensors`]);
        }
        // At least the collectives' payload crossed the links: per step the
        // stats all-gather and the gradient all-reduce, on every rank.
        expect(linkBytes(dir)).toBeGreaterThan(STEPS * np * (t.statsBytes + t.gradBytes) / 2);
      }
      // Top-3 over all shards, the same on every rank, equal to the single head's.
      const single = new MarginHead({ ...base, init: ref.weights }).predict(batch(data, 0).x, 3);
      for (let k = 0; k < np; k++) expect(readOut(dir, k).predict).toEqual(Array.from(single.classes));
      const manifest = JSON.parse(fs.readFileSync(path.join(newestGeneration(folders[0]), 'manifest.json'), 'utf8'));
      expect(manifest.ranks).toBe(np);
      expect(manifest.steps).toBe(STEPS);
    });
  }

  it('stepAsync (3 processes): the collectives off the event loop give the results of step', async () => {
    const dir = tmpDir();
    const data = writeBatches(dir);
    const r = await mpirun(transport, 3, dir, { dir, N, dim: D, steps: STEPS, head: base, async: true });
    expect(r.status, r.output).toBe(0);
    expectMatchesReference(dir, 3, reference(data));
  });

  if (transport === 'shm') {
    it('one rank bound to one core (Open MPI\'s default for ≤ 2 ranks) with a 2-thread head is told so; unbound it is not', async () => {
      const dir = tmpDir();
      writeBatches(dir);
      const job = { dir, N, dim: D, steps: 1, head: { ...base, threads: 2 } };
      const bound = await mpirun(transport, 1, dir, job);
      expect(bound.status, bound.output).toBe(0);
      expect(bound.output).toMatch(/ShardedMarginHead: rank 0 may run on 1 CPU\(s\) but its head runs 2 threads, which share them .*--bind-to none/);
      if (os.availableParallelism() < 2) return; // unbound, 2 threads still exceed this machine's CPUs
      const free = await run(['mpirun', '--allow-run-as-root', '--bind-to', 'none', '-np', '1', '--mca', 'btl', 'self', process.execPath, WORKER, JSON.stringify(job)], 90_000);
      expect(free.status, free.stderr).toBe(0);
      expect(free.stderr).not.toMatch(/may run on/);
    });
  }

  it('data parallel (stepLocal, 2 processes): each rank gets the gradient of its own rows', async () => {
    const dir = tmpDir();
    const data = writeBatches(dir);
    const r = await mpirun(transport, 2, dir, { dir, N, dim: D, steps: STEPS, head: base, local: true });
    expect(r.status, r.output).toBe(0);
    expectMatchesReference(dir, 2, reference(data), true);
  });

  it('checkpoint round trip across rank counts: 2 ranks save after 2 steps, 3 ranks resume for 2 more, 2 ranks again', async () => {
    const dir = tmpDir();
    const steps = 4;
    const data = writeBatches(dir, steps);
    const first = await mpirun(transport, 2, dir, { dir, N, dim: D, steps: 2, head: base, saveTo: 'a' });
    expect(first.output).toMatch(/rank 1 done/);
    if (transport === 'tcp') {
      // A new host holds nothing: the job stops, naming the shard each rank lacks and where it looked.
      const lacking = await mpirun(transport, 3, dir, { dir, N, dim: D, firstStep: 2, steps: 3, loadFrom: 'a' });
      expect(lacking.status).not.toBe(0);
      expect(lacking.output).toMatch(/Rank 2 of 3 found no sharded checkpoint \(no manifest\.json\)/);
      spreadCheckpoint(dir, 'a', 2, 3);
      fs.rmSync(path.join(hostFolder(transport, dir, 1), 'a', 'step-2', 'shard-0-of-2.safetensors'));
      const missing = await mpirun(transport, 3, dir, { dir, N, dim: D, firstStep: 2, steps: 3, loadFrom: 'a' });
      expect(missing.status).not.toBe(0);
      expect(missing.output).toMatch(/rank 1 \(host h1\) needs shard-0-of-2\.safetensors \(classes \[0, 101\), written by rank 0\) of step 2 for its classes \[67, 135\) but found none in \S*h1\/a\/step-2/);
      spreadCheckpoint(dir, 'a', 2, 3);
    }
    const r3 = await mpirun(transport, 3, dir, { dir, N, dim: D, firstStep: 2, steps: 3, loadFrom: 'a', saveTo: 'b' });
    expect(r3.status, r3.output).toBe(0);
    if (transport === 'tcp') spreadCheckpoint(dir, 'b', 3, 2);
    const r2 = await mpirun(transport, 2, dir, { dir, N, dim: D, firstStep: 3, steps: 4, loadFrom: 'b' });
    expect(r2.status, r2.output).toBe(0);
    // Momentum and the step count travelled too: the resumed steps equal an uninterrupted run.
    const ref = reference(data, steps);
    for (let k = 2; k < steps; k++) {
      for (let rank = 0; rank < 2; rank++) expectClose(readGrad(dir, k, rank), ref.steps[k].grad);
    }
    expect(readOut(dir, 0).steps[0].loss).toBeCloseTo(ref.steps[3].loss, 4);
    expect(JSON.parse(fs.readFileSync(path.join(hostFolder(transport, dir, 0), 'b', 'step-3', 'manifest.json'), 'utf8')).ranks).toBe(3);
  });

  it('a rank killed during a save leaves the previous generation loadable on every host', async () => {
    const dir = tmpDir();
    const data = writeBatches(dir, 4);
    expect((await mpirun(transport, 2, dir, { dir, N, dim: D, steps: 2, head: base, saveTo: 'a' })).status).toBe(0);
    // Rank 1 dies once every rank has written its step-3 shard, before any manifest of step 3.
    const killed = await mpirun(transport, 2, dir, { dir, N, dim: D, firstStep: 2, steps: 3, loadFrom: 'a', saveTo: 'a', fault: { rank: 1, phase: 'save', call: 1, mode: 'kill' }, timeoutMs: 10_000 });
    expect(killed.status).not.toBe(0);
    expect(killed.output).toMatch(/rank 1 .*exited on signal 9/);
    for (let k = 0; k < 2; k++) expect(fs.existsSync(path.join(hostFolder(transport, dir, k), 'a', 'step-3', 'manifest.json'))).toBe(false);
    // The next job resumes from step 2, as an uninterrupted run would.
    const again = await mpirun(transport, 2, dir, { dir, N, dim: D, firstStep: 2, steps: 3, loadFrom: 'a' });
    expect(again.status, again.output).toBe(0);
    const ref = reference(data, 3);
    for (let rank = 0; rank < 2; rank++) expectClose(readGrad(dir, 2, rank), ref.steps[2].grad);
  });

  it('Partial FC (sampleRate 0.5): 2 processes equal two shards in one process', async () => {
    const dir = tmpDir();
    const data = writeBatches(dir);
    const options = { ...base, sampleRate: 0.5 };
    const r = await mpirun(transport, 2, dir, { dir, N, dim: D, steps: STEPS, head: options });
    expect(r.status, r.output).toBe(0);
    const shards = [0, 1].map((k) => new MarginHead({ ...options, shard: { ...shardRange(C, 2, k), total: C } }));
    for (let s = 0; s < STEPS; s++) {
      const b = batch(data, s);
      const merged = mergeStats(shards.map((h) => h.partialStats(b.x, b.y)));
      const grad = new Float32Array(N * D);
      for (const h of shards) {
        const g = h.finishStep(merged).gradEmbeddings;
        for (let i = 0; i < g.length; i++) grad[i] += g[i];
      }
      expect(readOut(dir, 0).steps[s].loss).toBeCloseTo(merged.loss, 5);
      for (let rank = 0; rank < 2; rank++) expect(maxAbsDiff(readGrad(dir, s, rank), grad)).toBeLessThan(1e-6);
    }
  });

  it('a rank killed mid-step (SIGKILL at its phase-1 all-gather) ends the job with an error naming it, not a hang', async () => {
    const dir = tmpDir();
    writeBatches(dir);
    // Call 1 is the step's batch-size check, call 2 the stats all-gather of step 0.
    const r = await mpirun(transport, 3, dir, { dir, N, dim: D, steps: STEPS, head: base, fault: { rank: 1, call: 2, mode: 'kill' }, timeoutMs: 10_000 });
    expect(r.signal).toBeNull(); // mpirun ended by itself, before this test's 90 s limit
    expect(r.status).not.toBe(0);
    expect(r.output).toMatch(/rank 1 .*exited on signal 9/);
    expect(r.output).not.toMatch(/rank \d done/);
  });

  it('a rank that stalls mid-step makes the others throw CommError (timeout) and the job abort', async () => {
    const dir = tmpDir();
    writeBatches(dir);
    const r = await mpirun(transport, 3, dir, { dir, N, dim: D, steps: STEPS, head: base, fault: { rank: 1, call: 2, mode: 'stall' }, timeoutMs: 3_000 });
    expect(r.signal).toBeNull();
    expect(r.status).not.toBe(0);
    expect(r.output).toMatch(/CommError: allGather on rank [02] timed out after 3 s: a peer rank died or did not reach the same collective/);
    expect(r.output).not.toMatch(/rank \d done/);
  });
});
}

describe('sharded head in one process (localCommunicator)', () => {
  it('equals MarginHead over steps, and saves / loads through the manifest', () => {
    const rnd = seededRandom(3);
    const x = new Float32Array(N * D).map(() => rnd() - 0.5);
    const y = new Int32Array(N).map(() => Math.floor(rnd() * C));
    const single = new MarginHead(base);
    const sharded = new ShardedMarginHead({ ...base, comm: localCommunicator() });
    for (let s = 0; s < 2; s++) {
      const a = single.step(x, y);
      const b = sharded.step(x, y);
      expect(b.loss).toBe(a.loss);
      expect(maxAbsDiff(b.gradEmbeddings, a.gradEmbeddings)).toBeLessThan(1e-6);
      expect(b.traffic).toEqual({ statsBytes: 0, gradBytes: 0 });
    }
    const dir = tmpDir();
    sharded.save(dir);
    const back = ShardedMarginHead.load(dir, { comm: localCommunicator() });
    expect(back.stepCount).toBe(2);
    expect(maxAbsDiff(back.shard.getWeights(), single.getWeights())).toBeLessThan(1e-6);
    expect(back.shard.getMomentum()).toEqual(single.getMomentum());
  });

  it('ElasticFace: shards in one process draw the margins of the unsharded head (keyed by step and global row)', () => {
    const options: MarginHeadOptions = { ...base, margin: { kind: 'elastic-arc', m: 0.5, sigma: 0.1, seed: 9 } };
    const rnd = seededRandom(4);
    const single = new MarginHead(options);
    const shards = [0, 1, 2].map((k) => new MarginHead({ ...options, shard: { ...shardRange(C, 3, k), total: C } }));
    for (let s = 0; s < 3; s++) {
      const x = new Float32Array(N * D).map(() => rnd() - 0.5);
      const y = new Int32Array(N).map(() => Math.floor(rnd() * C));
      const want = single.step(x, y);
      const merged = mergeStats(shards.map((h) => h.partialStats(x, y)));
      const grad = new Float32Array(N * D);
      for (const h of shards) {
        const g = h.finishStep(merged).gradEmbeddings;
        for (let i = 0; i < g.length; i++) grad[i] += g[i];
      }
      // σ = 0.1 moves a row's loss by O(s·σ): different draws would differ far beyond rounding.
      expect(Math.abs(merged.loss - want.loss)).toBeLessThan(1e-5 * Math.abs(want.loss));
      expectClose(grad, want.gradEmbeddings);
    }
  });

  it('stepAsync equals step, and the head refuses other calls while one is in flight', async () => {
    const rnd = seededRandom(6);
    const x = new Float32Array(N * D).map(() => rnd() - 0.5);
    const y = new Int32Array(N).map(() => Math.floor(rnd() * C));
    const a = new ShardedMarginHead({ ...base, comm: localCommunicator() });
    const b = new ShardedMarginHead({ ...base, comm: localCommunicator() });
    for (let s = 0; s < 2; s++) {
      const want = a.step(x, y);
      const pending = b.stepAsync(x, y);
      expect(() => b.step(x, y)).toThrow(/ShardedMarginHead\.step: a stepAsync\(\) call is still running on this head/);
      const got = await pending;
      expect(got.loss).toBe(want.loss);
      expect(got.gradEmbeddings).toEqual(want.gradEmbeddings);
    }
    expect(b.stepCount).toBe(2);
  });

  it('refuses a bad comm, a missing or corrupted manifest, and different batch sizes with typed errors', () => {
    expect(() => new ShardedMarginHead({ ...base, comm: {} as never })).toThrow(/Expected a Communicator/);
    const dir = tmpDir();
    expect(() => ShardedMarginHead.load(dir, { comm: localCommunicator() })).toThrow(/Rank 0 of 1 found no sharded checkpoint \(no manifest\.json\) under /);
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ format: 'margin-softmax/sharded-head', version: '1', classes: 10, dim: 4, ranks: 1, steps: 0, shards: [{ rank: 0, file: 'shard-0-of-1.safetensors', offset: 0, count: 9 }] }));
    expect(() => ShardedMarginHead.load(dir, { comm: localCommunicator() })).toThrow(/the shards cover 9 classes, not 10/);
    // A fake two-rank world whose peer reports another batch size.
    const peer = { ...localCommunicator(), size: 2, rank: 0, allGather: <T extends Int32Array | Float32Array | Float64Array>(a: T) => Int32Array.from([...a, 7, 0]) as unknown as T };
    const h = new ShardedMarginHead({ ...base, comm: peer });
    expect(() => h.step(new Float32Array(N * D), new Int32Array(N))).toThrow(/Expected the same batch size on every rank but received 12 rows on rank 0 and 7 on rank 1/);
  });

  it('mpiInfo says whether the collectives are compiled in, and why not', () => {
    const mpi = deviceInfo().mpi;
    expect(typeof mpi.compiled).toBe('boolean');
    if (mpi.compiled) expect(mpi.library).toMatch(/MPI/);
    else expect(mpi.reason).toMatch(/without MPI/);
    expect(new CommError('timeout', 'x').code).toBe('ERR_MARGIN_SOFTMAX_COMM');
  });
});
