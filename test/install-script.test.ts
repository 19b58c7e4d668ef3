// How a user asks the install step (scripts/install.js) for a source build or
// a CPU-only one: environment variables, or npm's config, which npm hands to
// the script as npm_config_* (`npm install --build-from-source` →
// npm_config_build_from_source=true). scripts/test-package.sh runs the two npm
// forms end to end.
import { describe, expect, it } from 'vitest';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { buildFromSourceRequested, cpuOnlyRequested } = require('../scripts/install.js') as {
  buildFromSourceRequested(env: Record<string, string | undefined>): boolean;
  cpuOnlyRequested(env: Record<string, string | undefined>): boolean;
};

describe('install step: what asks for a source build', () => {
  it('--build-from-source, --build-from-source=margin-softmax, MARGIN_SOFTMAX_BUILD_FROM_SOURCE=1', () => {
    expect(buildFromSourceRequested({ npm_config_build_from_source: 'true' })).toBe(true);
    expect(buildFromSourceRequested({ npm_config_build_from_source: 'margin-softmax' })).toBe(true);
    expect(buildFromSourceRequested({ MARGIN_SOFTMAX_BUILD_FROM_SOURCE: '1' })).toBe(true);
  });
  it('not: nothing set, another package named, or the variables set to 0 / false / empty', () => {
    expect(buildFromSourceRequested({})).toBe(false);
    expect(buildFromSourceRequested({ npm_config_build_from_source: 'sharp' })).toBe(false);
    expect(buildFromSourceRequested({ npm_config_build_from_source: 'false' })).toBe(false);
    expect(buildFromSourceRequested({ MARGIN_SOFTMAX_BUILD_FROM_SOURCE: '0' })).toBe(false);
    expect(buildFromSourceRequested({ MARGIN_SOFTMAX_BUILD_FROM_SOURCE: '' })).toBe(false);
  });
  it('CPU only: --margin-softmax-cpu-only or MARGIN_SOFTMAX_CPU_ONLY=1', () => {
    expect(cpuOnlyRequested({ npm_config_margin_softmax_cpu_only: 'true' })).toBe(true);
    expect(cpuOnlyRequested({ MARGIN_SOFTMAX_CPU_ONLY: '1' })).toBe(true);
    expect(cpuOnlyRequested({ MARGIN_SOFTMAX_CPU_ONLY: 'false' })).toBe(false);
    expect(cpuOnlyRequested({})).toBe(false);
  });
});
