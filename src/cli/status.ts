// `meshctl status`: both halves of the host on one screen — the rules (in sync or drifted, the config the ledger
// recorded with its file and flags) and the proxy (ready, not ready, unreachable, or keeping another contract than
// the rules need) — and a one-line verdict. Read-only: it never takes the lock, recovers or creates anything.
// Exit status (EXIT in output.ts, documented in README): 0 protected, 3 not installed, 4 rules drifted or an
// interrupted transaction, 5 rules in sync but the proxy is not (down, not ready, mismatched).
import type { Command } from 'commander';
import { contractOf, describeContract } from '../config/contract.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { captureStatus, type StatusReport } from '../netfilter/status.js';
import { describeUnit } from '../netfilter/host/unit-cgroups.js';
import { describeExpiry } from '../mtls/expiry.js';
import { inspectProxy, type ProxyReport } from '../service/proxy-contract.js';
import { addScopeOptions, cliLogger, resolveStateDir, where } from './shared.js';
import { EXIT } from './output.js';
import { assertUnprivilegedStatus } from './status-privileges.js';

export type StatusVerdict =
  | 'protected'
  | 'not-installed'
  | 'rules-drifted'
  | 'interrupted'
  | 'proxy-not-ready'
  | 'proxy-unreachable'
  | 'proxy-mismatched';

export interface FullStatus {
  readonly verdict: StatusVerdict;
  readonly rules: StatusReport;
  /** Null when nothing is installed (no recorded contract to hold the proxy to). */
  readonly proxy: ProxyReport | null;
  readonly notes: readonly string[];
}

export function statusExitCode(status: Pick<FullStatus, 'verdict'>): number {
  switch (status.verdict) {
    case 'protected':
      return EXIT.ok;
    case 'not-installed':
      return EXIT.notInstalled;
    case 'rules-drifted':
    case 'interrupted':
      return EXIT.drifted;
    default:
      return EXIT.proxyNotReady;
  }
}

/** The verdict from both halves: the rules must be as installed and the proxy ready and keeping their contract. */
export function statusVerdict(rules: StatusReport, proxy: ProxyReport | null): StatusVerdict {
  if (!rules.installed) return 'not-installed';
  if (rules.interrupted) return 'interrupted';
  if (!rules.inSync) return 'rules-drifted';
  switch (proxy?.state) {
    case 'ready':
      return 'protected';
    case 'mismatched':
      return 'proxy-mismatched';
    case 'unreachable':
      return 'proxy-unreachable';
    default:
      return 'proxy-not-ready';
  }
}

const VERDICT_LINE: Record<StatusVerdict, string> = {
  protected: 'PROTECTED: the rules are as installed and a ready proxy keeps their contract',
  'not-installed': 'NOT PROTECTED: no capture is installed; traffic goes direct',
  'rules-drifted': 'NOT PROTECTED: the rules have drifted from what was installed (`meshctl install` repairs them)',
  interrupted: 'NOT PROTECTED: a transaction was interrupted; the rules may be half-changed',
  'proxy-not-ready': 'NOT PROTECTED: the rules are in place but the proxy is not ready, so captured connections fail',
  'proxy-unreachable': 'NOT PROTECTED: the rules are in place but no proxy answers, so every captured connection fails',
  'proxy-mismatched': 'NOT PROTECTED: the proxy does not keep the contract the installed rules need',
};

function configSource(report: StatusReport): string {
  const flags = report.configFlags.length > 0 ? ` + flags ${report.configFlags.join(' ')}` : '';
  return `${report.configFile ?? 'built-in defaults'}${flags}`;
}

export function proxyLines(report: StatusReport, proxy: ProxyReport | null): string[] {
  if (proxy === null) return [];
  const lines: string[] = [];
  const live = proxy.contract;
  const who = live
    ? ` (pid ${live.pid}, uid ${live.uid}${live.user ? ` ${live.user}` : ''} gid ${live.gid}, config ${live.config.file ?? 'built-in defaults'} v${live.config.version})`
    : '';
  switch (proxy.state) {
    case 'ready':
      lines.push(`  proxy: ready on ${proxy.admin}${who}, keeps the rules' contract`);
      break;
    case 'not-ready':
      lines.push(`  proxy: NOT READY on ${proxy.admin}${who}: ${proxy.detail}`);
      break;
    case 'unreachable':
      lines.push(`  proxy: UNREACHABLE on ${proxy.admin}: ${proxy.detail}`);
      break;
    case 'unknown-contract':
      lines.push(
        `  proxy: answers on ${proxy.admin} (${proxy.detail}) but publishes no contract (GET /contract): restart it with this meshctl`,
      );
      break;
    case 'mismatched':
      lines.push(`  proxy: MISMATCHED on ${proxy.admin}${who}`);
      for (const m of proxy.mismatches) lines.push(`    ${m.field}: ${m.message}`, `      fix: ${m.fix}`);
      break;
  }
  if (proxy.identity) lines.push(`  mtls: ${describeExpiry(proxy.identity)}`);
  const check = report.proxyCheck;
  if (check?.kind === 'skipped' && check.reason === 'without-proxy')
    lines.push('    note: installed with --without-proxy: the proxy was not checked at install');
  else if (check?.kind === 'checked' && live && live.pid !== check.pid)
    lines.push(`    note: the proxy restarted since install (pid ${check.pid} then, ${live.pid} now)`);
  return lines;
}

function describe(status: FullStatus): string {
  const report = status.rules;
  const lines: string[] = [];
  if (!report.installed) {
    lines.push(`not installed${where(report.netns)} (no ledger at ${report.ledgerPath})`);
  } else {
    lines.push(`installed${where(report.netns)}: install ${report.installId}, backend ${report.backend}`);
    lines.push(
      `  config: sha256 ${report.configHash?.slice(0, 16)}… from ${configSource(report)}${report.configChanged === true ? ' (the current config differs: `meshctl install` would update)' : report.configChanged === false ? ' (same as the current config)' : ''}`,
    );
    if (report.installedConfig) lines.push(`  contract: ${describeContract(contractOf(report.installedConfig))}`);
    lines.push(`  since: ${report.installedAt} (last change ${report.updatedAt}, meshctl ${report.toolVersion})`);
    if (report.interrupted) {
      lines.push(
        `  rules: INTERRUPTED ${report.interrupted.operation} (since ${report.interrupted.since}); status changes nothing: run ${report.interrupted.command}`,
      );
    } else {
      const staleOnly =
        report.drift.every((d) => d.inSync) &&
        report.missingExtras.length === 0 &&
        report.units.some((u) => u.step === 'stale');
      lines.push(
        `  rules: ${report.inSync ? 'in sync with the installed plan' : staleOnly ? 'STALE: as installed, but a unit below runs in a cgroup they do not match (`meshctl units refresh` re-applies them)' : 'DRIFTED from the installed plan (`meshctl install` repairs it)'}`,
      );
    }
    for (const drift of report.drift.filter((d) => !d.inSync)) {
      for (const c of drift.missingChains) lines.push(`    ${drift.label}: missing chain ${c}`);
      for (const c of drift.extraChains) lines.push(`    ${drift.label}: extra chain ${c}`);
      for (const r of drift.missing) lines.push(`    ${drift.label}: missing ${r}`);
      for (const r of drift.extra) lines.push(`    ${drift.label}: extra ${r}`);
      for (const o of drift.outOfOrder) lines.push(`    ${drift.label}: out of order: ${o}`);
    }
    for (const e of report.missingExtras) lines.push(`    missing ${e}`);
    for (const unit of report.units) lines.push(`  unit ${describeUnit(unit)}`);
    lines.push(...proxyLines(report, status.proxy));
    if (report.confirm) {
      const failed = report.confirm.revertFailed;
      if (failed && !report.confirm.confirmedAt)
        lines.push(
          `  REVERT FAILED at ${failed.at} after ${failed.attempts} attempts: ${failed.error} (capture is still installed: \`meshctl uninstall\` removes it, \`meshctl confirm\` keeps it)`,
        );
      else
        lines.push(
          report.confirm.confirmedAt
            ? `  confirmed at ${report.confirm.confirmedAt}`
            : `  UNCONFIRMED: reverted at ${report.confirm.deadline} unless \`meshctl confirm\` runs first`,
        );
    }
  }
  for (const n of status.notes) lines.push(`  note: ${n}`);
  lines.push(`verdict: ${VERDICT_LINE[status.verdict]}`);
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const command = program
    .command('status')
    .description(
      'both halves on one screen: rules and proxy, and a verdict (exit 0 protected, 3 not installed, 4 drifted, 5 proxy not ready/mismatched)',
    );
  addScopeOptions(command, { stateDir: true, config: true }).option('--json', 'print the report as JSON');
  command.action(async (options: Record<string, unknown>) => {
    let config: Config | undefined;
    const netns = (options.netns as string | undefined) ?? null;
    if (typeof options.config === 'string') config = await loadConfig({ file: options.config, netns });
    const stateDir = await resolveStateDir(options);
    assertUnprivilegedStatus(stateDir, netns);
    const rules = await captureStatus({
      stateDir,
      netns,
      log: cliLogger(options),
      ...(config ? { config } : {}),
    });
    // The proxy is held to the contract of the installed config (the ledger's), not to today's config file.
    const installed = rules.installedConfig;
    const proxy = installed
      ? await inspectProxy(
          contractOf(installed),
          { address: installed.proxy.adminAddress, port: installed.proxy.adminPort },
          { netns, timeoutMs: 1000 },
        )
      : null;
    const status: FullStatus = { verdict: statusVerdict(rules, proxy), rules, proxy, notes: [] };
    const code = statusExitCode(status);
    if (options.json) {
      const { installedConfig: _omit, ...rulesJson } = rules;
      process.stdout.write(
        `${JSON.stringify({ ...rulesJson, verdict: status.verdict, exitCode: code, proxy }, null, 2)}\n`,
      );
    } else {
      process.stdout.write(describe(status));
    }
    process.exitCode = code;
  });
}
