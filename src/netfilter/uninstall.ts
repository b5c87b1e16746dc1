// `meshctl uninstall` (alias rollback) as a library call: removes exactly what the ledger lists, never what the
// current config would create, leaves every foreign rule alone (also those added after install), verifies that our
// objects are gone and that every foreign rule it could have touched is still there (another writer changing other
// rules meanwhile is tolerated and reported), and removes the ledger. `ifUnconfirmed` is the --confirm-within
// reverter; revertUnconfirmed() retries it until capture is gone or a hard deadline passes.
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { MeshctlError, isMeshctlError } from '../errors.js';
import { revertLogPath, disarmRevert } from './transaction/revert.js';
import { createDriver } from './drivers/create-driver.js';
import { readLedger, removeLedger, writeLedger, ledgerPath, type Ledger } from './transaction/ledger.js';
import { recoverInterrupted, type Recovery } from './transaction/recovery.js';
import { NO_EXTRAS, reconcileExtras, remainingExtras } from './drivers/routes.js';
import { openScope, withScopeLock, type Scope, type ScopeOptions } from './transaction/scope.js';
import { runTransaction } from './transaction/transaction.js';
import type { ApplyStep, BackendDriver, KernelState } from './drivers/driver.js';
import type { OwnedObjects } from './drivers/objects.js';

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
  /**
   * Foreign lines another writer added / removed while this uninstall ran (between its read before and its read-back
   * after): tolerated and reported, never a reason to put capture back. As `family > table > line` or `table … > chain … > rule`.
   */
  readonly raced: RacedChanges;
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

export interface RacedChanges {
  readonly added: readonly string[];
  readonly removed: readonly string[];
}

/**
 * A driver's foreign view as one line per rule, chain and table, each prefixed with where it is (`ipv4 > nat > -A
 * DOCKER …` for iptables-save text, `table ip x > chain y > tcp dport 1 drop` for an nft listing), so that a
 * multiset difference says exactly which rule appeared or vanished.
 */
export function foreignLines(text: string): string[] {
  const out: string[] = [];
  let stack: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    if (/^# ipv[46]$/.test(line)) stack = [line.slice(2)];
    else if (line.startsWith('*')) stack = [...stack.slice(0, 1), line.slice(1)];
    else if (line === 'COMMIT') stack = stack.slice(0, 1);
    else if (line === '}') stack.pop();
    else if (line.endsWith('{')) {
      stack.push(line.slice(0, -1).trim());
      out.push(stack.join(' > '));
    } else out.push([...stack, line].join(' > '));
  }
  return out;
}

/**
 * Which foreign lines (as foreignLines writes them) the steps could change: a rule they delete by its text (`-D`),
 * any line of a chain they declare, flush or delete, anything in an nft table they flush or delete.
 */
export function touchedBy(steps: readonly ApplyStep[]): (line: string) => boolean {
  const exact = new Set<string>();
  const chains = new Set<string>();
  const tables: string[] = [];
  for (const step of steps) {
    let table = '';
    for (const raw of step.text.split('\n')) {
      const line = raw.trim();
      let m: RegExpExecArray | null;
      if (line.startsWith('*')) table = line.slice(1);
      else if ((m = /^-D (\S+) (.*)$/.exec(line))) exact.add(`${step.label} > ${table} > -A ${m[1]} ${m[2]}`);
      else if ((m = /^(?::|-X |-F )(\S+)/.exec(line))) chains.add(`${step.label} > ${table} > ${m[1]}`);
      else if ((m = /^(?:delete|flush) table (\S+ \S+)$/.exec(line))) tables.push(`table ${m[1]}`);
    }
  }
  return (line) => {
    if (exact.has(line)) return true;
    const m = /^(\S+ > \S+ > )(?:-A (\S+)|:(\S+))/.exec(line);
    if (m && chains.has(`${m[1]}${m[2] ?? m[3]}`)) return true;
    return tables.some((t) => line === t || line.startsWith(`${t} > `));
  };
}

function describeObjects(ledger: Ledger): string[] {
  const objects = ledger.current.objects;
  if (!objects) return [];
  if (objects.kind === 'nftables') return objects.listing ? ['table inet meshctl'] : [];
  return objects.families.flatMap((f) =>
    f.tables.flatMap((t) => [
      ...t.chains.map((c) => `${f.family} ${t.table} chain ${c}`),
      ...t.rules
        .filter((r) => !r.chain.startsWith('MESHCTL_'))
        .map((r) => `${f.family} ${t.table} -A ${r.chain} ${r.raw}`),
    ]),
  );
}

/** Why `uninstall --if-unconfirmed ID` has nothing to revert, or null when the install is past its deadline unconfirmed. */
function unconfirmedSkipReason(ledger: Ledger, ifUnconfirmed: string): string | null {
  const arm = ledger.confirm;
  return ledger.installId !== ifUnconfirmed
    ? `install ${ifUnconfirmed} is gone (now installed: ${ledger.installId})`
    : arm === null
      ? 'no revert is armed'
      : arm.confirmedAt !== null
        ? `confirmed at ${arm.confirmedAt}`
        : Date.parse(arm.deadline) > Date.now() + 500
          ? `the revert deadline moved to ${arm.deadline}`
          : null;
}

/**
 * Removes the objects the ledger lists in one transaction (ledger in-progress meanwhile), verifying that every
 * foreign rule the steps could touch is intact; other writers' concurrent changes are returned as `raced`.
 */
async function removeOwnedRules(
  scope: Scope,
  ledger: Ledger,
  objects: OwnedObjects,
  log: Scope['log'],
): Promise<{ driver: BackendDriver; after: KernelState; raced: RacedChanges }> {
  const driver = createDriver(ledger.backend, scope.runner, log);
  const state = await driver.read();
  const foreignBefore = driver.foreign(state);
  const steps = driver.stepsRemoving(state, objects);
  writeLedger(scope.dir, {
    ...ledger,
    state: 'in-progress',
    operation: 'uninstall',
    updatedAt: new Date().toISOString(),
  });
  let after;
  let raced: RacedChanges = { added: [], removed: [] };
  try {
    after = await runTransaction(
      {
        driver,
        steps,
        what: 'uninstall',
        fallback: { kind: 'objects', objects },
        verify: (now) => {
          const problems = driver.remaining(now, objects).map((o) => `still present: ${o}`);
          // Foreign rules: every one present before must still be there, unless another writer removed it while we
          // ran (Docker, kube-proxy …). Our steps name only our own objects; a foreign line they could have removed
          // and that is gone is our fault (VERIFY_FAILED, rolled back); any other foreign change is tolerated.
          const was = foreignLines(foreignBefore);
          const is = foreignLines(driver.foreign(now));
          const gone = minus(was, is);
          const ours = touchedBy(steps);
          const lost = gone.filter(ours);
          if (lost.length > 0)
            problems.push('foreign rules the uninstall steps touched are gone:', ...lost.map((l) => `  gone: ${l}`));
          raced = { added: minus(is, was), removed: gone.filter((l) => !ours(l)) };
          return problems;
        },
      },
      log,
    );
  } catch (error) {
    writeLedger(scope.dir, { ...ledger, updatedAt: new Date().toISOString() });
    throw error;
  }
  return { driver, after, raced };
}

/** Removes the routes and loopback addresses the ledger lists; VERIFY_FAILED if any stays. */
async function removeExtras(scope: Scope, ledger: Ledger, log: Scope['log']): Promise<void> {
  await reconcileExtras(scope.runner, NO_EXTRAS, ledger.current.extras, log);
  const extrasLeft = await remainingExtras(scope.runner, ledger.current.extras);
  if (extrasLeft.length > 0) {
    throw new MeshctlError(
      'VERIFY_FAILED',
      `the rules are gone but ${extrasLeft.join(', ')} could not be removed`,
      'remove them by hand with `ip rule del` / `ip addr del`, then run `meshctl uninstall` again',
    );
  }
}

/** The objects an installed ledger lists; LEDGER_CORRUPT when it lists none. */
function recordedObjects(ledger: Ledger, dir: string): OwnedObjects {
  const objects = ledger.current.objects;
  if (objects === null) {
    throw new MeshctlError(
      'LEDGER_CORRUPT',
      `the ledger ${ledgerPath(dir)} is installed but lists no objects`,
      'remove MESHCTL_ chains by hand, then delete the ledger file',
    );
  }
  return objects;
}

/** Foreign rules added and removed since the install's snapshot (others' changes, reported not undone). */
function foreignChangesSince(
  driver: BackendDriver,
  after: KernelState,
  ledger: Ledger,
): { added: string[]; removed: string[] } {
  const foreignNow = driver.foreign(after);
  const foreignThen = driver.foreignOfSnapshot(ledger.snapshot);
  return {
    added: minus(lines(foreignNow), lines(foreignThen)),
    removed: minus(lines(foreignThen), lines(foreignNow)),
  };
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
    const base = {
      netns: scope.netns,
      recovered,
      revertLog: revertLogPath(scope.dir),
      removed: [],
      foreignChanges: { added: [], removed: [] },
      raced: { added: [], removed: [] },
      leftovers: [],
    };
    if (ledger === null) {
      return {
        ...base,
        action: options.ifUnconfirmed ? 'skipped' : 'not-installed',
        reason: 'nothing is installed',
        installId: null,
        backend: null,
      };
    }
    if (options.ifUnconfirmed !== undefined) {
      const why = unconfirmedSkipReason(ledger, options.ifUnconfirmed);
      if (why !== null) {
        log.info({ installId: options.ifUnconfirmed, why }, 'revert not needed');
        return { ...base, action: 'skipped', reason: why, installId: ledger.installId, backend: ledger.backend };
      }
      log.warn(
        { installId: ledger.installId, deadline: ledger.confirm!.deadline },
        'not confirmed before the deadline: reverting',
      );
    }
    const objects = recordedObjects(ledger, scope.dir);
    const { driver, after, raced } = await removeOwnedRules(scope, ledger, objects, log);
    const tidied = await driver.tidy(ledger.snapshot);
    await removeExtras(scope, ledger, log);
    if (ledger.confirm && ledger.confirm.confirmedAt === null && options.ifUnconfirmed === undefined)
      disarmRevert(ledger.confirm, log);
    removeLedger(scope.dir);
    const leftovers = describeLeftovers(driver.owned(after));
    if (raced.added.length + raced.removed.length > 0) {
      log.warn(
        { added: raced.added, removed: raced.removed },
        "another writer changed foreign rules during the uninstall; tolerated (meshctl's objects are gone, every foreign rule it could touch is intact)",
      );
    }
    const result: UninstallResult = {
      ...base,
      raced,
      action: 'uninstalled',
      reason: options.ifUnconfirmed ? `not confirmed by ${ledger.confirm?.deadline ?? '?'}` : null,
      installId: ledger.installId,
      backend: ledger.backend,
      removed: [
        ...describeObjects(ledger),
        ...tidied.map((c) => `nft: ${c} (empty, created by iptables-nft at install)`),
      ],
      foreignChanges: foreignChangesSince(driver, after, ledger),
      leftovers,
    };
    log.info(
      {
        installId: ledger.installId,
        removed: result.removed.length,
        foreignAdded: result.foreignChanges.added.length,
        foreignRemoved: result.foreignChanges.removed.length,
      },
      options.ifUnconfirmed ? 'reverted (not confirmed)' : 'uninstalled',
    );
    return result;
  });
}

function describeLeftovers(owned: ReturnType<ReturnType<typeof createDriver>['owned']>): string[] {
  if (owned.kind === 'nftables') return owned.listing ? ['table inet meshctl'] : [];
  return owned.families.flatMap((f) =>
    f.tables.flatMap((t) => [
      ...t.chains.map((c) => `${f.family} ${t.table} chain ${c}`),
      ...t.rules
        .filter((r) => !r.chain.startsWith('MESHCTL_'))
        .map((r) => `${f.family} ${t.table} -A ${r.chain} ${r.raw}`),
    ]),
  );
}

/** How long past the confirm deadline the reverter keeps trying before it gives up and records REVERT FAILED. */
export const REVERT_GIVE_UP_AFTER_MS = 5 * 60_000;
/** The pause between revert attempts: doubling from firstDelayMs up to maxDelayMs. */
export const REVERT_RETRY = { firstDelayMs: 250, maxDelayMs: 10_000 } as const;

export interface RevertOptions extends ScopeOptions {
  /** The install whose unconfirmed capture is reverted (`uninstall --if-unconfirmed ID`). */
  readonly installId: string;
  /** Default REVERT_GIVE_UP_AFTER_MS. */
  readonly giveUpAfterMs?: number;
  /** Default REVERT_RETRY. */
  readonly retry?: { readonly firstDelayMs: number; readonly maxDelayMs: number };
}

export interface RevertResult extends UninstallResult {
  /** How many uninstall attempts it took (1 when the first one worked). */
  readonly attempts: number;
}

function errorLine(error: unknown): string {
  if (isMeshctlError(error))
    return [`${error.code}: ${error.message}`, ...error.details.slice(0, 6).map((d) => `  ${d}`)].join('\n');
  return `INTERNAL: ${error instanceof Error ? error.message : String(error)}`;
}

function appendRevertLog(scope: Scope, text: string): void {
  try {
    appendFileSync(revertLogPath(scope.dir), `${new Date().toISOString()} ${text}\n`, { mode: 0o600 });
  } catch (error) {
    scope.log.warn({ err: error, log: revertLogPath(scope.dir) }, 'cannot write the revert log');
  }
}

/** Records the failed revert in the ledger (if it still holds this install) for `status` and `confirm`. Best effort. */
async function recordRevertFailure(
  scope: Scope,
  installId: string,
  failure: { at: string; attempts: number; error: string },
): Promise<void> {
  try {
    await withScopeLock(scope, 'uninstall --if-unconfirmed (recording a failed revert)', async () => {
      const ledger = readLedger(scope.dir);
      if (ledger === null || ledger.installId !== installId || ledger.confirm === null) return;
      writeLedger(scope.dir, {
        ...ledger,
        updatedAt: failure.at,
        confirm: { ...ledger.confirm, revertFailed: failure },
      });
    });
  } catch (error) {
    scope.log.error({ err: error }, 'cannot record the failed revert in the ledger');
  }
}

/**
 * The --confirm-within reverter: uninstalls the unconfirmed install, and when an attempt fails (another writer
 * holding the rules, a backend error) tries again after a growing pause until capture is gone or the hard deadline
 * (the confirm deadline + giveUpAfterMs) passes. Every attempt goes to the revert log. Giving up is recorded in the
 * ledger (`confirm.revertFailed`, shown by status and confirm) and throws REVERT_FAILED.
 */
export async function revertUnconfirmed(options: RevertOptions): Promise<RevertResult> {
  const scope = openScope(options);
  const log = scope.log.child({ component: 'revert', installId: options.installId });
  const giveUp = options.giveUpAfterMs ?? REVERT_GIVE_UP_AFTER_MS;
  const retry = options.retry ?? REVERT_RETRY;
  let deadline = Date.now();
  try {
    const arm = readLedger(scope.dir)?.confirm;
    if (arm) deadline = Math.max(deadline, Date.parse(arm.deadline));
  } catch {
    // unreadable ledger: the attempt below reports it, and is retried
  }
  const hardDeadline = deadline + giveUp;
  for (let attempt = 1; ; attempt++) {
    try {
      const result = await uninstallCapture({ ...options, ifUnconfirmed: options.installId });
      if (attempt > 1 || result.raced.added.length + result.raced.removed.length > 0) {
        appendRevertLog(
          scope,
          `revert attempt ${attempt} of install ${options.installId}: ${result.action}${result.reason ? ` (${result.reason})` : ''}; ` +
            `${result.raced.added.length} foreign lines added and ${result.raced.removed.length} removed by another writer meanwhile (tolerated)`,
        );
      }
      return { ...result, attempts: attempt };
    } catch (error) {
      const pause = Math.min(retry.maxDelayMs, retry.firstDelayMs * 2 ** (attempt - 1));
      const last = errorLine(error);
      log.warn({ attempt, err: error }, 'revert attempt failed');
      if (Date.now() + pause > hardDeadline) {
        const at = new Date().toISOString();
        appendRevertLog(
          scope,
          `revert attempt ${attempt} of install ${options.installId} failed; giving up (hard deadline ${new Date(hardDeadline).toISOString()}): ${last}`,
        );
        const first = last.split('\n')[0]!;
        await recordRevertFailure(scope, options.installId, { at, attempts: attempt, error: first });
        throw new MeshctlError(
          'REVERT_FAILED',
          `the revert of install ${options.installId}${scope.netns ? ` in namespace ${scope.netns}` : ''} failed ${attempt} times until its hard deadline ${new Date(hardDeadline).toISOString()}; capture is still installed`,
          `see ${revertLogPath(scope.dir)} for every attempt; fix the error and run \`meshctl uninstall\`${scope.netns ? ` --netns ${scope.netns}` : ''}, or \`meshctl confirm\` to keep the rules`,
          { cause: error, details: [`last error: ${first}`] },
        );
      }
      appendRevertLog(
        scope,
        `revert attempt ${attempt} of install ${options.installId} failed; trying again in ${pause} ms: ${last}`,
      );
      await sleep(pause);
    }
  }
}
