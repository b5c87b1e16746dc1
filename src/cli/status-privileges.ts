// What `meshctl status` may show a non-root user (kept apart from ./privileges.ts, which every command loads: the
// ledger's module brings node:crypto, which the proxy would otherwise load for nothing).
import { readFileSync } from 'node:fs';
import { MeshctlError } from '../errors.js';
import { ledgerPath, readLedger, scopeDir } from '../netfilter/transaction/ledger.js';
import { effectiveUid } from './privileges.js';

/**
 * For `meshctl status` run by a non-root user: passes when there is no ledger (status then says "not installed",
 * reading nothing else); otherwise throws NOT_ROOT saying what it could read — nothing when the state directory is
 * root's, or the install the ledger records — and that comparing with the kernel's rules needs root.
 */
export function assertUnprivilegedStatus(stateDir: string, netns: string | null): void {
  const uid = effectiveUid();
  if (uid === 0) return;
  const dir = scopeDir(stateDir, netns);
  const path = ledgerPath(dir);
  const hint = `run it with sudo: sudo meshctl status${netns ? ` --netns ${netns}` : ''}`;
  try {
    readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    throw new MeshctlError(
      'NOT_ROOT',
      `meshctl status cannot read the ledger ${path} as uid ${uid} (${code ?? String(error)}): the state directory is root's`,
      hint,
      { cause: error },
    );
  }
  const ledger = readLedger(dir);
  if (ledger === null) return;
  throw new MeshctlError(
    'NOT_ROOT',
    `meshctl status read the ledger ${path} (install ${ledger.installId}, ${ledger.backend}, ${ledger.state === 'in-progress' ? `an interrupted ${ledger.operation} since ${ledger.updatedAt}` : `since ${ledger.createdAt}`}) but cannot read the netfilter rules to compare them as uid ${uid}`,
    hint,
  );
}
