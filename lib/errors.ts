/**
 * Errors thrown by margin-softmax. Every argument problem is an
 * {@link ArgumentError} whose message reads "Expected X for Y but received Z".
 */

/** A caller-side mistake: wrong type, length, range, or a non-finite value. */
export class ArgumentError extends TypeError {
  readonly code = 'ERR_MARGIN_SOFTMAX_ARGUMENT';
  constructor(message: string) {
    super(message);
    this.name = 'ArgumentError';
  }
}

/** The requested backend cannot run here (`backend: 'cuda'` without a usable GPU). */
export class BackendUnavailableError extends Error {
  readonly code = 'ERR_MARGIN_SOFTMAX_BACKEND_UNAVAILABLE';
  constructor(message: string) {
    super(message);
    this.name = 'BackendUnavailableError';
  }
}

/** A failure inside the native backend (out of memory, a CUDA error). */
export class NativeError extends Error {
  readonly code = 'ERR_MARGIN_SOFTMAX_NATIVE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NativeError';
  }
}

/** The names of MarginHead's asynchronous calls (one at a time on a head). */
export type HeadAsyncCall = 'stepAsync' | 'predictAsync';

/**
 * A MarginHead call made while an asynchronous call on the same head is still
 * running (`running` names it). A head runs one call at a time: await the
 * running call first. Asynchronous calls reject with it; synchronous ones throw it.
 */
export class HeadBusyError extends Error {
  readonly code = 'ERR_MARGIN_SOFTMAX_HEAD_BUSY';
  constructor(
    readonly call: string,
    readonly running: HeadAsyncCall,
  ) {
    super(`MarginHead.${call}: a ${running}() call is still running on this head (await it first)`);
    this.name = 'HeadBusyError';
  }
}

/** A MarginHead call after dispose(). */
export class HeadDisposedError extends Error {
  readonly code = 'ERR_MARGIN_SOFTMAX_HEAD_DISPOSED';
  constructor(readonly call: string) {
    super(`MarginHead.${call}: the head has been disposed`);
    this.name = 'HeadDisposedError';
  }
}

/** Formats a received value for an error message: its type, and its length for arrays. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor.name;
    const len = (value as unknown as { length?: number }).length;
    return len === undefined ? name : `${name} of length ${len}`;
  }
  if (Array.isArray(value)) return `Array of length ${value.length}`;
  if (typeof value === 'number') return `${value}`;
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'object') return `${(value as object).constructor?.name ?? 'Object'}`;
  return typeof value;
}

/** Throws `Expected ${expected} for ${what} but received ${describe(received)}`. */
export function expected(expectedText: string, what: string, received: unknown, detail?: string): never {
  const got = detail ?? describe(received);
  throw new ArgumentError(`Expected ${expectedText} for ${what} but received ${got}`);
}
