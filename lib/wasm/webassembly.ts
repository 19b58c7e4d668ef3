/**
 * The part of the WebAssembly JavaScript API the loader uses, typed here: the
 * library compiles without the DOM typings (tsconfig's lib is ES2022 only),
 * and its published declarations must not require them.
 */

/** A compiled module (WebAssembly.Module). */
export interface WasmModuleObject {
  readonly [Symbol.toStringTag]?: string;
}
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
}
type Imports = Record<string, Record<string, unknown>>;
export interface WasmInstanceObject {
  readonly exports: Record<string, unknown>;
}

interface WebAssemblyApi {
  Module: {
    new (bytes: ArrayBufferView | ArrayBuffer): WasmModuleObject;
    imports(m: WasmModuleObject): { module: string; name: string; kind: string }[];
  };
  Instance: new (m: WasmModuleObject, imports: Imports) => WasmInstanceObject;
  compile(bytes: ArrayBufferView | ArrayBuffer): Promise<WasmModuleObject>;
  RuntimeError: new (...args: unknown[]) => Error;
}

/** globalThis.WebAssembly (present in Node ≥ 8 and every current browser). */
export const WA = (globalThis as unknown as { WebAssembly: WebAssemblyApi }).WebAssembly;
export type { Imports as WasmImports };
