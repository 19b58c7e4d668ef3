/**
 * The AMX path (native/cpu/amx_gemm.inc) on machines without AMX: test/native/amx_emu.cc
 * compiles the kernel against an emulation of the tile intrinsics and checks it against a
 * plain product (edges in every dimension, accumulate on and off). Where the CPU does have
 * AMX, test/bf16-cpu.test.ts runs the real thing through the loss as well.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';

const SRC = path.join(__dirname, 'native', 'amx_emu.cc');

function findCompiler(): string | null {
  for (const cxx of [process.env.CXX, 'c++', 'g++', 'clang++']) {
    if (!cxx) continue;
    try {
      execFileSync(cxx, ['--version'], { stdio: 'ignore' });
      return cxx;
    } catch {
      // try the next one
    }
  }
  return null;
}

const cxx = findCompiler();

describe.skipIf(!cxx)(`AMX kernel under emulation${cxx ? '' : ' (skipped: no C++ compiler on PATH)'}`, () => {
  test('TDPBF16PS blocks, tile strides and edges match a plain product', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ms-amx-emu-'));
    const bin = path.join(dir, 'amx_emu');
    const base = ['-std=c++17', '-O1', '-g', '-Wall', '-o', bin, SRC];
    // With AddressSanitizer and UBSan where the toolchain has them: a tile row read or
    // written outside its operand is then an error, not a silent wrong value.
    let built = spawnSync(cxx!, ['-fsanitize=address,undefined', ...base], { encoding: 'utf8' });
    if (built.status !== 0) built = spawnSync(cxx!, base, { encoding: 'utf8' });
    expect(built.status, built.stderr).toBe(0);
    const run = spawnSync(bin, [], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0' } });
    fs.rmSync(dir, { recursive: true, force: true });
    expect(run.status, `${run.stdout}\n${run.stderr}`).toBe(0);
    expect(run.stdout).toMatch(/all ok/);
    expect(run.stdout).not.toMatch(/FAIL/);
  }, 120_000);
});
