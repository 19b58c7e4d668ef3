/**
 * Ctrl-C during training: the first stops the run after the batch in flight
 * (the last checkpoint is kept, --resume continues it), a second exits at
 * once. Installed only when the caller asks (hooks.handleSignals: the CLI).
 */
import type { RunState } from './state';

/** Runs `body` with the SIGINT handler installed (when hooks.handleSignals), removed afterwards. */
export async function withCtrlC(run: RunState, body: () => Promise<void>): Promise<void> {
  const onSigint = stopOnCtrlC(run);
  const { handleSignals } = run.ctx.hooks;
  if (handleSignals) process.on('SIGINT', onSigint);
  try {
    await body();
  } finally {
    if (handleSignals) process.removeListener('SIGINT', onSigint);
  }
}

function stopOnCtrlC(run: RunState): () => void {
  return () => {
    if (run.progress.stopRequested) {
      process.stderr.write('\nSecond Ctrl-C: exiting now (the last checkpoint is intact).\n');
      process.exit(130);
    }
    run.progress.stopRequested = true;
    process.stderr.write('\nCtrl-C: stopping after this batch; the last checkpoint is kept (Ctrl-C again to exit at once).\n');
  };
}
