// `meshctl install` as a library call: plan, detect the backend, and apply the plan as one transaction with the
// ledger written around it. A re-install with the same config and rules in sync is a verified no-op; with a
// changed config (or drifted rules) our chains are replaced by one restore per family, never delete-then-add.
import type { CapturePlan } from '../capture/model.js';
import { planCapture } from '../capture/plan.js';
import type { Backend, BackendChoice, Config } from '../config/types.js';
import type { Logger } from '../log.js';
import { armRevert, disarmRevert } from './transaction/revert.js';
import { chooseBackend, inspectBackends, type BackendDecision } from './host/detect.js';
import { createDriver } from './drivers/create-driver.js';
import { type ApplyStep, type BackendDriver, type DriftReport, type KernelState } from './drivers/driver.js';
import type { Snapshot } from './drivers/objects.js';
import {
  newInstallId,
  readLedger,
  removeLedger,
  writeLedger,
  LEDGER_FORMAT,
  ledgerPath,
  type ConfirmArm,
  type Generation,
  type Ledger,
  type ProxyCheck,
} from './transaction/ledger.js';
import { recoverInterrupted, type Recovery } from './transaction/recovery.js';
import { NO_EXTRAS, missingExtras, reconcileExtras, refuseTablesInUse, type HostExtras } from './drivers/routes.js';
import { openScope, toolVersion, withScopeLock, type Scope, type ScopeOptions } from './transaction/scope.js';
import { runTransaction } from './transaction/transaction.js';
import { configUnits, missingUnits, readUnitCgroups, refuseNftUnits, sameUnitCgroups } from './host/unit-cgroups.js';
import type { UnitCgroupState } from './transaction/ledger.js';

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

/** What an install has read before it decides: the ledger, the backend and its driver, the plan and the kernel. */
interface Survey {
  readonly scope: Scope;
  readonly options: InstallOptions;
  readonly log: Logger;
  /** The ledger of a completed install (null for a first install or one interrupted and rolled back). */
  readonly installed: Ledger | null;
  readonly decision: BackendDecision;
  readonly driver: BackendDriver;
  readonly plan: CapturePlan;
  readonly state: KernelState;
  readonly driftBefore: readonly DriftReport[];
  readonly warnings: string[];
  readonly recovered: Recovery | null;
  /** The config's units and their cgroup ids now (the plan leaves out those not running). */
  readonly units: readonly UnitCgroupState[];
}

/**
 * Installs (or updates, or repairs) the capture rules for `config`. Throws RESTORE_FAILED / VERIFY_FAILED after
 * rolling back every family already changed, ROLLBACK_FAILED when that fails too, BACKEND_UNAVAILABLE,
 * NETNS_NOT_FOUND, LOCKED.
 */
export async function installCapture(options: InstallOptions): Promise<InstallResult> {
  const scope = openScope({ ...options, stateDir: options.config.stateDir });
  const log = scope.log.child({ component: 'install' });
  if (options.dryRun) return installIn(await survey(scope, options, log, null));
  return withScopeLock(scope, 'install', async () =>
    installIn(await survey(scope, options, log, await recoverInterrupted(scope))),
  );
}

async function installIn(s: Survey): Promise<InstallResult> {
  const { installed, options } = s;
  if (
    installed &&
    installed.current.configHash === options.config.hash &&
    s.driftBefore.every((d) => d.inSync) &&
    // A unit that restarted has a new cgroup at the same path: the rules read back equal, yet match the old one.
    sameUnitCgroups(installed.current.units ?? [], s.units) &&
    (await missingExtras(s.scope.runner, installed.current.extras)).length === 0
  ) {
    return keepInstalled(s, installed);
  }
  const steps = s.driver.stepsTo(s.state, { kind: 'plan', plan: s.plan });
  if (options.dryRun) return resultOf(s, 'dry-run', steps, installed?.installId ?? null, installed?.confirm ?? null);
  return applyInstall(s, steps);
}

/** Reads the ledger, picks the backend (fixed by the ledger once there is one) and reads the kernel through it. */
async function survey(scope: Scope, options: InstallOptions, log: Logger, recovered: Recovery | null): Promise<Survey> {
  const { config } = options;
  const ledger = options.dryRun ? safeReadLedger(scope.dir) : readLedger(scope.dir);
  const warnings: string[] = [];
  if (ledger?.state === 'in-progress')
    warnings.push(
      `an interrupted ${ledger.operation} is recorded in ${ledgerPath(scope.dir)}; the next command that changes rules finishes it first`,
    );
  // With a ledger the backend is fixed; counting every backend's rules again would only cost time.
  const inventory = await inspectBackends(scope.runner, scope.env, { countRules: ledger === null });
  const decision = chooseBackend(inventory, options.backend ?? config.capture.backend, ledger?.backend ?? null);
  warnings.push(...decision.warnings);
  if (decision.backend === 'nftables') refuseNftUnits(config, scope.netns);
  const driver = createDriver(decision.backend, scope.runner, log);
  const units = readUnitCgroups(configUnits(config));
  const plan = planCapture(config, { missingUnits: missingUnits(units) });
  const state = await driver.read();
  const driftBefore = driver.drift(state, plan);
  const installed = ledger?.state === 'installed' ? ledger : null;
  return { scope, options, log, installed, decision, driver, plan, state, driftBefore, warnings, recovered, units };
}

function resultOf(
  s: Survey,
  action: InstallAction,
  steps: readonly ApplyStep[],
  installId: string | null,
  confirm: ConfirmArm | null,
): InstallResult {
  return {
    action,
    installId,
    backend: s.decision.backend,
    backendReasons: s.decision.reasons,
    warnings: s.warnings,
    netns: s.scope.netns,
    steps,
    driftBefore: s.driftBefore,
    recovered: s.recovered,
    confirm,
    ledgerPath: ledgerPath(s.scope.dir),
  };
}

/** With --confirm-within: disarms a revert still pending and arms a new one for `installId`; else keeps `current`. */
function rearmRevert(s: Survey, installId: string, current: ConfirmArm | null): ConfirmArm | null {
  const { options } = s;
  if (!options.confirmWithinMs) return current;
  if (current && current.confirmedAt === null) disarmRevert(current, s.log);
  return armRevert({
    scope: s.scope,
    installId,
    withinMs: options.confirmWithinMs,
    ...(options.meshctlCommand ? { command: options.meshctlCommand } : {}),
    ...(options.confirmMechanism ? { mechanism: options.confirmMechanism } : {}),
  });
}

/** Same config, rules in sync, extras present: nothing to apply; re-arms a revert and records the proxy check. */
function keepInstalled(s: Survey, installed: Ledger): InstallResult {
  const { options } = s;
  const confirm = options.dryRun ? installed.confirm : rearmRevert(s, installed.installId, installed.confirm);
  // A no-op install still records what it checked of the proxy (status reports against the latest check).
  if (!options.dryRun && (confirm !== installed.confirm || options.proxyCheck !== undefined)) {
    const current = options.proxyCheck ? { ...installed.current, proxyCheck: options.proxyCheck } : installed.current;
    writeLedger(s.scope.dir, { ...installed, current, confirm, updatedAt: new Date().toISOString() });
  }
  s.log.info({ installId: installed.installId }, 'already installed with this config and in sync; nothing to do');
  return resultOf(s, options.dryRun ? 'dry-run' : 'unchanged', [], installed.installId, confirm);
}

/** The generation the in-progress ledger records: the config and plan, no objects yet, `extras` that may become ours. */
function pendingGeneration(s: Survey, extras: HostExtras): Generation {
  const { config } = s.options;
  return {
    configHash: config.hash,
    configFile: config.file,
    config,
    plan: s.plan,
    objects: null,
    extras,
    ...(s.options.proxyCheck ? { proxyCheck: s.options.proxyCheck } : {}),
    ...(s.units.length > 0 ? { units: s.units } : {}),
  };
}

/**
 * Applies `steps` as one transaction between two ledger writes: in-progress (recording every object that may
 * become ours) before the first change, installed (with the objects read back) after the verified read-back.
 */
async function applyInstall(s: Survey, steps: readonly ApplyStep[]): Promise<InstallResult> {
  const { config } = s.options;
  const { installed, driver, plan, scope, log } = s;
  const now = new Date().toISOString();
  const snapshot = installed?.snapshot ?? (await driver.snapshot(s.state));
  const before = installed?.before ?? driver.ownedInSnapshot(snapshot);
  const previous: Generation | null = installed ? installed.current : null;
  const installId = installed?.installId ?? newInstallId();
  const wantExtras: HostExtras = { routes: plan.routes, loopbackAddresses: plan.loopbackAddresses };
  const previousExtras = previous?.extras ?? NO_EXTRAS;
  // A TPROXY table something else uses is refused before the first change (before a revert is armed or the ledger says in-progress).
  await refuseTablesInUse(
    scope.runner,
    wantExtras,
    previousExtras,
    scope.netns === null ? 'the host namespace' : `namespace ${scope.netns}`,
  );
  // Before the first change: record every object that may become ours, so a crash at any later point is undone.
  const pendingExtras: HostExtras = {
    routes: [...previousExtras.routes, ...wantExtras.routes],
    loopbackAddresses: [...previousExtras.loopbackAddresses, ...wantExtras.loopbackAddresses],
  };
  const generation = pendingGeneration(s, pendingExtras);
  // --confirm-within is armed before the first change and recorded with it, so no crash can leave the new rules
  // without their revert: if meshctl dies before "installed", recovery rolls back and the reverter finds nothing.
  const confirm = rearmRevert(s, installId, installed?.confirm ?? null);
  const inProgress: Ledger = {
    format: LEDGER_FORMAT,
    installId,
    state: 'in-progress',
    operation: installed ? 'reinstall' : 'install',
    backend: s.decision.backend,
    netns: scope.netns,
    toolVersion: toolVersion(),
    createdAt: installed?.createdAt ?? now,
    updatedAt: now,
    current: generation,
    previous,
    before,
    snapshot,
    confirm,
  };
  writeLedger(scope.dir, inProgress);
  const fallback = { kind: 'objects' as const, objects: previous?.objects ?? before };
  const what = installed ? (installed.current.configHash === config.hash ? 'repair' : 'update') : 'install';

  let ownedExtras: HostExtras;
  let verified: KernelState;
  try {
    ownedExtras = await reconcileExtras(scope.runner, wantExtras, previousExtras, log);
    verified = await runTransaction(
      { driver, steps, fallback, what, verify: (after) => driftProblems(driver.drift(after, plan)) },
      log,
    );
  } catch (error) {
    await undoInstall(s, { pendingExtras, confirm, snapshot });
    throw error;
  }

  const done: Ledger = {
    ...inProgress,
    state: 'installed',
    operation: 'install',
    updatedAt: new Date().toISOString(),
    current: { ...generation, objects: driver.owned(verified), extras: ownedExtras },
    previous: null,
    confirm,
  };
  writeLedger(scope.dir, done);
  log.info(
    { installId, backend: s.decision.backend, action: what, families: steps.map((d) => d.label) },
    `${what} done`,
  );
  return resultOf(s, installed ? (what === 'repair' ? 'repaired' : 'updated') : 'installed', steps, installId, confirm);
}

/** Every way the rules read back differ from the plan, one line each (VERIFY_FAILED's details). */
function driftProblems(drift: readonly DriftReport[]): string[] {
  return drift
    .filter((d) => !d.inSync)
    .flatMap((d) => [
      ...d.missingChains.map((c) => `${d.label}: chain ${c} missing`),
      ...d.extraChains.map((c) => `${d.label}: unexpected chain ${c}`),
      ...d.missing.map((r) => `${d.label}: missing ${r}`),
      ...d.extra.map((r) => `${d.label}: unexpected ${r}`),
      ...d.outOfOrder.map((o) => `${d.label}: out of order ${o}`),
    ]);
}

/**
 * After a failed transaction (which put the rules back itself): puts back the routes and loopback addresses, and
 * the ledger as it was (the previous generation, or no ledger at all); a revert armed for this attempt has nothing
 * to revert.
 */
async function undoInstall(
  s: Survey,
  attempt: { pendingExtras: HostExtras; confirm: ConfirmArm | null; snapshot: Snapshot },
): Promise<void> {
  const { installed, scope, log } = s;
  try {
    await reconcileExtras(scope.runner, installed?.current.extras ?? NO_EXTRAS, attempt.pendingExtras, log);
  } catch (extrasError) {
    log.error({ err: extrasError }, 'could not restore policy routes / loopback addresses');
  }
  if (attempt.confirm && attempt.confirm !== installed?.confirm) disarmRevert(attempt.confirm, log);
  if (installed) {
    writeLedger(scope.dir, { ...installed, updatedAt: new Date().toISOString() });
  } else {
    await s.driver.tidy(attempt.snapshot);
    removeLedger(scope.dir);
  }
}

function safeReadLedger(dir: string): Ledger | null {
  try {
    return readLedger(dir);
  } catch {
    return null;
  }
}
