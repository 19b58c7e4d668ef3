/** Whether this machine can run the separate-hosts jobs of test/hosts/netns-mpirun.sh (shared by the MPI suites). */
import { spawnSync } from 'node:child_process';

/** null when network namespaces can be made here, else why not. */
export function whyNotHosts(): string | null {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  // Creating one tells whether this machine (a container, say) allows network namespaces.
  const probe = `ms${process.pid}xprobe`;
  const made = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (made.status !== 0) return `cannot create a network namespace (ip netns add: ${(made.stderr || made.error?.message || '').trim()})`;
  spawnSync('ip', ['netns', 'delete', probe]);
  return null;
}
