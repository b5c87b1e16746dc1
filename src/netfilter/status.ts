// `meshctl status` as a library call: is capture installed here, with which backend and config, and do the
// kernel's rules still match what was installed (missing, extra, out of order)? Drift is measured against the plan
// recorded in the ledger, not against whatever the config file says today.
import type { Config } from '../config/types.js';
import { createDriver, type DriftReport } from './driver.js';
import { readLedger, ledgerPath, type ConfirmArm, type Ledger } from './ledger.js';
import { recoverInterrupted, type Recovery } from './recovery.js';
import { missingExtras } from './routes.js';
import { openScope, withScopeLock, type ScopeOptions } from './scope.js';

export interface StatusReport {
  readonly installed: boolean;
  readonly netns: string | null;
  readonly ledgerPath: string;
  readonly installId: string | null;
  readonly backend: Ledger['backend'] | null;
  readonly configHash: string | null;
  readonly configFile: string | null;
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
  readonly recovered: Recovery | null;
}

export interface StatusOptions extends ScopeOptions {
  /** The current config, to report whether it differs from the installed one. */
  readonly config?: Config;
}

/** Reports the installed state. Finishes an interrupted transaction first. Throws LOCKED, LEDGER_CORRUPT. */
export async function captureStatus(options: StatusOptions): Promise<StatusReport> {
  const scope = openScope(options);
  return withScopeLock(scope, 'status', async () => {
    const recovered = await recoverInterrupted(scope);
    const ledger = readLedger(scope.dir);
    const base = { netns: scope.netns, ledgerPath: ledgerPath(scope.dir), recovered };
    if (ledger === null) {
      return {
        ...base, installed: false, installId: null, backend: null, configHash: null, configFile: null, installedAt: null, updatedAt: null, toolVersion: null,
        inSync: false, drift: [], missingExtras: [], configChanged: null, confirm: null,
      };
    }
    const driver = createDriver(ledger.backend, scope.runner, scope.log);
    const state = await driver.read();
    const drift = driver.drift(state, ledger.current.plan);
    const missing = await missingExtras(scope.runner, ledger.current.extras);
    return {
      ...base,
      installed: true,
      installId: ledger.installId,
      backend: ledger.backend,
      configHash: ledger.current.configHash,
      configFile: ledger.current.configFile,
      installedAt: ledger.createdAt,
      updatedAt: ledger.updatedAt,
      toolVersion: ledger.toolVersion,
      inSync: drift.every((d) => d.inSync) && missing.length === 0,
      drift,
      missingExtras: missing,
      configChanged: options.config ? options.config.hash !== ledger.current.configHash : null,
      confirm: ledger.confirm,
    };
  });
}
