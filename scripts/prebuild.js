#!/usr/bin/env node
/**
 * `npm pack` / `npm publish` (prepack): puts the addon built in build/Release
 * into the tarball as this platform's prebuilt binary, in the node-gyp-build
 * layout prebuilds/<platform>-<arch>/node.napi.<libc>.node (an N-API binary:
 * one file serves every Node version ≥ 18). `--clean` (postpack) removes it
 * again, so that a checkout keeps loading its own build/Release.
 *
 * Release the package from a machine with nvcc, so that the binary carries
 * the CUDA kernels too; MARGIN_SOFTMAX_REQUIRE_CUDA=1 makes that a check.
 *
 * The WebAssembly backend (wasm/margin_softmax.wasm) must be in the tarball
 * too: it is built here when it is missing (scripts/build-wasm.sh, Emscripten).
 */
'use strict';
const fs = require('fs');
const path = require('path');

const ROOT = path.join(__dirname, '..');
const BUILT = path.join(ROOT, 'build', 'Release', 'margin_softmax.node');
const PREBUILDS = path.join(ROOT, 'prebuilds');
const WASM = path.join(ROOT, 'wasm', 'margin_softmax.wasm');

function libcTag() {
  if (process.platform !== 'linux') return '';
  const report = process.report?.getReport?.();
  return report?.header?.glibcVersionRuntime ? '.glibc' : '.musl';
}

function main(args) {
  fs.rmSync(PREBUILDS, { recursive: true, force: true });
  if (args.includes('--clean')) return 0;
  if (!fs.existsSync(BUILT)) {
    console.error(`prebuild: ${path.relative(ROOT, BUILT)} is missing: build the addon first (npm run build:native)`);
    return 1;
  }
  if (!fs.existsSync(WASM)) {
    const r = require('child_process').spawnSync('bash', [path.join(ROOT, 'scripts', 'build-wasm.sh')], { cwd: ROOT, stdio: 'inherit' });
    if (r.status !== 0) {
      console.error('prebuild: wasm/margin_softmax.wasm is missing and could not be built (scripts/build-wasm.sh needs Emscripten)');
      return 1;
    }
  }
  const dir = path.join(PREBUILDS, `${process.platform}-${process.arch}`);
  const target = path.join(dir, `node.napi${libcTag()}.node`);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(BUILT, target);
  const info = require(target).info();
  const mb = (fs.statSync(target).size / 1e6).toFixed(1);
  console.log(`prebuild: ${path.relative(ROOT, target)} (${mb} MB, CUDA kernels ${info.cuda.compiled ? 'included' : 'NOT included'})`);
  if (require(target)._commInfo?.().compiled) {
    // A binary linked against libmpi does not load where MPI is not installed
    // (install.js then falls back to a source build): release from a build without it.
    console.error('prebuild: the addon was built with MPI (libmpi is a load-time dependency of this binary, which would not load ' +
      'where MPI is not installed); rebuild without --CDMS_WITH_MPI=ON before packing');
    process.exit(1);
  }
  if (!info.cuda.compiled && process.env.MARGIN_SOFTMAX_REQUIRE_CUDA === '1') {
    console.error('prebuild: MARGIN_SOFTMAX_REQUIRE_CUDA=1 but the addon was built without CUDA (no nvcc, or MS_DISABLE_CUDA)');
    return 1;
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));
