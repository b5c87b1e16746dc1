// `meshctl install` as a library call: plan, detect the backend, and apply the plan as one transaction with the
// ledger written around it. A re-install with the same config and rules in sync is a verified no-op; with a
// changed config (or drifted rules) our chains are replaced by one restore per family, never delete-then-add.
import { planCapture } from '../capture/plan.js';
import type { Backend, BackendChoice, Config } from '../config/types.js';
import { armRevert, disarmRevert } from './transaction/revert.js';
import { chooseBackend, inspectBackends } from './host/detect.js';
import { createDriver } from './drivers/create-driver.js';
import { type ApplyStep, type DriftReport } from './drivers/driver.js';
import { newInstallId, readLedger, removeLedger, writeLedger, LEDGER_FORMAT, ledgerPath, type ConfirmArm, type Generation, type Ledger, type ProxyCheck } from './transaction/ledger.js';
import { recoverInterrupted, type Recovery } from './transaction/recovery.js';
import { NO_EXTRAS, missingExtras, reconcileExtras, type HostExtras } from './drivers/routes.js';
import { openScope, toolVersion, withScopeLock, type ScopeOptions } from './transaction/scope.js';
import { runTransaction } from './transaction/transaction.js';

export interface InstallOptions extends Omit<ScopeOptions, 'stateDir'> {
  readonly config: Config;
  /** Overrides capture.backend (flag --backend). */
  readonly backend?: BackendChoice;
  /** Compute and return the restore input without touching anything (no lock, no ledger). */
  readonly dryRun?: boolean;
  /** Arm a revert that uninstalls unless `meshctl confirm` arrives within this many ms. */
  readonly confirmWithinMs?: number | null;
  /** How the reverter runs meshctl (default: this node + bin/meshctl). */
  readonly meshctlCommand?: readonly string[];
  readonly confirmMechanism?: ConfirmArm['mechanism'];
  /** What was checked of the live proxy before this install (recorded in the ledger for status). */
  readonly proxyCheck?: ProxyCheck;
}

export type InstallAction = 'installed' | 'updated' | 'repaired' | 'unchanged' | 'dry-run';

export interface InstallResult {
  readonly action: InstallAction;
  readonly installId: string | null;
  readonly backend: Backend;
  /** Why this backend (what exists, who holds rules). */
  readonly backendReasons: readonly string[];
  readonly warnings: readonly string[];
  readonly netns: string | null;
  /** The exact iptables-restore / nft input applied (or, with dryRun, that would be). */
  readonly steps: readonly ApplyStep[];
  /** Drift found before applying (what a repair fixed). */
  readonly driftBefore: readonly DriftReport[];
  readonly recovered: Recovery | null;
  readonly confirm: ConfirmArm | null;
  readonly ledgerPath: string;
}

/**
 * Installs (or updates, or repairs) the capture rules for `config`. Throws RESTORE_FAILED / VERIFY_FAILED after
 * rolling back every family already changed, ROLLBACK_FAILED when that fails too, BACKEND_UNAVAILABLE,
 * NETNS_NOT_FOUND, LOCKED.
 */
export async function installCapture(options: InstallOptions): Promise<InstallResult> {
  const { config } = options;
  const scope = openScope({ ...options, stateDir: config.stateDir });
  const log = scope.log.child({ component: 'install' });

  const body = async (recovered: Recovery | null): Promise<InstallResult> => {
    const ledger = options.dryRun ? safeReadLedger(scope.dir) : readLedger(scope.dir);
    const warnings: string[] = [];
    if (ledger?.state === 'in-progress') warnings.push(`an interrupted ${ledger.operation} is recorded in ${ledgerPath(scope.dir)}; the next command that changes rules finishes it first`);
    // With a ledger the backend is fixed; counting every backend's rules again would only cost time.
    const inventory = await inspectBackends(scope.runner, scope.env, { countRules: ledger === null });
    const decision = chooseBackend(inventory, options.backend ?? config.capture.backend, ledger?.backend ?? null);
    warnings.push(...decision.warnings);
    const driver = createDriver(decision.backend, scope.runner, log);
    const plan = planCapture(config);
    const wantExtras: HostExtras = { routes: plan.routes, loopbackAddresses: plan.loopbackAddresses };
    const state = await driver.read();
    const driftBefore = driver.drift(state, plan);
    const result = (action: InstallAction, steps: readonly ApplyStep[], installId: string | null, confirm: ConfirmArm | null): InstallResult => ({
      action, installId, backend: decision.backend, backendReasons: decision.reasons, warnings, netns: scope.netns, steps, driftBefore, recovered, confirm, ledgerPath: ledgerPath(scope.dir),
    });

    const installed = ledger?.state === 'installed' ? ledger : null;
    if (installed && installed.current.configHash === config.hash && driftBefore.every((d) => d.inSync) && (await missingExtras(scope.runner, installed.current.extras)).length === 0) {
      let confirm = installed.confirm;
      if (!options.dryRun && options.confirmWithinMs) {
        if (confirm && confirm.confirmedAt === null) disarmRevert(confirm, log);
        confirm = armRevert({ scope, installId: installed.installId, withinMs: options.confirmWithinMs, ...(options.meshctlCommand ? { command: options.meshctlCommand } : {}), ...(options.confirmMechanism ? { mechanism: options.confirmMechanism } : {}) });
      }
      // A no-op install still records what it checked of the proxy (status reports against the latest check).
      if (!options.dryRun && (confirm !== installed.confirm || options.proxyCheck !== undefined)) {
        const current = options.proxyCheck ? { ...installed.current, proxyCheck: options.proxyCheck } : installed.current;
        writeLedger(scope.dir, { ...installed, current, confirm, updatedAt: new Date().toISOString() });
      }
      log.info({ installId: installed.installId }, 'already installed with this config and in sync; nothing to do');
      return result(options.dryRun ? 'dry-run' : 'unchanged', [], installed.installId, confirm);
    }

    const steps = driver.stepsTo(state, { kind: 'plan', plan });
    if (options.dryRun) return result('dry-run', steps, installed?.installId ?? null, installed?.confirm ?? null);

    const now = new Date().toISOString();
    const snapshot = installed?.snapshot ?? (await driver.snapshot(state));
    const before = installed?.before ?? driver.ownedInSnapshot(snapshot);
    const previous: Generation | null = installed ? installed.current : null;
    const installId = installed?.installId ?? newInstallId();
    // Before the first change: record every object that may become ours, so a crash at any later point is undone.
    const pendingExtras: HostExtras = {
      routes: [...(previous?.extras.routes ?? []), ...wantExtras.routes],
      loopbackAddresses: [...(previous?.extras.loopbackAddresses ?? []), ...wantExtras.loopbackAddresses],
    };
    const generation: Generation = {
      configHash: config.hash, configFile: config.file, config, plan, objects: null, extras: pendingExtras, ...(options.proxyCheck ? { proxyCheck: options.proxyCheck } : {}),
    };
    // --confirm-within is armed before the first change and recorded with it, so no crash can leave the new rules
    // without their revert: if meshctl dies before "installed", recovery rolls back and the reverter finds nothing.
    let confirm = installed?.confirm ?? null;
    if (options.confirmWithinMs) {
      if (confirm && confirm.confirmedAt === null) disarmRevert(confirm, log);
      confirm = armRevert({ scope, installId, withinMs: options.confirmWithinMs, ...(options.meshctlCommand ? { command: options.meshctlCommand } : {}), ...(options.confirmMechanism ? { mechanism: options.confirmMechanism } : {}) });
    }
    const inProgress: Ledger = {
      format: LEDGER_FORMAT, installId, state: 'in-progress', operation: installed ? 'reinstall' : 'install', backend: decision.backend, netns: scope.netns,
      toolVersion: toolVersion(), createdAt: installed?.createdAt ?? now, updatedAt: now, current: generation, previous, before, snapshot, confirm,
    };
    writeLedger(scope.dir, inProgress);
    const fallback = previous?.objects ? { kind: 'objects' as const, objects: previous.objects } : { kind: 'objects' as const, objects: before };
    const what = installed ? (installed.current.configHash === config.hash ? 'repair' : 'update') : 'install';

    let ownedExtras: HostExtras = previous?.extras ?? NO_EXTRAS;
    const undo = async (error: unknown): Promise<never> => {
      // Put back the ledger as it was: the previous generation, or no ledger at all; a revert armed for this
      // attempt has nothing to revert.
      try {
        await reconcileExtras(scope.runner, previous?.extras ?? NO_EXTRAS, pendingExtras, log);
      } catch (extrasError) {
        log.error({ err: extrasError }, 'could not restore policy routes / loopback addresses');
      }
      if (confirm && confirm !== installed?.confirm) disarmRevert(confirm, log);
      if (installed) {
        writeLedger(scope.dir, { ...installed, updatedAt: new Date().toISOString() });
      } else {
        await driver.tidy(snapshot);
        removeLedger(scope.dir);
      }
      throw error;
    };

    let verified;
    try {
      ownedExtras = await reconcileExtras(scope.runner, wantExtras, previous?.extras ?? NO_EXTRAS, log);
      verified = await runTransaction({
        driver, steps, fallback, what,
        verify: (after) => driver.drift(after, plan).filter((d) => !d.inSync).flatMap((d) => [
          ...d.missingChains.map((c) => `${d.label}: chain ${c} missing`), ...d.extraChains.map((c) => `${d.label}: unexpected chain ${c}`),
          ...d.missing.map((r) => `${d.label}: missing ${r}`), ...d.extra.map((r) => `${d.label}: unexpected ${r}`), ...d.outOfOrder.map((o) => `${d.label}: out of order ${o}`),
        ]),
      }, log);
    } catch (error) {
      return undo(error);
    }

    const done: Ledger = { ...inProgress, state: 'installed', operation: 'install', updatedAt: new Date().toISOString(), current: { ...generation, objects: driver.owned(verified), extras: ownedExtras }, previous: null, confirm };
    writeLedger(scope.dir, done);
    log.info({ installId, backend: decision.backend, action: what, families: steps.map((s) => s.label) }, `${what} done`);
    return result(installed ? (what === 'repair' ? 'repaired' : 'updated') : 'installed', steps, installId, confirm);
  };

  if (options.dryRun) return body(null);
  return withScopeLock(scope, 'install', async () => body(await recoverInterrupted(scope)));
}

function safeReadLedger(dir: string): Ledger | null {
  try {
    return readLedger(dir);
  } catch {
    return null;
  }
}
