// A state scope: the host, or one named network namespace. Bundles the runner, the state directory of the scope
// and the logger every command in src/netfilter works with, and runs a command under the scope's lock.
import { createRequire } from 'node:module';
import type { Logger } from '../../log.js';
import { silentLogger } from '../../log.js';
import { ensureStateDir, scopeDir } from './ledger.js';
import { acquireStateLock, type LockOwner } from './lock.js';
import { assertNetnsExists } from '../../values/netns.js';
import { createRunner, type NetfilterRunner } from '../drivers/runner.js';

export const DEFAULT_STATE_DIR = '/var/lib/meshctl';

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

let version: string | undefined;

/** meshctl's own version (package.json), recorded in the ledger. */
export function toolVersion(): string {
  if (version === undefined) {
    try {
      // Same relative path from src/netfilter/transaction (vitest) and dist/netfilter/transaction (the built CLI).
      version = (createRequire(import.meta.url)('../../../package.json') as { version?: string }).version ?? 'unknown';
    } catch {
      version = 'unknown';
    }
  }
  return version;
}
