#!/usr/bin/env node
/**
 * margin-softmax command line (the package's bin): train, eval, compare,
 * bench, figures, embed, verify, identify.
 *   margin-softmax train [--data DIR] [--out runs/NAME] [--margin adaptive --m1 0.03 --m2 0.5] …
 *   margin-softmax eval --checkpoint runs/NAME [--data DIR]
 *   margin-softmax compare [--data DIR]… [--losses softmax,arcface,…] [--seeds 0,1,2]
 *   margin-softmax bench [args for bench/run.mjs]
 * The commands live in ./commands (dispatch: ./commands/main).
 */
import { main, report } from './commands/main';

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.exitCode = report(err);
    },
  );
}

export { main, report };
