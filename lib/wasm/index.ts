/**
 * The wasm backend: the CPU backend's C++ (native/cpu, native/margin_math.h)
 * compiled to WebAssembly with SIMD128 (scripts/build-wasm.sh), for where the
 * native addon cannot load (no binary for the platform, a failed load) and
 * for the browser. Single-threaded; at most 4 GiB of memory per process.
 *
 *   abi.ts          the slot layout of the module's calls (native/wasm/wasm_abi.h)
 *   webassembly.ts  the WebAssembly API's types (no DOM typings needed)
 *   imports.ts      the module's two imports
 *   module.ts       finding, compiling, instantiating; initWasm for the browser
 *   memory.ts       allocations and copies in the module's memory; the 4 GiB limit
 *   loss.ts         the fused loss (the native addon's contract), draws, defaults
 *   topk.ts         the top-k classes (MarginHead.predict)
 *   centres.ts      MarginHead's centres in the module's memory (lib/head/storage.ts's interface)
 */
import { WASM_MEMORY_LIMIT } from './memory';

export { initWasm, wasmStatus, defaultWasmPath, type WasmSource } from './module';
export type { WasmModuleObject } from './webassembly';
export { wasmLoss, wasmGaussian, wasmDefaults, wasmTargetLogit, lossBytes, checkFits, type WasmResidentCentres } from './loss';
export { WASM_MEMORY_LIMIT } from './memory';

/**
 * The native layer's defaults (kDefaultScale, kDefaultWorkspaceBytes) for a
 * page that imports the library before initWasm() has compiled the module
 * (lib/loss.ts reads them from the addon or the module where either loads;
 * test/wasm-backend.test.ts checks that all three agree).
 */
export const PACKAGED_DEFAULTS = { scale: 64, workspaceBytes: 128 * 2 ** 20 } as const;

/** What deviceInfo().wasm reports besides whether the module loads. */
export const WASM_INFO = { threads: 1, simd: 'simd128', memoryLimitBytes: WASM_MEMORY_LIMIT } as const;
export { wasmTopk } from './topk';
