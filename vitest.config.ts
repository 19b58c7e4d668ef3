import * as path from 'path';
import { defineConfig } from 'vitest/config';

const lib = (file: string) => path.resolve(__dirname, 'lib', file);

export default defineConfig({
  resolve: {
    // The training package imports the library by name: test it against the
    // library's sources (as tsconfig.test.json type-checks it), not a build.
    alias: [
      { find: /^margin-softmax$/, replacement: lib('index.ts') },
      { find: /^margin-softmax\/tfjs$/, replacement: lib('tfjs.ts') },
    ],
  },
  test: {
    include: ['test/**/*.test.ts', 'train/test/**/*.test.ts'],
    // Native work and float64 references on a 2-core machine: be generous.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The addon is loaded with require(): run each file in its own process.
    pool: 'forks',
    // global.gc() for the memory-leak checks.
    poolOptions: { forks: { execArgv: ['--expose-gc'] } },
  },
});
