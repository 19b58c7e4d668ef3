/**
 * The module's imports. It is built with -sSTANDALONE_WASM and no JavaScript
 * glue (scripts/build-wasm.sh), so it imports only these two functions:
 * proc_exit (reached by abort(), i.e. never on a correct call: the C++ code
 * reports every failure as a status) and the memory-growth notification,
 * which needs nothing here because every view of the memory is made fresh
 * from memory.buffer when it is used (lib/wasm/memory.ts).
 */
import type { WasmImports } from './webassembly';

/** Thrown by proc_exit: the instance is unusable afterwards and is replaced on the next call. */
export class WasmAbort extends Error {
  constructor(readonly exitCode: number) {
    super(`the WebAssembly module aborted (exit code ${exitCode})`);
    this.name = 'WasmAbort';
  }
}

export function wasmImports(): WasmImports {
  return {
    env: {
      emscripten_notify_memory_growth: () => {},
    },
    wasi_snapshot_preview1: {
      proc_exit: (code: number) => {
        throw new WasmAbort(code);
      },
    },
  };
}
