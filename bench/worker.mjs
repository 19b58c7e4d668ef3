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
//       forward against a float64 JavaScript reference).
//
// Prints one line "@@BENCH_RESULT {json}" (see common.mjs).
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
/** Returns { fwd(), fwdbwd(), dispose(), info } bound to the inputs. */
async function makeImpl(impl, backend, input, options = {}) {
  if (impl === 'fused') {
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
  if (impl === 'naive') {
    // Silence tfjs's "looks like you are running TensorFlow.js in Node.js" banner.
    const log = console.log;
    console.log = () => {};
    const tf = require('@tensorflow/tfjs');
    tfRef = tf;
    if (backend === 'wasm') require('@tensorflow/tfjs-backend-wasm');
    if (!(await tf.setBackend(backend))) throw new Error(`tfjs backend '${backend}' failed to initialise`);
    await tf.ready();
    console.log = log;
    const { makeNaiveLoss } = await import('./naive-tfjs.mjs');
    const loss = makeNaiveLoss(tf, { m1: MARGIN.m1, m2: MARGIN.m2, scale: SCALE });
    const N = input.labels.length;
    const C = input.weights.length / input.dim;
    const x = tf.tensor2d(input.embeddings, [N, input.dim]);
    const w = tf.tensor2d(input.weights, [C, input.dim]);
    const labels = tf.tensor1d(input.labels, 'int32');
    const info = { backend: tf.getBackend() };
    if (backend === 'wasm') {
      info.wasmSimd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
      info.wasmThreads = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT');
    }
    return {
      fwd: () => loss.forward(x, w, labels),
      fwdbwd: () => loss.lossAndGrad(x, w, labels),
      dispose: () => tf.dispose([x, w, labels]),
      info,
    };
  }
  throw new Error(`unknown impl ${impl}`);
}

// ---------------------------------------------------------------- timing
async function timeJob() {
  const { impl, backend, mode, N, d, C, seed = 1 } = job;
  const warmup = job.warmup ?? 1;
  const reps = job.reps ?? 5;
  const minReps = job.minReps ?? reps;
  const flopCount = flops(mode, N, d, C);
  const out = { ...job, flops: flopCount };
  out.rssBaselineBytes = rss();
  const input = makeInputs(N, d, C, seed);
  out.inputBytes = input.embeddings.byteLength + input.weights.byteLength + input.labels.byteLength;
  out.outputBytes = 4 * N + (mode === 'fwdbwd' ? 4 * (N * d + C * d) : 0);
  out.rssAfterInputsBytes = rss();

  let cudaFreeBefore = null;
  const impl_ = await makeImpl(impl, backend, input, job.options);
  Object.assign(out, impl_.info);
  if (impl === 'fused' && backend === 'cuda') cudaFreeBefore = impl_.pkg.deviceInfo().cuda.freeMemory ?? null;
  out.rssAfterSetupBytes = rss();
  const call = mode === 'fwd' ? impl_.fwd : impl_.fwdbwd;

  // Warm-up: also the first estimate of one call's time.
  const warmTimes = [];
  let last;
  for (let i = 0; i < warmup; i++) {
    const t0 = performance.now();
    last = call();
    warmTimes.push((performance.now() - t0) / 1e3);
    out.loss = last.loss;
    last = null;
    await collect();
    if (warmTimes.at(-1) > (job.runBudgetS ?? Infinity)) {
      out.status = `skipped: exceeded budget (one call took more than ${job.runBudgetS} s)`;
      out.warmupTimes = warmTimes;
      out.peakRssBytes = maxRss();
      return out;
    }
  }
  out.warmupTimes = warmTimes;

  // The peak of the implementation alone, before any ceiling call: every call
  // allocates the same, so the warm-up calls have reached it.
  out.peakRssBytes = maxRss();
  out.extraBytes = out.peakRssBytes - out.rssAfterInputsBytes - out.outputBytes;

  // The GEMM ceiling: the same products with the project's own kernel, blocking and
  // threads, no epilogue. Its calls alternate with the timed calls so that both see
  // the same machine load (it is shared and noisy).
  let ceiling = null;
  if (job.ceiling) {
    const addon = loadAddon();
    const bwd = mode === 'fwdbwd';
    const threads = job.options?.threads ?? 0;
    ceiling = () => addon._productsSeconds(input.embeddings, input.weights, d, threads, -1, bwd);
    ceiling(); // warm-up
    await collect();
  }
  const times = [];
  const ceilingTimes = [];
  // Fewer timed runs when a call is slow: stop once another call would take the timed
  // total past the cell budget, but never before minReps runs.
  const budget = job.cellBudgetS ?? Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    last = call();
    times.push((performance.now() - t0) / 1e3);
    last = null;
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
  Object.assign(out, summarize(times, flopCount));
  if (ceiling) {
    out.peakRssWithCeilingBytes = maxRss();
    out.ceiling = summarize(ceilingTimes, flopCount);
    // Ceiling time over loss time: the ratio of the medians, and the median of the
    // ratios of adjacent pairs (steadier when the machine's load drifts during the run).
    out.fractionOfCeiling = out.ceiling.medianS / out.medianS;
    out.fractionOfCeilingPaired = median(ceilingTimes.map((c, i) => c / times[i]));
  } else {
    out.peakRssBytes = maxRss(); // no ceiling calls in this process: the peak over every call
    out.extraBytes = out.peakRssBytes - out.rssAfterInputsBytes - out.outputBytes;
  }

  if (impl === 'fused' && backend === 'cuda') {
    // Device memory: free memory before, and the least free memory seen while an async call runs.
    const dev = () => impl_.pkg.deviceInfo().cuda.freeMemory;
    if (cudaFreeBefore != null) {
      let minFree = dev();
      const p = mode === 'fwd' ? impl_.fwdAsync() : impl_.fwdbwdAsync();
      let done = false;
      p.finally(() => (done = true));
      while (!done) {
        minFree = Math.min(minFree, dev());
        await new Promise((r) => setTimeout(r, 1));
      }
      await p;
      out.deviceMemoryBytes = { freeBefore: cudaFreeBefore, peakUsedSampled: cudaFreeBefore - minFree, usedAfter: cudaFreeBefore - dev() };
    }
  }
  impl_.dispose();
  out.status = 'ok';
  return out;
}

// ---------------------------------------------------------------- correctness
function relErr(a, b) {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

/** Float64 per-row losses of the adaptive margin, plain loops (for the fused CPU's own check). */
function float64PerSample({ embeddings: x, weights: w, labels, dim: d }) {
  const N = labels.length;
  const C = w.length / d;
  const { m1, m2 } = MARGIN;
  const s = SCALE;
  const wn = new Float64Array(C);
  for (let j = 0; j < C; j++) {
    let q = 0;
    for (let k = 0; k < d; k++) q += w[j * d + k] ** 2;
    wn[j] = Math.max(Math.sqrt(q), 1e-12);
  }
  const out = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    let q = 0;
    for (let k = 0; k < d; k++) q += x[i * d + k] ** 2;
    const xn = Math.max(Math.sqrt(q), 1e-12);
    const z = new Float64Array(C);
    for (let j = 0; j < C; j++) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += x[i * d + k] * w[j * d + k];
      const c = Math.min(Math.max(dot / xn / wn[j], -1 + 1e-7), 1 - 1e-7);
      if (j === labels[i]) {
        const phi = Math.acos(c) + m1 * (1 - c * c) + m2;
        z[j] = phi <= Math.PI ? s * Math.cos(phi) : s * (c - m2 * Math.sin(m2));
      } else z[j] = s * c;
    }
    let mx = -Infinity;
    for (const v of z) mx = Math.max(mx, v);
    let se = 0;
    for (const v of z) se += Math.exp(v - mx);
    out[i] = mx + Math.log(se) - z[labels[i]];
  }
  return out;
}

async function checkJob() {
  const { impl, backend, N, d, C, seed = 1 } = job;
  const input = makeInputs(N, d, C, seed);
  const pkg = loadPackage();
  const opts = { margin: MARGIN, scale: SCALE, backend: 'cpu' };
  const refFwd = pkg.forward(input, opts);
  const ref = pkg.lossAndGrad(input, opts);
  const out = { ...job };
  if (impl === 'fused' && backend === 'cpu') {
    const ps = float64PerSample(input);
    const loss = ps.reduce((a, b) => a + b, 0) / N;
    out.against = 'float64 JavaScript reference (forward)';
    out.errors = {
      loss: Math.abs(ref.loss - loss) / Math.abs(loss),
      perSample: relErr(ref.perSample, ps),
      forwardLoss: Math.abs(refFwd.loss - loss) / Math.abs(loss),
    };
    out.loss = ref.loss;
    out.refLoss = loss;
  } else {
    const im = await makeImpl(impl, backend, input);
    Object.assign(out, im.info);
    const f = im.fwd();
    const g = im.fwdbwd();
    out.against = 'fused cpu';
    out.loss = g.loss;
    out.refLoss = ref.loss;
    out.errors = {
      loss: Math.abs(g.loss - ref.loss) / Math.abs(ref.loss),
      forwardLoss: Math.abs(f.loss - refFwd.loss) / Math.abs(refFwd.loss),
      perSample: relErr(f.perSample, refFwd.perSample),
      gradEmbeddings: relErr(g.gradEmbeddings, ref.gradEmbeddings),
      gradWeights: relErr(g.gradWeights, ref.gradWeights),
    };
    im.dispose();
  }
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
