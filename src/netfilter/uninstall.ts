// `meshctl uninstall` (alias rollback) as a library call: removes exactly what the ledger lists, never what the
// current config would create, leaves every foreign rule alone (also those added after install), verifies that
// nothing but our objects changed, and removes the ledger. `ifUnconfirmed` is the --confirm-within reverter.
import { MeshctlError } from '../errors.js';
import { revertLogPath, disarmRevert } from './transaction/revert.js';
import { createDriver } from './drivers/create-driver.js';
import { readLedger, removeLedger, writeLedger, ledgerPath, type Ledger } from './transaction/ledger.js';
import { recoverInterrupted, type Recovery } from './transaction/recovery.js';
import { NO_EXTRAS, reconcileExtras, remainingExtras } from './drivers/routes.js';
import { openScope, withScopeLock, type ScopeOptions } from './transaction/scope.js';
import { runTransaction } from './transaction/transaction.js';

export interface UninstallOptions extends ScopeOptions {
  /** Act only if this install is still installed and its --confirm-within revert is armed, unconfirmed and due. */
  readonly ifUnconfirmed?: string;
}

export interface UninstallResult {
  readonly action: 'uninstalled' | 'not-installed' | 'skipped';
  /** Why nothing was done (for `skipped`). */
  readonly reason: string | null;
  readonly installId: string | null;
  readonly backend: Ledger['backend'] | null;
  readonly netns: string | null;
  /** The objects removed, as text (`ipv4 nat chain MESHCTL_OUTPUT`, `table inet meshctl`). */
  readonly removed: readonly string[];
  /** Foreign lines added / removed since the install (they were kept). */
  readonly foreignChanges: { readonly added: readonly string[]; readonly removed: readonly string[] };
  /** Objects with meshctl markers that the ledger did not list (left in place). */
  readonly leftovers: readonly string[];
  readonly recovered: Recovery | null;
  readonly revertLog: string;
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('# ipv'));
}

function minus(a: readonly string[], b: readonly string[]): string[] {
  const left = new Map<string, number>();
  for (const l of b) left.set(l, (left.get(l) ?? 0) + 1);
  return a.filter((l) => {
    const n = left.get(l) ?? 0;
    if (n > 0) left.set(l, n - 1);
    return n === 0;
  });
}

function describeObjects(ledger: Ledger): string[] {
  const objects = ledger.current.objects;
  if (!objects) return [];
  if (objects.kind === 'nftables') return objects.listing ? ['table inet meshctl'] : [];
  return objects.families.flatMap((f) => f.tables.flatMap((t) => [
    ...t.chains.map((c) => `${f.family} ${t.table} chain ${c}`),
    ...t.rules.filter((r) => !r.chain.startsWith('MESHCTL_')).map((r) => `${f.family} ${t.table} -A ${r.chain} ${r.raw}`),
  ]));
}

/**
 * Uninstalls what the ledger lists. Throws RESTORE_FAILED / VERIFY_FAILED (after putting the rules back),
 * ROLLBACK_FAILED, NOT_OWNED (a foreign rule jumps into our chain), LOCKED, NETNS_NOT_FOUND.
 */
export async function uninstallCapture(options: UninstallOptions): Promise<UninstallResult> {
  const scope = openScope(options);
  const log = scope.log.child({ component: 'uninstall' });
  return withScopeLock(scope, options.ifUnconfirmed ? 'uninstall --if-unconfirmed' : 'uninstall', async () => {
    const recovered = await recoverInterrupted(scope);
    const ledger = readLedger(scope.dir);
    const base = { netns: scope.netns, recovered, revertLog: revertLogPath(scope.dir), removed: [], foreignChanges: { added: [], removed: [] }, leftovers: [] };
    if (ledger === null) {
      return { ...base, action: options.ifUnconfirmed ? 'skipped' : 'not-installed', reason: 'nothing is installed', installId: null, backend: null };
    }
    if (options.ifUnconfirmed !== undefined) {
      const arm = ledger.confirm;
      const why =
        ledger.installId !== options.ifUnconfirmed ? `install ${options.ifUnconfirmed} is gone (now installed: ${ledger.installId})`
        : arm === null ? 'no revert is armed'
        : arm.confirmedAt !== null ? `confirmed at ${arm.confirmedAt}`
        : Date.parse(arm.deadline) > Date.now() + 500 ? `the revert deadline moved to ${arm.deadline}`
        : null;
      if (why !== null) {
        log.info({ installId: options.ifUnconfirmed, why }, 'revert not needed');
        return { ...base, action: 'skipped', reason: why, installId: ledger.installId, backend: ledger.backend };
      }
      log.warn({ installId: ledger.installId, deadline: arm!.deadline }, 'not confirmed before the deadline: reverting');
    }
    const objects = ledger.current.objects;
    if (objects === null) {
      throw new MeshctlError('LEDGER_CORRUPT', `the ledger ${ledgerPath(scope.dir)} is installed but lists no objects`, 'remove MESHCTL_ chains by hand, then delete the ledger file');
    }
    const driver = createDriver(ledger.backend, scope.runner, log);
    const state = await driver.read();
    const foreignBefore = driver.foreign(state);
    const steps = driver.stepsRemoving(state, objects);
    writeLedger(scope.dir, { ...ledger, state: 'in-progress', operation: 'uninstall', updatedAt: new Date().toISOString() });
    let after;
    try {
      after = await runTransaction({
        driver, steps, what: 'uninstall', fallback: { kind: 'objects', objects },
        verify: (now) => {
          const problems = driver.remaining(now, objects).map((o) => `still present: ${o}`);
          const foreignNow = driver.foreign(now);
          if (foreignNow !== foreignBefore) {
            problems.push('rules that are not meshctl\'s changed during uninstall:', ...minus(lines(foreignBefore), lines(foreignNow)).map((l) => `  gone: ${l}`), ...minus(lines(foreignNow), lines(foreignBefore)).map((l) => `  new:  ${l}`));
          }
          return problems;
        },
      }, log);
    } catch (error) {
      writeLedger(scope.dir, { ...ledger, updatedAt: new Date().toISOString() });
      throw error;
    }
    const tidied = await driver.tidy(ledger.snapshot);
    await reconcileExtras(scope.runner, NO_EXTRAS, ledger.current.extras, log);
    const extrasLeft = await remainingExtras(scope.runner, ledger.current.extras);
    if (extrasLeft.length > 0) {
      throw new MeshctlError('VERIFY_FAILED', `the rules are gone but ${extrasLeft.join(', ')} could not be removed`, 'remove them by hand with `ip rule del` / `ip addr del`, then run `meshctl uninstall` again');
    }
    if (ledger.confirm && ledger.confirm.confirmedAt === null && options.ifUnconfirmed === undefined) disarmRevert(ledger.confirm, log);
    removeLedger(scope.dir);
    const foreignNow = driver.foreign(after);
    const foreignThen = driver.foreignOfSnapshot(ledger.snapshot);
    const leftovers = describeLeftovers(driver.owned(after));
    const result: UninstallResult = {
      ...base, action: 'uninstalled', reason: options.ifUnconfirmed ? `not confirmed by ${ledger.confirm?.deadline ?? '?'}` : null,
      installId: ledger.installId, backend: ledger.backend, removed: [...describeObjects(ledger), ...tidied.map((c) => `nft: ${c} (empty, created by iptables-nft at install)`)],
      foreignChanges: { added: minus(lines(foreignNow), lines(foreignThen)), removed: minus(lines(foreignThen), lines(foreignNow)) }, leftovers,
    };
    log.info({ installId: ledger.installId, removed: result.removed.length, foreignAdded: result.foreignChanges.added.length, foreignRemoved: result.foreignChanges.removed.length }, options.ifUnconfirmed ? 'reverted (not confirmed)' : 'uninstalled');
    return result;
  });
}

function describeLeftovers(owned: ReturnType<ReturnType<typeof createDriver>['owned']>): string[] {
  if (owned.kind === 'nftables') return owned.listing ? ['table inet meshctl'] : [];
  return owned.families.flatMap((f) => f.tables.flatMap((t) => [...t.chains.map((c) => `${f.family} ${t.table} chain ${c}`), ...t.rules.filter((r) => !r.chain.startsWith('MESHCTL_')).map((r) => `${f.family} ${t.table} -A ${r.chain} ${r.raw}`)]));
}
