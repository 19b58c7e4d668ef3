/**
 * The two builds compile the same CPU sources: binding.gyp (node-gyp, CPU only,
 * no MPI) lists by hand what CMakeLists.txt's MS_CPU_SOURCES lists, plus the
 * stubs a CPU-only, MPI-less build links (CMake adds those under conditions).
 * A source file added to one list and not the other fails here, not at a
 * user's `npm install --build-from-source`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { expect, test } from 'vitest';

const ROOT = path.join(__dirname, '..');
const read = (f: string) => fs.readFileSync(path.join(ROOT, f), 'utf8');
/** The stubs node-gyp always links; CMake links each only when its real counterpart is off. */
const GYP_ONLY_STUBS = ['native/cuda/cuda_stub.cc', 'native/comm/mpi_stub.cc'];
/** The N-API glue of the device head: CMake compiles it with the CUDA backend only (MS_CUDA_ADDON_SOURCES). */
const CUDA_ONLY_BINDINGS = ['native/napi/device_head.cc'];

function cmakeCpuSources(): string[] {
  const m = /set\(MS_CPU_SOURCES\s+([^)]*)\)/.exec(read('CMakeLists.txt'));
  if (!m) throw new Error('CMakeLists.txt has no set(MS_CPU_SOURCES …)');
  return m[1].split(/\s+/).filter(Boolean);
}

function gypSources(): string[] {
  // binding.gyp is JSON with comments allowed; its source list is a plain string array.
  const m = /"sources":\s*\[([^\]]*)\]/.exec(read('binding.gyp'));
  if (!m) throw new Error('binding.gyp has no "sources" list');
  return [...m[1].matchAll(/"([^"]+)"/g)].map((x) => x[1]);
}

test('binding.gyp compiles exactly CMake’s CPU sources plus the stubs', () => {
  expect([...gypSources()].sort()).toEqual([...cmakeCpuSources(), ...GYP_ONLY_STUBS].sort());
});

const ccFiles = (dir: string) => fs.readdirSync(path.join(ROOT, dir)).filter((f) => f.endsWith('.cc')).map((f) => `${dir}/${f}`);

test('every C++ file of native/cpu is in the CPU source list', () => {
  expect(ccFiles('native/cpu').filter((f) => !cmakeCpuSources().includes(f))).toEqual([]);
});

test('every binding of native/napi is in the CPU source list, or CMake compiles it with CUDA', () => {
  expect(ccFiles('native/napi').filter((f) => !cmakeCpuSources().includes(f))).toEqual(CUDA_ONLY_BINDINGS);
  const cmake = read('CMakeLists.txt');
  for (const f of CUDA_ONLY_BINDINGS) expect(cmake).toMatch(new RegExp(`set\\(MS_CUDA_ADDON_SOURCES [^)]*${f}`));
});

test('the stubs exist and CMake knows them', () => {
  const cmake = read('CMakeLists.txt');
  for (const f of GYP_ONLY_STUBS) {
    expect(fs.existsSync(path.join(ROOT, f))).toBe(true);
    expect(cmake.includes(f)).toBe(true);
  }
});

/** The files of a `set(NAME …)` list in CMakeLists.txt. */
function cmakeList(name: string): string[] {
  const m = new RegExp(`set\\(${name}\\s+([^)]*)\\)`).exec(read('CMakeLists.txt'));
  if (!m) throw new Error(`CMakeLists.txt has no set(${name} …)`);
  return m[1].split(/\s+/).filter((f) => f && !f.startsWith('#'));
}

const filesOf = (dir: string, ext: string) =>
  fs.readdirSync(path.join(ROOT, dir)).filter((f) => f.endsWith(ext)).map((f) => `${dir}/${f}`);
const definesMain = (f: string) => /^int main\s*\(/m.test(read(f));

test('CMake’s CUDA source list is exactly the .cu files of native/cuda, none of them a program', () => {
  expect([...cmakeList('MS_CUDA_SOURCES')].sort()).toEqual(filesOf('native/cuda', '.cu').sort());
  expect(filesOf('native/cuda', '.cu').filter(definesMain)).toEqual([]);
});

test('each program of native/tools defines main and has a CMake target of its own', () => {
  const tools = filesOf('native/tools', '.cu');
  expect(tools.length).toBeGreaterThan(0);
  const cmake = read('CMakeLists.txt');
  for (const f of tools) {
    expect(definesMain(f)).toBe(true);
    expect(cmake).toMatch(new RegExp(`add_executable\\(\\w+ EXCLUDE_FROM_ALL ${f.replace(/\./g, '\\.')} `));
  }
});
