#!/usr/bin/env node
// A coverage-guided fuzzer for JavaScript targets, on V8's own block coverage.
//
// Why not libFuzzer/AFL++: the parsers fuzzed here (the safetensors header,
// the image decoders) are JavaScript, and the JS front end to libFuzzer
// (Jazzer.js) cannot be had on these machines: its 4.x prebuilt addon needs
// glibc 2.38 (Debian 12 has 2.36) and older releases download their binaries
// from GitHub at install. So this does what libFuzzer does, with V8's
// precise coverage (Profiler.takePreciseCoverage, block granularity) as the
// feedback: mutate an input from the corpus, run the target, and keep the
// input when it reaches a (block, hit-count bucket) pair never seen before.
//
//   node fuzz/fuzz.js <target.fuzz.js> <seed-dir> [--seconds 60] [--out dir] [--dict-file f] [--dict w,…]
//
// The target exports fuzz(data: Buffer); a throw is a finding. It runs in a
// worker thread that copies each input into shared memory before running it,
// so the main thread can name the input of a hang (no progress for
// --timeout seconds) or a memory blow-up (RSS over --rss-mb) after stopping
// the worker. Findings are written to --out; the exit status is 1 if any.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');

const MAX_LEN = 4096;

// ---- Worker: mutate, run, measure coverage ------------------------------------

/** An inspector session on this thread with precise block coverage on; `post` answers synchronously. */
function coverageSession() {
  const inspector = require('node:inspector');
  const session = new inspector.Session();
  session.connect();
  // A same-thread session answers synchronously.
  const post = (method, params) => {
    let out;
    session.post(method, params, (err, res) => {
      if (err) throw err;
      out = res;
    });
    return out;
  };
  post('Profiler.enable');
  post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  return post;
}

/** Hit counts in log-scale buckets, as libFuzzer counts them. */
const bucket = (n) => (n <= 3 ? n : n <= 7 ? 4 : n <= 15 ? 5 : n <= 31 ? 6 : n <= 127 ? 7 : 8);

/** The count of the innermost reported range containing [start, end) (the function's range contains all). */
function innermostCount(ranges, start, end) {
  let count = 0;
  let width = Infinity;
  for (const r of ranges) {
    if (r.startOffset <= start && end <= r.endOffset && r.endOffset - r.startOffset < width) {
      width = r.endOffset - r.startOffset;
      count = r.count;
    }
  }
  return count;
}

/**
 * The (block, hit-count bucket) pairs seen so far in the scripts whose URL
 * contains one of `include`. V8 leaves out a block whose count equals its
 * enclosing block's, so a branch is visible only while it has not run (count
 * 0). Every block ever reported is remembered per function, and its count in a
 * run is that of the innermost reported range around it: taking a branch for
 * the first time shows as that block's count going from 0 to its parent's.
 */
class CoverageFeatures {
  constructor(post, include) {
    this.post = post;
    this.include = include;
    this.seen = new Set();
    this.known = new Map(); // function key → [[start, end], …]
  }

  /** Takes the coverage of the runs since the last call; returns how many pairs are new. */
  takeNew() {
    let fresh = 0;
    for (const script of this.post('Profiler.takePreciseCoverage').result) {
      if (!this.include.some((s) => script.url.includes(s))) continue;
      for (const fn of script.functions) {
        if (fn.ranges[0].count === 0) continue; // not called in this run
        fresh += this.newInFunction(`${script.scriptId}:${fn.ranges[0].startOffset}`, fn.ranges);
      }
    }
    return fresh;
  }

  newInFunction(fnKey, ranges) {
    let blocks = this.known.get(fnKey);
    if (!blocks) this.known.set(fnKey, (blocks = []));
    for (const r of ranges) if (!blocks.some((b) => b[0] === r.startOffset && b[1] === r.endOffset)) blocks.push([r.startOffset, r.endOffset]);
    let fresh = 0;
    for (const [start, end] of blocks) {
      const count = innermostCount(ranges, start, end);
      if (count === 0) continue;
      const key = `${fnKey}:${start}:${end}:${bucket(count)}`;
      if (!this.seen.has(key)) {
        this.seen.add(key);
        fresh++;
      }
    }
    return fresh;
  }
}

/**
 * Runs the target on one input, published first in shared memory (so the main
 * thread can name the input of a hang); records a throw as a finding, one per
 * distinct error (message and throwing frame), with a count. Returns the new
 * coverage features.
 */
function makeRunner(fuzz, shared, coverage, findings) {
  const current = new Uint8Array(shared, 8);
  const meta = new Int32Array(shared, 0, 2); // [length, executions/1000 heartbeat]
  return (data) => {
    current.set(data.subarray(0, Math.min(data.length, current.length)));
    Atomics.store(meta, 0, data.length);
    try {
      fuzz(Buffer.from(data.buffer, data.byteOffset, data.length));
    } catch (err) {
      const stack = String(err && err.stack ? err.stack : err);
      const key = stack.split('\n').slice(0, 2).join('\n');
      const f = findings.get(key);
      if (f) f.count++;
      else findings.set(key, { input: Buffer.from(data).toString('base64'), error: stack, count: 1 });
    }
    return coverage.takeNew();
  };
}

/** xorshift32 from a fixed seed: rand(n) in [0, n). */
function makeRand() {
  let seed = 0x9e3779b9;
  return (n) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
}

const INTERESTING = [0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x7fffffff, 0xffffffff, 30000, 8000, 65535];

/** Writes an interesting 8/16/32-bit value at `at`, either endianness. */
function writeInteresting(d, at, rand) {
  const v = INTERESTING[rand(INTERESTING.length)];
  const width = [1, 2, 4][rand(3)];
  if (at + width > d.length) return;
  const le = rand(2) === 1;
  for (let b = 0; b < width; b++) d[at + (le ? b : width - 1 - b)] = (v >>> (8 * b)) & 0xff;
}

/** One mutation of d at `at`: a bit, a byte, a value, a run deleted or doubled, a cut, a splice, a word, a digit. */
function mutateOnce(d, at, rand, corpus, words) {
  switch (rand(9)) {
    case 0: // flip a bit
      if (d.length) d[at] ^= 1 << rand(8);
      return d;
    case 1: // random byte
      if (d.length) d[at] = rand(256);
      return d;
    case 2:
      writeInteresting(d, at, rand);
      return d;
    case 3: // delete a run
      return Buffer.concat([d.subarray(0, at), d.subarray(Math.min(d.length, at + 1 + rand(16)))]);
    case 4: // duplicate a run
      return Buffer.concat([d.subarray(0, at), d.subarray(at, at + 1 + rand(32)), d.subarray(at)]);
    case 5: // truncate
      return d.subarray(0, at);
    case 6: {
      // splice with another corpus entry
      const o = corpus[rand(corpus.length)];
      const from = o.length ? rand(o.length) : 0;
      return Buffer.concat([d.subarray(0, at), Buffer.from(o.subarray(from, from + 1 + rand(64)))]);
    }
    case 7: {
      // insert or overwrite a dictionary word
      if (!words.length) return d;
      const w = words[rand(words.length)];
      return rand(2) ? Buffer.concat([d.subarray(0, at), w, d.subarray(at)]) : Buffer.concat([d.subarray(0, at), w, d.subarray(at + w.length)]);
    }
    default: // an ASCII digit run (numbers in JSON and PNM headers)
      if (d.length) d[at] = 0x30 + rand(10);
      return d;
  }
}

/** A copy of src with 1 to 4 mutations, at most MAX_LEN bytes. */
function mutate(src, rand, corpus, words) {
  let d = Buffer.from(src);
  const rounds = 1 + rand(4);
  for (let k = 0; k < rounds; k++) d = mutateOnce(d, d.length ? rand(d.length) : 0, rand, corpus, words);
  return new Uint8Array(d.subarray(0, MAX_LEN));
}

function workerMain() {
  const { target, seeds, seconds, dict, include, shared } = workerData;
  const coverage = new CoverageFeatures(coverageSession(), include);
  const findings = new Map();
  const run = makeRunner(require(path.resolve(target)).fuzz, shared, coverage, findings);
  const meta = new Int32Array(shared, 0, 2);

  const corpus = [];
  coverage.takeNew(); // drop the coverage of loading the target
  for (const s of seeds) {
    const d = new Uint8Array(s);
    if (run(d) > 0 || corpus.length === 0) corpus.push(d);
  }
  const seedFeatures = coverage.seen.size;

  const rand = makeRand();
  const words = dict.map((w) => Buffer.from(w, 'latin1'));
  const t0 = Date.now();
  let execs = seeds.length;
  while (Date.now() - t0 < seconds * 1000) {
    for (let i = 0; i < 50; i++) {
      // Half the time one of the newest entries: they tend to be the deepest.
      const pick = rand(2) ? corpus.length - 1 - rand(Math.min(corpus.length, 8)) : rand(corpus.length);
      const input = mutate(corpus[pick], rand, corpus, words);
      execs++;
      if (run(input) > 0) corpus.push(input);
    }
    Atomics.store(meta, 1, execs);
  }
  parentPort.postMessage({
    execs,
    seconds: (Date.now() - t0) / 1000,
    seeds: seeds.length,
    corpus: corpus.length,
    seedFeatures,
    features: coverage.seen.size,
    findings: [...findings.values()],
    corpusBytes: corpus.map((c) => Buffer.from(c).toString('base64')),
  });
}

// ---- Main thread: watch the worker, report ---------------------------------------

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}

/** The command line: the target, its seed folder, and the options (with their defaults). */
function parseOptions() {
  const [target, seedDir] = process.argv.slice(2);
  if (!target || !seedDir) {
    console.error('usage: node fuzz/fuzz.js <target.fuzz.js> <seed-dir> [--seconds 60] [--out dir] [--dict-file f] [--dict w1,w2] [--timeout 10] [--rss-mb 2048]');
    process.exit(2);
  }
  // Dictionary words: --dict w1,w2 or --dict-file (one per line); \xNN is a byte.
  const dictFile = arg('dict-file');
  const words = [...(arg('dict', '') || '').split(','), ...(dictFile ? fs.readFileSync(dictFile, 'latin1').split('\n') : [])];
  return {
    target,
    seedDir,
    seconds: Number(arg('seconds', 60)),
    out: arg('out', fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'fuzz-out-'))),
    timeout: Number(arg('timeout', 10)),
    rssMb: Number(arg('rss-mb', 2048)),
    dict: words.filter(Boolean).map((w) => w.replace(/\\x([0-9a-f]{2})/gi, (_, h) => String.fromCharCode(parseInt(h, 16)))),
    include: (arg('include', 'dist/,pngjs,jpeg-js') || '').split(','),
  };
}

/**
 * Every 200 ms: a worker whose execution count has not moved for `timeout`
 * seconds hangs, a process over `rssMb` has blown up; either stops the worker
 * and saves the input it was running. Returns the interval.
 */
function watchWorker(worker, shared, o, name) {
  const meta = new Int32Array(shared, 0, 2);
  let lastExecs = -1;
  let lastProgress = Date.now();
  const watch = setInterval(() => {
    const execs = Atomics.load(meta, 1);
    if (execs !== lastExecs) {
      lastExecs = execs;
      lastProgress = Date.now();
    }
    const rss = process.memoryUsage().rss / 2 ** 20;
    let kind = null;
    if (Date.now() - lastProgress > o.timeout * 1000) kind = 'hang';
    else if (rss > o.rssMb) kind = 'oom';
    if (kind) {
      clearInterval(watch);
      const file = saveCurrent(shared, o.out, kind);
      worker.terminate();
      console.log(`${name}: FINDING (${kind}${kind === 'oom' ? `, RSS ${rss.toFixed(0)} MB` : ''}) after ${execs} executions; input saved to ${file}`);
      process.exitCode = 1;
    }
  }, 200);
  return watch;
}

/** The input the worker is running now, saved as `<kind>-<time>` in `out`. */
function saveCurrent(shared, out, kind) {
  const len = Math.min(Atomics.load(new Int32Array(shared, 0, 2), 0), MAX_LEN);
  const file = path.join(out, `${kind}-${Date.now()}`);
  fs.writeFileSync(file, Buffer.from(new Uint8Array(shared, 8, len)));
  return file;
}

/** The worker's result: each finding's input saved, the corpus if asked for, and the summary line. */
function report(r, out, name) {
  r.findings.forEach((f, i) => {
    const file = path.join(out, `crash-${i}`);
    fs.writeFileSync(file, Buffer.from(f.input, 'base64'));
    console.log(`${name}: FINDING (exception, ${f.count} inputs), first input saved to ${file}\n${f.error}`);
  });
  if (arg('keep-corpus')) r.corpusBytes.forEach((c, i) => fs.writeFileSync(path.join(out, `corpus-${i}`), Buffer.from(c, 'base64')));
  console.log(
    `${name}: ${r.execs} executions in ${r.seconds.toFixed(1)} s (${Math.round(r.execs / r.seconds)}/s), ` +
      `coverage ${r.seedFeatures} → ${r.features} block features, corpus ${r.seeds} seeds → ${r.corpus}, distinct findings ${r.findings.length}`,
  );
  if (r.findings.length) process.exitCode = 1;
}

function main() {
  const o = parseOptions();
  const seeds = fs.readdirSync(o.seedDir).sort().map((f) => fs.readFileSync(path.join(o.seedDir, f)));
  const shared = new SharedArrayBuffer(8 + MAX_LEN);
  fs.mkdirSync(o.out, { recursive: true });
  const worker = new Worker(__filename, { workerData: { target: o.target, seeds, seconds: o.seconds, dict: o.dict, include: o.include, shared } });
  const name = path.basename(o.target);
  const watch = watchWorker(worker, shared, o, name);
  worker.on('message', (r) => {
    clearInterval(watch);
    report(r, o.out, name);
  });
  worker.on('error', (err) => {
    clearInterval(watch);
    console.log(`${name}: FINDING (worker died: ${err && err.message}); last input saved to ${saveCurrent(shared, o.out, 'died')}`);
    process.exitCode = 1;
  });
}

if (isMainThread) main();
else workerMain();
