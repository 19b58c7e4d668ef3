/**
 * Finding, compiling and instantiating the WebAssembly module
 * (wasm/margin_softmax.wasm, built by scripts/build-wasm.sh).
 *
 * Node: the file ships in the package (`wasm/` beside `dist/`) and is read
 * and compiled synchronously on first use, so the synchronous API works
 * without an init call. Browser: compiling on the main thread must be
 * asynchronous, so call {@link initWasm} once (with the URL the file is
 * served from, or a compiled WebAssembly.Module) before the first call.
 */
import { BackendUnavailableError } from '../errors';
import { ABI_CODE } from './abi';
import { WasmAbort, wasmImports } from './imports';
import { WA, type WasmMemory, type WasmModuleObject } from './webassembly';

/** The module's exports (native/wasm/*.cc). Pointers are byte offsets, returned as signed i32. */
export interface WasmExports {
  memory: WasmMemory;
  _initialize(): void;
  ms_wasm_abi(): number;
  ms_wasm_alloc(bytes: number): number;
  ms_wasm_free(ptr: number): void;
  ms_wasm_error(): number;
  ms_wasm_default_scale(): number;
  ms_wasm_default_workspace(): number;
  ms_wasm_loss(args: number): number;
  ms_wasm_topk(args: number): number;
  ms_wasm_gaussian(dst: number, n: number, m: number, sigma: number, seed: number, counter: number, start: number): void;
  ms_wasm_target_logit(kind: number, scale: number, m1: number, m2: number, m3: number, fallback: number, cos: number, rowMargin: number, dz: number): number;
}

/** Where the module comes from: a URL or path, its bytes, or an already compiled module. */
export interface WasmSource {
  /** Where the file is served from (browser), or its path (Node); default: the packaged file (Node), 'margin_softmax.wasm' beside the page (browser). */
  url?: string;
  bytes?: ArrayBuffer | Uint8Array;
  module?: WasmModuleObject;
}

let compiled: WasmModuleObject | undefined;
let instance: WasmExports | undefined;
/** Why the module could not be loaded (for backends() and deviceInfo()). */
let loadError: string | undefined;

declare const module: { require?: (id: string) => unknown } | undefined;
/**
 * A Node built-in module (fs, path) where this runs in Node; undefined in a
 * browser. Not a static import or require, so bundlers leave fs and path out.
 */
function nodeRequire<T>(id: string): T | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  if (typeof proc?.getBuiltinModule === 'function') return proc.getBuiltinModule(id) as T;
  return typeof module !== 'undefined' && typeof module?.require === 'function' ? (module.require(id) as T) : undefined;
}

/** The file's path in this package (Node). */
export function defaultWasmPath(): string | undefined {
  const path = nodeRequire<typeof import('path')>('path');
  return path ? path.join(__dirname, '..', '..', 'wasm', 'margin_softmax.wasm') : undefined;
}

function instantiate(mod: WasmModuleObject): WasmExports {
  const exports = new WA.Instance(mod, wasmImports()).exports as unknown as WasmExports;
  if (typeof exports.ms_wasm_abi !== 'function' || typeof exports._initialize !== 'function') {
    throw new BackendUnavailableError('Expected the margin-softmax WebAssembly module but received a module without its exports (ms_wasm_abi)');
  }
  exports._initialize();
  const abi = exports.ms_wasm_abi();
  if (abi !== ABI_CODE) {
    throw new BackendUnavailableError(`Expected the WebAssembly module's ABI ${ABI_CODE} for wasm/margin_softmax.wasm but received ${abi}: rebuild it (scripts/build-wasm.sh)`);
  }
  return exports;
}

/**
 * Compiles and instantiates the module from `source` (browser: call once,
 * before the first wasm call; Node: optional, the packaged file is used by default).
 */
export async function initWasm(source: WasmSource = {}): Promise<void> {
  const where = source.module ? 'the module given' : source.bytes ? 'the bytes given' : String(source.url ?? defaultWasmPath() ?? 'margin_softmax.wasm');
  let mod: WasmModuleObject;
  let inst: WasmExports;
  try {
    mod = source.module ?? (source.bytes ? await WA.compile(source.bytes) : await compileFrom(where));
    inst = instantiate(mod);
  } catch (err) {
    if (err instanceof BackendUnavailableError) throw err;
    throw new BackendUnavailableError(`Expected the margin-softmax WebAssembly module from ${where} but it could not be loaded (${(err as Error).message.split('\n')[0]})`);
  }
  instance = inst;
  compiled = mod;
  loadError = undefined;
}

/** Reads (Node, a path) or fetches (a URL) and compiles the module. */
async function compileFrom(url: string): Promise<WasmModuleObject> {
  const fs = nodeRequire<typeof import('fs')>('fs');
  if (fs && !/^(https?|blob|data|file):/.test(url)) return WA.compile(fs.readFileSync(url));
  const res = await fetch(url);
  if (!res.ok) throw new Error(`the server answered ${res.status}`);
  return WA.compile(await res.arrayBuffer());
}

/** Loads the packaged file synchronously (Node only); records why it could not. */
function loadSync(): WasmExports {
  const fs = nodeRequire<typeof import('fs')>('fs');
  const file = defaultWasmPath();
  if (!fs || !file) {
    throw new BackendUnavailableError("Expected initWasm() to have been awaited before the first call of the 'wasm' backend outside Node (the module must be compiled asynchronously there)");
  }
  try {
    compiled = new WA.Module(fs.readFileSync(file));
    return instantiate(compiled);
  } catch (err) {
    if (err instanceof BackendUnavailableError) throw err;
    throw new BackendUnavailableError(`Expected the WebAssembly module at ${file} for the 'wasm' backend but it could not be loaded (${(err as Error).message.split('\n')[0]})`);
  }
}

/** The instance, loaded on first use. */
export function wasm(): WasmExports {
  if (instance) return instance;
  try {
    instance = compiled ? instantiate(compiled) : loadSync();
    loadError = undefined;
    return instance;
  } catch (err) {
    loadError = (err as Error).message;
    throw err;
  }
}

/** Whether the module is (or can be) loaded; the reason where not. */
export function wasmStatus(): { usable: boolean; reason?: string } {
  try {
    wasm();
    return { usable: true };
  } catch {
    return { usable: false, reason: loadError };
  }
}

/**
 * Runs fn on the instance; an abort inside the module (a trap, proc_exit)
 * leaves the instance in an unknown state, so it is dropped and the next call
 * starts a fresh one (the arrays of a wasm MarginHead live in the old one's
 * memory: the head reports it, see lib/wasm/centres.ts).
 */
export function withInstance<T>(fn: (w: WasmExports) => T): T {
  const w = wasm();
  try {
    return fn(w);
  } catch (err) {
    if (err instanceof WasmAbort || err instanceof WA.RuntimeError) {
      instance = undefined;
      generation++;
    }
    throw err;
  }
}

let generation = 0;
/** Incremented each time an instance is dropped: memory pointers from an older generation are dangling. */
export function wasmGeneration(): number {
  return generation;
}
