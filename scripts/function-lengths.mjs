#!/usr/bin/env node
// The longest functions of the project's sources, for keeping functions short.
//
//   node scripts/function-lengths.mjs [--top N | --all] [--json]
//
// TypeScript / JavaScript: every function, method, arrow function and
// constructor, measured with the TypeScript compiler's parser (a dev
// dependency). C++ / CUDA: every function body at namespace level or in a
// class, found by matching braces after a `name(...)` header, with comments,
// strings and character literals skipped. Lengths count lines from the
// header's first line to the closing brace. Test files are left out: their
// describe/it callbacks are lists of cases, not functions to split.
// test/function-lengths.test.ts holds the limit and the kernels exempt from it.
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ts = createRequire(import.meta.url)('typescript');

const SCRIPT = /\.(ts|mts|mjs|js|cjs)$/;
const NATIVE = /\.(cc|cu|cuh|h|inc)$/;
const LEFT_OUT = /^(dist\/|test\/|train\/test\/|train\/dist\/|fuzz\/corpus\/)|\.d\.ts$/;

/** Tracked source files (git), relative to the root. */
export function sourceFiles() {
  const out = execFileSync('git', ['ls-files'], { cwd: root, encoding: 'utf8' });
  return out.split('\n').filter((f) => (SCRIPT.test(f) || NATIVE.test(f)) && !LEFT_OUT.test(f));
}

/** {file, line, name, lines} for every function of a TS/JS source. */
export function scriptFunctions(file, text) {
  const src = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const found = [];
  const lineOf = (pos) => src.getLineAndCharacterOfPosition(pos).line + 1;
  const visit = (node, outerName) => {
    const isFunction = ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node) ||
      ts.isArrowFunction(node) || ts.isFunctionExpression(node) || ts.isConstructorDeclaration(node);
    if (isFunction && node.body) {
      const line = lineOf(node.getStart());
      const name = node.name ? node.name.getText() : ts.isConstructorDeclaration(node) ? 'constructor' : outerName ?? '<anonymous>';
      found.push({ file, line, name, lines: lineOf(node.getEnd()) - line + 1 });
    }
    const named = ts.isVariableDeclaration(node) || ts.isPropertyAssignment(node) || ts.isPropertyDeclaration(node);
    ts.forEachChild(node, (child) => visit(child, named ? node.name.getText() : undefined));
  };
  visit(src, undefined);
  return found;
}

/** The text with comments, strings and character literals blanked (newlines kept). */
function blankCommentsAndStrings(text) {
  return text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'/g,
    (m) => m.replace(/[^\n]/g, ' '));
}

const CONTROL = new Set(['if', 'for', 'while', 'switch', 'catch', 'return', 'sizeof', 'defined']);

/** {file, line, name, lines} for every C++/CUDA function body (not lambdas, not control blocks). */
export function nativeFunctions(file, text) {
  const code = blankCommentsAndStrings(text);
  const found = [];
  const lineAt = (i) => code.slice(0, i).split('\n').length;
  // A header: identifier (possibly qualified or an operator), a balanced (...) list, then
  // qualifiers / an initialiser list / a trailing return type, then '{'.
  const header = /([A-Za-z_~][\w:~]*|operator\s*\S+)\s*\(/g;
  let m;
  while ((m = header.exec(code)) !== null) {
    const name = m[1].split('::').pop();
    if (CONTROL.has(name)) continue;
    let i = m.index + m[0].length, depth = 1;
    while (i < code.length && depth > 0) { if (code[i] === '(') depth++; else if (code[i] === ')') depth--; i++; }
    const tail = /^\s*(?:const|noexcept|override|final|mutable|->\s*[\w:<>,\s*&]+|:\s*[^{;]*)*\s*\{/.exec(code.slice(i, i + 400));
    if (!tail || code[m.index - 1] === '.' || /\]\s*$/.test(code.slice(Math.max(0, m.index - 3), m.index))) continue;
    const open = i + tail[0].length - 1;
    let j = open + 1; depth = 1;
    while (j < code.length && depth > 0) { if (code[j] === '{') depth++; else if (code[j] === '}') depth--; j++; }
    const line = lineAt(m.index);
    found.push({ file, line, name, lines: lineAt(j - 1) - line + 1 });
    header.lastIndex = j;   // nested lambdas and blocks belong to this function
  }
  return found;
}

/** Every function of the project's sources, longest first. */
export function allFunctions() {
  const all = [];
  for (const file of sourceFiles()) {
    const text = readFileSync(path.join(root, file), 'utf8');
    all.push(...(SCRIPT.test(file) ? scriptFunctions(file, text) : nativeFunctions(file, text)));
  }
  return all.sort((a, b) => b.lines - a.lines || a.file.localeCompare(b.file));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const args = process.argv.slice(2);
  const top = args.includes('--all') ? Infinity : Number(args[args.indexOf('--top') + 1]) || 25;
  const rows = allFunctions().slice(0, top);
  if (args.includes('--json')) console.log(JSON.stringify(rows, null, 2));
  else for (const r of rows) console.log(`${String(r.lines).padStart(4)}  ${r.file}:${r.line}  ${r.name}`);
}
