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
  // Under mpirun, Ctrl-C reaches the ranks as SIGTERM (after mpirun's
  // odls_base_sigkill_timeout), and `kill -USR1 <mpirun>` as SIGUSR1 at once.
  const signals: NodeJS.Signals[] = run.ctx.comm ? ['SIGINT', 'SIGTERM', 'SIGUSR1'] : ['SIGINT'];
  if (handleSignals) for (const sig of signals) process.on(sig, onSigint);
  try {
    await body();
  } finally {
    if (handleSignals) for (const sig of signals) process.removeListener(sig, onSigint);
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
