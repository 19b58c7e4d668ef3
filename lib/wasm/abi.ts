/**
 * The calling convention of the WebAssembly module (native/wasm/wasm_abi.h):
 * each operation takes one array of doubles in the module's memory, one slot
 * per argument. The slot numbers below are the header's; the module reports
 * its own (ms_wasm_abi) and the loader refuses a module that disagrees.
 */

/** ms_wasm_loss's slots, in the header's order. */
export const LOSS_SLOTS = [
  'x', 'w', 'wBf16', 'labels', 'rowMargins', 'classIndex', 'n', 'c', 'd',
  'kind', 'scale', 'm1', 'm2', 'm3', 'fallback', 'gradFilter', 'weightsBf16', 'workspaceBytes', 'withGrad',
  'perSample', 'targetCos', 'gradX', 'gradW',
  'sgdOn', 'sgdLr', 'sgdMomentum', 'sgdWeightDecay', 'sgdBuf', 'sgdRoundSeed', 'sgdRoundStep',
  'rowMax', 'rowSumExp', 'rowSumExpOther', 'rowTarget',
  'outLoss', 'outValidRows', 'outSkipped', 'outTotal',
] as const;
export type LossSlot = (typeof LOSS_SLOTS)[number];

/** ms_wasm_topk's slots. */
export const TOPK_SLOTS = ['x', 'w', 'wBf16', 'n', 'c', 'd', 'k', 'classes', 'scores'] as const;
export type TopkSlot = (typeof TOPK_SLOTS)[number];

/** kAbiVersion of the header. */
export const ABI_VERSION = 1;
/** What ms_wasm_abi() returns for this layout. */
export const ABI_CODE = ABI_VERSION * 10000 + LOSS_SLOTS.length * 100 + TOPK_SLOTS.length;

/** The module's status codes (wasm_abi.h's Status). */
export const STATUS = { ok: 0, inputError: 1, outOfMemory: 2, internal: 3 } as const;

/** The index of each slot name. */
export function slotIndex<S extends string>(slots: readonly S[]): Record<S, number> {
  return Object.fromEntries(slots.map((s, i) => [s, i])) as Record<S, number>;
}
