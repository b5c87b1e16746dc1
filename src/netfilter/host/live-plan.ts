// Where `meshctl explain` gets its rules: the kernel (read through the installed backend's driver, origins from the
// ledger's recorded plan) or the config. Read-only: no state lock, no recovery, no state directory created; an
// interrupted transaction is reported, not finished.
import {
  describeDifferences,
  planFromNftRuleset,
  planFromSave,
  type RuleDifferences,
} from '../../capture/live-plan.js';
import type { ExplainPlan } from '../../capture/explain.js';
import { FAMILIES } from '../../values/ip.js';
import { type CapturePlan } from '../../capture/model.js';
import { planCapture } from '../../capture/plan.js';
import type { Backend, Config } from '../../config/types.js';
import { isMeshctlError } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import { createDriver } from '../drivers/create-driver.js';
import { ledgerPath, readLedger, scopeDir, type Ledger } from '../transaction/ledger.js';
import { assertNetnsExists } from '../../values/netns.js';
import { createRunner, type NetfilterRunner } from '../drivers/runner.js';
import { resolveNftCgroupIds, withStaleUnits } from './unit-cgroups.js';

export interface ExplainRules {
  /** `kernel`: the rules installed now; `config`: the plan of the current config (nothing installed, or asked for). */
  readonly source: 'kernel' | 'config';
  readonly plan: ExplainPlan;
  readonly installId: string | null;
  readonly backend: Backend | null;
  readonly netns: string | null;
  readonly ledgerPath: string;
  /** Why the source is what it is, and what explain could not see. */
  readonly notes: readonly string[];
  /** Kernel only: how the installed rules differ from the current config's plan. */
  readonly differences: RuleDifferences | null;
}

export interface ExplainRulesOptions {
  readonly config: Config;
  /** `kernel` (default): the installed rules when there are any, else the config's plan; `config`: the config's plan. */
  readonly from?: 'kernel' | 'config';
  readonly netns?: string | null;
  /** Default: config.stateDir. */
  readonly stateDir?: string;
  readonly runner?: NetfilterRunner;
  readonly env?: NodeJS.ProcessEnv;
  readonly log?: Logger;
}

/** The ledger, or why it cannot be read without privileges (then explain falls back to the config). */
function readLedgerReadOnly(dir: string): Ledger | null | { denied: string } {
  try {
    return readLedger(dir);
  } catch (error) {
    if (isMeshctlError(error, 'NOT_ROOT')) return { denied: error.message };
    throw error;
  }
}

/**
 * The rules in the kernel of `backend` as the plan explain walks, with origins from `recorded` (the ledger's plan).
 * Throws COMMAND_FAILED, BACKEND_UNAVAILABLE, PARSE_SAVE.
 */
export async function readKernelPlan(
  backend: Backend,
  runner: NetfilterRunner,
  recorded: CapturePlan | null,
  log: Logger = silentLogger,
): Promise<{ plan: ExplainPlan; notes: string[] }> {
  const state = await createDriver(backend, runner, log).read();
  if (backend === 'nftables') {
    // nft shows a unit rule's cgroup by its id where it cannot see the hierarchy: put the path back (unit-cgroups.ts).
    const listing = resolveNftCgroupIds(state.texts.get('inet') ?? '');
    return { plan: planFromNftRuleset(listing, recorded), notes: [] };
  }
  const families = FAMILIES.map((family) => ({ family, text: state.texts.get(family) ?? null }));
  const notes = families
    .filter((f) => f.text === null)
    .map(
      (f) => `the ${f.family} rules could not be read (${backend}); explain cannot evaluate ${f.family} connections`,
    );
  return { plan: planFromSave(families, recorded), notes };
}

/**
 * The rules explain walks: what is installed (read from the kernel with the ledger's backend), or the config's
 * plan when nothing is installed or `from: 'config'`. Throws NETNS_NOT_FOUND, LEDGER_CORRUPT, COMMAND_FAILED (a
 * save/list failed), BACKEND_UNAVAILABLE, PARSE_SAVE.
 */
export async function readExplainRules(options: ExplainRulesOptions): Promise<ExplainRules> {
  const { config } = options;
  const netns = options.netns ?? null;
  if (netns !== null) assertNetnsExists(netns);
  const stateDir = options.stateDir ?? config.stateDir;
  const dir = scopeDir(stateDir, netns);
  const path = ledgerPath(dir);
  const fromConfig = (notes: string[]): ExplainRules => ({
    source: 'config',
    plan: { ...planCapture(config), source: 'config' },
    installId: null,
    backend: null,
    netns,
    ledgerPath: path,
    notes,
    differences: null,
  });
  if (options.from === 'config')
    return fromConfig(["explaining the current config's plan (--plan), not the rules in the kernel"]);

  const ledger = readLedgerReadOnly(dir);
  if (ledger === null) {
    return fromConfig([
      `no capture is installed${netns ? ` in namespace ${netns}` : ''} (no ledger at ${path}): explaining the current config's plan instead`,
    ]);
  }
  if ('denied' in ledger) {
    return fromConfig([
      `${ledger.denied}: explaining the current config's plan instead; run as root to explain the installed rules`,
    ]);
  }

  const log = (options.log ?? silentLogger).child({ component: 'explain', netns });
  const runner = options.runner ?? createRunner({ netns, env: options.env ?? process.env, log });
  const { plan, notes } = await readKernelPlan(ledger.backend, runner, ledger.current.plan, log);
  if (ledger.state === 'in-progress') {
    notes.unshift(
      `an interrupted ${ledger.operation} is recorded in ${path}; these are the rules as the kernel holds them now (the next meshctl command that changes rules finishes it)`,
    );
  }
  // A unit rule loaded for a cgroup its unit has left matches that old cgroup only (differences are about the rules).
  const current = withStaleUnits(plan, ledger.current.units ?? [], ledger.current.config);
  notes.push(...current.notes);
  const differences = describeDifferences(
    plan,
    planCapture(config),
    ledger.current.plan,
    ledger.current.config,
    config,
  );
  return {
    source: 'kernel',
    plan: current.plan,
    installId: ledger.installId,
    backend: ledger.backend,
    netns,
    ledgerPath: path,
    notes,
    differences,
  };
}
