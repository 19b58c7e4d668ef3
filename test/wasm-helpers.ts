/**
 * The wasm backend's loss called with the library's own validation
 * (lib/validate.ts) and option resolution, for the wasm suites.
 */
import { MARGIN_KINDS, nativeMarginParams } from '../lib/margins';
import type { NativeLossOptions, NativeLossResult } from '../lib/native';
import type { LossInput, LossOptions, Margin } from '../lib/types';
import { validateInput, validateOptions, validateOut } from '../lib/validate';
import { wasmDefaults, wasmGaussian, wasmLoss } from '../lib/wasm/loss';

export function wasmMargins(margin: Margin, n: number): Float32Array | undefined {
  if (!MARGIN_KINDS[margin.kind].rowMargins) return undefined;
  const m = margin as Extract<Margin, { seed: number }>;
  return wasmGaussian(m.m, m.sigma, m.seed, m.counter ?? 0, n);
}

export function wasmRun(input: LossInput, options: LossOptions, withGrad = true): NativeLossResult & { margins?: Float32Array } {
  validateOptions(options);
  const shape = validateInput(input);
  validateOut(options, shape);
  const defaults = wasmDefaults();
  const margins = wasmMargins(options.margin, shape.n);
  const opts: NativeLossOptions = {
    ...nativeMarginParams(options.margin),
    scale: options.scale ?? defaults.scale,
    fallback: options.fallback ?? true,
    rowMargins: margins,
    gradFilter: options.gradFilter ?? 0,
    weightsBf16: options.weightsDtype === 'bfloat16',
    threads: 1,
    workspaceBytes: options.workspaceBytes ?? defaults.workspaceBytes,
    simd: -1,
    matrix: 0,
    backend: 'cpu',
    outPerSample: options.out?.perSample,
    outGradEmbeddings: options.out?.gradEmbeddings,
    outGradWeights: options.out?.gradWeights,
  };
  const r = wasmLoss(input.embeddings, input.weights, input.labels, input.dim, opts, withGrad);
  return margins ? { ...r, margins } : r;
}
