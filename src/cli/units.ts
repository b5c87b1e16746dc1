// `meshctl units refresh`: re-applies the installed capture when a systemd unit named by excludeUnits/includeUnits
// has a new cgroup (run by each such unit's drop-in as ExecStartPre=+, before the unit's main process starts).
import type { Command } from 'commander';
import { describeUnit } from '../netfilter/host/unit-cgroups.js';
import { refreshUnits } from '../netfilter/units.js';
import { addScopeOptions, cliLogger, recoveryLine, resolveStateDir, where } from './shared.js';

export function register(program: Command): void {
  const units = program
    .command('units')
    .description('systemd units named by capture.outbound.excludeUnits/includeUnits');
  const refresh = units
    .command('refresh')
    .description(
      "re-apply the installed capture when a named unit's cgroup changed (a restart); run by each unit's ExecStartPre= drop-in",
    );
  addScopeOptions(refresh, { stateDir: true, config: true }).option('--json', 'print the result as JSON');
  refresh.action(async (options: Record<string, unknown>) => {
    const netns = (options.netns as string | undefined) ?? null;
    const result = await refreshUnits({
      stateDir: await resolveStateDir(options),
      netns,
      log: cliLogger(options),
    });
    if (options.json) {
      const { install, ...rest } = result;
      const applied = install
        ? { action: install.action, installId: install.installId, backend: install.backend }
        : null;
      process.stdout.write(`${JSON.stringify({ ...rest, install: applied }, null, 2)}\n`);
      return;
    }
    const lines: string[] = [];
    if (result.install) lines.push(...recoveryLine(result.install.recovered));
    for (const unit of result.before) lines.push(`unit ${describeUnit(unit)}`);
    switch (result.action) {
      case 'not-installed':
        lines.push(`nothing to refresh${where(netns)}: no capture is installed (install resolves the units itself)`);
        break;
      case 'not-loaded':
        lines.push(
          `nothing to refresh${where(netns)}: the kernel holds none of the installed rules (after a reboot, meshctl-capture.service installs them, units included)`,
        );
        break;
      case 'no-units':
        lines.push(`nothing to refresh${where(netns)}: the installed config names no systemd units`);
        break;
      case 'in-step':
        lines.push(`every unit is in step${where(netns)}; nothing changed`);
        break;
      case 'refreshed':
        lines.push(
          `refreshed${where(netns)}: install ${result.install?.installId} re-applied (${result.install?.action}), the rules now match each running unit's cgroup`,
        );
        break;
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  });
}
