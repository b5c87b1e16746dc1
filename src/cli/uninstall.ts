// `meshctl uninstall` (alias `rollback`): removes exactly what the ledger lists. With --if-unconfirmed it is the
// --confirm-within reverter: it waits for the deadline (--wait-until), then acts only if nobody confirmed.
import { setTimeout as sleep } from 'node:timers/promises';
import { Option, type Command } from 'commander';
import { MeshctlError, isMeshctlError } from '../errors.js';
import { revertUnconfirmed, uninstallCapture, type UninstallResult } from '../netfilter/uninstall.js';
import { addScopeOptions, cliLogger, recoveryLine, resolveStateDir, where } from './shared.js';
import { removeUnitDropins, systemdRunning } from '../service/unit-dropins.js';

function describe(result: UninstallResult & { attempts?: number }, revert: boolean): string {
  const stamp = revert ? `${new Date().toISOString()} ` : '';
  const lines: string[] = recoveryLine(result.recovered).map((l) => `${stamp}${l}`);
  if (result.action === 'not-installed') {
    lines.push(`nothing is installed${where(result.netns)}; nothing to uninstall`);
  } else if (result.action === 'skipped') {
    lines.push(
      `${stamp}revert of install ${result.installId ?? '?'}${where(result.netns)} not needed: ${result.reason}`,
    );
  } else {
    lines.push(
      revert
        ? `${stamp}reverted install ${result.installId}${where(result.netns)}: ${result.reason}; removed ${result.removed.length} objects (${result.backend})`
        : `uninstalled ${result.installId}${where(result.netns)} (${result.backend}): removed ${result.removed.length} objects listed in the ledger`,
    );
    for (const object of result.removed) lines.push(`  removed: ${object}`);
    if (result.foreignChanges.added.length + result.foreignChanges.removed.length > 0) {
      lines.push(
        `  kept foreign changes made since install: ${result.foreignChanges.added.length} lines added, ${result.foreignChanges.removed.length} removed`,
      );
    }
    if (result.raced.added.length + result.raced.removed.length > 0) {
      lines.push(
        `  tolerated: another writer changed foreign rules while this ran (${result.raced.added.length} lines added, ${result.raced.removed.length} removed); not a reason to put capture back`,
      );
      for (const l of result.raced.added) lines.push(`    added meanwhile:   ${l}`);
      for (const l of result.raced.removed) lines.push(`    removed meanwhile: ${l}`);
    }
    lines.push(
      "  verified: none of meshctl's objects are left, and every foreign rule present before the uninstall that it could touch is still there",
    );
    if (result.attempts !== undefined && result.attempts > 1)
      lines.push(`  took ${result.attempts} attempts (see the revert log ${result.revertLog})`);
    for (const left of result.leftovers)
      lines.push(`  warning: left in place (meshctl markers, but not in the ledger): ${left}`);
  }
  return `${lines.join('\n')}\n`;
}

export function register(program: Command): void {
  const command = program
    .command('uninstall')
    .alias('rollback')
    .description('remove exactly what the ledger lists, keep every foreign rule, verify, delete the ledger');
  addScopeOptions(command, { stateDir: true, config: true })
    .option('--json', 'print the result as JSON')
    .addOption(
      new Option(
        '--if-unconfirmed <install-id>',
        'act only if this install is unconfirmed past its --confirm-within deadline (the reverter)',
      ).hideHelp(),
    )
    .addOption(new Option('--wait-until <time>', 'sleep until this ISO time first (the detached reverter)').hideHelp());
  command.action(async (options: Record<string, unknown>) => {
    const revert = typeof options.ifUnconfirmed === 'string';
    const log = cliLogger(options, revert ? 'info' : 'warn');
    if (typeof options.waitUntil === 'string') {
      const at = Date.parse(options.waitUntil);
      if (Number.isNaN(at))
        throw new MeshctlError(
          'CONFIG_INVALID',
          `--wait-until ${options.waitUntil} is not an ISO time`,
          'this flag is set by --confirm-within; do not pass it by hand',
        );
      process.stderr.write(
        `${new Date().toISOString()} revert armed for install ${String(options.ifUnconfirmed)}${where((options.netns as string | undefined) ?? null)}: acting at ${options.waitUntil} unless confirmed\n`,
      );
      // A long sleep in slices: the timer keeps the process alive; SIGTERM from `meshctl confirm` ends it.
      while (Date.now() < at) await sleep(Math.min(at - Date.now(), 60_000));
    }
    const scope = {
      stateDir: await resolveStateDir(options),
      netns: (options.netns as string | undefined) ?? null,
      log,
    };
    // The reverter retries until capture is gone or its hard deadline passes (REVERT_FAILED, recorded in the ledger).
    const result = revert
      ? await revertUnconfirmed({ ...scope, installId: options.ifUnconfirmed as string })
      : await uninstallCapture(scope);
    // After the rules: the units' drop-ins would only find nothing installed. Where /etc is read-only (the capture
    // unit's sandbox) they stay, harmless, until `meshctl service uninstall` removes them.
    if (systemdRunning()) {
      try {
        removeUnitDropins({ netns: scope.netns });
      } catch (error) {
        if (!isMeshctlError(error, 'UNIT_DROPIN_FAILED')) throw error;
        process.stderr.write(`note: ${error.message}; it only finds nothing installed now\n`);
      }
    }
    if (options.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else process.stdout.write(describe(result, revert));
  });
}
