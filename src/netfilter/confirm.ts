// `meshctl confirm` as a library call: keeps an install made with --confirm-within by disarming its revert (revert.ts).
import { MeshctlError } from '../errors.js';
import type { Ledger, RevertFailure } from './transaction/ledger.js';
import { readLedger, writeLedger } from './transaction/ledger.js';
import { disarmRevert, revertLogPath } from './transaction/revert.js';
import type { Scope } from './transaction/scope.js';
import { withScopeLock } from './transaction/scope.js';
import { recoverInterrupted, type Recovery } from './transaction/recovery.js';

export interface ConfirmResult {
  readonly action: 'confirmed' | 'already-confirmed' | 'nothing-armed';
  readonly installId: string;
  readonly deadline: string | null;
  readonly recovered: Recovery | null;
  /** Set when the reverter had given up before this confirm (capture stayed installed; confirming keeps it). */
  readonly revertFailed: RevertFailure | null;
}

/** Disarms the pending revert of the installed capture. Throws NOT_INSTALLED (too late, or never installed). */
export async function confirmInstall(scope: Scope): Promise<ConfirmResult> {
  return withScopeLock(scope, 'confirm', async () => {
    const recovered = await recoverInterrupted(scope);
    const ledger = readLedger(scope.dir);
    if (ledger === null) {
      throw new MeshctlError(
        'NOT_INSTALLED',
        `nothing is installed${scope.netns ? ` in namespace ${scope.netns}` : ''}, so there is nothing to confirm`,
        `if you used --confirm-within, the deadline may have passed and the rules were reverted: see ${revertLogPath(scope.dir)}; install again`,
      );
    }
    if (ledger.confirm === null)
      return { action: 'nothing-armed', installId: ledger.installId, deadline: null, recovered, revertFailed: null };
    const revertFailed = ledger.confirm.revertFailed ?? null;
    if (ledger.confirm.confirmedAt !== null)
      return {
        action: 'already-confirmed',
        installId: ledger.installId,
        deadline: ledger.confirm.deadline,
        recovered,
        revertFailed,
      };
    disarmRevert(ledger.confirm, scope.log);
    const next: Ledger = {
      ...ledger,
      updatedAt: new Date().toISOString(),
      confirm: { ...ledger.confirm, confirmedAt: new Date().toISOString() },
    };
    writeLedger(scope.dir, next);
    scope.log.info({ installId: ledger.installId }, 'install confirmed; revert disarmed');
    return {
      action: 'confirmed',
      installId: ledger.installId,
      deadline: ledger.confirm.deadline,
      recovered,
      revertFailed,
    };
  });
}
