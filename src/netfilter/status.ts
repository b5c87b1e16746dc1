// `meshctl status`, the rules half, as a library call: is capture installed here, with which backend and which
// config (file and flags, as the ledger recorded them), and do the kernel's rules still match what was installed
// (missing, extra, out of order)? Drift is measured against the plan recorded in the ledger, not against whatever
// the config file says today. Read-only: no lock, no state directory created, and an interrupted transaction is
// reported with the command that finishes it, never finished here (recovery belongs to commands that change rules).
import type { Config } from '../config/types.js';
import { createDriver } from './drivers/create-driver.js';
import { type DriftReport } from './drivers/driver.js';
import { readLedger, ledgerPath, type ConfirmArm, type Ledger, type ProxyCheck } from './transaction/ledger.js';
import { missingExtras } from './drivers/routes.js';
import { openScope, type ScopeOptions } from './transaction/scope.js';
import { compareUnits, configUnits, readUnitCgroups, type UnitReport } from './host/unit-cgroups.js';

/** A transaction that did not finish: what it was, and the command that finishes or rolls it back. */
export interface Interrupted {
  readonly operation: Ledger['operation'];
  readonly since: string;
  readonly command: string;
}

export interface StatusReport {
  readonly installed: boolean;
  readonly netns: string | null;
  readonly ledgerPath: string;
  readonly installId: string | null;
  readonly backend: Ledger['backend'] | null;
  readonly configHash: string | null;
  readonly configFile: string | null;
  /** The flags that overrode the file at install (`--outbound-exclude-ports 9999`). */
  readonly configFlags: readonly string[];
  /** The config the rules were installed from (for the proxy's admin endpoint and the contract). */
  readonly installedConfig: Config | null;
  readonly installedAt: string | null;
  readonly updatedAt: string | null;
  readonly toolVersion: string | null;
  /** True when installed and the kernel matches the installed plan (rules, chains, routes). */
  readonly inSync: boolean;
  readonly drift: readonly DriftReport[];
  /** Policy routes / loopback addresses meshctl added that are gone. */
  readonly missingExtras: readonly string[];
  /** When a config was given: whether it differs from the installed one (`meshctl install` would update). */
  readonly configChanged: boolean | null;
  readonly confirm: ConfirmArm | null;
  /** What install checked of the proxy (null in ledgers older than the contract). */
  readonly proxyCheck: ProxyCheck | null;
  readonly interrupted: Interrupted | null;
  /**
   * Each systemd unit of the installed config: its cgroup now against the one its rule was loaded for (stale: the
   * unit restarted or started without a refresh, so the rules match an old cgroup or none; counts as drift).
   */
  readonly units: readonly UnitReport[];
}

export interface StatusOptions extends ScopeOptions {
  /** The current config, to report whether it differs from the installed one. */
  readonly config?: Config;
}

function recoveringCommand(ledger: Ledger, netns: string | null): string {
  const scope = netns ? ` --netns ${netns}` : '';
  const outcome = ledger.operation === 'uninstall' ? 'completes the uninstall' : `rolls the ${ledger.operation} back`;
  return `\`meshctl recover${scope}\` (it ${outcome}; any install or uninstall does so first too)`;
}

/** Reports the installed state without changing anything. Throws NETNS_NOT_FOUND, LEDGER_CORRUPT. */
export async function captureStatus(options: StatusOptions): Promise<StatusReport> {
  const scope = openScope(options);
  const ledger = readLedger(scope.dir);
  const base = { netns: scope.netns, ledgerPath: ledgerPath(scope.dir) };
  if (ledger === null) {
    return {
      ...base,
      installed: false,
      installId: null,
      backend: null,
      configHash: null,
      configFile: null,
      configFlags: [],
      installedConfig: null,
      installedAt: null,
      updatedAt: null,
      toolVersion: null,
      inSync: false,
      drift: [],
      missingExtras: [],
      configChanged: null,
      confirm: null,
      proxyCheck: null,
      interrupted: null,
      units: [],
    };
  }
  const interrupted =
    ledger.state === 'in-progress'
      ? { operation: ledger.operation, since: ledger.updatedAt, command: recoveringCommand(ledger, scope.netns) }
      : null;
  const driver = createDriver(ledger.backend, scope.runner, scope.log);
  const state = await driver.read();
  // An interrupted transaction's plan may be half-applied: drift against it would say nothing useful.
  const drift = interrupted ? [] : driver.drift(state, ledger.current.plan);
  const missing = interrupted ? [] : await missingExtras(scope.runner, ledger.current.extras);
  const loadedUnits = ledger.current.units ?? [];
  const units = compareUnits(loadedUnits, readUnitCgroups(configUnits(ledger.current.config)));
  return {
    ...base,
    installed: true,
    installId: ledger.installId,
    backend: ledger.backend,
    configHash: ledger.current.configHash,
    configFile: ledger.current.configFile,
    configFlags: ledger.current.config.flags ?? [],
    installedConfig: ledger.current.config,
    installedAt: ledger.createdAt,
    updatedAt: ledger.updatedAt,
    toolVersion: ledger.toolVersion,
    inSync:
      interrupted === null &&
      drift.every((d) => d.inSync) &&
      missing.length === 0 &&
      units.every((u) => u.step !== 'stale'),
    drift,
    missingExtras: missing,
    configChanged: options.config ? options.config.hash !== ledger.current.configHash : null,
    confirm: ledger.confirm,
    proxyCheck: ledger.current.proxyCheck ?? null,
    interrupted,
    units,
  };
}
