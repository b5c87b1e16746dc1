// `meshctl status`: installed or not, backend, install id, config hash, in sync or drifted.
// Exit status: 0 installed and in sync, 3 not installed, 4 drifted (EXIT in output.ts, documented in README).
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { captureStatus, type StatusReport } from '../netfilter/status.js';
import { addScopeOptions, cliLogger, recoveryLine, resolveStateDir, where } from './install.js';
import { EXIT } from './output.js';

export function statusExitCode(report: StatusReport): number {
  if (!report.installed) return EXIT.notInstalled;
  return report.inSync ? EXIT.ok : EXIT.drifted;
}

function describe(report: StatusReport): string {
  const lines = recoveryLine(report.recovered);
  if (!report.installed) {
    lines.push(`not installed${where(report.netns)} (no ledger at ${report.ledgerPath})`);
    return `${lines.join('\n')}\n`;
  }
  lines.push(`installed${where(report.netns)}: install ${report.installId}, backend ${report.backend}`);
  lines.push(`  config: sha256 ${report.configHash?.slice(0, 16)}… from ${report.configFile ?? 'built-in defaults'}${report.configChanged === true ? ' (the current config differs: `meshctl install` would update)' : report.configChanged === false ? ' (same as the current config)' : ''}`);
  lines.push(`  since: ${report.installedAt} (last change ${report.updatedAt}, meshctl ${report.toolVersion})`);
  lines.push(`  rules: ${report.inSync ? 'in sync with the installed plan' : 'DRIFTED from the installed plan (`meshctl install` repairs it)'}`);
  for (const drift of report.drift.filter((d) => !d.inSync)) {
    for (const c of drift.missingChains) lines.push(`    ${drift.label}: missing chain ${c}`);
    for (const c of drift.extraChains) lines.push(`    ${drift.label}: extra chain ${c}`);
    for (const r of drift.missing) lines.push(`    ${drift.label}: missing ${r}`);
    for (const r of drift.extra) lines.push(`    ${drift.label}: extra ${r}`);
    for (const o of drift.outOfOrder) lines.push(`    ${drift.label}: out of order: ${o}`);
  }
  for (const e of report.missingExtras) lines.push(`    missing ${e}`);
  if (report.confirm) {
    lines.push(report.confirm.confirmedAt ? `  confirmed at ${report.confirm.confirmedAt}` : `  UNCONFIRMED: reverted at ${report.confirm.deadline} unless \`meshctl confirm\` runs first`);
  }
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const command = program
    .command('status')
    .description('show whether capture is installed and in sync (exit 0 in sync, 3 not installed, 4 drifted)');
  addScopeOptions(command, { stateDir: true, config: true }).option('--json', 'print the report as JSON');
  command.action(async (options: Record<string, unknown>) => {
    let config: Config | undefined;
    if (typeof options.config === 'string') config = await loadConfig({ file: options.config, netns: (options.netns as string | undefined) ?? null });
    const report = await captureStatus({
      stateDir: await resolveStateDir(options),
      netns: (options.netns as string | undefined) ?? null,
      log: cliLogger(options),
      ...(config ? { config } : {}),
    });
    const code = statusExitCode(report);
    process.stdout.write(options.json ? `${JSON.stringify({ ...report, exitCode: code }, null, 2)}\n` : describe(report));
    process.exitCode = code;
  });
}
