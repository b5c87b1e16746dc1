// `meshctl install`: flags → Config → installCapture; prints what was done (or, with --dry-run, exactly the input
// iptables-restore / nft would get).
import type { Command } from 'commander';
import { parseFlagDuration } from '../values/duration.js';
import { MeshctlError } from '../errors.js';
import { installCapture, type InstallResult } from '../netfilter/install.js';
import { contractOf } from '../config/contract.js';
import type { ProxyCheck } from '../netfilter/transaction/ledger.js';
import { requireProxyContract } from '../service/proxy-contract.js';
import { xtablesBinary } from '../netfilter/drivers/runner.js';
import { addConfigOptions, loadConfigFromOptions } from './config-flags.js';
import { cliLogger, recoveryLine, where, logLevelOption } from './shared.js';
import { syncUnitDropins, systemdRunning } from '../service/unit-dropins.js';
import { configUnits } from '../netfilter/host/unit-cgroups.js';
import { MESHCTL_BIN } from '../netfilter/transaction/revert.js';

function parseConfirmWithin(text: string | undefined): number | null {
  if (text === undefined) return null;
  const ms = parseFlagDuration(text);
  if (typeof ms === 'string')
    throw new MeshctlError(
      'CONFIG_INVALID',
      `--confirm-within ${JSON.stringify(text)}: ${ms}`,
      'give a duration such as 60s or 5m',
    );
  return ms;
}

function commandFor(result: InstallResult, label: string): string {
  const tool =
    result.backend === 'nftables'
      ? 'nft -f -'
      : `${xtablesBinary(result.backend, label === 'ipv6' ? 'ipv6' : 'ipv4', 'restore')} --wait --noflush`;
  return `${result.netns ? `ip netns exec ${result.netns} ` : ''}${tool}`;
}

function describe(result: InstallResult): string {
  const lines: string[] = [...recoveryLine(result.recovered)];
  const verb = {
    installed: 'installed capture',
    updated: 'updated capture',
    repaired: 'repaired drifted capture',
    unchanged: 'already installed and in sync; nothing changed',
    'dry-run': 'dry run',
  }[result.action];
  lines.push(
    `${verb}${where(result.netns)} with ${result.backend}${result.installId ? ` (install ${result.installId})` : ''}`,
  );
  for (const reason of result.backendReasons) lines.push(`  backend: ${reason}`);
  for (const warning of result.warnings) lines.push(`  warning: ${warning}`);
  for (const drift of result.action === 'repaired' ? result.driftBefore.filter((d) => !d.inSync) : []) {
    lines.push(
      `  repaired ${drift.label}: ${[...drift.missing.map((m) => `missing ${m}`), ...drift.extra.map((e) => `extra ${e}`), ...drift.outOfOrder.map((o) => `out of order ${o}`), ...drift.missingChains.map((c) => `missing chain ${c}`)].join('; ')}`,
    );
  }
  if (result.steps.length > 0)
    lines.push(
      `  ${result.action === 'dry-run' ? 'would apply' : 'applied'}: ${result.steps.map((s) => `${s.label} (${s.text.split('\n').filter(Boolean).length} lines, one ${result.backend === 'nftables' ? 'nft transaction' : 'restore'})`).join(', ')}`,
    );
  lines.push(`  ledger: ${result.ledgerPath}`);
  if (result.confirm && result.confirm.confirmedAt === null) {
    const how =
      result.confirm.mechanism === 'systemd-timer'
        ? `systemd timer ${result.confirm.unit}`
        : `detached process ${result.confirm.pid}`;
    lines.push(
      `  confirm: run \`meshctl confirm${result.netns ? ` --netns ${result.netns}` : ''}\` before ${result.confirm.deadline}, or the rules are removed (${how})`,
    );
  }
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const command = program
    .command('install')
    .description('apply the capture rules as one transaction (snapshot, check, apply both families, verify, ledger)');
  addConfigOptions(command);
  command
    .option('--netns <name>', 'run every kernel-facing command inside this network namespace (ip netns exec)')
    .option('--dry-run', 'print exactly what would be fed to iptables-restore / nft, change nothing')
    .option(
      '--without-proxy',
      'apply even when no proxy is ready on the admin port (labs and tests only: traffic is redirected to nothing)',
    )
    .option(
      '--confirm-within <duration>',
      'remove the rules again unless `meshctl confirm` arrives within this time (e.g. 60s)',
    )
    .option('--json', 'print the result as JSON')
    .addOption(logLevelOption());
  command.action(async (options: Record<string, unknown>) => {
    const confirmWithinMs = parseConfirmWithin(options.confirmWithin as string | undefined);
    // The loader reads SSH_CONNECTION from this environment, so the current SSH session is exempt from capture.
    const config = await loadConfigFromOptions(options);
    // Capture must never redirect traffic to a port where nothing accepts it, nor exempt another user than the
    // one the proxy runs as: the live proxy must keep the plan's contract (src/service/proxy-contract.ts).
    let proxyCheck: ProxyCheck = { kind: 'skipped', reason: options.dryRun === true ? 'dry-run' : 'without-proxy' };
    if (options.dryRun !== true && options.withoutProxy !== true) {
      const report = await requireProxyContract(
        contractOf(config),
        { address: config.proxy.adminAddress, port: config.proxy.adminPort },
        { netns: (options.netns as string | undefined) ?? null },
      );
      const live = report.contract!;
      proxyCheck = {
        kind: 'checked',
        at: new Date().toISOString(),
        pid: live.pid,
        uid: live.uid,
        gid: live.gid,
        configHash: live.config.hash,
      };
    }
    // Before the rules: each named unit's drop-in, so no restart can slip between the rules and their refresh.
    if (options.dryRun !== true && systemdRunning())
      syncUnitDropins(
        configUnits(config).map((u) => u.name),
        {
          stateDir: config.stateDir,
          netns: (options.netns as string | undefined) ?? null,
          command: [process.execPath, MESHCTL_BIN],
        },
      );
    const result = await installCapture({
      proxyCheck,
      config,
      netns: (options.netns as string | undefined) ?? null,
      dryRun: options.dryRun === true,
      confirmWithinMs,
      log: cliLogger(options),
    });
    if (options.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    if (result.action === 'dry-run') {
      if (result.steps.length === 0)
        process.stdout.write(
          `# already installed${where(result.netns)} with this config and in sync: nothing would change\n`,
        );
      for (const step of result.steps)
        process.stdout.write(`# ${step.label}: ${commandFor(result, step.label)}\n${step.text}`);
      process.stderr.write(describe(result));
      return;
    }
    process.stdout.write(describe(result));
  });
}
