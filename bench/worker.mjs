// worker.mjs — one measurement in its own process (started by common.mjs runChild
// with --expose-gc), so that its peak RSS belongs to that implementation and
// size alone. Argument: one JSON job.
//
//   { kind: 'time', impl: 'fused' | 'naive', backend: 'cpu' | 'cuda' | 'wasm',
//     mode: 'fwd' | 'fwdbwd', N, d, C, seed, warmup, reps, minReps, cellBudgetS,
//     runBudgetS, ceiling: bool, options: {workspaceBytes?, threads?, reuseOut?} }
//     → the timing figures, peak RSS, and (ceiling: true) the GEMM ceiling measured
//       in the same process, its calls alternating with the timed calls.
//   { kind: 'check', impl, backend, N, d, C, seed }
//     → loss, per-row loss and both gradients of the implementation against the
//       fused CPU result on the same inputs (and, for the fused CPU itself, the
//       forward against the tests' float64 JavaScript reference, test/reference.mjs).
//
// Prints one line "@@BENCH_RESULT {json}" (see common.mjs).
import { referenceLoss, relMaxErr } from '../test/reference.mjs';
import {
  MARGIN, SCALE, emitResult, flops, loadAddon, loadPackage, makeInputs, median, require, summarize,
} from './common.mjs';

const job = JSON.parse(process.argv[2]);
const rss = () => process.memoryUsage.rss();
const maxRss = () => process.resourceUsage().maxRSS * 1024;

/** Frees what the previous call returned before the next one (external buffers included). */
async function collect() {
  if (!global.gc) return;
  for (let i = 0; i < 2; i++) {
    global.gc();
    await new Promise((r) => setImmediate(r));
  }
}

let tfRef = null; // the tfjs module once a naive implementation has loaded it

/** The size of the tfjs wasm heap now (bytes), or null. */
function wasmHeapBytes() {
  try {
    return tfRef?.getBackend() === 'wasm' ? tfRef.backend().wasm.HEAPU8.buffer.byteLength : null;
  } catch {
    return null;
  }
}

/**
 * Out of memory: a JS allocation failure, or tfjs-backend-wasm's Aborted() (its malloc
 * aborts when the 32-bit wasm heap, at most 4 GiB, cannot grow any further).
 */
function isOom(err) {
  const msg = String(err?.message ?? err);
  if (/memory|OOM|allocation failed|Array buffer/i.test(msg)) return true;
  return /^Aborted\(/.test(msg) && tfRef?.getBackend() === 'wasm';
}

// ---------------------------------------------------------------- implementations
/** The fused loss: { fwd(), fwdbwd(), fwdAsync(), fwdbwdAsync(), dispose(), info, pkg } bound to the inputs. */
function makeFused(backend, input, options) {
  const pkg = loadPackage();
  const { reuseOut, ...rest } = options;
  const opts = { margin: MARGIN, scale: SCALE, backend, ...rest };
  if (reuseOut) {
    // options.out: the outputs are allocated once and written into on every call.
    const n = input.labels.length;
    const c = input.weights.length / input.dim;
    opts.out = { perSample: new Float32Array(n), gradEmbeddings: new Float32Array(n * input.dim), gradWeights: new Float32Array(c * input.dim) };
  }
  return {
    fwd: () => pkg.forward(input, opts),
    fwdbwd: () => pkg.lossAndGrad(input, opts),
    fwdAsync: () => pkg.forwardAsync(input, opts),
    fwdbwdAsync: () => pkg.lossAndGradAsync(input, opts),
    dispose() {},
    info: {},
    pkg,
  };
}

/** tfjs, its backend set to `backend` and ready. */
async function loadTfjs(backend) {
  // Silence tfjs's "looks like you are running TensorFlow.js in Node.js" banner.
  const log = console.log;
  console.log = () => {};
  const tf = require('@tensorflow/tfjs');
  tfRef = tf;
  if (backend === 'wasm') require('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend(backend))) throw new Error(`tfjs backend '${backend}' failed to initialise`);
  await tf.ready();
  console.log = log;
  return tf;
}

/**
 * The naive tfjs loss (test/naive-tfjs.mjs, the one the tests check against the native
 * backend): { fwd(), fwdbwd(), dispose(), info }, x and w made into tensors before any timing.
 */
async function makeNaive(backend, input) {
  const tf = await loadTfjs(backend);
  const naive = await import('../test/naive-tfjs.mjs');
  const opts = { margin: MARGIN, scale: SCALE };
  const N = input.labels.length;
  const C = input.weights.length / input.dim;
  const x = tf.tensor2d(input.embeddings, [N, input.dim]);
  const w = tf.tensor2d(input.weights, [C, input.dim]);
  const info = { backend: tf.getBackend() };
  if (backend === 'wasm') {
    info.wasmSimd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
    info.wasmThreads = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT');
  }
  return {
    fwd: () => naive.naiveForward(tf, x, w, input.labels, opts),
    fwdbwd: () => naive.naiveForwardBackward(tf, x, w, input.labels, opts),
    dispose: () => tf.dispose([x, w]),
    info,
  };
}

/** Returns { fwd(), fwdbwd(), dispose(), info } bound to the inputs. */
async function makeImpl(impl, backend, input, options = {}) {
  if (impl === 'fused') return makeFused(backend, input, options);
  if (impl === 'naive') return makeNaive(backend, input);
  throw new Error(`unknown impl ${impl}`);
}

// ---------------------------------------------------------------- timing
/** The job's inputs and implementation, with the RSS before and after each. */
async function setUp(out) {
  const { impl, backend, mode, N, d, C, seed = 1 } = job;
  out.rssBaselineBytes = rss();
  const input = makeInputs(N, d, C, seed);
  out.inputBytes = input.embeddings.byteLength + input.weights.byteLength + input.labels.byteLength;
  out.outputBytes = 4 * N + (mode === 'fwdbwd' ? 4 * (N * d + C * d) : 0);
  out.rssAfterInputsBytes = rss();
  const implementation = await makeImpl(impl, backend, input, job.options);
  Object.assign(out, implementation.info);
  const cudaFreeBefore = impl === 'fused' && backend === 'cuda' ? (implementation.pkg.deviceInfo().cuda.freeMemory ?? null) : null;
  out.rssAfterSetupBytes = rss();
  return { input, implementation, cudaFreeBefore };
}

/** Warm-up calls (also the first estimate of one call's time); false when one exceeded the run budget. */
async function warmUp(call, out) {
  const warmTimes = [];
  out.warmupTimes = warmTimes;
  for (let i = 0; i < (job.warmup ?? 1); i++) {
    const t0 = performance.now();
    let result = call();
    warmTimes.push((performance.now() - t0) / 1e3);
    out.loss = result.loss;
    result = null; // unreachable before the collection: the next call must not meet this one's outputs
    await collect();
    if (warmTimes.at(-1) > (job.runBudgetS ?? Infinity)) {
      out.status = `skipped: exceeded budget (one call took more than ${job.runBudgetS} s)`;
      out.peakRssBytes = maxRss();
      return false;
    }
  }
  return true;
}

/** Peak RSS and the memory beyond inputs and outputs, as of now. */
function recordPeak(out) {
  out.peakRssBytes = maxRss();
  out.extraBytes = out.peakRssBytes - out.rssAfterInputsBytes - out.outputBytes;
}

/**
 * The GEMM ceiling (job.ceiling): the same products with the project's own kernel,
 * blocking and threads, no epilogue (bf16 rows: on their bf16 path); a function that
 * times one call, already warmed up.
 */
async function makeCeiling(input) {
  const addon = loadAddon();
  const bwd = job.mode === 'fwdbwd';
  const threads = job.options?.threads ?? 0;
  // bf16 rows: the products of their bf16 path (MATRIX_CODES of dist/native.js); fp32 rows: the fp32 kernel.
  const { MATRIX_CODES } = require('./dist/native.js');
  const matrix = job.options?.weightsDtype === 'bfloat16' ? MATRIX_CODES[job.options.matrix ?? 'auto'] : undefined;
  const ceiling = () => addon._productsSeconds(input.embeddings, input.weights, job.d, threads, -1, bwd, matrix);
  ceiling(); // warm-up
  await collect();
  return ceiling;
}

/**
 * The timed calls, each followed by a ceiling call where there is one (so that both
 * see the same machine load: it is shared and noisy). Fewer timed runs when a call is
 * slow: stop once another call would take the timed total past the cell budget, but
 * never before minReps runs.
 */
async function timedRuns(call, ceiling, out) {
  const reps = job.reps ?? 5;
  const minReps = job.minReps ?? reps;
  const budget = job.cellBudgetS ?? Infinity;
  const times = [];
  const ceilingTimes = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    call();
    times.push((performance.now() - t0) / 1e3);
    await collect();
    if (ceiling) {
      ceilingTimes.push(ceiling());
      await collect();
    }
    const spent = times.reduce((a, b) => a + b, 0);
    if (times.length >= minReps && times.length < reps && spent + median(times) > budget) {
      out.note = `${times.length} timed run${times.length > 1 ? 's' : ''} instead of ${reps}: one call takes about ${median(times).toFixed(1)} s (cell budget ${budget} s)`;
      break;
    }
  }
  return { times, ceilingTimes };
}

/**
 * Ceiling time over loss time: the ratio of the medians, and the median of the ratios
 * of adjacent pairs (steadier when the machine's load drifts during the run).
 */
function recordCeiling(out, times, ceilingTimes) {
  out.peakRssWithCeilingBytes = maxRss();
  out.ceiling = summarize(ceilingTimes, out.flops);
  out.fractionOfCeiling = out.ceiling.medianS / out.medianS;
  out.fractionOfCeilingPaired = median(ceilingTimes.map((c, i) => c / times[i]));
}

/** Device memory: free memory before, and the least free memory seen while an async call runs. */
async function deviceMemory(implementation, cudaFreeBefore) {
  const free = () => implementation.pkg.deviceInfo().cuda.freeMemory;
  let minFree = free();
  const p = job.mode === 'fwd' ? implementation.fwdAsync() : implementation.fwdbwdAsync();
  let done = false;
  p.finally(() => (done = true));
  while (!done) {
    minFree = Math.min(minFree, free());
    await new Promise((r) => setTimeout(r, 1));
  }
  await p;
  return { freeBefore: cudaFreeBefore, peakUsedSampled: cudaFreeBefore - minFree, usedAfter: cudaFreeBefore - free() };
}

async function timeJob() {
  const out = { ...job, flops: flops(job.mode, job.N, job.d, job.C) };
  const { input, implementation, cudaFreeBefore } = await setUp(out);
  const call = job.mode === 'fwd' ? implementation.fwd : implementation.fwdbwd;
  if (!(await warmUp(call, out))) return out;
  // The peak of the implementation alone, before any ceiling call: every call
  // allocates the same, so the warm-up calls have reached it.
  recordPeak(out);
  const ceiling = job.ceiling ? await makeCeiling(input) : null;
  const { times, ceilingTimes } = await timedRuns(call, ceiling, out);
  Object.assign(out, summarize(times, out.flops));
  if (ceiling) recordCeiling(out, times, ceilingTimes);
  else recordPeak(out); // no ceiling calls in this process: the peak over every call
  if (cudaFreeBefore != null) out.deviceMemoryBytes = await deviceMemory(implementation, cudaFreeBefore);
  implementation.dispose();
  out.status = 'ok';
  return out;
}

// ---------------------------------------------------------------- correctness

/** The fused CPU loss against the float64 reference of the tests (forward). */
function checkFusedCpu(out, input, fused) {
  const float64 = referenceLoss(input, { margin: MARGIN, scale: SCALE }, false);
  out.against = 'float64 JavaScript reference (forward)';
  out.errors = {
    loss: Math.abs(fused.grad.loss - float64.loss) / Math.abs(float64.loss),
    perSample: relMaxErr(fused.grad.perSample, float64.perSample),
    forwardLoss: Math.abs(fused.fwd.loss - float64.loss) / Math.abs(float64.loss),
  };
  out.loss = fused.grad.loss;
  out.refLoss = float64.loss;
}

/** Another implementation against the fused CPU loss: loss, per-row losses and both gradients. */
async function checkAgainstFused(out, input, fused) {
  const im = await makeImpl(job.impl, job.backend, input);
  Object.assign(out, im.info);
  const f = im.fwd();
  const g = im.fwdbwd();
  out.against = 'fused cpu';
  out.loss = g.loss;
  out.refLoss = fused.grad.loss;
  out.errors = {
    loss: Math.abs(g.loss - fused.grad.loss) / Math.abs(fused.grad.loss),
    forwardLoss: Math.abs(f.loss - fused.fwd.loss) / Math.abs(fused.fwd.loss),
    perSample: relMaxErr(f.perSample, fused.fwd.perSample),
    gradEmbeddings: relMaxErr(g.gradEmbeddings, fused.grad.gradEmbeddings),
    gradWeights: relMaxErr(g.gradWeights, fused.grad.gradWeights),
  };
  im.dispose();
}

async function checkJob() {
  const { impl, backend, N, d, C, seed = 1 } = job;
  const input = makeInputs(N, d, C, seed);
  const pkg = loadPackage();
  const opts = { margin: MARGIN, scale: SCALE, backend: 'cpu' };
  const fused = { fwd: pkg.forward(input, opts), grad: pkg.lossAndGrad(input, opts) };
  const out = { ...job };
  if (impl === 'fused' && backend === 'cpu') checkFusedCpu(out, input, fused);
  else await checkAgainstFused(out, input, fused);
  out.status = 'ok';
  return out;
}

try {
  emitResult(job.kind === 'check' ? await checkJob() : await timeJob());
} catch (err) {
  const heap = wasmHeapBytes();
  emitResult({
    ...job,
    status: isOom(err) ? 'out of memory' : 'error',
    message: (heap ? `wasm heap ${(heap / 2 ** 30).toFixed(2)} GiB (its limit is 4 GiB) when it failed: ` : '') + String(err?.stack ?? err).slice(0, 2000),
    peakRssBytes: maxRss(),
    wasmHeapBytes: heap ?? undefined,
  });
}
