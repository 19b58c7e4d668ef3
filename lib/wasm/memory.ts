/**
 * The module's linear memory: allocations, and copies between JavaScript's
 * typed arrays and the memory. wasm32 addresses at most 4 GiB, which is
 * therefore the most one call (its inputs, outputs and workspace) can use;
 * {@link WASM_MEMORY_LIMIT} states it and lib/wasm/loss.ts refuses a call
 * that cannot fit before it allocates anything.
 *
 * Views are always made from memory.buffer at the moment of use: an
 * allocation may grow the memory, which replaces the buffer (views made
 * before it would be detached).
 */
import { NativeError } from '../errors';
import type { WasmExports } from './module';

/** Bytes the module's memory can grow to: wasm32's 4 GiB address space. */
export const WASM_MEMORY_LIMIT = 2 ** 32;

/** One allocation in the module's memory: offset and byte length. */
export interface WasmBlock {
  ptr: number;
  bytes: number;
}

/** Allocates `bytes` zeroed bytes (16-aligned); throws a NativeError where the memory cannot grow that far. */
export function alloc(w: WasmExports, bytes: number, what: string): WasmBlock {
  const ptr = w.ms_wasm_alloc(bytes) >>> 0;
  if (ptr === 0) {
    throw new NativeError(
      `Out of memory: could not allocate ${bytes} bytes for ${what} in the WebAssembly module's memory ` +
        `(${(w.memory.buffer.byteLength / 2 ** 20).toFixed(0)} MiB now, at most ${WASM_MEMORY_LIMIT / 2 ** 30} GiB)`,
    );
  }
  return { ptr, bytes };
}

/** Frees every block of a call (in reverse order of allocation). */
export function freeAll(w: WasmExports, blocks: WasmBlock[]): void {
  for (let i = blocks.length - 1; i >= 0; i--) w.ms_wasm_free(blocks[i].ptr);
  blocks.length = 0;
}

type View = Float32Array | Int32Array | Uint16Array | Float64Array;
type ViewCtor<T extends View> = { new (buffer: ArrayBufferLike, byteOffset: number, length: number): T; BYTES_PER_ELEMENT: number };

/** A view of n elements at ptr (valid until the next allocation). */
export function view<T extends View>(w: WasmExports, Ctor: ViewCtor<T>, ptr: number, n: number): T {
  return new Ctor(w.memory.buffer, ptr, n);
}

/** Allocates a block for `src` and copies it in. */
export function copyIn(w: WasmExports, src: Float32Array | Int32Array | Uint16Array, what: string, blocks: WasmBlock[]): number {
  const b = alloc(w, src.byteLength, what);
  blocks.push(b);
  new Uint8Array(w.memory.buffer, b.ptr, src.byteLength).set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
  return b.ptr;
}

/** Allocates a zeroed block of n elements of Ctor's type. */
export function allocArray(w: WasmExports, Ctor: { BYTES_PER_ELEMENT: number }, n: number, what: string, blocks: WasmBlock[]): number {
  const b = alloc(w, n * Ctor.BYTES_PER_ELEMENT, what);
  blocks.push(b);
  return b.ptr;
}

/** Copies n floats at ptr into `into` (or a new Float32Array). */
export function copyOutF32(w: WasmExports, ptr: number, n: number, into?: Float32Array): Float32Array {
  const out = into ?? new Float32Array(n);
  out.set(view(w, Float32Array, ptr, n));
  return out;
}

/** The NUL-terminated UTF-8 string at ptr. */
export function readString(w: WasmExports, ptr: number): string {
  const bytes = new Uint8Array(w.memory.buffer, ptr >>> 0);
  let end = 0;
  while (bytes[end] !== 0) end++;
  return new TextDecoder().decode(bytes.slice(0, end));
}
