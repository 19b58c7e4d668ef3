/** The one place a head's kind of centre storage is chosen (see storage.ts): a new kind is a class and a line here. */
import { HostBf16Centres } from './bf16-centres';
import { DeviceCentres } from './device-centres';
import { HostF32Centres } from './host-centres';
import type { CentresInit, CentresLayout, CentresStorage } from './storage';
import { WasmCentres } from '../wasm/centres';

/** A new storage for `layout`, filled by `init`. */
export function createCentres(layout: CentresLayout, init: CentresInit): CentresStorage {
  if (layout.backend === 'cuda') return DeviceCentres.create(layout, init);
  if (layout.backend === 'wasm') return WasmCentres.create(layout, init);
  if (layout.dtype === 'bfloat16') return HostBf16Centres.create(layout, init);
  return HostF32Centres.create(layout, init);
}
