import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native work and float64 references on a 2-core machine: be generous.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The addon is loaded with require(): run each file in its own process.
    pool: 'forks',
    // global.gc() for the memory-leak checks.
    poolOptions: { forks: { execArgv: ['--expose-gc'] } },
  },
});
