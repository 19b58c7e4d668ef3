// bench/sharded_step.mjs — ShardedMarginHead over MPI: step time, its parts,
// memory per rank and bytes exchanged per step, for K ranks on this machine.
// N = 128 (the global batch), d = 512, adaptive margin, SGD momentum 0.9 (as
// bench/head_step.mjs). Each rank also times MarginHead.step on its own
// C/K classes with the same threads, interleaved with the sharded steps
// (A/B in one process): the sharded step's overhead.
//
//   node bench/sharded_step.mjs [--ranks 1,2] [--classes 1e5,1e6] [--steps 3]
//        [--transport shm|tcp] [--bind none|core] [--out FILE]
//
// starts one MPI job of K ranks (`node bench/sharded_step.mjs --rank-job C
// steps`) per (K, C) pair and prints one row per pair; the JSON goes to
// bench/results/sharded-step[-tcp].json (or --out). --transport shm: shared
// memory and loopback; tcp: each rank on a host of its own that shares
// nothing but TCP (test/hosts/netns-mpirun.sh, root only), and the bytes that
// crossed the links are reported beside the step's own count. --bind core is
// Open MPI's default for jobs of ≤ 2 ranks (each rank pinned to one core:
// its threads then share that core); the default here is none. Each rank
// runs its CPU kernels with threads = max(1, ⌊cores/K⌋).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const N = 128;
const D = 512;
const args = process.argv.slice(2);

if (args[0] === '--rank-job') await rankJob(Number(args[1]), Number(args[2]));
else launch();

function option(name, fallback) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
}

function launch() {
  const ranks = option('--ranks', '1,2').split(',').map(Number);
  const classes = option('--classes', '1e5,1e6').split(',').map(Number);
  const steps = Number(option('--steps', '3'));
  const transport = option('--transport', 'shm');
  const bind = option('--bind', 'none');
  if (!['shm', 'tcp'].includes(transport) || !['none', 'core'].includes(bind)) throw new Error('Expected --transport shm|tcp and --bind none|core');
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`${cpu}, ${os.cpus().length} cores; uptime: ${fs.readFileSync('/proc/loadavg', 'utf8').trim()} (load 1/5/15 min, runnable/total)`);
  const rows = [];
  for (const C of classes) {
    for (const K of ranks) {
      const program = [process.execPath, fileURLToPath(import.meta.url), '--rank-job', String(C), String(steps)];
      const hosts = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-bench-hosts-'));
      const cmd = transport === 'shm'
        ? ['mpirun', '--allow-run-as-root', '--oversubscribe', '--bind-to', bind, '-np', String(K), '--mca', 'btl', 'self,vader',
           '--mca', 'btl_vader_single_copy_mechanism', 'none', '--mca', 'oob_tcp_if_include', 'lo', ...program]
        : ['bash', path.join(HERE, '..', 'test', 'hosts', 'netns-mpirun.sh'), String(K), hosts, '--bind-to', bind, '-np', String(K), '--', ...program];
      const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8' });
      const linkFile = path.join(hosts, 'traffic.json');
      const links = fs.existsSync(linkFile) ? JSON.parse(fs.readFileSync(linkFile, 'utf8')) : null;
      fs.rmSync(hosts, { recursive: true, force: true });
      const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
      if (r.status !== 0 || !line) {
        console.error(`K=${K} C=${C} failed (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
        process.exitCode = 1;
        continue;
      }
      const row = { ...JSON.parse(line), transport, bind, loadavg: os.loadavg() };
      // All the job's link traffic (start-up, the checks, warm-up, the timed steps, the collectives alone).
      if (links) row.linkBytesPerHost = links.map((h) => h.txBytes + h.rxBytes);
      rows.push(row);
      print(row);
    }
  }
  // Rows of earlier runs for other (C, K) pairs are kept.
  const out = option('--out', path.join(HERE, 'results', transport === 'tcp' ? 'sharded-step-tcp.json' : 'sharded-step.json'));
  const key = (r) => `${r.classes}/${r.ranks}/${r.bind}`;
  const fresh = new Set(rows.map(key));
  const earlier = fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')).rows.filter((r) => !fresh.has(key(r))) : [];
  const all = [...earlier, ...rows].sort((a, b) => a.classes - b.classes || a.ranks - b.ranks);
  fs.writeFileSync(out, JSON.stringify({ cpu, cores: os.cpus().length, N, d: D, rows: all }, null, 2) + '\n');
  console.log(`wrote ${path.relative(process.cwd(), out)}`);
}

function print(r) {
  const ms = (s) => (s * 1e3).toFixed(0);
  const gib = (b) => (b / 2 ** 30).toFixed(2);
  for (const p of r.perRank) {
    console.log(
      `C=${r.classes.toExponential(0)} K=${r.ranks} ${r.transport} bind ${r.bind} rank ${p.rank}: step median ${ms(p.step)} ms ` +
        `(MarginHead.step on the rank's classes, same threads: ${ms(p.plain)} ms, ratio ${(p.step / p.plain).toFixed(2)}) on ${p.cpusAllowed} CPU(s), ${r.threadsPerRank} thread(s), ` +
        `(stats ${ms(p.stats)}, all-gather ${ms(p.allGather)}, finish ${ms(p.finish)}, all-reduce ${ms(p.allReduce)} ms), ` +
        `${p.localClasses} classes, centres+momentum ${gib(p.stateBytes)} GiB, peak RSS ${gib(p.peakRss)} GiB, ` +
        `collectives alone: all-gather ${(p.allGatherAlone * 1e6).toFixed(0)} µs, all-reduce ${(p.allReduceAlone * 1e6).toFixed(0)} µs; ` +
        `exchanged ${(r.bytesPerStep / 1024).toFixed(1)} KiB/step (stats ${(r.traffic.statsBytes / 1024).toFixed(1)}, grad ${(r.traffic.gradBytes / 1024).toFixed(1)})`,
    );
  }
}

async function rankJob(C, steps) {
  const { mpiCommunicator, ShardedMarginHead, MarginHead, deviceInfo } = await import('../dist/index.js');
  const comm = mpiCommunicator();
  const threads = Math.max(1, Math.floor(deviceInfo().cpu.threads / comm.size));
  const head = new ShardedMarginHead({
    classes: C, dim: D, margin: { kind: 'adaptive' }, optimizer: { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 }, seed: 1, threads, comm,
  });
  // The same batch on every rank (the global batch of a model-parallel step).
  let s = 12345;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5;
  const x = Float32Array.from({ length: N * D }, rnd);
  const y = Int32Array.from({ length: N }, (_, i) => (i * 7919) % C);
  head.step(x, y); // warm-up: touches the momentum buffer
  // MarginHead.step on this rank's classes with the same threads, the labels
  // mapped into them (as many rows with a local target as the sharded step has in all).
  const plainHead = new MarginHead({ classes: head.localClasses, dim: D, margin: { kind: 'adaptive' }, optimizer: { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 }, seed: 1, threads });
  const yLocal = Int32Array.from(y, (c) => c % head.localClasses);
  plainHead.step(x, yLocal);
  const parts = [];
  for (let k = 0; k < steps; k++) {
    let t = performance.now();
    const r = head.step(x, y);
    const step = (performance.now() - t) / 1e3;
    comm.barrier();
    t = performance.now();
    plainHead.step(x, yLocal);
    const plain = (performance.now() - t) / 1e3;
    comm.barrier();
    parts.push({ step, plain, ...r.seconds, traffic: r.traffic });
  }
  plainHead.dispose();
  const median = (key) => parts.map((p) => p[key]).sort((a, b) => a - b)[Math.floor(parts.length / 2)];
  // The two collectives alone (after a barrier, so no waiting for a slower
  // rank's compute): their cost on this transport.
  const alone = (fn) => {
    const t = [];
    for (let k = 0; k < 20; k++) {
      comm.barrier();
      const t0 = performance.now();
      fn();
      t.push((performance.now() - t0) / 1e3);
    }
    return t.sort((a, b) => a - b)[10];
  };
  const gatherAlone = alone(() => comm.allGather(new Float32Array(5 * N)));
  const reduceAlone = alone(() => comm.allReduceSum(new Float32Array(N * D)));
  const peakRss = Number(fs.readFileSync('/proc/self/status', 'utf8').match(/VmHWM:\s+(\d+)/)[1]) * 1024;
  const allowed = fs.readFileSync('/proc/self/status', 'utf8').match(/Cpus_allowed_list:\s+(\S+)/)[1];
  const cpus = allowed.split(',').reduce((a, r) => { const [lo, hi] = r.split('-').map(Number); return a + (hi === undefined ? 1 : hi - lo + 1); }, 0);
  const mine = Float64Array.from([comm.rank, median('step'), median('plain'), cpus, median('stats'), median('allGather'), median('finish'), median('allReduce'), head.localClasses, 2 * head.localClasses * D * 4, peakRss, gatherAlone, reduceAlone]);
  const all = comm.allGather(mine);
  if (comm.rank === 0) {
    const keys = ['rank', 'step', 'plain', 'cpusAllowed', 'stats', 'allGather', 'finish', 'allReduce', 'localClasses', 'stateBytes', 'peakRss', 'allGatherAlone', 'allReduceAlone'];
    const perRank = [];
    for (let r = 0; r < comm.size; r++) perRank.push(Object.fromEntries(keys.map((k, i) => [k, all[r * keys.length + i]])));
    const traffic = parts[0].traffic;
    console.log(JSON.stringify({ classes: C, ranks: comm.size, threadsPerRank: threads, steps, traffic, bytesPerStep: traffic.statsBytes + traffic.gradBytes, perRank }));
  }
  head.dispose();
}
