// The TypeScript blocks of the README and of the docs that carry examples
// (DOCS below), compiled and run as a user's project would: the library is laid
// out as an installed package (node_modules/margin-softmax with its package.json
// and typings compiled from lib/ now, and this checkout's addon), and each ```ts
// block is a module of that project. Every block must
// type-check under moduleResolution node (typesVersions), node16 and bundler
// (exports), and must then run to completion. skipLibCheck is on as in most
// projects: tfjs 4.22's own .d.ts do not pass a strict library check.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '..');
/** The markdown files whose ```ts blocks are examples a user copies. */
const DOCS = ['README.md', 'docs/distributed.md'];
const TSC = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

/** The ```ts blocks of a markdown text, in order. */
export function tsBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

const MODES = {
  node: { module: 'commonjs', moduleResolution: 'node' },
  node16: { module: 'node16', moduleResolution: 'node16' },
  bundler: { module: 'esnext', moduleResolution: 'bundler' },
} as const;

let project: string;
let blocks: string[];

/**
 * Runs a command without blocking the worker (tsc takes tens of seconds on a
 * loaded machine; a synchronous spawn would starve vitest's own messages).
 */
function run(cmd: string, args: string[], cwd: string): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, timeout: 300_000 });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, out }));
  });
}

beforeAll(async () => {
  blocks = DOCS.flatMap((file) => tsBlocks(fs.readFileSync(path.join(ROOT, file), 'utf8')));
  project = fs.mkdtempSync(path.join(os.tmpdir(), 'margin-softmax-readme-'));
  const modules = path.join(project, 'node_modules');
  const pkg = path.join(modules, 'margin-softmax');
  fs.mkdirSync(pkg, { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'build'), path.join(pkg, 'build'));
  for (const dep of ['@tensorflow', '@types', 'node-gyp-build']) fs.symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(modules, dep));
  const lib = await run(process.execPath, [TSC, '-p', path.join(ROOT, 'tsconfig.json'), '--outDir', path.join(pkg, 'dist')], ROOT);
  if (lib.status !== 0) throw new Error(`compiling lib/ failed:\n${lib.out}`);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'readme-blocks', private: true }));
  blocks.forEach((code, i) => fs.writeFileSync(path.join(project, `block${i + 1}.ts`), code));
});

afterAll(() => {
  if (project) fs.rmSync(project, { recursive: true, force: true });
});

describe('README and docs code blocks', () => {
  it('has the blocks this test is about (quick start, MarginHead, tfjs adapter, sharded head)', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(4);
    expect(blocks.some((b) => b.includes('lossAndGrad('))).toBe(true);
    expect(blocks.some((b) => b.includes('new MarginHead('))).toBe(true);
    expect(blocks.some((b) => b.includes("from 'margin-softmax/tfjs'"))).toBe(true);
    expect(blocks.some((b) => b.includes('new ShardedMarginHead('))).toBe(true);
  });

  for (const [mode, options] of Object.entries(MODES)) {
    it(`type-check with moduleResolution ${mode}`, async () => {
      const config = {
        compilerOptions: {
          ...options,
          target: 'ES2022',
          strict: true,
          esModuleInterop: true,
          skipLibCheck: true,
          types: ['node'],
          outDir: `out-${mode}`,
          noEmit: mode !== 'node',
        },
        files: blocks.map((_, i) => `block${i + 1}.ts`),
      };
      fs.writeFileSync(path.join(project, `tsconfig.${mode}.json`), JSON.stringify(config, null, 2));
      const r = await run(process.execPath, [TSC, '-p', `tsconfig.${mode}.json`], project);
      expect(r.out).toBe('');
      expect(r.status).toBe(0);
    });
  }

  it('every block runs to completion', async () => {
    expect(fs.existsSync(path.join(project, 'out-node'))).toBe(true);
    for (let i = 0; i < blocks.length; i++) {
      const r = await run(process.execPath, [path.join(project, 'out-node', `block${i + 1}.js`)], project);
      expect({ block: i + 1, status: r.status, out: r.status === 0 ? '' : r.out }).toEqual({ block: i + 1, status: 0, out: '' });
    }
  });
});
