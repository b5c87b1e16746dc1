// Who may run which command. Commands that change rules or meshctl's state need root and say so before they touch
// anything (NOT_ROOT, naming the command); read commands (status, doctor, explain, render, config) run as any user,
// create nothing, and say what such a user cannot see instead of guessing.
import type { Command } from 'commander';
import { MeshctlError } from '../errors.js';

/** The commands that change rules or state (by their path under `meshctl`), and what they do that needs root. */
const NEEDS_ROOT: Readonly<Record<string, string>> = {
  install:
    'changes netfilter rules and writes the ledger (even --dry-run reads the current rules and takes the state lock; `meshctl render` prints the planned rules without root)',
  uninstall: 'changes netfilter rules and the ledger',
  confirm: 'changes the ledger and stops the pending revert',
  recover: 'changes netfilter rules and the ledger to finish an interrupted transaction',
  verify: 'probes the installed rules as other users inside the scope and takes the state lock',
  'service install': 'writes systemd units and runs systemctl',
  'service uninstall': 'stops and removes systemd units and the capture rules',
  'units refresh': 'reads the cgroup hierarchy and may re-apply the netfilter rules and rewrite the ledger',
};

/** `install`, `service install`: the command's names below the program. */
function commandPath(command: Command): string {
  const names: string[] = [];
  for (let c: Command | null = command; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

export function effectiveUid(): number {
  return process.geteuid?.() ?? 0;
}

/** Throws NOT_ROOT when `command` changes rules or state and this process is not root. */
export function assertMayRun(command: Command): void {
  const path = commandPath(command);
  const why = NEEDS_ROOT[path];
  const uid = effectiveUid();
  if (why === undefined || uid === 0) return;
  throw new MeshctlError(
    'NOT_ROOT',
    `meshctl ${path} ${why}, which needs root (running as uid ${uid})`,
    `run it with sudo: sudo meshctl ${path} …`,
  );
}
