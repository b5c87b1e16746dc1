// --confirm-within: a revert that fires unless `meshctl confirm` arrives first, and that survives the invoking shell
// and SSH session dying. Where systemd runs as PID 1 it is a transient timer (`systemd-run --on-active`), which
// outlives everything; elsewhere a detached child in its own session (setsid) that sleeps until the deadline.
// Either way the reverter runs `meshctl uninstall --if-unconfirmed <install-id>`, which does nothing once confirmed.
// Arming and disarming live here; `meshctl confirm` (confirm.ts) and recovery both use them.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MeshctlError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { findOnPath } from '../drivers/runner.js';
import type { ConfirmArm } from './ledger.js';
import { processStartTime } from './lock.js';
import type { Scope } from './scope.js';

/** The launcher of this package (bin/meshctl): same relative path from src/netfilter/transaction and dist/netfilter/transaction. */
export const MESHCTL_BIN = fileURLToPath(new URL('../../../bin/meshctl', import.meta.url));

export function revertLogPath(dir: string): string {
  return join(dir, 'revert.log');
}

/** True when systemd is PID 1 and answering, so a transient timer can be used. */
export function systemdAvailable(env: NodeJS.ProcessEnv = process.env): boolean {
  if (!existsSync('/run/systemd/system') || !findOnPath('systemd-run', env)) return false;
  const state = spawnSync('systemctl', ['is-system-running'], { encoding: 'utf8', timeout: 5000 });
  return ['running', 'degraded', 'starting'].includes((state.stdout ?? '').trim());
}

export interface ArmOptions {
  readonly scope: Scope;
  readonly installId: string;
  readonly withinMs: number;
  /** How to run meshctl: [node, bin/meshctl] by default. */
  readonly command?: readonly string[];
  /** Force a mechanism (tests); default: systemd when available, else detached. */
  readonly mechanism?: ConfirmArm['mechanism'];
}

function revertArgs(scope: Scope, installId: string): string[] {
  return [
    'uninstall',
    '--if-unconfirmed',
    installId,
    '--state-dir',
    scope.stateDir,
    ...(scope.netns ? ['--netns', scope.netns] : []),
  ];
}

/** Arms the revert. Throws COMMAND_FAILED when neither mechanism can be started (the caller rolls back). */
export function armRevert(options: ArmOptions): ConfirmArm {
  const { scope, installId, withinMs } = options;
  const command = options.command ?? [process.execPath, MESHCTL_BIN];
  const deadline = new Date(Date.now() + withinMs);
  const mechanism = options.mechanism ?? (systemdAvailable(scope.env) ? 'systemd-timer' : 'detached-process');
  const log = scope.log.child({ component: 'confirm' });
  if (mechanism === 'systemd-timer') {
    const unit = `meshctl-revert-${installId}`;
    const seconds = Math.max(1, Math.ceil(withinMs / 1000));
    const args = [
      `--unit=${unit}`,
      `--description=meshctl: revert install ${installId} unless confirmed`,
      `--on-active=${seconds}s`,
      '--timer-property=AccuracySec=1s',
      '--collect',
      '--',
      ...command,
      ...revertArgs(scope, installId),
    ];
    const result = spawnSync('systemd-run', args, { encoding: 'utf8', env: scope.env, timeout: 15_000 });
    if (result.status !== 0) {
      throw new MeshctlError(
        'COMMAND_FAILED',
        `systemd-run could not arm the revert timer ${unit}.timer (exit ${result.status ?? 'none'})`,
        'check `systemctl status`; or run without --confirm-within',
        { details: [`command: systemd-run ${args.join(' ')}`, `stderr:  ${(result.stderr ?? '').trim()}`] },
      );
    }
    log.warn(
      { unit: `${unit}.timer`, deadline: deadline.toISOString() },
      'armed revert timer; run `meshctl confirm` to keep the rules',
    );
    return {
      deadline: deadline.toISOString(),
      mechanism,
      unit: `${unit}.timer`,
      pid: null,
      pidStartTime: null,
      confirmedAt: null,
    };
  }
  const logFd = openSync(revertLogPath(scope.dir), 'a', 0o600);
  try {
    const [file, ...prefix] = command;
    const child = spawn(file!, [...prefix, ...revertArgs(scope, installId), '--wait-until', deadline.toISOString()], {
      detached: true, // setsid(): its own session, so SIGHUP from a dying SSH session or shell never reaches it
      stdio: ['ignore', logFd, logFd],
      env: scope.env,
    });
    if (child.pid === undefined) {
      throw new MeshctlError(
        'COMMAND_FAILED',
        `could not start the detached revert process (${file})`,
        'run without --confirm-within, or check that node can be spawned',
      );
    }
    child.unref();
    log.warn(
      { pid: child.pid, deadline: deadline.toISOString(), log: revertLogPath(scope.dir) },
      'armed detached revert process; run `meshctl confirm` to keep the rules',
    );
    return {
      deadline: deadline.toISOString(),
      mechanism,
      unit: null,
      pid: child.pid,
      pidStartTime: processStartTime(child.pid),
      confirmedAt: null,
    };
  } finally {
    closeSync(logFd);
  }
}

/** Stops an armed reverter (best effort: the reverter also checks the ledger before acting). */
export function disarmRevert(arm: ConfirmArm, log: Logger): void {
  if (arm.mechanism === 'systemd-timer' && arm.unit) {
    spawnSync('systemctl', ['stop', arm.unit], { timeout: 15_000 });
    log.info({ unit: arm.unit }, 'stopped revert timer');
    return;
  }
  if (
    arm.pid !== null &&
    arm.pidStartTime !== null &&
    processStartTime(arm.pid) === arm.pidStartTime &&
    arm.pid !== process.pid
  ) {
    try {
      process.kill(arm.pid, 'SIGTERM');
      log.info({ pid: arm.pid }, 'stopped detached revert process');
    } catch {
      // already gone
    }
  }
}
