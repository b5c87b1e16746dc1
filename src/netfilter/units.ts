// `meshctl units refresh` as a library call: loads the installed capture again when a systemd unit it names has a
// cgroup other than the one its rule was loaded for (the unit restarted, or started after install). Each named unit's
// drop-in runs it as `ExecStartPre=+`, inside the unit's new cgroup and before its main process, so an excluded unit
// is never captured (src/netfilter/host/unit-cgroups.ts has why the rules go stale). The re-apply is an ordinary
// install of the config the ledger recorded: the state lock, one restore per family (or one nft script), read back
// and verified, the ledger rewritten with the new cgroup ids; any failure rolls back and is an error, so the unit does
// not start with rules that would capture it.
import type { Logger } from '../log.js';
import { installCapture, type InstallResult } from './install.js';
import { compareUnits, configUnits, readUnitCgroups, type UnitReport } from './host/unit-cgroups.js';
import { readLedger, ledgerPath } from './transaction/ledger.js';
import { openScope, type ScopeOptions } from './transaction/scope.js';
import { createDriver } from './drivers/create-driver.js';

/** not-loaded: a ledger, but none of its rules in the kernel (a reboot before meshctl-capture.service ran). */
export type RefreshAction = 'not-installed' | 'not-loaded' | 'no-units' | 'in-step' | 'refreshed';

export interface RefreshResult {
  readonly action: RefreshAction;
  readonly netns: string | null;
  readonly ledgerPath: string;
  /** Each unit before the refresh (stale ones are why it re-applied). */
  readonly before: readonly UnitReport[];
  /** The install that re-applied the rules (null when nothing needed it). */
  readonly install: InstallResult | null;
}

export interface RefreshOptions extends ScopeOptions {
  readonly log?: Logger;
}

/**
 * Re-applies the installed capture when a unit's cgroup changed; otherwise changes nothing. Throws what install
 * throws (RESTORE_FAILED, VERIFY_FAILED, LOCKED, ...), after rolling back, and LEDGER_CORRUPT.
 */
export async function refreshUnits(options: RefreshOptions): Promise<RefreshResult> {
  const scope = openScope(options);
  const base = { netns: scope.netns, ledgerPath: ledgerPath(scope.dir) };
  const ledger = readLedger(scope.dir);
  // Nothing installed (or an install that never finished): the next install resolves the units itself.
  if (ledger === null || ledger.state !== 'installed')
    return { ...base, action: 'not-installed', before: [], install: null };
  const config = ledger.current.config;
  const units = configUnits(config);
  if (units.length === 0) return { ...base, action: 'no-units', before: [], install: null };
  const before = compareUnits(ledger.current.units ?? [], readUnitCgroups(units));
  if (before.every((u) => u.step !== 'stale')) return { ...base, action: 'in-step', before, install: null };
  // After a reboot the ledger is there but the kernel holds none of its rules until meshctl-capture.service installs
  // them (it resolves the units itself): a unit starting first must not load capture ahead of the proxy.
  const driver = createDriver(ledger.backend, scope.runner, scope.log);
  const objects = ledger.current.objects;
  if (objects !== null && driver.remaining(await driver.read(), objects).length === 0)
    return { ...base, action: 'not-loaded', before, install: null };
  const install = await installCapture({
    config,
    netns: scope.netns,
    ...(options.runner ? { runner: options.runner } : {}),
    ...(options.env ? { env: options.env } : {}),
    ...(options.log ? { log: options.log } : {}),
    ...(ledger.current.proxyCheck ? { proxyCheck: ledger.current.proxyCheck } : {}),
  });
  return { ...base, action: 'refreshed', before, install };
}
