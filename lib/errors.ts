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
