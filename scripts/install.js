#!/usr/bin/env node
/**
 * The package's install step. The tarball carries prebuilt addons for
 * linux-x64 (prebuilds/, the node-gyp-build layout: CPU backend + CUDA kernels,
 * cudart linked statically, so it loads with or without an NVIDIA driver) and
 * linux-arm64 (CPU backend, NEON kernels), both for glibc (docs/platforms.md).
 * When it loads here, nothing is compiled. Otherwise, or when asked, the addon
 * is built from source:
 *
 *   npm install margin-softmax --build-from-source        (or MARGIN_SOFTMAX_BUILD_FROM_SOURCE=1)
 *   npm install margin-softmax --margin-softmax-cpu-only  (or MARGIN_SOFTMAX_CPU_ONLY=1): no CUDA
 *   npm install margin-softmax --margin-softmax-mpi       (or MARGIN_SOFTMAX_MPI=1): a source build
 *     with the MPI collectives (cmake-js; needs an MPI such as Open MPI installed)
 *
 * The source build uses cmake-js (CPU + CUDA where nvcc exists) when cmake-js
 * is installed and CMake is on the PATH, else npm's own node-gyp (CPU only).
 * The result goes to build/Release, which node-gyp-build prefers at load time.
 *
 * Where no prebuilt addon loads and the automatic source build fails (no
 * compiler, an unsupported platform), the install still succeeds: the library
 * then runs on its WebAssembly backend (wasm/margin_softmax.wasm, shipped in
 * the tarball). A source build the user asked for must succeed.
 */
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const ROOT = path.join(__dirname, '..');
/** The WebAssembly backend's module (scripts/build-wasm.sh), the fallback where no addon can be built. */
const WASM_FILE = path.join(ROOT, 'wasm', 'margin_softmax.wasm');

const truthy = (v) => v !== undefined && v !== '' && v !== '0' && v !== 'false';

/** npm turns `--build-from-source[=margin-softmax]` into npm_config_build_from_source. */
function buildFromSourceRequested(env) {
  const flag = env.npm_config_build_from_source;
  return truthy(env.MARGIN_SOFTMAX_BUILD_FROM_SOURCE) || flag === 'true' || flag === 'margin-softmax';
}

function cpuOnlyRequested(env) {
  return truthy(env.MARGIN_SOFTMAX_CPU_ONLY) || truthy(env.npm_config_margin_softmax_cpu_only);
}

function mpiRequested(env) {
  return truthy(env.MARGIN_SOFTMAX_MPI) || truthy(env.npm_config_margin_softmax_mpi);
}

function resolveFrom(request) {
  try {
    return require.resolve(request, { paths: [ROOT] });
  } catch {
    return null;
  }
}

/**
 * Loads the prebuilt binary of this platform in a child process (so that a
 * binary that cannot be loaded here, e.g. for an older glibc, is a fallback
 * to a source build rather than a crash). Returns null when it loads, else why not.
 */
function prebuiltProblem() {
  const loader = resolveFrom('node-gyp-build');
  if (!loader) return 'node-gyp-build is not installed';
  const script = `const p = require(${JSON.stringify(loader)}).resolve(${JSON.stringify(ROOT)}); require(p); console.log(p);`;
  const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, PREBUILDS_ONLY: '1' }, encoding: 'utf8' });
  if (r.status === 0) {
    console.log(`margin-softmax: using the prebuilt addon ${path.relative(ROOT, r.stdout.trim())}`);
    return null;
  }
  const error = (r.stderr || '').split('\n').find((l) => /^\w*Error: /.test(l));
  return error ? error.trim() : `exit status ${r.status}`;
}

function hasCmake() {
  const r = spawnSync('cmake', ['--version'], { stdio: 'ignore' });
  return r.status === 0;
}

function run(args) {
  console.log(`margin-softmax: ${path.basename(args[0])} ${args.slice(1).join(' ')}`);
  const r = spawnSync(process.execPath, args, { cwd: ROOT, stdio: 'inherit' });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

function buildFromSource(cpuOnly) {
  const cmakeJs = resolveFrom('cmake-js/bin/cmake-js');
  if (cmakeJs && hasCmake()) {
    const flags = [...(cpuOnly ? ['--CDMS_DISABLE_CUDA=ON'] : []), ...(mpiRequested(process.env) ? ['--CDMS_WITH_MPI=ON'] : [])];
    return run([cmakeJs, 'compile', ...flags]);
  }
  const nodeGyp = process.env.npm_config_node_gyp || resolveFrom('node-gyp/bin/node-gyp.js');
  if (nodeGyp) {
    if (!cpuOnly) console.log('margin-softmax: cmake-js or CMake not found: building the CPU backend only with node-gyp');
    return run([nodeGyp, 'rebuild']);
  }
  console.error(
    'margin-softmax: cannot build the addon from source: it needs cmake-js (npm install cmake-js) and CMake ≥ 3.18, ' +
      'or node-gyp (bundled with npm), and a C++17 compiler',
  );
  return 1;
}

const PREBUILT_PLATFORMS = ['linux-x64', 'linux-arm64'];

/** What to do where the addon could not be built: named for this platform (docs/platforms.md). */
function sourceBuildAdvice(platform, arch) {
  const where = `${platform}-${arch}`;
  const lines = [`margin-softmax: the addon could not be built for ${where}.`];
  if (PREBUILT_PLATFORMS.includes(where)) {
    lines.push(`  A prebuilt binary for ${where} (glibc) ships in the package; it did not load here (musl, glibc older than 2.34 on x64 or 2.29 on arm64, or a libstdc++ older than GCC 12's?).`);
  } else {
    lines.push(`  The package ships prebuilt binaries for ${PREBUILT_PLATFORMS.join(' and ')} (glibc) only; on ${where} it is compiled at install.`);
  }
  if (platform === 'win32') {
    lines.push('  Windows: the CPU kernels use GCC/Clang vector extensions, which MSVC does not compile; this build has never been run on Windows.',
      '  Use WSL2 (Linux: the prebuilt binary), or build with clang-cl: install LLVM and CMake, then',
      '  npm install cmake-js, then in node_modules/margin-softmax: npx cmake-js compile --CDCMAKE_GENERATOR_TOOLSET=ClangCL --CDMS_DISABLE_CUDA=ON.');
  } else if (platform === 'darwin') {
    lines.push('  macOS: install the Xcode command line tools (xcode-select --install; Apple clang) and, for the CMake build, CMake ≥ 3.18',
      '  (brew install cmake) and cmake-js; node-gyp, bundled with npm, builds the CPU backend without CMake.');
  } else {
    lines.push('  Install a C++17 compiler (GCC ≥ 9 or clang ≥ 10) and either CMake ≥ 3.18 with cmake-js (npm install cmake-js) or',
      '  node-gyp\'s requirements (python3, make), then run npm install again.');
  }
  lines.push('  docs/platforms.md lists what is prebuilt, what builds from source and what has been run where.');
  return lines.join('\n');
}

function main() {
  const env = process.env;
  const cpuOnly = cpuOnlyRequested(env);
  if (buildFromSourceRequested(env) || cpuOnly) {
    console.log(`margin-softmax: building from source as requested${cpuOnly ? ' (CPU only)' : ''}`);
    return reportFailure(buildFromSource(cpuOnly));
  }
  const problem = prebuiltProblem();
  if (problem === null) return 0;
  console.log(`margin-softmax: no usable prebuilt addon for ${process.platform}-${process.arch} (${problem}); building from source`);
  const status = buildFromSource(false);
  if (status !== 0 && fs.existsSync(WASM_FILE)) {
    // The advice is printed anyway: a native build is several times faster.
    console.error(sourceBuildAdvice(process.platform, process.arch));
    console.log(
      'margin-softmax: the source build failed; the library will run on its WebAssembly backend ' +
        '(one thread, several times slower than the native CPU backend; deviceInfo().cpu.reason says why the addon did not load)',
    );
    return 0;
  }
  return reportFailure(status);
}

function reportFailure(status) {
  if (status !== 0) console.error(sourceBuildAdvice(process.platform, process.arch));
  return status;
}

if (require.main === module) process.exitCode = main();

module.exports = { buildFromSourceRequested, cpuOnlyRequested, sourceBuildAdvice };
