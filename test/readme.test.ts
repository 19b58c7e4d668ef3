// The README's TypeScript blocks, compiled and run as a user's project would:
// the library is laid out as an installed package (node_modules/margin-softmax
// with its package.json and typings compiled from lib/ now, and this checkout's
// addon), and each ```ts block is a module of that project. Every block must
// type-check under moduleResolution node (typesVersions), node16 and bundler
// (exports), and must then run to completion. skipLibCheck is on as in most
// projects: tfjs 4.22's own .d.ts do not pass a strict library check.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '..');
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

function run(cmd: string, args: string[], cwd: string) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

beforeAll(() => {
  blocks = tsBlocks(fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8'));
  project = fs.mkdtempSync(path.join(os.tmpdir(), 'margin-softmax-readme-'));
  const modules = path.join(project, 'node_modules');
  const pkg = path.join(modules, 'margin-softmax');
  fs.mkdirSync(pkg, { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'build'), path.join(pkg, 'build'));
  for (const dep of ['@tensorflow', '@types', 'node-gyp-build']) fs.symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(modules, dep));
  const lib = run(process.execPath, [TSC, '-p', path.join(ROOT, 'tsconfig.json'), '--outDir', path.join(pkg, 'dist')], ROOT);
  if (lib.status !== 0) throw new Error(`compiling lib/ failed:\n${lib.out}`);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'readme-blocks', private: true }));
  blocks.forEach((code, i) => fs.writeFileSync(path.join(project, `block${i + 1}.ts`), code));
});

afterAll(() => {
  if (project) fs.rmSync(project, { recursive: true, force: true });
});

describe('README code blocks', () => {
  it('has the blocks this test is about (quick start, MarginHead, tfjs adapter, wasm kernels)', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(4);
    expect(blocks.some((b) => b.includes("from 'margin-softmax/tfjs'"))).toBe(true);
    expect(blocks.some((b) => b.includes("from 'margin-softmax/wasm-kernels'"))).toBe(true);
  });

  for (const [mode, options] of Object.entries(MODES)) {
    it(`type-check with moduleResolution ${mode}`, () => {
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
      const r = run(process.execPath, [TSC, '-p', `tsconfig.${mode}.json`], project);
      expect(r.out).toBe('');
      expect(r.status).toBe(0);
    });
  }

  it('every block runs to completion', () => {
    expect(fs.existsSync(path.join(project, 'out-node'))).toBe(true);
    blocks.forEach((_, i) => {
      const r = run(process.execPath, [path.join(project, 'out-node', `block${i + 1}.js`)], project);
      expect({ block: i + 1, status: r.status, out: r.status === 0 ? '' : r.out }).toEqual({ block: i + 1, status: 0, out: '' });
    });
  });
});
