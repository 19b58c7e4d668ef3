/**
 * The layout section of CONTRIBUTING.md matches the tree: every path it names exists,
 * and every top-level folder and every folder of native/ is named in it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { expect, test } from 'vitest';

const ROOT = path.join(__dirname, '..');

/** The paths the layout block names: the first word of each of its lines. */
function layoutPaths(): string[] {
  const text = fs.readFileSync(path.join(ROOT, 'CONTRIBUTING.md'), 'utf8');
  const section = /^## Layout\n+```\n([\s\S]*?)^```$/m.exec(text);
  if (!section) throw new Error('CONTRIBUTING.md has no "## Layout" code block');
  return section[1].split('\n').map((l) => l.split(/\s+/)[0]).filter((w) => w && /^[\w.]/.test(w)).map((w) => w.replace(/[;:,]$/, ''));
}

/** Folders git tracks files in, directly below `dir` (relative to the root). */
function trackedFolders(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })
    .filter((e) => e.isDirectory() && !['node_modules', 'build', 'build-arm64', 'dist', 'prebuilds', '.git', 'runs'].includes(e.name))
    // wasm/: the built WebAssembly module at the top (native/wasm/ holds its sources and is named).
    .filter((e) => !(dir === '.' && e.name === 'wasm'))
    .map((e) => path.posix.join(dir, e.name) + '/');
}

test('every path the layout names exists', () => {
  const paths = layoutPaths();
  expect(paths.length).toBeGreaterThan(10);
  expect(paths.filter((p) => !fs.existsSync(path.join(ROOT, p)))).toEqual([]);
});

test('every top-level folder and every folder of native/ is in the layout', () => {
  const named = layoutPaths();
  const folders = [...trackedFolders('.').map((f) => f.replace(/^\.\//, '')), ...trackedFolders('native')];
  expect(folders.filter((f) => !named.some((p) => p === f || p.startsWith(f)))).toEqual([]);
});
