/** The wasm suites' calls: the public loss functions with backend 'wasm'. */
import { forward, lossAndGrad } from '../lib/index';
import type { LossAndGradResult, LossInput, LossOptions } from '../lib/types';

/** lossAndGrad (or, withGrad false, forward) on the wasm backend. */
export function wasmRun(input: LossInput, options: LossOptions, withGrad = true): Partial<LossAndGradResult> & ReturnType<typeof forward> {
  const opts: LossOptions = { ...options, backend: 'wasm' };
  const r = withGrad ? lossAndGrad(input, opts) : forward(input, opts);
  if (r.backend !== 'wasm') throw new Error(`expected the wasm backend to run, got ${r.backend}`);
  return r;
}
