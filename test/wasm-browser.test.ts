/**
 * The wasm backend in a real browser: Debian's Chromium, headless, driven by
 * playwright-core, loads a page whose script (test/browser/page.ts, bundled
 * here with esbuild, Node's built-ins mapped to empty modules as docs/wasm.md
 * describes) fetches wasm/margin_softmax.wasm from the page's server, checks
 * the loss against the float64 reference and trains a tiny tfjs model through
 * a MarginHead (the tfjs adapter): the loss must fall. Skipped where Chromium
 * is not installed, unless MARGIN_SOFTMAX_REQUIRE_BROWSER=1 (CI).
 *
 * Tolerances: those of test/wasm-loss.test.ts (derived there); the training
 * criterion is test/package/example.mjs's (the last loss below half the first).
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { WASM_BUILT } from './wasm-helpers';

/** What the page script leaves on its global object (test/browser/page.ts). */
type PageGlobals = { __result?: unknown; __error?: string };
declare const window: PageGlobals;

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
const REQUIRED = process.env.MARGIN_SOFTMAX_REQUIRE_BROWSER === '1';
const ROOT = path.join(__dirname, '..');
const NODE_ONLY = /^(node:)?(fs|path|os|util|crypto|worker_threads|child_process|module|url)$|^node-gyp-build$/;

let dir = '';
let server: http.Server | undefined;
let base = '';

async function bundle(out: string): Promise<void> {
  const esbuild = await import('esbuild');
  await esbuild.build({
    entryPoints: [path.join(__dirname, 'browser', 'page.ts')],
    bundle: true,
    platform: 'browser',
    format: 'iife',
    outfile: out,
    logLevel: 'error',
    plugins: [
      {
        name: 'node-only-modules-empty',
        setup(b) {
          b.onResolve({ filter: NODE_ONLY }, (a) => ({ path: a.path, namespace: 'empty' }));
          b.onLoad({ filter: /.*/, namespace: 'empty' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
        },
      },
    ],
  });
}

const run = WASM_BUILT && (CHROMIUM !== undefined || REQUIRED);

beforeAll(async () => {
  if (!run) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'margin-softmax-browser-'));
  await bundle(path.join(dir, 'page.js'));
  fs.writeFileSync(path.join(dir, 'index.html'), '<!doctype html><meta charset="utf-8"><title>margin-softmax wasm</title><script src="/page.js"></script>');
  const files: Record<string, [string, string]> = {
    '/': [path.join(dir, 'index.html'), 'text/html'],
    '/page.js': [path.join(dir, 'page.js'), 'text/javascript'],
    '/margin_softmax.wasm': [path.join(ROOT, 'wasm', 'margin_softmax.wasm'), 'application/wasm'],
  };
  server = http.createServer((req, res) => {
    const f = files[req.url ?? ''];
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': f[1] }).end(fs.readFileSync(f[0]));
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}, 120_000);

afterAll(() => {
  server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test.runIf(run)('a tiny tfjs model trains through a MarginHead on the wasm backend in headless Chromium', async () => {
  if (!CHROMIUM) throw new Error('MARGIN_SOFTMAX_REQUIRE_BROWSER=1 but Chromium is not installed (apt-get install chromium)');
  const { chromium } = await import('playwright-core');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'margin-softmax-chromium-'));
  // A fresh profile (launchPersistentContext passes it as --user-data-dir).
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    const consoleLines: string[] = [];
    page.on('console', (m) => consoleLines.push(m.text()));
    await page.goto(base + '/');
    await page.waitForFunction(() => window.__result !== undefined || window.__error !== undefined, undefined, { timeout: 90_000 });
    const error = await page.evaluate(() => window.__error);
    expect(error, consoleLines.join('\n')).toBeUndefined();
    const r = (await page.evaluate(() => window.__result)) as {
      backends: string[]; backend: string; cpuReason: string; lossBackend: string; loss: number; refLoss: number;
      gradEmbeddingsErr: number; gradWeightsErr: number; headBackend: string; losses: number[];
    };
    expect(r.backends).toEqual(['wasm']);
    expect(r.backend).toBe('wasm');
    expect(r.cpuReason).toMatch(/native addons load only in Node\.js/);
    expect(r.lossBackend).toBe('wasm');
    expect(Math.abs(r.loss - r.refLoss)).toBeLessThanOrEqual(5e-5 * Math.max(1, r.refLoss));
    expect(r.gradEmbeddingsErr).toBeLessThanOrEqual(1e-4);
    expect(r.gradWeightsErr).toBeLessThanOrEqual(1e-4);
    expect(r.headBackend).toBe('wasm');
    expect(r.losses.every(Number.isFinite)).toBe(true);
    expect(r.losses.at(-1)!).toBeLessThan(0.5 * r.losses[0]);
  } finally {
    await browser.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}, 180_000);
