/**
 * `--backend auto|cpu|cuda`: the margin head's backend for train and compare,
 * recorded in config.json, the result and the report. The run on CUDA is in
 * test/gpu/train-cli-cuda.test.ts (a GPU, or the emulated CUDA addon in CI).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, expect, test } from 'vitest';
import { BackendUnavailableError, backends } from 'margin-softmax';
import { main } from '../src/commands/main';
import { configFromArgs, parse, UsageError } from '../src/commands/options';
import { train } from '../src/run/train';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-head-backend-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const TINY = ['--epochs', '1', '--dim', '16', '--widths', '8,16', '--mnist-per-class', '8', '--mnist-eval-per-class', '4', '--eval-every', '0'];

const parsed = (args: string[]) => configFromArgs(parse(args).values, 'train');

test('--backend is parsed for train and compare, refused with its values named otherwise', async () => {
  expect(parsed([]).backend).toBe('auto');
  expect(parsed(['--backend', 'cpu']).backend).toBe('cpu');
  await expect(main(['train', '--backend', 'gpu'])).rejects.toThrow(/Expected --backend auto, cpu or cuda but received "gpu"/);
  await expect(main(['train', '--backend', 'gpu'])).rejects.toThrow(UsageError);
  await expect(main(['eval', '--checkpoint', tmp, '--backend', 'cpu'])).rejects.toThrow(/--backend is not an option of eval/);
});

test('a tiny run with --backend cpu says where the head ran: result, config.json', async () => {
  const out = path.join(tmp, 'cpu');
  const cfg = { ...parsed(TINY), backend: 'cpu' as const, out };
  const r = await train(cfg, { verbose: false, plots: false });
  expect(r.headBackend).toBe('cpu');
  const saved = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  expect([saved.backend, saved.headBackend]).toEqual(['cpu', 'cpu']);
});

test.skipIf(backends().includes('cuda'))('--backend cuda without a usable device fails with BackendUnavailableError, before any training', async () => {
  const out = path.join(tmp, 'cuda');
  await expect(train({ ...parsed(TINY), backend: 'cuda', out }, { verbose: false, plots: false })).rejects.toThrow(BackendUnavailableError);
  expect(fs.existsSync(path.join(out, 'checkpoint'))).toBe(false);
});
