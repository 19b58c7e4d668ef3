/** The wasm suites' calls: the public loss functions with backend 'wasm'; whether the module is built. */
import { test } from 'vitest';
import { forward, lossAndGrad } from '../lib/index';
import type { LossAndGradResult, LossInput, LossOptions } from '../lib/types';
import { wasmStatus } from '../lib/wasm/index';

/**
 * Whether wasm/margin_softmax.wasm is built (scripts/build-wasm.sh, which needs
 * Emscripten). Without it the wasm suites are skipped, except where
 * MARGIN_SOFTMAX_REQUIRE_WASM=1 (CI) makes a missing module a failure.
 */
export const WASM_BUILT = wasmStatus().usable;
if (!WASM_BUILT && process.env.MARGIN_SOFTMAX_REQUIRE_WASM === '1') {
  test('the wasm module is built (MARGIN_SOFTMAX_REQUIRE_WASM=1)', () => {
    throw new Error(`wasm/margin_softmax.wasm does not load: ${wasmStatus().reason}`);
  });
}

/** lossAndGrad (or, withGrad false, forward) on the wasm backend. */
export function wasmRun(input: LossInput, options: LossOptions, withGrad = true): Partial<LossAndGradResult> & ReturnType<typeof forward> {
  const opts: LossOptions = { ...options, backend: 'wasm' };
  const r = withGrad ? lossAndGrad(input, opts) : forward(input, opts);
  if (r.backend !== 'wasm') throw new Error(`expected the wasm backend to run, got ${r.backend}`);
  return r;
}
