// The transaction: check every step (iptables-restore --test / nft -c), apply them one family at a time, read the
// kernel back and verify; on any failure put every family already touched back where the fallback says, and say so.
// The ledger around it (in-progress before the first change, installed after the read-back) is the caller's.
import { MeshctlError, isMeshctlError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ApplyStep, BackendDriver, KernelState, TransitionTarget } from '../drivers/driver.js';

export interface TransactionSpec {
  readonly driver: BackendDriver;
  readonly steps: readonly ApplyStep[];
  /** Where a failed transaction goes back to (the previous generation, or what was there before install). */
  readonly fallback: TransitionTarget;
  /** Problems found in the state read back after applying; empty means verified. */
  readonly verify: (state: KernelState) => string[] | Promise<string[]>;
  /** What the transaction does, for messages: "install", "update", "uninstall". */
  readonly what: string;
}

function detailsOf(error: unknown): string[] {
  if (isMeshctlError(error)) return [`${error.code}: ${error.message}`, ...error.details];
  return [String(error instanceof Error ? error.message : error)];
}

/**
 * Brings `labels` (families) back to the fallback. Returns what was restored; throws ROLLBACK_FAILED when the
 * kernel refuses, naming the families that may be half-changed.
 */
async function rollBack(
  driver: BackendDriver,
  fallback: TransitionTarget,
  labels: readonly string[],
  log: Logger,
  original: unknown,
): Promise<string[]> {
  if (labels.length === 0) return [];
  try {
    const state = await driver.read();
    const steps = driver.stepsTo(state, fallback).filter((s) => labels.includes(s.label));
    for (const step of steps) await driver.apply(step);
    log.warn({ families: labels }, 'rolled back');
    return labels.slice();
  } catch (error) {
    log.error({ err: error, families: labels }, 'rollback failed');
    throw new MeshctlError(
      'ROLLBACK_FAILED',
      `restoring the previous ${labels.join(' and ')} rules failed after an error; those families may be half-changed`,
      'run `meshctl status` to see what is there; `meshctl uninstall` removes what the ledger lists; the pre-install snapshot is in the ledger file',
      {
        cause: error,
        details: [
          ...detailsOf(original).map((l) => `first error: ${l}`),
          ...detailsOf(error).map((l) => `rollback error: ${l}`),
        ],
      },
    );
  }
}

/** Runs the transaction. Returns the verified state. Throws RESTORE_FAILED or VERIFY_FAILED (after rolling back). */
export async function runTransaction(spec: TransactionSpec, log: Logger): Promise<KernelState> {
  const { driver, steps } = spec;
  const tlog = log.child({ component: 'transaction', backend: driver.backend });
  for (const step of steps) {
    try {
      await driver.check(step);
    } catch (error) {
      tlog.error({ err: error, family: step.label }, 'check failed; nothing changed');
      throw new MeshctlError(
        'RESTORE_FAILED',
        `the ${step.label} rules for ${spec.what} were rejected by the ${driver.backend} check; nothing was changed`,
        'run `meshctl install --dry-run` to see the input and compare with the line named in stderr',
        { cause: error, details: detailsOf(error) },
      );
    }
  }
  const touched: string[] = [];
  for (const step of steps) {
    touched.push(step.label);
    try {
      await driver.apply(step);
    } catch (error) {
      tlog.error({ err: error, family: step.label }, 'apply failed; rolling back');
      const restored = await rollBack(driver, spec.fallback, touched, tlog, error);
      const others = restored.filter((l) => l !== step.label);
      throw new MeshctlError(
        'RESTORE_FAILED',
        `applying the ${step.label} rules for ${spec.what} failed; ${restored.length > 0 ? `restored ${restored.join(' and ')} to the previous rules` : 'nothing had changed'}${others.length > 0 ? ` (${others.join(', ')} had already been applied)` : ''}`,
        'check the stderr shown below; `meshctl doctor` names missing kernel features and privileges',
        { cause: error, details: detailsOf(error) },
      );
    }
  }
  const state = await driver.read();
  const problems = await spec.verify(state);
  if (problems.length > 0) {
    tlog.error({ problems }, 'read-back differs; rolling back');
    const restored = await rollBack(driver, spec.fallback, touched, tlog, new Error(problems.join('; ')));
    throw new MeshctlError(
      'VERIFY_FAILED',
      `after ${spec.what}, the rules read back from the kernel differ from what was applied; restored ${restored.join(' and ') || 'nothing'} to the previous rules`,
      'something else changed the rules at the same moment, or the kernel rewrote a rule; run the command again, and report it if it repeats',
      { details: problems },
    );
  }
  return state;
}
