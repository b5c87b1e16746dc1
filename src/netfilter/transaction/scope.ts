// A state scope: the host, or one named network namespace. Bundles the runner, the state directory of the scope
// and the logger every command in src/netfilter works with, and runs a command under the scope's lock.
import type { Logger } from '../../log.js';
import { silentLogger } from '../../log.js';
import { ensureStateDir, scopeDir } from './ledger.js';
import { acquireStateLock, type LockOwner } from './lock.js';
import { assertNetnsExists } from '../../values/netns.js';
import { createRunner, type NetfilterRunner } from '../drivers/runner.js';
import { DEFAULT_STATE_DIR } from './scope-defaults.js';

export { DEFAULT_STATE_DIR, toolVersion } from './scope-defaults.js';

export interface ScopeOptions {
  /** State directory root (config `stateDir`, flag --state-dir); default /var/lib/meshctl. */
  readonly stateDir?: string;
  readonly netns?: string | null;
  /** Inject a runner (tests); by default one is created for `netns`. */
  readonly runner?: NetfilterRunner;
  /** Environment for commands (PATH with fault-injecting wrappers in tests). */
  readonly env?: NodeJS.ProcessEnv;
  readonly log?: Logger;
}

export interface Scope {
  readonly stateDir: string;
  readonly netns: string | null;
  /** The directory with this scope's ledger, lock and revert log. */
  readonly dir: string;
  readonly runner: NetfilterRunner;
  readonly env: NodeJS.ProcessEnv;
  readonly log: Logger;
}

/** Resolves the scope. Throws NETNS_NOT_FOUND for a namespace that does not exist. */
export function openScope(options: ScopeOptions): Scope {
  const stateDir = options.stateDir ?? DEFAULT_STATE_DIR;
  const netns = options.netns ?? null;
  if (netns !== null) assertNetnsExists(netns);
  const env = options.env ?? process.env;
  const log = (options.log ?? silentLogger).child({ netns });
  const runner = options.runner ?? createRunner({ netns, env, log });
  return { stateDir, netns, dir: scopeDir(stateDir, netns), runner, env, log };
}

/** Runs `fn` holding the scope's state lock (creating the state directory, mode 0700). Throws LOCKED. */
export async function withScopeLock<T>(scope: Scope, command: string, fn: () => Promise<T>): Promise<T> {
  ensureStateDir(scope.dir, scope.stateDir);
  const lock = await acquireStateLock(scope.dir, command);
  if (lock.takenOverFrom) warnTakenOver(scope.log, lock.takenOverFrom);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

function warnTakenOver(log: Logger, owner: LockOwner): void {
  log.warn({ owner }, `took over the state lock of pid ${owner.pid} (\`${owner.command}\`), which is gone`);
}
