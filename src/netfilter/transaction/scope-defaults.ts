// The state scope's defaults (./scope.ts re-exports them), in a module of their own so that commands which only
// name them (every command's --version and --state-dir help, the proxy) do not load the scope's runner and lock.
import { createRequire } from 'node:module';

export const DEFAULT_STATE_DIR = '/var/lib/meshctl';

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
