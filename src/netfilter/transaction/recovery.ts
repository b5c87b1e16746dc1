// Finishing an interrupted transaction. A ledger left `in-progress` (meshctl was killed, the host lost power) is
// resolved by the next command before it does anything else: an install or update is rolled back to the previous
// generation (or to nothing), an uninstall is completed. Both directions are idempotent, so a crash during the
// recovery itself is recovered the same way next time.
import { MeshctlError } from '../../errors.js';
import { createDriver } from '../drivers/create-driver.js';
import { type TransitionTarget } from '../drivers/driver.js';
import { readLedger, removeLedger, writeLedger, type Ledger } from './ledger.js';
import { NO_EXTRAS, reconcileExtras } from '../drivers/routes.js';
import type { Scope } from './scope.js';
import { disarmRevert } from './revert.js';

export interface Recovery {
  readonly installId: string;
  readonly operation: Ledger['operation'];
  /** `rolled-back`: the interrupted install/update was undone; `completed`: the interrupted uninstall was finished. */
  readonly outcome: 'rolled-back' | 'completed';
  readonly backend: Ledger['backend'];
  /** The labels (families) that needed a change. */
  readonly changed: readonly string[];
}

/** Resolves an in-progress ledger, if any. Call with the scope lock held. Throws ROLLBACK_FAILED. */
export async function recoverInterrupted(scope: Scope): Promise<Recovery | null> {
  const ledger = readLedger(scope.dir);
  if (ledger === null || ledger.state === 'installed') return null;
  const log = scope.log.child({ component: 'recovery', installId: ledger.installId });
  log.warn(
    { operation: ledger.operation, since: ledger.updatedAt },
    'found an interrupted transaction; finishing it first',
  );
  const driver = createDriver(ledger.backend, scope.runner, log);
  try {
    const state = await driver.read();
    if (ledger.operation === 'uninstall') {
      const objects = ledger.current.objects ?? driver.owned(state);
      const steps = driver.stepsRemoving(state, objects);
      for (const step of steps) await driver.apply(step);
      await driver.tidy(ledger.snapshot);
      await reconcileExtras(scope.runner, NO_EXTRAS, ledger.current.extras, log);
      if (ledger.confirm && ledger.confirm.confirmedAt === null) disarmRevert(ledger.confirm, log);
      removeLedger(scope.dir);
      log.warn({ families: steps.map((s) => s.label) }, 'completed the interrupted uninstall');
      return {
        installId: ledger.installId,
        operation: ledger.operation,
        outcome: 'completed',
        backend: ledger.backend,
        changed: steps.map((s) => s.label),
      };
    }
    const previous = ledger.previous;
    const target: TransitionTarget = previous?.objects
      ? { kind: 'objects', objects: previous.objects }
      : { kind: 'objects', objects: ledger.before };
    const steps = driver.stepsTo(state, target);
    for (const step of steps) await driver.apply(step);
    await reconcileExtras(scope.runner, previous?.extras ?? NO_EXTRAS, ledger.current.extras, log);
    if (previous) {
      writeLedger(scope.dir, {
        ...ledger,
        state: 'installed',
        operation: 'install',
        current: previous,
        previous: null,
        updatedAt: new Date().toISOString(),
      });
    } else {
      await driver.tidy(ledger.snapshot);
      if (ledger.confirm && ledger.confirm.confirmedAt === null) disarmRevert(ledger.confirm, log);
      removeLedger(scope.dir);
    }
    log.warn(
      { families: steps.map((s) => s.label), to: previous ? 'previous generation' : 'not installed' },
      'rolled back the interrupted transaction',
    );
    return {
      installId: ledger.installId,
      operation: ledger.operation,
      outcome: 'rolled-back',
      backend: ledger.backend,
      changed: steps.map((s) => s.label),
    };
  } catch (error) {
    throw new MeshctlError(
      'ROLLBACK_FAILED',
      `could not finish the interrupted ${ledger.operation} of install ${ledger.installId} (ledger in ${scope.dir})`,
      'run `meshctl status` to see the rules; fix the error below and run any meshctl command again: it retries the recovery',
      {
        cause: error,
        details:
          error instanceof MeshctlError ? [`${error.code}: ${error.message}`, ...error.details] : [String(error)],
      },
    );
  }
}
