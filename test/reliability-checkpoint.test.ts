/**
 * Checkpoints: the loader refuses malformed layouts, unknown tensors,
 * non-finite data and bad step counts, each with its own message; saves leave
 * no temporaries behind and clean up those of dead processes only.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { CheckpointError, MarginHead, type MarginHeadOptions } from '../lib';
import { readCheckpointState } from '../train/src/run/checkpoint';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-rel-ckpt-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const C = 6;
const D = 4;
const config: MarginHeadOptions = { classes: C, dim: D, margin: { kind: 'softmax' }, optimizer: { lr: 0.1, momentum: 0.9 } };
let counter = 0;

/** Writes a safetensors file with this header (metadata of a head added) and data bytes. */
function writeRaw(tensors: Record<string, unknown>, data: Uint8Array, metadata: Record<string, string> = {}): string {
  const file = path.join(dir, `raw-${counter++}.safetensors`);
  const header = { __metadata__: { format: 'margin-softmax/head', version: '1', config: JSON.stringify(config), steps: '3', ...metadata }, ...tensors };
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(json), data]));
  return file;
}

const B = C * D * 4; // bytes of one tensor
const f32 = (shape = [C, D]) => ({ dtype: 'F32', shape });
function values(fill: (i: number) => number, n = 2 * C * D): Uint8Array {
  return new Uint8Array(Float32Array.from({ length: n }, (_, i) => fill(i)).buffer);
}
const good = () => values((i) => (i % 7) * 0.01);

function loadError(file: string): string {
  try {
    MarginHead.load(file);
  } catch (e) {
    expect(e).toBeInstanceOf(CheckpointError);
    return (e as Error).message;
  }
  throw new Error(`expected ${file} to be refused`);
}

describe('the loader refuses', () => {
  test('a well-formed file loads (the baseline the cases below break)', () => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B, 2 * B] } }, good());
    const head = MarginHead.load(file);
    expect(head.stepCount).toBe(3);
    expect(head.getMomentum()?.[7]).toBeCloseTo(((C * D + 7) % 7) * 0.01, 6);
  });

  test('overlapping offsets', () => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B - 8, 2 * B - 8] } }, good().subarray(0, 2 * B - 8));
    expect(loadError(file)).toMatch(/tensor 'momentum' \[88, 184\] overlaps tensor 'weight' \(which ends at 96\)/);
  });

  test('a gap between tensors', () => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B + 8, 2 * B + 8] } }, values(() => 0, 2 * C * D + 2));
    expect(loadError(file)).toMatch(/a gap of 8 bytes after tensor 'weight', before tensor 'momentum' at 104/);
  });

  test('a gap at the start of the data', () => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [8, B + 8] }, momentum: { ...f32(), data_offsets: [B + 8, 2 * B + 8] } }, values(() => 0, 2 * C * D + 2));
    expect(loadError(file)).toMatch(/a gap of 8 bytes at the start of the data, before tensor 'weight'/);
  });

  test('out-of-order offsets (end before begin)', () => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [B, 0] }, momentum: { ...f32(), data_offsets: [B, 2 * B] } }, good());
    expect(loadError(file)).toMatch(/tensor 'weight' has data_offsets \[96, 0\] out of order \(end before begin\)/);
  });

  test('an unknown extra tensor', () => {
    const file = writeRaw(
      { weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B, 2 * B] }, extra: { ...f32([2]), data_offsets: [2 * B, 2 * B + 8] } },
      values(() => 0, 2 * C * D + 2),
    );
    expect(loadError(file)).toMatch(/has an unexpected tensor 'extra' \(a head checkpoint holds only 'weight' and 'momentum'\)/);
  });

  test('Inf in the momentum, NaN in the weights', () => {
    const inf = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B, 2 * B] } }, values((i) => (i === C * D + 5 ? Infinity : 0.01)));
    expect(loadError(inf)).toMatch(/tensor 'momentum' holds Infinity at element 5/);
    const nan = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B, 2 * B] } }, values((i) => (i === 2 ? NaN : 0.01)));
    expect(loadError(nan)).toMatch(/tensor 'weight' holds NaN at element 2/);
  });

  test.each(['1e400', '-5', '1.5', ' 3', '9007199254740993', ''])('step count %j', (steps) => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B, 2 * B] } }, good(), { steps });
    expect(loadError(file)).toMatch(new RegExp(`metadata.steps = ${JSON.stringify(JSON.stringify(steps)).slice(1, -1).replace(/[.+]/g, '\\$&')} is not a non-negative integer step count`));
  });

  test('a configuration the constructor refuses (a misspelt option) is a CheckpointError', () => {
    const file = writeRaw({ weight: { ...f32(), data_offsets: [0, B] }, momentum: { ...f32(), data_offsets: [B, 2 * B] } }, good(), {
      config: JSON.stringify({ ...config, sampleRatio: 1 }),
    });
    expect(loadError(file)).toMatch(/metadata.config is invalid: .*'sampleRatio'/);
  });
});

describe('saves leave no temporaries and name the target', () => {
  const head = new MarginHead(config);
  const temporaries = (where: string) => fs.readdirSync(where).filter((n) => n.endsWith('.tmp'));

  test("save('') is refused before any temporary is written", () => {
    const parent = path.dirname(process.cwd());
    const before = temporaries(parent).length + temporaries(process.cwd()).length;
    expect(() => head.save('')).toThrow(CheckpointError);
    expect(() => head.save('')).toThrow(/Cannot save checkpoint "": expected a file path/);
    expect(temporaries(parent).length + temporaries(process.cwd()).length).toBe(before);
  });

  test('save onto an existing directory is refused and leaves no temporary', () => {
    const target = fs.mkdtempSync(path.join(dir, 'is-a-dir-'));
    expect(() => head.save(target)).toThrow(new RegExp(`Cannot save checkpoint ${target.replace(/[.]/g, '\\.')}: it is a directory`));
    expect(temporaries(dir)).toEqual([]);
  });

  test('a save into a missing folder names the target, not the temporary', () => {
    const target = path.join(dir, 'missing', 'head.safetensors');
    let msg = '';
    try {
      head.save(target);
    } catch (e) {
      expect(e).toBeInstanceOf(CheckpointError);
      msg = (e as Error).message;
    }
    expect(msg.startsWith(`Cannot save checkpoint ${target}: `)).toBe(true);
    expect(msg).not.toMatch(/\.tmp/);
  });

  test('temporaries of dead processes are removed at the next save; a live process’s are kept', async () => {
    const folder = fs.mkdtempSync(path.join(dir, 'stale-'));
    const file = path.join(folder, 'head.safetensors');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid as number;
    const sleeper = spawn('sleep', ['30']);
    try {
      const live = sleeper.pid as number;
      const staleName = `.head.safetensors.${dead}.1700000000000.tmp`;
      const liveName = `.head.safetensors.${live}.1700000000000.tmp`;
      const unrelated = `.other.safetensors.${dead}.1700000000000.tmp`;
      for (const n of [staleName, liveName, unrelated]) fs.writeFileSync(path.join(folder, n), 'partial');
      head.save(file);
      const names = fs.readdirSync(folder).sort();
      expect(names).toEqual([liveName, unrelated, 'head.safetensors'].sort());
      expect(MarginHead.load(file).getWeights()).toEqual(head.getWeights());
    } finally {
      sleeper.kill();
    }
  });

  test('checkpoint.tmp-<pid> folders of killed runs are removed on resume; a live run’s are kept', () => {
    const out = fs.mkdtempSync(path.join(dir, 'run-'));
    const dead = spawnSync(process.execPath, ['-e', '0']).pid as number;
    const sleeper = spawn('sleep', ['30']);
    try {
      fs.mkdirSync(path.join(out, `checkpoint.tmp-${dead}`));
      fs.writeFileSync(path.join(out, `checkpoint.tmp-${dead}`, 'weights.bin'), 'x');
      fs.mkdirSync(path.join(out, `checkpoint.tmp-${sleeper.pid}`));
      expect(readCheckpointState(out)).toBeNull(); // no checkpoint yet
      expect(fs.readdirSync(out)).toEqual([`checkpoint.tmp-${sleeper.pid}`]);
    } finally {
      sleeper.kill();
    }
  });
});
