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
 * On linux-x64 it also packs prebuilds/linux-arm64/node.napi.glibc.node,
 * cross-compiled by scripts/build-arm64.sh (run here, incrementally) where
 * aarch64-linux-gnu-g++ is on the PATH; MARGIN_SOFTMAX_REQUIRE_ARM64=1 makes
 * a missing cross compiler an error instead of a tarball without it.
 * The WebAssembly backend (wasm/margin_softmax.wasm) must be in the tarball
 * too: it is built here when it is missing (scripts/build-wasm.sh, Emscripten).
 */
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const ROOT = path.join(__dirname, '..');
const BUILT = path.join(ROOT, 'build', 'Release', 'margin_softmax.node');
const PREBUILDS = path.join(ROOT, 'prebuilds');
const BUILT_ARM64 = path.join(ROOT, 'build-arm64', 'Release', 'margin_softmax.node');
const EM_AARCH64 = 183;

/** e_machine of an ELF file (null when it is not one). */
function elfMachine(file) {
  const h = Buffer.alloc(20);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, h, 0, 20, 0);
  } finally {
    fs.closeSync(fd);
  }
  return h.readUInt32BE(0) === 0x7f454c46 ? h.readUInt16LE(18) : null;
}

/** The cross-compiled linux-arm64 addon, when this machine can build it: 0 packed or skipped, 1 failed. */
function packArm64() {
  const required = process.env.MARGIN_SOFTMAX_REQUIRE_ARM64 === '1';
  if (process.platform !== 'linux' || process.arch !== 'x64') return 0;
  const hasCross = spawnSync('aarch64-linux-gnu-g++', ['--version'], { stdio: 'ignore' }).status === 0;
  if (!hasCross) {
    const msg = 'prebuild: aarch64-linux-gnu-g++ not found: the tarball has no linux-arm64 binary (apt-get install g++-aarch64-linux-gnu)';
    console[required ? 'error' : 'warn'](msg);
    return required ? 1 : 0;
  }
  const r = spawnSync('bash', [path.join(ROOT, 'scripts', 'build-arm64.sh')], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0 || !fs.existsSync(BUILT_ARM64)) {
    console.error('prebuild: the linux-arm64 cross build failed (bash scripts/build-arm64.sh)');
    return 1;
  }
  if (elfMachine(BUILT_ARM64) !== EM_AARCH64) {
    console.error(`prebuild: ${path.relative(ROOT, BUILT_ARM64)} is not an aarch64 ELF binary`);
    return 1;
  }
  const dir = path.join(PREBUILDS, 'linux-arm64');
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(BUILT_ARM64, path.join(dir, 'node.napi.glibc.node'));
  console.log(`prebuild: prebuilds/linux-arm64/node.napi.glibc.node (${(fs.statSync(BUILT_ARM64).size / 1e6).toFixed(1)} MB, cross-compiled, CPU backend)`);
  return 0;
}
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
  return packArm64();
}

process.exitCode = main(process.argv.slice(2));
