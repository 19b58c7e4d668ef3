/**
 * End to end on ORL faces: a short training run with the adaptive loss
 * improves held-out verification over the untrained backbone; the run folder
 * holds metrics, checkpoints (tfjs model.json + weights.bin, head safetensors)
 * and plots; `eval` on the checkpoint reproduces the numbers `train`
 * reported; a checkpoint from another configuration is refused; a stopped
 * run keeps its last checkpoint and --resume continues it.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, test } from 'vitest';
import { main } from '../src/commands/main';
import { runEval } from '../src/commands/eval';
import { CheckpointMismatchError } from '../src/run/checkpoint';
import { DEFAULT_CONFIG, makeMargin, type TrainConfig } from '../src/run/config';
import { train, type TrainResult } from '../src/run/train';

const ORL = path.resolve(__dirname, '..', '..', '..', 'shared', 'data', 'orl_faces');
const haveOrl = fs.existsSync(ORL);
if (!haveOrl) console.warn(`skipping the end-to-end ORL test: ${ORL} not found`);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-e2e-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!haveOrl)('train → eval on ORL faces (adaptive loss)', () => {
  const out = path.join(tmp, 'orl-adaptive');
  // 30 training identities (300 images), 10 held out; 6 epochs, lr × 0.1 from epoch 5.
  const cfg: TrainConfig = { ...DEFAULT_CONFIG, data: ORL, out, epochs: 6, lrSteps: [5], margin: makeMargin('adaptive'), seed: 0 };
  let r: TrainResult;

  test('training improves held-out verification accuracy over the untrained backbone', async () => {
    r = await train(cfg, { verbose: false });
    expect(r.stopped).toBe(false);
    expect(r.before && r.after).toBeTruthy();
    const before = r.before!.accuracy.mean;
    const after = r.after!.accuracy.mean;
    console.log(`ORL adaptive: verification ${(100 * before).toFixed(2)} % untrained → ${(100 * after).toFixed(2)} % after ${cfg.epochs} epochs; ${r.imgPerSec.toFixed(1)} img/s; ${r.wallSeconds.toFixed(0)} s`);
    expect(after).toBeGreaterThan(before + 0.03);
    expect(r.after!.auc).toBeGreaterThan(r.before!.auc);
    // The training loss fell and θ_y moved towards the class centres.
    const e1 = r.epochs.find((e) => e.epoch === 1)!;
    const eN = r.epochs[r.epochs.length - 1];
    expect(eN.loss!).toBeLessThan(e1.loss! / 2);
    expect(eN.theta!.p50).toBeLessThan(e1.theta!.p50);
    expect(r.after!.genuinePairs).toBe(450);
    expect(r.after!.impostorPairs).toBe(450);
    expect(r.imgPerSec).toBeGreaterThan(5);
  }, 300_000);

  test('the run folder: metrics per epoch, tfjs + safetensors checkpoint, SVG plots', () => {
    const lines = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.epoch)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(lines.every((l) => typeof l.val.accuracy === 'number')).toBe(true);
    expect(lines[5].lr).toBeCloseTo(0.01, 12);
    const ck = path.join(out, 'checkpoint');
    const modelJson = JSON.parse(fs.readFileSync(path.join(ck, 'model.json'), 'utf8'));
    expect(modelJson.format).toBe('layers-model');
    expect(modelJson.weightsManifest[0].paths).toEqual(['weights.bin']);
    const floats = modelJson.weightsManifest[0].weights.reduce((n: number, w: { shape: number[] }) => n + w.shape.reduce((a, b) => a * b, 1), 0);
    expect(fs.statSync(path.join(ck, 'weights.bin')).size).toBe(4 * floats);
    expect(fs.readFileSync(path.join(ck, 'head.safetensors')).length).toBeGreaterThan(30 * 512 * 4);
    expect(JSON.parse(fs.readFileSync(path.join(ck, 'state.json'), 'utf8')).epoch).toBe(6);
    for (const f of ['training.svg', 'roc.svg', 'theta.svg']) {
      const svg = fs.readFileSync(path.join(out, 'plots', f), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(svg.length).toBeGreaterThan(5000);
    }
    const theta = fs.readFileSync(path.join(out, 'theta.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(theta.length).toBe(6);
    expect(theta[0].theta.length).toBe(300);
  });

  test('`eval` on the checkpoint reproduces the numbers `train` reported', async () => {
    const json = path.join(tmp, 'eval.json');
    const code = await main(['eval', '--checkpoint', out, '--data', ORL, '--json', json]);
    expect(code).toBe(0);
    const e = JSON.parse(fs.readFileSync(json, 'utf8'));
    expect(e.epoch).toBe(6);
    expect(e.result.accuracy).toEqual(r.after!.accuracy);
    expect(e.result.tar).toEqual(r.after!.tar);
    expect(e.result.rank1).toEqual(r.after!.rank1);
    expect(e.result.auc).toBe(r.after!.auc);
  });

  test('a checkpoint from another configuration is refused', async () => {
    await expect(runEval({ checkpoint: out, expect: { dim: 256 } })).rejects.toThrow(/another configuration: dim is 512 there, 256/);
    const other = { ...cfg, dim: 256 };
    await expect(train(other, { verbose: false, resume: true })).rejects.toThrow(CheckpointMismatchError);
    await expect(train(other, { verbose: false, resume: true })).rejects.toThrow(/dim: 512 \(checkpoint\) vs 256 \(now\)/);
    await expect(train({ ...cfg, margin: makeMargin('arcface') }, { verbose: false, resume: true })).rejects.toThrow(/margin: /);
    await expect(train(cfg, { verbose: false })).rejects.toThrow(/already holds a checkpoint/);
  });

  test('a stop keeps the last checkpoint; --resume continues from it', async () => {
    const more = { ...cfg, epochs: 7 };
    const stopped = await train(more, { verbose: false, resume: true, stopAfterBatches: 2, plots: false });
    expect(stopped.stopped).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'state.json'), 'utf8')).epoch).toBe(6);
    expect(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length).toBe(7);

    const resumed = await train(more, { verbose: false, resume: true, plots: false });
    expect(resumed.stopped).toBe(false);
    expect(resumed.epochs.map((e) => e.epoch)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // Continued, not restarted: the loss stays near where epoch 6 left it (a fresh head starts above 30).
    expect(resumed.epochs[7].loss!).toBeLessThan(Math.max(2 * r.epochs[6].loss!, 10));
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'state.json'), 'utf8')).epoch).toBe(7);
  }, 300_000);

  test("--init-from starts a run from another run's backbone; another architecture is refused", async () => {
    const source = await runEval({ checkpoint: out });
    const stateBefore = fs.readFileSync(path.join(out, 'checkpoint', 'state.json'), 'utf8');
    const tuned = await train({ ...cfg, out: path.join(tmp, 'orl-init'), epochs: 1, lrSteps: [], initFrom: out }, { verbose: false, plots: false });
    // Epoch 0 evaluates the loaded backbone: the source run's own verification, exactly.
    expect(tuned.before!.accuracy).toEqual(source.result.accuracy);
    expect(tuned.before!.auc).toBe(source.result.auc);
    expect(tuned.after!.accuracy.mean).not.toBe(tuned.before!.accuracy.mean);
    expect(fs.readFileSync(path.join(out, 'checkpoint', 'state.json'), 'utf8')).toBe(stateBefore);
    await expect(train({ ...cfg, out: path.join(tmp, 'orl-init-256'), dim: 256, initFrom: out }, { verbose: false })).rejects.toThrow(
      /another architecture than this run's:\n {2}dim: 512 \(checkpoint\) vs 256 \(now\)/,
    );
    await expect(train({ ...cfg, out: path.join(tmp, 'orl-init-none'), initFrom: path.join(tmp, 'no-run') }, { verbose: false })).rejects.toThrow(
      /Nothing to start from/,
    );
  }, 300_000);
});
